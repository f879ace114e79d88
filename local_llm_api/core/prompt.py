"""The prompt a model reads: neutral messages rendered with the model's own chat template, then tokenized."""

from __future__ import annotations

import json
from typing import Any

from ..backends.base import Backend
from ..prompting.chat_template import ChatTemplateError, render_chat
from ..prompting.tool_calls import Call, template_takes_tools, tool_format, tools_system_prompt
from .errors import invalid_request
from .output import OutputPlan
from .request import Message, ToolCall


def template_messages(messages: list[Message], plan: OutputPlan, template: str) -> list[dict[str, Any]]:
    """Messages as chat templates expect them, tool-call arguments as objects. A template that knows no
    tools reads calls and results as text, and the tools in a system message."""
    takes_tools = template_takes_tools(template)
    fmt = tool_format(template)
    out = []
    for message in messages:
        item: dict[str, Any] = {"role": message.role, "content": message.content}
        if message.name:
            item["name"] = message.name
        if message.reasoning:
            item["reasoning_content"] = message.reasoning  # templates of reasoning models render it; others ignore it
        calls = message.tool_calls
        if calls and takes_tools:
            item["tool_calls"] = [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": _arguments(c)}}
                                  for c in calls]
        elif calls:
            text = fmt.call_text([Call(c.name, json.dumps(_arguments(c))) for c in calls])
            item["content"] = (item["content"] + "\n" if item["content"] else "") + text
        if message.role == "tool" and not takes_tools:
            item = {"role": "user", "content": f"<tool_response>\n{item['content']}\n</tool_response>"}
        elif message.tool_call_id:
            item["tool_call_id"] = message.tool_call_id
        out.append(item)
    if plan.tools and not takes_tools:
        instructions = tools_system_prompt(plan.tools)
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": out[0]["content"] + "\n\n" + instructions}
        else:
            out.insert(0, {"role": "system", "content": instructions})
    return out


def _arguments(call: ToolCall) -> Any:
    """A call's arguments as an object: a custom tool's raw input is shown as `{"input": ...}`."""
    if call.custom:
        return {"input": call.arguments}
    try:
        return json.loads(call.arguments)
    except ValueError:
        return call.arguments


def prompt_text(backend: Backend, messages: list[Message], plan: OutputPlan) -> str:
    facts = backend.facts
    try:
        return render_chat(facts.chat_template, template_messages(messages, plan, facts.chat_template),
                           bos_token=facts.bos_token, eos_token=facts.eos_token,
                           tools=plan.tools if template_takes_tools(facts.chat_template) else None)
    except ChatTemplateError as exc:
        raise invalid_request(f"The model's chat template rejected these messages: {exc}", "messages") from None


def prompt_tokens(backend: Backend, messages: list[Message], plan: OutputPlan, *, room: int | None = None,
                  context: int | None = None) -> list[int]:
    """The prompt's tokens. With `room`, the oldest turns (never system messages, never the last message) are
    dropped until the prompt leaves `room` tokens of the context (the model's, or `context`) for the answer."""
    context = context or backend.facts.context_size
    messages = list(messages)
    while True:
        tokens = backend.tokenize(prompt_text(backend, messages, plan), add_special=True)
        if room is None or len(tokens) + room <= context:
            return tokens
        droppable = [i for i, m in enumerate(messages[:-1]) if m.role != "system"]
        if not droppable:
            return tokens
        del messages[droppable[0]]
        # A turn's tool results go with the call they answer.
        while droppable[0] < len(messages) - 1 and messages[droppable[0]].role == "tool":
            del messages[droppable[0]]
