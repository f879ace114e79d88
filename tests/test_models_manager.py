"""Many models in one server: both backends side by side, sentence-transformers embeddings, auto-load,
one load for concurrent requests, LRU eviction under the limits, keep-alive, failing loads, the models
config file and Hugging Face repo ids (served from huggingface_hub's cache, offline)."""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from .conftest import MODEL, NO_END, Server, SpecValidator, running_server
from .models import HF_SMOLLM2, MINILM, minilm_folder, place_tree

HELLO = [{"role": "user", "content": "Name three colours."}]


@pytest.fixture(scope="module")
def mixed_dir(tmp_path_factory: pytest.TempPathFactory, model_dir: Path, hf_model_dir: Path) -> Path:
    """A GGUF file, a Transformers folder, a sentence-transformers folder and a broken folder."""
    directory = tmp_path_factory.mktemp("mixed")
    place_tree(model_dir / MODEL, directory / MODEL)
    place_tree(hf_model_dir / HF_SMOLLM2, directory / HF_SMOLLM2)
    place_tree(hf_model_dir / MINILM, directory / MINILM)
    broken = directory / "broken-transformers"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "llama", "hidden_size": "not a number"}')
    return directory


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory, mixed_dir: Path) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("mixed-server"), mixed_dir) as server:
        yield server


def models_by_id(client: httpx.Client) -> dict[str, dict]:
    return {m["id"]: m for m in client.get("/models").json()["data"]}


def chat(client: httpx.Client, model: str, **body: object) -> httpx.Response:
    return client.post("/v1/chat/completions", json={"model": model, "messages": HELLO, "max_tokens": 8, **body})


def test_both_backends_are_listed_with_what_they_can_do(mixed: Server, spec: SpecValidator) -> None:
    with mixed.client() as client:
        listed = client.get("/v1/models").json()
        spec.validate(listed, "ListModelsResponse")
        cards = {m["id"]: m for m in listed["data"]}
        assert cards[MODEL]["backend"] == "llama-cpp" and cards[MODEL]["state"] == "loaded"
        assert cards[HF_SMOLLM2]["backend"] == "transformers"
        assert cards[HF_SMOLLM2]["capabilities"] == ["chat", "completion", "embedding", "tools"]
        assert cards[MINILM]["backend"] == "sentence-transformers" and cards[MINILM]["capabilities"] == ["embedding"]
        assert cards[HF_SMOLLM2]["size_bytes"] > 500_000_000
        admin = models_by_id(client)
        assert admin[MINILM]["capabilities"] == ["embedding"] and admin[MINILM]["state"] in ("available", "loaded")
        assert "broken-transformers" in admin


def test_sentence_transformers_embeddings_match_the_library(mixed: Server) -> None:
    from sentence_transformers import SentenceTransformer

    texts = ["The cat sat on the mat.", "Local models are fun", "Tax law of 1987", "猫が好きです"]
    with mixed.client() as client:
        response = client.post("/v1/embeddings", json={"model": MINILM, "input": texts})
    assert response.status_code == 200, response.text
    ours = [d["embedding"] for d in response.json()["data"]]
    reference = SentenceTransformer(str(minilm_folder()), device="cpu").encode(texts)
    for mine, theirs in zip(ours, reference, strict=True):
        assert len(mine) == 384
        cosine = sum(a * b for a, b in zip(mine, theirs, strict=True)) / (
            sum(a * a for a in mine) ** 0.5 * sum(float(b) * float(b) for b in theirs) ** 0.5
        )
        assert cosine > 0.999


def test_metrics_with_an_embedding_model_loaded(mixed: Server) -> None:
    # An embedding model has no time-to-first-token histogram; /metrics used to fail with it loaded (500).
    with mixed.client() as client:
        assert client.post("/v1/embeddings", json={"model": MINILM, "input": "hi"}).status_code == 200
        metrics = client.get("/metrics")
    assert metrics.status_code == 200, metrics.text
    assert f'llm_engine_alive{{model="{MINILM}"}} 1.0' in metrics.text


def test_embedding_models_refuse_generation(mixed: Server) -> None:
    with mixed.client() as client:
        for path, body in (("/v1/chat/completions", {"messages": HELLO}), ("/v1/completions", {"prompt": "Hi"})):
            response = client.post(path, json={"model": MINILM, **body})
            assert response.status_code == 400
            assert response.json()["error"]["code"] == "model_not_supported"
            assert response.json()["error"]["param"] == "model"


def test_auto_load_while_another_model_serves_and_one_load_for_many_requests(mixed: Server) -> None:
    with mixed.client() as client:
        if models_by_id(client)[HF_SMOLLM2]["state"] == "loaded":
            assert client.post(f"/models/{HF_SMOLLM2}/unload").status_code == 200
        seen_loading = threading.Event()
        gguf_answers: list[int] = []

        def gguf_while_loading() -> None:
            # Requests for the loaded GGUF keep being answered while the Transformers model loads.
            deadline = time.time() + 60
            while time.time() < deadline and not seen_loading.is_set():
                if models_by_id(client)[HF_SMOLLM2]["state"] == "loading":
                    seen_loading.set()
                    gguf_answers.append(chat(client, MODEL, max_tokens=2).status_code)
                time.sleep(0.02)

        watcher = threading.Thread(target=gguf_while_loading)
        watcher.start()
        with ThreadPoolExecutor(4) as pool:
            codes = list(pool.map(lambda _: chat(client, HF_SMOLLM2, temperature=0).status_code, range(4)))
        watcher.join()
        assert codes == [200] * 4
        assert seen_loading.is_set() and gguf_answers == [200]
        assert models_by_id(client)[HF_SMOLLM2]["state"] == "loaded"
    assert len(re.findall(rf"loading model {HF_SMOLLM2} ", mixed.log())) == 1


def test_a_failing_load_leaves_the_server_healthy(mixed: Server) -> None:
    with mixed.client() as client:
        response = chat(client, "broken-transformers")
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["code"] == "model_load_failed" and "broken-transformers" in error["message"]
        assert models_by_id(client)["broken-transformers"]["state"] == "failed"
        assert client.get("/health").json()["status"] == "ok"
        assert chat(client, MODEL).status_code == 200


def test_lru_eviction_never_unloads_a_serving_model(tmp_path: Path, mixed_dir: Path) -> None:
    with running_server(tmp_path, mixed_dir, MAX_LOADED_MODELS="2") as server, server.client() as client:
        # The GGUF (loaded first, so least recently used) streams a long answer the whole time.
        body = {"model": MODEL, "messages": HELLO, "max_tokens": 1000, "logit_bias": NO_END, "stream": True}
        finished: list[str] = []
        started = threading.Event()

        def long_stream() -> None:
            with server.client() as streaming, streaming.stream("POST", "/v1/chat/completions", json=body) as r:
                events = []
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        events.append(line[len("data: "):])
                        started.set()
            finished.append(json.loads(events[-2])["choices"][0]["finish_reason"])

        streamer = threading.Thread(target=long_stream)
        streamer.start()
        assert started.wait(60)  # the GGUF is serving before the other models need room
        assert client.post("/v1/embeddings", json={"model": MINILM, "input": "hi"}).status_code == 200
        # Two loaded; the Transformers model needs room: MiniLM (idle) goes, the serving GGUF stays.
        assert chat(client, HF_SMOLLM2, max_tokens=2).status_code == 200
        states = {name: m["state"] for name, m in models_by_id(client).items()}
        assert (states[MODEL], states[HF_SMOLLM2], states[MINILM]) == ("loaded", "loaded", "available")
        streamer.join(timeout=120)
        assert finished == ["length"]
    assert f"unloading {MINILM} (least recently used) to make room for {HF_SMOLLM2}" in server.log()


def test_keep_alive_unloads_idle_models(tmp_path: Path, mixed_dir: Path) -> None:
    with running_server(tmp_path, mixed_dir, KEEP_ALIVE="2", PRELOAD_MODEL="false", wait_for_model=False) as server:
        with server.client() as client:
            assert models_by_id(client)[MINILM]["keep_alive_seconds"] == 2  # (the first listing reads the models' headers)
            assert client.post("/v1/embeddings", json={"model": MINILM, "input": "hi"}).status_code == 200
            assert models_by_id(client)[MINILM]["state"] == "loaded"
            deadline = time.time() + 15
            while models_by_id(client)[MINILM]["state"] == "loaded":
                assert time.time() < deadline, "the idle model was not unloaded"
                time.sleep(0.25)
        assert f"unloading {MINILM}: idle for" in server.log()


def test_models_config_declares_aliases_backends_and_options(tmp_path: Path, mixed_dir: Path) -> None:
    config = tmp_path / "models.yaml"
    config.write_text(
        f"""
models:
  - name: tiny-chat
    path: {MODEL}
    context_size: 512
    chat_template: "{{% for m in messages %}}<|im_start|>{{{{ m.role }}}}\\n{{{{ m.content }}}}<|im_end|>\\n{{% endfor %}}<|im_start|>assistant\\n"
  - name: tiny-transformers
    path: {mixed_dir / MODEL}
    backend: transformers
    keep_alive: 300
  - name: tiny-embedder
    path: {HF_SMOLLM2}
    embedding_only: true
"""
    )
    env = {"MODELS_CONFIG": str(config), "DEFAULT_MODEL": "tiny-chat"}
    with running_server(tmp_path, mixed_dir, **env) as server, server.client() as client:
        cards = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
        assert cards["tiny-chat"]["backend"] == "llama-cpp" and cards["tiny-chat"]["state"] == "loaded"
        assert cards["tiny-transformers"]["backend"] == "transformers"
        assert cards["tiny-embedder"]["capabilities"] == ["embedding"]
        assert MINILM in cards  # discovery in MODEL_DIR goes on beside the declared models
        assert MODEL not in cards and HF_SMOLLM2 not in cards  # declared under another name: listed once
        admin = models_by_id(client)
        assert admin["tiny-chat"]["context_size"] == 512 and admin["tiny-transformers"]["keep_alive_seconds"] == 300
        too_long = chat(client, "tiny-chat", messages=[{"role": "user", "content": "word " * 600}])
        assert too_long.json()["error"]["code"] == "context_length_exceeded"
        # The override template has no default system prompt; SmolLM2's own adds one (about 20 tokens).
        short = chat(client, "tiny-chat", max_tokens=1).json()["usage"]["prompt_tokens"]
        assert short < 20
        # The GGUF file read by Transformers (dequantised), forced by the declaration.
        response = chat(client, "tiny-transformers", max_tokens=3)
        assert response.status_code == 200 and response.json()["model"] == "tiny-transformers"
        assert chat(client, "tiny-embedder").json()["error"]["code"] == "model_not_supported"
        assert client.post("/v1/embeddings", json={"model": "tiny-embedder", "input": "x"}).status_code == 200


def test_hugging_face_repo_ids_from_the_local_cache(tmp_path: Path, hf_model_dir: Path) -> None:
    """TRANSFORMERS_DEFAULT_MODEL as a repo id: huggingface_hub's real code reads its cache (offline here)."""
    cache = tmp_path / "hub"
    snapshot = cache / "models--example--SmolLM2-copy" / "snapshots" / ("0" * 40)
    place_tree(hf_model_dir / HF_SMOLLM2, snapshot)
    (cache / "models--example--SmolLM2-copy" / "refs").mkdir()
    (cache / "models--example--SmolLM2-copy" / "refs" / "main").write_text("0" * 40)
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_DEFAULT_MODEL": "example/SmolLM2-copy",
           "DEFAULT_MODEL": ""}
    with running_server(tmp_path, empty, **env) as server, server.client() as client:
        body = chat(client, "example/SmolLM2-copy", max_tokens=3).json()
        assert body["model"] == "example/SmolLM2-copy" and body["usage"]["completion_tokens"] > 0
        assert client.post("/v1/chat/completions", json={"messages": HELLO, "max_tokens": 1}).status_code == 200
        assert models_by_id(client)["example/SmolLM2-copy"]["repo"] == "example/SmolLM2-copy"
    shutil.rmtree(cache / "models--example--SmolLM2-copy")
    with running_server(tmp_path, empty, wait_for_model=False, **env) as server, server.client() as client:
        response = chat(client, "example/SmolLM2-copy")
        assert response.status_code == 400
        message = response.json()["error"]["message"]
        assert "example/SmolLM2-copy" in message and "cache" in message
        assert client.get("/health").json()["status"] == "ok"


def test_transformers_disconnect_stops_generation(mixed: Server) -> None:
    body = {"model": HF_SMOLLM2, "messages": HELLO, "max_tokens": 500, "logit_bias": NO_END, "stream": True}
    with mixed.client() as client:
        with client.stream("POST", "/v1/chat/completions", json=body) as response:
            for n, _ in enumerate(response.iter_lines()):
                if n > 6:
                    break  # leave mid-answer: 500 tokens would take most of a minute here
        deadline = time.time() + 5
        while client.get("/health").json()["engines"][HF_SMOLLM2]["running"]:
            assert time.time() < deadline, "the sequence stayed in the batch after the client left"
            time.sleep(0.1)
        assert models_by_id(client)[HF_SMOLLM2]["active_requests"] == 0
