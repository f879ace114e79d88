"""A recording reverse proxy: what a real client sent and what the server answered, request by request.

The agent tests put it between a client (Codex CLI, Claude Code, opencode, aider) and the server, so that a
failure shows the client's own bodies; `python -m tests.agents.recording_proxy UPSTREAM OUT.jsonl` runs it on
its own to record sessions for the benchmarks (benchmarks/data/).
"""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
import zstandard
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

HOP_BY_HOP = {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "accept-encoding"}


@dataclass
class Exchange:
    """One request and its answer, as they crossed the proxy."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: Any  # the JSON body, decompressed (Codex sends zstd); the text when it is not JSON
    status: int = 0
    response_headers: dict[str, str] = field(default_factory=dict)
    response: str = ""  # the whole answer as text (an event stream as it came)
    started: float = field(default_factory=time.time)
    first_byte_seconds: float | None = None
    seconds: float = 0.0

    def events(self) -> list[dict[str, Any]]:
        """The `data:` payloads of an event-stream answer that are JSON."""
        out = []
        for line in self.response.splitlines():
            if line.startswith("data: ") and line[6:].strip() not in ("", "[DONE]"):
                try:
                    out.append(json.loads(line[6:]))
                except ValueError:
                    pass
        return out

    def summary(self) -> str:
        body = json.dumps(self.body)[:3000] if self.body is not None else ""
        return f"{self.method} {self.path}?{self.query} -> {self.status}\n  body: {body}\n  answer: {self.response[:3000]}"


def _decoded(raw: bytes, encoding: str) -> Any:
    try:
        if encoding == "zstd":
            raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw)).read()
        elif encoding == "gzip":
            raw = gzip.decompress(raw)
        return json.loads(raw) if raw else None
    except (ValueError, OSError, zstandard.ZstdError):
        return raw.decode("utf-8", "replace")


class RecordingProxy:
    """Forwards everything to `upstream` and keeps each exchange (and appends it to `record_file`)."""

    def __init__(self, upstream: str, record_file: Path | None = None) -> None:
        self.upstream = upstream.rstrip("/")
        self.record_file = record_file
        self.exchanges: list[Exchange] = []
        self._lock = threading.Lock()
        self.app = Starlette(routes=[Route("/{path:path}", self._forward, methods=["GET", "POST", "PUT", "DELETE", "HEAD",
                                                                                  "OPTIONS", "PATCH"])])
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    def find(self, path_part: str) -> list[Exchange]:
        with self._lock:
            return [x for x in self.exchanges if path_part in x.path]

    def report(self, path_part: str = "") -> str:
        """Every recorded exchange (or those on matching paths), for an assertion's message."""
        return "\n".join(x.summary() for x in self.find(path_part)) or "(nothing recorded)"

    async def _forward(self, request: Request) -> StreamingResponse:
        raw = await request.body()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        exchange = Exchange(request.method, request.url.path, request.url.query, dict(request.headers),
                            _decoded(raw, request.headers.get("content-encoding", "").lower()))
        with self._lock:
            self.exchanges.append(exchange)
        client = httpx.AsyncClient(timeout=httpx.Timeout(None, connect=10))
        upstream = client.build_request(request.method, self.upstream + request.url.path, params=request.url.query or None,
                                        headers=headers, content=raw)
        started = time.perf_counter()
        try:
            answer = await client.send(upstream, stream=True)
        except httpx.HTTPError as exc:
            await client.aclose()
            exchange.status, exchange.response = 502, f"proxy: upstream failed: {exc!r}"
            self._save(exchange)
            return StreamingResponse(iter([exchange.response]), status_code=502)
        exchange.status = answer.status_code
        exchange.response_headers = dict(answer.headers)

        async def body() -> AsyncIterator[bytes]:
            parts: list[bytes] = []
            try:
                async for chunk in answer.aiter_raw():
                    if exchange.first_byte_seconds is None:
                        exchange.first_byte_seconds = time.perf_counter() - started
                    parts.append(chunk)
                    yield chunk
            finally:
                exchange.seconds = time.perf_counter() - started
                exchange.response = b"".join(parts).decode("utf-8", "replace")
                await answer.aclose()
                await client.aclose()
                self._save(exchange)

        out_headers = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP | {"content-encoding"}}
        return StreamingResponse(body(), status_code=answer.status_code, headers=out_headers)

    def _save(self, exchange: Exchange) -> None:
        if self.record_file is None:
            return
        with self._lock, self.record_file.open("a", encoding="utf-8") as out:
            out.write(json.dumps(asdict(exchange), ensure_ascii=False) + "\n")

    def start(self) -> RecordingProxy:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.time() + 10
        while not self._server.started:
            if time.time() > deadline:
                raise RuntimeError("the recording proxy did not start")
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> RecordingProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def main() -> None:
    upstream, out = sys.argv[1], Path(sys.argv[2])
    proxy = RecordingProxy(upstream, out).start()
    print(f"recording {proxy.url} -> {upstream} into {out}", flush=True)
    try:
        asyncio.run(asyncio.Event().wait())
    except KeyboardInterrupt:
        proxy.stop()


if __name__ == "__main__":
    main()
