"""Reading tool calls out of a model's answer, whole or as it streams.

`ToolParser.parse` reads the text so far into pieces, in order: content, and calls (a name, and arguments that are
always a prefix of the final arguments, so that a stream can send differences). Text that may still become a call
(the start of a marker, a marker whose name is not complete) is held back, not returned. Tolerant by design: the
family's own frame and the wrappers other models use (`<tool_call>`, `<function_call>`, code fences, a bare JSON
object as the whole answer), `arguments` or `parameters`, arguments as an object or as a JSON string, XML values
coerced by the declared type, several calls, calls after prose. A call naming a tool that was not declared, or text
that does not read as a call, stays content. Once a declared name is read, the call stands: arguments cut off by
max_tokens are closed so that they read as JSON. No input makes it raise.
"""

from __future__ import annotations

import ast
import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import regex

from .reasoning import partial_suffix
from .tool_syntax import Style, ToolSyntax

log = logging.getLogger("local_llm_api.tools")

NAME = r"[A-Za-z0-9_][A-Za-z0-9_.:\-/]*"  # a tool name as written (Kimi's functions.NAME:0 too)
NAME_END = r"(?=[^A-Za-z0-9_.:\-/])"
NAME_KEYS = ("name", "tool_name", "function")
ARGUMENT_KEYS = ("arguments", "parameters", "args", "input")
CALL_KEYS = NAME_KEYS + ARGUMENT_KEYS + ("id", "type", "tool_call_id")


@dataclass(frozen=True)
class DeclaredTool:
    parameters: Mapping[str, Any] = field(default_factory=dict)  # its JSON schema
    custom: bool = False  # a free-form tool: raw text, not JSON


@dataclass
class CallPiece:
    name: str
    arguments: str  # so far; always a prefix of the final text
    done: bool = False
    custom: bool = False


Piece = str | CallPiece


class Literal:
    """A marker text matched with flexible whitespace (a model may write `</tool_call>` with or without the newline
    its template puts before it). `match` tells a match, a text that ends inside the marker, or neither."""

    def __init__(self, text: str, name_at: str | None = None) -> None:
        self.text = text.strip()
        parts = []
        for i, piece in enumerate(self.text.split(name_at) if name_at else [self.text]):
            if i:
                parts.append(f"(?P<name>{NAME})")
            parts += [r"\s*" if j % 2 else re.escape(word) for j, word in enumerate(re.split(r"(\s+)", piece))]
        if name_at and self.text.endswith(name_at):
            parts.append(NAME_END)  # a name at the very end is complete only once something else follows
        self.pattern = regex.compile("".join(parts))
        self.head = self.text.split(name_at)[0].strip() if name_at else self.text  # what a frame starts with

    def match(self, text: str, at: int) -> regex.Match[str] | None:
        """A full or partial (`.partial`) match at `at`, after any whitespace."""
        while at < len(text) and text[at].isspace():
            at += 1
        return self.pattern.match(text, at, partial=True) if self.text else None


@dataclass
class _Outcome:
    status: str  # "no": not a call here; "more": the text so far may be a call, it is not complete; "done"
    calls: list[CallPiece] = field(default_factory=list)
    end: int = 0


class _Syntax:
    """A family's syntax, compiled for reading."""

    def __init__(self, syntax: ToolSyntax) -> None:
        self.syntax = syntax
        object_style = syntax.style is Style.OBJECT
        self.section_open = Literal(syntax.section_open)
        self.section_close = Literal(syntax.section_close)
        self.open = Literal(syntax.call_open, None if object_style else "{name}")
        self.close = Literal(syntax.call_close)
        self.separator = syntax.separator.strip()
        self.custom_open = Literal(syntax.custom_open, "{name}")
        self.custom_close = [Literal(line) for line in syntax.custom_close.split("\n") if line.strip()]
        if syntax.style is Style.XML:
            key_open, key_close = syntax.param_open.split("{key}")
            self.key_open, self.key_close, self.value_close = Literal(key_open), Literal(key_close), Literal(syntax.param_close)
        heads = [syntax.section_open.strip() or self.open.head, self.custom_open.head, *syntax.triggers]
        # A frame is looked for at its first word; the rest of its opening is matched with flexible whitespace.
        self.triggers = tuple(dict.fromkeys(h.split()[0] for h in heads if h.strip()))


@lru_cache(maxsize=256)
def compiled(syntax: ToolSyntax) -> _Syntax:
    """A syntax's patterns, compiled once (every request with tools reads its model's syntaxes)."""
    return _Syntax(syntax)


class ToolParser:
    """Reads calls written in `syntaxes` (the family's own first, then the fallbacks) of the declared `tools`."""

    def __init__(self, syntaxes: Sequence[ToolSyntax], tools: Mapping[str, DeclaredTool], prompt: str = "") -> None:
        """`prompt`: the text the answer follows; when it ends with what opens the family's frames (`prompt_opens`),
        the answer is read as continuing it."""
        self.syntaxes = [compiled(s) for s in syntaxes]
        self.tools = dict(tools)
        self.triggers = tuple(dict.fromkeys(t for s in self.syntaxes for t in s.triggers))
        self.bare = [s for s in self.syntaxes if s.syntax.bare]
        self.custom = any(tool.custom for tool in self.tools.values())
        self.answer_prefix = syntaxes[0].answer_prefix if syntaxes else ""
        opens = syntaxes[0].prompt_opens if syntaxes else ""
        self.primed = opens if opens and prompt.rstrip().endswith(opens) else ""

    def parse(self, text: str, final: bool) -> list[Piece]:
        """The pieces of `text` so far; `final`: the answer is over and nothing is held."""
        try:
            # An answer cut off inside a character ends in replacement characters: not part of any marker; held
            # until the end, then content unless they follow a call.
            body = text.rstrip("\ufffd")
            pieces = self._parse(self.primed + body, final)
            cut = text[len(body):]
            if cut and final and (not pieces or isinstance(pieces[-1], str)):
                pieces = [*pieces[:-1], pieces[-1] + cut] if pieces else [cut]
            return pieces
        except Exception:  # noqa: BLE001  (a bug here must not lose the answer or fail the request)
            log.exception("reading tool calls failed; the answer is kept as text")
            return [text] if final else []

    def _parse(self, text: str, final: bool) -> list[Piece]:
        pieces: list[Piece] = []
        pos = 0
        if self.answer_prefix:
            lead = _skip_space(text, 0)
            if text.startswith(self.answer_prefix, lead):
                pos = lead + len(self.answer_prefix)
            elif self.answer_prefix.startswith(text[lead:]) and not final:
                return []
        while True:
            found = self._next_frame(text, pos, pieces, final)
            if found is None:
                end = len(text) if final else len(text) - partial_suffix(text[pos:], self.triggers)
                if not final and self.bare and _at_start(pieces) and text[pos:].strip() in ("", ";", ","):
                    end = pos  # blank so far (or a separator after a call): a bare call may follow
                _add_text(pieces, text[pos:end])
                return pieces
            start, candidates = found
            gap = text[pos:start]
            # Before a bare call, blank (or a separator after another call) is no content, unless no call comes.
            held = candidates[0].syntax.bare and gap.strip() in ("", ";", ",")
            if not held:
                _add_text(pieces, gap)
            outcome = _Outcome("no")
            for syntax in candidates:
                outcome = _Frame(self, syntax, text, start, final).read()
                if outcome.status != "no":
                    break
            if outcome.status == "no":
                _add_text(pieces, (gap if held else "") + text[start])
                pos = start + 1
                continue
            pieces += outcome.calls
            if outcome.status == "more":
                return pieces
            pos = outcome.end

    def _next_frame(self, text: str, pos: int, pieces: list[Piece], final: bool) -> tuple[int, list[_Syntax]] | None:
        """The first place at or after `pos` where a call may start, and the syntaxes to try there."""
        best: tuple[int, list[_Syntax]] | None = None
        for trigger in self.triggers:
            at = text.find(trigger, pos)
            if at >= 0 and (best is None or at < best[0]):
                best = (at, [s for s in self.syntaxes if trigger in s.triggers])
        if self.bare and _at_start(pieces):  # a bare JSON call: the whole answer, or right after another call
            at = _skip_space(text, pos)
            if pieces and isinstance(pieces[-1], CallPiece):
                at = _skip_space(text, at + 1) if text.startswith((";", ","), at) else at
            listed = text[at + 1:].lstrip()  # a list of calls: `[{...`
            looks = at < len(text) and (text[at] == "{" or (text[at] == "[" and (listed.startswith("{") or not listed)))
            if looks and (best is None or at < best[0]):
                best = (at, self.bare)
        return best


def _at_start(pieces: list[Piece]) -> bool:
    """Whether no content has come yet (or the last thing read was a call)."""
    return not pieces or isinstance(pieces[-1], CallPiece)


def _add_text(pieces: list[Piece], text: str) -> None:
    if pieces and isinstance(pieces[-1], CallPiece):
        text = text.lstrip()  # the blank between calls, or before prose that follows them
    if not text:
        return
    if pieces and isinstance(pieces[-1], str):
        pieces[-1] += text
    else:
        pieces.append(text)


class _Frame:
    """One frame read from `start`: a section of calls, or one call."""

    def __init__(self, parser: ToolParser, syntax: _Syntax, text: str, start: int, final: bool) -> None:
        self.parser, self.syntax, self.text, self.start, self.final = parser, syntax, text, start, final

    def _more(self, calls: list[CallPiece] | None = None) -> _Outcome:
        return _Outcome("no") if self.final and not calls else _Outcome("more", calls or [])

    def read(self) -> _Outcome:
        text, syntax = self.text, self.syntax
        i = self.start
        head = syntax.section_open.match(text, i)
        if head is not None and head.partial:
            return self._more()
        if head is not None:
            i = head.end()
        calls: list[CallPiece] = []
        while True:
            one = self._call(i, len(calls))
            if one.status == "no":
                return _Outcome("done", calls, i) if calls else _Outcome("no")
            calls += one.calls
            if one.status == "more":
                return _Outcome("more", calls)
            i = one.end
            if head is None:  # a call on its own
                return _Outcome("done", calls, i)
            j = _skip_space(text, i)
            j = _skip_space(text, j + len(syntax.separator)) if syntax.separator and text.startswith(syntax.separator, j) else j
            close = syntax.section_close.match(text, j)
            if close is not None and not close.partial:
                return _Outcome("done", calls, close.end())
            if j >= len(text) or close is not None:
                return _Outcome("done", calls, len(text)) if self.final else _Outcome("more", calls)
            i = j

    def _call(self, i: int, index: int) -> _Outcome:
        text, syntax = self.text, self.syntax
        custom = syntax.custom_open.match(text, i) if self.parser.custom else None
        if custom is not None and custom.partial and not self.final:
            return self._more()  # a free-form tool's opening, not complete yet
        if custom is not None and not custom.partial:
            tool = self.parser.tools.get(custom.group("name"))
            if tool is not None and tool.custom:
                return self._custom(custom.group("name"), custom)
        if syntax.syntax.style is Style.OBJECT:
            opened = syntax.open.match(text, i) if syntax.open.text else None
            if opened is not None and opened.partial:
                return self._more()
            return self._objects(opened.end() if opened is not None else i)
        opened = syntax.open.match(text, i)
        if opened is None:
            return _Outcome("no")
        if opened.partial:
            return self._more()
        name = _plain_name(opened.group("name"))
        tool = self.parser.tools.get(name)
        if tool is None or tool.custom:
            return _Outcome("no")
        arguments, end = READERS[syntax.syntax.style](self, opened.end(), tool)
        return self._closed([CallPiece(name, arguments, done=end is not None)], end)

    def _closed(self, calls: list[CallPiece], end: int | None) -> _Outcome:
        """The calls once their arguments are read, and the call's closing marker (forgiven when missing)."""
        call = calls[-1]
        if end is None:  # the arguments are not complete
            if not self.final:
                return _Outcome("more", calls)
            call.arguments, call.done = healed(call.arguments), True
            return _Outcome("done", calls, len(self.text))
        close = self.syntax.close.match(self.text, end)
        fence = _skip_space(self.text, end)
        if close is None and self.text.startswith("```", fence):  # a code fence around the arguments
            end, close = fence + 3, self.syntax.close.match(self.text, fence + 3)
        if close is not None and not close.partial:
            return _Outcome("done", calls, close.end())
        if (close is not None or _skip_space(self.text, end) >= len(self.text)) and self.syntax.close.text and not self.final:
            call.done = False
            return _Outcome("more", calls)
        if close is not None:  # the answer was cut off inside the closing marker
            return _Outcome("done", calls, len(self.text))
        return _Outcome("done", calls, end)

    def _custom(self, name: str, opened: regex.Match[str]) -> _Outcome:
        """A free-form tool's raw text, up to its closing."""
        text, closes = self.text, self.syntax.custom_close
        start = opened.end() + (1 if text.startswith("\n", opened.end()) else 0)
        marker = closes[0].text if closes else ""
        end = text.find(marker, start) if marker else -1
        if end < 0:
            if self.final:
                return _Outcome("done", [CallPiece(name, text[start:], True, True)], len(text))
            sure = text[start:len(text) - partial_suffix(text[start:], [marker])]
            return _Outcome("more", [CallPiece(name, sure.removesuffix("\n"), False, True)])
        value = text[start:end].removesuffix("\n")  # the newline the frame puts before its closing
        j = end + len(marker)
        for close in closes[1:]:
            found = close.match(text, j)
            if found is not None and found.partial and not self.final:
                return _Outcome("more", [CallPiece(name, value, False, True)])
            if found is not None and not found.partial:
                j = found.end()
        return _Outcome("done", [CallPiece(name, value, True, True)], j)

    # -------------------------------------------------------------------------------------- JSON objects

    def _objects(self, i: int) -> _Outcome:
        """A call that is a JSON object holding its name, or a list of them, possibly in a code fence."""
        text = self.text
        i = _skip_fence(text, _skip_space(text, i))
        if i >= len(text):
            return self._more()
        if text[i] != "[":
            one = self._object(i)
            return one if one.status != "done" else self._after_objects(one.calls, one.end)
        calls: list[CallPiece] = []
        j = i + 1
        while True:
            j = _skip_space(text, j)
            if j < len(text) and text[j] == "," and calls:
                j = _skip_space(text, j + 1)
            if j >= len(text):
                return self._more(calls) if not self.final else (_Outcome("done", calls, j) if calls else _Outcome("no"))
            if text[j] == "]":
                return self._after_objects(calls, j + 1) if calls else _Outcome("no")
            one = self._object(j)
            if one.status == "no":
                return _Outcome("done", calls, j) if calls else one
            calls += one.calls
            if one.status == "more":
                return _Outcome("more", calls)
            j = one.end

    def _after_objects(self, calls: list[CallPiece], end: int) -> _Outcome:
        return self._closed(calls, end)

    def _object(self, i: int) -> _Outcome:
        text = self.text
        if text[i] != "{":
            return _Outcome("no")
        scan = _scan_object(text, i)
        keys, end = scan.keys, scan.end
        name = self._name(keys)
        if name is None:
            if end is not None:  # {"type": "function", "function": {"name": ..., "arguments": ...}}
                return self._nested(i, end)
            known = (self.syntax.syntax.name_key, self.syntax.syntax.arguments_key, *CALL_KEYS)
            return self._more() if scan.broken is None and all(k in known for k in keys) else _Outcome("no")
        tool = self.parser.tools.get(name)
        if tool is None or tool.custom:
            return _Outcome("no")
        where = next((keys[k] for k in (self.syntax.syntax.arguments_key, *ARGUMENT_KEYS) if k in keys), None)
        if scan.broken is not None:  # the call is read; where the model's JSON breaks, the call ends
            arguments = _streamed_json(text, where[0], where[1]) if where else ""
            return _Outcome("done", [CallPiece(name, healed(arguments) if where and where[1] is None else
                                               _final_arguments(arguments) if arguments else "{}", True)], scan.broken)
        if where is None:
            if end is None:
                return self._more([CallPiece(name, "")]) if not self.final else _Outcome("done", [CallPiece(name, "{}", True)], len(text))
            return _Outcome("done", [CallPiece(name, "{}", True)], end)
        value_start, value_end = where
        if end is None:
            arguments = _streamed_json(text, value_start, value_end)
            if self.final:
                return _Outcome("done", [CallPiece(name, healed(arguments), True)], len(text))
            return _Outcome("more", [CallPiece(name, arguments)])
        return _Outcome("done", [CallPiece(name, _final_arguments(text[value_start:value_end or end]), True)], end)

    def _name(self, keys: dict[str, tuple[int, int | None]]) -> str | None:
        for key in (self.syntax.syntax.name_key, *NAME_KEYS):
            if key in keys and keys[key][1] is not None:
                value = _loads(self.text[keys[key][0]:keys[key][1]])
                if isinstance(value, str):
                    return _plain_name(value)
        return None

    def _nested(self, i: int, end: int) -> _Outcome:
        value = _loads(self.text[i:end])
        inner = value.get("function") if isinstance(value, dict) else None
        if not isinstance(inner, dict) or not isinstance(inner.get("name"), str):
            return _Outcome("no")
        name = _plain_name(inner["name"])
        tool = self.parser.tools.get(name)
        if tool is None or tool.custom:
            return _Outcome("no")
        arguments = next((inner[k] for k in ARGUMENT_KEYS if k in inner), {})
        written = _final_arguments(json.dumps(arguments, ensure_ascii=False))
        return _Outcome("done", [CallPiece(name, written, True)], end)


# ---------------------------------------------------------------------------------------------- arguments


def _json_arguments(frame: _Frame, i: int, tool: DeclaredTool) -> tuple[str, int | None]:
    """A JSON object after the opening (in a code fence for DeepSeek R1)."""
    text = frame.text
    i = _skip_fence(text, _skip_space(text, i))
    if i >= len(text):
        return "", None
    end = _json_end(text, i)
    if end is None:
        return _streamed_json(text, i, None), None
    return _final_arguments(text[i:end]), end


def _streamed_json(text: str, start: int, end: int | None) -> str:
    """Arguments not complete yet: an object as written so far; one written as a JSON string, nothing until whole."""
    return text[start:end] if text.startswith("{", start) else ""


def _final_arguments(raw: str) -> str:
    """A call's arguments: the object as written; one written as a JSON string, the object it holds."""
    raw = raw.strip()
    if raw.startswith('"'):
        inner = _loads(raw)
        if isinstance(inner, str):
            held = _loads(inner)
            return json.dumps(held, ensure_ascii=False) if isinstance(held, dict) else json.dumps({"input": inner}, ensure_ascii=False)
    return raw or "{}"


def _xml_arguments(frame: _Frame, i: int, tool: DeclaredTool) -> tuple[str, int | None]:
    """Parameters as elements, written out as a JSON object as they come: string values stream, others go whole."""
    text, syntax, final = frame.text, frame.syntax, frame.final
    properties = tool.parameters.get("properties")
    properties = properties if isinstance(properties, dict) else {}
    members: list[str] = []
    while True:
        close = syntax.close.match(text, i)
        if close is not None and not close.partial:
            return _members(members), i
        opened = syntax.key_open.match(text, i)
        at_end = _skip_space(text, i) >= len(text)
        if at_end or (opened is not None and opened.partial) or (close is not None and close.partial):
            return (_members(members), len(text)) if final else (_members(members, more=True), None)
        if opened is None:
            return _members(members), i  # not a parameter: the call ends here
        named = syntax.key_close.pattern.search(text, opened.end(), partial=True)
        if named is None or named.partial:
            return (_members(members), len(text)) if final else (_members(members, more=True), None)
        key = text[opened.end():named.start()].strip().strip('"')
        start = named.end() + (1 if text.startswith("\n", named.end()) else 0)
        schema = properties.get(key)
        ended = syntax.value_close.pattern.search(text, start, partial=True)
        if ended is None or ended.partial:
            if final:
                return _members(members + [_member(key, _coerce(text[start:].removesuffix("\n"), schema))]), len(text)
            partial = _streamed_value(text[start:ended.start() if ended else len(text)], schema)
            return _members(members, more=True) + (", " if members else "") + json.dumps(key, ensure_ascii=False) + ": " + partial, None
        members.append(_member(key, _coerce(text[start:ended.start()].removesuffix("\n"), schema)))
        i = ended.end()


def _streamed_value(partial: str, schema: Any) -> str:
    """What is sure of a string value not closed yet (a last newline may be the one before its closing)."""
    if not _text_schema(schema):
        return ""
    return json.dumps(partial.removesuffix("\n"), ensure_ascii=False)[:-1]


def _text_schema(schema: Any) -> bool:
    """Whether a parameter's values are plain text: typed string, or of no type said."""
    return not isinstance(schema, dict) or schema.get("type") in (None, "string")


def _coerce(value: str, schema: Any) -> Any:
    """An element's text as its declared type; text that does not read as that type stays text."""
    if _text_schema(schema):
        return value
    parsed = _loads(value.strip())
    kinds = schema.get("type") if isinstance(schema.get("type"), list) else [schema.get("type")]
    fits = {"integer": isinstance(parsed, int) and not isinstance(parsed, bool),
            "number": isinstance(parsed, int | float) and not isinstance(parsed, bool), "boolean": isinstance(parsed, bool),
            "null": value.strip() == "null", "object": isinstance(parsed, dict), "array": isinstance(parsed, list)}
    return parsed if any(fits.get(kind, False) for kind in kinds) else value


def _member(key: str, value: Any) -> str:
    return json.dumps(key, ensure_ascii=False) + ": " + json.dumps(value, ensure_ascii=False)


def _members(members: list[str], more: bool = False) -> str:
    return "{" + ", ".join(members) + ("" if more else "}")


def _python_arguments(frame: _Frame, i: int, tool: DeclaredTool) -> tuple[str, int | None]:
    """`name(key=value, ...)`: the arguments go whole, once the parenthesis closes."""
    text = frame.text
    i = _skip_space(text, i)
    if i >= len(text):
        return "", None
    if text[i] != "(":
        return "{}", i
    end = _bracket_end(text, i)
    if end is None:
        return "", None
    try:
        node = ast.parse(f"f({text[i + 1:end - 1]})", mode="eval").body
    except (SyntaxError, ValueError):
        return "{}", end
    keywords = node.keywords if isinstance(node, ast.Call) else []
    return json.dumps({kw.arg: _python_value(kw.value) for kw in keywords if kw.arg}, ensure_ascii=False), end


def _python_value(node: ast.AST) -> Any:
    if isinstance(node, ast.Name):
        return {"true": True, "false": False, "null": None, "True": True, "False": False, "None": None}.get(node.id, node.id)
    if isinstance(node, ast.List | ast.Tuple):
        return [_python_value(item) for item in node.elts]
    if isinstance(node, ast.Dict):
        return {str(_python_value(k)) if k is not None else "": _python_value(v) for k, v in zip(node.keys, node.values, strict=True)}
    try:
        return ast.literal_eval(node)
    except (ValueError, SyntaxError, TypeError):
        return ast.unparse(node)


def _gemma_arguments(frame: _Frame, i: int, tool: DeclaredTool) -> tuple[str, int | None]:
    """`{key:<quote>text<quote>,key:1}`: the arguments go whole, once the braces close."""
    i = _skip_space(frame.text, i)
    if i >= len(frame.text):
        return "", None
    if frame.text[i] != "{":
        return "{}", i
    reader = _GemmaReader(frame.text, i, frame.syntax.syntax.quote)
    value = reader.value()
    if reader.incomplete:
        return "", None
    return json.dumps(value if isinstance(value, dict) else {}, ensure_ascii=False), reader.at


class _GemmaReader:
    """Gemma's notation: objects `{key:value,...}`, lists, text between quotes, bare numbers and words."""

    WORD = re.compile(r"[^,}\]]*")

    def __init__(self, text: str, at: int, quote: str) -> None:
        self.text, self.at, self.quote, self.incomplete = text, at, quote or '"', False

    def value(self) -> Any:
        text = self.text
        if self.at >= len(text):
            self.incomplete = True
            return None
        if text.startswith(self.quote, self.at):
            end = text.find(self.quote, self.at + len(self.quote))
            if end < 0:
                self.incomplete = True
                return None
            value, self.at = text[self.at + len(self.quote):end], end + len(self.quote)
            return value
        if text[self.at] in "{[":
            return self._container("}" if text[self.at] == "{" else "]")
        word = self.WORD.match(text, self.at)
        found = word.group() if word else ""
        self.at += len(found)
        if self.at >= len(text):
            self.incomplete = True
        parsed = _loads(found.strip())
        return found.strip() if parsed is None and found.strip() != "null" else parsed

    def _container(self, closing: str) -> Any:
        text, out = self.text, ({} if closing == "}" else [])
        self.at += 1
        while not self.incomplete:
            if self.at >= len(text):
                self.incomplete = True
                break
            if text[self.at] == closing:
                self.at += 1
                return out
            if text[self.at] in ", \n":
                self.at += 1
                continue
            if isinstance(out, dict):
                colon = text.find(":", self.at)
                if colon < 0:
                    self.incomplete = True
                    break
                key = text[self.at:colon].strip()
                self.at = colon + 1
                out[key] = self.value()
            else:
                out.append(self.value())
        return out


READERS: dict[Style, Callable[[_Frame, int, DeclaredTool], tuple[str, int | None]]] = {
    Style.JSON: _json_arguments, Style.XML: _xml_arguments, Style.PYTHON: _python_arguments, Style.GEMMA: _gemma_arguments}


# ---------------------------------------------------------------------------------------------- partial JSON


@dataclass
class _Scan:
    keys: dict[str, tuple[int, int | None]]  # top-level keys: where their values start and end (None: not yet)
    end: int | None = None  # where the object ends (None: not complete)
    broken: int | None = None  # where it stops being JSON, if it does


def _scan_object(text: str, i: int) -> _Scan:
    """The JSON object at `i` as far as it goes."""
    scan = _Scan({})
    j = _skip_space(text, i + 1)
    while j < len(text):
        if text[j] == "}":
            scan.end = j + 1
            return scan
        if text[j] == ",":
            j = _skip_space(text, j + 1)
            continue
        if text[j] != '"':
            scan.broken = j
            return scan
        key_end = _quoted_end(text, j, '"')
        if key_end is None:
            return scan
        key = _loads(text[j:key_end])
        colon = _skip_space(text, key_end)
        if not isinstance(key, str) or (colon < len(text) and text[colon] != ":"):
            scan.broken = j
            return scan
        start = _skip_space(text, colon + 1)
        if colon >= len(text) or start >= len(text):
            return scan
        end = _json_end(text, start)
        scan.keys[key] = (start, end)
        if end is None:
            return scan
        j = _skip_space(text, end)
    return scan


def _json_end(text: str, i: int) -> int | None:
    """Where the JSON value at `i` ends (not checked for validity); None when the text ends first."""
    if text.startswith('"', i):
        return _quoted_end(text, i, '"')
    if text.startswith(("{", "["), i):
        return _bracket_end(text, i)
    word = re.compile(r"[-+0-9.eE]+|[A-Za-z_]+").match(text, i)
    if word is None:
        return i + 1 if i < len(text) else None
    return word.end() if word.end() < len(text) else None


def _quoted_end(text: str, i: int, quote: str) -> int | None:
    j = i + 1
    while j < len(text):
        if text[j] == "\\":
            j += 2
            continue
        if text[j] == quote:
            return j + 1
        j += 1
    return None


def _bracket_end(text: str, i: int) -> int | None:
    """Where the bracket at `i` closes, minding quoted strings (JSON's and Python's)."""
    pairs = {"{": "}", "[": "]", "(": ")"}
    stack: list[str] = []
    j = i
    while j < len(text):
        ch = text[j]
        if ch in "\"'":
            end = _quoted_end(text, j, ch)
            if end is None:
                return None
            j = end
            continue
        if ch in pairs:
            stack.append(pairs[ch])
        elif stack and ch == stack[-1]:
            stack.pop()
            if not stack:
                return j + 1
        j += 1
    return None


def healed(partial: str) -> str:
    """Arguments cut off (max_tokens): what was written, closed so that it reads as JSON where that is possible. It
    only adds at the end, so a stream of the partial text is not contradicted."""
    if not partial.strip():
        return "{}"
    if _loads(partial) is not None:
        return partial
    closers: list[str] = []
    in_string = escaped = False
    for ch in partial:
        if in_string:
            escaped = not escaped and ch == "\\"
            in_string = escaped or ch != '"'
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            closers.append("}" if ch == "{" else "]")
        elif ch in "}]" and closers:
            closers.pop()
    tail = ("\\" if escaped else "") + ('"' if in_string else "")
    ending = "".join(reversed(closers))
    for filler in ("", " null", "null"):
        healed = partial + tail + filler + ending
        if _loads(healed) is not None:
            return healed
    return partial


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i].isspace():
        i += 1
    return i


FENCE = regex.compile(r"```[A-Za-z_]*[ \t]*\n?")


def _skip_fence(text: str, i: int) -> int:
    """Past a code fence's opening (```json), if one is there; the end of the text when one may be starting."""
    match = FENCE.match(text, i, partial=True)
    if match is None:
        return i
    return len(text) if match.partial else _skip_space(text, match.end())


def _plain_name(written: str) -> str:
    """A function's name as the model wrote it, without Kimi's `functions.` and `:0`."""
    name = written.strip()
    name = name.removeprefix("functions.")
    return re.sub(r":\d+$", "", name)
