"""Operator routes: /health, the detailed model list, load and unload."""

from __future__ import annotations

import os
import platform
import time

import psutil
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel

from .. import __version__
from ..backends.base import EngineStats
from ..catalog import ModelEntry
from ..manager import ModelManager, ModelState
from ..system import GpuInfo, gpu_info
from .auth import require_api_key
from .errors import ErrorResponse


class SystemInfo(BaseModel):
    platform: str
    python: str
    cpu_count: int
    memory_total_bytes: int
    memory_available_bytes: int
    process_rss_bytes: int


class Health(BaseModel):
    status: str
    version: str
    uptime_seconds: float
    loaded_models: list[str]
    engines: dict[str, EngineStats]
    system: SystemInfo
    gpu: GpuInfo


class ModelInfo(BaseModel):
    id: str
    state: ModelState
    backend: str
    path: str
    repo: str | None = None
    size_bytes: int
    capabilities: list[str]
    context_size: int | None
    keep_alive_seconds: float
    active_requests: int = 0
    loaded_at: float | None = None
    error: str | None = None


class ModelInfoList(BaseModel):
    object: str = "list"
    data: list[ModelInfo]


health_router = APIRouter(tags=["admin"])
router = APIRouter(dependencies=[Depends(require_api_key)], tags=["admin"], responses={c: {"model": ErrorResponse} for c in (400, 401, 404, 503)})


def manager_of(request: Request) -> ModelManager:
    return request.app.state.manager


def info(manager: ModelManager, entry: ModelEntry) -> ModelInfo:
    loaded = manager.loaded.get(entry.name)
    return ModelInfo(
        id=entry.name,
        state=manager.state(entry),
        backend=entry.backend.value,
        path=entry.name if entry.path is None or manager.catalog.inside_root(entry.path) else str(entry.path),
        repo=entry.repo,
        size_bytes=entry.size_bytes,
        capabilities=list(entry.capabilities),
        keep_alive_seconds=manager.keep_alive_of(entry),
        context_size=loaded.backend.facts.context_size if loaded else (manager.settings.context_size or None),
        active_requests=loaded.in_flight if loaded else 0,
        loaded_at=loaded.loaded_at if loaded else None,
        error=manager.failures.get(entry.name),
    )


@health_router.get("/health")
async def health(request: Request) -> Health:
    memory = psutil.virtual_memory()
    return Health(
        status="ok",
        version=__version__,
        uptime_seconds=round(time.time() - request.app.state.started_at, 1),
        loaded_models=list(manager_of(request).loaded),
        engines={name: model.backend.stats() for name, model in manager_of(request).loaded.items()},
        system=SystemInfo(
            platform=platform.platform(),
            python=platform.python_version(),
            cpu_count=os.cpu_count() or 1,
            memory_total_bytes=memory.total,
            memory_available_bytes=memory.available,
            process_rss_bytes=psutil.Process().memory_info().rss,
        ),
        gpu=gpu_info(),
    )


@router.get("/models")
async def models(request: Request) -> ModelInfoList:
    manager = manager_of(request)
    return ModelInfoList(data=[info(manager, e) for e in manager.discover()])


@router.post("/models/{name:path}/load")
async def load_model(name: str, request: Request) -> ModelInfo:
    manager = manager_of(request)
    model = await manager.load(name)
    return info(manager, model.entry)


@router.post("/models/{name:path}/unload")
async def unload_model(name: str, request: Request) -> ModelInfo:
    manager = manager_of(request)
    entry = await manager.unload(name)
    return info(manager, entry)
