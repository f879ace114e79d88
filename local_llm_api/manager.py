"""The model manager: which models are loaded, loading one for each request that needs it, and making
room under the limits.

What exists comes from the catalog (`catalog.py`), looked up on every request, in a worker thread (cheap, and a
model dropped into MODEL_DIR appears at once). A model is loaded by one task that every interested request
awaits, while the other models keep serving. Before a load, the least recently used idle models are
unloaded until the new one fits MAX_LOADED_MODELS and MEMORY_BUDGET; a model that serves a request is
never unloaded. With KEEP_ALIVE, models idle that long are unloaded in the background.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from .backends.base import Backend, ModelLoadError
from .backends.llama_cpp import KV_TYPES, attention_scratch_per_token, flash_attention, gpu_layers_of, per_slot_context
from .catalog import Capability, Catalog, ModelEntry
from .config import BackendChoice, Settings
from .errors import APIError, invalid_request, model_not_found, not_found
from .model_files import describe
from .prompting.chat_template import ChatTemplateError, template_info
from .prompting.reasoning import reasoning_format
from .prompting.tool_families import ToolFormat, tool_format
from .pull import PullError, PullStatus, download, plan

log = logging.getLogger("local_llm_api.manager")

KEEP_ALIVE_CHECK_SECONDS = 1.0


class ModelState(str, Enum):
    downloading = "downloading"
    available = "available"
    loading = "loading"
    loaded = "loaded"
    failed = "failed"


@dataclass
class LoadedModel:
    entry: ModelEntry
    backend: Backend
    loaded_at: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.time)
    in_flight: int = 0
    memory_bytes: int = 0  # what it counts toward MEMORY_BUDGET: weights and KV caches (0: its weights)

    def __post_init__(self) -> None:
        self.memory_bytes = self.memory_bytes or self.entry.size_bytes
    keep_alive: float | None = None  # seconds idle before unloading, set by a request (Ollama's keep_alive); None: configured


class ModelManager:
    def __init__(self, settings: Settings, catalog: Catalog | None = None) -> None:
        self.settings = settings
        self.catalog = catalog or Catalog.from_settings(settings)
        self.root = self.catalog.root
        self.loaded: dict[str, LoadedModel] = {}
        self._loading: dict[str, asyncio.Task[LoadedModel]] = {}
        self.failures: dict[str, str] = {}
        self._idle = asyncio.Condition()
        self._room = asyncio.Lock()  # one load at a time decides what to unload
        self._keep_alive_task: asyncio.Task[None] | None = None
        self.pulls: dict[str, PullStatus] = {}  # by the name the pulled model will have
        self._pull_tasks: set[asyncio.Task[None]] = set()

    # ---------------------------------------------------------------- discovery

    def discover(self) -> list[ModelEntry]:
        return self.catalog.entries()

    def resolve(self, name: str | None, *, aliased: bool = True, exact: bool = False) -> ModelEntry:
        """Find a model by file name, stem, or unique prefix of its stem; else by MODEL_ALIASES. `exact`: by its
        file name or stem only (what deletes and copies name: a prefix must never delete another model)."""
        name = name or self.default_model_name()
        if not name:
            raise invalid_request("No model was named and DEFAULT_MODEL is not set.", param="model")
        if ".." in Path(name).parts or name.startswith(("/", "\\")) or "\\" in name or "\x00" in name:
            # No model can have such a name: not found (a 404, as for any unknown name), and said why.
            raise not_found(f"Invalid model name '{name}': names are relative to MODEL_DIR.", "model", "invalid_model_name")
        entries = self.discover()
        for matches in (
            [e for e in entries if name in (e.name, e.stem)],
            [] if exact else [e for e in entries if e.stem.startswith(name) or e.name.startswith(name)],
        ):
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                names = ", ".join(e.stem for e in matches)
                raise invalid_request(f"'{name}' matches several models ({names}); name one exactly.", "model", "ambiguous_model")
        why = self.catalog.unreadable.get(name)
        if why is not None:
            raise not_found(f"The model '{name}' cannot be read by this server ({why}).", "model", "model_unreadable")
        target = next((model for pattern, model in self.settings.aliases
                       if aliased and not exact and fnmatch.fnmatchcase(name, pattern)), None)
        if target is not None:
            return self.resolve(target, aliased=False)
        raise model_not_found(name)

    def _loaded_by_name(self, name: str | None) -> ModelEntry | None:
        """The entry of a loaded model named exactly (its file is still there): the catalog's walk of MODEL_DIR, a
        worker thread's hop and a share of the interpreter that the engines' threads want, spared on each request."""
        model = self.loaded.get(name or self.settings.default_model or self.settings.transformers_default_model)
        if model is None or (model.entry.path is not None and not model.entry.path.exists()):
            return None
        return model.entry

    def default_model_name(self) -> str:
        if self.settings.default_model or self.settings.transformers_default_model:
            return self.settings.default_model or self.settings.transformers_default_model
        entries = self.discover()
        return entries[0].name if len(entries) == 1 else ""

    def state(self, entry: ModelEntry) -> ModelState:
        if self.downloading(entry.name):
            return ModelState.downloading
        if entry.name in self.loaded:
            return ModelState.loaded
        if entry.name in self._loading:
            return ModelState.loading
        if entry.name in self.failures:
            return ModelState.failed
        return ModelState.available

    # ---------------------------------------------------------------- load / unload

    async def load(self, name: str | None) -> LoadedModel:
        entry = await asyncio.to_thread(self.resolve, name)  # reads MODEL_DIR: off the event loop
        self._refuse_while_downloading(entry)
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
        try:
            async with self._room:
                needed = await self._make_room(entry)
                log.info("loading model %s (%s)", entry.name, entry.backend.value)
                backend = await asyncio.to_thread(self._create_backend, entry)
        except APIError:
            raise  # no room under the limits: the model itself is fine
        except Exception as exc:  # a model library may raise anything on a bad model; the server stays up
            reason = str(exc) if isinstance(exc, ModelLoadError) else f"{type(exc).__name__}: {exc}"
            self.failures[entry.name] = reason
            log.error("loading %s failed: %s", entry.name, reason)
            raise APIError(400, f"Model '{entry.name}' could not be loaded: {reason}", param="model", code="model_load_failed") from exc
        finally:
            self._loading.pop(entry.name, None)
        self.failures.pop(entry.name, None)
        model = LoadedModel(entry, backend, memory_bytes=needed)
        self.loaded[entry.name] = model
        log.info("loaded model %s in %.2fs", entry.name, time.perf_counter() - started)
        return model

    def _create_backend(self, entry: ModelEntry) -> Backend:
        if entry.backend == BackendChoice.llama_cpp:
            from .backends.llama_cpp import LlamaCppBackend

            from_hub = entry.repo is not None and entry.spec is not None and (entry.spec.file or "").endswith(".gguf")
            if (entry.path is None or not entry.path.is_file()) and not from_hub:
                raise ModelLoadError("the llama.cpp backend serves .gguf files; declare `path` to one, or `repo` with `file`")
            return LlamaCppBackend(entry, self.settings)
        if entry.backend == BackendChoice.sentence_transformers:
            from .backends.sentence_transformers import SentenceTransformersBackend

            return SentenceTransformersBackend(entry, self.settings)
        if entry.backend == BackendChoice.cross_encoder:
            from .backends.cross_encoder import CrossEncoderBackend

            return CrossEncoderBackend(entry, self.settings)
        from .backends.transformers_lm import TransformersBackend

        return TransformersBackend(entry, self.settings)

    # ---------------------------------------------------------------- limits

    def _kv_value_bytes(self, entry: ModelEntry) -> float:
        if entry.backend == BackendChoice.llama_cpp:
            return KV_TYPES[self.settings.kv_cache_type][1]  # KV_CACHE_TYPE: f16 unless set
        return 2 if self.settings.transformers_dtype in ("float16", "bfloat16") else 4  # auto on CPU: float32

    def context_length(self, entry: ModelEntry) -> int | None:
        """The context a request gets on this model (per slot): the loaded model's, else what loading it would give.
        Reads the model's header: call it off the event loop."""
        loaded = self.loaded.get(entry.name)
        if loaded is not None:
            return loaded.backend.facts.context_size
        if "chat" not in entry.capabilities:
            return None
        facts = describe(entry)
        requested = (entry.spec.context_size if entry.spec else None) or self.settings.context_size
        trained = facts.context_length or 0
        if entry.backend == BackendChoice.llama_cpp:
            return per_slot_context(requested, trained, math.ceil(facts.kv_values_per_token * self._kv_value_bytes(entry)),
                                    entry.size_bytes, self.settings, entry.name,
                                    self._attention_scratch(entry)) if trained else requested or None
        return min(requested or trained, trained or 1 << 62) or None

    def chat_template(self, entry: ModelEntry) -> str | None:
        """The template a model's chats use: the loaded model's, else the declared one, else the file's own. Reads
        the model's header: call it off the event loop."""
        loaded = self.loaded.get(entry.name)
        if loaded is not None:
            return loaded.backend.facts.chat_template
        return (entry.spec.chat_template if entry.spec else None) or describe(entry).chat_template

    def capabilities(self, entry: ModelEntry) -> list[str]:
        """What a model does (chat, completion, embedding, rerank), `tools` for every chat model (a template that
        renders no tools gets them in a system prompt), `vision` when it reads images, and `thinking` when its chat
        template marks reasoning. Reads the model's header."""
        found = list(entry.capabilities)
        if "chat" in found:
            found.append("tools")
            loaded = self.loaded.get(entry.name)
            if loaded.backend.vision if loaded is not None else describe(entry).vision:
                found.append("vision")
        template = self.chat_template(entry) if "chat" in found else None
        if template:
            try:
                info = template_info(template)
            except ChatTemplateError:
                return found
            if reasoning_format(info, entry.spec.reasoning if entry.spec else None) is not None:
                found.append("thinking")
        return found

    def tool_format(self, entry: ModelEntry) -> ToolFormat | None:
        """The tool-call format a chat model's answers are read in: MODELS_CONFIG's `tool_format`, else the family
        its chat template shows. Reads the model's header."""
        if "chat" not in entry.capabilities:
            return None
        return tool_format(self.chat_template(entry), entry.spec.tool_format if entry.spec else None)

    def footprint(self, entry: ModelEntry) -> int:
        """Bytes a model takes once loaded: its weights, and for a generative model the KV cache of every slot
        (allocated up front by llama.cpp, plus its embedding context; grown on demand by Transformers, counted at
        its most) and, without flash attention, a step's attention scores. Reads the model's header: call it off
        the event loop."""
        if "chat" not in entry.capabilities:
            return entry.size_bytes
        per_slot = self.context_length(entry) or 0
        slots = self.settings.parallel_slots + (1 if entry.backend == BackendChoice.llama_cpp else 0)  # +1: embeddings
        kv = per_slot * slots * describe(entry).kv_values_per_token * self._kv_value_bytes(entry)
        return entry.size_bytes + math.ceil(kv) + per_slot * self._attention_scratch(entry)

    def _attention_scratch(self, entry: ModelEntry) -> int:
        """A GGUF model's attention scores without flash attention, per token of a slot's context (0 with it)."""
        if entry.backend != BackendChoice.llama_cpp:
            return 0
        facts = describe(entry)
        requested = (entry.spec.context_size if entry.spec else None) or self.settings.context_size
        attention = flash_attention(self.settings, gpu_layers_of(entry, self.settings), requested or facts.context_length or 0)
        return attention_scratch_per_token(facts.metadata, self.settings, attention)

    async def _make_room(self, entry: ModelEntry) -> int:
        """Unload least recently used idle models until `entry` fits the limits, or refuse with 503; return what the
        model will count toward MEMORY_BUDGET."""
        settings = self.settings
        budget = int(settings.memory_budget)
        needed = await asyncio.to_thread(self.footprint, entry) if budget else entry.size_bytes
        if budget and needed > budget:
            raise APIError(400, f"Model '{entry.name}' needs {needed} bytes ({entry.size_bytes} of weights, the rest KV cache "
                           f"for {settings.parallel_slots} slots) and MEMORY_BUDGET is {budget} bytes.", param="model",
                           code="model_too_large")

        def over() -> bool:
            count = settings.max_loaded_models and len(self.loaded) + 1 > settings.max_loaded_models
            memory = budget and sum(m.memory_bytes for m in self.loaded.values()) + needed > budget
            return bool(count or memory)

        while over():
            idle = [m for m in self.loaded.values() if m.in_flight == 0]
            if not idle:
                raise APIError(503, f"No room to load '{entry.name}': every loaded model is serving requests "
                               "(MAX_LOADED_MODELS / MEMORY_BUDGET); try again shortly.", type="server_error",
                               param="model", code="model_capacity", headers={"Retry-After": "5"})
            victim = min(idle, key=lambda m: m.last_used)
            log.info("unloading %s (least recently used) to make room for %s", victim.entry.name, entry.name)
            await self._unload(victim)
        return needed

    def start_keep_alive(self) -> None:
        """Unload models idle longer than their keep-alive, in the background."""
        if self._keep_alive_task is None:
            self._keep_alive_task = asyncio.create_task(self._keep_alive_loop())

    def keep_alive_of(self, entry: ModelEntry) -> float:
        spec_value = entry.spec.keep_alive if entry.spec else None
        return self.settings.keep_alive if spec_value is None else spec_value

    def idle_limit(self, model: LoadedModel) -> float:
        """Seconds this model may stay idle before it is unloaded (inf: it stays loaded)."""
        if model.keep_alive is not None:
            return model.keep_alive
        return self.keep_alive_of(model.entry) or math.inf

    def expires_at(self, model: LoadedModel) -> float:
        """When the model will be unloaded if no request comes (inf: never)."""
        return (time.time() if model.in_flight else model.last_used) + self.idle_limit(model)

    async def _keep_alive_loop(self) -> None:
        while True:
            await asyncio.sleep(KEEP_ALIVE_CHECK_SECONDS)
            now = time.time()
            for model in list(self.loaded.values()):
                limit = self.idle_limit(model)
                if model.in_flight == 0 and now - model.last_used >= limit:
                    log.info("unloading %s: idle for %.0fs (keep-alive %.0fs)", model.entry.name, now - model.last_used, limit)
                    await self._unload_logged(model)  # one model failing to free must not end the loop

    async def _unload_logged(self, model: LoadedModel) -> None:
        try:
            await self._unload(model)
        except Exception:
            log.exception("unloading %s failed", model.entry.name)

    async def unload(self, name: str) -> ModelEntry:
        entry = self.resolve(name)
        model = self.loaded.get(entry.name)
        if model is None:
            raise invalid_request(f"Model '{entry.name}' is not loaded.", "model", "model_not_loaded")
        await self._unload(model)
        return entry

    async def _unload(self, model: LoadedModel) -> None:
        if self.loaded.get(model.entry.name) is not model:
            return  # unloaded meanwhile
        del self.loaded[model.entry.name]  # new requests load it afresh; those in flight finish first
        async with self._idle:  # never free a model a request is still using
            await self._idle.wait_for(lambda: model.in_flight == 0)
        await model.backend.close()
        log.info("unloaded model %s", model.entry.name)

    async def close(self) -> None:
        if self._keep_alive_task is not None:
            self._keep_alive_task.cancel()
        for task in list(self._loading.values()):
            task.cancel()
        # The loaded models themselves, not their names: a file deleted meanwhile no longer resolves.
        for model in list(self.loaded.values()):
            await self._unload_logged(model)

    # ---------------------------------------------------------------- per request

    @asynccontextmanager
    async def use(self, name: str | None, capability: Capability | None) -> AsyncIterator[LoadedModel]:
        """The loaded model for one request (any model when `capability` is None), loading it first when allowed;
        counted as busy meanwhile."""
        entry = self._loaded_by_name(name) or await asyncio.to_thread(self.resolve, name)  # reads MODEL_DIR
        self._refuse_while_downloading(entry)
        if capability is not None and capability not in entry.capabilities:
            kind = "an embedding model" if entry.embedding_only else f"a {entry.backend.value} model"
            raise invalid_request(
                f"Model '{entry.name}' is {kind}; it serves {', '.join(entry.capabilities)} requests only.",
                "model",
                "model_not_supported",
            )
        model = self.loaded.get(entry.name)
        while model is None:
            model = await self._wait_for_load(entry)
            if self.loaded.get(entry.name) is not model:
                model = None  # unloaded to make room for another before this request got to it: load again
        model.in_flight += 1
        model.last_used = time.time()
        try:
            yield model
        finally:
            model.in_flight -= 1
            model.last_used = time.time()
            async with self._idle:
                self._idle.notify_all()

    # ---------------------------------------------------------------- pulling from the Hub

    def downloading(self, name: str) -> bool:
        pull = self.pulls.get(name)
        return pull is not None and pull.state == "downloading"

    def _refuse_while_downloading(self, entry: ModelEntry) -> None:
        if self.downloading(entry.name):
            raise APIError(503, f"Model '{entry.name}' is still downloading; see GET /models for progress.",
                           type="server_error", param="model", code="model_downloading", headers={"Retry-After": "10"})

    async def pull(self, repo: str, file: str | None, revision: str | None, quant: str | None = None) -> PullStatus:
        """Start downloading a Hub model into MODEL_DIR (one download per target); progress in `pulls`."""
        try:
            status = await asyncio.to_thread(plan, repo, file, revision, quant, int(self.settings.pull_max_bytes))
        except PullError as exc:
            raise APIError(400, str(exc), param="repo", code="pull_failed") from None
        if self.downloading(status.name):
            return self.pulls[status.name]
        if status.name in self.loaded:  # never write over the files of a model that is serving
            raise APIError(409, f"Model '{status.name}' is loaded: unload it before pulling over it.", param="repo",
                           code="model_in_use")
        self.pulls[status.name] = status

        async def run() -> None:
            try:
                await asyncio.to_thread(download, status, self.settings.model_dir, revision)
                log.info("pulled %s into %s", repo, status.name)
            except PullError as exc:
                log.error("%s", exc)

        task = asyncio.create_task(run())
        self._pull_tasks.add(task)
        task.add_done_callback(self._pull_tasks.discard)
        return status

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
