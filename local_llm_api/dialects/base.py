"""What every dialect's requests share: the request-model base, and the route class that decides what happens
to fields a request carries that the dialect does not know.

Clients add fields with every release (Codex's `client_metadata`, Claude Code's `defer_loading`); refusing
them breaks every user of that release. So an unknown field is accepted and named: the response carries
`X-Ignored-Fields` and the access log line says which. `STRICT_REQUEST_FIELDS=true` refuses them with a 400
instead, as OpenAI does. Known fields keep their JSON types: `true` is not a number and `0` is not `false`.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Coroutine
from contextvars import ContextVar
from typing import Annotated, Any, Union, get_args

from fastapi import Request as HTTPRequest
from fastapi import Response
from fastapi.routing import APIRoute
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    SerializerFunctionWrapHandler,
    Tag,
    WithJsonSchema,
    model_serializer,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from ..errors import APIError

class Request(BaseModel):
    """A request body or a part of one. Unknown fields are kept aside (`model_extra`) for `unknown_fields`; known
    ones take only their own JSON type (strict mode: `true` is not 1, `0` is not false, "1" is not a number)."""

    model_config = ConfigDict(extra="allow", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _integral_numbers(cls, data: Any) -> Any:
        # JSON Schema counts 2.0 as an integer (a Python client's json.dumps writes one); strict mode would not.
        return {key: _integral(value) for key, value in data.items()} if isinstance(data, dict) else data


def _integral(value: Any, depth: int = 2) -> Any:
    """An integral float as an int, in a field's value and in the lists and maps it holds (token ids, logit bias)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        return int(value)
    if depth and isinstance(value, list):
        return [_integral(item, depth - 1) for item in value]
    if depth and isinstance(value, dict):
        return {key: _integral(item, depth - 1) for key, item in value.items()}
    return value


def unknown_fields(value: object, path: str = "") -> list[str]:
    """The unknown fields of a parsed request, as dotted paths (`tools[*].defer_loading`), each named once."""
    found: dict[str, None] = {}
    if isinstance(value, Request):
        for key in value.model_extra or {}:
            found[f"{path}.{key}" if path else key] = None
        given = value.model_fields_set  # a field left at its default holds nothing unknown
        for name, field in type(value).model_fields.items():
            if name not in given:
                continue
            inner = f"{path}.{field.alias or name}" if path else field.alias or name
            found.update(dict.fromkeys(unknown_fields(getattr(value, name), inner)))
    elif isinstance(value, (list, tuple)):
        for item in value:
            found.update(dict.fromkeys(unknown_fields(item, f"{path}[*]")))
    return list(found)


_route_request: ContextVar[HTTPRequest | None] = ContextVar("route_request", default=None)


def _checking_fields(endpoint: Callable[..., Any]) -> Callable[..., Any]:
    """The endpoint, after a look at its parsed body: unknown fields named in `request.state.ignored_fields`,
    or refused when the server is strict."""
    if not inspect.iscoroutinefunction(endpoint):
        return endpoint

    @functools.wraps(endpoint)  # FastAPI reads the parameters through __wrapped__
    async def checked(*args: Any, **kwargs: Any) -> Any:
        names = [name for value in kwargs.values() if isinstance(value, Request) for name in unknown_fields(value)]
        request = _route_request.get()
        if names and request is not None:
            if request.app.state.settings.strict_request_fields:
                raise APIError(400, f"Unrecognized request argument supplied: {names[0]}", param=names[0],
                               code="unknown_parameter")
            request.state.ignored_fields = names
        return await endpoint(*args, **kwargs)

    return checked


def say_what_changed(request: HTTPRequest, notes: dict[str, str], ignored: tuple[str, ...] = ()) -> None:
    """Headers for what the server did differently (core.chat's notes), and request fields that turned out to change
    nothing (named with the unknown ones)."""
    request.state.response_headers = notes
    if ignored:
        request.state.ignored_fields = [*getattr(request.state, "ignored_fields", []), *ignored]


class DialectRoute(APIRoute):
    """The route class of every dialect: unknown body fields are named or refused (see the module's doc)."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, _checking_fields(endpoint), **kwargs)

    def get_route_handler(self) -> Callable[[HTTPRequest], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: HTTPRequest) -> Response:
            token = _route_request.set(request)
            try:
                return await handler(request)
            finally:
                _route_request.reset(token)

        return route


class JSONBodyRoute(DialectRoute):
    """Reads the body as JSON whatever its Content-Type: Ollama's own examples and many scripts (`curl -d '{...}'`)
    send JSON as form data or with no type at all."""

    def get_route_handler(self) -> Callable[[HTTPRequest], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: HTTPRequest) -> Response:
            kind = request.headers.get("content-type", "")
            if "json" not in kind and request.method != "GET":
                headers = [(k, v) for k, v in request.scope["headers"] if k != b"content-type"]
                request = HTTPRequest({**request.scope, "headers": [*headers, (b"content-type", b"application/json")]},
                                      request.receive)
            return await handler(request)

        return route


class Typed(BaseModel):
    """Any object with a `type` (a content part, input item or tool this server does not serve), parsed so that
    the 400 refusing it can name it."""

    model_config = ConfigDict(extra="allow")
    type: str


def by_type(*models: type[BaseModel], other: type[Typed]) -> Any:
    """A union of parts told apart by their `type`: each known type validates as its own model, so that a bad
    field is named as such; any other type as `other`, which the translation refuses by name (left out of the
    document). A model whose `type` may be left out takes parts without one."""
    tags: dict[object, str] = {}
    for model in models:
        for value in get_args(model.model_fields["type"].annotation) or (model.model_fields["type"].default,):
            for literal in get_args(value) or (value,):
                tags[None if literal is type(None) else literal] = model.__name__

    def tag(part: Any) -> str:
        kind = part.get("type") if isinstance(part, dict) else getattr(part, "type", None)
        return tags.get(kind, "other") if isinstance(kind, str | None) else "other"

    members = tuple(Annotated[model, Tag(model.__name__)] for model in models) + (Refused[Annotated[other, Tag("other")]],)
    return Annotated[Union[members], Discriminator(tag)]  # noqa: UP007  (a runtime union of a tuple)


class DropNone(BaseModel):
    """Serialises without the keys left unset: stream deltas carry only what changed, and request parts echoed
    in a response leave out what the spec has no null for."""

    @model_serializer(mode="wrap")
    def _drop_unset(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


# What /openapi.json says of the fields a protocol parses only to refuse them by name (a spec field this server
# cannot honour, a content type text models cannot read): the document shows what the server accepts, so that
# clients generated from it and fuzzers send valid requests, while the server's 400 still names the field.
Refused = SkipJsonSchema  # a union member or field the server always refuses: left out of the document


def only(*values: object) -> WithJsonSchema:
    """The document allows just these values of a field the server refuses at any other."""
    return WithJsonSchema({"enum": list(values)})


def when(condition: dict[str, Any], then: dict[str, Any]) -> dict[str, Any]:
    """A rule between fields, for a model's `json_schema_extra={"allOf": [...]}`: if `condition` holds, `then` must."""
    return {"if": condition, "then": then}
