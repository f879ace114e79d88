"""Ollama's error shape: `{"error": "..."}` with the HTTP status, and the same object as a line mid-stream."""

from __future__ import annotations

from fastapi.responses import JSONResponse

from ...errors import APIError
from .protocol import ErrorResponse


def message(exc: APIError) -> str:
    param = exc.body.param
    return exc.body.message + (f" (param: {param})" if param and param not in exc.body.message else "")


def error_response(exc: APIError) -> JSONResponse:
    return JSONResponse(ErrorResponse(error=message(exc)).model_dump(), status_code=exc.status, headers=exc.headers)


def error_line(exc: APIError) -> str:
    return ErrorResponse(error=message(exc)).model_dump_json() + "\n"
