"""GGUF models through llama-cpp-python's low-level API.

One model in memory, two llama.cpp contexts over it: one for generation, driven by the continuous
batching engine (`batching.py`) with PARALLEL_SLOTS sequences, and one for embeddings (the model's own pooling,
else mean), made on the first embedding request.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil

from ..catalog import ModelEntry
from ..images import ImageInput
from ..model_files import projector_for
from ..config import FlashAttention, KvCacheType, Settings
from ..prompting.chat_template import fallback_template
from ..structured.constraint import ConstraintFactory
from .base import ModelFacts, ModelLoadError, SamplingParams
from .batching import BatchEngine
from .engine import EngineBackend
from .hub import fetch
from .llama_vision import Projector
from .prefix_store import PrefixStore, cache_key

GGUF_MAGIC = b"GGUF"


def _import_llama_cpp() -> Any:
    try:
        import llama_cpp
        import llama_cpp._internals  # noqa: F401  (the model, context and sampler wrappers)
        from llama_cpp._logger import set_verbose
    except ImportError as exc:  # the GGUF extra is optional
        raise ModelLoadError(
            "llama-cpp-python is not installed; install the GGUF backend with `pip install local-llm-api[llama-cpp]`"
        ) from exc
    # llama.cpp's own log lines (graph sizes, buffers...) only at LOG_LEVEL=DEBUG; errors always.
    set_verbose(logging.getLogger("local_llm_api").isEnabledFor(logging.DEBUG))
    return llama_cpp


def check_gguf_file(path: Path) -> None:
    """Refuse files that are not GGUF before llama.cpp does, with a message a person understands."""
    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic != GGUF_MAGIC:
        raise ModelLoadError(f"'{path.name}' is not a GGUF file (it does not start with the GGUF magic bytes)")


log = logging.getLogger("local_llm_api.llama_cpp")

# CONTEXT_SIZE=0 asks for the training context, per slot and allocated up front: 128k tokens x 4 slots is a KV
# cache of tens of GB for a 7B model. Without an explicit size, this is the most a slot gets.
MIN_CONTEXT = 2048  # CONTEXT_SIZE=0 never gives a slot less (unless the model was trained on less)


MEAN_POOLING, OWN_POOLINGS = 1, {1, 2, 3}  # llama.cpp's mean, CLS and last-token pooling


def pooling_type(meta: dict[str, str]) -> int:
    """How to pool embeddings: as a GGUF embedding model's metadata says (`<arch>.pooling_type`: mean, CLS or last
    token); mean for generative models, which say nothing (and for rankers, whose pooling is a score)."""
    try:
        value = int(meta.get(f"{meta.get('general.architecture', '')}.pooling_type", ""))
    except ValueError:
        return MEAN_POOLING
    return value if value in OWN_POOLINGS else MEAN_POOLING


def per_slot_context(requested: int | None, trained: int, kv_bytes_per_token: int, weights: int, settings: Settings,
                     name: str, scratch_per_token: int = 0) -> int:
    """Tokens of KV cache per slot: the size asked for; else (CONTEXT_SIZE=0, the default) the model's training
    context where memory allows: llama.cpp allocates every slot's cache up front (plus one for embeddings) and,
    without flash attention, a step's attention scores (`scratch_per_token` per token of a slot's context), so the
    context is cut to what fits MEMORY_BUDGET, or half this machine's memory without one, beside the weights."""
    if requested:
        return requested
    if not kv_bytes_per_token:
        return trained
    budget = int(settings.memory_budget) or psutil.virtual_memory().total // 2
    per_token = kv_bytes_per_token * (settings.parallel_slots + 1) + scratch_per_token
    fits = max(budget - weights, 0) // per_token // 256 * 256
    if fits >= trained:
        return trained
    context = max(fits, min(trained, MIN_CONTEXT))
    log.warning("%s was trained on %d tokens; %d slots of that do not fit %s, so each slot gets %d (set CONTEXT_SIZE, "
                "PARALLEL_SLOTS or MEMORY_BUDGET to choose)", name, trained, settings.parallel_slots,
                "MEMORY_BUDGET" if settings.memory_budget else "half of this machine's memory", context)
    return context


# KV_CACHE_TYPE: ggml's type id, and bytes per value (q8_0 and q4_0 store blocks of 32 values in 34 and 18 bytes).
KV_TYPES = {KvCacheType.f16: (1, 2.0), KvCacheType.q8_0: (8, 34 / 32), KvCacheType.q4_0: (2, 18 / 32)}
FLASH_ATTN_TYPES = {FlashAttention.auto: -1, FlashAttention.off: 0, FlashAttention.on: 1}


def gpu_layers_of(entry: ModelEntry, settings: Settings) -> int:
    spec = entry.spec
    return spec.gpu_layers if spec and spec.gpu_layers is not None else settings.gpu_layers


# llama.cpp copies a slot's KV stream whole when another slot shares its prefix: a copy at memory speed, single
# threaded in RAM (6-9 GB/s measured on a 2-core machine; 4 assumed), far faster within a GPU. In RAM a slot that
# holds few tokens is copied as its sequence state instead (those tokens only, out and back in at the same speed).
KV_COPY_BYTES_PER_SECOND = {"ram": 4e9, "gpu": 1e11}

LONG_CONTEXT = 4096  # slots of this many tokens or more are there for long prompts: flash attention off on a CPU


def flash_attention(settings: Settings, gpu_layers: int, slot_context: int) -> FlashAttention:
    """FLASH_ATTN resolved for the generation context, whose slots hold `slot_context` tokens (as asked for, or the
    model's training context). `auto` is off where attention runs on the CPU with an f16 KV cache and the slots are
    sized for long prompts: there llama.cpp's CPU flash-attention kernel, which reads the whole cache once per query
    row, costs 1.5-2.6x what the matrix-product path does at 3,200 tokens of context (a stream's next token, an
    agent's next turn); below about 400 tokens a stream's next token is up to 15% faster with it, so slots sized
    for short chats keep it (benchmarks/attention_bench.py). Without it a step of one token computes a token's
    logits a little differently from a step of several, so REPRODUCIBLE=true keeps it; a quantised cache needs it;
    on a GPU llama.cpp decides."""
    if settings.flash_attn != FlashAttention.auto or settings.kv_cache_type != KvCacheType.f16 or settings.reproducible:
        return settings.flash_attn
    if slot_context < LONG_CONTEXT:
        return FlashAttention.auto
    if gpu_layers != 0:
        try:
            if _import_llama_cpp().llama_supports_gpu_offload():
                return FlashAttention.auto
        except ModelLoadError:
            pass
    return FlashAttention.off


def kv_on_gpu(lib: Any, model: Any, gpu_layers: int) -> bool:
    """Whether every layer, and so all of the KV cache, is on a GPU."""
    every = gpu_layers == -1 or gpu_layers >= lib.llama_model_n_layer(model.model)
    return every and gpu_layers != 0 and bool(lib.llama_supports_gpu_offload())


def attention_scratch_per_token(meta: dict[str, Any], settings: Settings, attention: FlashAttention) -> int:
    """Without flash attention llama.cpp holds a step's attention scores (f32, every query head, BATCH_SIZE tokens
    against a slot's whole context): this many bytes per token of a slot's context."""
    if attention != FlashAttention.off:
        return 0
    try:
        heads = int(meta.get(f"{meta.get('general.architecture', '')}.attention.head_count", 0))
    except (TypeError, ValueError):
        return 0
    return settings.batch_size * heads * 4


def kv_bytes_per_token(meta: dict[str, str], bytes_per_value: float = 2.0) -> int:
    """What one token adds to the KV cache (keys and values over all layers, f16 unless told), from GGUF metadata."""
    arch = meta.get("general.architecture", "")

    def number(key: str, default: int = 0) -> int:
        try:
            return int(meta.get(f"{arch}.{key}", default))
        except ValueError:
            return default

    heads, width = number("attention.head_count"), number("embedding_length")
    if not heads or not width:
        return 0
    key = number("attention.key_length", width // heads)
    values = number("block_count") * number("attention.head_count_kv", heads) * (key + number("attention.value_length", key))
    return math.ceil(values * bytes_per_value)


def prefix_store(path: Path, settings: Settings, **kv_settings: object) -> PrefixStore | None:
    """The disk tier of the prefix cache for this model file and these settings (None: PREFIX_CACHE_DISK=0, or
    DATA_DIR cannot hold it: the server runs without it)."""
    if not settings.prefix_cache or not settings.prefix_cache_disk:
        return None
    stat = path.stat()
    # What makes a stored KV state valid for this context: the file (by name, size and time: re-quantised or
    # replaced, it is another model) and every setting that changes the KV's shape or values.
    key = cache_key(file=path.name, size=stat.st_size, mtime_ns=stat.st_mtime_ns, **kv_settings)
    try:
        return PrefixStore(settings.data_dir / "prefix-cache", key, int(settings.prefix_cache_disk))
    except OSError as exc:
        log.warning("prefix cache on disk off: %s cannot be written (%s)", settings.data_dir / "prefix-cache", exc)
        return None


class LlamaCppBackend(EngineBackend):
    kind = "llama-cpp"
    renders_image_parts = False  # a template is given the media marker as text where an image goes (as llama-server)

    def __init__(self, entry: ModelEntry, settings: Settings) -> None:
        lib = _import_llama_cpp()
        internals = lib._internals
        spec = entry.spec
        path = entry.path
        if path is None or not path.is_file():  # a declared `repo` + `file`: from huggingface_hub's cache, downloaded once
            assert entry.repo is not None and spec is not None and spec.file is not None
            path = fetch(entry.repo, spec.revision, spec.file)
        check_gguf_file(path)
        self._lib = lib
        self._internals = internals
        self._threads = settings.threads or max(1, (os.cpu_count() or 2) // 2)
        self._kv_type = settings.kv_cache_type
        model_params = lib.llama_model_default_params()
        gpu_layers = gpu_layers_of(entry, settings)
        model_params.n_gpu_layers = 0x7FFFFFFF if gpu_layers == -1 else gpu_layers
        try:
            self._model = internals.LlamaModel(path_model=str(path), params=model_params, verbose=False)
        except (ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"llama.cpp could not load '{path.name}': {exc}") from exc
        model = self._model
        meta = model.metadata()
        requested = (spec.context_size if spec else None) or settings.context_size
        self._flash_attn = attention = flash_attention(settings, gpu_layers, requested or model.n_ctx_train())
        kv_per_token = kv_bytes_per_token(meta, KV_TYPES[settings.kv_cache_type][1])
        per_sequence = per_slot_context(requested, model.n_ctx_train(), kv_per_token,
                                        path.stat().st_size, settings, entry.name,
                                        attention_scratch_per_token(meta, settings, attention))
        log.info("%s: flash attention %s", entry.name, attention.value if attention != FlashAttention.auto
                 else "as llama.cpp chooses (GPU)")
        slots = settings.parallel_slots
        try:
            context = self._context(n_ctx=per_sequence * slots, n_seq_max=slots, batch=settings.batch_size, embeddings=False)
        except ValueError as exc:
            model.close()
            raise ModelLoadError(f"llama.cpp could not make a context for '{path.name}' "
                                 f"({slots} slots x {per_sequence} tokens): {exc}") from exc
        self._facts = ModelFacts(
            context_size=per_sequence,
            embedding_size=model.n_embd(),
            vocab_size=model.n_vocab(),
            # The model's own template; a family guess from its name and architecture only when it has none.
            chat_template=(spec.chat_template if spec else None)
            or meta.get("tokenizer.chat_template")
            or fallback_template(f"{path.name} {meta.get('general.architecture', '')}"),
            bos_token=self._token_text(model.token_bos()),
            eos_token=self._token_text(model.token_eos()),
        )
        self._add_bos = model.add_bos_token()
        self._projector = self._load_projector(entry, settings, gpu_layers != 0, context)
        self.constraints = ConstraintFactory(lambda: _lltokenizer(model))
        kv_memory = "gpu" if kv_on_gpu(lib, model, gpu_layers) else "ram"
        store = prefix_store(path, settings, per_sequence=per_sequence, gpu_layers=gpu_layers, version=lib.__version__,
                             kv_type=settings.kv_cache_type.value, flash_attn=attention.value)
        self._engine = BatchEngine(
            llama_cpp=lib,
            context=context,
            n_slots=slots,
            slot_context=per_sequence,
            max_queue=settings.max_queue,
            batch_size=settings.batch_size,
            prefill_chunk=settings.prefill_chunk,
            prefill_step_seconds=settings.prefill_step_ms / 1000,
            prefix_cache=settings.prefix_cache,
            reproducible=settings.reproducible,
            draft_tokens=settings.prompt_lookup_tokens,
            adaptive_drafts=settings.prompt_lookup_adaptive,
            make_sampler=self._sampler,
            token_bytes=self.token_bytes,
            is_end=lambda token: bool(lib.llama_vocab_is_eog(model.vocab, token)),
            name=path.stem,
            n_vocab=self._facts.vocab_size,
            constraints=self.constraints,
            prefix_store=store,
            slot_copy_seconds=per_sequence * kv_per_token / KV_COPY_BYTES_PER_SECOND[kv_memory],
            token_copy_seconds=0.0 if kv_memory == "gpu" else kv_per_token / KV_COPY_BYTES_PER_SECOND["ram"],
        )
        self._generation_context = context
        self._embedding_context: Any = None
        self._embedder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed")

    def _load_projector(self, entry: ModelEntry, settings: Settings, gpu: bool, context: Any) -> Projector | None:
        """A vision model's projector (libmtmd reads its images), when it has one."""
        path = projector_for(entry) if entry.path is not None and entry.path.is_file() else None
        if path is None:
            return None
        try:
            if not path.is_file():
                raise ModelLoadError(f"the projector '{path}' of '{entry.name}' does not exist")
            projector = Projector(path, self._model.model, self._threads, gpu, settings.batch_size)
        except ModelLoadError:
            context.close()
            self._model.close()
            raise
        self.image_text = projector.marker
        return projector

    def _context(self, *, n_ctx: int, n_seq_max: int, batch: int, embeddings: bool,
                 attention: FlashAttention | None = None) -> Any:
        params = self._lib.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = params.n_ubatch = batch
        params.n_seq_max = n_seq_max
        params.n_threads = params.n_threads_batch = self._threads
        params.kv_unified = False  # each slot its own KV stream of CONTEXT_SIZE tokens
        params.type_k = params.type_v = KV_TYPES[self._kv_type][0]
        params.flash_attn_type = FLASH_ATTN_TYPES[attention or self._flash_attn]
        params.embeddings = embeddings
        if embeddings:
            params.pooling_type = pooling_type(self._model.metadata())
        return self._internals.LlamaContext(model=self._model, params=params, verbose=False)

    def _token_text(self, token: int) -> str:
        return self._model.token_get_text(token) if token >= 0 else ""

    def _sampler(self, p: SamplingParams) -> Any:
        """The sequence's own llama.cpp sampler chain; logit bias first, in C."""
        chain = self._internals.LlamaSampler()
        n_vocab = self._facts.vocab_size
        if p.logit_bias:
            chain.add_logit_bias(n_vocab, p.logit_bias)
        if (p.repeat_penalty, p.frequency_penalty, p.presence_penalty) != (1.0, 0.0, 0.0):
            # Only when asked: the penalty sampler visits the whole vocabulary for every token.
            chain.add_penalties(n_vocab=n_vocab, penalty_last_n=64, penalty_repeat=p.repeat_penalty,
                                penalty_freq=p.frequency_penalty, penalty_present=p.presence_penalty)
        if p.temperature == 0:
            chain.add_greedy()
            return chain
        if p.top_k > 0:
            chain.add_top_k(p.top_k)
        chain.add_top_p(p.top_p, 1)
        chain.add_min_p(p.min_p, 1)
        chain.add_temp(p.temperature)
        chain.add_dist(p.seed if p.seed is not None else self._lib.LLAMA_DEFAULT_SEED)
        return chain

    # ---------------------------------------------------------------- Backend

    @property
    def facts(self) -> ModelFacts:
        return self._facts

    def _adds_bos(self, text: str) -> bool:
        """The model adds BOS, and the text does not start with it (chat templates usually write it: never twice)."""
        bos = self._facts.bos_token
        return self._add_bos and not (bos and text.startswith(bos))

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool | None = None) -> list[int]:
        special = add_special if parse_special is None else parse_special
        return self._model.tokenize(text.encode("utf-8"), add_bos=add_special and self._adds_bos(text), special=special)

    def read_images(self, text: str, images: list[ImageInput]) -> tuple[list[int], object]:
        assert self._projector is not None
        return self._projector.tokenize(text, images, self._adds_bos(text))

    @functools.cached_property
    def _control_texts(self) -> tuple[str, ...]:
        vocab, lib = self._model.vocab, self._lib
        controls = (t for t in range(self._facts.vocab_size)
                    if lib.llama_vocab_get_attr(vocab, t) & lib.LLAMA_TOKEN_ATTR_CONTROL)
        return tuple(text for t in controls if (text := self._piece(t, special=True).decode("utf-8", "replace")))

    def control_texts(self) -> tuple[str, ...]:
        return self._control_texts

    def token_bytes(self, token: int) -> bytes:
        return self._piece(token, special=False)

    def token_piece(self, token: int) -> bytes:
        return self._piece(token, special=True)

    def _piece(self, token: int, *, special: bool) -> bytes:
        buffer = ctypes.create_string_buffer(64)
        n = self._lib.llama_token_to_piece(self._model.vocab, token, buffer, 64, 0, special)
        if n < 0:  # a piece longer than the buffer: llama.cpp says how long
            buffer = ctypes.create_string_buffer(-n)
            n = self._lib.llama_token_to_piece(self._model.vocab, token, buffer, -n, 0, special)
        return buffer.raw[:n]

    async def embed(self, inputs: list[list[int]]) -> list[list[float]]:
        return await asyncio.get_running_loop().run_in_executor(self._embedder, self._embed, inputs)

    def _embed(self, inputs: list[list[int]]) -> list[list[float]]:
        if self._embedding_context is None:
            size = self._facts.context_size  # any input that fits the model's context fits one micro-batch
            # Flash attention as llama.cpp chooses: without it, a batch of a whole context would hold size x size scores.
            self._embedding_context = self._context(n_ctx=size, n_seq_max=1, batch=size, embeddings=True,
                                                    attention=FlashAttention.auto)
            self._embedding_batch = self._internals.LlamaBatch(n_tokens=size, embd=0, n_seq_max=1, verbose=False)
        context, batch = self._embedding_context, self._embedding_batch
        vectors = []
        for tokens in inputs:
            context.kv_cache_clear()
            batch.reset()
            batch.add_sequence(tokens, 0, True)
            context.decode(batch)
            pooled = self._lib.llama_get_embeddings_seq(context.ctx, 0)
            vectors.append(_normalise(pooled[: self._facts.embedding_size]))
        context.kv_cache_clear()
        return vectors

    async def close(self) -> None:
        await asyncio.to_thread(self._engine.close)
        self._embedder.shutdown(wait=True)
        if self._embedding_context is not None:
            self._embedding_batch.close()
            self._embedding_context.close()
        if self._projector is not None:
            self._projector.close()
        self._generation_context.close()
        self._model.close()


def _lltokenizer(model: Any) -> Any:
    from llguidance.llamacpp import lltokenizer_from_vocab

    return lltokenizer_from_vocab(model.vocab)


def _normalise(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]
