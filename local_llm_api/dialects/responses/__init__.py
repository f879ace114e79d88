"""OpenAI's Responses API (`POST /v1/responses`): protocol models, routes, translation and the response store."""
