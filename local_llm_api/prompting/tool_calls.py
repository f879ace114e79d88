"""Tool calls in an answer as it streams: content sent as it comes, each call's name and id once, then its arguments
in pieces whose concatenation is the final arguments. The text is read again as it grows (`ToolParser`), and only
differences are sent; what may still be a marker is held.

A template that knows no tools gets the Hermes format, described in a system message (`tools_system_prompt`).
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from .tool_parser import CallPiece, Piece, ToolParser, healed
from .tool_syntax import Call, ToolSyntax

log = logging.getLogger("local_llm_api.tools")

__all__ = ["Call", "arguments_object", "CallArguments", "CallStarted", "StreamOutput", "ToolCallStream", "tools_system_prompt"]


@dataclass(frozen=True)
class CallStarted:
    """A call's name and id, once (its arguments follow in `CallArguments`)."""

    number: int  # its place among the answer's calls
    call: Call  # arguments empty here


@dataclass(frozen=True)
class CallArguments:
    number: int
    delta: str


StreamOutput = str | CallStarted | CallArguments


def new_call_id() -> str:
    return uuid.uuid4().hex[:24]


class ToolCallStream:
    """Splits a streamed answer into content and tool calls, sending each as soon as it is sure."""

    def __init__(self, parser: ToolParser) -> None:
        self._parser = parser
        self._text = ""
        self._sent: list[tuple[str, str]] = []  # per piece sent: ("text", text so far) or (call id, arguments so far)
        self._calls: list[Call] = []

    def push(self, text: str) -> list[StreamOutput]:
        """Add streamed text; what can be sent now."""
        self._text += text
        return self._difference(self._parser.parse(self._text, final=False))

    def finish(self) -> tuple[list[StreamOutput], list[Call]]:
        """At the end: what is left to send, and the answer's calls (held text that was no call is content). The calls
        are the ones the stream announced, with the arguments it sent, whatever a last reading says."""
        out = self._difference(self._parser.parse(self._text, final=True))
        sent = [arguments for kind, arguments in self._sent if kind != "text"]
        final = []
        for number, (call, arguments) in enumerate(zip(self._calls, sent, strict=True)):
            whole = healed(arguments) if call.custom is False else arguments
            if whole != arguments:  # the model's arguments were cut off: closed so that they read as JSON
                out.append(CallArguments(number, whole[len(arguments):]))
            final.append(Call(call.name, whole, call.custom, call.id))
        return out, final

    def _difference(self, pieces: list[Piece]) -> list[StreamOutput]:
        out: list[StreamOutput] = []
        number = 0
        for k, piece in enumerate(pieces):
            if isinstance(piece, str):
                if k >= len(self._sent):
                    self._sent.append(("text", ""))
                kind, sent = self._sent[k]
                if kind != "text" or not piece.startswith(sent):
                    log.warning("tool-call reading changed its mind about sent text; keeping what was sent")
                    continue
                if len(piece) > len(sent):
                    out.append(piece[len(sent):])
                    self._sent[k] = ("text", piece)
                continue
            if k >= len(self._sent):
                call = Call(piece.name, "", piece.custom, new_call_id())
                self._calls.append(call)
                self._sent.append((call.id, ""))
                out.append(CallStarted(number, call))
            call_id, sent = self._sent[k]
            if call_id == "text" or not piece.arguments.startswith(sent):
                log.warning("tool-call reading changed its mind about sent arguments; keeping what was sent")
                number += 1
                continue
            if len(piece.arguments) > len(sent):
                out.append(CallArguments(number, piece.arguments[len(sent):]))
                self._sent[k] = (call_id, piece.arguments)
            number += 1
        return out


def arguments_object(arguments: str) -> dict[str, Any]:
    """A call's arguments as the object Anthropic's `input` and Ollama's `arguments` must be; arguments that are not a
    JSON object are kept whole under `raw_arguments`."""
    try:
        value = json.loads(arguments)
    except ValueError:
        value = None
    return value if isinstance(value, dict) else {"raw_arguments": arguments}


def tools_system_prompt(tools: list[dict[str, Any]], syntax: ToolSyntax) -> str:
    """Tool instructions for a model whose chat template does not show tools itself, with the call written in the
    model's own format (Hermes' words for Hermes)."""
    listing = "\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools)
    example = syntax.call_text([Call("<function-name>", '{"<argument>": "<value>"}')])
    free_form = "free-form" in listing
    custom = syntax.call_text([Call("<function-name>", "<the text>", custom=True)])
    return (
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
        f"You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{listing}\n</tools>\n\n"
        + ("For each function call, return a json object with function name and arguments within <tool_call></tool_call> "
           'XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
           if syntax.family == "hermes" else f"For each function call, write:\n{example}")
        + (f"\n\nA free-form tool takes raw text instead of JSON: write {custom}" if free_form else "")
    )
