"""Per-token log probabilities in the two shapes OpenAI uses: chat's list of token objects, and the
legacy completions' parallel lists with text offsets."""

from __future__ import annotations

from collections.abc import Sequence

from ...backends.base import Backend
from ...structured.logprobs import TokenLogprob
from .protocol import ChoiceLogprobs, CompletionLogprobs, TokenLogprobs, TopLogprob


def _token(backend: Backend, token: int) -> tuple[str, list[int]]:
    raw = backend.token_bytes(token)
    return raw.decode("utf-8", "replace"), list(raw)


def chat_logprobs(backend: Backend, items: Sequence[TokenLogprob]) -> ChoiceLogprobs:
    content = []
    for item in items:
        text, raw = _token(backend, item.token)
        top = []
        for token, logprob in item.top:
            top_text, top_raw = _token(backend, token)
            top.append(TopLogprob(token=top_text, logprob=logprob, bytes=top_raw))
        content.append(TokenLogprobs(token=text, logprob=item.logprob, bytes=raw, top_logprobs=top))
    return ChoiceLogprobs(content=content)


def completion_logprobs(backend: Backend, items: Sequence[TokenLogprob], offset: int, top_n: int) -> tuple[CompletionLogprobs, int]:
    """The items as legacy logprobs whose text starts at `offset` in the choice's text; and the next offset."""
    tokens, offsets, tops = [], [], []
    for item in items:
        text, _ = _token(backend, item.token)
        tokens.append(text)
        offsets.append(offset)
        offset += len(text)
        tops.append({_token(backend, t)[0]: lp for t, lp in item.top})
    logprobs = CompletionLogprobs(
        tokens=tokens,
        token_logprobs=[item.logprob for item in items],
        top_logprobs=tops if top_n > 0 else None,
        text_offset=offsets,
    )
    return logprobs, offset
