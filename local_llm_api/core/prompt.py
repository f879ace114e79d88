"""The prompt a model reads: neutral messages rendered with the model's own chat template (as Transformers
renders it), with the template's thinking switches set and, where thinking is off but the generation prompt
opened a block, that block closed; then tokenized."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

from ..backends.base import Backend
from ..prompting.chat_template import RESERVED, ChatTemplateError, TemplateInfo, render_chat, template_info
from ..prompting.reasoning import ReasoningFormat, template_variables
from ..prompting.tool_calls import Call, tools_system_prompt
from ..prompting.tool_families import tool_format
from ..errors import invalid_request
from .output import OutputPlan
from .request import ChatRequest, ImageInput, Message, ToolCall

# The type of the template variables clients set, where a wrong one would render nonsense.
KWARG_TYPES: dict[str, type | tuple[type, ...]] = {"enable_thinking": bool, "thinking": bool, "reasoning_effort": str}


# With PARSE_SPECIAL_IN_CONTENT=false, a control token's text inside a message is fenced with these (Unicode private
# use characters) through the rendering, and read as plain text when the prompt is tokenized.
FENCE_OPEN, FENCE_CLOSE = "\ue000", "\ue001"
_FENCED = re.compile(f"{FENCE_OPEN}(.*?){FENCE_CLOSE}", re.S)


@dataclass(frozen=True)
class Prompt:
    """A request's prompt text, and whether the answer starts inside a reasoning block the prompt opened."""

    text: str
    starts_inside: bool = False
    ignored: tuple[str, ...] = ()  # chat_template_kwargs the template does not read (named, not refused)
    fenced: str | None = None  # the text with control-token texts from messages fenced (PARSE_SPECIAL_IN_CONTENT=false)
    images: tuple[ImageInput, ...] = ()  # in the order the text places them
    media: object | None = None  # once tokenized: what the backend needs to read the images (given to `generate`)


@lru_cache(maxsize=8)
def _controls(texts: tuple[str, ...]) -> re.Pattern[str] | None:
    texts = tuple(sorted((t for t in texts if t), key=len, reverse=True))  # longer first: a token over those it holds
    return re.compile("|".join(re.escape(t) for t in texts)) if texts else None


def fence_messages(messages: list[Message], controls: tuple[str, ...]) -> list[Message]:
    """Messages whose control-token texts (`<|im_end|>` in a user's text) are fenced, to be read as plain text."""
    pattern = _controls(controls)
    if pattern is None:
        return messages

    def fence(text: str | None) -> str | None:
        return pattern.sub(lambda m: FENCE_OPEN + m.group() + FENCE_CLOSE, text) if text else text

    return [replace(m, content=fence(m.content) or "", reasoning=fence(m.reasoning),
                    parts=tuple(fence(p) or "" if isinstance(p, str) else p for p in m.parts) if m.parts is not None else None)
            for m in messages]


def tokenize_prompt(backend: Backend, prompt: Prompt) -> tuple[list[int], Prompt]:
    """The prompt's tokens: special token texts are those tokens, but where a message's text held one (fenced). With
    images, the backend expands each into its tokens (the prompt then carries what it needs to read them)."""
    if prompt.images:
        placed = prompt.text.count(backend.image_text)
        if placed != len(prompt.images):
            raise invalid_request(f"The model's chat template placed {placed} of the {len(prompt.images)} images; its "
                                  "template does not render image parts.", "messages", "images_not_placed")
        tokens, media = backend.read_images(prompt.text, list(prompt.images))
        return tokens, replace(prompt, media=media)
    return _tokens(backend, prompt), prompt


def _tokens(backend: Backend, prompt: Prompt) -> list[int]:
    if prompt.fenced is None or FENCE_OPEN not in prompt.fenced:
        return backend.tokenize(prompt.text, add_special=True)
    tokens: list[int] = []
    pieces = _FENCED.split(prompt.fenced)  # text, fenced, text, fenced, ...
    for i, piece in enumerate(pieces):
        if piece:
            tokens += backend.tokenize(piece, add_special=i == 0, parse_special=i % 2 == 0)
    return tokens

def template_messages(messages: list[Message], plan: OutputPlan, info: TemplateInfo, template: str,
                      image_text: str = "", image_parts: bool = True) -> list[dict[str, Any]]:
    """Messages as chat templates expect them: list content as text and image parts where the template reads them
    (`image_parts` false, as llama.cpp's server does: `image_text` as a text part where an image goes; a template that
    reads no parts gets the text with `image_text` in place), tool calls with their arguments as objects where it
    renders calls, tool results as `tool` messages where it knows the role. A template that knows none of it reads
    calls and results as text, and the tools in a system message."""
    image = {"type": "image"} if image_parts else {"type": "text", "text": image_text}

    def shown(parts: tuple[str | ImageInput, ...]) -> Any:
        if info.iterates_content:
            return [{"type": "text", "text": p} if isinstance(p, str) else image for p in parts]
        return "\n".join(p if isinstance(p, str) else image_text for p in parts if p != "")

    syntax = (plan.tool_format or tool_format(template)).syntax
    structured_results = info.knows_tool_role or info.renders_tool_calls
    out = []
    for message in messages:
        content: Any = message.content
        if message.parts is not None and (info.iterates_content or message.images):
            content = shown(message.parts)
        item: dict[str, Any] = {"role": message.role, "content": content}
        if message.name:
            item["name"] = message.name
        if message.reasoning:
            item["reasoning_content"] = message.reasoning  # templates of reasoning models render it; others ignore it
        calls = message.tool_calls
        if calls and info.renders_tool_calls:
            item["tool_calls"] = [{"id": c.id, "type": "function",
                                   "function": {"name": c.name, "arguments": _arguments(c)}} for c in calls]
        elif calls:
            written = [Call(c.name, c.arguments if c.custom else json.dumps(_arguments(c), ensure_ascii=False), c.custom)
                       for c in calls]
            item["content"] = (message.content + "\n" if message.content else "") + syntax.call_text(written)
        if message.role == "tool" and not structured_results:  # a tool's result (and its pictures) as the user's text
            text = f"<tool_response>\n{message.content}\n</tool_response>"
            item = {"role": "user", "content": shown((text, *message.images)) if message.images else text}
        elif message.tool_call_id:
            item["tool_call_id"] = message.tool_call_id
        out.append(item)
    if plan.tools and not info.reads_tools:
        instructions = tools_system_prompt(plan.tools, syntax)
        if out and out[0]["role"] == "system" and isinstance(out[0]["content"], str):
            out[0] = {**out[0], "content": out[0]["content"] + "\n\n" + instructions}
        else:
            out.insert(0, {"role": "system", "content": instructions})
    return out


def _arguments(call: ToolCall) -> Any:
    """A call's arguments as an object (as templates are written to read them, whatever the API sent): a custom
    tool's raw input is shown as `{"input": ...}`."""
    if call.custom:
        return {"input": call.arguments}
    try:
        return json.loads(call.arguments)
    except ValueError:
        return call.arguments


def template_kwargs(req: ChatRequest, info: TemplateInfo, reasoning: ReasoningFormat | None) -> dict[str, Any]:
    """The variables the template gets: the thinking switches for the request's effort, then chat_template_kwargs
    (which win). A name the template does not read is left out (the route names it as ignored)."""
    for name, value in req.template_kwargs.items():
        param = f"{req.template_kwargs_param}.{name}"
        if name in RESERVED:
            raise invalid_request(f"'{param}' cannot be set: the server passes '{name}' to the template itself.", param)
        expected = KWARG_TYPES.get(name)
        if expected is not None and not isinstance(value, expected):
            kind = expected.__name__ if isinstance(expected, type) else " or ".join(t.__name__ for t in expected)
            raise invalid_request(f"'{param}' must be a {kind}.", param)
    effort = req.reasoning.effort if req.reasoning is not None else None
    variables = template_variables(info, effort) if reasoning is not None else {}
    return {**variables, **{k: v for k, v in req.template_kwargs.items() if k in info.variables}}


def prompt_text(backend: Backend, req: ChatRequest, plan: OutputPlan, messages: list[Message] | None = None,
                reasoning: ReasoningFormat | None = None, plain_content: bool = False) -> Prompt:
    """The prompt text; `plain_content` (PARSE_SPECIAL_IN_CONTENT=false): control-token texts in messages are read as
    plain text (fenced in `Prompt.fenced`)."""
    facts = backend.facts
    info = template_info(facts.chat_template)
    shown = messages or req.messages
    if plain_content:
        shown = fence_messages(shown, backend.control_texts())
    try:
        messages_shown = template_messages(shown, plan, info, facts.chat_template, backend.image_text, backend.renders_image_parts)
        text = render_chat(facts.chat_template, messages_shown,
                           bos_token=facts.bos_token, eos_token=facts.eos_token,
                           add_generation_prompt=req.add_generation_prompt and not req.continue_final_message,
                           continue_final_message=req.continue_final_message,
                           tools=plan.tools if info.reads_tools else None,
                           variables=template_kwargs(req, info, reasoning))
    except ChatTemplateError as exc:
        raise invalid_request(f"The model's chat template rejected these messages: {exc}", "messages") from None
    ignored = tuple(f"{req.template_kwargs_param}.{name}" for name in req.template_kwargs if name not in info.variables)
    fenced = text if plain_content and FENCE_OPEN in text else None
    text = text.replace(FENCE_OPEN, "").replace(FENCE_CLOSE, "") if fenced else text
    images = tuple(image for m in shown for image in m.images)
    if images:
        fenced = None  # the processor reads the text as a whole; control texts in it stay control tokens
    if reasoning is None or req.continue_final_message:
        return Prompt(text, ignored=ignored, fenced=fenced, images=images)
    tail = generation_prompt(text, messages or req.messages)
    asked = req.reasoning_asked
    if asked is not None and not asked.wanted:  # off means off: close what the prompt opened
        closing = reasoning.closing(tail)
        return Prompt(text + closing, ignored=ignored, fenced=fenced + closing if fenced else None, images=images)
    return Prompt(text, reasoning.starts_inside(tail), ignored, fenced, images)


def generation_prompt(text: str, messages: list[Message]) -> str:
    """The end of a rendered prompt that follows the last message's text (the template's generation prompt)."""
    last = messages[-1].content.strip() if messages else ""
    at = text.rfind(last) if last else -1
    return text[at + len(last):] if at >= 0 else text[-200:]


def prompt_tokens(backend: Backend, req: ChatRequest, plan: OutputPlan, *, room: int | None = None,
                  context: int | None = None, reasoning: ReasoningFormat | None = None,
                  plain_content: bool = False) -> tuple[list[int], Prompt]:
    """The prompt's tokens. With `room`, the oldest turns (never system messages, never the last message) are
    dropped until the prompt leaves `room` tokens of the context (the model's, or `context`) for the answer."""
    context = context or backend.facts.context_size
    messages = list(req.messages)
    while True:
        prompt = prompt_text(backend, req, plan, messages, reasoning, plain_content)
        tokens, prompt = tokenize_prompt(backend, prompt)
        if room is None or len(tokens) + room <= context:
            return tokens, prompt
        droppable = [i for i, m in enumerate(messages[:-1]) if m.role != "system"]
        if not droppable:
            return tokens, prompt
        del messages[droppable[0]]
        # A turn's tool results go with the call they answer.
        while droppable[0] < len(messages) - 1 and messages[droppable[0]].role == "tool":
            del messages[droppable[0]]
