"""Ollama's generation routes: POST /api/chat and /api/generate (NDJSON streams by default, one object with
`stream: false`), /api/embed and the older /api/embeddings. Same engines, batching, memory budget and API keys
as every other route; errors in Ollama's `{"error": ...}` shape."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from ...api.auth import require_api_key
from ..base import JSONBodyRoute, say_what_changed
from ...core.chat import Answer, ChatRun, ReasoningDelta, TextDelta, start_chat
from ...core.embedding import embedding_tokens
from ...errors import invalid_request
from ...core.generation import TokenCounts, until_disconnected
from ...core.request import ChatRequest as CoreChat
from ...core.streaming import ndjson_response
from ...manager import LoadedModel, ModelManager
from .errors import error_line
from .protocol import (
    ChatChunk,
    ChatRequest,
    EmbeddingsRequest,
    EmbeddingsResponse,
    EmbedRequest,
    EmbedResponse,
    ErrorResponse,
    GenerateChunk,
    GenerateRequest,
    Generation,
    Logprob,
    OutMessage,
    OutToolCall,
    timestamp,
)
from .translate import (
    chat_request,
    generate_request,
    keep_alive_seconds,
    logprobs,
    model_name,
    refuse_unsupported_options,
    tool_calls,
)

ERRORS: dict[int | str, dict[str, object]] = {code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 429, 503)}
STREAM = {200: {"content": {"application/x-ndjson": {}}, "description": "JSON lines by default; one object with `stream: false`"}}



router = APIRouter(dependencies=[Depends(require_api_key)], responses=ERRORS, tags=["ollama"], route_class=JSONBodyRoute)


def _ns(seconds: float) -> int:
    return max(0, int(seconds * 1e9))


@dataclass
class Clock:
    """The durations of Ollama's final object."""

    started: float = field(default_factory=time.perf_counter)
    loaded: float | None = None
    first_token: float | None = None

    def token(self) -> None:
        if self.first_token is None:
            self.first_token = time.perf_counter()

    def timings(self, answer: Answer, prompt_tokens: int) -> dict[str, object]:
        end = time.perf_counter()
        loaded = self.loaded or self.started
        first = self.first_token or end
        reason = "length" if answer.finish_reason == "length" else "stop"
        return {"done_reason": reason, "total_duration": _ns(end - self.started), "load_duration": _ns(loaded - self.started),
                # As Ollama counts them: the prompt tokens evaluated, not those its cache already held.
                "prompt_eval_count": prompt_tokens - answer.cached_tokens, "prompt_eval_duration": _ns(first - loaded),
                "eval_count": answer.completion_tokens, "eval_duration": _ns(end - first)}


def _line(chunk: BaseModel) -> str:
    return chunk.model_dump_json() + "\n"


def _manager(request: Request) -> ModelManager:
    return request.app.state.manager


def _keep(model: LoadedModel, seconds: float | None) -> None:
    """Each Ollama request sets the model's keep-alive, as Ollama does; one without it goes back to the configured one."""
    model.keep_alive = seconds


async def _load_or_unload(manager: ModelManager, name: str, keep: float | None) -> str:
    """A request with nothing to generate loads the model (or, with keep_alive 0, unloads it): Ollama's way."""
    entry = manager.resolve(name)
    if keep == 0:
        if entry.name in manager.loaded:
            await manager.unload(entry.name)
        return "unload"
    _keep(await manager.load(entry.name), keep)
    return "load"


async def _start(core: CoreChat, request: Request, keep: float | None, clock: Clock) -> ChatRun:
    run = await start_chat(core, _manager(request), request.app.state.settings)
    say_what_changed(request, run.notes, run.ignored)
    clock.loaded = time.perf_counter()
    _keep(run.model, keep)
    request.state.model = run.model.entry.name
    return run


async def _collect(run: ChatRun, clock: Clock) -> Answer:
    answer = Answer(0)
    async for event in run.events():
        if isinstance(event, TextDelta | ReasoningDelta):
            clock.token()
        answer.add(event)
    return answer


class Frame(Protocol):
    """One object of an answer in its route's shape: chat's `message` or generate's `response` (each with the
    reasoning of a thinking model as `thinking`)."""

    def __call__(self, text: str = "", *, thinking: str | None = None, done: bool = False,
                 calls: list[OutToolCall] | None = None, logprobs: list[Logprob] | None = None, **timings: Any) -> BaseModel: ...


def _chat_frame(model: str) -> Frame:
    def frame(text: str = "", *, thinking: str | None = None, done: bool = False, calls: list[OutToolCall] | None = None,
              logprobs: list[Logprob] | None = None, **timings: Any) -> BaseModel:
        return ChatChunk(model=model, created_at=timestamp(), done=done, logprobs=logprobs,
                         message=OutMessage(content=text, thinking=thinking or None, tool_calls=calls), **timings)

    return frame


def _generate_frame(model: str) -> Frame:
    def frame(text: str = "", *, thinking: str | None = None, done: bool = False, calls: list[OutToolCall] | None = None,
              logprobs: list[Logprob] | None = None, **timings: Any) -> BaseModel:
        return GenerateChunk(model=model, created_at=timestamp(), response=text, thinking=thinking or None, done=done,
                             logprobs=logprobs, **timings)

    return frame


async def _answer(core: CoreChat, req: Generation, frame: Frame, nothing_to_do: bool, request: Request) -> Response:
    """What /api/chat and /api/generate share: load-only requests, then one object or an NDJSON stream."""
    clock, keep = Clock(), keep_alive_seconds(req.keep_alive)
    if nothing_to_do:
        reason = await _load_or_unload(_manager(request), core.model or "", keep)
        return JSONResponse(frame(done=True, done_reason=reason).model_dump())
    run = await _start(core, request, keep, clock)
    if req.stream:
        return ndjson_response(_lines(run, frame, clock, request), run.aclose, error_line)
    async with run:
        answer = await until_disconnected(request, _collect(run, clock))
    request.state.usage = TokenCounts(run.prompt_tokens, answer.completion_tokens)
    probabilities = logprobs(run.model.backend, answer.logprobs) if core.logprobs is not None else None
    return JSONResponse(frame(answer.content or "", thinking=answer.reasoning, done=True, calls=tool_calls(answer),
                              logprobs=probabilities, **clock.timings(answer, run.prompt_tokens)).model_dump())


async def _lines(run: ChatRun, frame: Frame, clock: Clock, request: Request) -> AsyncIterator[str]:
    answer = Answer(0)
    async for event in run.events():
        answer.add(event)
        if isinstance(event, ReasoningDelta):
            clock.token()
            yield _line(frame(thinking=event.text))
        if isinstance(event, TextDelta):
            clock.token()
            if event.text or event.logprobs:
                yield _line(frame(event.text, logprobs=logprobs(run.model.backend, event.logprobs) if event.logprobs else None))
    calls = tool_calls(answer)
    if calls:  # as Ollama does: the calls in an object of their own, before the final one
        yield _line(frame(calls=calls))
    request.state.usage = TokenCounts(run.prompt_tokens, answer.completion_tokens)
    yield _line(frame(done=True, **clock.timings(answer, run.prompt_tokens)))


@router.post("/chat", response_model=ChatChunk, response_model_exclude_none=True, responses=STREAM)
async def chat(req: ChatRequest, request: Request) -> Response:
    return await _answer(chat_request(req, model_name(req.model)), req, _chat_frame(req.model), not req.messages, request)


@router.post("/generate", response_model=GenerateChunk, response_model_exclude_none=True, responses=STREAM)
async def generate(req: GenerateRequest, request: Request) -> Response:
    return await _answer(generate_request(req, model_name(req.model)), req, _generate_frame(req.model), not req.prompt,
                         request)


# ---------------------------------------------------------------- embeddings


def _shorten(vector: list[float], dimensions: int | None) -> list[float]:
    """Ollama's `dimensions`: the first n values, normalised again."""
    if dimensions is None or dimensions == len(vector):
        return vector
    cut = vector[:dimensions]
    norm = math.sqrt(sum(v * v for v in cut)) or 1.0
    return [v / norm for v in cut]


async def _embed(request: Request, req: EmbedRequest | EmbeddingsRequest, texts: list[str], truncate: bool,
                 dimensions: int | None) -> tuple[list[list[float]], int, Clock]:
    refuse_unsupported_options(req.options)
    clock, keep = Clock(), keep_alive_seconds(req.keep_alive)
    num_ctx = req.options.num_ctx if req.options else None
    async with _manager(request).use(model_name(req.model), "embedding") as model:
        clock.loaded = time.perf_counter()
        _keep(model, keep)
        size = model.backend.facts.embedding_size
        if dimensions is not None and dimensions > size:
            raise invalid_request(f"This model makes {size}-dimensional embeddings; 'dimensions' can be at most {size}.",
                                  "dimensions")
        tokens = await asyncio.to_thread(
            lambda: [embedding_tokens(model.backend, text, "input", limit=num_ctx, truncate=truncate) for text in texts])
        vectors = await model.backend.embed(tokens) if tokens else []
    count = sum(len(t) for t in tokens)
    request.state.model = model.entry.name
    request.state.usage = TokenCounts(count, 0)
    return [_shorten(v, dimensions) for v in vectors], count, clock


@router.post("/embed", response_model_exclude_none=True)
async def embed(req: EmbedRequest, request: Request) -> EmbedResponse:
    texts = [req.input] if isinstance(req.input, str) else list(req.input)
    vectors, count, clock = await _embed(request, req, texts, req.truncate, req.dimensions)
    end = time.perf_counter()
    return EmbedResponse(model=req.model, embeddings=vectors, total_duration=_ns(end - clock.started),
                         load_duration=_ns((clock.loaded or end) - clock.started), prompt_eval_count=count)


@router.post("/embeddings")
async def embeddings(req: EmbeddingsRequest, request: Request) -> EmbeddingsResponse:
    # An empty prompt only loads the model, as with Ollama.
    vectors, _, _ = await _embed(request, req, [req.prompt] if req.prompt else [], True, None)
    return EmbeddingsResponse(embedding=vectors[0] if vectors else [])
