"""POST /v1/chat/completions against the real server on both backends, bodies checked against the OpenAI spec."""

from __future__ import annotations

import json

import httpx
import pytest

from ..conftest import NO_END, Served, SpecValidator, sse_events


HELLO = [{"role": "user", "content": "Name three colours."}]


def chat(client: httpx.Client, path: str = "/v1/chat/completions", **body: object) -> httpx.Response:
    body.setdefault("messages", HELLO)
    body.setdefault("max_tokens", 12)
    return client.post(path, json=body)


def stream_chat(client: httpx.Client, **body: object) -> list[dict]:
    body.setdefault("messages", HELLO)
    body.setdefault("max_tokens", 12)
    with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response)
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/v1/chat/completions"])
def test_chat_completion_follows_the_spec(client: httpx.Client, spec: SpecValidator, path: str, served: Served) -> None:
    response = chat(client, path, temperature=0)
    assert response.status_code == 200, response.text
    body = response.json()
    spec.validate(body, "CreateChatCompletionResponse")
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"]
    assert choice["message"]["refusal"] is None and choice["logprobs"] is None
    assert body["model"] == served.model
    usage = body["usage"]
    assert usage["prompt_tokens"] > 5 and 0 < usage["completion_tokens"] <= 12
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_length_finish_counts_exactly_max_tokens(client: httpx.Client) -> None:
    body = chat(client, max_tokens=5, logit_bias=NO_END, temperature=0).json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 5


def test_max_completion_tokens_is_honoured(client: httpx.Client) -> None:
    body = chat(client, max_tokens=None, max_completion_tokens=3, logit_bias=NO_END).json()
    assert body["usage"]["completion_tokens"] == 3


def test_stream_follows_the_spec(client: httpx.Client, spec: SpecValidator) -> None:
    chunks = stream_chat(client, temperature=0)
    for chunk in chunks:
        spec.validate(chunk, "CreateChatCompletionStreamResponse")
        assert "usage" not in chunk  # only with stream_options.include_usage
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"][0]["finish_reason"]]
    assert len(finishes) == 1 and chunks[-1]["choices"][0]["finish_reason"] == finishes[0]
    assert len({c["id"] for c in chunks}) == 1


def test_stream_usage_chunk_when_asked(client: httpx.Client, spec: SpecValidator) -> None:
    chunks = stream_chat(client, stream_options={"include_usage": True}, max_tokens=6)
    for chunk in chunks:
        spec.validate(chunk, "CreateChatCompletionStreamResponse")
    assert all(c["usage"] is None for c in chunks[:-1])
    last = chunks[-1]
    assert last["choices"] == [] and last["usage"]["completion_tokens"] <= 6
    assert last["usage"]["total_tokens"] == last["usage"]["prompt_tokens"] + last["usage"]["completion_tokens"]


def test_stream_and_non_stream_give_the_same_text(client: httpx.Client) -> None:
    params = {"temperature": 0.8, "seed": 1234, "max_tokens": 24}
    text = chat(client, **params).json()["choices"][0]["message"]["content"]
    streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in stream_chat(client, **params))
    assert streamed == text


def test_seed_repeats_and_differs(client: httpx.Client) -> None:
    params = {"temperature": 1.5, "max_tokens": 16, "messages": [{"role": "user", "content": "Tell me a story."}]}
    first = chat(client, seed=7, **params).json()["choices"][0]["message"]["content"]
    again = chat(client, seed=7, **params).json()["choices"][0]["message"]["content"]
    other = chat(client, seed=8, **params).json()["choices"][0]["message"]["content"]
    assert first == again
    assert first != other


def test_stop_strings_end_the_answer_and_are_not_returned(client: httpx.Client) -> None:
    params = {"temperature": 0, "max_tokens": 30, "logit_bias": NO_END}
    full = chat(client, **params).json()["choices"][0]["message"]["content"]
    words = full.split()
    assert len(words) > 3, full
    stop = words[2]
    cut = full[: full.index(stop)]
    for stop_param in (stop, [stop, "zzzz-never"]):
        body = chat(client, stop=stop_param, **params).json()
        assert body["choices"][0]["message"]["content"] == cut
        assert body["choices"][0]["finish_reason"] == "stop"
    streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in stream_chat(client, stop=stop, **params))
    assert streamed == cut


def test_n_gives_n_choices(client: httpx.Client, spec: SpecValidator) -> None:
    body = chat(client, n=3, seed=5, temperature=1.2, max_tokens=8).json()
    spec.validate(body, "CreateChatCompletionResponse")
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert len({c["message"]["content"] for c in body["choices"]}) > 1
    chunks = stream_chat(client, n=2, max_tokens=4)
    finished = [c["choices"][0]["index"] for c in chunks if c["choices"][0]["finish_reason"]]
    assert sorted(finished) == [0, 1]


def test_logit_bias_forces_a_token(client: httpx.Client, vocab) -> None:
    token = vocab.tokenize(b" banana", add_bos=False)[0]
    body = chat(client, logit_bias={str(token): 100}, max_tokens=4).json()
    assert body["choices"][0]["message"]["content"].split() == ["banana"] * 4


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
        [
            {"role": "user", "content": "What's the weather?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "Sunny"},
            {"role": "assistant", "content": [{"type": "text", "text": "It is sunny."}]},
            {"role": "user", "content": "Thanks", "name": "alice"},
        ],
    ],
)
def test_every_message_form_of_the_spec(client: httpx.Client, messages: list) -> None:
    response = chat(client, messages=messages, max_tokens=4)
    assert response.status_code == 200, response.text


def test_default_model_when_none_named(client: httpx.Client, served: Served) -> None:
    body = client.post("/v1/chat/completions", json={"messages": HELLO, "max_tokens": 2}).json()
    assert body["model"] == served.model


@pytest.mark.parametrize("name", ["full", "stem", "SmolLM2-135M", "SmolLM2"])
def test_model_names_by_file_stem_or_prefix(client: httpx.Client, name: str, served: Served) -> None:
    model = {"full": served.model, "stem": served.model.removesuffix(".gguf")}.get(name, name)
    response = chat(client, model=model, max_tokens=2)
    assert response.status_code == 200, response.text
    assert response.json()["model"] == served.model
