"""POST /rerank (also /v1/rerank, /api/v1/rerank): documents ordered by relevance to a query, in the shape Jina's
and Cohere's rerank APIs share. A cross-encoder scores each (query, document) pair; any other model that makes
embeddings answers by cosine similarity. `method` in the answer (and the X-Rerank-Method header) says which."""

from __future__ import annotations

import asyncio
import uuid

from fastapi import APIRouter, Depends, Request, Response

from ...api.auth import require_api_key
from ..base import JSONBodyRoute
from ...backends.base import Backend
from ...config import BackendChoice
from ...core.embedding import embedding_tokens
from ...errors import invalid_request
from ...core.generation import TokenCounts
from ...manager import ModelManager
from ..openai.routes import ERRORS
from .protocol import RankedDocument, RerankRequest, RerankResponse, RerankResult, RerankUsage

router = APIRouter(dependencies=[Depends(require_api_key)], responses=ERRORS, tags=["utility"], route_class=JSONBodyRoute)


def rerank_model(manager: ModelManager, named: str | None) -> str | None:
    """The request's model; else RERANK_MODEL; else the only cross-encoder, else the only embedding model; else the
    default model (None)."""
    if named or manager.settings.rerank_model:
        return named or manager.settings.rerank_model
    entries = manager.discover()
    for backend in (BackendChoice.cross_encoder, BackendChoice.sentence_transformers):
        found = [e for e in entries if e.backend == backend]
        if len(found) == 1:
            return found[0].name
    return None


def _truncated_tokens(backend: Backend, texts: list[str]) -> list[list[int]]:
    """The query's and the documents' tokens, cut to the context."""
    return [embedding_tokens(backend, text, "query" if i == 0 else f"documents[{i - 1}]", truncate=True)
            for i, text in enumerate(texts)]


async def _similarities(backend: Backend, query: str, documents: list[str]) -> tuple[list[float], int]:
    """Cosine similarity of the query's embedding with each document's (the vectors come L2-normalised)."""
    tokens = await asyncio.to_thread(_truncated_tokens, backend, [query, *documents])
    vectors = await backend.embed(tokens)
    query_vector = vectors[0]
    return [sum(a * b for a, b in zip(query_vector, v)) for v in vectors[1:]], sum(len(t) for t in tokens)


@router.post("/rerank", response_model_exclude_none=True)
async def rerank(body: RerankRequest, request: Request, response: Response) -> RerankResponse:
    manager: ModelManager = request.app.state.manager
    documents = [d if isinstance(d, str) else d.text for d in body.documents]
    name = rerank_model(manager, body.model)
    entry = manager.resolve(name)
    if "rerank" not in entry.capabilities and "embedding" not in entry.capabilities:
        raise invalid_request(f"Model '{entry.name}' can neither rerank nor embed.", "model", "model_not_supported")
    async with manager.use(entry.name, "rerank" if "rerank" in entry.capabilities else "embedding") as model:
        backend = model.backend
        if model.entry.backend == BackendChoice.cross_encoder:
            method = "cross-encoder"
            scores, tokens = await backend.rerank(body.query, documents)
        else:
            method = "embedding-similarity"
            scores, tokens = await _similarities(backend, body.query, documents)
    order = sorted(range(len(documents)), key=lambda i: scores[i], reverse=True)[: body.top_n]
    request.state.model = model.entry.name
    request.state.usage = TokenCounts(tokens, 0)
    response.headers["X-Rerank-Method"] = method
    return RerankResponse(
        id=f"rerank-{uuid.uuid4().hex}", model=model.entry.name, method=method,  # type: ignore[arg-type]
        results=[RerankResult(index=i, relevance_score=scores[i],
                              document=RankedDocument(text=documents[i]) if body.return_documents else None) for i in order],
        usage=RerankUsage(prompt_tokens=tokens, total_tokens=tokens),
    )
