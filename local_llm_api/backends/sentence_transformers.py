"""Models run by the sentence-transformers library itself: embedding models (`SentenceTransformer`, whose
`modules.json` decides the modules: transformer, pooling as its config says, normalisation or not), and,
in `cross_encoder.py`, rerankers (`CrossEncoder`). What both kinds share lives in `LibraryBackend`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..catalog import ModelEntry
from ..config import Settings
from .base import Backend, EngineStats, GenerationChunk, ModelFacts, ModelLoadError, SamplingParams
from .transformers_lm import local_source, prepare_torch

BATCH = 32  # inputs per forward pass


class LibraryBackend(Backend):
    """A sentence-transformers model class loaded from a local folder (or a Hub repo), run on one worker thread."""

    _facts: ModelFacts

    def _load(self, entry: ModelEntry, settings: Settings, class_name: str) -> Any:
        torch, device, dtype = prepare_torch(settings)
        try:
            import sentence_transformers
        except ImportError as exc:
            raise ModelLoadError("sentence-transformers is not installed: `pip install local-llm-api[transformers]`") from exc
        folder, gguf_file = local_source(entry)
        if gguf_file:
            raise ModelLoadError(f"'{entry.name}' is a GGUF file, not a sentence-transformers {class_name} folder")
        trust = bool(entry.spec and entry.spec.trust_remote_code)
        try:
            model = getattr(sentence_transformers, class_name)(str(folder), device=str(device), trust_remote_code=trust,
                                                               model_kwargs={"dtype": dtype})
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            raise ModelLoadError(f"sentence-transformers could not load '{entry.name}' as a {class_name}: {exc}") from exc
        self._model = model
        self._torch, self._device = torch, device
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self.kind)
        self._counters = {"requests": 0, "prompt": 0}
        return model

    def _count(self, tokens: int) -> None:
        self._counters["requests"] += 1
        self._counters["prompt"] += tokens

    @property
    def facts(self) -> ModelFacts:
        return self._facts

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool | None = None) -> list[int]:
        return list(self._model.tokenizer(text, add_special_tokens=add_special)["input_ids"])

    def token_bytes(self, token: int) -> bytes:
        return self._model.tokenizer.decode([token]).encode("utf-8")

    def detokenize(self, tokens: list[int]) -> str:
        return self._model.tokenizer.decode(tokens)  # WordPiece joins its "##" pieces only when decoding whole

    def generate(self, prompt: list[int], params: SamplingParams,
                 reservation: Reservation | None = None) -> AsyncIterator[GenerationChunk]:
        raise NotImplementedError(f"a {self.kind} model does not generate text")  # the API refuses before this

    def check_capacity(self, sequences: int) -> Reservation:
        return Reservation()

    def stats(self) -> EngineStats:
        return EngineStats(slots=1, running=0, queued=0, max_queue=0, requests_total=self._counters["requests"],
                           prompt_tokens_total=self._counters["prompt"])

    async def close(self) -> None:
        self._worker.shutdown(wait=True)
        del self._model
        if self._device.type == "cuda":
            self._torch.cuda.empty_cache()


class SentenceTransformersBackend(LibraryBackend):
    kind = "sentence-transformers"

    def __init__(self, entry: ModelEntry, settings: Settings) -> None:
        model = self._load(entry, settings, "SentenceTransformer")
        tokenizer = model.tokenizer
        self._facts = ModelFacts(
            context_size=model.max_seq_length,
            embedding_size=getattr(model, "get_embedding_dimension", model.get_sentence_embedding_dimension)() or 0,
            vocab_size=len(tokenizer),
            chat_template="",
            bos_token="",
            eos_token="",
        )
        self._pad = tokenizer.pad_token_id or 0

    async def embed(self, inputs: list[list[int]]) -> list[list[float]]:
        return await asyncio.get_running_loop().run_in_executor(self._worker, self._embed, inputs)

    def _embed(self, inputs: list[list[int]]) -> list[list[float]]:
        """The library's own modules on token ids: its forward takes the features its tokenizer would make."""
        torch = self._torch
        vectors: list[list[float]] = []
        with torch.inference_mode():
            for start in range(0, len(inputs), BATCH):
                batch = inputs[start : start + BATCH]
                longest = max(len(tokens) for tokens in batch)
                ids = torch.full((len(batch), longest), self._pad, dtype=torch.long)
                mask = torch.zeros((len(batch), longest), dtype=torch.long)
                for row, tokens in enumerate(batch):
                    ids[row, : len(tokens)] = torch.tensor(tokens)
                    mask[row, : len(tokens)] = 1
                features: dict[str, Any] = {"input_ids": ids.to(self._device), "attention_mask": mask.to(self._device)}
                if "token_type_ids" in self._model.tokenizer.model_input_names:
                    features["token_type_ids"] = torch.zeros_like(features["input_ids"])
                out = self._model(features)["sentence_embedding"]
                vectors.extend(out.float().cpu().tolist())
        self._count(sum(len(t) for t in inputs))
        return vectors
