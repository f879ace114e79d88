"""Reranking models: a sentence-transformers CrossEncoder folder or any Transformers sequence-classification
model, run by sentence-transformers' CrossEncoder. It reads a (query, document) pair together and scores
how well the document answers the query, which ranks better than comparing two separate embeddings."""

from __future__ import annotations

import asyncio

from ..catalog import ModelEntry
from ..config import Settings
from .base import ModelFacts
from .sentence_transformers import BATCH, LibraryBackend


class CrossEncoderBackend(LibraryBackend):
    kind = "cross-encoder"

    def __init__(self, entry: ModelEntry, settings: Settings) -> None:
        model = self._load(entry, settings, "CrossEncoder")
        tokenizer = model.tokenizer
        self._facts = ModelFacts(context_size=model.max_length or tokenizer.model_max_length, embedding_size=0,
                                 vocab_size=len(tokenizer), chat_template="", bos_token="", eos_token="")

    def pair_tokens(self, query: str, document: str) -> int:
        """Tokens the model reads for one pair, after its own truncation."""
        encoded = self._model.tokenizer(query, document, truncation=True, max_length=self._facts.context_size)
        return len(encoded["input_ids"])

    async def rerank(self, query: str, documents: list[str]) -> tuple[list[float], int]:
        """One relevance score per document, with the model's own activation (a probability for one-label models),
        and the tokens read."""
        return await asyncio.get_running_loop().run_in_executor(self._worker, self._scores, query, documents)

    def _scores(self, query: str, documents: list[str]) -> tuple[list[float], int]:
        scores = self._model.predict([(query, d) for d in documents], batch_size=BATCH, show_progress_bar=False,
                                     convert_to_numpy=True)
        tokens = sum(self.pair_tokens(query, d) for d in documents)
        self._count(tokens)
        return [float(s) for s in scores.reshape(len(documents), -1)[:, 0]], tokens

    async def embed(self, inputs: list[list[int]]) -> list[list[float]]:
        raise NotImplementedError("a cross-encoder makes no embeddings")  # the API refuses before this
