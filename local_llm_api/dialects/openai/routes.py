"""The OpenAI routes. The same router is mounted under /v1 (what OpenAI clients call) and /api/v1."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from ...api.auth import require_api_key
from ..base import DialectRoute
from ...catalog import ModelEntry
from ...manager import ModelManager
from .chat import create_chat_completion
from .completions import create_completion
from .embeddings import create_embeddings
from .errors import ErrorResponse
from .protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    ModelCard,
    ModelList,
)

ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 429, 503)
}
STREAM = {200: {"content": {"text/event-stream": {}}, "description": "JSON, or server-sent events when `stream` is true"}}

router = APIRouter(dependencies=[Depends(require_api_key)], responses=ERRORS, route_class=DialectRoute)


def manager_of(request: Request) -> ModelManager:
    return request.app.state.manager


def card(manager: ModelManager, entry: ModelEntry) -> ModelCard:
    return ModelCard(
        id=entry.name,
        created=entry.created,
        owned_by="local",
        backend=entry.backend.value,
        state=manager.state(entry).value,
        size_bytes=entry.size_bytes,
        capabilities=manager.capabilities(entry),
        context_length=manager.context_length(entry),
    )


@router.post("/chat/completions", response_model=ChatCompletionResponse, responses=STREAM, tags=["openai"])
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response | ChatCompletionResponse:
    return await create_chat_completion(body, manager_of(request), request.app.state.settings, request)


@router.post("/completions", response_model=CompletionResponse, responses=STREAM, tags=["openai"])
async def completions(body: CompletionRequest, request: Request) -> Response | CompletionResponse:
    return await create_completion(body, manager_of(request), request.app.state.settings, request)


@router.post("/embeddings", tags=["openai"])
async def embeddings(body: EmbeddingRequest, request: Request) -> EmbeddingResponse:
    return await create_embeddings(body, manager_of(request), request)


@router.get("/models", tags=["openai"])
async def list_models(request: Request) -> ModelList:
    manager = manager_of(request)
    return ModelList(data=await asyncio.to_thread(lambda: [card(manager, e) for e in manager.discover()]))


@router.get("/models/{model_id:path}", tags=["openai"])
async def get_model(model_id: str, request: Request) -> ModelCard:
    manager = manager_of(request)
    return await asyncio.to_thread(card, manager, manager.resolve(model_id))
