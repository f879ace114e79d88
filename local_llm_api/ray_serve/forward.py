"""A request forwarded by the gateway, run through our whole FastAPI app inside a replica, its response handed
back piece by piece (status and headers first, then each body chunk as the app sends it: streams stay streams)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("local_llm_api.ray_serve")

Headers = list[tuple[bytes, bytes]]


@dataclass
class Forwarded:
    method: str
    path: str
    query: bytes = b""
    headers: Headers = field(default_factory=list)
    body: bytes = b""
    client: tuple[str, int] | None = None


@dataclass
class Head:
    status: int
    headers: Headers


async def run_app(app: Any, request: Forwarded) -> AsyncIterator[Head | bytes]:
    """Call the ASGI app on `request`; yield its Head, then its body chunks. When the consumer stops early (the
    client went away), the app is told the client disconnected, so it cancels the sequence as on a plain server."""
    messages: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
    disconnected = asyncio.Event()
    body_given = False

    async def receive() -> dict[str, Any]:
        nonlocal body_given
        if not body_given:
            body_given = True
            return {"type": "http.request", "body": request.body, "more_body": False}
        await disconnected.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        await messages.put(message)

    scope = {
        "type": "http",
        # spec 2.3: Starlette then watches receive() for the disconnect that the gateway's cancellation becomes
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": request.method,
        "scheme": "http",
        "path": request.path,
        "raw_path": request.path.encode(),
        "query_string": request.query,
        "root_path": "",
        "headers": request.headers,
        "client": request.client,
        "server": None,
    }
    task = asyncio.create_task(app(scope, receive, send))
    task.add_done_callback(lambda _: messages.put_nowait(None))
    finished = ended = False
    try:
        while not ended and (message := await messages.get()) is not None:
            if message["type"] == "http.response.start":
                yield Head(message["status"], list(message.get("headers", [])))
            elif message["type"] == "http.response.body":
                # Chunks sent while the last piece was on its way go on as one: passing a piece between processes
                # costs the same for one token as for ten, and under load they queue up.
                pieces, ended = [message.get("body", b"")], not message.get("more_body")
                while not ended and not messages.empty():
                    following = messages.get_nowait()
                    if following is None:  # the app has returned: nothing more will come
                        ended = True
                        break
                    pieces.append(following.get("body", b""))
                    ended = not following.get("more_body")
                if body := b"".join(pieces):
                    yield body
        finished = True
    finally:
        if not finished:
            disconnected.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout=None if finished else 10)
        except Exception:  # the app's own error handling has answered already; only its log line is left
            log.debug("the forwarded request's app task ended with an error", exc_info=True)
