"""Per-request context: a request id, the body size limit, compressed bodies, and one structured log line
per request."""

from __future__ import annotations

import asyncio
import gzip
import io
import logging
import re
import time
import uuid
import zlib

import zstandard
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import APIError
from ..logs import request_id as request_id_var
from .errors import ErrorRenderers

log = logging.getLogger("local_llm_api.access")
_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_MAX_NAMED = 30  # X-Ignored-Fields names at most this many; the log line names them all


def ignored_fields_header(names: list[str]) -> str:
    """X-Ignored-Fields: the request fields the server did not know (dialects/base.py), in printable ASCII only
    (a field name is the client's text), and not endless."""
    shown = [name.encode("ascii", "backslashreplace").decode("ascii") for name in names[:_MAX_NAMED]]
    shown = ["".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in name) for name in shown]
    more = f", ... ({len(names) - _MAX_NAMED} more)" if len(names) > _MAX_NAMED else ""
    return ", ".join(shown) + more


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole body, or as much as passes `limit` by a chunk; None when the client left."""
    body, more = b"", True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            return None
        body += message.get("body", b"")
        more = message.get("more_body", False)
        if len(body) > limit:
            break
    return body


def _replaying(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands the app `body` at once, then passes through (disconnects)."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def decompressed(body: bytes, encoding: str, limit: int) -> bytes:
    """A zstd, gzip or deflate body, decompressed up to `limit` bytes; 400 when it is not what it says."""
    try:
        if encoding == "zstd":
            return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(body)).read(limit)
        if encoding == "gzip":
            return gzip.GzipFile(fileobj=io.BytesIO(body)).read(limit)
        return zlib.decompressobj().decompress(body, limit)
    except (zstandard.ZstdError, OSError, EOFError, zlib.error) as exc:
        raise APIError(400, f"The request body is not valid {encoding} data: {exc}", code="invalid_encoding") from None


class RequestContextMiddleware:
    """Pure ASGI so that the log line is written when a stream really ends, not when its headers go out."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, renderers: ErrorRenderers, body_timeout: float = 30.0) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_timeout = body_timeout
        self.renderers = renderers

    async def _within_limit(self, headers: dict[str, str], receive: Receive) -> Receive | None:
        """`receive` for the app, or None when the body is over the limit. A declared length over the limit is
        refused unread; a body is read here, up to the limit and within the body timeout (a client that sends
        slowly or stops half-way gets 408 and holds nothing), and replayed to the app."""
        if "content-length" in headers:
            try:
                length = int(headers["content-length"])
            except ValueError:
                return None
            if length > self.max_body_bytes:
                return None
            if length == 0:
                return receive
        elif "chunked" not in headers.get("transfer-encoding", ""):
            return receive
        try:
            body = await asyncio.wait_for(_read_body(receive, self.max_body_bytes), self.body_timeout)
        except asyncio.TimeoutError:  # not the builtin on Python 3.10
            raise APIError(408, f"The request body did not arrive within {self.body_timeout:g} seconds.",
                           code="request_timeout") from None
        if body is None:
            return receive  # the client left; let the app see the disconnect
        return _replaying(body, receive) if len(body) <= self.max_body_bytes else None

    async def _decompressed(self, scope: Scope, encoding: str, receive: Receive) -> Receive:
        """The body of a request sent with `Content-Encoding: zstd` (as Codex CLI does), gzip or deflate,
        decompressed up to the body limit and replayed to the app, which then sees a plain body."""
        body = await _read_body(receive, self.max_body_bytes)
        if body is None:
            return receive
        if len(body) > self.max_body_bytes:
            raise APIError(413, f"Request body too large; the limit is {self.max_body_bytes} bytes.", code="request_too_large")
        plain = decompressed(body, encoding, self.max_body_bytes + 1)
        if len(plain) > self.max_body_bytes:
            raise APIError(413, f"Request body too large once decompressed; the limit is {self.max_body_bytes} bytes.",
                           code="request_too_large")
        scope["headers"] = [(k, v) for k, v in scope["headers"] if k.lower() not in (b"content-encoding", b"content-length")]
        scope["headers"].append((b"content-length", str(len(plain)).encode()))
        return _replaying(plain, receive)

    async def _body(self, scope: Scope, headers: dict[str, str], receive: Receive) -> Receive:
        """`receive` for the app: within the size limit, decompressed when the body is compressed."""
        encoding = headers.get("content-encoding", "identity").strip().lower()
        body_receive = await self._within_limit(headers, receive)
        if body_receive is None:
            raise APIError(413, f"Request body too large; the limit is {self.max_body_bytes} bytes.", code="request_too_large")
        if encoding in ("identity", ""):
            return body_receive
        if encoding not in ("zstd", "gzip", "deflate"):
            raise APIError(415, f"Content-Encoding '{encoding}' is not supported; send zstd, gzip, deflate or none.",
                           code="unsupported_encoding")
        return await self._decompressed(scope, encoding, body_receive)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        given = headers.get("x-request-id", "")
        request_id = given if _SAFE_ID.match(given) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        request_id_var.set(request_id)  # for every log line written while it is served (work in threads too)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                extra = [(b"x-request-id", request_id.encode())]
                if state.get("ignored_fields"):
                    extra.append((b"x-ignored-fields", ignored_fields_header(state["ignored_fields"]).encode()))
                # What the route said it did differently (core/chat.py's notes), in ASCII.
                extra += [(k.lower().encode(), v.encode("ascii", "replace")) for k, v in state.get("response_headers", {}).items()]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        try:
            try:
                body_receive = await self._body(scope, headers, receive)
            except APIError as error:
                await self.renderers.render(scope["path"], error)(scope, receive, send_with_id)
            else:
                await self.app(scope, body_receive, send_with_id)
        finally:
            usage = state.get("usage")
            log.info(
                "request",
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": 499 if state.get("client_left") else status,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 1),
                    "request_id": request_id,
                    "model": state.get("model"),
                    "prompt_tokens": usage.prompt_tokens if usage else None,
                    "completion_tokens": usage.completion_tokens if usage else None,
                    "ignored_fields": ",".join(state["ignored_fields"]) if state.get("ignored_fields") else None,
                },
            )
