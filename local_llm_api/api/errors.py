"""Exception handlers: any error, raised anywhere, answered in the envelope of the API its route speaks
(OpenAI's by default; each dialect registers its own renderer for its paths)."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import Scope

from ..errors import APIError

log = logging.getLogger("local_llm_api.errors")

Renderer = Callable[[APIError], Response]


class ErrorRenderers:
    """Which envelope answers an error on a path: the first dialect whose pattern matches, else the default."""

    def __init__(self, default: Renderer) -> None:
        self.default = default
        self._dialects: list[tuple[re.Pattern[str], Renderer]] = []

    def add(self, path_pattern: str, renderer: Renderer) -> None:
        self._dialects.append((re.compile(path_pattern), renderer))

    def render(self, path: str, exc: APIError) -> Response:
        renderer = next((r for pattern, r in self._dialects if pattern.search(path)), self.default)
        return renderer(exc)


_STATUS_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


_UNION_BRANCH = re.compile(r"^(str|int|float|bool|none|(list|dict|function-\w+|tagged-union|literal)\[.*\]|[A-Z]\w*)$")


def validation_error(exc: RequestValidationError) -> APIError:
    """FastAPI's validation error, phrased for a person and naming the parameter."""
    # A field that is a string or a list fails once per form; when a list was sent, "should be a valid string"
    # says nothing, so the list's own error is the one to show.
    errors = exc.errors()
    first = next((e for e in errors if tuple(e.get("loc", ()))[-1:] != ("str",)), errors[0])
    loc = [str(part) for part in first.get("loc", ())]
    if loc and loc[0] in ("body", "query", "path", "header", "cookie"):  # where FastAPI found it; a body field may be "query"
        loc = loc[1:]
    # Pydantic adds union branch names (`str`, `list[int]`, `TextPart`...) to the location; keep the field path.
    param = ".".join(p for p in loc if not _UNION_BRANCH.match(p))
    if first.get("type") == "json_invalid":
        return APIError(400, f"The request body is not valid JSON: {first.get('ctx', {}).get('error', '')}".strip())
    if first.get("type") == "missing" and not param:
        return APIError(400, "The request body is missing; send a JSON object.")
    message = first.get("msg", "Invalid request")
    if first.get("type") == "extra_forbidden":
        message = "Unrecognized request argument supplied"
    return APIError(400, f"Invalid value for '{param or 'body'}': {message}", param=param or None)


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(app: FastAPI, scope: Scope) -> list[str]:
    """Every method some route answers on this path (what a 405's `Allow` must list)."""
    return [method for method in _METHODS
            if any(route.matches({**scope, "method": method})[0] is Match.FULL for route in app.router.routes)]


def install_error_handlers(app: FastAPI, renderers: ErrorRenderers) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> Response:
        return renderers.render(request.url.path, exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        return renderers.render(request.url.path, validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        kind = _STATUS_TYPES.get(exc.status_code, "invalid_request_error" if exc.status_code < 500 else "server_error")
        message = str(exc.detail) if exc.status_code != 404 else "Not found: no such route."
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:  # Starlette names the methods of the first route on the path only
            headers = {**(headers or {}), "Allow": ", ".join(allowed_methods(app, request.scope))}
        error = APIError(exc.status_code, message, type=kind, headers=headers)
        return renderers.render(request.url.path, error)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        error = APIError(500, f"Internal server error: {type(exc).__name__}", type="server_error")
        return renderers.render(request.url.path, error)
