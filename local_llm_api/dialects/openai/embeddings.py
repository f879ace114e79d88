"""POST /embeddings: one pooled, L2-normalised vector per input, as floats or base64."""

from __future__ import annotations

import asyncio
import base64
import struct

from fastapi import Request

from ...backends.base import Backend
from ...core.embedding import embedding_tokens
from ...errors import context_length_exceeded, invalid_request
from ...manager import ModelManager
from .protocol import Embedding, EmbeddingRequest, EmbeddingResponse, EmbeddingUsage, usage

MAX_INPUTS = 2048  # the OpenAI API's own limit per request


def embedding_inputs(raw: str | list[str] | list[int] | list[list[int]]) -> list[str | list[int]]:
    if isinstance(raw, str):
        items: list[str | list[int]] = [raw]
    elif raw and all(isinstance(x, int) for x in raw):
        items = [raw]  # type: ignore[list-item]
    else:
        items = list(raw)  # type: ignore[arg-type]
    if not items:
        raise invalid_request("'input' must not be empty.", "input")
    if len(items) > MAX_INPUTS:
        raise invalid_request(f"At most {MAX_INPUTS} inputs per request; got {len(items)}.", "input")
    for i, item in enumerate(items):
        if len(item) == 0:
            raise invalid_request(f"Input {i} is empty; every input needs at least one token.", "input")
    return items


def tokenize_inputs(backend: Backend, items: list[str | list[int]]) -> list[list[int]]:
    facts = backend.facts
    out = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            out.append(embedding_tokens(backend, item, "input"))
            continue
        if any(not 0 <= t < facts.vocab_size for t in item):
            raise invalid_request(f"Input {i} has token ids outside the vocabulary (0..{facts.vocab_size - 1}).", "input",
                                  "token_out_of_vocabulary")
        if len(item) > facts.context_size:
            raise context_length_exceeded(len(item), facts.context_size, "input")
        out.append(list(item))
    return out


def encode(vector: list[float], encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
    return vector


async def create_embeddings(req: EmbeddingRequest, manager: ModelManager, request: Request) -> EmbeddingResponse:
    items = embedding_inputs(req.input)
    async with manager.use(req.model, "embedding") as model:
        backend = model.backend
        size = backend.facts.embedding_size
        if req.dimensions is not None and req.dimensions != size:
            raise invalid_request(
                f"This model makes {size}-dimensional embeddings and cannot shorten them; "
                f"leave 'dimensions' out or set it to {size}.",
                "dimensions",
                "unsupported_dimensions",
            )
        tokens = await asyncio.to_thread(tokenize_inputs, backend, items)
        vectors = await backend.embed(tokens)
    total = sum(len(t) for t in tokens)
    request.state.model = model.entry.name
    request.state.usage = usage(total, 0)
    return EmbeddingResponse(
        data=[Embedding(index=i, embedding=encode(v, req.encoding_format)) for i, v in enumerate(vectors)],
        model=model.entry.name,
        usage=EmbeddingUsage(prompt_tokens=total, total_tokens=total),
    )
