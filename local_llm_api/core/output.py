"""From a request's tools, tool choice, parallel calls and JSON output to what generation needs: the
grammar the answer must match (if any), the tools the model is shown, and how to read calls back.

| tool_choice                | grammar                                            | calls read back |
|----------------------------|----------------------------------------------------|-----------------|
| no tools, or `none`        | the JSON output's schema, if any                   | no              |
| `auto` (default with tools)| none; with JSON output: calls or answer            | yes             |
| `required`                 | one or more calls of any tool                      | yes             |
| a named function           | one call of that function                          | yes             |
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..backends.base import Backend
from ..prompting.tool_families import ToolFormat, tool_format
from ..prompting.tool_parser import DeclaredTool
from ..prompting.tool_syntax import bounded_numbers, walk_schema
from ..structured.constraint import ConstraintFactory, GrammarError, UnconstrainableModel, import_llguidance
from ..errors import invalid_request
from .request import ChatRequest, ForcedTool

# Compact JSON, as models write it: flexible whitespace would let a small model loop on newlines.
JSON_OPTIONS = {"whitespace_flexible": False, "key_separator": ": ", "item_separator": ", "}
NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}
MAX_TOOLS = 1024  # tools in one request (an agent sends tens)
MAX_GRAMMAR_BYTES = 1 << 20  # a grammar's text, tools' schemas and custom grammars together


@dataclass(frozen=True)
class OutputPlan:
    grammar: str | None = None  # the llguidance grammar the answer must match
    tool_format: ToolFormat | None = None  # set when the answer may hold tool calls
    tools: list[dict[str, Any]] | None = None  # shown to the model through its chat template
    stop: tuple[str, ...] = ()  # added to the request's stop strings
    schemas: tuple[tuple[str, dict[str, Any]], ...] = ()  # (param, schema) to compile before generating
    declared: dict[str, DeclaredTool] = field(default_factory=dict)  # the tools whose calls are read back


def with_options(schema: dict[str, Any], strict: bool) -> dict[str, Any]:
    """The schema with llguidance's compile options; `strict` refuses keywords it cannot enforce, otherwise they are
    ignored (as the JSON Schema spec allows for unknown keywords). Either way objects take only the keys they declare
    (`closed_objects`: OpenAI's strict mode demands as much) and numbers without bounds keep to 16 integral digits
    (`bounded_numbers`)."""
    options = {**JSON_OPTIONS, "lenient": not strict, **schema.get("x-guidance", {})}
    return {**bounded_numbers(closed_objects(schema)), "x-guidance": options}


def closed_objects(schema: Any) -> Any:
    """Objects that list `properties` but say nothing of `additionalProperties` take only those keys, as llama.cpp's
    grammar converter does: otherwise a weak model invents keys until max_tokens cuts its tool call off. An
    explicit `additionalProperties` (or `patternProperties`) keeps its meaning."""
    return walk_schema(schema, _closed)


def _closed(node: dict[str, Any]) -> dict[str, Any]:
    if "properties" in node and "additionalProperties" not in node and "patternProperties" not in node:
        return {**node, "additionalProperties": False}
    return node


def plan_output(req: ChatRequest, chat_template: str, configured_format: str | None = None, primed: bool = False) -> OutputPlan:
    """What the answer may hold and how it is forced; `configured_format`: MODELS_CONFIG's `tool_format`; `primed`:
    the prompt already opens a call's frame (Functionary v3.2's `>>>`)."""
    answer, schemas = _answer_rule(req)
    tools = req.tools
    choice = req.tool_choice
    if len(tools) > MAX_TOOLS:
        raise invalid_request(f"{len(tools)} tools is more than this server takes in one request ({MAX_TOOLS}).", "tools",
                              "too_many_tools")
    if not tools:
        if choice not in (None, "none"):
            raise invalid_request("'tool_choice' needs 'tools': no tools were given.", "tool_choice")
        return OutputPlan(grammar=_lark(f"start: answer\n{answer}") if answer else None, schemas=schemas)
    names = [tool.name for tool in tools]
    duplicate = next((name for name in names if names.count(name) > 1), None)
    if duplicate is not None:
        raise invalid_request(f"Two tools are named '{duplicate}'.", "tools", "duplicate_tool_name")
    functions, custom, sub_grammars = [], [], {}
    for tool in tools:
        if tool.custom:
            sub = f"custom_{len(sub_grammars)}" if tool.grammar else None
            if sub:
                sub_grammars[sub] = tool.grammar
            custom.append((tool.name, sub))
            continue
        parameters = with_options(tool.parameters or NO_PARAMETERS, tool.strict)
        functions.append((tool.name, parameters))
        schemas += ((f"{tool.param}.parameters", parameters),)
    if choice == "none":  # the model is not shown the tools and answers in prose (or the JSON output)
        return OutputPlan(grammar=_lark(f"start: answer\n{answer}") if answer else None, schemas=schemas)
    fmt = tool_format(chat_template, configured_format)
    syntax = fmt.syntax
    shown = [tool.shown() for tool in tools]
    declared = {tool.name: DeclaredTool(tool.parameters or {}, tool.custom) for tool in tools}
    # Several calls in one answer only when asked for: small models given the choice repeat a call until
    # max_tokens (llama.cpp's server makes the same choice).
    parallel = req.parallel_tool_calls is True
    if isinstance(choice, ForcedTool):
        if choice.name not in names:
            raise invalid_request(f"tool_choice names '{choice.name}', which is not among the tools "
                                  f"({', '.join(names)}).", choice.param, "tool_not_found")
        forced = [f for f in functions if f[0] == choice.name]
        grammar = "start: calls\n" + syntax.grammar(forced, parallel=False, custom=[c for c in custom if c[0] == choice.name], primed=primed)
    elif choice == "required":
        grammar = "start: calls\n" + syntax.grammar(functions, parallel=parallel, custom=custom, primed=primed)
    elif answer:  # auto with JSON output: either calls or the JSON answer
        grammar = "start: calls | answer\n" + syntax.grammar(functions, parallel=parallel, custom=custom, primed=primed) + "\n" + answer
    else:
        grammar = None
    # In `auto` mode the model writes freely: a single call ends at its frame's closing marker, when it has one.
    closing = (syntax.section_close if syntax.section_open else syntax.call_close).strip()
    stop = (closing,) if grammar is None and not parallel and len(closing) > 2 else ()  # never a lone "]"
    return OutputPlan(grammar=_lark(grammar, sub_grammars) if grammar else None, tool_format=fmt, tools=shown, stop=stop,
                      schemas=schemas, declared=declared)


def _lark(text: str, sub_grammars: dict[str, str] | None = None) -> str:
    """The grammar as llguidance takes it; custom tools' Lark grammars ride along as named sub-grammars. Past
    MAX_GRAMMAR_BYTES it is refused before the compiler spends seconds (and memory) on it."""
    size = len(text) + sum(len(g) for g in (sub_grammars or {}).values())
    if size > MAX_GRAMMAR_BYTES:
        raise invalid_request(f"The tools and output format make a grammar of {size} bytes, more than this server compiles "
                              f"({MAX_GRAMMAR_BYTES}); send fewer or smaller tools or schemas.", "tools", "grammar_too_large")
    if not sub_grammars:
        return str(import_llguidance().LLMatcher.grammar_from_lark(text))
    return json.dumps({"grammars": [{"lark_grammar": text},
                                    *({"name": name, "lark_grammar": g} for name, g in sub_grammars.items())]})


def _answer_rule(req: ChatRequest) -> tuple[str | None, tuple[tuple[str, dict[str, Any]], ...]]:
    """The Lark rule `answer` for JSON output (None for text), and the schema to check."""
    output = req.output
    if output is None:
        return None, ()
    if output.schema is None:
        schema = with_options({"type": "object"}, strict=False)
        return f"answer: %json {json.dumps(schema)}", ()
    schema = with_options(output.schema, output.strict)
    return f"answer: %json {json.dumps(schema)}", ((output.param, schema),)


def check_schemas(backend: Backend, plan: OutputPlan) -> None:
    """Compile the plan's grammar for the model's tokenizer (kept for the sequences that use it); 400 naming
    the schema that fails. Schemas the grammar does not use are checked too. Runs off the event loop."""
    if plan.grammar is None and not plan.schemas:
        return
    constraints = backend.constraints
    param = "tools" if plan.tool_format else plan.schemas[0][0] if plan.schemas else "response_format"
    if constraints is None:
        raise invalid_request("This model cannot constrain its output.", param)
    try:
        _check(constraints, plan)
    except UnconstrainableModel as exc:
        raise invalid_request(f"This model's tokenizer cannot be used to enforce a grammar ({exc}), so forced tool calls "
                              "and JSON output are not available on it.", param, "model_not_supported") from None


def _check(constraints: ConstraintFactory, plan: OutputPlan) -> None:
    if plan.grammar is not None:
        try:
            constraints.check(plan.grammar)
            return
        except GrammarError as exc:
            failure = str(exc)
    llguidance = import_llguidance()
    for param, schema in plan.schemas:
        try:
            # As JSON text: integers past 64 bits are numbers to it, where a dict would not convert.
            constraints.check(llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema)))
        except (GrammarError, ValueError) as exc:
            raise invalid_request(f"This JSON schema cannot be used: {exc}", param, "invalid_schema") from None
    if plan.grammar is not None:
        raise invalid_request(f"The output grammar cannot be built: {failure}", "tools", "invalid_schema")
