"""How one model family writes tool calls: the frame around its calls, and how each call names its function and
writes its arguments. From that one description come the text of past calls (for templates that do not render
calls themselves), the Lark grammar that forces a call in the family's own frame, and the opening the parser
looks for (`tool_parser.py`).

Five ways of writing the arguments cover the families (`Style`): a JSON object after the function's name
(`[TOOL_CALLS]name[ARGS]{...}`), a JSON object that holds the name too (`{"name": ..., "arguments": {...}}`),
one element per parameter with the value as text (`<parameter=city>Paris</parameter>`), a Python call
(`get_weather(city="Paris")`), and Gemma's own notation (`{city:<escape>Paris<escape>}`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

# An integral part of at most 16 digits, as llama.cpp's schema converter allows: a small model forced to write a
# number otherwise writes digits until max_tokens.
INTEGER = r"/-?(0|[1-9][0-9]{0,15})/"
NUMBER = r"/-?(0|[1-9][0-9]{0,15})(\.[0-9]{1,16})?([eE][-+]?[0-9]{1,3})?/"
LARGEST = 10**16 - 1
COUNTER = "/[0-9]{1,4}/"  # a call's number where the frame has one


@dataclass(frozen=True)
class Call:
    """A tool call as the model wrote it: the function's name and its arguments (a JSON object as text, what
    OpenAI sends; a custom tool's raw input). `id` is the server's own, the same in a stream and its end."""

    name: str
    arguments: str
    custom: bool = False
    id: str = ""


class Style(str, Enum):
    JSON = "json"  # a JSON object after the opening, which names the function
    OBJECT = "object"  # the whole call is a JSON object that names the function inside
    XML = "xml"  # one element per parameter, the value as text (JSON for other types)
    PYTHON = "python"  # name(key=value, ...)
    GEMMA = "gemma"  # name{key:<quote>text<quote>,key:1}


@dataclass(frozen=True)
class ToolSyntax:
    family: str
    style: Style
    call_open: str  # `{name}` marks where the function's name goes (OBJECT: none, the object holds it)
    call_close: str = ""
    separator: str = ""  # between two calls
    section_open: str = ""  # around all the calls of one answer
    section_close: str = ""
    name_key: str = "name"  # OBJECT: the object's keys
    arguments_key: str = "arguments"
    id_key: str = ""  # OBJECT: a key numbering the calls (Command R7B's tool_call_id)
    param_open: str = ""  # XML: `{key}` marks the parameter's name
    param_close: str = ""
    quote: str = ""  # GEMMA: the string delimiter
    name_format: str = "{name}"  # how the name is written: Kimi's `functions.{name}:{index}`
    bare: bool = False  # calls may be the whole answer without any marker (Llama 3's JSON)
    answer_prefix: str = ""  # opens a plain answer (Functionary v3.2's `>>>all\n`), dropped
    prompt_opens: str = ""  # the start of a frame that the generation prompt may already hold (Functionary v3.2's `>>>`)
    custom_open: str = "<function={name}>\n"  # a free-form tool's call: its raw text between these
    custom_close: str = "\n</function>"
    triggers: tuple[str, ...] = ()  # texts where a call may start besides the opening's own literal start

    # ------------------------------------------------------------------ writing calls (history)

    def written_name(self, name: str, index: int) -> str:
        return self.name_format.replace("{name}", name).replace("{index}", str(index))

    def opening(self, name: str, index: int = 0) -> str:
        return self.call_open.replace("{name}", self.written_name(name, index))

    def call_text(self, calls: Sequence[Call]) -> str:
        """Calls as this family writes them, for assistant turns of a template that does not render calls."""
        return self.section_open + self.separator.join(self._one(c, i) for i, c in enumerate(calls)) + self.section_close

    def _one(self, call: Call, index: int) -> str:
        if call.custom:
            return self.custom_open.replace("{name}", call.name) + call.arguments + self.custom_close
        args = _as_object(call.arguments)
        if self.style is Style.OBJECT:
            head = {self.id_key: str(index)} if self.id_key else {}
            body = {**head, self.name_key: self.written_name(call.name, index), self.arguments_key: args}
            return self.call_open + json.dumps(body, ensure_ascii=False) + self.call_close
        if self.style is Style.JSON or not isinstance(args, dict):
            written = json.dumps(args, ensure_ascii=False) if not isinstance(args, str) else args
            return self.opening(call.name, index) + written + self.call_close
        if self.style is Style.XML:
            params = "".join(self.param_open.replace("{key}", k) + xml_value(v) + self.param_close for k, v in args.items())
        elif self.style is Style.PYTHON:
            params = "(" + ", ".join(f"{k}={python_literal(v)}" for k, v in args.items()) + ")"
        else:
            params = self.gemma_value(args)
        return self.opening(call.name, index) + params + self.call_close

    def gemma_value(self, value: Any) -> str:
        if isinstance(value, str):
            return self.quote + value + self.quote
        if isinstance(value, dict):
            return "{" + ",".join(f"{k}:{self.gemma_value(v)}" for k, v in value.items()) + "}"
        if isinstance(value, list):
            return "[" + ",".join(self.gemma_value(v) for v in value) + "]"
        return json.dumps(value)

    # ------------------------------------------------------------------ forcing calls (grammar)

    def grammar(self, functions: Sequence[tuple[str, dict[str, Any]]], *, parallel: bool,
                custom: Sequence[tuple[str, str | None]] = (), primed: bool = False) -> str:
        """Lark rules, entered at `calls`, for one call (several when `parallel`) of `functions` (name, parameters
        schema) or of the `custom` tools (name, the name of their Lark sub-grammar, or None for free text), each in
        this family's frame. Parameters are their own `%json` roots, so that `$ref`s inside them resolve.
        `primed`: the prompt ends with `prompt_opens`, so the first call's frame starts after it."""
        rules = _Rules()
        names = [self._call_rule(rules, i, name, schema) for i, (name, schema) in enumerate(functions)]
        first = "call"
        if primed and self.prompt_opens and names:
            firsts = [self._call_rule(rules, i, name, schema, primed=True) for i, (name, schema) in enumerate(functions)]
            first = rules.add("first_call", " | ".join(firsts))
        for i, (name, sub_grammar) in enumerate(custom, start=len(functions)):
            body = f"@{sub_grammar}" if sub_grammar else rules.add(f"custom_text_{i}", until(self.custom_close), lazy=True)
            close = "" if sub_grammar is None else lit(self.custom_close)
            rules.add(f"custom_{i}", f"{lit(self.custom_open.replace('{name}', name))} {body} {close}".strip())
        alternatives = " | ".join(names) or "\"\""
        rules.add("call", alternatives)
        more = f" ({lit(self.separator)} call)*" if parallel and self.separator else " call*" if parallel else ""
        frame = f"{lit(self.section_open)} {first}{more} {lit(self.section_close)}" if self.section_open else f"{first}{more}"
        customs = " | ".join(f"custom_{i}" for i in range(len(functions), len(functions) + len(custom)))
        rules.add("calls", (f"{frame}" if names else "") + (" | " if names and customs else "") + customs)
        return rules.text()

    def _call_rule(self, rules: _Rules, i: int, name: str, schema: dict[str, Any], primed: bool = False) -> str:
        call_open = self.call_open.removeprefix(self.prompt_opens) if primed else self.call_open
        rule = f"first_call_{i}" if primed else f"call_{i}"
        if self.style is Style.OBJECT:
            numbered = f'{lit(call_open + "{" + json.dumps(self.id_key) + ": " + chr(34))} {COUNTER} {lit(chr(34) + ", ")}' \
                if self.id_key else lit(call_open + "{")
            head = f'"{self.name_key}": ' + json.dumps(self.written_name(name, 0)) + f', "{self.arguments_key}": '
            return rules.add(rule, f"{numbered} {lit(head)} %json {json.dumps(schema)} {lit('}' + self.call_close)}")
        # A numbered name (Kimi's functions.NAME:0) takes any number: several calls count up.
        before, _, after = call_open.replace("{name}", self.name_format.replace("{name}", name)).partition("{index}")
        opening = f"{lit(before)} {COUNTER} {lit(after)}" if _ else lit(before)
        if self.style is Style.JSON:
            return rules.add(rule, f"{opening} %json {json.dumps(schema)} {lit(self.call_close)}")
        params = self._params_rule(rules, i, schema)
        brackets = {Style.PYTHON: ("(", ")"), Style.GEMMA: ("{", "}")}.get(self.style, ("", ""))
        return rules.add(rule, f"{opening} {lit(brackets[0])} {params} {lit(brackets[1] + self.call_close)}")

    def _params_rule(self, rules: _Rules, i: int, schema: dict[str, Any]) -> str:
        """The parameters of a non-JSON style, in the schema's order; required ones always, the others optional."""
        properties: dict[str, Any] = schema.get("properties") or {}
        required = set(schema.get("required") or [])
        items = [(key, key in required, self._param(rules, f"p{i}_{n}", key, sub if isinstance(sub, dict) else {}))
                 for n, (key, sub) in enumerate(properties.items())]
        separator = {Style.PYTHON: ", ", Style.GEMMA: ","}.get(self.style, "")

        def sequence(at: int, first: bool) -> str:
            if at == len(items):
                return '""'
            name = f"params_{i}_{at}_{int(first)}"
            if name in rules.names:
                return name
            _, needed, item = items[at]
            lead = f"{lit(separator)} " if separator and not first else ""
            present = f"{lead}{item} {sequence(at + 1, False)}"
            return rules.add(name, present if needed else f"{present} | {sequence(at + 1, first)}")

        return sequence(0, True)

    def _param(self, rules: _Rules, name: str, key: str, schema: dict[str, Any]) -> str:
        """One parameter: its key and its value in this style."""
        kind = schema.get("type")
        enum = schema.get("enum")
        if self.style is Style.XML:
            head = lit(self.param_open.replace("{key}", key))
            if isinstance(enum, list) and enum and all(isinstance(e, str) for e in enum):
                return rules.add(name, f"{head} ({' | '.join(lit(e) for e in enum)}) {lit(self.param_close)}")
            if kind in (None, "string") or (isinstance(kind, list) and "string" in kind):
                return rules.add(name, f"{head} {rules.add(name + '_text', until(self.param_close), lazy=True)}")
            return rules.add(name, f"{head} {self._scalar(schema, kind)} {lit(self.param_close)}")
        head = lit(f"{key}=" if self.style is Style.PYTHON else f"{key}:")
        if self.style is Style.GEMMA and kind in (None, "string") and not enum:
            text = rules.add(name + "_text", until(self.quote), lazy=True)
            return rules.add(name, f"{head} {lit(self.quote)} {text}")
        if self.style is Style.PYTHON and kind == "boolean":
            return rules.add(name, f'{head} ("True" | "False")')
        return rules.add(name, f"{head} {self._scalar(schema, kind)}")

    def _scalar(self, schema: dict[str, Any], kind: Any) -> str:
        if kind == "integer":
            return INTEGER
        if kind == "number":
            return NUMBER
        if kind == "boolean":
            return '("true" | "false")'
        return f"%json {json.dumps(schema)}"


class _Rules:
    """Lark rules being written, by name."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}

    def add(self, name: str, body: str, lazy: bool = False) -> str:
        self.names[name] = f"{name}{'[lazy]' if lazy else ''}: {body}"
        return name

    def text(self) -> str:
        return "\n".join(self.names.values())


def until(end: str) -> str:
    """A Lark regex for any text up to and including the first `end` (with `[lazy]`: it stops there)."""
    escaped = "".join({"\n": "\\n", "\t": "\\t"}.get(c, "\\" + c if c in "\\.^$|?*+()[]{}/-" else c) for c in end)
    return f"/(?s:.*){escaped}/"


def lit(text: str) -> str:
    """A Lark string literal (empty text: the empty string)."""
    return json.dumps(text)


def xml_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def python_literal(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)}: {python_literal(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(python_literal(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def _as_object(arguments: str) -> Any:
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments


def bounded_numbers(schema: Any) -> Any:
    """The schema with every integer and number that has no bounds kept to 16 integral digits (as llama.cpp's
    converter does): otherwise a small model forced into a number writes digits until max_tokens."""
    return walk_schema(schema, _bound)


def _bound(node: dict[str, Any]) -> dict[str, Any]:
    if node.get("type") in ("integer", "number") and not any(k in node for k in ("minimum", "exclusiveMinimum", "const", "enum")):
        node = {**node, "minimum": -LARGEST}
    if node.get("type") in ("integer", "number") and not any(k in node for k in ("maximum", "exclusiveMaximum", "const", "enum")):
        node = {**node, "maximum": LARGEST}
    return node


# Keywords whose value maps names to schemas (not a schema itself), and keywords whose values are data.
SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
DATA_KEYWORDS = ("const", "enum", "default", "examples", "x-guidance")


def walk_schema(schema: Any, visit: Callable[[dict[str, Any]], dict[str, Any]]) -> Any:
    """`visit` applied to every (sub)schema, bottom up."""
    if isinstance(schema, list):
        return [walk_schema(item, visit) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: walk_schema(sub, visit) for name, sub in value.items()}
        elif key in DATA_KEYWORDS:
            out[key] = value
        else:
            out[key] = walk_schema(value, visit)
    return visit(out)


def iter_literals(syntax: ToolSyntax) -> Iterator[str]:
    """The fixed texts of a family's frame (its markers), for the tokens whose text an answer must keep."""
    for text in (syntax.section_open, syntax.section_close, syntax.call_open, syntax.call_close, syntax.param_open,
                 syntax.param_close, *syntax.triggers):
        for part in text.replace("{name}", "\0").replace("{key}", "\0").replace("{index}", "\0").split("\0"):
            if part.strip():
                yield part.strip()
