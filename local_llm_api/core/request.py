"""The dialect-neutral chat request: what every API (OpenAI chat, Responses, Anthropic Messages) is
translated into before a prompt is built and generation runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ..images import ImageInput

Role = Literal["system", "user", "assistant", "tool"]


@dataclass(frozen=True)
class ToolCall:
    """A call the assistant made, as the history carries it. `arguments` is a JSON object as text for a
    function; for a custom (free-form) tool it is the raw input."""

    id: str
    name: str
    arguments: str
    custom: bool = False


@dataclass(frozen=True)
class Message:
    role: Role
    content: str = ""  # the text (list content joined with newlines)
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None  # a tool message: the call it answers
    name: str | None = None
    reasoning: str | None = None  # an assistant turn's reasoning, shown to templates as `reasoning_content`
    parts: tuple[str | ImageInput, ...] | None = None  # the parts, when the API sent content as a list (templates
    # that iterate content get them as such); images only here

    @property
    def images(self) -> tuple[ImageInput, ...]:
        return tuple(p for p in self.parts or () if isinstance(p, ImageInput))


def text_of(parts: tuple[str | ImageInput, ...]) -> str:
    """A message's text: its text parts joined with newlines (images are not text)."""
    return "\n".join(p for p in parts if isinstance(p, str))


@dataclass(frozen=True)
class Tool:
    """A tool the model may call. A function takes JSON `parameters`; a custom tool takes free text,
    constrained by a Lark `grammar` when it has one."""

    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool = False
    custom: bool = False
    grammar: str | None = None  # Lark (llguidance's dialect), custom tools only
    param: str = "tools"  # where the tool came from in the request, for errors

    def shown(self) -> dict[str, Any]:
        """The tool as chat templates expect it (OpenAI's function-tool shape)."""
        parameters = self.parameters
        if self.custom:
            parameters = {"type": "object", "properties": {"input": {"type": "string", "description": self._input_hint()}},
                          "required": ["input"]}
        function: dict[str, Any] = {"name": self.name}
        description = self.description
        if self.custom:
            description = (description + " " if description else "") + "(a free-form tool: its input is raw text, not JSON)"
        if description:
            function["description"] = description
        if parameters is not None:
            function["parameters"] = parameters
        return {"type": "function", "function": function}

    def _input_hint(self) -> str:
        return "Free-form text" + (f" in this Lark grammar:\n{self.grammar}" if self.grammar else "")


@dataclass(frozen=True)
class ForcedTool:
    """`tool_choice` naming one tool."""

    name: str
    param: str = "tool_choice"


ToolChoice = Literal["none", "auto", "required"] | ForcedTool


@dataclass(frozen=True)
class JSONOutput:
    """The answer must be JSON: any object (`schema` None) or one matching `schema`."""

    schema: dict[str, Any] | None = None
    strict: bool = False
    param: str = "response_format"


@dataclass(frozen=True)
class Reasoning:
    """How much the model should think before it answers, from any API's control on one scale: `effort` "none"
    is off, None the model's own default; `budget_tokens` caps the thinking."""

    effort: str | None = None  # none, minimal, low, medium, high, xhigh, max
    budget_tokens: int | None = None
    param: str = "reasoning"  # the request field it came from, for errors and notes
    required: bool = False  # a model that cannot think is an error (Ollama's `think: true`), not a note

    @property
    def wanted(self) -> bool:
        return self.effort != "none"


@dataclass(frozen=True)
class Sampling:
    """Sampling fields as the request gave them; None falls back to the server's defaults."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repeat_penalty: float | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    logit_bias: dict[str, int] | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class ChatRequest:
    messages: list[Message]
    model: str | None = None
    sampling: Sampling = field(default_factory=Sampling)
    max_tokens: int | None = None
    prompt_param: str = "messages"  # the dialect's field that holds the prompt, for errors
    n: int = 1
    tools: list[Tool] = field(default_factory=list)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    output: JSONOutput | None = None
    logprobs: int | None = None  # None: none; k: the drawn token's and the k most likely
    truncate: bool = False  # drop the oldest turns when the prompt does not fit, instead of a 400
    context_limit: int | None = None  # fewer context tokens than the model's (Ollama's num_ctx); never more
    raw_prompt: str | None = None  # read as-is instead of `messages` rendered with the chat template (Ollama's raw)
    reasoning: Reasoning | None = None  # None: the model's default
    add_generation_prompt: bool = True
    continue_final_message: bool = False  # the answer continues the last message (a prefill)
    template_kwargs: dict[str, Any] = field(default_factory=dict)  # chat_template_kwargs: variables for the template
    template_kwargs_param: str = "chat_template_kwargs"

    @property
    def reasoning_asked(self) -> Reasoning | None:
        """How much to think: `reasoning`, else a thinking switch set through chat_template_kwargs."""
        if self.reasoning is not None:
            return self.reasoning
        for name in ("enable_thinking", "thinking"):
            if isinstance(self.template_kwargs.get(name), bool):
                return Reasoning(effort=None if self.template_kwargs[name] else "none",
                                 param=f"{self.template_kwargs_param}.{name}")
        return None

    def context(self, model_context: int) -> int:
        """The context this request runs in: the model's, or the smaller one it asked for."""
        return min(self.context_limit or model_context, model_context)
