"""A Responses request (with the stored turns of `previous_response_id`) in the core's terms, and the
core's answer back as output items."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any
from dataclasses import dataclass, field

from pydantic import TypeAdapter

from ...backends.base import Backend
from ...core.chat import Answer
from ...errors import invalid_request, unsupported
from ...core.request import (ChatRequest, ForcedTool, ImageInput, JSONOutput, Message, Reasoning, Role, Sampling, Tool,
                             ToolCall, ToolChoice, text_of)
from ...prompting.reasoning import seal, unseal
from ...prompting.tool_calls import Call
from ...structured.logprobs import TokenLogprob
from .protocol import (
    AllowedTools,
    BuiltinToolParam,
    CreateResponse,
    CustomToolCallItem,
    CustomToolCallOutput,
    CustomToolCallOutputItem,
    CustomToolParam,
    FunctionCallItem,
    FunctionCallOutput,
    FunctionCallOutputItem,
    FunctionToolParam,
    InputItem,
    InputImage,
    InputText,
    Logprob,
    MessageItem,
    NamedToolChoice,
    NamespaceToolParam,
    OtherContent,
    OutputItem,
    ReasoningItem,
    ReasoningText,
    SummaryText,
    OutputMessage,
    OutputText,
    TextFormatJSONObject,
    TextFormatJSONSchema,
    TopLogprob,
    new_id,
)

ITEMS = TypeAdapter(list[InputItem])
LOGPROBS = "message.output_text.logprobs"


@dataclass
class ToolSet:
    """The request's tools as the model sees them, and how to name its calls back."""

    tools: list[Tool] = field(default_factory=list)
    namespaces: dict[str, tuple[str, str]] = field(default_factory=dict)  # model-facing name -> (namespace, name)
    ignored: list[str] = field(default_factory=list)  # built-in tools this server cannot run

    def is_custom(self, name: str) -> bool:
        return any(t.custom and t.name == name for t in self.tools)


def refuse_unsupported(req: CreateResponse) -> None:
    if req.stream_options is not None and not req.stream:
        raise invalid_request("'stream_options' is only allowed when 'stream' is true.", "stream_options")
    if req.background:
        raise unsupported("background", "(background responses) is not supported: stream the response instead")
    for name in ("conversation", "prompt", "context_management", "moderation"):
        if getattr(req, name) is not None:
            raise unsupported(name)
    if req.text is not None and req.text.verbosity is not None:
        raise unsupported("text.verbosity", "is not supported by this server")
    if req.top_logprobs and LOGPROBS not in (req.include or []):
        raise invalid_request(f"'top_logprobs' needs '{LOGPROBS}' in 'include'.", "top_logprobs")


def _custom_tool(tool: CustomToolParam, name: str, param: str) -> Tool:
    grammar = None
    if tool.format is not None and tool.format.type == "grammar":
        definition = tool.format.definition
        grammar = definition if tool.format.syntax == "lark" else "start: /" + definition.replace("/", "\\/") + "/"
    return Tool(name, tool.description, custom=True, grammar=grammar, param=param)


def tool_set(req: CreateResponse) -> ToolSet:
    tools = ToolSet()
    for i, tool in enumerate(req.tools or []):
        param = f"tools[{i}]"
        if isinstance(tool, FunctionToolParam):
            # As in OpenAI's Responses API, function tools are strict unless they say otherwise.
            tools.tools.append(Tool(tool.name, tool.description, tool.parameters, tool.strict is not False, param=param))
        elif isinstance(tool, CustomToolParam):
            tools.tools.append(_custom_tool(tool, tool.name, param))
        elif isinstance(tool, NamespaceToolParam):
            for j, inner in enumerate(tool.tools):
                name, inner_param = f"{tool.name}.{inner.name}", f"{param}.tools[{j}]"
                tools.namespaces[name] = (tool.name, inner.name)
                if isinstance(inner, FunctionToolParam):
                    tools.tools.append(Tool(name, inner.description, inner.parameters, inner.strict is not False, param=inner_param))
                else:
                    tools.tools.append(_custom_tool(inner, name, inner_param))
        elif isinstance(tool, BuiltinToolParam):
            tools.ignored.append(tool.type)
    return tools


def tool_choice(req: CreateResponse, tools: ToolSet) -> ToolChoice | None:
    choice = req.tool_choice
    if choice is None or isinstance(choice, str):
        return choice
    if isinstance(choice, NamedToolChoice):
        return ForcedTool(choice.name, "tool_choice.name")
    if isinstance(choice, AllowedTools):
        allowed = {t.get("name") for t in choice.tools}
        tools.tools = [t for t in tools.tools if t.name in allowed]
        return choice.mode
    raise unsupported("tool_choice", f"of type '{choice.type}' names a built-in tool this server cannot run")


def _parts(content: str | Sequence[InputText | InputImage | OtherContent], param: str) -> tuple[str | ImageInput, ...] | None:
    """List content's text and images (None for a string)."""
    if isinstance(content, str):
        return None
    parts: list[str | ImageInput] = []
    for j, part in enumerate(content):
        where = f"{param}.content[{j}]"
        if isinstance(part, InputText):
            parts.append(part.text)
        elif isinstance(part, InputImage) and part.image_url and part.file_id is None:
            parts.append(ImageInput(part.image_url, f"{where}.image_url"))
        elif isinstance(part, InputImage):
            raise invalid_request("An input_image needs 'image_url' (a data URI or URL): this server has no Files API "
                                  "for 'file_id'.", f"{where}.file_id" if part.file_id else f"{where}.image_url",
                                  "unsupported_parameter")
        else:
            raise invalid_request(f"Content of type '{part.type}' is not supported: this server serves text and vision "
                                  "models.", f"{where}.type", "unsupported_content_type")
    return tuple(parts)


def _message(role: Role, content: str | Sequence[InputText | InputImage | OtherContent], param: str, **fields: Any) -> Message:
    parts = _parts(content, param)
    return Message(role, text_of(parts) if parts is not None else str(content), parts=parts, **fields)


def reasoning_text(item: ReasoningItem) -> str:
    """What an earlier answer thought: its text, else its summary, else what its sealed content holds."""
    if item.content:
        return "\n".join(part.text for part in item.content)
    if item.summary:
        return "\n".join(part.text for part in item.summary)
    return unseal(item.encrypted_content) or ""


def messages_of(items: list[InputItem], param: str = "input") -> list[Message]:
    """Input items as chat messages: consecutive calls join one assistant turn, outputs become tool messages, and
    a reasoning item goes with the assistant turn after it."""
    messages: list[Message] = []
    thought: str | None = None
    for i, item in enumerate(items):
        where = f"{param}[{i}]"
        if isinstance(item, ReasoningItem):
            thought = (thought + "\n" if thought else "") + reasoning_text(item)
        elif isinstance(item, MessageItem):
            role = "system" if item.role == "developer" else item.role
            reasoning, thought = (thought, None) if role == "assistant" else (None, thought)
            messages.append(_message(role, item.content, where, reasoning=reasoning))
        elif isinstance(item, FunctionCallItem | CustomToolCallItem):
            name = f"{item.namespace}.{item.name}" if item.namespace else item.name
            custom = isinstance(item, CustomToolCallItem)
            call = ToolCall(item.call_id, name, item.input if custom else item.arguments, custom=custom)
            last = messages[-1] if messages else None
            if last is not None and last.role == "assistant" and thought is None:
                messages[-1] = Message("assistant", last.content, last.tool_calls + (call,), reasoning=last.reasoning,
                                       parts=last.parts)
            else:
                messages.append(Message("assistant", "", (call,), reasoning=thought))
                thought = None
        elif isinstance(item, FunctionCallOutputItem | CustomToolCallOutputItem):
            call_id = item.call_id if item.call_id is not None else _answered_call(messages, item)
            messages.append(_message("tool", item.output, where, tool_call_id=call_id))
        else:
            raise invalid_request(f"Input items of type '{item.type}' are not supported by this server.", f"{where}.type",
                                  "unsupported_item_type")
    return messages


def _answered_call(messages: list[Message], item: FunctionCallOutputItem) -> str | None:
    """The call an output without `call_id` answers: the latest call of that (namespaced) name not answered yet;
    None (plain output) when there is none."""
    name = f"{item.namespace}.{item.name}" if item.namespace and item.name else item.name
    answered = {m.tool_call_id for m in messages if m.role == "tool"}
    for message in reversed(messages):
        for call in reversed(message.tool_calls):
            if call.name == name and call.id not in answered:
                return call.id
    return None


def reasoning_of(req: CreateResponse) -> Reasoning | None:
    if req.reasoning is None:
        return None
    effort = req.reasoning.effort
    return Reasoning(effort=effort, param="reasoning.effort" if effort else "reasoning")


def input_items(req: CreateResponse) -> list[InputItem]:
    """The request's input as items, each with an id (a string input is one user message)."""
    raw = req.input
    if raw is None:
        return []
    items = [MessageItem(role="user", content=[InputText(type="input_text", text=raw)])] if isinstance(raw, str) else list(raw)
    out = []
    for item in items:
        if getattr(item, "id", None) is None:
            prefix = {"message": "msg", "function_call_output": "fco", "custom_tool_call_output": "ctco",
                      "reasoning": "rs"}.get(item.type, "item")
            item = item.model_copy(update={"id": new_id(prefix)})
        out.append(item)
    return out


def chat_request(req: CreateResponse, context: list[InputItem], own: list[InputItem], tools: ToolSet) -> ChatRequest:
    choice = tool_choice(req, tools)
    messages = messages_of(context, "previous_response_id") if context else []
    messages += messages_of(own)
    if req.instructions:
        messages.insert(0, Message("system", req.instructions))
    if not messages:
        raise invalid_request("'input' is required: give the model something to answer.", "input")
    fmt = req.text.format if req.text else None
    output = None
    if isinstance(fmt, TextFormatJSONObject):
        output = JSONOutput(param="text.format")
    elif isinstance(fmt, TextFormatJSONSchema):
        output = JSONOutput(fmt.schema_, bool(fmt.strict), "text.format.schema")
    logprobs = (req.top_logprobs or 0) if LOGPROBS in (req.include or []) else None
    return ChatRequest(
        messages=messages, model=req.model, sampling=Sampling(temperature=req.temperature, top_p=req.top_p),
        max_tokens=req.max_output_tokens, prompt_param="input", tools=tools.tools, tool_choice=choice,
        parallel_tool_calls=req.parallel_tool_calls, output=output, logprobs=logprobs, truncate=req.truncation == "auto",
        reasoning=reasoning_of(req),
    )


# ---------------------------------------------------------------- the answer as output items


def call_item(call: Call, tools: ToolSet) -> FunctionCallOutput | CustomToolCallOutput:
    namespace, name = tools.namespaces.get(call.name, (None, call.name))
    own = call.id or uuid.uuid4().hex[:24]  # the same ids in a stream's events and its final output
    call_id = f"call_{own}"
    if call.custom or tools.is_custom(call.name):
        text = call.arguments
        if not call.custom:  # the model wrote the custom call as JSON: {"input": ...}
            try:
                text = str(json.loads(call.arguments).get("input", call.arguments))
            except (ValueError, AttributeError):
                pass
        return CustomToolCallOutput(id=f"ctc_{own}", call_id=call_id, name=name, input=text, namespace=namespace)
    return FunctionCallOutput(id=f"fc_{own}", call_id=call_id, name=name, arguments=call.arguments, status="completed",
                              namespace=namespace)


def reasoning_item(reasoning: str, req: CreateResponse, item_id: str, status: str = "completed") -> ReasoningItem:
    """A thinking model's reasoning as an output item: its text as content, also as the summary when one is asked for
    (the server does not summarise), and sealed as `encrypted_content` when `include` asks (stateless clients send it
    back)."""
    summary = [SummaryText(type="summary_text", text=reasoning)] if req.reasoning and req.reasoning.summary not in (None, "none") \
        and reasoning else []
    sealed = seal(reasoning) if "reasoning.encrypted_content" in (req.include or []) else None
    return ReasoningItem(type="reasoning", id=item_id, summary=summary, status=status,  # type: ignore[arg-type]
                         content=[ReasoningText(type="reasoning_text", text=reasoning)], encrypted_content=sealed)


def output_items(answer: Answer, tools: ToolSet, logprobs: list[Logprob], req: CreateResponse, message_id: str | None = None,
                 reasoning_id: str | None = None) -> list[OutputItem]:
    """The answer's items in the order the model wrote them: reasoning, messages and calls."""
    items: list[OutputItem] = []
    if answer.reasoning is not None:
        items.append(reasoning_item(answer.reasoning, req, reasoning_id or new_id("rs")))
    status = "incomplete" if answer.finish_reason == "length" else "completed"
    for part in answer.in_order():
        if isinstance(part, str):
            first = not any(isinstance(item, OutputMessage) for item in items)
            items.append(OutputMessage(id=message_id if first and message_id else new_id("msg"), status=status,
                                       content=[OutputText(text=part, logprobs=logprobs if first else [])]))
        else:
            items.append(call_item(part, tools))
    if not any(not isinstance(item, ReasoningItem) for item in items):  # an empty answer still has its message
        items.append(OutputMessage(id=message_id or new_id("msg"), status=status,
                                   content=[OutputText(text=answer.content or "", logprobs=logprobs)]))
    return items


def response_logprobs(backend: Backend, items: Sequence[TokenLogprob]) -> list[Logprob]:
    def piece(token: int) -> tuple[str, list[int]]:
        raw = backend.token_bytes(token)
        return raw.decode("utf-8", "replace"), list(raw)

    out = []
    for item in items:
        text, raw = piece(item.token)
        top = [TopLogprob(token=t, logprob=lp, bytes=b) for (t, b), lp in ((piece(tok), lp) for tok, lp in item.top)]
        out.append(Logprob(token=text, logprob=item.logprob, bytes=raw, top_logprobs=top))
    return out
