"""How a model family writes tool calls: what its chat template shows it, the grammar that forces a call,
and the parser that turns its output back into OpenAI `tool_calls`.

The family is read from the model's chat template: Hermes / Qwen (`<tool_call>` blocks), Llama 3 (bare
JSON objects with `parameters`), Mistral (a JSON list after `[TOOL_CALLS]`). A template that knows no
tools gets the Hermes format, described in a system message (`tools_system_prompt`).

Custom (free-form) tools take raw text, not JSON: their calls are written in the Qwen3-Coder style,
`<function=NAME>` + text + `</function>`, inside the family's call frame, so that a Lark grammar can
constrain the text itself.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Call:
    name: str
    arguments: str  # a JSON object, as text (what OpenAI sends); a custom tool's raw input
    custom: bool = False


CUSTOM_OPEN, CUSTOM_CLOSE = "<function=", "\n</function>"


@dataclass(frozen=True)
class ToolFormat:
    name: str
    call_open: str  # written before each call's JSON object
    call_close: str  # and after it
    separator: str  # between calls
    list_open: str  # around all the calls (Mistral's JSON list)
    list_close: str
    arguments_key: str  # "arguments", or Llama 3's "parameters"
    marker: str | None  # the text that announces calls mid-answer; None: calls are the whole answer
    preamble: str = ""  # a special token some vocabularies print before the calls (dropped)

    def call_text(self, calls: list[Call]) -> str:
        """Calls as this family writes them (for assistant turns in the history)."""
        objects = [self.call_open + json.dumps({"name": c.name, self.arguments_key: _as_object(c.arguments)}) + self.call_close
                   for c in calls]
        return self.list_open + self.separator.join(objects) + self.list_close

    def grammar(self, functions: list[tuple[str, dict[str, Any]]], *, parallel: bool,
                custom: Sequence[tuple[str, str | None]] = ()) -> str:
        """Lark rules, entered at `calls`, for one call (or several, when `parallel`) of these functions,
        given as (name, parameters JSON schema), and custom tools, given as (name, the name of the Lark
        sub-grammar of their input or None for free text). The call's frame is literal text and each
        function's parameters are their own `%json` root, so that `$ref`s inside them resolve."""
        rules = []
        for i, (name, schema) in enumerate(functions):
            head = self.call_open + '{"name": ' + json.dumps(name) + ', "' + self.arguments_key + '": '
            rules.append(f"call_{i}: {json.dumps(head)} %json {json.dumps(schema)} {json.dumps('}' + self.call_close)}")
        for i, (name, sub_grammar) in enumerate(custom, start=len(functions)):
            body = f"@{sub_grammar}" if sub_grammar else f"CUSTOM_TEXT_{i}"
            if not sub_grammar:
                rules.append(f"CUSTOM_TEXT_{i}: /(?s:.*)/")
            head, tail = self.call_open + CUSTOM_OPEN + name + ">\n", CUSTOM_CLOSE + self.call_close
            rules.append(f"call_{i}: {json.dumps(head)} {body} {json.dumps(tail)}")
        rules.append("call: " + " | ".join(f"call_{i}" for i in range(len(functions) + len(custom))))
        more = f" ({json.dumps(self.separator)} call)*" if parallel else ""
        frame_open = f"{json.dumps(self.list_open)} " if self.list_open else ""
        frame_close = f" {json.dumps(self.list_close)}" if self.list_close else ""
        rules.append(f"calls: {frame_open}call{more}{frame_close}")
        return "\n".join(rules)

    # ---------------------------------------------------------------- reading the model's output

    def call_start(self, text: str) -> int | None:
        """Where tool calls begin (or may yet begin) in the answer so far; None when this text is content."""
        if self.marker is not None:
            found = text.find(self.marker)
            if found >= 0:
                return found
            for size in range(min(len(self.marker) - 1, len(text)), 0, -1):  # a marker cut at the end
                if text.endswith(self.marker[:size]):
                    return len(text) - size
            return None
        stripped = text.lstrip()
        if not stripped or stripped[0] in "{[<" or (self.preamble and self.preamble.startswith(stripped[: len(self.preamble)])):
            return 0
        return None

    def parse(self, text: str) -> tuple[str | None, list[Call]]:
        """(content, calls) of a whole answer. Text that does not parse as calls stays content."""
        start = self.call_start(text)
        if start is None:
            return text, []
        calls = self._calls(text[start:])
        if not calls:
            return text, []
        content = text[:start].strip()
        return content or None, calls

    def _calls(self, text: str) -> list[Call]:
        calls = []
        try:
            skip = (self.marker or "", self.preamble, self.call_close.strip(), self.separator.strip(), "[", "]", ",", ";")
            for item in _json_values(text, skip=skip):
                for obj in item if isinstance(item, list) else [item]:
                    calls.append(_call(obj))
        except (ValueError, KeyError, TypeError):
            return []
        return calls


def _json_values(text: str, skip: tuple[str, ...]) -> Iterator[Any]:
    """The JSON values in `text`, which may only be separated by whitespace and the `skip` strings."""
    decoder = json.JSONDecoder()
    position, skips = 0, [s for s in skip if s]
    while position < len(text):
        if text[position].isspace():
            position += 1
            continue
        if text.startswith(CUSTOM_OPEN, position):  # a custom tool's raw input
            name_end = text.find(">", position)
            if name_end < 0:
                raise ValueError("an unfinished custom tool call")
            end = text.find(CUSTOM_CLOSE, name_end)
            end = len(text) if end < 0 else end
            yield {"custom": text[position + len(CUSTOM_OPEN) : name_end], "input": text[name_end + 2 : end]}
            position = end + len(CUSTOM_CLOSE)
            continue
        if text[position] in "{[":
            try:
                value, position = decoder.raw_decode(text, position)
                yield value
                continue
            except ValueError:
                if text[position] == "{":
                    raise
                # "[" may open a skipped string instead ("[TOOL_CALLS]")
        matched = next((s for s in skips if text.startswith(s, position)), None)
        if matched is None:
            raise ValueError(f"unexpected text at {position}")
        position += len(matched)


def _call(obj: Any) -> Call:
    if isinstance(obj, dict) and "custom" in obj and "input" in obj and len(obj) == 2:
        return Call(obj["custom"], obj["input"], custom=True)
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        raise ValueError("a call needs a name")
    arguments = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(arguments, str):  # some models write the arguments as a JSON string
        arguments = json.loads(arguments)
    if not isinstance(arguments, dict):
        raise ValueError("arguments must be an object")
    return Call(obj["name"], json.dumps(arguments, ensure_ascii=False))


def _as_object(arguments: str) -> Any:
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments


HERMES = ToolFormat("hermes", "<tool_call>\n", "\n</tool_call>", "\n", "", "", "arguments", "<tool_call>")
LLAMA3 = ToolFormat("llama3", "", "", "\n", "", "", "parameters", None, "<|python_tag|>")
MISTRAL = ToolFormat("mistral", "", "", ", ", "[", "]", "arguments", None, "[TOOL_CALLS]")


def tool_format(template: str) -> ToolFormat:
    """The family's format, read from its chat template; Hermes when the template does not say."""
    if "[TOOL_CALLS]" in template:
        return MISTRAL
    if "<tool_call>" in template:
        return HERMES
    if "<|python_tag|>" in template or ("<|start_header_id|>" in template and "tools" in template):
        return LLAMA3
    return HERMES


def tools_system_prompt(tools: list[dict[str, Any]]) -> str:
    """Hermes-style tool instructions, for a model whose chat template does not render tools itself."""
    listing = "\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools)
    return (
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
        f"You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{listing}\n</tools>\n\n"
        "For each function call, return a json object with function name and arguments within <tool_call></tool_call> "
        'XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
        + ("\n\nA free-form tool takes raw text instead of JSON: write <tool_call>\n<function=<function-name>>\n"
           "<the text>\n</function>\n</tool_call>" if "free-form" in listing else "")
    )


class ToolCallStream:
    """Splits a streamed answer into content, sent as it comes, and tool calls, held and parsed at the end."""

    def __init__(self, fmt: ToolFormat) -> None:
        self._format = fmt
        self._text = ""
        self._sent = 0  # characters of `_text` already sent as content
        self._content_only = False  # a marker-less format whose answer began as prose

    def push(self, text: str) -> str:
        """Add streamed text; return the content that is safe to send now."""
        self._text += text
        if self._content_only:
            return self._take(len(self._text))
        start = self._format.call_start(self._text)
        if start is None:
            if self._format.marker is None:
                self._content_only = True
            return self._take(len(self._text))
        return self._take(start)

    def finish(self) -> tuple[str, list[Call]]:
        """At the end: (content not yet sent, calls). Held text that does not parse as calls is content."""
        if not self._content_only:
            _, calls = self._format.parse(self._text)
            if calls:
                return "", calls
        return self._take(len(self._text)), []

    def _take(self, upto: int) -> str:
        out = self._text[self._sent : upto] if upto > self._sent else ""
        self._sent = max(self._sent, upto)
        return out
