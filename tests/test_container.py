"""The CPU image, run for real with podman: health, a chat completion and a streamed one, the non-root user, the
model and log volumes, and SIGTERM letting a running stream finish. The image comes from scripts/build-image.sh
(about 10 minutes: it compiles llama.cpp), so the test runs where that image exists and says why it skips elsewhere.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import MODEL, free_port, place_model

IMAGE = os.environ.get("CONTAINER_IMAGE", "local-llm-api:cpu")
PODMAN = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs"]
LIMITS = ["--ulimit", "nofile=20000:20000", "--ulimit", "nproc=4096:4096"]


def _image_present() -> str | None:
    """Why the test cannot run here, or None."""
    if shutil.which("podman") is None or shutil.which("runc") is None:
        return "podman and runc are not installed (Debian: apt-get install podman runc)"
    found = subprocess.run([*PODMAN, "image", "exists", IMAGE], capture_output=True, check=False)
    if found.returncode != 0:
        return f"the image {IMAGE} is not built here (scripts/build-image.sh builds it, about 10 minutes)"
    return None


pytestmark = pytest.mark.skipif(_image_present() is not None, reason=str(_image_present()))


def _running(container: str) -> bool:
    state = subprocess.run([*PODMAN, "inspect", "-f", "{{.State.Running}}", container], capture_output=True, text=True, check=False)
    return state.stdout.strip() == "true"


def _wait_healthy(url: str, container: str) -> None:
    deadline = time.time() + 120
    while time.time() < deadline and _running(container):
        try:
            if httpx.get(f"{url}/health", timeout=2).json().get("loaded_models"):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    logs = subprocess.run([*PODMAN, "logs", container], capture_output=True, text=True, check=False)
    raise AssertionError(f"the container never became healthy:\n{logs.stdout[-2000:]}{logs.stderr[-2000:]}")


@pytest.fixture(scope="module")
def container(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Path]]:
    models = place_model(tmp_path_factory.mktemp("container-models")).parent
    models.chmod(0o755)  # pytest's folders are private to their owner; the image's user reads this one
    logs, data = tmp_path_factory.mktemp("container-logs"), tmp_path_factory.mktemp("container-data")
    for writable in (logs, data):  # the image's user, uid 1000, writes here
        if os.geteuid() == 0:
            os.chown(writable, 1000, 1000)
        else:
            writable.chmod(0o777)
    port = free_port()
    name = f"local-llm-api-test-{port}"
    subprocess.run([*PODMAN, "run", "-d", "--name", name, "--network", "host", *LIMITS,
                    "-v", f"{models}:/models:ro", "-v", f"{logs}:/logs", "-v", f"{data}:/data",
                    "-e", f"PORT={port}", "-e", "HOST=127.0.0.1", "-e", f"DEFAULT_MODEL={MODEL}", "-e", "PRELOAD_MODEL=true",
                    "-e", "THREADS=1", "-e", "CONTEXT_SIZE=2048", "-e", "SHUTDOWN_GRACE_SECONDS=60", IMAGE],
                   check=True, capture_output=True)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(url, name)
        yield name, url, logs
    finally:
        subprocess.run([*PODMAN, "rm", "-f", "-t", "0", name], capture_output=True, check=False)


def test_the_image_serves_chat_and_streams_as_a_user_other_than_root(container: tuple[str, str, Path]) -> None:
    name, url, logs = container
    chat = httpx.post(f"{url}/v1/chat/completions", timeout=60,
                      json={"messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 8})
    assert chat.status_code == 200 and chat.json()["choices"][0]["message"]["content"]
    with httpx.stream("POST", f"{url}/v1/chat/completions", timeout=60,
                      json={"messages": [{"role": "user", "content": "Count to five"}], "max_tokens": 16, "stream": True}) as stream:
        events = [line.removeprefix("data: ") for line in stream.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and len(events) > 3
    assert json.loads(events[0])["object"] == "chat.completion.chunk"
    user = subprocess.run([*PODMAN, "exec", name, "id", "-u"], capture_output=True, text=True, check=True)
    assert user.stdout.strip() == "1000"
    # The log volume holds the server's log, request lines included (written once each response has ended).
    deadline = time.time() + 10
    while "path=/v1/chat/completions status=200" not in ((logs / "server.log").read_text() if (logs / "server.log").exists() else ""):
        assert time.time() < deadline, "the request never reached the log volume"
        time.sleep(0.1)


def test_sigterm_lets_a_running_stream_finish(container: tuple[str, str, Path]) -> None:
    name, url, _ = container
    body = {"messages": [{"role": "user", "content": "Write a long story."}], "max_tokens": 200, "stream": True,
            "logit_bias": {"0": -100, "2": -100, "4": -100}}  # no end of text: the whole 200 tokens
    with httpx.stream("POST", f"{url}/v1/chat/completions", timeout=120, json=body) as stream:
        lines = stream.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        assert "chat.completion.chunk" in first
        subprocess.run([*PODMAN, "kill", "--signal", "TERM", name], check=True, capture_output=True)
        rest = [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]
    assert rest[-1] == "[DONE]"
    assert json.loads(rest[-2])["choices"][0]["finish_reason"] == "length"
    status = subprocess.run([*PODMAN, "wait", name], capture_output=True, text=True, check=True, timeout=60)
    assert status.stdout.strip() in ("0", "143")  # uvicorn re-raises the SIGTERM once it has drained
