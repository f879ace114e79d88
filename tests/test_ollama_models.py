"""Ollama's model routes through the official `ollama` client: pull from a local fake of the Hugging Face Hub
(the real huggingface_hub code runs), copy and delete within MODEL_DIR, API keys on this door too, and CORS
for browser apps (local origins by default, CORS_ORIGINS otherwise)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import pytest

from local_llm_api.cli import bundled_model_path

from .conftest import running_server
from .fake_hub import FakeHub

KEY = "ollama-door-key"


def repos() -> dict[str, dict[str, Path]]:
    gguf = bundled_model_path()
    return {"test/smol-gguf": {gguf.name: gguf}, "test/quants": {"m-Q4_1.gguf": gguf, "m-Q8_0.gguf": gguf}}


@pytest.fixture
def hub_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    with FakeHub(repos(), bytes_per_second=60e6) as hub:  # ~98 MB: under two seconds, so progress lines appear
        yield {"HF_HUB_CACHE": str(tmp_path / "hub-cache"), "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_OFFLINE": "",
               "HF_ENDPOINT": hub.url}


def _refused(call, status: int, text: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ollama.ResponseError) as caught:
        call()
    assert caught.value.status_code == status and text in caught.value.error, caught.value.error


def test_pull_copy_and_delete(tmp_path: Path, hub_env: dict[str, str]) -> None:
    models = tmp_path / "models"
    models.mkdir()
    env = {**hub_env, "PRELOAD_MODEL": "false", "DEFAULT_MODEL": "", "API_KEY_REQUIRED": "true", "API_KEY": KEY}
    with running_server(tmp_path, models, wait_for_model=False, **env) as server:
        _refused(lambda: ollama.Client(host=server.url).list(), 401, "API key")
        oc = ollama.Client(host=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=120)
        assert oc.list().models == []

        lines = list(oc.pull("hf.co/test/smol-gguf", stream=True))
        statuses = [line.status for line in lines]
        assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
        progress = [line for line in lines if line.total]
        size = bundled_model_path().stat().st_size
        assert progress and progress[-1].completed == progress[-1].total == size
        assert (progress[-1].digest or "").startswith("sha256:")
        name = bundled_model_path().name.removesuffix(".gguf") + ":latest"
        assert [m.model for m in oc.list().models] == [name]
        assert oc.generate(name, "Hi", options={"num_predict": 2}).done

        assert oc.pull("hf.co/test/quants:Q8_0").status == "success"  # a quantisation tag picks the file
        assert (models / "m-Q8_0.gguf").is_file() and not (models / "m-Q4_1.gguf").exists()
        _refused(lambda: oc.pull("llama3.2"), 400, "Hugging Face")
        _refused(lambda: oc.pull("hf.co/test/quants"), 400, "m-Q4_1.gguf, m-Q8_0.gguf")
        _refused(lambda: oc.pull("hf.co/test/quants:Q5_K_M"), 400, "none")

        oc.copy(name, "my-copy")
        assert "my-copy:latest" in {m.model for m in oc.list().models}
        assert (models / "my-copy.gguf").stat().st_ino == (models / bundled_model_path().name).stat().st_ino  # linked
        _refused(lambda: oc.copy(name, "my-copy"), 400, "already exists")
        _refused(lambda: oc.copy(name, "../outside"), 400, "not a valid model name")
        _refused(lambda: oc.copy("nothing-here", "x"), 404, "nothing-here")

        oc.delete("my-copy:latest")
        assert not (models / "my-copy.gguf").exists()
        assert name in {m.model for m in oc.ps().models}
        oc.delete(name)  # loaded: unloaded first, then removed
        assert name not in {m.model for m in oc.ps().models}
        assert not (models / bundled_model_path().name).exists()
        _refused(lambda: oc.delete("nothing-here"), 404, "nothing-here")
        _refused(lambda: oc.delete("../models/m-Q8_0"), 404, "relative to MODEL_DIR")
        assert (models / "m-Q8_0.gguf").is_file()

        # CORS: pages on this machine may call (preflight first, without a key); others may not.
        preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"}
        with httpx.Client(base_url=server.url, timeout=30) as client:
            local = client.options("/api/chat", headers={"Origin": "http://localhost:3000", **preflight})
            assert local.status_code == 200 and local.headers["access-control-allow-origin"] == "http://localhost:3000"
            assert "authorization" in local.headers["access-control-allow-headers"].lower()
            foreign = client.options("/api/chat", headers={"Origin": "https://evil.example", **preflight})
            assert foreign.status_code == 400 and "access-control-allow-origin" not in foreign.headers
            listed = client.get("/api/tags", headers={"Origin": "http://127.0.0.1:8080", "Authorization": f"Bearer {KEY}"})
            assert listed.status_code == 200 and listed.headers["access-control-allow-origin"] == "http://127.0.0.1:8080"
            assert "access-control-allow-origin" not in client.get("/v1/models", headers={"Origin": "https://evil.example"}).headers


def test_cors_origins_setting(tmp_path: Path) -> None:
    env = {"PRELOAD_MODEL": "false", "CORS_ORIGINS": "https://app.example, https://other.example/"}
    with running_server(tmp_path, tmp_path, wait_for_model=False, **env) as server, server.client() as client:
        preflight = {"Access-Control-Request-Method": "POST"}
        allowed = client.options("/v1/chat/completions", headers={"Origin": "https://other.example", **preflight})
        assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == "https://other.example"
        local = client.options("/v1/chat/completions", headers={"Origin": "http://localhost:3000", **preflight})
        assert local.status_code == 400  # the list replaces the local default
        assert client.get("/api/version", headers={"Origin": "https://app.example"}).headers["access-control-allow-origin"] == "https://app.example"


def test_managing_models_needs_the_admin_key_and_a_same_site_page(tmp_path: Path, hub_env: dict[str, str]) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "spare.gguf").write_bytes(bundled_model_path().read_bytes())
    env = {**hub_env, "PRELOAD_MODEL": "false", "DEFAULT_MODEL": "", "API_KEY_REQUIRED": "true", "API_KEY": KEY,
           "ADMIN_API_KEY": "admin-key", "PULL_MAX_BYTES": "1MB"}
    with running_server(tmp_path, models, wait_for_model=False, **env) as server, server.client() as client:
        user, admin = {"Authorization": f"Bearer {KEY}"}, {"Authorization": "Bearer admin-key"}
        assert client.get("/api/tags", headers=user).status_code == 200
        assert client.get("/api/tags", headers=admin).status_code == 200  # the admin key opens every route
        for method, path, body in (("DELETE", "/api/delete", {"model": "spare"}), ("POST", "/api/copy", {"source": "spare", "destination": "x"}),
                                   ("POST", "/api/pull", {"model": "hf.co/test/smol-gguf"}), ("POST", "/models/spare/load", None),
                                   ("POST", "/models/pull", {"repo": "test/smol-gguf"})):
            refused = client.request(method, path, json=body, headers=user)
            assert refused.status_code == 401 and "ADMIN_API_KEY" in refused.text, (path, refused.text)
        # A page of another site cannot make a browser send writes (CORS only hides the answers).
        forged = client.request("DELETE", "/api/delete", json={"model": "spare"}, headers={**admin, "Origin": "https://evil.example"})
        assert forged.status_code == 403 and "origin" in forged.json()["error"] and (models / "spare.gguf").exists()
        # Pulls are capped in size before anything is downloaded.
        too_big = client.post("/models/pull", json={"repo": "test/smol-gguf"}, headers=admin)
        assert too_big.status_code == 400 and "PULL_MAX_BYTES" in too_big.json()["error"]["message"]
        # A loaded model is never written over by a pull.
        assert client.post("/models/spare/load", headers=admin).status_code == 200


def test_admin_routes_without_any_key_only_on_loopback() -> None:
    import asyncio
    from types import SimpleNamespace

    from starlette.requests import Request

    from local_llm_api.api.auth import require_admin_key
    from local_llm_api.config import load_settings
    from local_llm_api.errors import APIError

    def call(**settings: object) -> None:
        app = SimpleNamespace(state=SimpleNamespace(settings=load_settings(None, **settings)))
        asyncio.run(require_admin_key(Request({"type": "http", "headers": [], "app": app})))

    call(host="127.0.0.1")  # a local server: its user manages it
    with pytest.raises(APIError) as refused:
        call(host="0.0.0.0")  # reachable from other machines, and no key: anyone could fill the disk
    assert refused.value.status == 403 and refused.value.body.code == "admin_key_required"
    call(host="0.0.0.0", api_key_required=True, api_key="k")  # the API key (checked by the router) suffices
