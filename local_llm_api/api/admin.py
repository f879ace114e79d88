"""Operator routes: /health, the detailed model list, load and unload."""

from __future__ import annotations

import asyncio
import os
import platform
import time

import psutil
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from .. import __version__
from ..backends.base import EngineStats
from ..catalog import ModelEntry
from ..errors import ErrorResponse
from ..manager import ModelManager, ModelState
from ..pull import PullStatus
from ..system import GpuInfo, gpu_info
from .auth import require_admin_key, require_api_key


class SystemInfo(BaseModel):
    platform: str
    python: str
    cpu_count: int
    memory_total_bytes: int
    memory_available_bytes: int
    process_rss_bytes: int
    process_id: int  # the server's process (under Ray Serve, the replica's)


class Health(BaseModel):
    status: str
    version: str
    uptime_seconds: float
    loaded_models: list[str]
    engines: dict[str, EngineStats]
    system: SystemInfo
    gpu: GpuInfo


class DownloadInfo(BaseModel):
    """A pull from the Hugging Face Hub: `completed` of `total` bytes (a GGUF file) or files (a folder)."""

    repo: str
    state: str
    completed: int
    total: int | None
    unit: str
    error: str | None = None


class ToolCallFormat(BaseModel):
    family: str = Field(description="The model family whose tool-call format the model writes (see docs/models/tool-formats.md).")
    how: str = Field(description="detected (from the chat template), derived (read off a rendered call), configured "
                                 "(MODELS_CONFIG's tool_format) or default (Hermes, for a template that renders no calls).")


class ModelInfo(BaseModel):
    id: str
    state: ModelState
    backend: str
    path: str
    repo: str | None = None
    size_bytes: int
    capabilities: list[str]
    tool_format: ToolCallFormat | None = None  # chat models: how their tool calls are written and read
    context_size: int | None
    memory_bytes: int | None = Field(None, description="What it takes (or would take) loaded, as MEMORY_BUDGET counts "
                                     "it: weights plus the KV cache of every slot at KV_CACHE_TYPE (and, for a GGUF "
                                     "model without flash attention, a step's attention scores).")
    keep_alive_seconds: float
    active_requests: int = 0
    loaded_at: float | None = None
    error: str | None = None
    download: DownloadInfo | None = None


class PullRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    repo: str = Field(min_length=3, pattern=r"^[\w.-]+/[\w.-]+$", description="Hugging Face repo id, e.g. org/name")
    file: str | None = Field(None, description="The .gguf file of a GGUF repo; left out: the only one, or the whole folder")
    revision: str | None = None


class ModelInfoList(BaseModel):
    object: str = "list"
    data: list[ModelInfo]


health_router = APIRouter(tags=["admin"])
router = APIRouter(dependencies=[Depends(require_api_key)], tags=["admin"], responses={c: {"model": ErrorResponse} for c in (400, 401, 404, 503)})


def manager_of(request: Request) -> ModelManager:
    return request.app.state.manager


def download_info(pull: PullStatus | None) -> DownloadInfo | None:
    if pull is None:
        return None
    return DownloadInfo(repo=pull.repo, state=pull.state, completed=pull.completed, total=pull.total, unit=pull.unit,
                        error=pull.error)


def pending(pull: PullStatus) -> ModelInfo:
    """A model still downloading (or failed to), before discovery finds it in MODEL_DIR."""
    return ModelInfo(id=pull.name, state=ModelState.downloading if pull.state == "downloading" else ModelState.failed,
                     backend="auto", repo=pull.repo, path=pull.name, size_bytes=0, capabilities=[], context_size=None,
                     keep_alive_seconds=0, error=pull.error, download=download_info(pull))


def info(manager: ModelManager, entry: ModelEntry) -> ModelInfo:
    loaded = manager.loaded.get(entry.name)
    try:
        fmt = manager.tool_format(entry)
    except (OSError, ValueError):  # a file that cannot be read is listed with its error, not failed on
        fmt = None
    return ModelInfo(
        id=entry.name,
        state=manager.state(entry),
        backend=entry.backend.value,
        path=entry.name if entry.path is None or manager.catalog.inside_root(entry.path) else str(entry.path),
        repo=entry.repo,
        size_bytes=entry.size_bytes,
        capabilities=manager.capabilities(entry),
        tool_format=ToolCallFormat(family=fmt.family, how=fmt.how) if fmt is not None else None,
        keep_alive_seconds=manager.keep_alive_of(entry),
        context_size=manager.context_length(entry),
        memory_bytes=manager.footprint(entry),
        active_requests=loaded.in_flight if loaded else 0,
        loaded_at=loaded.loaded_at if loaded else None,
        error=manager.failures.get(entry.name),
        download=download_info(manager.pulls.get(entry.name)),
    )


@health_router.api_route("/api/hello", methods=["GET", "HEAD"], include_in_schema=False)
async def hello() -> dict[str, str]:
    """Claude Code's connectivity check (it warms a connection with `HEAD /api/hello`)."""
    return {"message": "hello"}


@health_router.get("/health")
async def health(request: Request) -> Health:
    memory = psutil.virtual_memory()
    engines = {name: model.backend.stats() for name, model in manager_of(request).loaded.items()}
    return Health(
        status="ok" if all(e.alive for e in engines.values()) else "degraded",  # a stopped engine: unload and reload it
        version=__version__,
        uptime_seconds=round(time.time() - request.app.state.started_at, 1),
        loaded_models=list(manager_of(request).loaded),
        engines=engines,
        system=SystemInfo(
            platform=platform.platform(),
            python=platform.python_version(),
            cpu_count=os.cpu_count() or 1,
            memory_total_bytes=memory.total,
            memory_available_bytes=memory.available,
            process_rss_bytes=psutil.Process().memory_info().rss,
            process_id=os.getpid(),
        ),
        gpu=gpu_info(),
    )


@router.get("/models")
async def models(request: Request) -> ModelInfoList:
    manager = manager_of(request)
    listed = await asyncio.to_thread(lambda: [info(manager, e) for e in manager.discover()])
    names = {m.id for m in listed}
    return ModelInfoList(data=listed + [pending(p) for name, p in manager.pulls.items() if name not in names])


@router.post("/models/pull", status_code=202, dependencies=[Depends(require_admin_key)])
async def pull_model(body: PullRequest, request: Request) -> ModelInfo:
    """Download a model from the Hugging Face Hub into MODEL_DIR; follow its progress in GET /models."""
    pull = await manager_of(request).pull(body.repo, body.file, body.revision)
    return pending(pull)


@router.post("/models/{name:path}/load", dependencies=[Depends(require_admin_key)])
async def load_model(name: str, request: Request) -> ModelInfo:
    manager = manager_of(request)
    model = await manager.load(name)
    return info(manager, model.entry)


@router.post("/models/{name:path}/unload", dependencies=[Depends(require_admin_key)])
async def unload_model(name: str, request: Request) -> ModelInfo:
    manager = manager_of(request)
    entry = await manager.unload(name)
    return info(manager, entry)
