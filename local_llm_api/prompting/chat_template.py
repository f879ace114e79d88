"""Rendering chat messages with the model's own Jinja chat template, exactly as Transformers'
`apply_chat_template` renders them: the same sandbox and filters, the `{% generation %}` tag, messages without
their null keys, reasoning under every name templates read, `continue_final_message`, and template variables
(`chat_template_kwargs`). What a template can do is read once from its syntax tree (`TemplateInfo`).

The template comes from the model (GGUF `tokenizer.chat_template` or `tokenizer_config.json`). Only a
model that carries none gets a family fallback, chosen from its name or architecture.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from jinja2 import TemplateError, nodes
from jinja2.exceptions import SecurityError
from jinja2.ext import Extension, loopcontrols
from jinja2.meta import find_undeclared_variables
from jinja2.parser import Parser
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAMA3 = (
    "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
MISTRAL = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}[INST] {{ message['content'] }}"
    " [/INST]{% elif message['role'] == 'assistant' %}{{ message['content'] }}{{ eos_token }}{% else %}"
    "{{ message['content'] }}\n\n{% endif %}{% endfor %}"
)
GEMMA = (
    "{{ bos_token }}{% for message in messages %}<start_of_turn>"
    "{{ 'model' if message['role'] == 'assistant' else 'user' }}\n{{ message['content'] | trim }}<end_of_turn>\n"
    "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)

# Checked in order against the model's name and architecture (lower case); ChatML when nothing matches.
FAMILY_FALLBACKS: list[tuple[str, str]] = [
    ("llama-3", LLAMA3),
    ("llama3", LLAMA3),
    ("mistral", MISTRAL),
    ("mixtral", MISTRAL),
    ("gemma", GEMMA),
]

# What a rendering passes itself; a chat_template_kwargs entry may not take these names.
RESERVED = frozenset({"messages", "tools", "documents", "add_generation_prompt", "bos_token", "eos_token"})
REASONING_NAMES = ("reasoning_content", "thinking", "reasoning")  # a message's reasoning, under each name templates read
_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "


class ChatTemplateError(Exception):
    """The template failed on these messages (often: a role order the model does not accept)."""


def fallback_template(model_name: str) -> str:
    name = model_name.lower()
    return next((template for key, template in FAMILY_FALLBACKS if key in name), CHATML)


class GenerationBlocks(Extension):
    """Transformers' `{% generation %}` ... `{% endgeneration %}`, which marks the assistant's text for training
    masks: here it renders as its body."""

    tags = {"generation"}

    def parse(self, parser: Parser) -> list[nodes.Node]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


class _Namespace(Namespace):
    """`namespace()` without attributes starting with "_", as Transformers' sandbox has it."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # noqa: N805  (Jinja's own signature trick)
        self, rest = args[0], args[1:]
        for name in dict(*rest, **kwargs):
            _Namespace._check(name)
        Namespace.__init__(self, *rest, **kwargs)

    def __setitem__(self, name: str, value: Any) -> None:
        _Namespace._check(name)
        Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: object) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise SecurityError(f"chat templates cannot set the attribute {name!r} on a namespace")


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _new_dict(*args: Any, **kwargs: Any) -> dict[str, Any]:
    return dict(*args, **kwargs)


@lru_cache(maxsize=32)
def _compile(source: str) -> Any:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[GenerationBlocks, loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now, dict=_new_dict, namespace=_Namespace)
    try:
        return env.from_string(source)
    except TemplateError as exc:
        raise ChatTemplateError(f"the chat template does not compile: {exc}") from exc


@dataclass(frozen=True)
class TemplateInfo:
    """What a chat template reads, from its syntax tree."""

    variables: frozenset[str]  # the names it reads from outside (messages, tools, enable_thinking...)
    iterates_content: bool  # it loops over a message's content (text parts, images): list content is passed as is
    renders_tool_calls: bool  # it reads messages' `tool_calls`
    knows_tool_role: bool  # it handles messages of role "tool"
    literals: str  # its text and string constants (markers are looked up here)

    @property
    def reads_tools(self) -> bool:
        return "tools" in self.variables


def _names_content(node: nodes.Node, aliases: set[str]) -> bool:
    """Whether an expression is (or holds) a message's content: `message.content`, `m['content']`, or a name set
    from one."""
    for found in (node, *node.find_all((nodes.Getattr, nodes.Getitem, nodes.Name))):
        if isinstance(found, nodes.Getattr) and found.attr == "content":
            return True
        if isinstance(found, nodes.Getitem) and isinstance(found.arg, nodes.Const) and found.arg.value == "content":
            return True
        if isinstance(found, nodes.Name) and found.name in aliases:
            return True
    return False


_LIST_FILTERS = frozenset({"selectattr", "rejectattr", "map", "join", "first", "last", "list", "batch", "groupby",
                           "sort", "unique"})


@lru_cache(maxsize=32)
def template_info(source: str) -> TemplateInfo:
    template = _compile(source)
    tree = template.environment.parse(source)
    aliases: set[str] = set()
    for assign in tree.find_all(nodes.Assign):  # {% set content = message['content'] %}
        if isinstance(assign.target, nodes.Name) and _names_content(assign.node, aliases):
            aliases.add(assign.target.name)
    # Knows list content: loops over it, filters it (selectattr, map, join...), indexes it with a number, or tests
    # whether it is a string.
    iterates = (any(_names_content(loop.iter, aliases) for loop in tree.find_all(nodes.For))
                or any(_names_content(f.node, aliases) for f in tree.find_all(nodes.Filter)
                       if f.node is not None and f.name in _LIST_FILTERS)
                or any(_names_content(t.node, aliases) for t in tree.find_all(nodes.Test)
                       if t.name in ("string", "iterable", "sequence", "mapping"))
                or any(_names_content(i.node, aliases) for i in tree.find_all(nodes.Getitem)
                       if isinstance(i.arg, nodes.Const) and isinstance(i.arg.value, int)))
    attributes = {n.attr for n in tree.find_all(nodes.Getattr)}
    attributes |= {n.arg.value for n in tree.find_all(nodes.Getitem) if isinstance(n.arg, nodes.Const)}
    literals = {n.data for n in tree.find_all(nodes.TemplateData)}
    literals |= {n.value for n in tree.find_all(nodes.Const) if isinstance(n.value, str)}
    return TemplateInfo(variables=frozenset(find_undeclared_variables(tree)), iterates_content=iterates,
                        renders_tool_calls="tool_calls" in attributes, knows_tool_role="tool" in literals,
                        literals="\0".join(literals))


def _as_template_sees_it(message: dict[str, Any]) -> dict[str, Any]:
    """A message as Transformers hands it to a template: no keys whose value is null, and its reasoning under
    every name templates read (`reasoning_content`, gpt-oss's `thinking`)."""
    out = {key: value for key, value in message.items() if value is not None}
    reasoning = next((out[name] for name in REASONING_NAMES if out.get(name) is not None), None)
    if reasoning is not None:
        out = {"thinking": reasoning, **out, "reasoning_content": reasoning}
    return out


def render_chat(
    template: str,
    messages: list[dict[str, Any]],
    *,
    bos_token: str,
    eos_token: str,
    add_generation_prompt: bool = True,
    continue_final_message: bool = False,
    tools: list[dict[str, Any]] | None = None,
    variables: dict[str, Any] | None = None,
) -> str:
    """The prompt text. `continue_final_message`: the text ends inside the last message (a prefill the model
    continues), cut where that message's content ends, as Transformers does."""
    chat = [_as_template_sees_it(message) for message in messages]
    final_text = ""
    if continue_final_message:
        if add_generation_prompt:
            raise ChatTemplateError("continue_final_message and add_generation_prompt cannot both be set")
        if not chat:
            raise ChatTemplateError("continue_final_message is set but there is no message to continue")
        chat[-1], final_text = _tag_final_text(chat[-1])
    try:
        rendered = _compile(template).render(messages=chat, tools=tools, documents=None,
                                             add_generation_prompt=add_generation_prompt, bos_token=bos_token,
                                             eos_token=eos_token, **(variables or {}))
    except ChatTemplateError:
        raise
    except TemplateError as exc:
        raise ChatTemplateError(str(exc)) from exc
    except Exception as exc:  # a template is code: it can fail at run time in any way (TypeError, KeyError...)
        raise ChatTemplateError(f"{type(exc).__name__}: {exc}") from exc
    if not continue_final_message:
        return rendered
    tag = _CONTINUE_TAG.strip()
    if final_text.strip() not in rendered or tag not in rendered:
        raise ChatTemplateError("the chat template drops part of the final message, so it cannot be continued")
    at = rendered.rindex(tag)
    # Where the template keeps the tag's trailing space it kept the message's spacing too; else it trimmed both.
    return rendered[:at] if rendered[at:at + len(_CONTINUE_TAG)] == _CONTINUE_TAG else rendered[:at].rstrip()


def _tag_final_text(message: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The final message with a tag after its text (the last text part of list content), and that text."""
    content = message.get("content")
    if isinstance(content, list):
        parts = [dict(part) for part in content]
        for part in reversed(parts):
            if "text" in part:
                text = part["text"]
                part["text"] = text + _CONTINUE_TAG
                return {**message, "content": parts}, text
        raise ChatTemplateError("continue_final_message is set but the final message has no text to continue")
    if content is None:
        raise ChatTemplateError("continue_final_message is set but the final message has no content to continue")
    return {**message, "content": content + _CONTINUE_TAG}, content
