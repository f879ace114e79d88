"""What every batching engine shares: a scheduling thread per model, the bridge from the engine thread
to each request's async stream, the waiting queue's bound, and the figures for /health and /metrics.

A concrete engine (`batching.py` for llama.cpp, `torch_batching.py` for Transformers) says how to make
its sequences and how to take one scheduling step over them.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace

import numpy as np

from ..structured.constraint import ConstraintFactory, TokenConstraint
from ..structured.logprobs import TokenLogprob, log_softmax, token_logprob
from .base import (
    Backend,
    EngineStats,
    EngineStoppedError,
    GenerationChunk,
    NeverFitsError,
    QueueFullError,
    Reservation,
    SamplingParams,
    SequenceText,
)
from .prompt_lookup import PromptLookup

log = logging.getLogger("local_llm_api.engine")


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens two token lists share (prefix reuse in both engines and the disk tier)."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n

# What a waiting request's answer weighs beside the prompt tokens it must read, in prompt tokens, when the queue is
# ordered (`Engine._pop_waiting`): a step or two of a CPU's prompt reading, so that of two requests whose prompts
# are cached, the one that waited longer goes first.
ANSWER_WORK = 64

# The most an idle engine waits for the rest of a wave of requests before its first step (see `_run`).
GATHER_SECONDS = 0.02
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass(eq=False)
class Sequence:
    """One choice of one request, as the engine thread sees it."""

    prompt: list[int]
    params: SamplingParams
    text: SequenceText
    emit: Callable[[GenerationChunk | BaseException], None]
    arrived: float = field(default_factory=time.perf_counter)
    cancelled: bool = False  # set by the request's task; read by the engine thread each step
    first_token_at: float | None = None
    constraint: TokenConstraint | None = None  # the grammar its output must match, if any
    cached_tokens: int = 0  # prompt tokens it started with from the prefix cache (reported in the usage)
    media: object | None = None  # the prompt's images as the backend read them (ids below zero mark their tokens)
    to_read: int | None = None  # while it waits: the prompt tokens it must read, as when first seen (`_pop_waiting`)

    @property
    def shapes_logits(self) -> bool:
        """Whether its logits need `Engine._shape_logits` before sampling."""
        return self.constraint is not None or self.params.logprobs is not None or self.text.forced() is not None


class Engine(ABC):
    _prefix_cache = False  # set by each engine: PREFIX_CACHE, where its cache allows it
    _reproducible = False  # REPRODUCIBLE

    def __init__(self, *, n_slots: int, max_queue: int, token_bytes: Callable[[int], bytes],
                 is_end: Callable[[int], bool], name: str, constraints: ConstraintFactory | None = None) -> None:
        self.n_slots = n_slots
        self.max_queue = max_queue
        self._token_bytes = token_bytes
        self._is_end = is_end
        self._name = name
        self._constraints = constraints
        self._waiting: deque[Sequence] = deque()
        self._reserved = 0  # places held by requests checked but not queued yet (see check_capacity)
        self._gather_seconds = GATHER_SECONDS
        self._wake = threading.Condition()
        self._stopping = False
        self._counters = {"prompt": 0, "cached": 0, "shared": 0, "generated": 0, "requests": 0, "drafted": 0,
                          "accepted": 0, "disk": 0, "saved": 0, "images": 0}
        self._recent: deque[tuple[float, int]] = deque()  # (time, tokens) of recent steps, for tokens/s
        self._recent_prompt: deque[tuple[float, int, float]] = deque()  # (time, prompt tokens, seconds) of reads
        self._ttft_counts = [0] * (len(TTFT_BUCKETS) + 1)
        self._ttft_sum = 0.0
        self._ttft_recent: deque[float] = deque(maxlen=100)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"engine-{self._name}", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- what a concrete engine says

    @abstractmethod
    def _new_sequence(self, prompt: list[int], params: SamplingParams, text: SequenceText,
                      emit: Callable[[GenerationChunk | BaseException], None]) -> Sequence: ...

    @abstractmethod
    def _running_count(self) -> int: ...

    def _reuses_prefix(self, sequence: Sequence) -> bool:
        """Whether a sequence may start from a cached prefix. With REPRODUCIBLE, a seeded or greedy request reads
        its whole prompt: a reused prefix was computed in other batch shapes, whose last bits differ and can flip
        a sample."""
        return self._prefix_cache and not (self._reproducible and sequence.params.wants_repeatable)

    def _kv_cache_tokens(self) -> tuple[int, int]:
        """(tokens whose keys and values the engine holds, running or kept for reuse; how many it can hold, 0
        where the cache grows as needed)."""
        return 0, 0

    @abstractmethod
    def _step(self) -> None:
        """Admit waiting sequences (under `self._wake`'s lock only when it takes from `_waiting`), drop
        cancelled ones, and run one model step; called while there is work."""

    @abstractmethod
    def _fail_running(self, error: BaseException) -> None:
        """End every admitted sequence with `error` and reset what they held (KV cache, batch rows)."""

    def _release(self) -> None:  # noqa: B027  (optional hook: engines with nothing to free skip it)
        """Free what the engine holds once its thread has stopped."""

    def _discard(self, sequence: Sequence) -> None:  # noqa: B027  (optional hook)
        """Free what a sequence that never ran holds (its sampler)."""

    # ---------------------------------------------------------------- the request side (event loop)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def check_capacity(self, sequences: int) -> Reservation:
        """Places for `sequences` more: free slots first, then MAX_QUEUE places to wait in; held (counted as waiting)
        until each is queued, so that requests checked at once cannot overfill the queue."""
        if not self.alive:
            raise EngineStoppedError(f"the engine of '{self._name}' has stopped; unload and load the model again")
        if sequences > self.n_slots + self.max_queue:
            raise NeverFitsError(f"{sequences} choices cannot be served at once: this model decodes {self.n_slots} and "
                                 f"queues {self.max_queue} (PARALLEL_SLOTS, MAX_QUEUE)")
        with self._wake:
            free = max(self.n_slots - self._running_count(), 0)
            waiting = len(self._waiting) + self._reserved
            if waiting + sequences > self.max_queue + free:
                raise QueueFullError(f"{len(self._waiting)} choices are waiting and {self._reserved} about to "
                                     f"(MAX_QUEUE={self.max_queue}, {free} slots free)")
            self._reserved += sequences
        return Reservation(self, sequences)

    def _release_places(self, reservation: Reservation) -> None:
        with self._wake:
            self._reserved -= reservation.left
            reservation.left = 0
            self._wake.notify()

    async def generate(self, prompt: list[int], params: SamplingParams, reservation: Reservation | None = None,
                       media: object | None = None) -> AsyncIterator[GenerationChunk]:
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[GenerationChunk | BaseException] = asyncio.Queue()
        sequence = self._new_sequence(
            prompt, params, SequenceText(params, self._token_bytes, self._is_end),
            lambda item: loop.call_soon_threadsafe(chunks.put_nowait, item),
        )
        sequence.media = media
        if params.grammar is not None:
            assert self._constraints is not None
            # Compiling a large schema can take milliseconds to a second: off the event loop.
            sequence.constraint = await asyncio.to_thread(self._constraints.new, params.grammar)
        with self._wake:
            if reservation is not None and reservation.left:  # its held place becomes its place in the queue
                reservation.left -= 1
                self._reserved -= 1
            if not self.alive:
                self._discard(sequence)
                raise EngineStoppedError(f"the engine of '{self._name}' has stopped")
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
            sequence.cancelled = True  # no-op when finished; a running one the engine drops at its next step
            with self._wake:  # one still waiting leaves the queue now, so that it holds no place in MAX_QUEUE
                waiting = sequence in self._waiting
                if waiting:
                    self._waiting.remove(sequence)
            if waiting:
                self._discard(sequence)

    def close(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()
        self._release()

    # ---------------------------------------------------------------- the engine thread

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._stopping and not self._waiting and not self._running_count():
                    self._wake.wait()
                if self._reserved and not self._running_count():
                    # A wave reaching an idle engine (requests checked together, queued one by one as each is
                    # ready): the rest are waited for, a bounded moment, and read in the same step. Started with
                    # the first alone, they would wait for that step to end.
                    deadline = time.monotonic() + self._gather_seconds
                    while self._reserved and not self._stopping and (left := deadline - time.monotonic()) > 0:
                        self._wake.wait(left)
                if self._stopping:
                    return
            try:
                self._step()
            except Exception as exc:  # a bug outside the guarded model call: fail what is in play, keep serving
                log.exception("engine step failed; failing the requests in play")
                self._recover(exc)

    def _recover(self, error: BaseException) -> None:
        try:
            self._fail_running(error)
        except Exception:
            log.exception("could not reset the engine after a failure")
        with self._wake:
            waiting, self._waiting = list(self._waiting), deque()
        for sequence in waiting:  # they may have been part of what failed (admission): they fail too, cleanly
            sequence.emit(error)
            self._discard(sequence)

    @staticmethod
    def _fail_sequence(sequence: Sequence, error: BaseException) -> None:
        """One sequence failed on its own (its sampler, grammar or text): only it ends."""
        log.error("a sequence failed on its own: %s: %s", type(error).__name__, error)
        sequence.emit(error)

    def _put_back(self, sequence: Sequence) -> None:
        """A sequence popped but not admitted yet goes back to the queue, in its arrival place."""
        with self._wake:
            later = [i for i, other in enumerate(self._waiting) if other.arrived > sequence.arrived]
            self._waiting.insert(later[0] if later else len(self._waiting), sequence)

    def _to_read(self, sequence: Sequence) -> int:
        """How many of a waiting sequence's prompt tokens it would read if admitted now, the rest coming from the
        engine's caches (each engine says what they hold)."""
        return len(sequence.prompt)

    def _pop_waiting(self, admissible: Callable[[Sequence], bool] | None = None) -> Sequence | None:
        """The waiting sequence to admit next, still wanted (and `admissible`, when given): the highest response
        ratio, the time it has waited over the work it brings (the prompt tokens it must read, weighed when first
        seen, plus ANSWER_WORK for its answer). A returning agent whose prompt is cached goes ahead of cold prompts
        (in arrival order it waited behind each new agent's read of thousands of tokens), while a cold prompt's
        ratio grows as it waits, so that none is passed for ever. Equal ratios go in arrival order."""
        with self._wake:
            for sequence in [s for s in self._waiting if s.cancelled]:
                self._waiting.remove(sequence)
                self._discard(sequence)
            waiting = list(self._waiting)
        for sequence in waiting:  # outside the lock: a long prompt's lookup must not hold up new requests
            if sequence.to_read is None:
                sequence.to_read = self._to_read(sequence)
        now = time.perf_counter()
        ranked = sorted(waiting, key=lambda s: (now - s.arrived) / ((s.to_read or 0) + ANSWER_WORK), reverse=True)
        for sequence in ranked:  # (a stable sort: equal ratios stay in arrival order)
            if admissible is None or admissible(sequence):
                with self._wake:
                    if sequence in self._waiting:  # (not taken back by its request meanwhile)
                        self._waiting.remove(sequence)
                        return sequence
        return None

    @staticmethod
    def _shape_logits(sequence: Sequence, logits: np.ndarray) -> np.ndarray | None:
        """Before sampling, in place: the model's log probabilities when asked for (returned), then the
        grammar's mask (once past any reasoning), so that the sampler can only draw tokens the grammar allows; or,
        when a thinking budget is spent, only the close marker's next token."""
        logprobs = log_softmax(logits) if sequence.params.logprobs is not None else None
        forced = sequence.text.forced()
        if forced is not None:
            kept = logits[forced]
            logits.fill(-np.inf)
            logits[forced] = kept if np.isfinite(kept) else 0.0
        elif sequence.constraint is not None and not sequence.text.reasoning:
            sequence.constraint.mask(logits)
        return logprobs

    @staticmethod
    def _logprob_of(sequence: Sequence, logprobs: np.ndarray | None, token: int) -> TokenLogprob | None:
        """The drawn token's entry, from the row `_shape_logits` returned (None when none were asked for)."""
        return None if logprobs is None else token_logprob(logprobs, token, sequence.params.logprobs or 0)

    def _deliver(self, sequence: Sequence, token: int, now: float, logprob: TokenLogprob | None = None) -> bool:
        """Hand a sampled token to its sequence's text (and grammar); True when the sequence is finished."""
        if sequence.first_token_at is None:
            sequence.first_token_at = now
            self._record_ttft(now - sequence.arrived)
            log.debug("first token after %.1f ms: %d prompt tokens, %d from the cache", (now - sequence.arrived) * 1000,
                      len(sequence.prompt), sequence.cached_tokens)
        # The grammar constrains the answer: tokens inside a reasoning block are not its.
        constraint = sequence.constraint if not sequence.text.reasoning else None
        if constraint is not None and not self._is_end(token):
            constraint.accept(token)
        # A complete grammar allows nothing but end-of-generation: the sequence ends now, a step early.
        chunk = sequence.text.feed(token, logprob, last=constraint is not None and constraint.complete)
        if chunk is not None and chunk.finish_reason is not None:
            chunk = replace(chunk, cached_tokens=sequence.cached_tokens)
        if chunk is not None:
            sequence.emit(chunk)
        return chunk is not None and chunk.finish_reason is not None

    def _count_guesses(self, lookup: PromptLookup | None, drafted: int, accepted: int) -> None:
        """`drafted` guesses were checked and the first `accepted` held: the counters, and the sequence's acceptance."""
        assert lookup is not None
        self._counters["drafted"] += drafted
        self._counters["accepted"] += accepted
        lookup.verified(drafted, accepted)

    def _prompt_rate(self) -> float:
        """Prompt tokens read per second of the steps that read them, over the last ten seconds (0: none read)."""
        recent = [r for r in list(self._recent_prompt) if time.perf_counter() - r[0] <= 10]
        seconds = sum(s for _, _, s in recent)
        return round(sum(n for _, n, _ in recent) / seconds, 1) if seconds > 0 else 0.0

    def _record_step(self, now: float, produced: int) -> None:
        self._counters["generated"] += produced
        self._recent.append((now, produced))
        while now - self._recent[0][0] > 10:  # keep ten seconds, for tokens/s
            self._recent.popleft()

    def _record_prompt(self, now: float, tokens: int, seconds: float) -> None:
        """A step that read `tokens` prompt tokens in `seconds`: how fast prompts are read, shown while a long one is."""
        self._recent_prompt.append((now, tokens, seconds))
        while now - self._recent_prompt[0][0] > 10:
            self._recent_prompt.popleft()

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
        kv_tokens, kv_capacity = self._kv_cache_tokens()
        prompt, cached = self._counters["prompt"], self._counters["cached"]
        return EngineStats(
            alive=self.alive,
            slots=self.n_slots,
            running=self._running_count(),
            queued=len(self._waiting),
            max_queue=self.max_queue,
            prompt_tokens_total=self._counters["prompt"],
            cached_prompt_tokens_total=self._counters["cached"],
            shared_prompt_tokens_total=self._counters["shared"],
            disk_prompt_tokens_total=self._counters["disk"],
            disk_prefixes_saved_total=self._counters["saved"],
            generated_tokens_total=self._counters["generated"],
            draft_tokens_total=self._counters["drafted"],
            accepted_draft_tokens_total=self._counters["accepted"],
            requests_total=self._counters["requests"],
            images_encoded_total=self._counters["images"],
            kv_cache_tokens=kv_tokens,
            kv_cache_capacity=kv_capacity,
            prefix_cache_hit_rate=round(cached / prompt, 4) if prompt else 0.0,
            tokens_per_second=round(recent_tokens / window, 1) if window > 0 else 0.0,
            prompt_tokens_per_second=self._prompt_rate(),
            time_to_first_token_p50=ttfts[len(ttfts) // 2] if ttfts else None,
            ttft_buckets=buckets,
            ttft_sum=self._ttft_sum,
        )


class EngineBackend(Backend, ABC):
    """A backend whose generation runs in an `Engine` (set as `self._engine` by the constructor)."""

    _engine: Engine

    def generate(self, prompt: list[int], params: SamplingParams, reservation: Reservation | None = None,
                 media: object | None = None) -> AsyncIterator[GenerationChunk]:
        return self._engine.generate(prompt, params, reservation, media)

    def check_capacity(self, sequences: int) -> Reservation:
        return self._engine.check_capacity(sequences)

    def stats(self) -> EngineStats:
        return self._engine.stats()
