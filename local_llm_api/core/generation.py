"""Running the choices of one request on a backend, streamed or collected."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import TypeVar

from starlette.requests import Request

from ..backends.base import Backend, EngineStoppedError, GenerationChunk, NeverFitsError, QueueFullError, Reservation, SamplingParams
from ..structured.logprobs import TokenLogprob
from ..errors import APIError, client_closed_request, invalid_request, server_busy

log = logging.getLogger("local_llm_api.generation")
T = TypeVar("T")


@dataclass(frozen=True)
class ChoiceJob:
    index: int
    prompt: list[int]
    media: object | None  # the prompt's images, as the backend read them (None: text only)
    params: SamplingParams


@dataclass
class ChoiceResult:
    index: int
    text: str
    finish_reason: str
    completion_tokens: int
    logprobs: list[TokenLogprob] = field(default_factory=list)
    cached_tokens: int = 0


@dataclass(frozen=True)
class TokenCounts:
    """A request's tokens, as `request.state.usage` for the access log line (OpenAI's `Usage` has the same two
    fields, so the OpenAI routes store that instead)."""

    prompt_tokens: int
    completion_tokens: int


def ensure_capacity(backend: Backend, choices: int) -> Reservation:
    """Hold the choices' places in the model's queue; refuse with 429 before anything is streamed when it cannot
    take them now, 400 when it never could. Release the reservation when the request ends."""
    try:
        return backend.check_capacity(choices)
    except QueueFullError as exc:
        raise server_busy(str(exc)) from None
    except NeverFitsError as exc:
        raise invalid_request(f"{exc}; ask for fewer choices.", "n", "too_many_choices") from None
    except EngineStoppedError as exc:
        raise engine_stopped(exc) from None


def engine_stopped(exc: EngineStoppedError) -> APIError:
    return APIError(503, f"The model cannot serve: {exc}.", type="server_error", code="engine_stopped",
                    headers={"Retry-After": "5"})


async def stream_choices(backend: Backend, jobs: list[ChoiceJob],
                         reservation: Reservation | None = None) -> AsyncIterator[tuple[int, GenerationChunk]]:
    """The chunks of every choice as they come; the choices run side by side in the backend's batch (each takes one
    of the reservation's places as it queues)."""
    merged: asyncio.Queue[tuple[int, GenerationChunk] | BaseException] = asyncio.Queue()

    async def pump(job: ChoiceJob) -> None:
        try:
            async for chunk in backend.generate(job.prompt, job.params, reservation, job.media):
                merged.put_nowait((job.index, chunk))
        except Exception as exc:  # handed to the consumer, which raises it
            merged.put_nowait(exc)

    tasks = [asyncio.ensure_future(pump(job)) for job in jobs]
    try:
        remaining = len(jobs)
        while remaining:
            item = await merged.get()
            if isinstance(item, EngineStoppedError):
                raise engine_stopped(item)
            if isinstance(item, BaseException):
                raise item
            if item[1].finish_reason is not None:
                remaining -= 1
            yield item
    finally:
        for task in tasks:
            task.cancel()  # a choice still running stops at the engine's next step


async def collect_choices(backend: Backend, jobs: list[ChoiceJob], reservation: Reservation | None = None) -> list[ChoiceResult]:
    results = {job.index: ChoiceResult(job.index, "", "stop", 0) for job in jobs}
    async for index, chunk in stream_choices(backend, jobs, reservation):
        result = results[index]
        result.text += chunk.text
        result.logprobs += chunk.logprobs
        if chunk.finish_reason is not None:
            result.finish_reason = chunk.finish_reason
            result.completion_tokens = chunk.completion_tokens
            result.cached_tokens = chunk.cached_tokens
    return [results[job.index] for job in jobs]


async def until_disconnected(request: Request, work: Awaitable[T], poll_seconds: float = 0.25) -> T:
    """Await non-streamed work, cancelling it (and so freeing the model) if the client hangs up."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=poll_seconds)
            if done:
                return task.result()
            if await request.is_disconnected():
                log.info("client disconnected; cancelling generation")
                task.cancel()
                raise client_closed_request()
    finally:
        if not task.done():
            task.cancel()
