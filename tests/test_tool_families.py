"""Tool-call formats of every model family (prompting/tool_families.py), on templates of our own that reproduce each
family's markers (tests/chat_templates.py) and on texts such models write (the strings are ours; the behaviours are
the peers' test cases: llama.cpp's, vLLM's and Ollama's parsers): the family is detected, a rendered call parses back
to the same call, the forced grammar admits the family's frame and nothing else, and the parser gives the same answer
fed whole or in any chunks, without ever raising. Through the real server: tests/test_tool_call_formats.py."""

from __future__ import annotations

import json
import logging
import random
from functools import lru_cache
from typing import Any

import pytest

from local_llm_api.catalog import ModelSpec
from local_llm_api.prompting.chat_template import render_chat
from local_llm_api.prompting.tool_calls import CallArguments, CallStarted, ToolCallStream
from local_llm_api.prompting.tool_families import FAMILIES, FAMILY_NAMES, HERMES, tool_format
from local_llm_api.prompting.tool_parser import CallPiece, DeclaredTool, ToolParser
from local_llm_api.prompting.tool_syntax import Call, ToolSyntax

from .chat_templates import TEMPLATES, TOOL_FAMILIES

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}, "required": ["city"]}
TYPED = {"type": "object", "properties": {"n": {"type": "integer"}, "x": {"type": "number"}, "on": {"type": "boolean"},
                                          "tags": {"type": "array"}, "code": {"type": "string"}}}
DECLARED = {"get_weather": DeclaredTool(WEATHER), "get_time": DeclaredTool({}), "typed": DeclaredTool(TYPED),
            "brave_search": DeclaredTool({"type": "object", "properties": {"query": {"type": "string"}}})}
CALLS = [Call("get_weather", json.dumps({"city": "Oslo <3>\n\"north\"", "days": 3})), Call("get_time", "{}")]
EXPECTED = [("get_weather", {"city": "Oslo <3>\n\"north\"", "days": 3}), ("get_time", {})]
OWN_SYNTAXES = {f.name: f for f in FAMILIES}  # one entry per family name (Llama 3's two markers give one)


def parser(family: str) -> ToolParser:
    return ToolParser(tool_format("", family if family != "derived" else None).syntaxes, DECLARED)


def read(parser: ToolParser, text: str) -> tuple[str, list[tuple[str, Any]]]:
    pieces = parser.parse(text, final=True)
    return ("".join(p for p in pieces if isinstance(p, str)),
            [(p.name, json.loads(p.arguments)) for p in pieces if isinstance(p, CallPiece)])


def streamed(parser: ToolParser, chunks: list[str]) -> tuple[str, list[Call], dict[int, str]]:
    """Content, final calls and each call's joined argument deltas, fed in `chunks`."""
    stream = ToolCallStream(parser)
    out = [o for chunk in chunks for o in stream.push(chunk)]
    rest, calls = stream.finish()
    out += rest
    deltas: dict[int, str] = {}
    for o in out:
        if isinstance(o, CallArguments):
            deltas[o.number] = deltas.get(o.number, "") + o.delta
    started = [o.call.id for o in out if isinstance(o, CallStarted)]
    assert started == [c.id for c in calls]  # each call announced once, with the id it ends with
    return "".join(o for o in out if isinstance(o, str)), calls, deltas


def test_every_family_is_detected_from_its_template() -> None:
    for name, family in TOOL_FAMILIES.items():
        assert tool_format(TEMPLATES[name]).family == family, name
    assert tool_format(TEMPLATES["gemma-3"]).how == "default"  # renders no calls: Hermes, in a system message
    assert tool_format(TEMPLATES["poolside"]).syntax.call_open == '<call name="{name}">'  # read off a rendering


def assistant_text(template: str, calls: list[dict[str, Any]]) -> tuple[str, str]:
    """What the template shows the model as its own turn holding these calls (the rendering after the prompt), and
    the prompt."""
    user = [{"role": "user", "content": "Weather?"}]
    prompt = render_chat(template, user, bos_token="<s>", eos_token="</s>", add_generation_prompt=True)
    full = render_chat(template, [*user, {"role": "assistant", "content": "", "tool_calls": calls}], bos_token="<s>",
                       eos_token="</s>", add_generation_prompt=False)
    if full.startswith(prompt):
        return full[len(prompt):], prompt
    return full[full.index("Weather?") + len("Weather?"):], ""


@pytest.mark.parametrize("name", list(TOOL_FAMILIES))
def test_a_rendered_call_parses_back_to_the_same_call(name: str) -> None:
    family = TOOL_FAMILIES[name]
    ids = ["functions.get_weather:0", "functions.get_time:1"] if family == "kimi-k2" else ["call_1", "call_2"]
    calls = [{"id": i, "type": "function", "function": {"name": c.name, "arguments": json.loads(c.arguments)}}
             for i, c in zip(ids, CALLS, strict=True)]
    text, prompt = assistant_text(TEMPLATES[name], calls)
    content, parsed = read(ToolParser(tool_format(TEMPLATES[name]).syntaxes, DECLARED, prompt), text)
    assert parsed == EXPECTED, text
    assert "get_" not in content  # no piece of a call is left in the content


@pytest.mark.parametrize("family", list(OWN_SYNTAXES))
def test_our_own_writing_parses_back_whole_and_in_every_split(family: str, caplog: pytest.LogCaptureFixture) -> None:
    syntax = OWN_SYNTAXES[family].syntax
    prose = "" if syntax.bare else "Let me check.\n"
    text = prose + syntax.call_text(CALLS)
    reader = parser(family)
    content, parsed = read(reader, text)
    assert parsed == EXPECTED and content == prose
    caplog.set_level(logging.WARNING, "local_llm_api.tools")
    rng = random.Random(family)
    splits = [[text[:i], text[i:]] for i in range(len(text) + 1)] + [list(text)]
    for _ in range(30):
        a, b = sorted(rng.sample(range(len(text) + 1), 2))
        splits.append([text[:a], text[a:b], text[b:]])
    for chunks in splits:
        got_content, calls, deltas = streamed(reader, chunks)
        assert got_content == prose, chunks
        assert [(c.name, json.loads(c.arguments)) for c in calls] == EXPECTED, chunks
        assert [deltas.get(n, "") for n in range(len(calls))] == [c.arguments for c in calls], chunks
    assert not caplog.records  # never had to take back what it sent


@lru_cache(maxsize=1)
def _tokenizer() -> Any:
    import llguidance.hf
    from transformers import AutoTokenizer

    from .models import smollm2_transformers_folder

    tokenizer = AutoTokenizer.from_pretrained(smollm2_transformers_folder())
    return tokenizer, llguidance.hf.from_tokenizer(tokenizer)


def admits(grammar: str, text: str) -> bool:
    import llguidance

    tokenizer, lltokenizer = _tokenizer()
    matcher = llguidance.LLMatcher(lltokenizer, llguidance.LLMatcher.grammar_from_lark(grammar), log_level=0)
    assert not matcher.is_error(), matcher.get_error()
    return all(matcher.consume_token(t) for t in tokenizer.encode(text, add_special_tokens=False)) and matcher.is_accepting()


@pytest.mark.parametrize("family", list(OWN_SYNTAXES))
def test_the_forced_grammar_admits_the_family_frame_and_nothing_else(family: str) -> None:
    syntax = OWN_SYNTAXES[family].syntax
    schema = {**WEATHER, "additionalProperties": False}
    one = "start: calls\n" + syntax.grammar([("get_weather", schema)], parallel=False)
    call = Call("get_weather", json.dumps({"city": "Oslo", "days": 3}))
    assert admits(one, syntax.call_text([call]))
    other = HERMES if syntax is not HERMES else OWN_SYNTAXES["llama3"].syntax
    assert not admits(one, other.call_text([call]))
    assert not admits(one, syntax.call_text([Call("get_time", "{}")]))  # a function it was not asked for
    several = "start: calls\n" + syntax.grammar([("get_weather", schema), ("get_time", {"type": "object"})], parallel=True)
    assert admits(several, syntax.call_text([call, Call("get_time", "{}")]))


def test_a_frame_the_prompt_opened_is_forced_from_where_it_stands() -> None:
    syntax = OWN_SYNTAXES["functionary-v3.2"].syntax  # its generation prompt ends with ">>>"
    primed = "start: calls\n" + syntax.grammar([("get_weather", WEATHER)], parallel=True, primed=True)
    first, second = Call("get_weather", '{"city": "Oslo"}'), Call("get_weather", '{"city": "Lima"}')
    assert admits(primed, syntax.call_text([first, second]).removeprefix(">>>"))
    assert not admits(primed, syntax.call_text([first]))  # not ">>>" twice
    pieces = ToolParser(tool_format("", "functionary-v3.2").syntaxes, DECLARED, prompt="<|eot_id|>\n\n>>>").parse(
        syntax.call_text([first, second]).removeprefix(">>>"), final=True)
    assert [(p.name, json.loads(p.arguments)) for p in pieces] == [("get_weather", {"city": "Oslo"}), ("get_weather", {"city": "Lima"})]


def test_forced_numbers_keep_to_sixteen_digits() -> None:
    from local_llm_api.core.output import with_options

    schema = with_options({"type": "object", "properties": {"population": {"type": "integer"}}, "required": ["population"]}, True)
    for syntax in (HERMES, OWN_SYNTAXES["qwen3-coder"].syntax, OWN_SYNTAXES["lfm2"].syntax):
        grammar = "start: calls\n" + syntax.grammar([("count", schema)], parallel=False)
        assert admits(grammar, syntax.call_text([Call("count", '{"population": 8336817}')]))
        assert not admits(grammar, syntax.call_text([Call("count", '{"population": 12345678901234567}')]))


# Texts models write: (family, text, content, calls).
WRITTEN = [
    # Cut off by max_tokens inside the closing marker (and inside one of its characters): no piece of it is content.
    ("deepseek-v3.1", "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_time<｜tool▁sep｜>{}<｜tool▁call\ufffd", "",
     [("get_time", {})]),
    ("hermes", '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_', "", [("get_time", {})]),
    ("hermes", "Cut off \ufffd", "Cut off \ufffd", []),
    ("hermes", '<tool_call>\n```json\n{"name": "get_time", "arguments": {}}\n```\n</tool_call>', "", [("get_time", {})]),
    ("hermes", 'Checking.\n```json\n{"name": "get_time", "arguments": {}}\n```', "Checking.\n", [("get_time", {})]),
    ("hermes", '<function_call>{"name": "get_time", "parameters": {}}</function_call>', "", [("get_time", {})]),
    ("hermes", '<tool_call>{"type": "function", "function": {"name": "get_time", "arguments": "{}"}}</tool_call>', "",
     [("get_time", {})]),
    ("hermes", '<tool_call>{"name": "get_weather", "arguments": "{\\"city\\": \\"Rome\\"}"}</tool_call>', "",
     [("get_weather", {"city": "Rome"})]),
    ("hermes", '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>\nDone, see above.', "Done, see above.",
     [("get_time", {})]),
    ("hermes", '<tool_call>{"name": "unknown_tool", "arguments": {}}</tool_call>',
     '<tool_call>{"name": "unknown_tool", "arguments": {}}</tool_call>', []),
    ("hermes", "<tool_call>\nI cannot call tools.\n</tool_call>", "<tool_call>\nI cannot call tools.\n</tool_call>", []),
    ("hermes", '<tool_call>{"name": "get_weather", "arguments": {"city": "Ro', "", [("get_weather", {"city": "Ro"})]),
    ("llama3", '<|python_tag|>{"name": "get_time", "parameters": {}}', "", [("get_time", {})]),
    ("llama3", '<|python_tag|>brave_search.call(query="local llm")', "", [("brave_search", {"query": "local llm"})]),
    ("llama3", '{"type": "function", "name": "get_time", "parameters": {}}', "", [("get_time", {})]),
    ("mistral", '[{"name": "get_time", "arguments": {}}]', "", [("get_time", {})]),  # the marker token not printed
    ("mistral", '[TOOL_CALLS] [{"name": "get_time", "arguments": {}, "id": "a1b2c3d4e"}]', "", [("get_time", {})]),
    ("mistral-v11", '[TOOL_CALLS]get_time[ARGS]{}[TOOL_CALLS]get_weather[ARGS]{"city": "Rome"}', "",
     [("get_time", {}), ("get_weather", {"city": "Rome"})]),
    ("qwen3-coder", "<tool_call>\n<function=typed>\n<parameter=n>\n42\n</parameter>\n<parameter=x>\n2.5\n</parameter>\n"
     "<parameter=on>\ntrue\n</parameter>\n<parameter=tags>\n[\"a\"]\n</parameter>\n<parameter=code>\n007\n</parameter>\n"
     "</function>\n</tool_call>", "", [("typed", {"n": 42, "x": 2.5, "on": True, "tags": ["a"], "code": "007"})]),
    ("qwen3-coder", "<tool_call>\n<function=typed>\n<parameter=n>\nmany\n</parameter>\n</function>\n</tool_call>", "",
     [("typed", {"n": "many"})]),  # not a number: kept as the model wrote it
    ("qwen3-coder", '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>', "", [("get_time", {})]),
    ("glm-4.5", "<tool_call>get_weather<arg_key>city</arg_key><arg_value>Rome</arg_value></tool_call>", "",
     [("get_weather", {"city": "Rome"})]),  # GLM 4.7's form, without newlines
    ("gpt-oss", '<|start|>assistant to=functions.get_time<|channel|>commentary json<|message|>{}<|call|>', "",
     [("get_time", {})]),
    ("gpt-oss", '<|channel|>commentary to=functions.get_time <|constrain|>json<|message|>{}', "", [("get_time", {})]),
    ("kimi-k2", "<|tool_calls_section_begin|><|tool_call_begin|>functions.get_time:3<|tool_call_argument_begin|>{}"
     "<|tool_call_end|><|tool_calls_section_end|>", "", [("get_time", {})]),
    ("deepseek-r1", "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_time\n```json\n{}\n```"
     "<｜tool▁call▁end｜><｜tool▁calls▁end｜>", "", [("get_time", {})]),
    ("lfm2", '<|tool_call_start|>[get_weather(city="Rome", days=2), get_time()]<|tool_call_end|>', "",
     [("get_weather", {"city": "Rome", "days": 2}), ("get_time", {})]),
    ("functiongemma", "<start_function_call>call:typed{n:4,on:true,code:<escape>a,b<escape>}<end_function_call>", "",
     [("typed", {"n": 4, "on": True, "code": "a,b"})]),
    ("functionary-v3.2", ">>>all\nLet me look.>>>get_time\n{}", "Let me look.", [("get_time", {})]),
    ("command-r7b", '<|START_ACTION|>[\n    {"tool_call_id": "0", "tool_name": "get_time", "parameters": {}}\n]'
     "<|END_ACTION|>", "", [("get_time", {})]),
]


@pytest.mark.parametrize(("family", "text", "content", "calls"), WRITTEN)
def test_what_models_write_is_read(family: str, text: str, content: str, calls: list[Any]) -> None:
    reader = parser(family)
    got_content, got = read(reader, text)
    assert got == calls and got_content.strip() == content.strip()
    for cut in range(len(text) + 1):  # and the same in any two chunks
        streamed_content, streamed_calls, deltas = streamed(reader, [text[:cut], text[cut:]])
        assert [(c.name, json.loads(c.arguments)) for c in streamed_calls] == calls, cut
        assert streamed_content.strip() == content.strip(), cut
        assert [deltas.get(n, "") for n in range(len(streamed_calls))] == [c.arguments for c in streamed_calls], cut


MARKERS = ["<tool_call>", "</tool_call>", "<function=", "<parameter=", "</parameter>", "[TOOL_CALLS]", "[ARGS]", "{", "}",
           "[", "]", '"', ":", ",", "\n", "get_weather", "```json", "```", "<|python_tag|>", "(", ")", "<escape>",
           '"name": ', '"arguments": ', "<|tool_call_begin|>", "<｜tool▁sep｜>", ">>>", "<arg_key>", "\\"]


@pytest.mark.parametrize("family", list(OWN_SYNTAXES))
def test_no_text_makes_the_parser_raise_or_contradict_itself(family: str, caplog: pytest.LogCaptureFixture) -> None:
    """Corrupted call texts and random marker soup, in random chunks: always an answer, never an exception, and the
    streamed arguments always the final ones."""
    caplog.set_level(logging.ERROR, "local_llm_api.tools")
    rng = random.Random(f"fuzz-{family}")
    base = OWN_SYNTAXES[family].syntax.call_text(CALLS)
    reader = parser(family)
    for _ in range(60):
        text = base
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(text) + 1)
            edit = rng.choice(("cut", "drop", "insert", "repeat"))
            if edit == "cut":
                text = text[:at]
            elif edit == "drop":
                text = text[:at] + text[at + rng.randint(1, 8):]
            elif edit == "insert":
                text = text[:at] + rng.choice(MARKERS) + text[at:]
            else:
                text = text[:at] + text[max(0, at - 12):at] + text[at:]
        if rng.random() < 0.2:
            text = "".join(rng.choice(MARKERS) for _ in range(rng.randint(1, 30)))
        cuts = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, rng.randint(0, 6))))
        chunks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        _, calls, deltas = streamed(reader, chunks)
        assert [deltas.get(n, "") for n in range(len(calls))] == [c.arguments for c in calls], text
    assert not caplog.records  # no failure inside the parser either


def test_an_unknown_template_that_renders_calls_gets_its_frame_read_off_a_rendering() -> None:
    template = ("{% for m in messages %}{{ m.content }}{% for c in m.tool_calls or [] %}<<CALL {\"fn\": {{ c.function.name | tojson }},"
                " \"with\": {{ c.function.arguments | tojson }}} CALL>>{% endfor %}{% endfor %}")
    fmt = tool_format(template)
    assert fmt.how == "derived" and fmt.syntax.call_open == "<<CALL " and fmt.syntax.name_key == "fn"
    text = fmt.syntax.call_text([Call("get_time", "{}")])
    assert text == '<<CALL {"fn": "get_time", "with": {}} CALL>>'
    assert read(ToolParser(fmt.syntaxes, DECLARED), "Sure. " + text) == ("Sure. ", [("get_time", {})])


def test_models_config_names_a_family() -> None:
    assert tool_format(TEMPLATES["gemma-3"], "qwen3-coder").syntax is OWN_SYNTAXES["qwen3-coder"].syntax
    assert tool_format(TEMPLATES["gemma-3"], "qwen3-coder").how == "configured"
    assert set(FAMILY_NAMES) >= set(TOOL_FAMILIES.values()) - {"derived"}
    with pytest.raises(ValueError, match="unknown tool_format 'qwen9'"):
        ModelSpec(name="m", path="m.gguf", tool_format="qwen9")


def test_syntaxes_are_described_once() -> None:
    assert all(isinstance(f.syntax, ToolSyntax) for f in FAMILIES)
    assert len({f.name for f in FAMILIES}) >= 20
