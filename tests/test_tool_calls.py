"""Unit tests: tool-call formats by model family (parsing, streaming split, history rendering) and the output
plan's choices. The HTTP behaviour is tested on both backends in tests/both_backends/test_structured.py."""

from __future__ import annotations

import json

import pytest

from local_llm_api.errors import APIError
from local_llm_api.core.output import plan_output
from local_llm_api.core.prompt import template_messages
from local_llm_api.dialects.openai.protocol import ChatCompletionRequest
from local_llm_api.dialects.openai.translate import chat_request
from local_llm_api.prompting.chat_template import CHATML, LLAMA3, render_chat, template_info
from local_llm_api.prompting.tool_calls import CallArguments, CallStarted, ToolCallStream
from local_llm_api.prompting.tool_families import FALLBACKS, HERMES, MISTRAL, tool_format
from local_llm_api.prompting.tool_families import LLAMA3 as LLAMA3_SYNTAX
from local_llm_api.prompting.tool_parser import CallPiece, DeclaredTool, ToolParser

QWEN_LIKE = ("{% for m in messages %}{{ m.content }}{% for c in m.tool_calls or [] %}<tool_call>{{ c.function | tojson }}"
             "</tool_call>{% endfor %}{% endfor %}{% if tools %}<tools>{{ tools | tojson }}</tools>{% endif %}")
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
DECLARED = {"f": DeclaredTool(), "g": DeclaredTool()}


def parsed(syntax, text: str) -> tuple[str | None, list]:  # noqa: ANN001
    pieces = ToolParser((syntax, *FALLBACKS), DECLARED).parse(text, final=True)
    calls = [(p.name, json.loads(p.arguments)) for p in pieces if isinstance(p, CallPiece)]
    content = "".join(p for p in pieces if isinstance(p, str)).strip()
    return (content or None) if calls else "".join(p for p in pieces if isinstance(p, str)), calls


def test_format_is_read_from_the_chat_template() -> None:
    assert tool_format(QWEN_LIKE).syntax is HERMES
    assert tool_format("{{ '[TOOL_CALLS]' }}").syntax is MISTRAL
    assert tool_format("<|start_header_id|>{% if tools %}{% endif %}").syntax is LLAMA3_SYNTAX
    assert tool_format(CHATML).family == "hermes" and tool_format(CHATML).how == "default"  # explained in a system message


@pytest.mark.parametrize(
    ("syntax", "text", "content", "calls"),
    [
        (HERMES, 'Let me check.\n<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>', "Let me check.", [("f", {"a": 1})]),
        (HERMES, '<tool_call>{"name": "f", "arguments": {}}</tool_call>\n<tool_call>{"name": "g", "arguments": {"b": "x"}}</tool_call>',
         None, [("f", {}), ("g", {"b": "x"})]),
        (HERMES, '<tool_call>\n{"name": "f", "arguments": {"a": 1}}', None, [("f", {"a": 1})]),  # cut by a stop string
        (HERMES, '<tool_call>\n{"name": "f", "arguments": "{\\"a\\": 1}"}\n</tool_call>', None, [("f", {"a": 1})]),
        (LLAMA3_SYNTAX, '{"name": "f", "parameters": {"a": 1}}', None, [("f", {"a": 1})]),
        (LLAMA3_SYNTAX, ' {"name": "f", "parameters": {}}; {"name": "g", "parameters": {}}', None, [("f", {}), ("g", {})]),
        (MISTRAL, '[{"name": "f", "arguments": {"a": 1}}, {"name": "g", "arguments": {}}]', None, [("f", {"a": 1}), ("g", {})]),
        (MISTRAL, '[TOOL_CALLS][{"name": "f", "arguments": {}}]', None, [("f", {})]),
    ],
)
def test_calls_are_parsed_in_each_format(syntax, text: str, content: str | None, calls: list) -> None:  # noqa: ANN001
    assert parsed(syntax, text) == (content, calls)


@pytest.mark.parametrize(
    ("syntax", "text"),
    [
        (HERMES, "Just prose, no calls."),
        (HERMES, "<tool_call>\n{not json}\n</tool_call>"),
        (HERMES, '<tool_call>\n{"arguments": {}}\n</tool_call>'),  # no name
        (HERMES, '<tool_call>\n{"name": "undeclared", "arguments": {}}\n</tool_call>'),
        (LLAMA3_SYNTAX, "The weather is fine."),
        (LLAMA3_SYNTAX, '{"title": "a JSON answer, not a call"}'),
        (MISTRAL, "[1, 2, 3]"),
    ],
)
def test_text_that_is_not_a_call_stays_content(syntax, text: str) -> None:  # noqa: ANN001
    assert parsed(syntax, text) == (text, [])


def test_stream_sends_prose_and_a_call_as_it_comes() -> None:
    stream = ToolCallStream(ToolParser((HERMES, *FALLBACKS), DECLARED))
    sent = [stream.push(piece) for piece in ["Sure", ", checking", ".\n<tool", "_call>\n{\"name\": \"f\", ", '"arguments": {"a"',
                                             ": 1}}\n</tool_call>"]]
    assert [out for out in sent[2]] == [".\n"]  # "<tool" might start a call: held
    assert "".join(o for batch in sent for o in batch if isinstance(o, str)) == "Sure, checking.\n"
    started = [o for o in sent[3] if isinstance(o, CallStarted)]
    assert started and started[0].call.name == "f"  # the name as soon as it is read
    assert "".join(o.delta for batch in sent for o in batch if isinstance(o, CallArguments)) == '{"a": 1}'
    rest, calls = stream.finish()
    assert rest == [] and [(c.name, c.arguments, c.id) for c in calls] == [("f", '{"a": 1}', started[0].call.id)]


def test_stream_gives_back_held_text_that_was_not_a_call() -> None:
    stream = ToolCallStream(ToolParser((HERMES, *FALLBACKS), DECLARED))
    assert stream.push("a < b and <tool") == ["a < b and "]
    assert stream.push("s>") == ["<tools>"]
    assert stream.finish() == ([], [])
    bare = ToolCallStream(ToolParser((LLAMA3_SYNTAX, *FALLBACKS), DECLARED))
    assert bare.push("  ") == [] and bare.push('{"na') == []  # may be a call's "name": held
    assert bare.push('me": "nope"}') == ['  {"name": "nope"}']  # no tool of that name: content
    assert bare.finish() == ([], [])
    answer = ToolCallStream(ToolParser((LLAMA3_SYNTAX, *FALLBACKS), DECLARED))
    assert answer.push('{"title": 1') == ['{"title": 1']  # a key no call has: a JSON answer, sent at once
    prose = ToolCallStream(ToolParser((LLAMA3_SYNTAX, *FALLBACKS), DECLARED))
    assert prose.push("Hello {") == ["Hello {"] and prose.finish() == ([], [])


def test_history_renders_calls_and_results_for_a_template_without_tools() -> None:
    request = chat_request(ChatCompletionRequest(
        messages=[
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function",
                                                                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        ],
        tools=[TOOL],
    ))
    plan = plan_output(request, CHATML)
    messages = template_messages(request.messages, plan, template_info(CHATML), CHATML)
    assert messages[0]["role"] == "system" and "<tools>" in messages[0]["content"] and "get_weather" in messages[0]["content"]
    assert messages[2]["content"] == '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
    assert messages[3] == {"role": "user", "content": "<tool_response>\nsunny\n</tool_response>"}
    text = render_chat(CHATML, messages, bos_token="", eos_token="")
    assert "<tool_response>\nsunny" in text


def test_history_passes_calls_as_objects_to_a_template_with_tools() -> None:
    request = chat_request(ChatCompletionRequest(
        messages=[{"role": "assistant", "content": None, "tool_calls": [{"id": "c", "type": "function",
                                                                         "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
                  {"role": "tool", "tool_call_id": "c", "content": "sunny"}],
        tools=[TOOL],
    ))
    messages = template_messages(request.messages, plan_output(request, QWEN_LIKE), template_info(QWEN_LIKE), QWEN_LIKE)
    assert messages[0]["tool_calls"][0]["function"]["arguments"] == {"city": "Oslo"}
    assert messages[1] == {"role": "tool", "content": "sunny", "tool_call_id": "c"}
    assert render_chat(LLAMA3, [{"role": "user", "content": "x"}], bos_token="", eos_token="", tools=[TOOL])


def test_plan_matches_tool_choice() -> None:
    def plan(**fields: object):  # noqa: ANN202
        return plan_output(chat_request(ChatCompletionRequest(messages=[{"role": "user", "content": "x"}], **fields)), CHATML)

    auto = plan(tools=[TOOL])
    assert auto.grammar is None and auto.tool_format.syntax is HERMES and auto.tools and auto.stop == ("</tool_call>",)
    assert plan(tools=[TOOL], parallel_tool_calls=True).stop == ()
    assert plan(tools=[TOOL], tool_choice="required").grammar
    none = plan(tools=[TOOL], tool_choice="none")
    assert none.tool_format is None and none.tools is None and none.grammar is None
    assert plan(response_format={"type": "json_object"}).grammar
    assert plan(tools=[TOOL], response_format={"type": "json_object"}).grammar  # calls or the JSON answer
    with pytest.raises(APIError) as error:
        plan(tools=[TOOL], tool_choice={"type": "function", "function": {"name": "nope"}})
    assert error.value.body.param == "tool_choice.function.name"
