"""Ollama's native API (https://docs.ollama.com/api): the request bodies this server takes and the objects it
answers. Every field Ollama documents is declared; unknown ones are refused with a 400 naming them."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, WithJsonSchema

from ..base import DropNone, Request, only, when

# keep_alive: seconds, or a Go duration string such as "5m", "1h30m", "-1" (checked in translate.keep_alive_seconds).
Duration = Annotated[float | int | str, WithJsonSchema({"anyOf": [
    {"type": "number"}, {"type": "string", "pattern": r"^[+-]?(\d+(\.\d+)?|(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+)$"}]})]
Format = Literal["", "json"] | dict[str, Any]


class ModelOptions(Request):
    """The `options` that do not sample (all that embeddings take): `num_ctx` is honoured; the others are accepted
    only at a value that changes nothing here (see `translate.refuse_unsupported_options`)."""

    num_ctx: int | None = Field(None, ge=1, description="Context for this request, within the model's own.")
    num_keep: int | None = None
    repeat_last_n: Annotated[int | None, only(None, 64)] = None
    typical_p: Annotated[float | None, only(None, 1.0)] = None
    tfs_z: Annotated[float | None, only(None, 1.0)] = None
    mirostat: Annotated[int | None, only(None, 0)] = None
    penalize_newline: Annotated[bool | None, only(None, True)] = None
    # Load-time options: on this server they are settings of the model, not of a request.
    numa: Annotated[bool | None, only(None)] = None
    num_batch: Annotated[int | None, only(None)] = None
    num_gpu: Annotated[int | None, only(None)] = None
    main_gpu: Annotated[int | None, only(None)] = None
    low_vram: Annotated[bool | None, only(None)] = None
    f16_kv: Annotated[bool | None, only(None)] = None
    logits_all: Annotated[bool | None, only(None)] = None
    vocab_only: Annotated[bool | None, only(None)] = None
    use_mmap: Annotated[bool | None, only(None)] = None
    use_mlock: Annotated[bool | None, only(None)] = None
    embedding_only: Annotated[bool | None, only(None)] = None
    num_thread: Annotated[int | None, only(None)] = None


class Options(ModelOptions):
    """`options` of a generation: the model's, and sampling."""

    num_predict: int | None = Field(None, ge=-2, description="Most tokens to generate; -1 or -2: up to the context.",
                                    json_schema_extra={"not": {"const": 0}})
    temperature: float | None = Field(None, ge=0, le=2)
    top_k: int | None = Field(None, ge=0)
    top_p: float | None = Field(None, ge=0, le=1)
    min_p: float | None = Field(None, ge=0, le=1)
    seed: int | None = None
    stop: list[str] | str | None = None
    repeat_penalty: float | None = Field(None, gt=0)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    mirostat_tau: Annotated[float | None, only(None)] = None  # no mirostat sampling here
    mirostat_eta: Annotated[float | None, only(None)] = None


class FunctionCall(Request):
    name: str
    arguments: dict[str, Any] | str = Field(default_factory=dict)
    index: int | None = None


class ToolCall(Request):
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCall


class ChatMessage(Request):
    model_config = ConfigDict(json_schema_extra={"allOf": [when(  # only the assistant calls tools
        {"properties": {"role": {"enum": ["system", "user", "tool"]}}}, {"properties": {"tool_calls": {"enum": [None, []]}}})]})

    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = ""
    images: list[str] | None = None  # base64 files, read before the text (vision models)
    thinking: str | None = None  # an earlier answer's reasoning: it reaches the template
    tool_calls: list[ToolCall] | None = None
    tool_name: str | None = None
    tool_call_id: str | None = None


class FunctionSpec(Request):
    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None


class ToolSpec(Request):
    type: Literal["function"] = "function"
    function: FunctionSpec


TOP_LOGPROBS_NEED_LOGPROBS = when({"required": ["top_logprobs"], "properties": {"top_logprobs": {"type": "integer", "minimum": 1}}},
                                  {"required": ["logprobs"], "properties": {"logprobs": {"const": True}}})


class Generation(Request):
    model_config = ConfigDict(json_schema_extra={"allOf": [TOP_LOGPROBS_NEED_LOGPROBS]})

    """What /api/chat and /api/generate share."""

    model: str = Field(min_length=1)
    stream: bool = True
    format: Format | None = None
    options: Options | None = None
    keep_alive: Duration | None = None
    think: bool | Literal["low", "medium", "high"] | None = None  # a model that cannot think refuses true (as Ollama does)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    truncate: bool | None = Field(None, description="Drop the oldest turns when the prompt does not fit (default true).")


class ChatRequest(Generation):
    messages: list[ChatMessage] = Field(default_factory=list)
    tools: list[ToolSpec] | None = None


class GenerateRequest(Generation):
    model_config = ConfigDict(json_schema_extra={"allOf": [TOP_LOGPROBS_NEED_LOGPROBS, when(
        {"required": ["raw", "system"], "properties": {"raw": {"const": True}, "system": {"type": "string", "minLength": 1}}},
        {"not": {}})]})  # a raw prompt is read as-is: no system prompt

    prompt: str | None = None
    suffix: Annotated[str | None, only(None, "")] = None  # refused: fill-in-the-middle
    system: str | None = None
    template: Annotated[str | None, only(None, "")] = None  # refused: the model's own template renders prompts
    context: Annotated[list[int] | None, only(None, [])] = None  # refused: send the conversation to /api/chat
    raw: bool | None = None
    images: list[str] | None = None  # base64 files, read before the prompt (vision models; not with `raw`)


class EmbedRequest(Request):
    model: str = Field(min_length=1)
    input: str | list[str]
    truncate: bool = True
    options: ModelOptions | None = None  # sampling options have no effect on embeddings: refused
    keep_alive: Duration | None = None
    dimensions: int | None = Field(None, ge=1)


class EmbeddingsRequest(Request):
    """The older /api/embeddings: one prompt, one vector."""

    model: str = Field(min_length=1)
    prompt: str
    options: ModelOptions | None = None  # sampling options have no effect on embeddings: refused
    keep_alive: Duration | None = None


class ModelName(Request):
    """/api/show, /api/delete: Ollama's clients send `model`; older ones `name`."""

    model: str = Field(min_length=1, validation_alias=AliasChoices("model", "name"))
    verbose: bool | None = None


class PullRequest(Request):
    model: str = Field(min_length=1, validation_alias=AliasChoices("model", "name"))
    insecure: bool | None = None
    stream: bool = True


class CopyRequest(Request):
    source: str = Field(min_length=1)
    destination: str = Field(min_length=1)


# ---------------------------------------------------------------- answers


def timestamp(seconds: float | None = None) -> str:
    moment = datetime.now(timezone.utc) if seconds is None else datetime.fromtimestamp(seconds, timezone.utc)
    return moment.isoformat().replace("+00:00", "Z")


class Details(BaseModel):
    parent_model: str = ""
    format: str
    family: str | None = None
    families: list[str] | None = None
    parameter_size: str | None = None
    quantization_level: str | None = None


class ListedModel(BaseModel):
    name: str
    model: str
    modified_at: str
    size: int
    digest: str
    details: Details


class TagsResponse(BaseModel):
    models: list[ListedModel]


class RunningModel(ListedModel):
    expires_at: str
    size_vram: int
    context_length: int


class PsResponse(BaseModel):
    models: list[RunningModel]


class ShowResponse(BaseModel):
    modelfile: str
    parameters: str
    template: str
    details: Details
    model_info: dict[str, Any]
    capabilities: list[str]
    modified_at: str


class VersionResponse(BaseModel):
    version: str


class OutFunction(BaseModel):
    index: int
    name: str
    arguments: dict[str, Any]


class OutToolCall(BaseModel):
    id: str
    function: OutFunction


class OutMessage(DropNone):
    role: Literal["assistant"] = "assistant"
    content: str = ""
    thinking: str | None = None
    tool_calls: list[OutToolCall] | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class Logprob(TopLogprob):
    top_logprobs: list[TopLogprob] | None = None


class Timings(DropNone):
    """The final object's figures, in nanoseconds and tokens."""

    done_reason: str | None = None
    total_duration: int | None = None
    load_duration: int | None = None
    prompt_eval_count: int | None = None
    prompt_eval_duration: int | None = None
    eval_count: int | None = None
    eval_duration: int | None = None


class ChatChunk(Timings):
    model: str
    created_at: str
    message: OutMessage
    done: bool
    logprobs: list[Logprob] | None = None


class GenerateChunk(Timings):
    model: str
    created_at: str
    response: str
    thinking: str | None = None
    done: bool
    logprobs: list[Logprob] | None = None


class EmbedResponse(DropNone):
    model: str
    embeddings: list[list[float]]
    total_duration: int | None = None
    load_duration: int | None = None
    prompt_eval_count: int | None = None


class EmbeddingsResponse(BaseModel):
    embedding: list[float]


class ProgressLine(DropNone):
    status: str
    digest: str | None = None
    total: int | None = None
    completed: int | None = None


class ErrorResponse(BaseModel):
    error: str
