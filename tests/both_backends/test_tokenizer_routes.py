"""/tokenize, /detokenize and /apply-template on both backends (llama.cpp's names and shapes, also under /v1 and
/api/v1): a round trip through the tokenizer, and the rendered prompt equal to what the chat route feeds the model."""

from __future__ import annotations

import httpx
import pytest

from ..conftest import Served
from ..models import MINILM

TEXT = "Hello, world! Naïve café, 안녕하세요."
MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is the weather in Paris?"}]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                          "required": ["city"]}}}]


@pytest.mark.parametrize("prefix", ["", "/v1", "/api/v1"])
def test_tokenize_detokenize_round_trip(client: httpx.Client, prefix: str) -> None:
    tokens = client.post(f"{prefix}/tokenize", json={"content": TEXT}).json()
    assert tokens["count"] == len(tokens["tokens"]) > 5 and tokens["max_model_len"] == 2048
    back = client.post(f"{prefix}/detokenize", json={"tokens": tokens["tokens"]}).json()
    assert back["content"] == TEXT
    pieces = client.post(f"{prefix}/tokenize", json={"content": TEXT, "with_pieces": True}).json()["tokens"]
    assert [p["id"] for p in pieces] == tokens["tokens"]
    # A piece is text, or its bytes when it holds part of a character (Hangul here spans tokens).
    joined = b"".join(p["piece"].encode() if isinstance(p["piece"], str) else bytes(p["piece"]) for p in pieces)
    assert joined.decode() == TEXT


def test_special_tokens_are_shown_when_inspecting(client: httpx.Client) -> None:
    plain = client.post("/tokenize", json={"content": "Hi"}).json()["tokens"]
    chat = client.post("/tokenize", json={"messages": [{"role": "user", "content": "Hi"}], "with_pieces": True}).json()
    pieces = [p["piece"] for p in chat["tokens"]]
    assert "<|im_start|>" in pieces and "<|im_end|>" in pieces and len(pieces) > len(plain)
    assert "<|im_start|>user" in client.post("/detokenize", json={"tokens": [p["id"] for p in chat["tokens"]]}).json()["content"]


def test_apply_template_is_what_the_chat_route_reads(client: httpx.Client, served: Served) -> None:
    for body in ({"messages": MESSAGES}, {"messages": MESSAGES, "tools": TOOLS}):
        rendered = client.post("/apply-template", json=body)
        assert rendered.status_code == 200, rendered.text
        prompt = rendered.json()["prompt"]
        assert prompt.startswith("<|im_start|>system\nYou are terse.") and prompt.endswith("<|im_start|>assistant\n")
        assert ("get_weather" in prompt) == ("tools" in body)
        counted = client.post("/tokenize", json={"content": prompt, "add_special": True}).json()["count"]
        by_messages = client.post("/tokenize", json=body).json()["count"]
        chat = client.post("/v1/chat/completions", json={**body, "max_tokens": 1}).json()
        assert counted == by_messages == chat["usage"]["prompt_tokens"]


def test_tokenizer_routes_refuse_bad_input(client: httpx.Client, served: Served) -> None:
    cases = [
        ("/tokenize", {}, "exactly one"),
        ("/tokenize", {"content": "a", "messages": MESSAGES}, "exactly one"),
        ("/tokenize", {"content": "a", "tools": TOOLS}, "'tools' go with 'messages'"),
        ("/tokenize", {"content": "a", "with_pieces": 1}, "with_pieces"),
        ("/detokenize", {"tokens": [1, 10**9]}, "tokens[1]"),
        ("/detokenize", {"tokens": "abc"}, "tokens"),
        ("/apply-template", {"messages": []}, "messages"),
        ("/apply-template", {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "has no vision"),
        ("/tokenize", {"model": "no-such-model", "content": "a"}, "no-such-model"),
    ]
    for path, body, text in cases:
        response = client.post(path, json=body)
        assert response.status_code in (400, 404), (path, body, response.text)
        assert text in response.text and set(response.json()["error"]) >= {"message", "type", "param", "code"}
    if served.backend == "transformers":  # an embedding model tokenizes, but has no chat template to apply
        tokens = client.post("/tokenize", json={"model": MINILM, "content": "tokenization", "add_special": True}).json()["tokens"]
        assert len(tokens) == 4 and tokens[0] == 101  # [CLS] token ##ization [SEP]
        assert client.post("/detokenize", json={"model": MINILM, "tokens": tokens}).json()["content"] == "[CLS] tokenization [SEP]"
        refused = client.post("/apply-template", json={"model": MINILM, "messages": MESSAGES})
        assert refused.status_code == 400 and "embedding model" in refused.json()["error"]["message"]
