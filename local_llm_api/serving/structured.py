"""From `tools`, `tool_choice`, `parallel_tool_calls` and `response_format` to what generation needs: the
grammar the answer must match (if any), the tools the model is shown, and how to read calls back.

| tool_choice                | grammar                                            | calls read back |
|----------------------------|----------------------------------------------------|-----------------|
| no tools, or `none`        | the response_format's JSON schema, if any          | no              |
| `auto` (default with tools)| none; with a JSON response_format: calls or answer | yes             |
| `required`                 | one or more calls of any tool                      | yes             |
| a named function           | one call of that function                          | yes             |
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..api.errors import invalid_request
from ..api.protocol import ChatCompletionRequest, JSONObjectFormat, JSONSchemaFormat, NamedToolChoice
from ..backends.base import Backend
from ..prompting.tool_calls import ToolFormat, tool_format
from ..structured.constraint import GrammarError, import_llguidance

# Compact JSON, as models write it: flexible whitespace would let a small model loop on newlines.
JSON_OPTIONS = {"whitespace_flexible": False, "key_separator": ": ", "item_separator": ", "}
NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}


@dataclass(frozen=True)
class OutputPlan:
    grammar: str | None = None  # the llguidance grammar the answer must match
    tool_format: ToolFormat | None = None  # set when the answer may hold tool calls
    tools: list[dict[str, Any]] | None = None  # shown to the model through its chat template
    stop: tuple[str, ...] = ()  # added to the request's stop strings
    schemas: tuple[tuple[str, dict[str, Any]], ...] = ()  # (param, schema) to compile before generating


def with_options(schema: dict[str, Any], strict: bool) -> dict[str, Any]:
    """The schema with llguidance's compile options; `strict` refuses keywords it cannot enforce,
    otherwise they are ignored (as the JSON Schema spec allows for unknown keywords)."""
    options = {**JSON_OPTIONS, "lenient": not strict, **schema.get("x-guidance", {})}
    return {**schema, "x-guidance": options}


def plan_output(req: ChatCompletionRequest, chat_template: str) -> OutputPlan:
    answer, schemas = _answer_rule(req)
    tools = req.tools or []
    choice = req.tool_choice
    if not tools:
        if choice not in (None, "none"):
            raise invalid_request("'tool_choice' needs 'tools': no tools were given.", "tool_choice")
        return OutputPlan(grammar=_lark(f"start: answer\n{answer}") if answer else None, schemas=schemas)
    names = [tool.function.name for tool in tools]
    duplicate = next((name for name in names if names.count(name) > 1), None)
    if duplicate is not None:
        raise invalid_request(f"Two tools are named '{duplicate}'.", "tools")
    functions = []
    for i, tool in enumerate(tools):
        parameters = with_options(tool.function.parameters or NO_PARAMETERS, bool(tool.function.strict))
        functions.append((tool.function.name, parameters))
        schemas += ((f"tools[{i}].function.parameters", parameters),)
    if choice == "none":  # the model is not shown the tools and answers in prose (or the response_format)
        return OutputPlan(grammar=_lark(f"start: answer\n{answer}") if answer else None, schemas=schemas)
    fmt = tool_format(chat_template)
    shown = [tool.model_dump(exclude_none=True) for tool in tools]
    # Several calls in one answer only when asked for: small models given the choice repeat a call until
    # max_tokens (llama.cpp's server makes the same choice).
    parallel = req.parallel_tool_calls is True
    if isinstance(choice, NamedToolChoice):
        if choice.function.name not in names:
            raise invalid_request(f"tool_choice names '{choice.function.name}', which is not among the tools "
                                  f"({', '.join(names)}).", "tool_choice.function.name")
        forced = [f for f in functions if f[0] == choice.function.name]
        grammar = "start: calls\n" + fmt.grammar(forced, parallel=False)
    elif choice == "required":
        grammar = "start: calls\n" + fmt.grammar(functions, parallel=parallel)
    elif answer:  # auto with a JSON response_format: either calls or the JSON answer
        grammar = "start: calls | answer\n" + fmt.grammar(functions, parallel=parallel) + "\n" + answer
    else:
        grammar = None
    # In `auto` mode the model writes freely: a single call ends at its closing tag, when it has one.
    stop = (fmt.call_close.strip(),) if grammar is None and not parallel and fmt.call_close.strip() else ()
    return OutputPlan(grammar=_lark(grammar) if grammar else None, tool_format=fmt, tools=shown, stop=stop, schemas=schemas)


def _lark(text: str) -> str:
    return str(import_llguidance().LLMatcher.grammar_from_lark(text))


def _answer_rule(req: ChatCompletionRequest) -> tuple[str | None, tuple[tuple[str, dict[str, Any]], ...]]:
    """The Lark rule `answer` for a JSON response_format (None for text), and the schema to check."""
    rf = req.response_format
    if isinstance(rf, JSONObjectFormat):
        schema = with_options({"type": "object"}, strict=False)
        return f"answer: %json {json.dumps(schema)}", ()
    if isinstance(rf, JSONSchemaFormat):
        if rf.json_schema.schema_ is None:
            raise invalid_request("response_format json_schema needs a 'schema'.", "response_format.json_schema.schema")
        schema = with_options(rf.json_schema.schema_, bool(rf.json_schema.strict))
        return f"answer: %json {json.dumps(schema)}", (("response_format.json_schema.schema", schema),)
    return None, ()


def check_schemas(backend: Backend, plan: OutputPlan) -> None:
    """Compile the plan's grammar for the model's tokenizer (kept for the sequences that use it); 400 naming
    the schema that fails. Schemas the grammar does not use are checked too. Runs off the event loop."""
    if plan.grammar is None and not plan.schemas:
        return
    constraints = backend.constraints
    if constraints is None:
        raise invalid_request("This model cannot constrain its output.", "response_format")
    if plan.grammar is not None:
        try:
            constraints.check(plan.grammar)
            return
        except GrammarError as exc:
            failure = str(exc)
    llguidance = import_llguidance()
    for param, schema in plan.schemas:
        try:
            constraints.check(llguidance.LLMatcher.grammar_from_json_schema(schema))
        except (GrammarError, ValueError) as exc:
            raise invalid_request(f"This JSON schema cannot be used: {exc}", param, "invalid_schema") from None
    if plan.grammar is not None:
        raise invalid_request(f"The output grammar cannot be built: {failure}", "tools", "invalid_schema")
