"""Streamed bodies: server-sent events (OpenAI, Responses, Anthropic) and newline-delimited JSON (Ollama).
One body generator for every dialect releases the model when the stream ends and turns an error raised
mid-stream into the dialect's own error frame."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from .errors import APIError

log = logging.getLogger("local_llm_api.streaming")


def sse_data(data: str, event: str | None = None) -> str:
    return (f"event: {event}\n" if event else "") + f"data: {data}\n\n"


async def _guarded(frames: AsyncIterator[str], on_close: Callable[[], Awaitable[object]],
                   error_frame: Callable[[APIError], str], done: str | None) -> AsyncIterator[str]:
    try:
        async for frame in frames:
            yield frame
    except APIError as exc:
        yield error_frame(exc)
    except Exception as exc:
        log.exception("error while streaming")
        yield error_frame(APIError(500, f"Internal error while streaming: {type(exc).__name__}", type="server_error"))
    finally:
        await on_close()
    if done is not None:
        yield done


class ClosingStreamingResponse(StreamingResponse):
    """Runs `on_close` (which must be idempotent) when the response ends, however it ends: when the client has
    left before the first byte, the body generator never starts, so its own `finally` would never release
    the model."""

    def __init__(self, body: AsyncIterator[str], on_close: Callable[[], Awaitable[object]], media_type: str,
                 headers: dict[str, str]) -> None:
        super().__init__(body, media_type=media_type, headers=headers)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._on_close()


def sse_response(
    events: AsyncIterator[str],
    on_close: Callable[[], Awaitable[object]],
    error_event: Callable[[APIError], str],
    done: str | None = None,
    headers: dict[str, str] | None = None,
) -> StreamingResponse:
    """Stream `events`; an error mid-stream becomes `error_event(error)` (the HTTP status is already sent);
    `done`, when the dialect has one (OpenAI's `[DONE]`), always ends the stream."""
    return ClosingStreamingResponse(_guarded(events, on_close, error_event, done), on_close, "text/event-stream",
                                    {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})})


def ndjson_response(lines: AsyncIterator[str], on_close: Callable[[], Awaitable[object]],
                    error_line: Callable[[APIError], str]) -> StreamingResponse:
    """Stream JSON objects one per line (each of `lines` ends with a newline), as Ollama does."""
    return ClosingStreamingResponse(_guarded(lines, on_close, error_line, None), on_close, "application/x-ndjson",
                                    {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
