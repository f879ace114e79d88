"""The model manager: which models exist, which are loaded, and handing a loaded one to each request.

Models are discovered in MODEL_DIR on every look-up (cheap, and a file dropped in appears at once).
A model is loaded by one task that every interested request awaits; it is unloaded only once no
request is using it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from .api.errors import APIError, invalid_request, model_not_found
from .backends.base import Backend, ModelLoadError
from .config import BackendChoice, Settings

log = logging.getLogger("local_llm_api.manager")


class ModelState(str, Enum):
    available = "available"
    loading = "loading"
    loaded = "loaded"
    failed = "failed"


@dataclass(frozen=True)
class ModelEntry:
    """A model found on disk."""

    name: str  # the file or folder name, relative to MODEL_DIR
    path: Path
    backend: BackendChoice
    size_bytes: int
    created: int

    @property
    def stem(self) -> str:
        return self.name.removesuffix(".gguf")


@dataclass
class LoadedModel:
    entry: ModelEntry
    backend: Backend
    loaded_at: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.time)
    in_flight: int = 0


class ModelManager:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root = settings.model_dir.resolve()
        self.loaded: dict[str, LoadedModel] = {}
        self._loading: dict[str, asyncio.Task[LoadedModel]] = {}
        self.failures: dict[str, str] = {}
        self._idle = asyncio.Condition()

    # ---------------------------------------------------------------- discovery

    def discover(self) -> list[ModelEntry]:
        if not self.root.is_dir():
            return []
        entries = []
        for path in sorted(self.root.rglob("*.gguf")):
            if not self._inside_root(path) or not path.is_file():
                continue  # symlinks that lead out of MODEL_DIR are not ours to serve
            stat = path.stat()
            name = path.relative_to(self.root).as_posix()
            entries.append(ModelEntry(name, path, BackendChoice.llama_cpp, stat.st_size, int(stat.st_mtime)))
        return entries

    def _inside_root(self, path: Path) -> bool:
        return path.resolve().is_relative_to(self.root)

    def resolve(self, name: str | None) -> ModelEntry:
        """Find a model by file name, stem, or unique prefix of its stem."""
        name = name or self.default_model_name()
        if not name:
            raise invalid_request("No model was named and DEFAULT_MODEL is not set.", param="model")
        if ".." in Path(name).parts or name.startswith(("/", "\\")) or "\\" in name or "\x00" in name:
            raise invalid_request(f"Invalid model name '{name}': names are relative to MODEL_DIR.", "model", "invalid_model_name")
        entries = self.discover()
        for matches in (
            [e for e in entries if name in (e.name, e.stem)],
            [e for e in entries if e.stem.startswith(name) or e.name.startswith(name)],
        ):
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                names = ", ".join(e.stem for e in matches)
                raise invalid_request(f"'{name}' matches several models ({names}); name one exactly.", "model", "ambiguous_model")
        raise model_not_found(name)

    def default_model_name(self) -> str:
        if self.settings.default_model:
            return self.settings.default_model
        entries = self.discover()
        return entries[0].name if len(entries) == 1 else ""

    def state(self, entry: ModelEntry) -> ModelState:
        if entry.name in self.loaded:
            return ModelState.loaded
        if entry.name in self._loading:
            return ModelState.loading
        if entry.name in self.failures:
            return ModelState.failed
        return ModelState.available

    # ---------------------------------------------------------------- load / unload

    async def load(self, name: str | None) -> LoadedModel:
        entry = self.resolve(name)
        if entry.name in self.loaded:
            return self.loaded[entry.name]
        return await asyncio.shield(self._load_task(entry))

    def _load_task(self, entry: ModelEntry) -> asyncio.Task[LoadedModel]:
        """The one task loading this model, started if need be; everyone interested awaits it."""
        task = self._loading.get(entry.name)
        if task is None:
            task = asyncio.create_task(self._load(entry))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())  # waiters may all have timed out
            self._loading[entry.name] = task
        return task

    async def _load(self, entry: ModelEntry) -> LoadedModel:
        started = time.perf_counter()
        log.info("loading model %s", entry.name)
        try:
            backend = await asyncio.to_thread(self._create_backend, entry)
        except ModelLoadError as exc:
            self.failures[entry.name] = str(exc)
            log.error("loading %s failed: %s", entry.name, exc)
            raise APIError(400, f"Model '{entry.name}' could not be loaded: {exc}", param="model", code="model_load_failed") from exc
        finally:
            self._loading.pop(entry.name, None)
        self.failures.pop(entry.name, None)
        model = LoadedModel(entry, backend)
        self.loaded[entry.name] = model
        log.info("loaded model %s in %.2fs", entry.name, time.perf_counter() - started)
        return model

    def _create_backend(self, entry: ModelEntry) -> Backend:
        from .backends.llama_cpp import LlamaCppBackend

        return LlamaCppBackend(entry.path, self.settings)

    async def unload(self, name: str) -> ModelEntry:
        entry = self.resolve(name)
        model = self.loaded.pop(entry.name, None)
        if model is None:
            raise invalid_request(f"Model '{entry.name}' is not loaded.", "model", "model_not_loaded")
        async with self._idle:  # never free a model a request is still using
            await self._idle.wait_for(lambda: model.in_flight == 0)
        await model.backend.close()
        log.info("unloaded model %s", entry.name)
        return entry

    async def close(self) -> None:
        for task in list(self._loading.values()):
            task.cancel()
        for name in list(self.loaded):
            await self.unload(name)

    # ---------------------------------------------------------------- per request

    @asynccontextmanager
    async def use(self, name: str | None) -> AsyncIterator[LoadedModel]:
        """The loaded model for one request, loading it first when allowed; counted as busy meanwhile."""
        entry = self.resolve(name)
        model = self.loaded.get(entry.name)
        if model is None:
            model = await self._wait_for_load(entry)
        model.in_flight += 1
        model.last_used = time.time()
        try:
            yield model
        finally:
            model.in_flight -= 1
            model.last_used = time.time()
            async with self._idle:
                self._idle.notify_all()

    async def _wait_for_load(self, entry: ModelEntry) -> LoadedModel:
        loading = entry.name in self._loading
        if not loading and not self.settings.auto_load:
            raise APIError(
                400,
                f"Model '{entry.name}' is not loaded and AUTO_LOAD is off; load it with POST /models/{entry.stem}/load.",
                param="model",
                code="model_not_loaded",
            )
        try:
            task = self._load_task(entry)
            return await asyncio.wait_for(asyncio.shield(task), timeout=self.settings.model_load_wait_seconds)
        except asyncio.TimeoutError:  # not the builtin on Python 3.10
            raise APIError(
                503,
                f"Model '{entry.name}' is still loading; try again shortly.",
                type="server_error",
                param="model",
                code="model_loading",
                headers={"Retry-After": "5"},
            ) from None
