"""POST /v1/completions and /v1/embeddings against the real server, on both backends."""

from __future__ import annotations

import base64
import json
import math
import struct

import httpx
import pytest

from ..conftest import NO_END, Served, SpecValidator, sse_events


def complete(client: httpx.Client, **body: object) -> httpx.Response:
    body.setdefault("prompt", "The capital of France is")
    return client.post("/v1/completions", json=body)


@pytest.mark.parametrize("path", ["/v1/completions", "/api/v1/completions"])
def test_completion_follows_the_spec(client: httpx.Client, spec: SpecValidator, path: str, served: Served) -> None:
    response = client.post(path, json={"prompt": "Once upon a time", "max_tokens": 8, "temperature": 0})
    assert response.status_code == 200, response.text
    body = response.json()
    spec.validate(body, "CreateCompletionResponse")
    assert body["object"] == "text_completion" and body["model"] == served.model
    assert body["choices"][0]["text"]
    assert body["usage"]["prompt_tokens"] == 4  # "Once upon a time": four tokens, no BOS for SmolLM2


def test_default_max_tokens_is_16(client: httpx.Client) -> None:
    body = complete(client, logit_bias=NO_END).json()
    assert body["usage"]["completion_tokens"] == 16 and body["choices"][0]["finish_reason"] == "length"


def _stream_event(schema: dict) -> dict:
    """The spec reuses CreateCompletionResponse for stream events but forgets that mid-stream `finish_reason`
    is null, and `usage` too when include_usage is set (as OpenAI sends them)."""
    choice = schema["properties"]["choices"]["items"]
    choice["properties"]["finish_reason"] = {"anyOf": [choice["properties"]["finish_reason"], {"type": "null"}]}
    schema["properties"]["usage"] = {"anyOf": [schema["properties"]["usage"], {"type": "null"}]}
    return schema


def test_completion_stream(client: httpx.Client, spec: SpecValidator) -> None:
    params = {"prompt": "Once upon a time", "max_tokens": 10, "seed": 3, "temperature": 0.7}
    with client.stream("POST", "/v1/completions", json={**params, "stream": True, "stream_options": {"include_usage": True}}) as r:
        events = sse_events(r)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    for chunk in chunks[:-1]:
        spec.validate(chunk, "CreateCompletionResponse", patch=_stream_event)
        assert chunk["usage"] is None
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["prompt_tokens"] == 4
    streamed = "".join(c["choices"][0]["text"] for c in chunks[:-1])
    assert streamed == complete(client, **params).json()["choices"][0]["text"]
    assert sum(1 for c in chunks[:-1] if c["choices"][0]["finish_reason"]) == 1


def test_echo_prepends_the_prompt(client: httpx.Client) -> None:
    body = complete(client, prompt="Roses are red,", echo=True, max_tokens=4).json()
    assert body["choices"][0]["text"].startswith("Roses are red,")


def test_several_prompts_and_token_prompts(client: httpx.Client, vocab) -> None:
    tokens = vocab.tokenize(b"Hello there", add_bos=False)
    body = complete(client, prompt=["One", "Two"], n=2, max_tokens=2).json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    body = complete(client, prompt=tokens, max_tokens=2, echo=True).json()
    assert body["choices"][0]["text"].startswith("Hello there")
    assert body["usage"]["prompt_tokens"] == len(tokens)
    body = complete(client, prompt=[tokens, tokens[:1]], max_tokens=2).json()
    assert len(body["choices"]) == 2 and body["usage"]["prompt_tokens"] == len(tokens) + 1


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"suffix": "end"}, "suffix"),
        ({"logprobs": 6}, "logprobs"),
        ({"logprobs": 2, "echo": True}, "echo"),
        ({"best_of": 3}, "best_of"),
        ({"prompt": [999999999]}, "prompt[0]"),
        ({"prompt": []}, "prompt"),
    ],
)
def test_completion_refusals_name_the_parameter(client: httpx.Client, body: dict, param: str) -> None:
    response = complete(client, **body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


# ---------------------------------------------------------------- embeddings


def norm(vector: list[float]) -> float:
    return math.sqrt(sum(v * v for v in vector))


@pytest.mark.parametrize("path", ["/v1/embeddings", "/api/v1/embeddings"])
def test_embeddings_follow_the_spec(client: httpx.Client, spec: SpecValidator, path: str, served: Served) -> None:
    response = client.post(path, json={"input": ["The cat sat.", "A dog ran."], "model": served.model})
    assert response.status_code == 200, response.text
    body = response.json()
    spec.validate(body, "CreateEmbeddingResponse")
    assert [d["index"] for d in body["data"]] == [0, 1]
    for item in body["data"]:
        assert len(item["embedding"]) == 576  # SmolLM2-135M's hidden size
        assert norm(item["embedding"]) == pytest.approx(1.0, abs=1e-4)
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 0


def test_embedding_input_forms_agree(client: httpx.Client, vocab) -> None:
    text = "local models are fun"
    tokens = vocab.tokenize(text.encode(), add_bos=False)
    one = client.post("/v1/embeddings", json={"input": text}).json()["data"][0]["embedding"]
    listed = client.post("/v1/embeddings", json={"input": [text]}).json()["data"][0]["embedding"]
    by_tokens = client.post("/v1/embeddings", json={"input": tokens}).json()["data"][0]["embedding"]
    many = client.post("/v1/embeddings", json={"input": [tokens, tokens]}).json()["data"]
    assert one == pytest.approx(listed, abs=1e-5)
    assert one == pytest.approx(by_tokens, abs=1e-5)
    assert len(many) == 2


def test_similar_texts_are_closer(client: httpx.Client) -> None:
    data = client.post("/v1/embeddings", json={"input": ["I love cats", "I adore kittens", "Tax law of 1987"]}).json()["data"]
    a, b, c = (d["embedding"] for d in data)
    assert sum(x * y for x, y in zip(a, b, strict=True)) > sum(x * y for x, y in zip(a, c, strict=True))


def test_base64_embeddings_decode_to_the_floats(client: httpx.Client) -> None:
    floats = client.post("/v1/embeddings", json={"input": "hello"}).json()["data"][0]["embedding"]
    encoded = client.post("/v1/embeddings", json={"input": "hello", "encoding_format": "base64"}).json()
    raw = base64.b64decode(encoded["data"][0]["embedding"])
    decoded = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert list(decoded) == pytest.approx(floats, abs=1e-6)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "x", "dimensions": 128}, "dimensions"),
        ({"input": ""}, "input"),
        ({"input": []}, "input"),
        ({"input": [[5, 99999999]]}, "input"),
        ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
    ],
)
def test_embedding_refusals_name_the_parameter(client: httpx.Client, body: dict, param: str) -> None:
    response = client.post("/v1/embeddings", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_embedding_dimensions_equal_to_the_model_size_is_fine(client: httpx.Client) -> None:
    assert client.post("/v1/embeddings", json={"input": "x", "dimensions": 576}).status_code == 200
