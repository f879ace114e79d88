"""Anthropic's error envelope, `{"type": "error", "error": {"type", "message"}}`, with its error types."""

from __future__ import annotations

from fastapi.responses import JSONResponse

from ...errors import APIError, ContextOverflow
from ...core.streaming import sse_data
from .protocol import ErrorDetail, ErrorEnvelope

TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
         413: "request_too_large", 429: "rate_limit_error", 503: "overloaded_error", 529: "overloaded_error"}


def envelope(exc: APIError) -> ErrorEnvelope:
    kind = TYPES.get(exc.status, "api_error" if exc.status >= 500 else "invalid_request_error")
    if isinstance(exc, ContextOverflow):  # Anthropic's own words, which Claude Code reads to compact the conversation
        return ErrorEnvelope(error=ErrorDetail(type=kind, message=f"prompt is too long: {exc.prompt_tokens} tokens > "
                                                                  f"{exc.context - 1} maximum"))
    message = exc.body.message + (f" (param: {exc.body.param})" if exc.body.param else "")
    return ErrorEnvelope(error=ErrorDetail(type=kind, message=message))


def error_response(exc: APIError) -> JSONResponse:
    return JSONResponse(envelope(exc).model_dump(), status_code=exc.status, headers=exc.headers)


def error_event(exc: APIError) -> str:
    return sse_data(envelope(exc).model_dump_json(), "error")
