"""Request and response bodies of the utility endpoints."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..base import Request, when
from ..openai.protocol import TOOL_CHOICE_NEEDS_TOOLS, ChatMessage, FunctionTool, ResponseFormat, ToolChoice


class ChatPrompt(Request):
    """A chat as /v1/chat/completions takes it, for the prompt it renders to."""

    model_config = ConfigDict(json_schema_extra={"allOf": [TOOL_CHOICE_NEEDS_TOOLS]})
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    tools: list[FunctionTool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template_kwargs: dict[str, Any] | None = None


class ApplyTemplateResponse(BaseModel):
    prompt: str
    model: str


class TokenizeRequest(Request):
    """A text (`content`, llama.cpp's name, or `prompt`), or chat `messages` rendered with the model's template."""

    model_config = ConfigDict(json_schema_extra={  # the rules of _one_input
        "oneOf": [{"required": [name], "properties": {name: {"type": kind}}}
                  for name, kind in (("content", "string"), ("prompt", "string"), ("messages", "array"))],
        "allOf": [when({"required": ["tools"], "properties": {"tools": {"type": "array", "minItems": 1}}},
                       {"required": ["messages"], "properties": {"messages": {"type": "array"}}})]})

    model: str | None = None
    content: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(None, min_length=1)
    tools: list[FunctionTool] | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    add_special: bool = Field(False, description="Add the model's BOS/CLS tokens to a text (chat prompts carry theirs).")
    with_pieces: bool = Field(False, description="Each token as {id, piece}: its text, or its bytes when not UTF-8.")

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        given = [name for name in ("content", "prompt", "messages") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of 'content', 'prompt' and 'messages'")
        if self.tools and self.messages is None:
            raise ValueError("'tools' go with 'messages'")
        return self


class Piece(BaseModel):
    id: int
    piece: str | list[int]


class TokenizeResponse(BaseModel):
    tokens: list[int] | list[Piece]
    count: int
    max_model_len: int
    model: str


class DetokenizeRequest(Request):
    model: str | None = None
    tokens: list[Annotated[int, Field(ge=0, description="A token id of the model's vocabulary.")]]


class DetokenizeResponse(BaseModel):
    content: str
    model: str


class TextDocument(Request):
    text: str


class RerankRequest(Request):
    model: str | None = None
    query: str = Field(min_length=1)
    documents: list[str | TextDocument] = Field(min_length=1, max_length=10000)
    top_n: int | None = Field(None, ge=1)
    return_documents: bool = False


class RankedDocument(BaseModel):
    text: str


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    document: RankedDocument | None = None


class RerankUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class RerankResponse(BaseModel):
    id: str
    object: Literal["list"] = "list"
    model: str
    method: Literal["cross-encoder", "embedding-similarity"] = Field(
        description="How the scores were made: a cross-encoder reading each pair, or cosine similarity of embeddings."
    )
    results: list[RerankResult]
    usage: RerankUsage
