"""OpenAI's error envelope: `{"error": {"message", "type", "param", "code"}}`, in bodies and stream events."""

from __future__ import annotations

from fastapi.responses import JSONResponse

from ...core.streaming import sse_data
from ...errors import APIError, ErrorResponse

__all__ = ["DONE", "ErrorResponse", "error_event", "error_response"]


def error_response(exc: APIError) -> JSONResponse:
    return JSONResponse(ErrorResponse(error=exc.body).model_dump(), status_code=exc.status, headers=exc.headers)


def error_event(exc: APIError) -> str:
    return sse_data(ErrorResponse(error=exc.body).model_dump_json())


DONE = "data: [DONE]\n\n"
