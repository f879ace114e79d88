"""Bad input gets an OpenAI error envelope with the right status; admin routes; names that try to leave MODEL_DIR."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest

from .conftest import MODEL, Server, SpecValidator, running_server

USER = [{"role": "user", "content": "Hi"}]


def assert_error(response: httpx.Response, status: int, spec: SpecValidator | None = None, **fields: object) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    if spec is not None:
        spec.validate(body, "ErrorResponse")
    for key, value in fields.items():
        assert body["error"][key] == value, body
    return body["error"]


F_TOOL = {"type": "function", "function": {"name": "f"}}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"n": 0}, "n"),
        ({"n": 129}, "n"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"frequency_penalty": -3}, "frequency_penalty"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_completion_tokens": -1}, "max_completion_tokens"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"logit_bias": {"5": 101}}, "logit_bias.5"),
        ({"logit_bias": {"abc": 1}}, "logit_bias"),
        ({"logit_bias": {"99999999": 1}}, "logit_bias"),
        ({"top_logprobs": 21}, "top_logprobs"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
        ({"messages": [{"role": "user"}]}, "messages.0"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
         "messages[0].content[0].image_url.url"),  # a text model: it has no vision
        ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]}, "messages[0].content[0].type"),
        ({"stream": 0}, "stream"),  # 0 is not false
        ({"logprobs": "yes"}, "logprobs"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tool_choice": {"type": "function", "function": {"name": "f"}}}, "tool_choice"),
        ({"tools": [F_TOOL], "tool_choice": {"type": "function", "function": {"name": "g"}}}, "tool_choice.function.name"),
        ({"tools": [F_TOOL, F_TOOL]}, "tools"),
        ({"tools": [{"type": "custom", "custom": {"name": "f"}}]}, "tools.0.type"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "strin"}}}]}, "tools[0].function.parameters"),
        ({"tools": [F_TOOL], "tool_choice": "sometimes"}, "tool_choice"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format.json_schema.schema"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "properties": {"a": {"type": "nope"}}}}}},
         "response_format.json_schema.schema"),
        ({"response_format": {"type": "xml"}}, "response_format"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"audio": {"voice": "alloy", "format": "mp3"}}, "audio"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"stream": True, "stream_options": {"include_usage": "maybe"}}, "stream_options.include_usage"),
        ({"stop": 5}, "stop"),
    ],
)
def test_invalid_chat_requests_are_400_naming_the_parameter(client: httpx.Client, spec: SpecValidator, body: dict, param: str) -> None:
    payload = {"messages": USER, "max_tokens": 2, **body}
    assert_error(client.post("/v1/chat/completions", json=payload), 400, spec, param=param, type="invalid_request_error")


def test_malformed_json_is_a_400_envelope(client: httpx.Client) -> None:
    response = client.post("/v1/chat/completions", content=b'{"messages": [', headers={"content-type": "application/json"})
    assert "JSON" in assert_error(response, 400)["message"]
    response = client.post("/v1/chat/completions", content=b"", headers={"content-type": "application/json"})
    assert_error(response, 400)
    response = client.post("/v1/chat/completions", content=b"[1, 2]", headers={"content-type": "application/json"})
    assert_error(response, 400)


def test_unknown_model_and_route_are_404(client: httpx.Client, spec: SpecValidator) -> None:
    response = client.post("/v1/chat/completions", json={"model": "gpt-4o", "messages": USER})
    assert_error(response, 404, spec, code="model_not_found", param="model")
    assert_error(client.get("/v1/models/gpt-4o"), 404, code="model_not_found")
    assert_error(client.get("/v1/nothing-here"), 404)
    assert_error(client.get("/v1/chat/completions"), 405)


def test_context_length_exceeded(client: httpx.Client, spec: SpecValidator) -> None:
    # A max_tokens beyond what the context has left is cut to it (tests/test_agent_requests.py); a prompt that
    # leaves no room at all is refused, naming the prompt's field.
    long = [{"role": "user", "content": "word " * 5000}]
    response = client.post("/v1/chat/completions", json={"messages": long})
    assert_error(response, 400, spec, code="context_length_exceeded", param="messages")
    assert "maximum context length is 2048 tokens" in response.json()["error"]["message"]
    assert_error(client.post("/v1/completions", json={"prompt": "word " * 5000}), 400, code="context_length_exceeded",
                 param="prompt")
    # A stream is refused before any event is sent.
    response = client.post("/v1/chat/completions", json={"messages": long, "stream": True})
    assert response.headers["content-type"].startswith("application/json")
    assert_error(response, 400, code="context_length_exceeded")


def test_request_body_limit(tmp_path: Path, model_dir: Path) -> None:
    with running_server(tmp_path, model_dir, wait_for_model=False, MAX_REQUEST_BYTES="2048", PRELOAD_MODEL="false") as srv:
        with srv.client() as c:
            big = {"messages": [{"role": "user", "content": "x" * 5000}]}
            assert_error(c.post("/v1/chat/completions", json=big), 413, code="request_too_large")
            chunked = c.post("/v1/chat/completions", content=iter([json.dumps(big).encode()]), headers={"content-type": "application/json"})
            assert_error(chunked, 413, code="request_too_large")
            assert c.get("/health").status_code == 200


# ---------------------------------------------------------------- models and admin


def test_openai_models_list(client: httpx.Client, spec: SpecValidator) -> None:
    for path in ("/v1/models", "/api/v1/models"):
        body = client.get(path).json()
        spec.validate(body, "ListModelsResponse")
        assert MODEL in [m["id"] for m in body["data"]]
    model = client.get(f"/v1/models/{MODEL}").json()
    spec.validate(model, "Model")
    assert model["id"] == MODEL and model["owned_by"] == "local"


def test_admin_models_show_state(client: httpx.Client) -> None:
    models = {m["id"]: m for m in client.get("/models").json()["data"]}
    smol = models[MODEL]
    assert smol["state"] == "loaded" and smol["backend"] == "llama-cpp"
    assert smol["size_bytes"] > 90_000_000 and smol["context_size"] == 2048
    assert models["not-a-model.gguf"]["state"] in ("available", "failed")


def test_health(client: httpx.Client) -> None:
    health = client.get("/health").json()
    assert health["status"] == "ok" and MODEL in health["loaded_models"]
    assert health["uptime_seconds"] >= 0 and health["system"]["cpu_count"] >= 1
    assert health["gpu"]["llama_cpp_gpu_offload"] in (True, False)
    assert "x-request-id" in client.get("/health").headers


def test_corrupt_model_gives_a_clear_error_and_the_server_stays_up(client: httpx.Client) -> None:
    error = assert_error(client.post("/models/not-a-model/load"), 400, code="model_load_failed")
    assert "not a GGUF file" in error["message"]
    chat = client.post("/v1/chat/completions", json={"model": "not-a-model", "messages": USER})
    assert_error(chat, 400, code="model_load_failed")
    models = {m["id"]: m for m in client.get("/models").json()["data"]}
    assert models["not-a-model.gguf"]["state"] == "failed" and "GGUF" in models["not-a-model.gguf"]["error"]
    assert client.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 2}).status_code == 200


def test_truncated_gguf_is_refused_by_llama_cpp(tmp_path: Path, model_dir: Path) -> None:
    local = tmp_path / "models"
    local.mkdir()
    (local / "truncated.gguf").write_bytes((model_dir / MODEL).read_bytes()[:4096])
    with running_server(tmp_path, local, wait_for_model=False, DEFAULT_MODEL="truncated.gguf", PRELOAD_MODEL="false") as srv:
        with srv.client() as c:
            error = assert_error(c.post("/models/truncated/load"), 400, code="model_load_failed")
            assert "truncated.gguf" in error["message"]
            assert c.get("/health").json()["status"] == "ok"


@pytest.mark.parametrize("name", ["../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "sub/../../x.gguf"])
def test_names_cannot_leave_model_dir(client: httpx.Client, name: str) -> None:
    for response in (client.get(f"/v1/models/{name}"), client.post(f"/models/{name}/load")):
        assert response.status_code in (400, 404), response.text
        assert "error" in response.json()
    response = client.post("/v1/chat/completions", json={"model": name.replace("%2F", "/"), "messages": USER})
    assert response.status_code in (400, 404)


def test_symlinks_out_of_model_dir_are_not_served(server: Server, client: httpx.Client, tmp_path: Path) -> None:
    outside = tmp_path / "outside.gguf"
    outside.write_bytes(b"GGUF" + b"\0" * 64)
    link = server.model_dir / "escape.gguf"
    link.symlink_to(outside)
    try:
        assert "escape.gguf" not in [m["id"] for m in client.get("/v1/models").json()["data"]]
        assert_error(client.post("/models/escape/load"), 404, code="model_not_found")
    finally:
        link.unlink()


def test_unload_then_load(client: httpx.Client) -> None:
    unloaded = client.post(f"/models/{MODEL}/unload")
    assert unloaded.status_code == 200 and unloaded.json()["state"] == "available"
    assert MODEL not in client.get("/health").json()["loaded_models"]
    assert_error(client.post(f"/models/{MODEL}/unload"), 400, code="model_not_loaded")
    loaded = client.post("/models/SmolLM2/load")
    assert loaded.status_code == 200 and loaded.json()["state"] == "loaded"
    assert client.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 2}).status_code == 200


def test_every_dialect_logs_its_tokens(server: Server, client: httpx.Client) -> None:
    """The access log line of a Responses or Messages request, streamed or not, carries its token counts."""
    requests = [("/v1/responses", {"input": "Hi", "max_output_tokens": 3}), ("/v1/messages", {"max_tokens": 3, "messages": USER})]
    for path, body in requests:
        for stream in (False, True):
            request_id = f"tokens-{path.rsplit('/', 1)[-1]}-{stream}"
            response = client.post(path, json={**body, "stream": stream}, headers={"X-Request-ID": request_id})
            assert response.status_code == 200
            line = next(line for line in server.wait_for_log(f"request_id={request_id}").splitlines() if f"request_id={request_id}" in line)
            assert re.search(r"prompt_tokens=\d+", line) and re.search(r"completion_tokens=\d+", line), line


def test_request_log_lines(server: Server, client: httpx.Client) -> None:
    client.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 3}, headers={"X-Request-ID": "trace-me-42"})
    line = [line for line in server.wait_for_log("request_id=trace-me-42").splitlines() if "request_id=trace-me-42" in line][-1]
    for field in ("method=POST", "path=/v1/chat/completions", "status=200", f"model={MODEL}", "prompt_tokens=", "completion_tokens=", "duration_ms="):
        assert field in line
