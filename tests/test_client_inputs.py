"""What real clients send: the fields the OpenAI spec gives each message (echoed back in the history by
clients), common harmless extensions, and inputs that used to reach a 500 instead of a clear 4xx."""

from __future__ import annotations

import httpx
import pytest

from local_llm_api.prompting.chat_template import ChatTemplateError, render_chat

from .conftest import sse_events

HISTORY = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": [{"type": "text", "text": "Hi", "cache_control": {"type": "ephemeral"}}]},
    {"role": "assistant", "content": "Hello!", "function_call": None, "refusal": None, "annotations": [], "audio": None,
     "name": "bot", "reasoning_content": "The user greets me."},
    {"role": "assistant", "content": None, "function_call": {"name": "lookup", "arguments": "{\"q\": \"x\"}"}},
    {"role": "user", "content": "And now?"},
]


def test_echoed_message_fields_are_accepted(client: httpx.Client) -> None:
    answer = client.post("/v1/chat/completions", json={"messages": HISTORY, "max_tokens": 3})
    assert answer.status_code == 200, answer.text
    refused = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"},
                          {"role": "assistant", "content": "x", "audio": {"id": "audio_1"}}], "max_tokens": 3})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "messages[1].audio"
    # A legacy function_call in the history is shown to the model as the call it was.
    prompt = client.post("/apply-template", json={"messages": HISTORY}).json()["prompt"]
    assert "lookup" in prompt


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/v1/completions", {"prompt": [[False]], "max_tokens": 2}, "prompt"),
    ("/v1/completions", {"prompt": [True, 1], "max_tokens": 2}, "prompt"),
    ("/v1/embeddings", {"input": [False]}, "input"),
    ("/models/pull", {"repo": "x/y.git"}, "repo"),
    ("/models/pull", {"repo": "a/.."}, "repo"),
])
def test_inputs_that_used_to_reach_a_500(client: httpx.Client, path: str, body: dict, param: str) -> None:
    refused = client.post(path, json=body)
    assert refused.status_code == 400 and refused.json()["error"]["param"].split(".")[0] == param, refused.text


def test_completions_with_max_tokens_zero_generate_nothing(client: httpx.Client) -> None:
    plain = client.post("/v1/completions", json={"prompt": ["Hi", "Yo"], "max_tokens": 0, "n": 2, "echo": True}).json()
    assert [c["text"] for c in plain["choices"]] == ["Hi", "Hi", "Yo", "Yo"]
    assert {c["finish_reason"] for c in plain["choices"]} == {"length"} and plain["usage"]["completion_tokens"] == 0
    with client.stream("POST", "/v1/completions", json={"prompt": "Hi", "max_tokens": 0, "stream": True,
                                                         "stream_options": {"include_usage": True}}) as response:
        events = sse_events(response)
    assert events[-1] == "[DONE]" and '"finish_reason":"length"' in events[0] and '"completion_tokens":0' in events[-2]


def test_a_chat_template_failing_at_run_time_is_the_templates_error() -> None:
    with pytest.raises(ChatTemplateError, match="TypeError"):
        render_chat("{{ messages[0]['content'] + 1 }}", [{"role": "user", "content": "Hi"}], bos_token="", eos_token="")
    with pytest.raises(ChatTemplateError):
        render_chat("{{ messages[5]['content'].upper() }}", [{"role": "user", "content": "Hi"}], bos_token="", eos_token="")


@pytest.mark.parametrize(("host", "status"), [
    ("localhost", 200), ("localhost:8000", 200), ("127.0.0.1:9", 200), ("[::1]:8000", 200), ("10.1.2.3", 200),
    ("app.localhost", 200), ("evil.example", 403), ("evil.example:8000", 403), ("localhost.evil.example", 403),
])
def test_host_names_that_are_not_this_machine_are_refused(client: httpx.Client, host: str, status: int) -> None:
    # DNS rebinding: a page on evil.example, resolved to 127.0.0.1, reaches us with its own name as Host.
    answer = client.get("/v1/models", headers={"Host": host})
    assert answer.status_code == status
    if status == 403:
        assert answer.json()["error"]["code"] == "host_not_allowed"
        assert client.post("/api/chat", headers={"Host": host}, json={}).json() == {"error": answer.json()["error"]["message"]}


def test_allowed_hosts_setting() -> None:
    from local_llm_api.api.hosts import allowed_host_names, host_allowed
    from local_llm_api.config import load_settings

    everywhere = allowed_host_names(load_settings(None, host="0.0.0.0"))  # bound to all interfaces: checked too
    assert everywhere is not None and host_allowed("localhost:8000", everywhere) and not host_allowed("evil.com", everywhere)
    named = allowed_host_names(load_settings(None, host="0.0.0.0", allowed_hosts="api.example, *.corp.example"))
    assert named is not None and host_allowed("api.example:443", named) and host_allowed("x.corp.example", named)
    assert not host_allowed("corp.example.evil", named) and not host_allowed("evil.example", named)
    assert allowed_host_names(load_settings(None, allowed_hosts="*")) is None


def test_the_openapi_document_says_what_the_server_answers(client: httpx.Client) -> None:
    import json

    document = client.get("/openapi.json").json()
    text = json.dumps(document)
    refs = {ref.split("/")[-1] for ref in __import__("re").findall(r'"\$ref": "#/components/schemas/([^"]+)"', text)}
    assert refs <= set(document["components"]["schemas"])  # nothing dangling
    for path, item in document["paths"].items():
        for method, operation in item.items():
            responses = operation["responses"]
            assert "422" not in responses, (path, method)  # invalid requests are answered 400
            if "requestBody" in operation:
                assert "400" in responses, (path, method)
            for code in ("429", "503"):
                if code in responses:
                    assert "Retry-After" in responses[code]["headers"], (path, method, code)
    chat = document["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert {"400", "401", "404", "413", "429", "503"} <= set(chat)
    # Unknown fields are accepted and named, and the document says so.
    request = document["components"]["schemas"]["ChatCompletionRequest"]
    assert request.get("additionalProperties") is not False
    assert "X-Ignored-Fields" in document["paths"]["/v1/responses"]["post"]["responses"]["200"]["headers"]


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/v1/rerank", {"query": "0", "documents": [""]}, "documents[0]"),  # found by schemathesis: a 500 before
    ("/v1/rerank", {"query": "", "documents": ["a"]}, "query"),
])
def test_empty_texts_cannot_be_embedded(client: httpx.Client, path: str, body: dict, param: str) -> None:
    refused = client.post(path, json=body)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == param, refused.text
    ollama = client.post("/api/embed", json={"model": "SmolLM2", "input": ""})
    assert ollama.status_code == 400 and "empty" in ollama.json()["error"]
