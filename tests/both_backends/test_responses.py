"""The Responses API through the unchanged `openai` SDK, on both backends; bodies and stream events checked
against the OpenAI spec."""

from __future__ import annotations

import json

import httpx
import pytest
import zstandard
from openai import BadRequestError, NotFoundError, OpenAI
from pydantic import BaseModel

from ..conftest import Served, SpecValidator, sse_events

WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                          "additionalProperties": False}, "strict": True}


# The spec's schema for each stream event type.
EVENT_SCHEMAS = {
    "response.created": "ResponseCreatedEvent", "response.in_progress": "ResponseInProgressEvent",
    "response.output_item.added": "ResponseOutputItemAddedEvent", "response.content_part.added": "ResponseContentPartAddedEvent",
    "response.output_text.delta": "ResponseTextDeltaEvent", "response.output_text.done": "ResponseTextDoneEvent",
    "response.content_part.done": "ResponseContentPartDoneEvent", "response.output_item.done": "ResponseOutputItemDoneEvent",
    "response.function_call_arguments.delta": "ResponseFunctionCallArgumentsDeltaEvent",
    "response.function_call_arguments.done": "ResponseFunctionCallArgumentsDoneEvent",
    "response.custom_tool_call_input.delta": "ResponseCustomToolCallInputDeltaEvent",
    "response.custom_tool_call_input.done": "ResponseCustomToolCallInputDoneEvent",
    "response.completed": "ResponseCompletedEvent", "response.incomplete": "ResponseIncompleteEvent",
    "error": "ResponseErrorEvent", "response.failed": "ResponseFailedEvent",
}


def validated_events(client: httpx.Client, body: dict, spec: SpecValidator) -> list[dict]:
    """A streamed response's events, each checked against its spec schema, numbered 0, 1, 2..."""
    with client.stream("POST", "/v1/responses", json={**body, "stream": True}) as response:
        assert response.status_code == 200, response.read()
        events = [json.loads(e) for e in sse_events(response)]
    for event in events:
        spec.validate(event, EVENT_SCHEMAS[event["type"]])
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[0]["type"] == "response.created" and events[-1]["type"] in ("response.completed", "response.incomplete")
    return events


@pytest.fixture
def sdk(served: Served) -> OpenAI:
    return OpenAI(base_url=served.server.url + "/v1", api_key="unused", max_retries=0)


def test_create_follows_the_spec(client: httpx.Client, served: Served, spec: SpecValidator) -> None:
    body = client.post("/v1/responses", json={"model": served.model, "input": "Say hello.", "max_output_tokens": 8,
                                              "instructions": "Be brief.", "metadata": {"k": "v"}}).json()
    spec.validate(body, "Response")
    assert body["status"] in ("completed", "incomplete") and body["output"][0]["type"] == "message"
    assert body["output_text"] == body["output"][0]["content"][0]["text"]
    assert body["usage"]["output_tokens"] <= 8 and body["metadata"] == {"k": "v"}
    if body["status"] == "incomplete":
        assert body["incomplete_details"] == {"reason": "max_output_tokens"}
    assert client.post("/api/v1/responses", json={"model": served.model, "input": "Hi", "max_output_tokens": 2}).status_code == 200


def test_stream_events_follow_the_spec_and_the_sdk_accumulates_them(client: httpx.Client, served: Served, spec: SpecValidator,
                                                                     sdk: OpenAI) -> None:
    request = {"model": served.model, "input": "Count to five.", "max_output_tokens": 12, "temperature": 0,
               "include": ["message.output_text.logprobs"], "top_logprobs": 2}
    events = validated_events(client, request, spec)
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert events[-1]["response"]["output_text"] == text
    assert events[-1]["response"]["output"][0]["content"][0]["logprobs"]  # asked for through `include`
    with sdk.responses.stream(**request) as stream:
        last = list(stream)[-1]  # get_final_response() wants response.completed; a cut answer ends incomplete
    assert last.type == events[-1]["type"]
    assert last.response.output_text == text  # greedy: the same answer streamed by hand and through the SDK


def test_parse_with_a_pydantic_model(sdk: OpenAI, served: Served) -> None:
    class Person(BaseModel):
        name: str
        age: int

    parsed = sdk.responses.parse(model=served.model, input="Make up a person.", text_format=Person, max_output_tokens=100,
                                 temperature=0)
    assert isinstance(parsed.output_parsed, Person)


def test_function_tool_round_trip_with_previous_response_id(sdk: OpenAI, served: Served) -> None:
    first = sdk.responses.create(model=served.model, input="What is the weather in Oslo?", tools=[WEATHER],
                                 tool_choice="required", max_output_tokens=100, temperature=0)
    call = first.output[0]
    assert call.type == "function_call" and call.name == "get_weather" and json.loads(call.arguments)["city"]
    second = sdk.responses.create(model=served.model, previous_response_id=first.id, tools=[WEATHER], max_output_tokens=30,
                                  input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"}])
    assert second.previous_response_id == first.id and second.output
    assert second.usage.input_tokens > first.usage.input_tokens  # the earlier turn was read again
    with sdk.responses.stream(model=served.model, input="Weather in Paris?", tools=[WEATHER],
                              tool_choice={"type": "function", "name": "get_weather"}, max_output_tokens=100, temperature=0) as stream:
        streamed = stream.get_final_response()
    assert streamed.output[0].type == "function_call" and "city" in json.loads(streamed.output[0].arguments)


def test_tool_call_stream_events_follow_the_spec(client: httpx.Client, served: Served, spec: SpecValidator) -> None:
    events = validated_events(client, {"model": served.model, "input": "Weather in Oslo?", "tools": [WEATHER],
                                       "tool_choice": "required", "max_output_tokens": 100, "temperature": 0}, spec)
    kinds = [e["type"] for e in events]
    assert "response.function_call_arguments.done" in kinds and "response.output_text.delta" not in kinds
    done = next(e for e in events if e["type"] == "response.function_call_arguments.done")
    assert json.loads(done["arguments"])["city"] and done["name"] == "get_weather"
    custom = {"type": "custom", "name": "edit", "format": {"type": "grammar", "syntax": "lark",
                                                          "definition": 'start: "ADD " /[a-z]{3,8}/'}}
    events = validated_events(client, {"model": served.model, "input": "Add a file.", "tools": [custom],
                                       "tool_choice": {"type": "custom", "name": "edit"}, "max_output_tokens": 40, "temperature": 0}, spec)
    done = next(e for e in events if e["type"] == "response.custom_tool_call_input.done")
    assert done["input"].startswith("ADD ") and events[-1]["response"]["output"][0]["input"] == done["input"]


def test_custom_tool_input_follows_its_lark_grammar(sdk: OpenAI, served: Served) -> None:
    grammar = 'start: "ADD " NAME "\\n"\nNAME: /[a-z]{3,8}/'
    tool = {"type": "custom", "name": "edit", "description": "Edits a file",
            "format": {"type": "grammar", "syntax": "lark", "definition": grammar}}
    response = sdk.responses.create(model=served.model, input="Add a file.", tools=[tool],
                                    tool_choice={"type": "custom", "name": "edit"}, max_output_tokens=40, temperature=0)
    call = response.output[0]
    assert call.type == "custom_tool_call" and call.name == "edit"
    assert call.input.startswith("ADD ") and call.input[4:].strip().isalpha()
    follow = sdk.responses.create(model=served.model, previous_response_id=response.id, max_output_tokens=10, tools=[tool],
                                  input=[{"type": "custom_tool_call_output", "call_id": call.call_id, "output": "done"}])
    assert follow.status in ("completed", "incomplete")


def test_codex_style_requests(client: httpx.Client, served: Served) -> None:
    """Built-in tools are left out and named in a header; namespace groups are expanded; zstd bodies are read."""
    body = {"model": served.model, "input": "Weather in Oslo?", "max_output_tokens": 100, "temperature": 0, "tool_choice": "required",
            "tools": [{"type": "web_search"}, {"type": "image_generation"},
                      {"type": "namespace", "name": "mcp", "description": "MCP tools", "tools": [WEATHER]}],
            "include": ["reasoning.encrypted_content"], "store": False, "parallel_tool_calls": False, "reasoning": None}
    raw = zstandard.ZstdCompressor().compress(json.dumps(body).encode())
    response = client.post("/v1/responses", content=raw, headers={"Content-Encoding": "zstd", "Content-Type": "application/json"})
    assert response.status_code == 200, response.text
    assert response.headers["x-ignored-tools"] == "web_search, image_generation"
    call = response.json()["output"][0]
    assert call["type"] == "function_call" and call["namespace"] == "mcp" and call["name"] == "get_weather"
    assert client.get(f"/v1/responses/{response.json()['id']}").status_code == 404  # store: false kept nothing


def test_agents_sdk_style_request(sdk: OpenAI, served: Served) -> None:
    """The OpenAI Agents SDK sends every one of these, often empty or at their defaults."""
    response = sdk.responses.create(model=served.model, input=[{"role": "user", "content": "Hi"}], instructions="Be brief.",
                                    include=[], tool_choice="auto", parallel_tool_calls=False, tools=[WEATHER],
                                    text={"format": {"type": "text"}}, reasoning={"effort": None}, truncation="disabled",
                                    store=True, top_logprobs=None, max_output_tokens=10, metadata={})
    assert response.status in ("completed", "incomplete") and response.tools[0].name == "get_weather"


@pytest.mark.parametrize(("body", "param"), [
    ({"input": "x", "reasoning": {"effort": "extreme"}}, "reasoning.effort"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "http://x"}]}]}, "input[0].content[0].image_url"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}, "input[0].content[0].type"),
    ({"input": "x", "background": True}, "background"),
    ({"input": "x", "store": 1}, "store"),
    ({"input": "x", "temperature": 3}, "temperature"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),  # reasoning items are history now
    ({"input": "x", "top_logprobs": 3}, "top_logprobs"),
    ({"input": "x", "tool_choice": {"type": "web_search"}}, "tool_choice"),
    ({"input": [{"role": "user"}]}, "input.0.message.content"),  # the item's own error, not "should be a string"
])
def test_bad_input_is_a_400_naming_the_field(client: httpx.Client, served: Served, body: dict, param: str) -> None:
    for stream in (False, True):
        response = client.post("/v1/responses", json={"model": served.model, "stream": stream, **body})
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == param


def test_unknown_previous_response_is_a_404(sdk: OpenAI, served: Served) -> None:
    with pytest.raises(NotFoundError):
        sdk.responses.create(model=served.model, input="x", previous_response_id="resp_nope")
    with pytest.raises(NotFoundError):
        sdk.responses.retrieve("resp_nope")
    with pytest.raises(BadRequestError):
        sdk.responses.create(model=served.model, input="x", text={"format": {"type": "json_schema", "name": "s",
                                                                               "schema": {"type": "nonsense"}}})
