"""Request-model bases every dialect's protocol uses."""

from __future__ import annotations

from functools import cache
from typing import Any, get_args

from pydantic import BaseModel, ConfigDict, SerializerFunctionWrapHandler, WithJsonSchema, model_serializer, model_validator
from pydantic.json_schema import SkipJsonSchema


class Request(BaseModel):
    """Unknown fields are refused with a 400 that names them, never dropped; `true` is not a number."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, data: Any) -> Any:
        # Pydantic's lax mode reads true as 1 (keeping 2.0 for an integer, as JSON Schema does).
        if isinstance(data, dict):
            for name in _numeric_fields(cls) & data.keys():
                if isinstance(data[name], bool):
                    raise ValueError(f"'{name}' must be a number, not {str(data[name]).lower()}")
        return data


@cache
def _numeric_fields(model: type[BaseModel]) -> frozenset[str]:
    def numeric(annotation: Any) -> bool:
        kinds = [kind for kind in get_args(annotation) or (annotation,) if kind is not type(None)]
        return bool(kinds) and all(kind in (int, float) for kind in kinds)

    return frozenset(field.alias or name for name, field in model.model_fields.items() if numeric(field.annotation))


class Typed(BaseModel):
    """Any object with a `type` (a content part, input item or tool this server does not serve), parsed so that
    the 400 refusing it can name it."""

    model_config = ConfigDict(extra="allow")
    type: str


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
