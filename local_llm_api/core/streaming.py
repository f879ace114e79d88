"""Streamed bodies: server-sent events (OpenAI, Responses, Anthropic) and newline-delimited JSON (Ollama).
One body generator for every dialect releases the model when the stream ends, turns an error raised
mid-stream into the dialect's own error frame, and keeps a quiet stream alive (an SSE comment, or the
dialect's own ping) while a long prompt is read, so that clients and proxies see it is still working."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from ..errors import APIError

log = logging.getLogger("local_llm_api.streaming")

DEFAULT_KEEPALIVE_SECONDS = 5.0  # STREAM_KEEPALIVE_SECONDS when no settings are at hand
SSE_KEEPALIVE = ": keep-alive\n\n"  # an SSE comment: every SSE client skips it


def sse_data(data: str, event: str | None = None) -> str:
    return (f"event: {event}\n" if event else "") + f"data: {data}\n\n"


async def _kept_alive(frames: AsyncIterator[str], keepalive: str, interval: float) -> AsyncIterator[str]:
    """`frames`, with `keepalive` sent whenever none has come for `interval` seconds. One task reads `frames` into a
    queue and a timer, moved on by each frame, puts a keep-alive there when it fires: a few microseconds a frame."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | BaseException | None] = asyncio.Queue()  # None: the end

    def silence() -> None:
        queue.put_nowait(keepalive)
        nonlocal timer
        timer = loop.call_later(interval, silence)

    async def pump() -> None:
        nonlocal timer
        try:
            async for frame in frames:
                timer.cancel()
                queue.put_nowait(frame)
                timer = loop.call_later(interval, silence)
        except Exception as exc:  # handed to the reader, which raises it where the dialect's error frame is made
            queue.put_nowait(exc)
            return
        queue.put_nowait(None)

    timer = loop.call_later(interval, silence)
    task = asyncio.ensure_future(pump())
    try:
        while (item := await queue.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        timer.cancel()
        if not task.done():
            task.cancel()  # the client left while the model was working: stop it where it waits
        try:
            await task
        except asyncio.CancelledError:
            pass
        timer.cancel()
        closing = getattr(frames, "aclose", None)
        if closing is not None:
            await closing()


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
    """A dialect's stream as it goes out: an error mid-stream becomes the dialect's error frame, `done` (OpenAI's
    `[DONE]`) always ends it, `keepalive` fills silences of STREAM_KEEPALIVE_SECONDS, and `on_close` (which must
    be idempotent) runs however the response ends: when the client has left before the first byte, the body
    generator never starts, so its own `finally` would never release the model. A stream the client left before
    its end is marked for the access log (499, as nginx does)."""

    def __init__(self, frames: AsyncIterator[str], on_close: Callable[[], Awaitable[object]],
                 error_frame: Callable[[APIError], str], *, done: str | None, keepalive: str | None, media_type: str,
                 headers: dict[str, str]) -> None:
        self._frames, self._on_close, self._error_frame, self._done, self._keepalive = (
            frames, on_close, error_frame, done, keepalive)
        self._completed = False
        super().__init__(self._body(DEFAULT_KEEPALIVE_SECONDS), media_type=media_type,
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **headers})

    async def _body(self, keepalive_seconds: float) -> AsyncIterator[str]:
        frames = self._frames
        if self._keepalive is not None and keepalive_seconds > 0:
            frames = _kept_alive(frames, self._keepalive, keepalive_seconds)
        async for frame in _guarded(frames, self._on_close, self._error_frame, self._done):
            yield frame
        self._completed = True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        settings = getattr(getattr(scope.get("app"), "state", None), "settings", None)
        if settings is not None:  # the body is not started yet: built again with the server's STREAM_KEEPALIVE_SECONDS
            self.body_iterator = self._body(settings.stream_keepalive_seconds)
        try:
            await super().__call__(scope, receive, send)
        finally:
            if not self._completed:
                scope.setdefault("state", {})["client_left"] = True
            await self._on_close()


def sse_response(
    events: AsyncIterator[str],
    on_close: Callable[[], Awaitable[object]],
    error_event: Callable[[APIError], str],
    done: str | None = None,
    headers: dict[str, str] | None = None,
    keepalive: str = SSE_KEEPALIVE,
) -> StreamingResponse:
    """Stream server-sent `events`; see `ClosingStreamingResponse`."""
    return ClosingStreamingResponse(events, on_close, error_event, done=done, keepalive=keepalive,
                                    media_type="text/event-stream", headers=headers or {})


def ndjson_response(lines: AsyncIterator[str], on_close: Callable[[], Awaitable[object]],
                    error_line: Callable[[APIError], str]) -> StreamingResponse:
    """Stream JSON objects one per line (each of `lines` ends with a newline), as Ollama does. No keep-alive:
    Ollama's clients read every line as an object."""
    return ClosingStreamingResponse(lines, on_close, error_line, done=None, keepalive=None, media_type="application/x-ndjson",
                                    headers={})
