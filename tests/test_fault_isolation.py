"""Nothing takes a model down: request lifetimes that always release the model, cancelled requests that leave
the queue at once, a failing sequence that fails alone, an engine whose thread is supervised."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from .conftest import MODEL, NO_END, Server, place_model, running_server, wait_until
from .models import MINILM, minilm_folder, place_tree


def model_info(server: Server) -> dict:
    return next(m for m in httpx.get(f"{server.url}/models", timeout=10).json()["data"] if m["id"] == MODEL)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat"])
def test_a_stream_abandoned_before_its_first_byte_releases_the_model(tmp_path: Path, model_dir: Path, path: str) -> None:
    # A client that gives up while the model loads leaves before the response starts: the body never runs.
    with running_server(tmp_path, model_dir, wait_for_model=False, PRELOAD_MODEL="false") as server:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "stream": True}
        # Long answers: released at once only if the server notices that nobody reads them.
        body |= {"max_tokens": 1500, "logit_bias": NO_END} if path.startswith("/v1") else {"options": {"num_predict": 1500}}
        with httpx.Client(base_url=server.url, timeout=httpx.Timeout(10, read=0.05)) as client, pytest.raises(httpx.ReadTimeout):
            client.post(path, json=body)
        wait_until(lambda: model_info(server)["state"] == "loaded", what="the load")
        wait_until(lambda: model_info(server)["active_requests"] == 0, timeout=5, what="the model's release")
        unloaded = httpx.post(f"{server.url}/models/{MODEL}/unload", timeout=20)
        assert unloaded.status_code == 200 and unloaded.json()["state"] == "available"


@pytest.mark.parametrize("spec_version", ["2.3", "2.4"])
def test_a_streamed_response_releases_its_model_even_if_its_body_never_starts(spec_version: str) -> None:
    # The ASGI server fails the response's first send (the client is gone): the body generator never starts,
    # so only the response itself can release the model.
    from local_llm_api.core.streaming import ndjson_response, sse_response

    async def scenario(make: Callable) -> int:  # type: ignore[type-arg]
        closed = 0

        async def on_close() -> None:
            nonlocal closed
            closed += 1

        async def frames():  # type: ignore[no-untyped-def]
            yield "never sent\n"

        async def receive() -> dict:
            await asyncio.sleep(3600)  # the disconnect is seen through send failing
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            raise OSError("client gone")

        response = make(frames(), on_close)
        with contextlib.suppress(Exception):
            await response({"type": "http", "asgi": {"spec_version": spec_version}}, receive, send)
        return closed

    for make in (lambda f, c: sse_response(f, c, str), lambda f, c: ndjson_response(f, c, str)):
        assert asyncio.run(scenario(make)) >= 1


def _queued(server: Server) -> int:
    return httpx.get(f"{server.url}/health", timeout=10).json()["engines"][MODEL]["queued"]


def test_requests_cancelled_while_waiting_leave_the_queue_at_once(tmp_path: Path, model_dir: Path) -> None:
    long = {"model": MODEL, "messages": [{"role": "user", "content": "Write a long story."}], "stream": True,
            "max_tokens": 1500, "logit_bias": NO_END}
    with running_server(tmp_path, model_dir, PARALLEL_SLOTS="1", MAX_QUEUE="2") as server:
        with httpx.Client(base_url=server.url, timeout=60) as holder, holder.stream("POST", "/v1/chat/completions", json=long) as running:
            lines = running.iter_lines()  # kept: a dropped line iterator closes the response
            next(lines)  # it holds the only slot
            for _ in range(2):
                with httpx.Client(base_url=server.url, timeout=60) as client, \
                        client.stream("POST", "/v1/chat/completions", json=long) as waiting:
                    assert waiting.status_code == 200
                    wait_until(lambda: _queued(server) >= 1, what="the request queued")
                # Leaving the block closes the connection: the request is cancelled while it waits.
            wait_until(lambda: _queued(server) == 0, timeout=5, what="the cancelled requests leaving the queue")
            # The queue has room for two again (no spurious 429), and still for two only.
            with httpx.Client(base_url=server.url, timeout=60) as a, a.stream("POST", "/v1/chat/completions", json=long) as first, \
                    httpx.Client(base_url=server.url, timeout=60) as b, b.stream("POST", "/v1/chat/completions", json=long) as second:
                assert first.status_code == second.status_code == 200
                wait_until(lambda: _queued(server) == 2, what="both queued")
                third = httpx.post(f"{server.url}/v1/chat/completions", json=long, timeout=60)
                assert third.status_code == 429


def test_a_client_leaving_is_not_an_error(tmp_path: Path, model_dir: Path) -> None:
    long = {"model": MODEL, "messages": [{"role": "user", "content": "Write a long story."}], "max_tokens": 1500,
            "logit_bias": NO_END}
    with running_server(tmp_path, model_dir) as server:
        with httpx.Client(base_url=server.url, timeout=1.0) as impatient, pytest.raises(httpx.ReadTimeout):
            impatient.post("/v1/chat/completions", json=long)
        log = server.wait_for_log("path=/v1/chat/completions status=499")  # nginx's "client closed request"
        assert "Traceback" not in log and "status=500" not in log
        stderr = next(tmp_path.glob("server-*.stderr")).read_text()
        assert "Exception in ASGI application" not in stderr and "CancelledError" not in stderr


def read_response(connection: socket.socket) -> str:
    """One whole HTTP/1.1 response: its headers and its body can arrive in separate packets."""
    received = b""
    while chunk := connection.recv(4096):
        received += chunk
        head, separator, body = received.partition(b"\r\n\r\n")
        lengths = [line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
        if separator and lengths and len(body) >= int(lengths[0]):
            break
    return received.decode()


def test_a_client_that_stalls_its_body_gets_408_and_holds_nothing(tmp_path: Path, model_dir: Path) -> None:
    with running_server(tmp_path, model_dir, BODY_READ_TIMEOUT_SECONDS="1") as server:
        host, port = server.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=20) as stalled:
            stalled.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                            b"Content-Length: 200\r\n\r\n{\"messages\": [")  # and then nothing more
            # Meanwhile the server serves others.
            assert httpx.post(f"{server.url}/v1/chat/completions", timeout=60, json={
                "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}).status_code == 200
            answer = read_response(stalled)
        assert answer.startswith("HTTP/1.1 408") and "request_timeout" in answer
        assert model_info(server)["active_requests"] == 0


def test_a_log_file_on_a_full_disk_does_not_stop_the_server(tmp_path: Path, model_dir: Path) -> None:
    # /dev/full answers every write with ENOSPC, as a full disk does.
    with running_server(tmp_path, model_dir, LOG_FILE="/dev/full") as server:
        answer = httpx.post(f"{server.url}/v1/chat/completions", timeout=60,
                            json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
        assert answer.status_code == 200
        assert httpx.get(f"{server.url}/health", timeout=10).json()["status"] == "ok"


# Root reads and writes whatever the modes say; these take that away from the server's process.
WITHOUT_ROOTS_OVERRIDE = ["setpriv", "--inh-caps=-dac_override,-dac_read_search",
                          "--bounding-set=-dac_override,-dac_read_search"]
READ_ONLY_MOUNT = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'  # $0 read-only, then the server


def _can_run(command: list[str]) -> bool:
    import shutil
    import subprocess

    return shutil.which(command[0]) is not None and subprocess.run(command, capture_output=True, check=False).returncode == 0


def test_a_log_file_on_a_read_only_disk_does_not_stop_the_server(tmp_path: Path, model_dir: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    prefix = ["unshare", "--mount", "sh", "-c", READ_ONLY_MOUNT, str(logs)]
    if not _can_run([*prefix, "true"]):
        pytest.skip("a read-only mount needs `unshare --mount` with mount rights (root, or a user namespace)")
    with running_server(tmp_path, model_dir, prefix=prefix, LOG_FILE=str(logs / "server.log")) as server:
        answer = httpx.post(f"{server.url}/v1/chat/completions", timeout=60,
                            json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
        assert answer.status_code == 200
        # The access line is written after the answer is sent: wait for it rather than read at once.
        stderr_file, deadline = next(tmp_path.glob("server-*.stderr")), time.monotonic() + 10
        while "path=/v1/chat/completions" not in stderr_file.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        stderr = stderr_file.read_text()
        assert "cannot be written (Read-only file system): logging to stderr only" in stderr
        assert "path=/v1/chat/completions status=200" in stderr and "Traceback" not in stderr  # the log goes on


def test_a_model_that_cannot_be_read_is_a_clear_error_and_the_rest_is_served(tmp_path: Path, model_dir: Path) -> None:
    if not _can_run([*WITHOUT_ROOTS_OVERRIDE, "true"]):
        pytest.skip("setpriv (util-linux) cannot drop capabilities here")
    models = tmp_path / "models"
    place_model(models)
    place_tree(minilm_folder(), models / MINILM)
    (models / MINILM).chmod(0)  # a folder nobody may read
    locked = models / "locked.gguf"
    locked.write_bytes((models / MODEL).read_bytes())
    locked.chmod(0)  # a file nobody may read
    try:
        with running_server(tmp_path, models, prefix=WITHOUT_ROOTS_OVERRIDE) as server, server.client() as client:
            for listing in ("/v1/models", "/models", "/api/tags"):
                assert client.get(listing).status_code == 200, listing
            # A folder that cannot be read cannot be told to be a model: listed nowhere, named in the 404.
            refused = client.post("/v1/embeddings", json={"model": MINILM, "input": "hello"})
            assert refused.status_code == 404 and refused.json()["error"]["code"] == "model_unreadable", refused.text
            assert "cannot be read by this server (Permission denied)" in refused.json()["error"]["message"]
            # A GGUF file is known by its name: listed, and its load fails with the reason.
            refused = client.post("/v1/chat/completions", json={"model": "locked.gguf", "messages": [{"role": "user", "content": "Hi"}]})
            assert refused.status_code == 400 and refused.json()["error"]["code"] == "model_load_failed", refused.text
            assert "Permission denied" in refused.json()["error"]["message"]
            served = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
            assert served.status_code == 200 and client.get("/health").json()["status"] == "ok"
            stderr = next(tmp_path.glob("server-*.stderr")).read_text()
            assert f"MODEL_DIR entry {MINILM} cannot be read (Permission denied): not served" in stderr
            assert stderr.count(f"MODEL_DIR entry {MINILM} cannot be read") == 1 and "Traceback" not in stderr
    finally:
        (models / MINILM).chmod(0o755)  # so that pytest can clean up


def test_kill_9_during_a_load_then_a_restart_serves(tmp_path: Path, model_dir: Path) -> None:
    import signal

    from .conftest import start_server, stop_server

    data = tmp_path / "data"
    first = start_server(tmp_path, model_dir, wait_for_model=False, DATA_DIR=str(data))
    stored = httpx.post(f"{first.url}/v1/responses", timeout=60, json={"input": "Hi", "max_output_tokens": 2}).json()["id"]
    httpx.post(f"{first.url}/models/{MODEL}/unload", timeout=30)
    loading = httpx.Client(base_url=first.url, timeout=httpx.Timeout(60, read=0.01))
    with contextlib.suppress(httpx.HTTPError):
        loading.post(f"/models/{MODEL}/load")  # the load starts...
    first.process.send_signal(signal.SIGKILL)  # ...and the server dies in the middle of it
    first.process.wait(timeout=10)
    loading.close()
    second = start_server(tmp_path, model_dir, DATA_DIR=str(data))
    try:
        assert httpx.post(f"{second.url}/v1/chat/completions", timeout=60,
                          json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}).status_code == 200
        assert httpx.get(f"{second.url}/v1/responses/{stored}", timeout=10).status_code == 200  # the store is intact
    finally:
        stop_server(second)
