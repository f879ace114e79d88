"""The Ray Serve ingress: one FastAPI app in front of every replica. It checks API keys, reads the body once to
tag the request with its model and conversation (routing hints for `router.py`), passes the request to a replica
and streams the answer back chunk by chunk. /health and /metrics ask every replica and describe them all."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import StreamingResponse
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString
from pydantic import BaseModel
from ray.exceptions import RayError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

from .. import __version__
from ..api.admin import Health
from ..api.auth import require_api_key
from ..api.middleware import decompressed
from ..api.errors import install_error_handlers
from ..backends.base import EngineStats
from ..config import Settings
from ..errors import APIError
from ..dialects.anthropic import errors as anthropic_errors
from ..dialects.ollama import errors as ollama_errors
from ..dialects.openai import errors as openai_errors
from ..main import error_renderers
from .forward import Forwarded, Head
from .registry import replica_ids

log = logging.getLogger("local_llm_api.ray_serve")

# Routes that the server answers without a key (the playground page, the API description, liveness).
PUBLIC = re.compile(r"^/(|ui|health|openapi\.json|docs|docs/oauth2-redirect|redoc)$")
LOAD = re.compile(r"^/models/(.+)/load$")  # routed like a request for that model: to where Ray places it
FAN_OUT_TIMEOUT = 10.0  # seconds a replica has to describe itself to /health and /metrics
ADDRESSED_TRIES = 5  # times a request addressed to one replica is sent before that replica counts as not answering
REPLICA_HEADER = "x-replica-id"

Send = Callable[..., Awaitable[AsyncIterator[Head | bytes]]]


class DeploymentHealth(BaseModel):
    """The whole deployment: engines' counters summed per model, and each replica's own /health."""

    status: str
    version: str
    replicas: dict[str, Health | None]  # None: the replica did not answer in time
    loaded_models: list[str]
    engines: dict[str, EngineStats]


def routing_hints(body: bytes, default_model: str, encoding: str = "") -> tuple[str, str | None]:
    """(model, conversation key) of a request body (compressed as Codex sends it, or not): the model for
    model-aware routing, and a key for its conversation, for prefix affinity: the client's `prompt_cache_key`
    when it gives one (Codex: its session), else the conversation's start (system prompt and first turn, or the
    prompt's start)."""
    try:
        if encoding in ("zstd", "gzip", "deflate"):
            body = decompressed(body, encoding, 16 * 2**20)  # a hint only: a bigger body goes unhinted
        payload = json.loads(body) if body else None
    except (ValueError, APIError):
        payload = None
    if not isinstance(payload, dict):
        return "", None
    model = payload.get("model") if isinstance(payload.get("model"), str) else default_model
    if isinstance(payload.get("prompt_cache_key"), str) and payload["prompt_cache_key"]:
        text = json.dumps([model, "prompt_cache_key", payload["prompt_cache_key"]])
        return model, hashlib.blake2b(text.encode(), digest_size=12).hexdigest()
    start: Any = None
    for field in ("messages", "input", "prompt"):
        value = payload.get(field)
        if isinstance(value, list) and value:
            start = value[:2]
        elif isinstance(value, str) and value:
            start = value[:2000]
        if start is not None:
            break
    if start is None:
        return model, None
    text = json.dumps([model, payload.get("system"), payload.get("instructions"), start], sort_keys=True, default=str)
    return model, hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


def stream_error(path: str, content_type: str, exc: APIError) -> bytes:
    """The error as the last piece of a stream that had begun, in its API's form."""
    if "ndjson" in content_type:
        return ollama_errors.error_line(exc).encode()
    if re.search(r"^(/api)?/v1/messages(/|$)", path):
        return anthropic_errors.error_event(exc).encode()
    return openai_errors.error_event(exc).encode()


def replica_lost(exc: BaseException) -> APIError:
    log.warning("a replica failed a request: %s: %s", type(exc).__name__, exc)
    return APIError(503, "The replica serving this request stopped or is unavailable; retry the request.",
                    type="server_error", code="replica_unavailable", headers={"Retry-After": "1"})


def create_gateway(settings: Settings, send: Send) -> FastAPI:
    """`send(request, model=..., affinity=..., replica=...)` passes a request to a replica and yields its pieces."""
    app = FastAPI(title="local-llm-api on Ray Serve", version=__version__, openapi_url=None, docs_url=None, redoc_url=None)
    app.state.settings = settings
    install_error_handlers(app, error_renderers())

    async def ask_each(path: str, headers: list[tuple[bytes, bytes]], method: str = "GET",
                       body: bytes = b"") -> dict[str, tuple[Head, bytes] | None]:
        async def ask(replica: str) -> tuple[Head, bytes] | None:
            async def read() -> tuple[Head, bytes]:
                # While Ray's router briefly lacks the addressed replica among its candidates (seen under load),
                # the request lands on another one: only the addressed replica's own answer counts, so ask again.
                for _ in range(ADDRESSED_TRIES):
                    request = Forwarded(method, path, headers=headers, body=body)
                    pieces = [piece async for piece in await send(request, replica=replica)]
                    head = pieces[0]
                    assert isinstance(head, Head)
                    if dict(head.headers).get(REPLICA_HEADER.encode(), b"").decode() == replica:
                        return head, b"".join(p for p in pieces[1:] if isinstance(p, bytes))
                    await asyncio.sleep(0.2)
                raise asyncio.TimeoutError(f"answered by other replicas {ADDRESSED_TRIES} times")
            try:
                return await asyncio.wait_for(read(), FAN_OUT_TIMEOUT)
            except (asyncio.TimeoutError, RayError) as exc:
                log.warning("replica %s did not answer %s: %s", replica, path, exc)
                return None
        replicas = replica_ids()
        return dict(zip(replicas, await asyncio.gather(*(ask(r) for r in replicas)), strict=True))

    @app.get("/health")
    async def health(request: Request) -> DeploymentHealth:
        answers = await ask_each("/health", list(request.headers.raw))
        replicas = {r: Health.model_validate_json(a[1]) if a and a[0].status == 200 else None for r, a in answers.items()}
        engines: dict[str, EngineStats] = {}
        for replica in filter(None, replicas.values()):
            for model, stats in replica.engines.items():
                engines[model] = add_stats(engines[model], stats) if model in engines else stats
        living = [h for h in replicas.values() if h is not None]
        status = "ok" if living and all(h.status == "ok" for h in living) and len(living) == len(replicas) else (
            "degraded" if living else "unavailable")
        return DeploymentHealth(status=status, version=__version__, replicas=replicas, engines=engines,
                                loaded_models=sorted({m for h in living for m in h.loaded_models}))

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        await require_api_key(request)
        answers = await ask_each("/metrics", list(request.headers.raw))  # the replicas check the key too
        return Response(merge_metrics({r: a[1].decode() for r, a in answers.items() if a and a[0].status == 200}),
                        media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.post("/models/{name:path}/unload")
    async def unload(request: Request, name: str) -> Response:
        """Every replica unloads the model; the answer is a replica's that held it (else the first one's)."""
        await require_api_key(request)
        answers = [a for a in (await ask_each(request.url.path, list(request.headers.raw), "POST")).values() if a]
        if not answers:
            raise replica_lost(RuntimeError("no replica answered"))
        head, body = next((a for a in answers if a[0].status == 200), answers[0])
        headers = {k.decode(): v.decode() for k, v in head.headers if k.lower() not in (b"content-length", b"x-request-id")}
        return Response(body, status_code=head.status, headers=headers)

    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"])
    async def forward(request: Request, path: str) -> Response:
        if request.method != "OPTIONS" and not PUBLIC.match(request.url.path):
            await require_api_key(request)  # refused here: an unauthenticated request never reaches a replica
        body = await request.body()
        if len(body) > settings.max_request_bytes:
            raise APIError(413, f"The request body is larger than {settings.max_request_bytes} bytes.",
                           code="request_too_large")
        encoding = request.headers.get("content-encoding", "").strip().lower()
        model, affinity = routing_hints(body, settings.default_model, encoding) if request.method == "POST" else ("", None)
        if request.method == "POST" and (load := LOAD.match(request.url.path)):
            model = load.group(1)
        client = (request.client.host, request.client.port) if request.client else None
        forwarded = Forwarded(request.method, request.url.path, request.url.query.encode(), list(request.headers.raw), body,
                              client)
        try:
            pieces = (await send(forwarded, model=model, affinity=affinity)).__aiter__()
            head = await pieces.__anext__()
        except (RayError, DeploymentUnavailableError, BackPressureError) as exc:
            raise replica_lost(exc) from None
        assert isinstance(head, Head)
        content_type = next((v.decode() for k, v in head.headers if k.lower() == b"content-type"), "")
        response = StreamingResponse(relay(pieces, request.url.path, content_type), status_code=head.status)
        # Ray's proxy adds the request's x-request-id (the same id, which it passed in): not twice.
        response.raw_headers = [(k, v) for k, v in head.headers if k.lower() != b"x-request-id"]
        return response

    return app


async def relay(pieces: AsyncIterator[Head | bytes], path: str, content_type: str) -> AsyncIterator[bytes]:
    try:
        async for piece in pieces:
            if isinstance(piece, bytes):
                yield piece
    except RayError as exc:  # the replica died mid-answer: the stream ends with an error event, not a hang
        yield stream_error(path, content_type, replica_lost(exc))
    finally:
        cancel = getattr(pieces, "cancel", None)
        if cancel is not None:
            cancel()  # the client went away (or the answer ended): the replica stops its sequence


def add_stats(a: EngineStats, b: EngineStats) -> EngineStats:
    """Two replicas' figures for one model: counts and rates add up (the hit rate is recomputed); a median is
    the worse of the two."""
    summed = {name: getattr(a, name) + getattr(b, name) for name, info in EngineStats.model_fields.items()
              if info.annotation in (int, float) and name != "ttft_sum"}
    p50 = [x for x in (a.time_to_first_token_p50, b.time_to_first_token_p50) if x is not None]
    prompt, cached = summed["prompt_tokens_total"], summed["cached_prompt_tokens_total"]
    summed["prefix_cache_hit_rate"] = round(cached / prompt, 4) if prompt else 0.0  # a ratio of the sums
    return EngineStats(**summed, alive=a.alive and b.alive, time_to_first_token_p50=max(p50) if p50 else None,
                       ttft_sum=a.ttft_sum + b.ttft_sum,
                       ttft_buckets={k: a.ttft_buckets.get(k, 0) + b.ttft_buckets.get(k, 0)
                                     for k in a.ttft_buckets.keys() | b.ttft_buckets.keys()})


def merge_metrics(texts: dict[str, str]) -> str:
    """Every replica's samples in one exposition, each with a `replica` label: Prometheus sums them by query
    (`sum without (replica) (...)`), the way it sums the pods of any other service."""
    families: dict[str, tuple[str, str, list[str]]] = {}
    for replica, text in texts.items():
        for family in text_string_to_metric_families(text):
            kind = "unknown" if family.type in ("unknown", "info", "stateset", "gaugehistogram") else family.type
            _, _, samples = families.setdefault(family.name, (kind, family.documentation, []))
            for sample in family.samples:
                labels = {**sample.labels, "replica": replica}
                rendered = ",".join(f'{k}="{escape(v)}"' for k, v in labels.items())
                samples.append(f"{sample.name}{{{rendered}}} {floatToGoString(sample.value)}")
    lines: list[str] = []
    for name, (kind, documentation, samples) in families.items():
        named = f"{name}_total" if kind == "counter" else name  # the text format names a counter by its sample
        lines += [f"# HELP {named} {documentation}", f"# TYPE {named} {kind}", *samples]
    return "\n".join(lines) + "\n"


def escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


