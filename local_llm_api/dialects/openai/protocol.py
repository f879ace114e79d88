"""OpenAI request and response models, following `openai-openapi.yaml` (ranges included).

Requests forbid unknown fields: a field we do not know is answered with 400 naming it, never dropped.
Fields the spec has but this server cannot honour yet are accepted here and refused in `translate.py`,
so that the error names the parameter and says why.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StrictInt,
    WithJsonSchema,
    model_serializer,
    model_validator,
)

from ..base import DropNone, Request, Typed, by_type, only, when

# ---------------------------------------------------------------- shared request parts


class StreamOptions(Request):
    include_usage: bool = False
    include_obfuscation: bool | None = None  # no side channel to mask on a local server; accepted as a no-op


class TextPart(Request):
    type: Literal["text"]
    text: str
    prompt_cache_breakpoint: dict[str, Any] | None = None
    cache_control: dict[str, Any] | None = None  # Anthropic-style marker some clients add; prompt caching here is automatic


class ImageURL(Request):
    url: str = Field(min_length=1)  # a data URI, bare base64, or an http(s) URL (fetched where IMAGE_URL_FETCH allows)
    detail: Literal["auto", "low", "high"] | None = None  # accepted: a vision model reads the image at its own size


class ImagePart(Request):
    type: Literal["image_url"]
    image_url: ImageURL


class OtherPart(Typed):
    """Audio, file and refusal parts: refused (no audio models)."""


ContentPart = by_type(TextPart, ImagePart, other=OtherPart)


class FunctionCall(Request):
    name: str
    arguments: str


class ToolCall(Request):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(Request):
    """Every field the spec gives a message, as clients echo them back in the history; `reasoning_content` (sent back
    by clients of reasoning models) goes to the chat template, which renders it where it knows it."""

    model_config = ConfigDict(json_schema_extra={"allOf": [  # the rules of _content_rules
        when({"properties": {"role": {"enum": ["system", "developer", "user", "tool"]}}},
             {"required": ["content"], "properties": {"content": {"type": ["string", "array"]}}}),
        when({"properties": {"role": {"const": "tool"}}},
             {"required": ["tool_call_id"], "properties": {"tool_call_id": {"type": "string", "minLength": 1}}}),
        when({"properties": {"role": {"const": "assistant"}}}, {"anyOf": [
            {"required": ["content"], "properties": {"content": {"type": ["string", "array"]}}},
            {"required": ["tool_calls"], "properties": {"tool_calls": {"type": "array", "minItems": 1}}},
            {"required": ["function_call"], "properties": {"function_call": {"type": "object"}}}]}),
    ]})

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    function_call: FunctionCall | None = None  # the spec's deprecated single call: read as a tool call
    tool_call_id: str | None = None
    refusal: str | None = None
    annotations: list[dict[str, Any]] | None = None  # citations of an earlier answer: no bearing on the next one
    audio: Annotated[dict[str, Any] | None, only(None)] = None  # an earlier audio answer: refused (text models)
    reasoning_content: str | None = None  # an earlier answer's reasoning (llama.cpp's, DeepSeek's name)
    reasoning: str | None = None  # the same, under vLLM's and OpenRouter's name

    @model_validator(mode="after")
    def _content_rules(self) -> ChatMessage:
        if self.content is None and not (self.role == "assistant" and (self.tool_calls or self.function_call)):
            raise ValueError(f"'content' is required for a {self.role} message")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs 'tool_call_id'")
        return self


class FunctionDefinition(Request):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class FunctionTool(Request):
    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(Request):
    name: str


class NamedToolChoice(Request):
    type: Literal["function"]
    function: FunctionName


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class TextFormat(Request):
    type: Literal["text"]


class JSONObjectFormat(Request):
    type: Literal["json_object"]


class JSONSchema(Request):
    # `schema` is optional in the spec, but there is nothing to constrain to without one (a 400 in translate.py).
    model_config = ConfigDict(json_schema_extra={"required": ["name", "schema"]})

    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    schema_: Annotated[dict[str, Any] | None, WithJsonSchema({"type": "object"})] = Field(None, alias="schema")
    strict: bool | None = None


class JSONSchemaFormat(Request):
    type: Literal["json_schema"]
    json_schema: JSONSchema


ResponseFormat = Annotated[TextFormat | JSONObjectFormat | JSONSchemaFormat, Field(discriminator="type")]


Stop = str | Annotated[list[str], Field(min_length=1, max_length=4)] | None
# Token id (checked against the vocabulary) -> bias.
LogitBias = Annotated[dict[str, Annotated[int, Field(ge=-100, le=100)]] | None, WithJsonSchema({"anyOf": [{"type": "null"}, {
    "type": "object", "propertyNames": {"pattern": "^[0-9]+$"},
    "additionalProperties": {"type": "integer", "minimum": -100, "maximum": 100}}]})]


TOOL_CHOICE_NEEDS_TOOLS = when({"required": ["tool_choice"], "properties": {"tool_choice": {"not": {"enum": [None, "none"]}}}},
                               {"required": ["tools"], "properties": {"tools": {"type": "array", "minItems": 1}}})
STREAM_OPTIONS_NEED_STREAM = when({"required": ["stream_options"], "properties": {"stream_options": {"type": "object"}}},
                                  {"required": ["stream"], "properties": {"stream": {"const": True}}})


class SamplingFields(Request):
    """Fields shared by chat and text completions. Ranges are the spec's; llama.cpp extras are ours."""

    model: str | None = Field(None, description="Model name; the server's default model when left out.")
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(1, ge=1, le=128)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(None, ge=0, description="llama.cpp extension; 0 disables it.")
    min_p: float | None = Field(None, ge=0, le=1, description="llama.cpp extension.")
    repeat_penalty: float | None = Field(None, gt=0, le=10, description="llama.cpp extension; 1 disables it.")
    presence_penalty: float | None = Field(0, ge=-2, le=2)
    frequency_penalty: float | None = Field(0, ge=-2, le=2)
    logit_bias: LogitBias = None
    seed: int | None = None
    stop: Stop = None
    user: str | None = None


class ChatCompletionRequest(SamplingFields):
    model_config = ConfigDict(json_schema_extra={"allOf": [STREAM_OPTIONS_NEED_STREAM, TOOL_CHOICE_NEEDS_TOOLS, when(
        {"required": ["top_logprobs"], "properties": {"top_logprobs": {"type": "integer"}}},
        {"required": ["logprobs"], "properties": {"logprobs": {"const": True}}})]})

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    # Accepted because they change nothing a local server does (bookkeeping for OpenAI's platform).
    store: bool | None = None
    metadata: dict[str, str] | None = None
    service_tier: str | None = None
    safety_identifier: str | None = Field(None, max_length=64)
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    prompt_cache_options: dict[str, Any] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    # Spec fields refused with a named 400 in translate.py.
    functions: Annotated[list[dict[str, Any]] | None, only(None)] = None
    function_call: Annotated[str | dict[str, Any] | None, only(None)] = None
    modalities: Annotated[list[str] | None, only(None, ["text"])] = None
    audio: Annotated[dict[str, Any] | None, only(None)] = None
    prediction: Annotated[dict[str, Any] | None, only(None)] = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    # The chat template's own inputs (vLLM's and llama.cpp's server's extensions).
    add_generation_prompt: bool = Field(True, description="Open the assistant's turn (false: the prompt ends where the "
                                        "messages end).")
    continue_final_message: bool = Field(False, description="Continue the last message (a prefill) instead of "
                                         "starting a new turn; needs add_generation_prompt false.")
    chat_template_kwargs: dict[str, Any] | None = Field(None, description="Variables for the chat template "
                                                        "(enable_thinking, reasoning_effort, ...).")
    verbosity: Annotated[str | None, only(None)] = None
    web_search_options: Annotated[dict[str, Any] | None, only(None)] = None
    moderation: Annotated[dict[str, Any] | None, only(None)] = None


def _something_to_read(value: str | list[Any]) -> str | list[Any]:
    if not value or any(not item and not isinstance(item, int) for item in value):
        raise ValueError("a text or token list must not be empty")
    return value


# A text, texts, token ids or lists of them; token ids are strict integers (`true` is not token 1). Each must give
# the model something to read (the check is ours, so that the error names the field, not a branch of the union).
NonEmptyTexts = Annotated[str | list[str] | list[StrictInt] | list[list[StrictInt]], AfterValidator(_something_to_read),
                          WithJsonSchema({"anyOf": [
                              {"type": "string", "minLength": 1},
                              {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}},
                              {"type": "array", "minItems": 1, "items": {"type": "integer"}},
                              {"type": "array", "minItems": 1, "items": {"type": "array", "minItems": 1, "items": {"type": "integer"}}}]})]


class CompletionRequest(SamplingFields):
    model_config = ConfigDict(json_schema_extra={"allOf": [STREAM_OPTIONS_NEED_STREAM, when(
        {"required": ["echo", "logprobs"], "properties": {"echo": {"const": True}, "logprobs": {"type": "integer"}}},
        {"not": {}})]})  # echo with logprobs (the prompt's logprobs) is refused

    prompt: NonEmptyTexts
    max_tokens: int | None = Field(16, ge=0)
    echo: bool | None = False
    suffix: Annotated[str | None, only(None, "")] = None  # fill-in-the-middle: refused
    logprobs: int | None = Field(None, ge=0, le=5)
    best_of: int | None = Field(None, ge=0, le=20, json_schema_extra={"maximum": 1}, description="0 or 1, or equal to n.")


class EmbeddingRequest(Request):
    input: NonEmptyTexts
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None


# ---------------------------------------------------------------- responses


FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "function_call"]


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0  # read from the prefix cache instead of computed


class CompletionTokensDetails(BaseModel):
    reasoning_tokens: int = 0  # of the completion tokens, those spent reasoning


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails = Field(default_factory=PromptTokensDetails)
    completion_tokens_details: CompletionTokensDetails = Field(default_factory=CompletionTokensDetails)


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0, reasoning_tokens: int = 0) -> Usage:
    return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, total_tokens=prompt_tokens + completion_tokens,
                 prompt_tokens_details=PromptTokensDetails(cached_tokens=cached_tokens),
                 completion_tokens_details=CompletionTokensDetails(reasoning_tokens=reasoning_tokens))


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None
    tool_calls: list[ToolCall] | None = None  # left out when there are none (the spec has no null here)
    # A thinking model's reasoning, under both names clients read (llama.cpp/DeepSeek's, vLLM/OpenRouter's).
    reasoning_content: str | None = None
    reasoning: str | None = None

    @model_serializer(mode="wrap")
    def _drop_unset(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        out = handler(self)
        for key in ("tool_calls", "reasoning_content", "reasoning"):
            if out.get(key) is None:
                out.pop(key, None)
        return out


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprobs(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprobs] | None
    refusal: list[TokenLogprobs] | None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: FinishReason
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class FunctionCallDelta(DropNone):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(DropNone):
    """A tool call in a stream: the first delta of a call has its id, type and name; later ones add arguments."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCallDelta | None = None


class ChatDelta(DropNone):
    """Only the keys a chunk changes: `role` on the first, `content` or `tool_calls` after that, `{}` with the
    finish reason."""

    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    finish_reason: FinishReason | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class CompletionLogprobs(BaseModel):
    """The legacy completions shape: parallel lists, one entry per token."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float]] | None
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: FinishReason | None
    logprobs: CompletionLogprobs | None = None


class CompletionResponse(BaseModel):
    """Both the `/completions` answer and each of its stream events (`finish_reason` null mid-stream)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    # Beyond the OpenAI object (clients ignore extra fields): what serves it and what it can do.
    backend: str
    state: str
    size_bytes: int
    capabilities: list[str]
    context_length: int | None = None  # tokens a request can use (per slot): prompt and answer together


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
