"""A small HTTP server that answers like the Hugging Face Hub for a few repos, so that huggingface_hub's
real download code runs against it (HF_ENDPOINT). It serves the tree and revision APIs and `resolve` with
HEAD, GET and Range; `cut_first_download` drops the first download half-way, to exercise resuming."""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "c0ffee" + "0" * 34


class FakeHub:
    def __init__(self, repos: dict[str, dict[str, Path]], cut_first_download: bool = False,
                 bytes_per_second: float = 0) -> None:
        self.repos = repos
        self.cut_first_download = cut_first_download
        self.bytes_per_second = bytes_per_second  # 0: as fast as loopback goes
        self.ranges: list[str] = []  # the Range headers of file downloads, in order
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: object) -> None:
                pass

            def do_HEAD(self) -> None:  # noqa: N802 (the http.server naming)
                self._serve(body=False)

            def do_GET(self) -> None:  # noqa: N802
                self._serve(body=True)

            def _json(self, payload: object, status: int = 200) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                if status == 404:
                    self.send_header("X-Error-Code", "RepoNotFound")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _serve(self, body: bool) -> None:
                path = self.path.split("?")[0]
                api = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(tree|revision)/([^/]+)(/.*)?", path)
                if api:
                    files = hub.repos.get(api.group(1))
                    if files is None:
                        return self._json({"error": "Repository not found"}, 404)
                    if api.group(2) == "tree":
                        return self._json([{"type": "file", "path": name, "size": f.stat().st_size,
                                            "oid": hashlib.sha1(name.encode()).hexdigest()} for name, f in files.items()])
                    return self._json({"id": api.group(1), "sha": COMMIT,
                                       "siblings": [{"rfilename": name} for name in files]})
                resolve = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
                files = hub.repos.get(resolve.group(1)) if resolve else None
                source = files.get(resolve.group(3)) if files and resolve else None
                if source is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound" if files else "RepoNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                data = source.read_bytes()
                start = 0
                if body:
                    hub.ranges.append(self.headers.get("Range", ""))
                    match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
                    start = int(match.group(1)) if match else 0
                self.send_response(206 if start else 200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(len(data) - start))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if not body:
                    return None
                if hub.cut_first_download and len(hub.ranges) == 1:
                    self.wfile.write(data[start : len(data) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(2)  # the connection breaks half-way
                    return None
                step = 1 << 20
                for offset in range(start, len(data), step):
                    self.wfile.write(data[offset : offset + step])
                    if hub.bytes_per_second:
                        time.sleep(step / hub.bytes_per_second)
                return None

        return Handler
