"""Responses API request and response models, following `openai-openapi.yaml` (`CreateResponse`, `Response`,
the input items and the stream events). Unknown fields are refused with a 400 that names them."""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, SerializerFunctionWrapHandler, Tag, model_serializer

from ..base import DropNone, Refused, Request, Typed, by_type, only, when


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


# ---------------------------------------------------------------- input items


class InputText(Request):
    type: Literal["input_text", "output_text"]
    text: str
    annotations: list[dict[str, Any]] | None = None  # on output_text echoed back from an earlier response
    logprobs: list[dict[str, Any]] | None = None
    prompt_cache_breakpoint: dict[str, Any] | None = None


class InputImage(Request):
    type: Literal["input_image"]
    image_url: str | None = None  # a data URI, bare base64, or an http(s) URL (fetched where IMAGE_URL_FETCH allows)
    file_id: Annotated[str | None, only(None)] = None  # uploaded files: refused in translate.py (no Files API here)
    detail: Literal["auto", "low", "high", "original"] | None = None  # accepted: the model reads the image at its own size


class OtherContent(Typed):
    """File, audio and refusal parts: refused."""


Content = by_type(InputText, InputImage, other=OtherContent)


class MessageItem(Request):
    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[Content]
    id: str | None = None
    status: str | None = None
    phase: str | None = None


class FunctionCallItem(Request):
    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str
    namespace: str | None = None
    id: str | None = None
    status: str | None = None


class FunctionCallOutputItem(Request):
    type: Literal["function_call_output"]
    call_id: str | None = None  # Codex's goal tools leave it out: the call is found by name and namespace
    output: str | list[Content]
    name: str | None = None
    namespace: str | None = None
    id: str | None = None
    status: str | None = None


class CustomToolCallItem(Request):
    type: Literal["custom_tool_call"]
    call_id: str
    name: str
    input: str
    namespace: str | None = None
    id: str | None = None
    status: str | None = None


class CustomToolCallOutputItem(Request):
    type: Literal["custom_tool_call_output"]
    call_id: str
    output: str | list[Content]
    id: str | None = None


class SummaryText(Request):
    type: Literal["summary_text"]
    text: str


class ReasoningText(Request):
    type: Literal["reasoning_text"]
    text: str


class ReasoningItem(Request, DropNone):  # also an output item
    """An earlier answer's reasoning, sent back: it reaches the template with the assistant turn that follows."""

    type: Literal["reasoning"]
    id: str | None = None
    summary: list[SummaryText] = Field(default_factory=list)
    content: list[ReasoningText] | None = None
    encrypted_content: str | None = None  # this server's sealed reasoning (include: reasoning.encrypted_content)
    status: Literal["in_progress", "completed", "incomplete"] | None = None


class OtherItem(Typed):
    """Built-in tool calls, item references...: refused."""


def _item_tag(value: Any) -> str:
    kind = value.get("type", "message") if isinstance(value, dict) else getattr(value, "type", "message")
    return kind if isinstance(kind, str) and kind in ITEM_TYPES else "other"


ITEM_TYPES = {"message", "function_call", "function_call_output", "custom_tool_call", "custom_tool_call_output",
              "reasoning"}
InputItem = Annotated[
    Annotated[MessageItem, Tag("message")]
    | Annotated[ReasoningItem, Tag("reasoning")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")]
    | Annotated[CustomToolCallItem, Tag("custom_tool_call")]
    | Annotated[CustomToolCallOutputItem, Tag("custom_tool_call_output")]
    | Refused[Annotated[OtherItem, Tag("other")]],
    Discriminator(_item_tag),
]


# ---------------------------------------------------------------- tools


class FunctionToolParam(Request, DropNone):  # echoed in the response
    type: Literal["function"]
    name: str = Field(min_length=1, max_length=128)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None
    defer_loading: bool | None = None


class TextToolFormat(Request):
    type: Literal["text"]


class GrammarToolFormat(Request):
    type: Literal["grammar"]
    syntax: Literal["lark", "regex"]
    definition: str


class CustomToolParam(Request, DropNone):  # echoed in the response
    type: Literal["custom"]
    name: str = Field(min_length=1, max_length=128)
    description: str | None = None
    format: Annotated[TextToolFormat | GrammarToolFormat, Field(discriminator="type")] | None = None
    defer_loading: bool | None = None


class NamespaceToolParam(Request, DropNone):  # echoed in the response
    """A group of function or custom tools (Codex sends its MCP servers' tools this way)."""

    type: Literal["namespace"]
    name: str = Field(min_length=1)
    description: str | None = None
    tools: list[Annotated[FunctionToolParam | CustomToolParam, Field(discriminator="type")]]


class BuiltinToolParam(Typed):
    """A tool OpenAI runs itself (web_search, file_search, image_generation, ...): a local server cannot."""


def _tool_tag(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return kind if kind in ("function", "custom", "namespace") else "builtin"


ToolParam = Annotated[
    Annotated[FunctionToolParam, Tag("function")]
    | Annotated[CustomToolParam, Tag("custom")]
    | Annotated[NamespaceToolParam, Tag("namespace")]
    | Annotated[BuiltinToolParam, Tag("builtin")],
    Discriminator(_tool_tag),
]


class NamedToolChoice(Request, DropNone):  # echoed in the response
    type: Literal["function", "custom"]
    name: str


class AllowedTools(Request, DropNone):  # echoed in the response
    type: Literal["allowed_tools"]
    mode: Literal["auto", "required"]
    tools: list[dict[str, Any]]


class OtherToolChoice(Typed):
    """A tool choice naming a built-in tool: refused."""


ToolChoiceParam = Literal["none", "auto", "required"] | by_type(NamedToolChoice, AllowedTools, other=OtherToolChoice)


# ---------------------------------------------------------------- text format, reasoning


class TextFormatText(Request):
    type: Literal["text"]


class TextFormatJSONObject(Request):
    type: Literal["json_object"]


class TextFormatJSONSchema(Request, DropNone):  # echoed in the response
    type: Literal["json_schema"]
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    schema_: dict[str, Any] = Field(alias="schema")
    description: str | None = None
    strict: bool | None = None

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)


TextFormat = Annotated[TextFormatText | TextFormatJSONObject | TextFormatJSONSchema, Field(discriminator="type")]


class TextParam(Request, DropNone):  # echoed in the response
    format: TextFormat | None = None
    verbosity: Annotated[Literal["low", "medium", "high"] | None, only(None)] = None  # refused


class ReasoningParam(Request, DropNone):  # echoed in the response
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    summary: Literal["auto", "concise", "detailed", "none"] | None = None
    generate_summary: Literal["auto", "concise", "detailed"] | None = None  # the older name of `summary`
    mode: str | None = None
    context: Any = None


class StreamOptions(Request):
    include_obfuscation: bool | None = None  # no side channel to mask on a local server: a no-op


INCLUDABLE = Literal[
    "message.output_text.logprobs",
    # These name outputs of built-in tools or of reasoning, which this server never produces: accepted, empty.
    "reasoning.encrypted_content",
    "web_search_call.action.sources",
    "web_search_call.results",
    "code_interpreter_call.outputs",
    "computer_call_output.output.image_url",
    "file_search_call.results",
    "message.input_image.image_url",
]


class CreateResponse(Request):
    model_config = ConfigDict(json_schema_extra={
        "anyOf": [  # something to answer
            {"required": ["input"], "properties": {"input": {"anyOf": [{"type": "string"}, {"type": "array", "minItems": 1}]}}},
            {"required": ["instructions"], "properties": {"instructions": {"type": "string", "minLength": 1}}},
            {"required": ["previous_response_id"], "properties": {"previous_response_id": {"type": "string", "minLength": 1}}}],
        "allOf": [
            when({"required": ["stream_options"], "properties": {"stream_options": {"type": "object"}}},
                 {"required": ["stream"], "properties": {"stream": {"const": True}}}),
            when({"required": ["top_logprobs"], "properties": {"top_logprobs": {"type": "integer", "minimum": 1}}},
                 {"required": ["include"], "properties": {"include": {"type": "array", "contains": {
                     "const": "message.output_text.logprobs"}}}})]})

    model: str | None = Field(None, description="Model name; the server's default model when left out.")
    input: str | list[InputItem] | None = None
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[ToolParam] | None = None
    tool_choice: ToolChoiceParam | None = None
    parallel_tool_calls: bool | None = None
    text: TextParam | None = None
    metadata: dict[str, str] | None = Field(None, max_length=16)
    user: str | None = None
    safety_identifier: str | None = Field(None, max_length=64)
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    prompt_cache_options: dict[str, Any] | None = None
    service_tier: str | None = None
    client_metadata: dict[str, Any] | None = None  # Codex CLI's bookkeeping about its turn: nothing to act on here
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    store: bool | None = True
    previous_response_id: str | None = None
    include: list[INCLUDABLE] | None = None
    truncation: Literal["auto", "disabled"] | None = "disabled"
    reasoning: ReasoningParam | None = None
    max_tool_calls: int | None = Field(None, ge=0)  # a bound on built-in tool calls, of which there are none here
    # Refused with a named 400 in translate.py.
    background: Annotated[bool | None, only(None, False)] = None
    conversation: Annotated[str | dict[str, Any] | None, only(None)] = None
    prompt: Annotated[dict[str, Any] | None, only(None)] = None
    context_management: Annotated[list[dict[str, Any]] | None, only(None)] = None
    moderation: Annotated[dict[str, Any] | None, only(None)] = None


# ---------------------------------------------------------------- the response


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class Logprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class OutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[dict[str, Any]] = Field(default_factory=list)
    logprobs: list[Logprob] = Field(default_factory=list)


class OutputMessage(BaseModel):
    type: Literal["message"] = "message"
    id: str
    role: Literal["assistant"] = "assistant"
    status: Literal["in_progress", "completed", "incomplete"]
    content: list[OutputText]


class FunctionCallOutput(DropNone):  # `namespace` only when it has one
    type: Literal["function_call"] = "function_call"
    id: str
    call_id: str
    name: str
    arguments: str
    status: Literal["in_progress", "completed", "incomplete"]
    namespace: str | None = None


class CustomToolCallOutput(DropNone):  # `namespace` only when it has one
    type: Literal["custom_tool_call"] = "custom_tool_call"
    id: str
    call_id: str
    name: str
    input: str
    namespace: str | None = None


OutputItem = ReasoningItem | OutputMessage | FunctionCallOutput | CustomToolCallOutput


class InputTokensDetails(BaseModel):
    cached_tokens: int = 0
    cache_write_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: int
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int


class ResponseError(BaseModel):
    code: str
    message: str


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens", "content_filter"]


class ResponseObject(BaseModel):
    id: str
    object: Literal["response"] = "response"
    created_at: int = Field(default_factory=lambda: int(time.time()))
    completed_at: int | None = None
    status: Literal["completed", "failed", "in_progress", "incomplete"]
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    model: str
    output: list[OutputItem] = Field(default_factory=list)
    output_text: str = ""
    parallel_tool_calls: bool = True
    previous_response_id: str | None = None
    reasoning: ReasoningParam | None = None
    store: bool = True
    temperature: float | None = None
    top_p: float | None = None
    top_logprobs: int | None = None
    text: TextParam = Field(default_factory=lambda: TextParam(format=TextFormatText(type="text")))
    tool_choice: ToolChoiceParam = "auto"
    tools: list[ToolParam] = Field(default_factory=list)
    truncation: Literal["auto", "disabled"] = "disabled"
    usage: ResponseUsage | None = None
    user: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)

    @model_serializer(mode="wrap")
    def _drop_unset(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """`user` and `usage` are left out while unset: the spec has no null for them."""
        out = handler(self)
        for key in ("user", "usage"):
            if out.get(key) is None:
                out.pop(key, None)
        return out


class InputItemList(BaseModel):
    object: Literal["list"] = "list"
    data: list[InputItem]  # the input items of that request, each with an id
    first_id: str | None
    last_id: str | None
    has_more: bool


class DeletedResponse(BaseModel):
    id: str
    object: Literal["response.deleted"] = "response.deleted"
    deleted: bool = True
