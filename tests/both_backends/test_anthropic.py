"""The Messages API through the unchanged `anthropic` SDK, on both backends: bodies are parsed strictly by
the SDK's own models."""

from __future__ import annotations

import anthropic
import httpx
import pytest
from pydantic import BaseModel

from ..conftest import Served

WEATHER = {"name": "get_weather", "description": "The weather in a city",
           # Claude Code's schemas use keywords such as propertyNames: compiled leniently, not refused.
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                            "propertyNames": {"pattern": "^[a-z]+$"}}}


@pytest.fixture
def sdk(served: Served) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=served.server.url, api_key="unused", max_retries=0)


def strict(message: anthropic.types.Message) -> anthropic.types.Message:
    return anthropic.types.Message.model_validate(message.model_dump(), strict=True)


def test_create_and_stream(sdk: anthropic.Anthropic, served: Served) -> None:
    message = strict(sdk.messages.create(model=served.model, max_tokens=8, system=[{"type": "text", "text": "Be brief."}],
                                         messages=[{"role": "user", "content": "Say hello."}], metadata={"user_id": "u"}))
    assert message.role == "assistant" and message.content[0].type == "text"
    assert message.stop_reason in ("end_turn", "max_tokens") and message.usage.output_tokens <= 8
    with sdk.messages.stream(model=served.model, max_tokens=40, stop_sequences=["3"],
                             messages=[{"role": "user", "content": "Count from 1 to 5, digits only."}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert final.content[0].text == text and "3" not in text
    if final.stop_reason == "stop_sequence":
        assert final.stop_sequence == "3"


def test_tool_round_trip(sdk: anthropic.Anthropic, served: Served) -> None:
    question = {"role": "user", "content": "What is the weather in Oslo?"}
    # Greedy (the SDK no longer has `temperature`; the API still takes it): a sampled call can run long.
    greedy = {"temperature": 0}
    first = strict(sdk.messages.create(model=served.model, max_tokens=100, tools=[WEATHER], tool_choice={"type": "any"},
                                       messages=[question], extra_body=greedy))
    use = first.content[-1]
    assert first.stop_reason == "tool_use" and use.type == "tool_use" and use.id.startswith("toolu_") and use.input["city"]
    result = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny", "is_error": False,
                                           "cache_control": {"type": "ephemeral"}}]}
    second = strict(sdk.messages.create(model=served.model, max_tokens=20, tools=[WEATHER],
                                        messages=[question, {"role": "assistant", "content": first.content}, result]))
    # Anthropic counts the cached part of a prompt apart from the rest.
    read = lambda usage: usage.input_tokens + usage.cache_read_input_tokens  # noqa: E731
    assert read(second.usage) > read(first.usage)
    with sdk.messages.stream(model=served.model, max_tokens=100, tools=[WEATHER], messages=[question], extra_body=greedy,
                             tool_choice={"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True}) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use" and final.content[-1].input["city"]


def test_structured_output_through_parse(sdk: anthropic.Anthropic, served: Served) -> None:
    class Person(BaseModel):
        name: str
        age: int

    # effort, speed and a top-level cache_control are sent by current clients; they change nothing here.
    parsed = sdk.messages.parse(model=served.model, max_tokens=100, output_format=Person, speed="standard",
                                messages=[{"role": "user", "content": "Make up a person."}],
                                extra_body={"temperature": 0, "cache_control": {"type": "ephemeral"}})
    assert isinstance(parsed.parsed_output, Person)
    effort = sdk.messages.create(model=served.model, max_tokens=2, output_config={"effort": "high"},
                                 messages=[{"role": "user", "content": "Hi"}])
    assert effort.content


def test_count_tokens_is_what_the_model_reads(sdk: anthropic.Anthropic, served: Served) -> None:
    request = {"model": served.model, "system": "Be brief.", "messages": [{"role": "user", "content": "Hello"}]}
    counted = sdk.messages.count_tokens(**request).input_tokens
    usage = sdk.messages.create(max_tokens=1, **request).usage
    assert counted == usage.input_tokens + usage.cache_read_input_tokens
    assert sdk.messages.count_tokens(tools=[WEATHER], **request).input_tokens > counted  # the tools are read too


def test_claude_code_paths_and_errors(client: httpx.Client, served: Served) -> None:
    headers = {"anthropic-version": "2023-06-01", "anthropic-beta": "context-management-2025-06-27"}
    ok = client.post("/v1/messages?beta=true", headers=headers, json={
        "model": served.model, "max_tokens": 2, "messages": [{"role": "user", "content": "x"}],
        "context_management": {"edits": []}})
    assert ok.status_code == 200, ok.text
    assert client.head("/").status_code == 200
    for body, status, kind in [
        ({"messages": [{"role": "user", "content": "x"}]}, 400, "invalid_request_error"),  # max_tokens is required
        ({"max_tokens": 5, "messages": [{"role": "user", "content": []}]}, 400, "invalid_request_error"),
        ({"max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]}, 400, "invalid_request_error"),
        ({"max_tokens": 5, "thinking": {"type": "sometimes"}, "messages": [{"role": "user", "content": "x"}]},
         400, "invalid_request_error"),
        ({"max_tokens": 5, "model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}, 404, "not_found_error"),
        ({"max_tokens": 5, "diagnostics": {"previous_message_id": "msg_1"}, "messages": [{"role": "user", "content": "x"}]},
         400, "invalid_request_error"),
    ]:
        for stream in (False, True):
            response = client.post("/v1/messages", json={"model": served.model, "stream": stream, **body} if "model" not in body
                                   else {"stream": stream, **body})
            assert response.status_code == status, response.text
            assert response.json()["type"] == "error" and response.json()["error"]["type"] == kind
