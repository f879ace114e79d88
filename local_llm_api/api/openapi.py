"""/openapi.json as the server really answers: FastAPI documents a 422 for every validated route, but this
server answers invalid requests with a 400 in the route's own error envelope (already listed per router), its
429 and 503 come with `Retry-After`, and an answer to a body with fields the server does not know names them
in `X-Ignored-Fields` (request schemas allow additional properties: clients add fields with every release)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before trying again", "schema": {"type": "integer"}}}
IGNORED_FIELDS = {"X-Ignored-Fields": {
    "description": "The request's fields this server does not know, accepted and ignored (comma-separated paths such "
                   "as `client_metadata, tools[*].defer_loading`); with STRICT_REQUEST_FIELDS=true they are a 400 instead",
    "schema": {"type": "string"}}}


def truthful(schema: dict[str, Any]) -> dict[str, Any]:
    for path_item in schema.get("paths", {}).values():
        for operation in path_item.values():
            responses = operation.get("responses", {})
            if responses.pop("422", None) is not None and "400" not in responses:
                responses["400"] = {"description": "Invalid request: the error names the field"}
            for code in ("429", "503"):
                if code in responses:
                    responses[code].setdefault("headers", {}).update(RETRY_AFTER)
            if "requestBody" in operation and "200" in responses:
                responses["200"].setdefault("headers", {}).update(IGNORED_FIELDS)
    components = schema.get("components", {}).get("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):  # FastAPI's 422 bodies, answered by no route
        components.pop(unused, None)
    return schema


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = truthful(get_openapi(title=app.title, version=app.version, summary=app.summary,
                                                      routes=app.routes))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
