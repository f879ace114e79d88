"""Ollama's model routes: /api/version, /api/tags, /api/show, /api/ps, /api/pull (from the Hugging Face Hub),
/api/delete and /api/copy (within MODEL_DIR, never outside). Models are listed as `<name>:latest`."""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ...api.auth import require_admin_key, require_api_key
from ..base import JSONBodyRoute
from ...catalog import ModelEntry
from ...errors import APIError, invalid_request
from ...manager import LoadedModel, ModelManager
from ...model_files import ModelFileFacts, copy, describe, digest, remove
from ...pull import PullStatus
from .errors import error_line
from .protocol import (
    CopyRequest,
    Details,
    ErrorResponse,
    ListedModel,
    ModelName,
    ProgressLine,
    PsResponse,
    PullRequest,
    RunningModel,
    ShowResponse,
    TagsResponse,
    VersionResponse,
    timestamp,
)
from .routes import ERRORS
from .translate import listed_name, model_name

# The Ollama API version these routes follow; apps gate features (tools, structured output) on it.
OLLAMA_API_VERSION = "0.13.0"
PULL_POLL_SECONDS = 0.25
NEVER = 4102444800.0  # 2100-01-01: what /api/ps shows for a model kept loaded

version_router = APIRouter(tags=["ollama"])  # no key, like /health: apps probe it before anything else
router = APIRouter(dependencies=[Depends(require_api_key)], responses=ERRORS, tags=["ollama"], route_class=JSONBodyRoute)


def _manager(request: Request) -> ModelManager:
    return request.app.state.manager


@version_router.get("/version")
async def version() -> VersionResponse:
    return VersionResponse(version=OLLAMA_API_VERSION)


def _details(facts: ModelFileFacts) -> Details:
    return Details(format=facts.format, family=facts.family, families=[facts.family] if facts.family else None,
                   parameter_size=facts.parameter_size, quantization_level=facts.quantization)


def _listed(entry: ModelEntry, facts: ModelFileFacts) -> ListedModel:
    name = listed_name(entry.stem)
    return ListedModel(name=name, model=name, modified_at=timestamp(entry.created), size=entry.size_bytes,
                       digest=digest(entry), details=_details(facts))


async def _describe_all(entries: list[ModelEntry]) -> list[ModelFileFacts]:
    return await asyncio.to_thread(lambda: [describe(e) for e in entries])


@router.get("/tags")
async def tags(request: Request) -> TagsResponse:
    entries = await asyncio.to_thread(_manager(request).discover)
    facts = await _describe_all(entries)
    return TagsResponse(models=[_listed(e, f) for e, f in zip(entries, facts)])


@router.get("/ps")
async def ps(request: Request) -> PsResponse:
    manager = _manager(request)
    loaded = list(manager.loaded.values())
    facts = await _describe_all([m.entry for m in loaded])
    return PsResponse(models=[_running(manager, m, f) for m, f in zip(loaded, facts)])


def _running(manager: ModelManager, model: LoadedModel, facts: ModelFileFacts) -> RunningModel:
    expires = manager.expires_at(model)
    settings = manager.settings
    on_gpu = model.backend.kind == "llama-cpp" and settings.gpu_layers != 0 and _gpu_offload()
    return RunningModel(**_listed(model.entry, facts).model_dump(), expires_at=timestamp(NEVER if math.isinf(expires) else expires),
                        size_vram=model.entry.size_bytes if on_gpu else 0, context_length=model.backend.facts.context_size)


def _gpu_offload() -> bool:
    from ...system import gpu_info

    return gpu_info().llama_cpp_gpu_offload and bool(gpu_info().devices)


@router.post("/show")
async def show(req: ModelName, request: Request) -> ShowResponse:
    manager = _manager(request)
    entry = manager.resolve(model_name(req.model))
    facts = await asyncio.to_thread(describe, entry)
    loaded = manager.loaded.get(entry.name)
    settings = manager.settings
    # The template the server really uses: a declared override, the model's own, or the family fallback once loaded.
    template = (entry.spec.chat_template if entry.spec else None) or (loaded.backend.facts.chat_template if loaded else None)
    template = template or facts.chat_template or ""
    context = loaded.backend.facts.context_size if loaded else (entry.spec.context_size if entry.spec else None) or settings.context_size
    parameters = {"temperature": settings.temperature, "top_k": settings.top_k, "top_p": settings.top_p,
                  "min_p": settings.min_p, "repeat_penalty": settings.repeat_penalty, "num_ctx": context or facts.context_length}
    parameter_text = "\n".join(f"{k:<15}{v}" for k, v in parameters.items() if v is not None)
    modelfile = "\n".join([f"# Modelfile of {listed_name(entry.stem)}, as served by local-llm-api",
                           f"FROM {entry.path or entry.repo}", f'TEMPLATE """{template}"""',
                           *(f"PARAMETER {k} {v}" for k, v in parameters.items() if v is not None)])
    # Ollama's names: completion (chat and generate), tools, thinking, embedding.
    features = await asyncio.to_thread(manager.capabilities, entry)
    capabilities = (["completion"] + [c for c in features if c in ("tools", "thinking", "vision")] if "chat" in features
                    else ["embedding"] if entry.embedding_only else [])
    return ShowResponse(modelfile=modelfile, parameters=parameter_text, template=template, details=_details(facts),
                        model_info=facts.metadata, capabilities=capabilities, modified_at=timestamp(entry.created))


# ---------------------------------------------------------------- pull, delete, copy

_HUB_PREFIXES = ("https://huggingface.co/", "https://hf.co/", "huggingface.co/", "hf.co/")


def hub_reference(name: str) -> tuple[str, str | None, str | None]:
    """An Ollama pull name as a Hub repo, and a GGUF file or quantisation: `hf.co/org/repo:Q4_K_M`, `org/repo`,
    `org/repo:file.gguf`."""
    for prefix in _HUB_PREFIXES:
        name = name.removeprefix(prefix)
    repo, _, tag = name.partition(":")
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo):
        raise invalid_request(f"'{name}' is not a Hugging Face repo: this server pulls from the Hugging Face Hub, so name "
                              "a repo as org/name or hf.co/org/name[:QUANT] (Ollama's own library is not reachable from here).",
                              "model")
    if not tag or tag == "latest":
        return repo, None, None
    return (repo, tag, None) if tag.endswith(".gguf") else (repo, None, tag)


def _progress(pull: PullStatus) -> ProgressLine:
    name_digest = hashlib.sha256(f"{pull.repo}/{pull.name}".encode()).hexdigest()
    return ProgressLine(status=f"pulling {pull.name}", digest=f"sha256:{name_digest}", total=pull.total, completed=pull.completed)


async def _pull_lines(pull: PullStatus) -> AsyncIterator[str]:
    yield ProgressLine(status="pulling manifest").model_dump_json() + "\n"
    last: tuple[int, int | None] | None = None
    while pull.state == "downloading":
        if (pull.completed, pull.total) != last:
            last = (pull.completed, pull.total)
            yield _progress(pull).model_dump_json() + "\n"
        await asyncio.sleep(PULL_POLL_SECONDS)  # the download runs in a worker thread; its counters are read here
    if pull.state == "failed":
        yield error_line(APIError(502, f"pulling '{pull.repo}' failed: {pull.error}", type="server_error"))
        return
    yield _progress(pull).model_dump_json() + "\n"
    for status in ("verifying sha256 digest", "writing manifest", "success"):
        yield ProgressLine(status=status).model_dump_json() + "\n"


ADMIN = [Depends(require_admin_key)]


@router.post("/pull", responses={200: {"content": {"application/x-ndjson": {}}}}, dependencies=ADMIN)
async def pull(req: PullRequest, request: Request) -> Response:
    """Download from the Hugging Face Hub into MODEL_DIR; progress as Ollama's status lines."""
    if req.insecure:
        raise invalid_request("'insecure' is not supported: the Hub is reached over HTTPS (or HF_ENDPOINT).", "insecure")
    repo, file, quant = hub_reference(req.model)
    status = await _manager(request).pull(repo, file, None, quant)
    if req.stream:
        return StreamingResponse(_pull_lines(status), media_type="application/x-ndjson")
    while status.state == "downloading":
        await asyncio.sleep(PULL_POLL_SECONDS)
    if status.state == "failed":
        raise APIError(502, f"pulling '{repo}' failed: {status.error}", type="server_error")
    return JSONResponse(ProgressLine(status="success").model_dump())


def _removable(manager: ModelManager, entry: ModelEntry) -> Path:
    if entry.spec is not None or entry.path is None or not manager.catalog.inside_root(entry.path):
        raise invalid_request(f"Model '{entry.name}' is declared in MODELS_CONFIG or lives outside MODEL_DIR; remove it "
                              "there, not through the API.", "model")
    return entry.path


@router.delete("/delete", responses={200: {"description": "Deleted"}, 404: {"model": ErrorResponse}}, dependencies=ADMIN)
async def delete(req: ModelName, request: Request) -> Response:
    manager = _manager(request)
    entry = manager.resolve(model_name(req.model), exact=True)  # as Ollama: the name itself, never a prefix
    path = _removable(manager, entry)
    if entry.name in manager.loaded:
        await manager.unload(entry.name)  # waits for its requests in flight
    await asyncio.to_thread(remove, path)
    return Response(status_code=200)


@router.post("/copy", responses={200: {"description": "Copied"}}, dependencies=ADMIN)
async def copy_model(req: CopyRequest, request: Request) -> Response:
    manager = _manager(request)
    entry = manager.resolve(model_name(req.source), exact=True)
    source = entry.path
    if source is None or not source.exists():
        raise invalid_request(f"Model '{entry.name}' has no local files yet (a Hub repo not downloaded); load it first.", "source")
    name = model_name(req.destination)
    if not re.fullmatch(r"[\w.-]+(/[\w.-]+)*", name) or ".." in name.split("/"):
        raise invalid_request(f"'{req.destination}' is not a valid model name: letters, digits, '.', '-', '_' and '/' "
                              "between folders.", "destination")
    target = manager.root / (name if source.is_dir() or name.endswith(".gguf") else f"{name}.gguf")
    if os.path.lexists(target) or any(e.stem == name.removesuffix(".gguf") for e in manager.discover()):
        raise invalid_request(f"A model named '{name}' already exists.", "destination")  # a dangling link too
    if not manager.catalog.inside_root(target.parent):  # a folder on the way links out of MODEL_DIR
        raise invalid_request(f"'{req.destination}' leads outside MODEL_DIR (through a symbolic link); copies are written "
                              "inside it only.", "destination")
    await asyncio.to_thread(copy, source, target)
    return Response(status_code=200)
