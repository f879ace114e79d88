"""A route class for APIs whose clients send JSON without saying so."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute


class JSONBodyRoute(APIRoute):
    """Reads the body as JSON whatever its Content-Type: Ollama's own examples and many scripts (`curl -d '{...}'`)
    send JSON as form data or with no type at all."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            kind = request.headers.get("content-type", "")
            if "json" not in kind and request.method != "GET":
                headers = [(k, v) for k, v in request.scope["headers"] if k != b"content-type"]
                request = Request({**request.scope, "headers": [*headers, (b"content-type", b"application/json")]},
                                  request.receive)
            return await handler(request)

        return route
