"""Request-model bases every dialect's protocol uses."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, SerializerFunctionWrapHandler, model_serializer


class Request(BaseModel):
    """Unknown fields are refused with a 400 that names them, never dropped."""

    model_config = ConfigDict(extra="forbid")


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
