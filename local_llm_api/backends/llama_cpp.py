"""GGUF models through llama-cpp-python.

Generation uses `Llama.generate`, which also reuses the KV cache of the longest common prompt prefix
with the previous request. Sampling uses our own llama.cpp sampler chain so that `logit_bias` runs in
C (llama_sampler_init_logit_bias) before the penalties and the truncation samplers.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..config import Settings
from .base import Backend, ModelFacts, ModelLoadError, SamplingParams

GGUF_MAGIC = b"GGUF"


def _import_llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError as exc:  # the GGUF extra is optional
        raise ModelLoadError(
            "llama-cpp-python is not installed; install the GGUF backend with `pip install local-llm-api[llama-cpp]`"
        ) from exc
    return llama_cpp


def check_gguf_file(path: Path) -> None:
    """Refuse files that are not GGUF before llama.cpp does, with a message a person understands."""
    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic != GGUF_MAGIC:
        raise ModelLoadError(f"'{path.name}' is not a GGUF file (it does not start with the GGUF magic bytes)")


class LlamaCppBackend(Backend):
    kind = "llama-cpp"

    def __init__(self, path: Path, settings: Settings, *, context_size: int | None = None) -> None:
        super().__init__()
        llama_cpp = _import_llama_cpp()
        check_gguf_file(path)
        self._llama_cpp = llama_cpp
        self._path = path
        self._settings = settings
        n_ctx = settings.context_size if context_size is None else context_size
        self._common: dict[str, Any] = dict(
            model_path=str(path),
            n_gpu_layers=settings.gpu_layers,
            n_threads=settings.threads,
            n_threads_batch=settings.threads,
            verbose=False,
        )
        try:
            self._llm = _llama_class()(n_ctx=n_ctx, n_batch=settings.batch_size, **self._common)
        except (ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"llama.cpp could not load '{path.name}': {exc}") from exc
        self._embedder: Any = None  # a second context in embedding mode, made on the first embedding request
        meta = self._llm.metadata
        self._facts = ModelFacts(
            context_size=self._llm.n_ctx(),
            embedding_size=self._llm.n_embd(),
            vocab_size=self._llm.n_vocab(),
            chat_template=meta.get("tokenizer.chat_template"),
            bos_token=self._token_text(self._llm.token_bos()),
            eos_token=self._token_text(self._llm.token_eos()),
        )
        self._add_bos = self._llm._model.add_bos_token()
        self.architecture = meta.get("general.architecture", "")
        self.display_name = meta.get("general.name", path.stem)

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return self._llm._model.token_get_text(token)

    @property
    def facts(self) -> ModelFacts:
        return self._facts

    def tokenize(self, text: str, *, add_special: bool) -> list[int]:
        # Chat templates usually write the BOS token themselves; never add it twice.
        bos = self._facts.bos_token
        add_bos = add_special and self._add_bos and not (bos and text.startswith(bos))
        return self._llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=add_special)

    def token_bytes(self, token: int, previous: list[int]) -> bytes:
        return self._llm.detokenize([token], prev_tokens=previous)

    def is_end_of_generation(self, token: int) -> bool:
        return bool(self._llama_cpp.llama_vocab_is_eog(self._llm._model.vocab, token))

    def sample(self, prompt: list[int], params: SamplingParams) -> Iterator[int]:
        self._llm.request_params = params
        self._llm.set_seed(random.getrandbits(32) if params.seed is None else params.seed)
        if params.seed is not None or params.temperature == 0:
            # A reused cached prefix was computed in other batch shapes, which changes the logits' last bits and
            # can flip a sample. Requests that ask to repeat (a seed, or greedy) evaluate their whole prompt.
            self._llm.reset()
        return self._llm.generate(prompt)

    def embed_tokens(self, inputs: list[list[int]]) -> list[list[float]]:
        if self._embedder is None:
            # Mean pooling over a context sized to hold any input whole (embeddings need one micro-batch).
            size = self._facts.context_size
            self._embedder = self._llama_cpp.Llama(
                embedding=True,
                pooling_type=self._llama_cpp.LLAMA_POOLING_TYPE_MEAN,
                n_ctx=size,
                n_batch=size,
                n_ubatch=size,
                **self._common,
            )
        emb = self._embedder
        vectors = []
        for tokens in inputs:
            emb._ctx.kv_cache_clear()
            emb._batch.reset()
            emb._batch.add_sequence(tokens, 0, True)
            emb._ctx.decode(emb._batch)
            pooled = self._llama_cpp.llama_get_embeddings_seq(emb._ctx.ctx, 0)
            vectors.append(_normalise(pooled[: self._facts.embedding_size]))
        emb._ctx.kv_cache_clear()
        return vectors

    def release(self) -> None:
        for llm in (self._llm, self._embedder):
            if llm is not None:
                llm.close()
        self._embedder = None


def _normalise(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]


@lru_cache(maxsize=1)
def _llama_class() -> type:
    llama_cpp = _import_llama_cpp()
    from llama_cpp._internals import LlamaSampler

    class Llama(llama_cpp.Llama):  # type: ignore[misc, name-defined]
        """`Llama` whose sampler chain comes from the request's `SamplingParams`."""

        request_params: SamplingParams | None = None

        def _init_sampler(self, **_: Any) -> Any:
            p = self.request_params
            assert p is not None, "sample() sets the request's parameters first"
            chain = LlamaSampler()
            if p.logit_bias:
                chain.add_logit_bias(self._n_vocab, p.logit_bias)
            chain.add_penalties(
                n_vocab=self._n_vocab,
                penalty_last_n=self.last_n_tokens_size,
                penalty_repeat=p.repeat_penalty,
                penalty_freq=p.frequency_penalty,
                penalty_present=p.presence_penalty,
            )
            if p.temperature == 0:
                chain.add_greedy()
                return chain
            if p.top_k > 0:
                chain.add_top_k(p.top_k)
            chain.add_top_p(p.top_p, 1)
            chain.add_min_p(p.min_p, 1)
            chain.add_temp(p.temperature)
            chain.add_dist(self._seed)
            return chain

    return Llama
