"""Concurrency, client disconnects, API keys, the official `openai` SDK, start-up settings, loading states."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from .conftest import MODEL, NO_END, Server, running_server, sse_events, start_server

USER = [{"role": "user", "content": "Write a long story about a dragon."}]
LONG = {"messages": USER, "max_tokens": 1500, "logit_bias": NO_END}


def active_requests(client: httpx.Client) -> int:
    return next(m["active_requests"] for m in client.get("/models").json()["data"] if m["id"] == MODEL)


def wait_idle(client: httpx.Client, seconds: float = 10) -> float:
    """Seconds until the model has no active request (fails after `seconds`)."""
    started = time.perf_counter()
    while active_requests(client):
        assert time.perf_counter() - started < seconds, "the model is still busy"
        time.sleep(0.05)
    return time.perf_counter() - started


def test_stream_disconnect_stops_generation(client: httpx.Client, server: Server) -> None:
    with server.client() as streaming:
        with streaming.stream("POST", "/v1/chat/completions", json={**LONG, "stream": True}) as response:
            for n, _ in enumerate(response.iter_lines()):
                if n > 6:
                    break  # leave mid-answer: 1500 tokens would take ~30 s
    wait_idle(client, seconds=5)
    started = time.perf_counter()
    assert client.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 3}).status_code == 200
    assert time.perf_counter() - started < 5


def test_non_stream_disconnect_stops_generation(client: httpx.Client, server: Server) -> None:
    with server.client(timeout=1.0) as impatient:
        with pytest.raises(httpx.ReadTimeout):
            impatient.post("/v1/chat/completions", json=LONG)
    wait_idle(client, seconds=5)
    started = time.perf_counter()
    assert client.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 3}).status_code == 200
    assert time.perf_counter() - started < 5


def test_concurrent_requests_are_never_interleaved(client: httpx.Client, server: Server) -> None:
    prompts = [f"Count from {i} to {i + 5}." for i in range(4)]

    def ask(prompt: str, stream: bool) -> str:
        body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": 20, "temperature": 0}
        with server.client() as c:
            if not stream:
                return c.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]
            with c.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
                events = [json.loads(e) for e in sse_events(r)[:-1]]
            return "".join(e["choices"][0]["delta"].get("content") or "" for e in events)

    alone = [ask(p, False) for p in prompts]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda args: ask(*args), [(p, s) for p in prompts for s in (False, True)]))
    assert together == [text for text in alone for _ in (0, 1)]


def test_short_request_is_not_stuck_behind_a_long_one(server: Server) -> None:
    """Continuous batching: a short request sent while a long one streams is answered while the long one is
    still generating (no sleeps: the short one starts once the long one has produced tokens)."""
    body = {"messages": USER, "max_tokens": 400, "logit_bias": NO_END, "stream": True}
    with server.client() as long_client, long_client.stream("POST", "/v1/chat/completions", json=body) as stream:
        lines = stream.iter_lines()
        assert any('"content":"' in line and '"content":""' not in line for line in lines)  # the long one is generating
        with server.client() as c:
            short = c.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 2, "logit_bias": NO_END})
        assert short.status_code == 200
        rest = list(lines)
    assert "data: [DONE]" in rest
    # Tokens of the long answer still arrived after the short one was answered.
    assert sum('"content":"' in line for line in rest) > 1


# ---------------------------------------------------------------- API keys


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Server:
    with running_server(tmp_path_factory.mktemp("keyed"), model_dir, API_KEY_REQUIRED="true", API_KEY="key-one-SECRET, key-two-SECRET") as srv:
        yield srv


def test_api_keys(keyed: Server) -> None:
    with keyed.client() as c:
        assert c.get("/health").status_code == 200
        for path in ("/v1/models", "/api/v1/models", "/models"):
            missing = c.get(path)
            assert missing.status_code == 401 and missing.json()["error"]["code"] == "missing_api_key"
        wrong = c.get("/v1/models", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["error"]["type"] == "authentication_error"
        assert c.post("/v1/chat/completions", json={"messages": USER}).status_code == 401
        assert c.post(f"/models/{MODEL}/load").status_code == 401
        assert c.get("/v1/models", headers={"Authorization": "Bearer key-one-SECRET"}).status_code == 200
        assert c.get("/v1/models", headers={"X-API-Key": "key-two-SECRET"}).status_code == 200
        ok = c.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 2},
                    headers={"Authorization": "Bearer key-two-SECRET", "X-Request-ID": "keyed-last"})
        assert ok.status_code == 200
    assert "SECRET" not in keyed.wait_for_log("request_id=keyed-last")  # every request above is logged by then


def test_openai_sdk_against_a_keyed_server(keyed: Server) -> None:
    from openai import AuthenticationError, OpenAI

    client = OpenAI(base_url=f"{keyed.url}/v1", api_key="key-one-SECRET")
    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hello"}], max_tokens=5)
    assert chat.choices[0].message.content and chat.usage.completion_tokens <= 5
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hello"}], max_tokens=5, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[-1].usage is not None and chunks[-1].choices == []
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    completion = client.completions.create(model=MODEL, prompt="One, two,", max_tokens=4)
    assert completion.choices[0].text
    embedding = client.embeddings.create(model=MODEL, input=["hi", "there"])  # the SDK asks for base64
    assert len(embedding.data) == 2 and len(embedding.data[0].embedding) == 576
    assert MODEL in [m.id for m in client.models.list()]
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(AuthenticationError):
        OpenAI(base_url=f"{keyed.url}/v1", api_key="wrong").models.list()


# ---------------------------------------------------------------- start-up and loading


@pytest.mark.parametrize(
    ("env", "name"),
    [({"GPU_LAYERS": "lots"}, "GPU_LAYERS"), ({"MODEL_BACKEND": "tensorflow"}, "MODEL_BACKEND"),
     ({"TEMPERATURE": "9"}, "TEMPERATURE"), ({"API_KEY_REQUIRED": "true", "API_KEY": ""}, "API_KEY"),
     ({"KV_CACHE_TYPE": "q5_1"}, "KV_CACHE_TYPE"), ({"KV_CACHE_TYPE": "q8_0", "FLASH_ATTN": "off"}, "KV_CACHE_TYPE")],
)
def test_invalid_settings_stop_start_up_with_one_line(tmp_path: Path, env: dict, name: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "local_llm_api", "serve", "--port", "1"],
        env={"PATH": "/usr/bin:/bin", **env}, cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Invalid setting {name}:"), result.stderr


def test_settings_from_dotenv(tmp_path: Path, model_dir: Path) -> None:
    (tmp_path / ".env").write_text("CONTEXT_SIZE=1024\n")
    with running_server(tmp_path, model_dir, CONTEXT_SIZE="") as srv:
        with srv.client() as c:
            smol = next(m for m in c.get("/models").json()["data"] if m["id"] == MODEL)
            assert smol["context_size"] == 1024


def test_loading_model_answers_503_then_serves(tmp_path: Path, model_dir: Path) -> None:
    with running_server(tmp_path, model_dir, wait_for_model=False, PRELOAD_MODEL="false", MODEL_LOAD_WAIT_SECONDS="0") as srv:
        with srv.client() as c:
            first = c.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 2})
            assert first.status_code == 503, first.text
            assert first.json()["error"]["code"] == "model_loading" and first.headers["retry-after"]
            deadline = time.time() + 30
            while c.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 2}).status_code != 200:
                assert time.time() < deadline
                time.sleep(0.2)


def test_auto_load_off_asks_for_an_explicit_load(tmp_path: Path, model_dir: Path) -> None:
    with running_server(tmp_path, model_dir, wait_for_model=False, PRELOAD_MODEL="false", AUTO_LOAD="false") as srv:
        with srv.client() as c:
            refused = c.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 2})
            assert refused.status_code == 400 and refused.json()["error"]["code"] == "model_not_loaded"
            assert c.post(f"/models/{MODEL}/load").status_code == 200
            assert c.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 2}).status_code == 200


def test_concurrent_first_requests_share_one_load(tmp_path: Path, model_dir: Path) -> None:
    with running_server(tmp_path, model_dir, wait_for_model=False, PRELOAD_MODEL="false") as srv:
        def ask(_: int) -> int:
            with srv.client() as c:
                return c.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 2}).status_code

        with ThreadPoolExecutor(4) as pool:
            assert list(pool.map(ask, range(4))) == [200] * 4
        assert srv.log().count(f"loading model {MODEL}") == 1


def test_uvicorn_entry_point(tmp_path: Path, model_dir: Path) -> None:
    """`uvicorn local_llm_api.main:app` builds the app from the environment, as docs/getting-started.md says."""
    from .conftest import free_port

    port = free_port()
    env = {"PATH": "/usr/bin:/bin", "MODEL_DIR": str(model_dir), "DEFAULT_MODEL": MODEL, "THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "uvicorn", "local_llm_api.main:app", "--port", str(port)],
                               env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while True:
            try:
                reply = httpx.post(f"http://127.0.0.1:{port}/v1/completions", json={"prompt": "Hi", "max_tokens": 2}, timeout=60)
                break
            except httpx.ConnectError:
                assert time.time() < deadline and process.poll() is None
                time.sleep(0.2)
        assert reply.status_code == 200, reply.text
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_sigterm_lets_running_streams_finish(tmp_path: Path, model_dir: Path) -> None:
    srv = start_server(tmp_path, model_dir)
    body = {"messages": USER, "max_tokens": 60, "logit_bias": NO_END, "stream": True}
    with srv.client() as c, c.stream("POST", "/v1/chat/completions", json=body) as response:
        lines = response.iter_lines()
        next(lines)
        srv.process.send_signal(signal.SIGTERM)
        deadline = time.time() + 10
        while True:  # no new connections once shutting down (the signal takes a moment to arrive)
            try:
                httpx.get(f"{srv.url}/health", timeout=2)
            except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError):  # refused, or reset when accepted
                break
            assert time.time() < deadline, "the server still accepts connections after SIGTERM"
            time.sleep(0.05)
        events = [line[6:] for line in lines if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["choices"][0]["finish_reason"] == "length"
    # uvicorn re-raises the SIGTERM it caught once shutdown is done, so the exit status names the signal.
    assert srv.process.wait(timeout=20) in (0, -signal.SIGTERM)
    assert f"unloaded model {MODEL}" in srv.log()  # the app's shutdown ran and freed the model


def test_sigterm_grace_period_ends_long_streams(tmp_path: Path, model_dir: Path) -> None:
    srv = start_server(tmp_path, model_dir, SHUTDOWN_GRACE_SECONDS="1")
    body = {"messages": USER, "max_tokens": 1500, "logit_bias": NO_END, "stream": True}
    with srv.client() as c, c.stream("POST", "/v1/chat/completions", json=body) as response:
        lines = response.iter_lines()
        next(lines)
        started = time.perf_counter()
        srv.process.send_signal(signal.SIGTERM)
        with pytest.raises(httpx.HTTPError):  # the stream is cut when the grace period ends
            for _ in lines:
                pass
    srv.process.wait(timeout=20)
    assert time.perf_counter() - started < 10  # 1500 tokens would take ~30 s


def test_the_server_announces_the_address_it_really_serves(tmp_path: Path, model_dir: Path) -> None:
    # The flag wins over the environment (PORT here) and the announcement says so.
    with running_server(tmp_path, model_dir, wait_for_model=False, PRELOAD_MODEL="false", PORT="8011") as server:
        stderr = next(tmp_path.glob("server-*.stderr")).read_text()
        port = server.url.rsplit(":", 1)[1]
        assert f"==> serving on http://127.0.0.1:{port}/v1 with {MODEL}" in stderr and ":8011" not in stderr
