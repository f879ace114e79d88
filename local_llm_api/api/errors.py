"""One exception type for every API error, and the handlers that turn anything into the OpenAI envelope."""

from __future__ import annotations

import logging
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("local_llm_api.errors")


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class APIError(Exception):
    """An error the client should see, with its HTTP status and OpenAI error fields."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = ErrorBody(message=message, type=type, param=param, code=code)
        self.headers = headers

    def response(self) -> JSONResponse:
        return JSONResponse(
            ErrorResponse(error=self.body).model_dump(), status_code=self.status, headers=self.headers
        )


def invalid_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def unsupported(param: str, why: str = "is not supported by this server") -> APIError:
    return APIError(400, f"'{param}' {why}.", param=param, code="unsupported_parameter")


def model_not_found(name: str) -> APIError:
    return APIError(
        404,
        f"The model '{name}' does not exist. GET /v1/models lists the models this server has.",
        param="model",
        code="model_not_found",
    )


def context_length_exceeded(prompt_tokens: int, max_tokens: int, context: int) -> APIError:
    return APIError(
        400,
        f"This model's maximum context length is {context} tokens. However, you requested "
        f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the prompt, {max_tokens} for the "
        "completion). Please reduce the prompt or the completion length.",
        param="messages",
        code="context_length_exceeded",
    )


_STATUS_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


_UNION_BRANCH = re.compile(r"^(str|int|float|bool|none|(list|dict|function-\w+|tagged-union|literal)\[.*\]|[A-Z]\w*)$")


def _validation_error(exc: RequestValidationError) -> APIError:
    """FastAPI's first validation error, phrased for a person and naming the parameter."""
    first = exc.errors()[0]
    loc = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path")]
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


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_error(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = _STATUS_TYPES.get(exc.status_code, "invalid_request_error" if exc.status_code < 500 else "server_error")
        message = str(exc.detail) if exc.status_code != 404 else "Not found: no such route."
        return APIError(exc.status_code, message, type=kind, headers=getattr(exc, "headers", None)).response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return APIError(500, f"Internal server error: {type(exc).__name__}", type="server_error").response()
