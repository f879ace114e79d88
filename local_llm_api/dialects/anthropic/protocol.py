"""Messages API request and response models, as the `anthropic` SDK and Claude Code send and read them.
Unknown fields are accepted and named (dialects/base.py); `cache_control` is accepted everywhere (the prefix
cache does its job)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..base import Refused, Request, Typed, by_type, only, when


class ToolParam(Request):
    name: str = Field(min_length=1, max_length=128)
    description: str | None = None
    input_schema: dict[str, Any]
    type: Literal["custom"] | None = None
    cache_control: dict[str, Any] | None = None
    # Tool search: a deferred tool is not shown to the model until a tool result references it.
    defer_loading: bool | None = None
    strict: bool | None = None  # enforced: the call's input is constrained to the schema
    input_examples: list[dict[str, Any]] | None = None  # shown to the model with the tool's description
    allowed_callers: list[str] | None = Field(None, min_length=1)  # who may call it ("direct": the model)
    eager_input_streaming: bool | None = None  # how the input streams: whole calls are sent as one delta here


class OtherBlock(Typed):
    """Document and server-tool blocks: refused."""


class Base64Source(Request):
    type: Literal["base64"]
    media_type: str  # read from the file itself; a mismatch does not matter
    data: str


class URLSource(Request):
    type: Literal["url"]
    url: str  # fetched where IMAGE_URL_FETCH allows its host


class FileSource(Request):
    type: Literal["file"]
    file_id: str  # no Files API here: refused in translate.py


class ImageBlock(Request):
    type: Literal["image"]
    source: Annotated[Base64Source | URLSource | Refused[FileSource], Field(discriminator="type")]
    cache_control: dict[str, Any] | None = None


class TextBlock(Request):
    type: Literal["text"]
    text: str
    cache_control: dict[str, Any] | None = None
    citations: list[dict[str, Any]] | None = None


class ToolUseBlock(Request):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]
    cache_control: dict[str, Any] | None = None
    # Sent back by the SDK when an answer's blocks are reused as history; they change nothing here.
    caller: dict[str, Any] | None = None
    toolset_name: str | None = None


class ToolReferenceBlock(Request):
    """In a tool result (a tool search's answer): the named deferred tool is loaded from here on."""

    type: Literal["tool_reference"]
    tool_name: str


class ToolResultBlock(Request):
    type: Literal["tool_result"]
    tool_use_id: str
    content: str | list[by_type(TextBlock, ImageBlock, ToolReferenceBlock, other=OtherBlock)] | None = None  # type: ignore[valid-type]
    is_error: bool | None = None
    cache_control: dict[str, Any] | None = None


class ThinkingBlock(Request):
    """An earlier answer's reasoning, sent back in the history."""

    type: Literal["thinking"]
    thinking: str
    signature: str | None = None
    cache_control: dict[str, Any] | None = None


class RedactedThinkingBlock(Request):
    type: Literal["redacted_thinking"]
    data: str


class ToolReference(Request):
    type: Literal["tool_reference"]
    name: str


class ToolDefinition(Request):
    type: Literal["tool_definition"]
    definition: ToolParam


class ToolAdditionBlock(Request):
    """In a system turn inside `messages`: a tool offered from here on."""

    type: Literal["tool_addition"]
    tool: ToolDefinition


class ToolRemovalBlock(Request):
    """In a system turn inside `messages`: a tool withdrawn from here on."""

    type: Literal["tool_removal"]
    tool: ToolReference


Block = by_type(TextBlock, ImageBlock, ToolUseBlock, ToolResultBlock, ThinkingBlock, RedactedThinkingBlock, ToolAdditionBlock,
                ToolRemovalBlock, other=OtherBlock)


def _blocks_of(role: str, types: list[str]) -> dict[str, Any]:
    return when({"properties": {"role": {"const": role}}}, {"properties": {"content": {"anyOf": [
        {"type": "string"}, {"type": "array", "items": {"properties": {"type": {"enum": types}}}}]}}})


class MessageParam(Request):
    # Tool calls stand in the assistant's turns, their results in the user's; a system turn (Claude Code's
    # mid-conversation instructions) holds text and changes to the tools.
    model_config = ConfigDict(json_schema_extra={"allOf": [
        _blocks_of("user", ["text", "image", "tool_result"]),
        _blocks_of("assistant", ["text", "tool_use", "thinking", "redacted_thinking"]),
        _blocks_of("system", ["text", "tool_addition", "tool_removal"])]})

    role: Literal["user", "assistant", "system"]
    content: str | Annotated[list[Block], Field(min_length=1)]


class OtherTool(Typed):
    """Anthropic's server tools (web_search, bash, text_editor...): refused."""


class ToolChoice(Request):
    model_config = ConfigDict(json_schema_extra={"allOf": [when(
        {"properties": {"type": {"const": "tool"}}}, {"required": ["name"], "properties": {"name": {"type": "string", "minLength": 1}}})]})

    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class ThinkingEnabled(Request):
    type: Literal["enabled"]
    budget_tokens: int = Field(ge=1)
    display: Literal["summarized", "omitted"] | None = None


class ThinkingAdaptive(Request):
    type: Literal["adaptive"]
    display: Literal["summarized", "omitted"] | None = None


class ThinkingDisabled(Request):
    type: Literal["disabled"]


ThinkingParam = Annotated[ThinkingEnabled | ThinkingAdaptive | ThinkingDisabled, Field(discriminator="type")]


class JSONOutputFormat(Request):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(Request):
    # Claude's effort levels; these models have one. Accepted so that clients that always send it work.
    effort: Literal["low", "medium", "high", "xhigh", "max"] | None = None
    format: JSONOutputFormat | None = None


class Metadata(Request):
    user_id: str | None = None


class CountTokensRequest(Request):
    model_config = ConfigDict(json_schema_extra={"allOf": [when(
        {"required": ["tool_choice"], "properties": {"tool_choice": {"type": "object", "properties": {"type": {"enum": ["auto", "any", "tool"]}}}}},
        {"required": ["tools"], "properties": {"tools": {"type": "array", "minItems": 1}}})]})

    model: str | None = Field(None, description="Model name; the server's default model when left out.")
    messages: list[MessageParam] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    tools: list[by_type(ToolParam, other=OtherTool)] | None = None  # type: ignore[valid-type]
    tool_choice: ToolChoice | None = None
    thinking: ThinkingParam | None = None
    output_config: OutputConfig | None = None
    # Claude Code sends these; they concern Anthropic's platform (context editing, MCP, containers).
    context_management: dict[str, Any] | None = None
    mcp_servers: Annotated[list[dict[str, Any]] | None, only(None, [])] = None  # refused
    cache_control: dict[str, Any] | None = None  # automatic caching: the prefix cache does it anyway


class CreateMessage(CountTokensRequest):
    max_tokens: int = Field(ge=1)
    stop_sequences: list[str] | None = None
    temperature: float | None = Field(None, ge=0, le=1)
    top_p: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(None, ge=0)
    metadata: Metadata | None = None
    stream: bool | None = False
    service_tier: str | None = None
    container: Annotated[str | dict[str, Any] | None, only(None)] = None  # refused
    # Where and how fast Anthropic runs a request, and which account it bills: nothing to do on a local server.
    speed: Literal["standard", "fast"] | None = None
    inference_geo: str | None = None
    user_profile_id: str | None = None
    workspace_id: str | None = None
    diagnostics: Annotated[dict[str, Any] | None, only(None)] = None  # refused: no cache-miss reports here


# ---------------------------------------------------------------- the answer


def message_id() -> str:
    return f"msg_{uuid.uuid4().hex[:24]}"


def tool_use_id(call_id: str = "") -> str:
    return f"toolu_{call_id or uuid.uuid4().hex[:24]}"


class Usage(BaseModel):
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0


class TextOut(BaseModel):
    type: Literal["text"] = "text"
    text: str


class ToolUseOut(BaseModel):
    type: Literal["tool_use"] = "tool_use"
    id: str
    name: str
    input: dict[str, Any]


class ThinkingOut(BaseModel):
    type: Literal["thinking"] = "thinking"
    thinking: str  # empty when the request asked for `display: "omitted"`
    signature: str  # the reasoning, sealed: sent back in the history, it reaches the template again


StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"]


class MessageOut(BaseModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[ThinkingOut | TextOut | ToolUseOut]
    stop_reason: StopReason | None
    stop_sequence: str | None = None
    usage: Usage


class TokenCount(BaseModel):
    input_tokens: int


class ErrorDetail(BaseModel):
    type: str
    message: str


class ErrorEnvelope(BaseModel):
    type: Literal["error"] = "error"
    error: ErrorDetail
