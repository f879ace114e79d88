"""The tool-call formats of the model families that matter today, and which one a model uses.

The family is read from the chat template, by markers only that family's templates hold, more specific families
first (a Qwen3-Coder template holds `<tool_call>` too). A template in none of them that renders calls is rendered
with one known call and the frame read off the difference (llama.cpp's method); a template that renders no calls at
all gets the Hermes format, explained in a system message. MODELS_CONFIG's `tool_format` names a family instead.

Each family is a list of syntaxes: its own first (the one written and forced), then variants its models also write;
the common wrappers of other families (`FALLBACKS`) are read after those.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache

from .chat_template import ChatTemplateError, render_chat
from .tool_syntax import Style, ToolSyntax

HERMES_CUSTOM = {"custom_open": "<tool_call>\n<function={name}>\n", "custom_close": "\n</function>\n</tool_call>"}

HERMES = ToolSyntax("hermes", Style.OBJECT, "<tool_call>\n", "\n</tool_call>", separator="\n", **HERMES_CUSTOM)
QWEN3_CODER = ToolSyntax("qwen3-coder", Style.XML, "<tool_call>\n<function={name}>\n", "</function>\n</tool_call>",
                         separator="\n", param_open="<parameter={key}>\n", param_close="\n</parameter>\n", **HERMES_CUSTOM)
LLAMA3 = ToolSyntax("llama3", Style.OBJECT, "", "", separator="; ", arguments_key="parameters", bare=True)
LLAMA3_BUILTIN = ToolSyntax("llama3-builtin", Style.PYTHON, "<|python_tag|>{name}.call", "")
MISTRAL = ToolSyntax("mistral", Style.OBJECT, "", "", separator=", ", section_open="[TOOL_CALLS][", section_close="]")
MISTRAL_V11 = ToolSyntax("mistral-v11", Style.JSON, "[TOOL_CALLS]{name}[ARGS]", "")
DEEPSEEK_R1 = ToolSyntax("deepseek-r1", Style.JSON, "<｜tool▁call▁begin｜>function<｜tool▁sep｜>{name}\n```json\n",
                         "\n```<｜tool▁call▁end｜>", separator="\n", section_open="<｜tool▁calls▁begin｜>",
                         section_close="<｜tool▁calls▁end｜>")
DEEPSEEK_V31 = ToolSyntax("deepseek-v3.1", Style.JSON, "<｜tool▁call▁begin｜>{name}<｜tool▁sep｜>", "<｜tool▁call▁end｜>",
                          section_open="<｜tool▁calls▁begin｜>", section_close="<｜tool▁calls▁end｜>")
GLM45 = ToolSyntax("glm-4.5", Style.XML, "<tool_call>{name}\n", "</tool_call>", separator="\n",
                   param_open="<arg_key>{key}</arg_key>\n<arg_value>", param_close="</arg_value>\n")
KIMI_K2 = ToolSyntax("kimi-k2", Style.JSON, "<|tool_call_begin|>{name}<|tool_call_argument_begin|>", "<|tool_call_end|>",
                     section_open="<|tool_calls_section_begin|>", section_close="<|tool_calls_section_end|>",
                     name_format="functions.{name}:{index}")
GPT_OSS = ToolSyntax("gpt-oss", Style.JSON, "<|channel|>commentary to=functions.{name} <|constrain|>json<|message|>", "<|call|>")
COMMAND_R7B = ToolSyntax("command-r7b", Style.OBJECT, "", "", separator=", ", section_open="<|START_ACTION|>[",
                         section_close="]<|END_ACTION|>", name_key="tool_name", arguments_key="parameters",
                         id_key="tool_call_id")
GRANITE = ToolSyntax("granite", Style.OBJECT, "", "", separator=", ", section_open="<|tool_call|>[", section_close="]")
LFM2 = ToolSyntax("lfm2", Style.PYTHON, "{name}", "", separator=", ", section_open="<|tool_call_start|>[",
                  section_close="]<|tool_call_end|>")
FUNCTIONARY_V31 = ToolSyntax("functionary-v3.1", Style.JSON, "<function={name}>", "</function>")
FUNCTIONARY_V32 = ToolSyntax("functionary-v3.2", Style.JSON, ">>>{name}\n", "", answer_prefix=">>>all\n", prompt_opens=">>>")
FUNCTIONGEMMA = ToolSyntax("functiongemma", Style.GEMMA, "<start_function_call>call:{name}", "<end_function_call>",
                           quote="<escape>")
GEMMA4 = ToolSyntax("gemma4", Style.GEMMA, "<|tool_call>call:{name}", "<tool_call|>", quote='<|"|>')
MINIMAX_M2 = ToolSyntax("minimax-m2", Style.XML, '<invoke name="{name}">\n', "</invoke>\n", section_open="<minimax:tool_call>\n",
                        section_close="</minimax:tool_call>", param_open='<parameter name="{key}">', param_close="</parameter>\n")
SEED_OSS = ToolSyntax("seed-oss", Style.XML, "<seed:tool_call>\n<function={name}>\n", "</function>\n</seed:tool_call>",
                      separator="\n", param_open="<parameter={key}>", param_close="</parameter>\n")
APERTUS = ToolSyntax("apertus", Style.JSON, '{"{name}": ', "}", separator=", ", section_open="<|tools_prefix|>[",
                     section_close="]<|tools_suffix|>")

# What other families' models write, read whatever the family: the wrappers, a fenced object, a bare object.
FALLBACKS = (
    ToolSyntax("tool_call", Style.OBJECT, "<tool_call>", "</tool_call>"),
    ToolSyntax("function_call", Style.OBJECT, "<function_call>", "</function_call>"),
    ToolSyntax("toolcall", Style.OBJECT, "<TOOLCALL>", "</TOOLCALL>"),
    ToolSyntax("tool_calls", Style.OBJECT, "[TOOL_CALLS]", ""),
    ToolSyntax("python_tag", Style.OBJECT, "<|python_tag|>", "", arguments_key="parameters"),
    ToolSyntax("fenced", Style.OBJECT, "```json", "```"),
    ToolSyntax("bare", Style.OBJECT, "", "", bare=True),
)


@dataclass(frozen=True)
class Family:
    name: str
    syntaxes: tuple[ToolSyntax, ...]  # its own first: the one written in history and forced
    markers: tuple[str, ...]  # texts a chat template of this family holds, all of them

    @property
    def syntax(self) -> ToolSyntax:
        return self.syntaxes[0]


def _harmony_variants() -> tuple[ToolSyntax, ...]:
    """gpt-oss writes the recipient before or after the channel, with or without `<|constrain|>`."""
    opens = ("<|channel|>commentary to=functions.{name} <|constrain|>json<|message|>",
             "<|start|>assistant<|channel|>commentary to=functions.{name} <|constrain|>json<|message|>",
             "<|channel|>commentary to=functions.{name} json<|message|>",
             "<|channel|>commentary to=functions.{name}<|message|>",
             "<|start|>assistant to=functions.{name}<|channel|>commentary json<|message|>",
             "<|start|>assistant to=functions.{name}<|channel|>commentary <|constrain|>json<|message|>",
             "to=functions.{name}<|channel|>commentary json<|message|>",  # right after the prompt's <|start|>assistant
             "to=functions.{name}<|channel|>commentary <|constrain|>json<|message|>")
    return (GPT_OSS, *(ToolSyntax("gpt-oss", Style.JSON, o, "<|call|>") for o in opens[1:]))


# More specific families first: their markers may hold another family's.
FAMILIES = (
    Family("gpt-oss", _harmony_variants(), ("<|channel|>", "to=functions.")),
    Family("kimi-k2", (KIMI_K2,), ("<|tool_call_begin|>",)),
    Family("deepseek-r1", (DEEPSEEK_R1, DEEPSEEK_V31), ("tool▁sep｜>", "```json")),
    Family("deepseek-v3.1", (DEEPSEEK_V31, DEEPSEEK_R1), ("tool▁sep｜>",)),
    Family("minimax-m2", (MINIMAX_M2,), ("<minimax:tool_call>",)),
    Family("seed-oss", (SEED_OSS,), ("<seed:tool_call>",)),
    Family("glm-4.5", (GLM45,), ("<arg_key>",)),
    Family("qwen3-coder", (QWEN3_CODER, HERMES), ("<function=", "<parameter=")),
    Family("functionary-v3.1", (FUNCTIONARY_V31, LLAMA3_BUILTIN), ("<function=",)),
    Family("functionary-v3.2", (FUNCTIONARY_V32,), (">>>",)),
    Family("functiongemma", (FUNCTIONGEMMA,), ("<start_function_call>",)),
    Family("gemma4", (GEMMA4,), ("<|tool_call>",)),
    Family("lfm2", (LFM2,), ("<|tool_call_start|>",)),
    Family("command-r7b", (COMMAND_R7B,), ("<|START_ACTION|>",)),
    Family("granite", (GRANITE,), ("<|tool_call|>",)),
    Family("apertus", (APERTUS,), ("<|tools_prefix|>",)),
    Family("mistral-v11", (MISTRAL_V11, MISTRAL), ("[TOOL_CALLS]", "[ARGS]")),
    Family("mistral", (MISTRAL, MISTRAL_V11), ("[TOOL_CALLS]",)),
    Family("hermes", (HERMES,), ("<tool_call>",)),
    Family("llama3", (LLAMA3, LLAMA3_BUILTIN), ("<|python_tag|>",)),
    Family("llama3", (LLAMA3, LLAMA3_BUILTIN), ("<|start_header_id|>", "tools")),
)
FAMILY_NAMES = tuple(dict.fromkeys(f.name for f in FAMILIES))
DEFAULT = Family("hermes", (HERMES,), ())


@dataclass(frozen=True)
class ToolFormat:
    """A model's tool-call format: how it is known (`detected`, `derived`, `configured`, `default`), the syntax it
    writes and is forced into, and every syntax read back from its answers."""

    family: str
    how: str
    syntaxes: tuple[ToolSyntax, ...]

    @property
    def syntax(self) -> ToolSyntax:
        return self.syntaxes[0]


def tool_format(template: str | None, configured: str | None = None) -> ToolFormat:
    """The format of a model with this chat template (or the configured family)."""
    return _tool_format(template or "", configured)


@lru_cache(maxsize=64)
def _tool_format(template: str, configured: str | None) -> ToolFormat:
    if configured:
        family = next(f for f in FAMILIES if f.name == configured) if configured != DEFAULT.name else DEFAULT
        return ToolFormat(family.name, "configured", family.syntaxes + FALLBACKS)
    for family in FAMILIES:
        if all(marker in template for marker in family.markers):
            return ToolFormat(family.name, "detected", family.syntaxes + FALLBACKS)
    derived = derived_syntax(template)
    if derived is not None:
        return ToolFormat("derived", "derived", (derived, *FALLBACKS))
    return ToolFormat(DEFAULT.name, "default", DEFAULT.syntaxes + FALLBACKS)


PROBE_NAME, PROBE_KEY, PROBE_VALUE, SENTINEL = "probe_fn_q7", "probe_key_q7", "probe_value_q7", "SENTINEL_Q7"


def derived_syntax(template: str) -> ToolSyntax | None:
    """For a template of no known family: render an assistant turn with one call and without it, and read the call's
    frame off the difference (the text after the turn's content that only the first has). None when the template
    renders no calls or renders them in a way this cannot read (then the Hermes format is used)."""
    arguments = {PROBE_KEY: PROBE_VALUE}
    call = {"id": "call_probe", "type": "function", "function": {"name": PROBE_NAME, "arguments": arguments}}
    messages = [{"role": "user", "content": "U"}, {"role": "assistant", "content": SENTINEL}]
    try:
        with_call = render_chat(template, messages[:1] + [{**messages[1], "tool_calls": [call]}], bos_token="", eos_token="",
                                add_generation_prompt=False)
        without = render_chat(template, messages, bos_token="", eos_token="", add_generation_prompt=False)
    except (ChatTemplateError, TypeError, ValueError):
        return None
    if SENTINEL not in with_call or SENTINEL not in without:
        return None
    after_call = with_call[with_call.index(SENTINEL) + len(SENTINEL):]
    after_plain = without[without.index(SENTINEL) + len(SENTINEL):]
    if not after_call.endswith(after_plain):
        return None
    region = after_call[:len(after_call) - len(after_plain)].strip()
    name_at, value_at = region.find(PROBE_NAME), region.find(PROBE_VALUE)
    if name_at < 0 or value_at < 0:
        return None
    return _object_call(region, name_at) or _json_call(region, name_at)


def _json_call(region: str, name_at: int) -> ToolSyntax | None:
    """`<open NAME ...>{"key": "value"}<close>`: the arguments object after the name."""
    start = region.find("{", name_at + len(PROBE_NAME))
    if start < 0:
        return None
    try:
        value, end = json.JSONDecoder().raw_decode(region, start)
    except ValueError:
        return None
    if value != {PROBE_KEY: PROBE_VALUE}:
        return None
    return ToolSyntax("derived", Style.JSON, region[:name_at] + "{name}" + region[name_at + len(PROBE_NAME):start],
                      region[end:])


def _object_call(region: str, name_at: int) -> ToolSyntax | None:
    """`<open>{"name": "NAME", "args": {...}}<close>`: one object holding both."""
    for start in range(name_at, -1, -1):
        if region[start] != "{":
            continue
        try:
            value, end = json.JSONDecoder().raw_decode(region, start)
        except ValueError:
            continue
        if not isinstance(value, dict):
            continue
        name_key = next((k for k, v in value.items() if v == PROBE_NAME), None)
        args_key = next((k for k, v in value.items() if v == {PROBE_KEY: PROBE_VALUE}), None)
        if name_key and args_key:
            return ToolSyntax("derived", Style.OBJECT, region[:start], region[end:], name_key=name_key, arguments_key=args_key)
    return None
