"""Typed errors raised anywhere below the routes (the lowest layer: every other imports it). Each dialect renders
them in its own envelope (`api/errors.py` picks the renderer by route)."""

from __future__ import annotations

from pydantic import BaseModel


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """`{"error": {...}}`: OpenAI's envelope, which the server's own routes (admin, health) answer in too."""

    error: ErrorBody


class APIError(Exception):
    """An error the client should see: its HTTP status, what went wrong, and which parameter."""

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


def invalid_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def unsupported(param: str, why: str = "is not supported by this server") -> APIError:
    return APIError(400, f"'{param}' {why}.", param=param, code="unsupported_parameter")


def not_found(message: str, param: str | None = None, code: str = "not_found") -> APIError:
    return APIError(404, message, type="not_found_error", param=param, code=code)


def model_not_found(name: str) -> APIError:
    return APIError(
        404,
        f"The model '{name}' does not exist. GET /v1/models lists the models this server has.",
        param="model",
        code="model_not_found",
    )


class ContextOverflow(APIError):
    """The prompt alone fills the context: nothing is left for an answer. Each dialect words it the way its
    clients recognise (Claude Code compacts on Anthropic's "prompt is too long: N tokens > M maximum")."""

    def __init__(self, prompt_tokens: int, context: int, param: str) -> None:
        super().__init__(
            400,
            f"This model's maximum context length is {context} tokens. However, your {param} resulted in "
            f"{prompt_tokens} tokens, which leaves no room for an answer. Please reduce the length of the {param}.",
            param=param, code="context_length_exceeded")
        self.prompt_tokens = prompt_tokens
        self.context = context


def context_length_exceeded(prompt_tokens: int, context: int, param: str = "messages") -> ContextOverflow:
    return ContextOverflow(prompt_tokens, context, param)


def server_busy(reason: str) -> APIError:
    return APIError(429, f"The server is busy: {reason}. Retry shortly.", type="requests",
                    code="rate_limit_exceeded", headers={"Retry-After": "1"})


def client_closed_request() -> APIError:
    """The client left before its answer was ready: recorded as 499 (nginx's code for it), never as a 500."""
    return APIError(499, "The client closed the connection before the answer was ready.", code="client_closed_request")
