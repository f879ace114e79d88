"""A text's tokens for an embedding, as every route that embeds needs them (OpenAI's, Ollama's, rerank's)."""

from __future__ import annotations

from ..backends.base import Backend
from ..errors import context_length_exceeded, invalid_request


def embedding_tokens(backend: Backend, text: str, param: str, *, limit: int | None = None, truncate: bool = False) -> list[int]:
    """The tokens of `text`; refused when it has none. Beyond `limit` (the model's context, or less when asked)
    they are cut with `truncate`, else refused."""
    context = min(limit or backend.facts.context_size, backend.facts.context_size)
    tokens = backend.tokenize(text, add_special=True)
    if not tokens:
        raise invalid_request(f"'{param}' has no tokens to embed: it is empty for this model.", param)
    if len(tokens) > context:
        if not truncate:
            raise context_length_exceeded(len(tokens), context, param)
        tokens = tokens[:context]
    return tokens
