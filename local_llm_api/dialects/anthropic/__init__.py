"""Anthropic's Messages API (`POST /v1/messages`, `/v1/messages/count_tokens`): protocol, routes, translation,
and Anthropic's own error envelope."""
