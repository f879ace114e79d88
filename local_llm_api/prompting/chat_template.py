"""Rendering chat messages with the model's own Jinja chat template, in a sandbox, as Hugging Face does.

The template comes from the model (GGUF `tokenizer.chat_template` or `tokenizer_config.json`). Only a
model that carries none gets a family fallback, chosen from its name or architecture.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from typing import Any

from jinja2 import TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

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


class ChatTemplateError(Exception):
    """The template failed on these messages (often: a role order the model does not accept)."""


def fallback_template(model_name: str) -> str:
    name = model_name.lower()
    return next((template for key, template in FAMILY_FALLBACKS if key in name), CHATML)


def _tojson(value: Any, indent: int | None = None, ensure_ascii: bool = False, sort_keys: bool = False) -> str:
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, sort_keys=sort_keys)


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=16)
def _compile(source: str) -> Any:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(source)


def render_chat(
    template: str,
    messages: list[dict[str, Any]],
    *,
    bos_token: str,
    eos_token: str,
    add_generation_prompt: bool = True,
    tools: list[dict[str, Any]] | None = None,
) -> str:
    try:
        return _compile(template).render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=bos_token,
            eos_token=eos_token,
            tools=tools,
        )
    except TemplateError as exc:
        raise ChatTemplateError(str(exc)) from exc
    except Exception as exc:  # a template is code: it can fail at run time in any way (TypeError, KeyError...)
        raise ChatTemplateError(f"{type(exc).__name__}: {exc}") from exc
