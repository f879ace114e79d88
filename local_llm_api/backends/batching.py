"""Continuous batching for llama.cpp: many sequences share one context and one decode per step.

One engine thread per model. Each step it
1. admits waiting sequences (FIFO) into free slots, choosing the slot whose cached tokens share the
   longest prefix with the prompt (prefix caching: a multi-turn chat re-evaluates only the new turn),
2. builds one batch: the next token of every running sequence, then prompt chunks of sequences still
   reading their prompt (chunked prefill, capped while others stream so that they never freeze),
3. decodes it, and samples each sequence that needs a token with its own sampler chain.
Finished and cancelled sequences leave between steps and free their slot at once; the slot keeps its
KV cache for the next prompt that shares its prefix.

Each slot is one llama.cpp sequence with its own KV stream of CONTEXT_SIZE tokens (`kv_unified` off).
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from .base import EngineStats, GenerationChunk, QueueFullError, SamplingParams, SequenceText

log = logging.getLogger("local_llm_api.batching")

TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass(eq=False)
class Sequence:
    prompt: list[int]
    params: SamplingParams
    text: SequenceText
    emit: Callable[[GenerationChunk | BaseException], None]
    sampler: Any  # llama_cpp._internals.LlamaSampler
    arrived: float = field(default_factory=time.perf_counter)
    pending: list[int] = field(default_factory=list)  # tokens to feed next: prompt rest, then the last sample
    cancelled: bool = False  # set by the request's task; read by the engine thread each step
    first_token_at: float | None = None


@dataclass(eq=False)
class Slot:
    seq_id: int
    cached: list[int] = field(default_factory=list)  # the tokens whose KV this slot holds, positions 0..n-1
    sequence: Sequence | None = None
    last_used: float = 0.0


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class BatchEngine:
    def __init__(
        self,
        *,
        llama_cpp: Any,
        context: Any,
        n_slots: int,
        max_queue: int,
        batch_size: int,
        prefill_chunk: int,
        prefix_cache: bool,
        make_sampler: Callable[[SamplingParams], Any],
        token_bytes: Callable[[int], bytes],
        is_end: Callable[[int], bool],
        name: str,
    ) -> None:
        self._lib = llama_cpp
        self._context = context
        self._batch = llama_cpp.llama_batch_init(batch_size, 0, 1)
        self._batch_size = batch_size
        self._prefill_chunk = prefill_chunk
        self._prefix_cache = prefix_cache
        self._make_sampler = make_sampler
        self._token_bytes = token_bytes
        self._is_end = is_end
        self.slots = [Slot(i) for i in range(n_slots)]
        self.max_queue = max_queue
        self._waiting: deque[Sequence] = deque()
        self._wake = threading.Condition()
        self._stopping = False
        self._counters = {"prompt": 0, "cached": 0, "generated": 0, "requests": 0}
        self._recent: deque[tuple[float, int]] = deque()  # (time, tokens) of recent steps, for tokens/s
        self._ttft_counts = [0] * (len(TTFT_BUCKETS) + 1)
        self._ttft_sum = 0.0
        self._ttft_recent: deque[float] = deque(maxlen=100)
        self._thread = threading.Thread(target=self._run, name=f"engine-{name}", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- the request side (event loop)

    def check_capacity(self, sequences: int) -> None:
        if len(self._waiting) + sequences > self.max_queue:
            raise QueueFullError(f"{len(self._waiting)} requests are waiting (MAX_QUEUE={self.max_queue})")

    async def generate(self, prompt: list[int], params: SamplingParams) -> AsyncIterator[GenerationChunk]:
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[GenerationChunk | BaseException] = asyncio.Queue()
        sequence = Sequence(
            prompt=prompt,
            params=params,
            text=SequenceText(params, self._token_bytes, self._is_end),
            emit=lambda item: loop.call_soon_threadsafe(chunks.put_nowait, item),
            sampler=self._make_sampler(params),
        )
        with self._wake:
            self._waiting.append(sequence)
            self._wake.notify()
        try:
            while True:
                item = await chunks.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            sequence.cancelled = True  # no-op when finished; otherwise the engine drops it next step

    def close(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join()
        self._lib.llama_batch_free(self._batch)

    # ---------------------------------------------------------------- the engine thread

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._stopping and not self._waiting and not self._running():
                    self._wake.wait()
                if self._stopping:
                    return
                self._admit()
            self._drop_cancelled()
            fed = self._fill_batch()
            if not fed:
                continue
            try:
                self._decode(fed)
            except Exception as exc:  # the error reaches the requests in the batch; the engine keeps going
                log.exception("decode failed")
                for slot, _, _ in fed:
                    self._finish(slot, exc)

    def _running(self) -> list[Slot]:
        return [s for s in self.slots if s.sequence is not None]

    def _admit(self) -> None:
        """Give free slots to waiting sequences in arrival order, each to the slot with the longest shared prefix."""
        while self._waiting:
            free = [s for s in self.slots if s.sequence is None]
            if not free:
                return
            sequence = self._waiting.popleft()
            if sequence.cancelled:
                continue
            prompt = sequence.prompt
            # A repeatable request evaluates its whole prompt (a reused prefix was computed in other batch
            # shapes, whose last bits differ and can flip a sample); it takes the least recently used slot,
            # leaving the caches that others may share.
            from_scratch = sequence.params.wants_repeatable or not self._prefix_cache
            slot = max(free, key=lambda s: (0 if from_scratch else common_prefix(s.cached, prompt), -s.last_used))
            reuse = 0 if from_scratch else min(common_prefix(slot.cached, prompt), len(prompt) - 1)
            self._lib.llama_memory_seq_rm(self._context.memory, slot.seq_id, reuse, -1)
            del slot.cached[reuse:]
            sequence.pending = prompt[reuse:]
            slot.sequence = sequence
            self._counters["prompt"] += len(prompt)
            self._counters["cached"] += reuse

    def _drop_cancelled(self) -> None:
        for slot in self._running():
            if slot.sequence.cancelled:  # type: ignore[union-attr]  (running slots have one)
                self._free(slot)

    def _fill_batch(self) -> list[tuple[Slot, int, bool]]:
        """Fill the batch; return (slot, tokens fed, wants logits) per sequence in it."""
        batch, fed, n = self._batch, [], 0
        running = self._running()
        # Streaming sequences first (one token each), then prompts in arrival order.
        running.sort(key=lambda s: (s.sequence.first_token_at is None, s.sequence.arrived))  # type: ignore[union-attr]
        # While others stream, a long prompt goes in small chunks so that their next token is not held up.
        streaming = any(s.sequence.first_token_at is not None for s in running)  # type: ignore[union-attr]
        prefill_budget = self._prefill_chunk if streaming else self._batch_size
        for slot in running:
            sequence = slot.sequence
            assert sequence is not None
            reading_prompt = sequence.first_token_at is None
            room = min(self._batch_size - n, prefill_budget) if reading_prompt else self._batch_size - n
            take = sequence.pending[:room]
            if not take:
                continue
            if reading_prompt:
                prefill_budget -= len(take)
            done = len(take) == len(sequence.pending)
            for i, token in enumerate(take):
                batch.token[n] = token
                batch.pos[n] = len(slot.cached) + i
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = slot.seq_id
                batch.logits[n] = done and i == len(take) - 1
                n += 1
            slot.cached.extend(take)
            del sequence.pending[: len(take)]
            fed.append((slot, n - 1, done))
        batch.n_tokens = n
        return fed

    def _decode(self, fed: list[tuple[Slot, int, bool]]) -> None:
        code = self._lib.llama_decode(self._context.ctx, self._batch)
        if code != 0:
            raise RuntimeError(f"llama_decode returned {code}")
        now = time.perf_counter()
        produced = 0
        for slot, index, wants_token in fed:
            sequence = slot.sequence
            if not wants_token or sequence is None:
                continue
            token = self._lib.llama_sampler_sample(sequence.sampler.sampler, self._context.ctx, index)
            if sequence.first_token_at is None:
                sequence.first_token_at = now
                self._record_ttft(now - sequence.arrived)
            produced += 1
            chunk = sequence.text.feed(token)
            if chunk is not None:
                sequence.emit(chunk)
            if chunk is not None and chunk.finish_reason is not None:
                self._free(slot)
            else:
                sequence.pending.append(token)
        self._counters["generated"] += produced
        self._recent.append((now, produced))
        while now - self._recent[0][0] > 10:  # keep ten seconds, for tokens/s
            self._recent.popleft()

    def _finish(self, slot: Slot, error: BaseException) -> None:
        if slot.sequence is not None:
            slot.sequence.emit(error)
        self._lib.llama_memory_seq_rm(self._context.memory, slot.seq_id, 0, -1)
        slot.cached.clear()
        self._free(slot)

    def _free(self, slot: Slot) -> None:
        if slot.sequence is not None:
            self._counters["requests"] += 1
            slot.sequence.sampler.close()
        slot.sequence = None
        slot.last_used = time.perf_counter()

    def _record_ttft(self, seconds: float) -> None:
        self._ttft_counts[bisect.bisect_left(TTFT_BUCKETS, seconds)] += 1
        self._ttft_sum += seconds
        self._ttft_recent.append(seconds)

    # ---------------------------------------------------------------- figures

    def stats(self) -> EngineStats:
        recent = list(self._recent)  # a copy: the engine thread appends meanwhile
        window = time.perf_counter() - recent[0][0] if len(recent) > 1 else 0.0
        recent_tokens = sum(n for _, n in recent[1:])
        ttfts = sorted(self._ttft_recent)
        cumulative, buckets = 0, {}
        for bound, count in zip((*TTFT_BUCKETS, float("inf")), self._ttft_counts, strict=True):
            cumulative += count
            buckets[bound] = cumulative
        return EngineStats(
            slots=len(self.slots),
            running=len(self._running()),
            queued=len(self._waiting),
            max_queue=self.max_queue,
            prompt_tokens_total=self._counters["prompt"],
            cached_prompt_tokens_total=self._counters["cached"],
            generated_tokens_total=self._counters["generated"],
            requests_total=self._counters["requests"],
            tokens_per_second=round(recent_tokens / window, 1) if window > 0 else 0.0,
            time_to_first_token_p50=ttfts[len(ttfts) // 2] if ttfts else None,
            ttft_buckets=buckets,
            ttft_sum=self._ttft_sum,
        )
