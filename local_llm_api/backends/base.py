"""The interface every model backend implements, and the request loop they share.

A backend knows its model: tokenizing, sampling the next tokens, embedding. What to do with those
tokens (stop strings, length limits, cancellation, queueing) is the same for every backend and lives here.
Each request is an async stream of `GenerationChunk`s, so a batching engine can replace the serial loop
without the serving layer noticing.
"""

from __future__ import annotations

import asyncio
import threading
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from ..prompting.text import StopMatcher, Utf8Stream

T = TypeVar("T")


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    repeat_penalty: float
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    logit_bias: dict[int, float] = field(default_factory=dict)
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class GenerationChunk:
    """New text of one sequence; the last chunk carries the finish reason and the token count."""

    text: str
    finish_reason: Literal["stop", "length"] | None = None
    completion_tokens: int = 0


@dataclass(frozen=True)
class ModelFacts:
    """What the API reports about a loaded model."""

    context_size: int
    embedding_size: int
    vocab_size: int
    chat_template: str | None
    bos_token: str
    eos_token: str


class ModelLoadError(Exception):
    """The model file could not be loaded; the message says why, for the client."""


class Backend(ABC):
    """One loaded model. Blocking model work runs on a single worker thread, one request at a time, in
    arrival order (FIFO), so that requests are never interleaved and a cancelled one frees the model at once."""

    kind: str

    def __init__(self) -> None:
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{self.kind}-worker")

    # ---- what each backend provides

    @property
    @abstractmethod
    def facts(self) -> ModelFacts: ...

    @abstractmethod
    def tokenize(self, text: str, *, add_special: bool) -> list[int]: ...

    @abstractmethod
    def token_bytes(self, token: int, previous: list[int]) -> bytes:
        """The bytes a token adds after `previous`, the last few tokens before it (some tokenizers need them)."""

    @abstractmethod
    def is_end_of_generation(self, token: int) -> bool: ...

    @abstractmethod
    def sample(self, prompt: list[int], params: SamplingParams) -> Iterator[int]:
        """Yield sampled tokens one by one, without end: the shared loop decides when to stop."""

    @abstractmethod
    def embed_tokens(self, inputs: list[list[int]]) -> list[list[float]]:
        """One pooled, L2-normalised vector per input."""

    def release(self) -> None:
        """Free the model's memory; called on the worker thread after the last request."""

    # ---- the shared loop

    async def run(self, fn: Callable[[], T]) -> T:
        """Run blocking model work on this model's worker thread, in arrival order."""
        return await asyncio.get_running_loop().run_in_executor(self._worker, fn)

    async def generate(self, prompt: list[int], params: SamplingParams) -> AsyncIterator[GenerationChunk]:
        """Stream one completion. Closing the iterator early (client gone) stops generation within a token."""
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[GenerationChunk | BaseException] = asyncio.Queue()
        cancelled = threading.Event()

        def emit(item: GenerationChunk | BaseException) -> None:
            loop.call_soon_threadsafe(chunks.put_nowait, item)

        def work() -> None:
            if cancelled.is_set():  # the client left while queued
                return
            try:
                for chunk in self._generate_blocking(prompt, params, cancelled):
                    emit(chunk)
            except BaseException as exc:  # surfaced to the awaiting request, never lost in the thread
                emit(exc)

        job = loop.run_in_executor(self._worker, work)
        try:
            while True:
                item = await chunks.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            cancelled.set()
            if not job.done():
                job.add_done_callback(lambda f: f.exception())  # nothing left to wait on; keep logs quiet

    def _generate_blocking(
        self, prompt: list[int], params: SamplingParams, cancelled: threading.Event
    ) -> Iterator[GenerationChunk]:
        utf8 = Utf8Stream()
        stops = StopMatcher(list(params.stop))
        generated: list[int] = []
        if params.max_tokens == 0:
            yield GenerationChunk("", "length", 0)
            return
        tokens = self.sample(prompt, params)
        try:
            for token in tokens:
                if cancelled.is_set():
                    return
                if self.is_end_of_generation(token):
                    yield GenerationChunk(stops.push(utf8.flush())[0] + stops.flush(), "stop", len(generated))
                    return
                # A few tokens of context are enough for tokenizers whose pieces depend on their neighbours.
                text = utf8.push(self.token_bytes(token, (prompt[-4:] + generated[-4:])[-4:]))
                generated.append(token)
                out, hit = stops.push(text)
                if hit:
                    yield GenerationChunk(out, "stop", len(generated))
                    return
                if len(generated) >= params.max_tokens:
                    tail, hit = stops.push(utf8.flush())
                    yield GenerationChunk(out + tail + ("" if hit else stops.flush()), "length", len(generated))
                    return
                if out:
                    yield GenerationChunk(out)
        finally:
            close = getattr(tokens, "close", None)
            if close is not None:
                close()

    async def close(self) -> None:
        """Finish queued work, free the model, stop the worker."""
        await self.run(self.release)
        self._worker.shutdown(wait=False)
