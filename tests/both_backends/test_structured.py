"""Tool calling, structured output and log probabilities on both backends, with SmolLM2-135M: forced
calls and schemas must give valid output for any prompt, because decoding is constrained."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from ..conftest import Served, SpecValidator
from .test_chat import stream_chat

PROMPTS = [
    "Write a poem",
    "What's the weather like in Paris today?",
    "Tell me a joke about cats.",
    "Explain how a bicycle works.",
    "Book me a table for two in Rome.",
    "Translate 'good morning' into German.",
    "What is 17 times 23?",
    "List three famous painters.",
    "Hello!",
    "Summarise the plot of Hamlet in one sentence.",
]

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 40},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 14},
    },
    "required": ["city", "unit", "days"],
    "additionalProperties": False,
}
BOOKING = {
    "type": "object",
    "properties": {
        "restaurant": {"type": "string", "maxLength": 40},
        "people": {"type": "integer", "minimum": 1, "maximum": 20},
        "time": {"type": "string", "pattern": "^[0-2][0-9]:[0-5][0-9]$"},
    },
    "required": ["restaurant", "people", "time"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather forecast for a city", "parameters": WEATHER, "strict": True}},
    {"type": "function", "function": {"name": "book_table", "description": "Book a restaurant table", "parameters": BOOKING}},
]
SCHEMAS = {"get_weather": WEATHER, "book_table": BOOKING}

ANSWER = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 60},
        "mood": {"type": "string", "enum": ["happy", "sad", "neutral"]},
        "score": {"type": "number", "minimum": 0, "maximum": 10},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 20}, "minItems": 1, "maxItems": 3},
    },
    "required": ["title", "mood", "score", "tags"],
    "additionalProperties": False,
}


def post_all(client: httpx.Client, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Send the requests side by side (they share the model's batch), answers in order."""

    def post(body: dict[str, Any]) -> dict[str, Any]:
        response = client.post("/v1/chat/completions", json=body)
        assert response.status_code == 200, response.text
        return response.json()

    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(post, bodies))


def test_forced_tool_calls_are_schema_valid_for_any_prompt(client: httpx.Client, spec: SpecValidator) -> None:
    # Even prompts force get_weather by name; odd ones require some call, of either tool.
    choices: list[Any] = [{"type": "function", "function": {"name": "get_weather"}}, "required"]
    # Sampled, without a seed: the tools' system prompt is then read once and shared (prefix cache).
    bodies = [{"messages": [{"role": "user", "content": p}], "tools": TOOLS, "tool_choice": choices[i % 2],
               "max_tokens": 120, "temperature": 0.7} for i, p in enumerate(PROMPTS)]
    for i, body in enumerate(post_all(client, bodies)):
        spec.validate(body, "CreateChatCompletionResponse")
        choice = body["choices"][0]
        assert choice["finish_reason"] == "tool_calls", (PROMPTS[i], choice)
        message = choice["message"]
        assert message["content"] is None and len(message["tool_calls"]) == 1
        call = message["tool_calls"][0]
        assert call["type"] == "function" and call["id"].startswith("call_")
        if i % 2 == 0:
            assert call["function"]["name"] == "get_weather"
        jsonschema.validate(json.loads(call["function"]["arguments"]), SCHEMAS[call["function"]["name"]])


def test_json_schema_output_is_valid_for_any_prompt(client: httpx.Client) -> None:
    response_format = {"type": "json_schema", "json_schema": {"name": "review", "schema": ANSWER, "strict": True}}
    bodies = [{"messages": [{"role": "user", "content": p}], "response_format": response_format,
               "max_tokens": 150, "temperature": 0.7} for i, p in enumerate(PROMPTS)]
    for i, body in enumerate(post_all(client, bodies)):
        choice = body["choices"][0]
        assert choice["finish_reason"] == "stop", (PROMPTS[i], choice)
        jsonschema.validate(json.loads(choice["message"]["content"]), ANSWER)


def test_json_object_gives_an_object(client: httpx.Client) -> None:
    body = post_all(client, [{"messages": [{"role": "user", "content": "Give me a recipe."}], "max_tokens": 100,
                              "response_format": {"type": "json_object"}, "temperature": 0}])[0]
    choice = body["choices"][0]
    if choice["finish_reason"] == "stop":  # a free-form object may be longer than the budget
        assert isinstance(json.loads(choice["message"]["content"]), dict)
    assert choice["message"]["content"].startswith("{")


def test_openai_sdk_parse_fills_a_pydantic_model(served: Served) -> None:
    class City(BaseModel):  # bounded, as a schema for a small model should be: greedy decoding can loop
        name: str = Field(max_length=30)
        country: str = Field(max_length=30)
        population: int
        landmarks: list[Annotated[str, Field(max_length=30)]] = Field(max_length=3)

    sdk = openai.OpenAI(base_url=served.server.url + "/v1", api_key="unused")
    result = sdk.chat.completions.parse(model=served.model, messages=[{"role": "user", "content": "Describe Paris."}],
                                        response_format=City, max_tokens=150, temperature=0)
    parsed = result.choices[0].message.parsed
    assert isinstance(parsed, City) and parsed.name


def test_responses_parse_with_an_unbounded_integer(served: Served) -> None:
    """An integer field without bounds keeps to 16 digits: a 135M model otherwise writes digits until the budget and
    the answer is not JSON."""
    class Town(BaseModel):
        name: str = Field(max_length=30)
        population: int

    sdk = openai.OpenAI(base_url=served.server.url + "/v1", api_key="unused", max_retries=0)
    response = sdk.responses.parse(model=served.model, input="Describe Paris.", text_format=Town, max_output_tokens=150,
                                   temperature=0)
    assert isinstance(response.output_parsed, Town) and abs(response.output_parsed.population) < 10**16


def test_streamed_tool_call_follows_the_spec(client: httpx.Client, spec: SpecValidator) -> None:
    body = {"messages": [{"role": "user", "content": "Weather in Oslo?"}], "tools": TOOLS, "max_tokens": 120, "temperature": 0,
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}
    chunks = stream_chat(client, **body)
    for chunk in chunks:
        spec.validate(chunk, "CreateChatCompletionStreamResponse")
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    calls = [call for d in deltas for call in d.get("tool_calls", [])]
    head = calls[0]
    assert head["index"] == 0 and head["id"].startswith("call_") and head["type"] == "function"
    assert head["function"]["name"] == "get_weather"
    arguments = "".join(c["function"].get("arguments", "") for c in calls)
    jsonschema.validate(json.loads(arguments), WEATHER)
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert not "".join(d.get("content") or "" for d in deltas)
    # The same request, not streamed, gives the same call.
    whole = client.post("/v1/chat/completions", json=body).json()
    assert json.loads(whole["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]) == json.loads(arguments)


def test_parallel_tool_calls_are_honoured(client: httpx.Client) -> None:
    base = {"messages": [{"role": "user", "content": "Weather in Oslo and Rome?"}], "tools": TOOLS, "max_tokens": 200,
            "tool_choice": "required"}
    single = client.post("/v1/chat/completions", json={**base, "parallel_tool_calls": False}).json()
    assert len(single["choices"][0]["message"]["tool_calls"]) == 1
    several = client.post("/v1/chat/completions", json={**base, "parallel_tool_calls": True}).json()["choices"][0]
    if several["finish_reason"] == "tool_calls":  # the model chose when to stop: every call it made is valid
        for call in several["message"]["tool_calls"]:
            jsonschema.validate(json.loads(call["function"]["arguments"]), SCHEMAS[call["function"]["name"]])


def test_a_call_cut_off_by_max_tokens_ends_with_length(client: httpx.Client, served: Served) -> None:
    """The cut call comes back closed as JSON, but the client is told it was cut (seen in CI: a parallel answer that
    ran out of tokens mid-call was reported as complete `tool_calls` with `"time": "20:0"`)."""
    body = {"messages": [{"role": "user", "content": "Weather in Oslo?"}], "tools": TOOLS, "max_tokens": 20,
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}
    choice = client.post("/v1/chat/completions", json=body).json()["choices"][0]
    assert choice["finish_reason"] == "length"
    assert [c["function"]["name"] for c in choice["message"]["tool_calls"]] == ["get_weather"]
    json.loads(choice["message"]["tool_calls"][0]["function"]["arguments"])  # closed, but cut
    anthropic = client.post("/v1/messages", json={"model": served.model, "max_tokens": 20, "messages": body["messages"],
                                                   "tools": [{"name": "get_weather", "input_schema": WEATHER}],
                                                   "tool_choice": {"type": "tool", "name": "get_weather"}}).json()
    assert anthropic["stop_reason"] == "max_tokens"
    assert [b["type"] for b in anthropic["content"]] == ["tool_use"]


def test_tool_results_go_back_through_the_chat_template(client: httpx.Client) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo", "unit": "celsius", "days": 1}'}}
    messages = [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": -3, "sky": "snow"}'},
    ]
    with_result = client.post("/v1/chat/completions", json={"messages": messages, "tools": TOOLS, "max_tokens": 30})
    assert with_result.status_code == 200, with_result.text
    without = client.post("/v1/chat/completions", json={"messages": messages[:1], "tools": TOOLS, "max_tokens": 1}).json()
    # The call and its result are in the prompt: it is longer by at least their text.
    assert with_result.json()["usage"]["prompt_tokens"] > without["usage"]["prompt_tokens"] + 20


def test_auto_tool_choice_answers_with_content_or_valid_calls(client: httpx.Client) -> None:
    for prompt in PROMPTS[:3]:
        body = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": prompt}], "tools": TOOLS,
                                                          "max_tokens": 60}).json()
        choice = body["choices"][0]
        if choice["message"].get("tool_calls"):
            assert choice["finish_reason"] == "tool_calls"
            for call in choice["message"]["tool_calls"]:
                json.loads(call["function"]["arguments"])
        else:
            assert choice["message"]["content"]


def test_auto_with_a_json_response_format_gives_calls_or_the_json_answer(client: httpx.Client) -> None:
    rf = {"type": "json_schema", "json_schema": {"name": "review", "schema": ANSWER}}
    for prompt in PROMPTS[:4]:
        choice = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": prompt}], "tools": TOOLS,
                                                            "response_format": rf, "max_tokens": 150}).json()["choices"][0]
        if choice["finish_reason"] == "tool_calls":
            for call in choice["message"]["tool_calls"]:
                jsonschema.validate(json.loads(call["function"]["arguments"]), SCHEMAS[call["function"]["name"]])
        else:
            assert choice["finish_reason"] == "stop"
            jsonschema.validate(json.loads(choice["message"]["content"]), ANSWER)


def test_tool_choice_none_answers_in_prose(client: httpx.Client) -> None:
    body = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hello!"}], "tools": TOOLS,
                                                      "tool_choice": "none", "max_tokens": 20}).json()
    choice = body["choices"][0]
    assert choice["message"]["content"] and not choice["message"].get("tool_calls") and choice["finish_reason"] != "tool_calls"


# ---------------------------------------------------------------- log probabilities


def test_chat_logprobs_describe_each_token(client: httpx.Client, spec: SpecValidator) -> None:
    body = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 8,
                                                      "temperature": 0, "logprobs": True, "top_logprobs": 4}).json()
    spec.validate(body, "CreateChatCompletionResponse")
    choice = body["choices"][0]
    entries = choice["logprobs"]["content"]
    assert len(entries) == body["usage"]["completion_tokens"] - (choice["finish_reason"] == "stop")  # the end token is not listed
    assert "".join(e["token"] for e in entries) == choice["message"]["content"]
    for entry in entries:
        assert entry["logprob"] <= 0 and bytes(entry["bytes"]).decode() == entry["token"]
        top = entry["top_logprobs"]
        assert len(top) == 4 and [t["logprob"] for t in top] == sorted((t["logprob"] for t in top), reverse=True)
        assert top[0]["token"] == entry["token"] and top[0]["logprob"] == pytest.approx(entry["logprob"])  # greedy


def test_chat_logprobs_stream_with_the_text(client: httpx.Client, spec: SpecValidator) -> None:
    body = {"messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 8, "temperature": 0, "logprobs": True, "top_logprobs": 2}
    chunks = stream_chat(client, **body)
    for chunk in chunks:
        spec.validate(chunk, "CreateChatCompletionStreamResponse")
    streamed = [e for c in chunks if c["choices"] and c["choices"][0]["logprobs"] for e in c["choices"][0]["logprobs"]["content"]]
    whole = client.post("/v1/chat/completions", json=body).json()["choices"][0]["logprobs"]["content"]
    assert [e["token"] for e in streamed] == [e["token"] for e in whole]
    assert [e["logprob"] for e in streamed] == pytest.approx([e["logprob"] for e in whole], abs=1e-3)


def test_logprobs_without_top_logprobs_lists_no_alternatives(client: httpx.Client) -> None:
    body = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "logprobs": True}).json()
    assert all(e["top_logprobs"] == [] for e in body["choices"][0]["logprobs"]["content"])


def test_completion_logprobs_in_the_legacy_shape(client: httpx.Client, spec: SpecValidator) -> None:
    body = client.post("/v1/completions", json={"prompt": "The capital of France is", "max_tokens": 5, "logprobs": 3, "temperature": 0}).json()
    spec.validate(body, "CreateCompletionResponse")
    choice = body["choices"][0]
    logprobs = choice["logprobs"]
    assert "".join(logprobs["tokens"]) == choice["text"]
    assert logprobs["text_offset"][0] == 0 and logprobs["text_offset"] == sorted(logprobs["text_offset"])
    assert all(len(top) <= 3 and lp <= 0 for top, lp in zip(logprobs["top_logprobs"], logprobs["token_logprobs"], strict=True))
    with client.stream("POST", "/v1/completions", json={"prompt": "The capital of France is", "max_tokens": 5, "logprobs": 3,
                                                        "temperature": 0, "stream": True}) as response:
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: {")]
    tokens = [t for e in events if e["choices"] and e["choices"][0]["logprobs"] for t in e["choices"][0]["logprobs"]["tokens"]]
    assert tokens == logprobs["tokens"]


def test_a_schema_with_logprobs_reports_the_model_distribution(client: httpx.Client) -> None:
    rf = {"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}}}
    body = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Pick a number."}], "max_tokens": 20,
                                                      "response_format": rf, "logprobs": True, "temperature": 0}).json()
    choice = body["choices"][0]
    assert json.loads(choice["message"]["content"])["n"] is not None
    assert "".join(e["token"] for e in choice["logprobs"]["content"]) == choice["message"]["content"]


LOOSE_TOOLS = [
    {"type": "function", "function": {"name": "ping", "description": "Check that the service is up",
                                      "parameters": {"type": "object", "properties": {}}}},
    {"type": "function", "function": {"name": "lookup", "description": "Look a city up",
                                      "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                     "details": {"type": "object", "properties": {"level": {"type": "integer"}}}}}}},
]


@pytest.mark.parametrize("prompt", PROMPTS[:4])
def test_loose_tool_schemas_take_only_their_declared_keys(client: httpx.Client, prompt: str) -> None:
    # Weak models given `properties` without `additionalProperties` used to invent keys until max_tokens.
    for tool, allowed in (("ping", set()), ("lookup", {"city", "details"})):
        body = {"messages": [{"role": "user", "content": prompt}], "tools": LOOSE_TOOLS, "max_tokens": 120,
                "tool_choice": {"type": "function", "function": {"name": tool}}, "temperature": 0.8, "seed": 3}
        choice = client.post("/v1/chat/completions", json=body).json()["choices"][0]
        assert choice["finish_reason"] == "tool_calls", choice
        arguments = json.loads(choice["message"]["tool_calls"][0]["function"]["arguments"])
        assert set(arguments) <= allowed and set(arguments.get("details", {})) <= {"level"}
    # A loose schema for the answer too; an explicit `additionalProperties` keeps its meaning.
    loose = {"type": "json_schema", "json_schema": {"name": "city", "schema": {"type": "object", "properties": {"city": {"type": "string"}}}}}
    answer = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": prompt}], "max_tokens": 120,
                                                         "response_format": loose, "temperature": 0.8, "seed": 3}).json()
    assert set(json.loads(answer["choices"][0]["message"]["content"])) <= {"city"}
