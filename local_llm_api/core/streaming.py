"""Server-sent events: one body generator for every dialect, which releases the model when the stream ends
and turns an error raised mid-stream into the dialect's own error event."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from fastapi.responses import StreamingResponse

from .errors import APIError

log = logging.getLogger("local_llm_api.streaming")


def sse_data(data: str, event: str | None = None) -> str:
    return (f"event: {event}\n" if event else "") + f"data: {data}\n\n"


def sse_response(
    events: AsyncIterator[str],
    on_close: Callable[[], Awaitable[object]],
    error_event: Callable[[APIError], str],
    done: str | None = None,
    headers: dict[str, str] | None = None,
) -> StreamingResponse:
    """Stream `events`; an error mid-stream becomes `error_event(error)` (the HTTP status is already sent);
    `done`, when the dialect has one (OpenAI's `[DONE]`), always ends the stream."""

    async def body() -> AsyncIterator[str]:
        try:
            async for event in events:
                yield event
        except APIError as exc:
            yield error_event(exc)
        except Exception as exc:
            log.exception("error while streaming")
            yield error_event(APIError(500, f"Internal error while streaming: {type(exc).__name__}", type="server_error"))
        finally:
            await on_close()
        if done is not None:
            yield done

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})})
