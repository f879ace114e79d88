"""Pulling models from the Hugging Face Hub, against a local server that answers like the Hub for a few
repos (HF_ENDPOINT), so that huggingface_hub's real download code runs: the CLI with its progress bar and
a resumed download, and POST /models/pull with its progress in GET /models."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from local_llm_api.cli import bundled_model_path

from .conftest import running_server
from .fake_hub import FakeHub
from .models import minilm_folder

ROOT = Path(__file__).resolve().parent.parent


def repos() -> dict[str, dict[str, Path]]:
    gguf = bundled_model_path()
    minilm = minilm_folder()
    return {
        "test/smol-gguf": {gguf.name: gguf, "README.md": ROOT / "README.md"},
        "test/two-ggufs": {"a.gguf": gguf, "b.gguf": gguf},
        "test/minilm": {p.relative_to(minilm).as_posix(): p for p in minilm.rglob("*") if p.is_file()},
    }


@pytest.fixture
def hub_env(tmp_path: Path) -> dict[str, str]:
    return {"HF_HUB_CACHE": str(tmp_path / "hub-cache"), "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_OFFLINE": ""}


@pytest.fixture
def cutting_hub() -> Iterator[FakeHub]:
    with FakeHub(repos(), cut_first_download=True) as hub:
        yield hub


def test_cli_pull_resumes_a_broken_download_and_shows_progress(tmp_path: Path, cutting_hub: FakeHub, hub_env: dict) -> None:
    models = tmp_path / "models"
    env = {**os.environ, **hub_env, "HF_ENDPOINT": cutting_hub.url}
    done = subprocess.run([sys.executable, "-m", "local_llm_api", "pull", "test/smol-gguf", "--model-dir", str(models)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    target = models / bundled_model_path().name
    assert done.stdout.strip() == str(target)
    assert target.read_bytes() == bundled_model_path().read_bytes()
    assert cutting_hub.ranges[0] == "" and cutting_hub.ranges[1].startswith("bytes=")  # resumed, not restarted
    assert "100%" in done.stderr  # huggingface_hub's progress bar
    assert not (models / "README.md").exists()  # a GGUF pull takes the one file


def test_cli_pull_refuses_what_it_cannot_pull(tmp_path: Path, cutting_hub: FakeHub, hub_env: dict) -> None:
    env = {**os.environ, **hub_env, "HF_ENDPOINT": cutting_hub.url}
    for args, message in ((["test/nothing-here"], "no repo 'test/nothing-here'"),
                          (["test/two-ggufs"], "a.gguf, b.gguf"),
                          (["test/smol-gguf", "--file", "c.gguf"], "has no file 'c.gguf'")):
        done = subprocess.run([sys.executable, "-m", "local_llm_api", "pull", *args, "--model-dir", str(tmp_path)],
                              env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 1 and message in done.stderr, done.stderr


def test_a_pull_never_writes_through_a_link_out_of_model_dir(tmp_path: Path, hub_env: dict) -> None:
    models, elsewhere = tmp_path / "models", tmp_path / "elsewhere"
    elsewhere.mkdir()
    models.mkdir()
    (models / "minilm").symlink_to(elsewhere, target_is_directory=True)  # the folder a pull of test/minilm writes
    with FakeHub(repos()) as hub:
        done = subprocess.run([sys.executable, "-m", "local_llm_api", "pull", "test/minilm", "--model-dir", str(models)],
                              env={**os.environ, **hub_env, "HF_ENDPOINT": hub.url}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "leads outside MODEL_DIR" in done.stderr, done.stderr
    assert list(elsewhere.iterdir()) == []


def test_api_pull_shows_progress_then_serves_the_model(tmp_path: Path, hub_env: dict) -> None:
    models = tmp_path / "models"
    models.mkdir()
    with FakeHub(repos(), bytes_per_second=40e6) as hub:  # ~90 MB: a couple of seconds
        env = {**hub_env, "HF_ENDPOINT": hub.url, "PRELOAD_MODEL": "false", "DEFAULT_MODEL": ""}
        with running_server(tmp_path, models, wait_for_model=False, **env) as server, server.client() as client:
            response = client.post("/models/pull", json={"repo": "test/minilm"})
            assert response.status_code == 202, response.text
            assert response.json()["id"] == "minilm" and response.json()["state"] == "downloading"
            seen: list[dict] = []
            deadline = time.time() + 60
            while True:
                model = next((m for m in client.get("/models").json()["data"] if m["id"] == "minilm"), None)
                if model and model["state"] != "downloading":
                    break
                if model:
                    seen.append(model["download"])
                    if model["state"] == "downloading" and len(seen) == 1:
                        busy = client.post("/v1/embeddings", json={"model": "minilm", "input": "x"})
                        assert busy.status_code in (404, 503)  # not there yet, or still downloading
                assert time.time() < deadline, "the pull did not finish"
                time.sleep(0.1)
            # The repo holds 13 files; README.md and .gitattributes are not model files.
            assert seen and seen[-1]["unit"] == "files" and seen[-1]["total"] == 11
            assert model["state"] == "available" and model["backend"] == "sentence-transformers"
            assert model["download"]["state"] == "done"
            embedded = client.post("/v1/embeddings", json={"model": "minilm", "input": "pulled and served"})
            assert embedded.status_code == 200 and len(embedded.json()["data"][0]["embedding"]) == 384
            for body, param in (({"repo": "test/nothing-here"}, "repo"), ({"repo": "not a repo id"}, "repo"),
                                ({"repo": "test/two-ggufs"}, "repo"), ({"repo": "test/minilm", "colour": 1}, "colour")):
                refused = client.post("/models/pull", json=body)
                assert refused.status_code == 400 and refused.json()["error"]["param"] == param, refused.text


def test_a_declared_gguf_repo_and_file_is_downloaded_and_served(tmp_path: Path, hub_env: dict) -> None:
    # The README's models-config example: `repo:` + `file:` of a GGUF repo, fetched through huggingface_hub.
    config = tmp_path / "models.yaml"
    config.write_text(f"models:\n  - name: smol-from-hub\n    repo: test/smol-gguf\n    file: {bundled_model_path().name}\n")
    models = tmp_path / "models"
    models.mkdir()
    with FakeHub(repos()) as hub:
        env = {**hub_env, "HF_ENDPOINT": hub.url, "PRELOAD_MODEL": "false", "DEFAULT_MODEL": "", "MODELS_CONFIG": str(config)}
        with running_server(tmp_path, models, wait_for_model=False, **env) as server, server.client() as client:
            answer = client.post("/v1/chat/completions", json={"model": "smol-from-hub", "max_tokens": 3,
                                                               "messages": [{"role": "user", "content": "Hi"}]})
            assert answer.status_code == 200, answer.text
            listed = {m["id"]: m for m in client.get("/models").json()["data"]}["smol-from-hub"]
            assert listed["state"] == "loaded" and listed["backend"] == "llama-cpp" and listed["repo"] == "test/smol-gguf"
    cached = list((tmp_path / "hub-cache").rglob(bundled_model_path().name))
    assert cached and cached[0].stat().st_size == bundled_model_path().stat().st_size


def test_a_pull_never_writes_over_a_loaded_model(tmp_path: Path, hub_env: dict) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / bundled_model_path().name).write_bytes(bundled_model_path().read_bytes())
    with FakeHub(repos()) as hub:
        env = {**hub_env, "HF_ENDPOINT": hub.url}
        with running_server(tmp_path, models, **env) as server, server.client() as client:  # preloaded
            refused = client.post("/models/pull", json={"repo": "test/smol-gguf"})
            assert refused.status_code == 409 and refused.json()["error"]["code"] == "model_in_use"
