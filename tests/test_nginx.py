"""deploy/nginx.conf for real: Debian's nginx in front of the server on loopback streams tokens as they come
and enforces the body limit with an OpenAI-style error."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import NO_END, ROOT, Server, free_port

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (.ci/run installs Debian's nginx)")


@pytest.fixture(scope="module")
def proxy(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Run deploy/nginx.conf, pointed at the test server instead of the compose service `api`."""
    work = tmp_path_factory.mktemp("nginx")
    port = free_port()
    site = (ROOT / "deploy" / "nginx.conf").read_text()
    site = site.replace("server api:8000;", f"server {server.url.removeprefix('http://')};")
    site = site.replace("listen 80;", f"listen 127.0.0.1:{port};")
    (work / "site.conf").write_text(site)
    for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (work / name).mkdir()
    (work / "nginx.conf").write_text(f"""
        worker_processes 1;
        pid {work}/nginx.pid;
        error_log {work}/error.log warn;
        events {{ worker_connections 64; }}
        http {{
            access_log off;
            client_body_temp_path {work}/body;
            proxy_temp_path {work}/proxy;
            fastcgi_temp_path {work}/fastcgi;
            uwsgi_temp_path {work}/uwsgi;
            scgi_temp_path {work}/scgi;
            include {work}/site.conf;
        }}
    """)
    process = subprocess.Popen([NGINX, "-p", str(work), "-c", str(work / "nginx.conf"), "-g", "daemon off;"],
                               stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 10
    while True:
        try:
            httpx.get(f"{url}/health", timeout=2)
            break
        except httpx.HTTPError:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.time() < deadline, "nginx did not start"
            time.sleep(0.1)
    yield url
    process.terminate()
    process.wait(timeout=10)


def test_stream_through_nginx_arrives_token_by_token(proxy: str) -> None:
    body = {"messages": [{"role": "user", "content": "Tell me a story."}], "max_tokens": 40,
            "logit_bias": NO_END, "stream": True}
    arrivals: list[float] = []
    with httpx.Client(timeout=60) as client, client.stream("POST", f"{proxy}/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                arrivals.append(time.perf_counter())
    assert len(arrivals) >= 30
    # Buffered, every token would land at the end in one burst; streamed, they spread over the generation.
    spread = arrivals[-1] - arrivals[0]
    assert spread > 0.2, spread
    halfway = arrivals[0] + spread / 2
    assert sum(t < halfway for t in arrivals) >= len(arrivals) // 4


def test_nginx_enforces_the_body_limit(proxy: str) -> None:
    big = {"messages": [{"role": "user", "content": "x" * (33 * 2**20)}]}
    response = httpx.post(f"{proxy}/v1/chat/completions", json=big, timeout=60)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


def test_errors_and_request_ids_pass_through(proxy: str) -> None:
    response = httpx.post(f"{proxy}/v1/chat/completions", json={"messages": []}, timeout=30)
    assert response.status_code == 400 and response.json()["error"]["param"] == "messages"
    assert response.headers["x-request-id"]
