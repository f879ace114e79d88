"""Continuous batching for llama.cpp: many sequences share one context and one decode per step.

One engine thread per model. Each step it
1. admits waiting sequences into free slots (those that waited longest for the prompt tokens they must read
   first, `Engine._pop_waiting`; a long prompt once no other is read), choosing the slot whose cached
   tokens share the longest prefix with the prompt (prefix caching: a multi-turn chat re-evaluates only the
   new turn),
2. builds one batch: the next token of every running sequence, then prompt chunks of sequences still reading
   their prompt, the shortest rest first, the first admitted keeping half (chunked prefill: while others
   stream, as many prompt tokens as fit in a step of PREFILL_STEP_MS, `prefill_budget.py`, so that prompts
   arriving together are read together and no stream freezes), its rows in slot order (llama.cpp makes one
   pass over the weights per run of consecutive slots),
3. decodes it, and samples each sequence that needs a token with its own sampler chain.
A streaming sequence may feed guessed tokens after its next one (prompt lookup, `prompt_lookup.py`) when
that raises the step's expected output per second: the step's logits check them all at once, and each guess
the sampler draws too is a token won without a step of its own.
Finished and cancelled sequences leave between steps and free their slot at once; the slot keeps its
KV cache for the next prompt that shares its prefix. Long prefixes also go to disk (`prefix_store.py`) when a
slot's cache is about to be dropped and when the engine closes, and come back from there when a new prompt
shares more of a stored one than any slot holds (after a restart, an unload or an eviction).

Each slot is one llama.cpp sequence with its own KV stream of CONTEXT_SIZE tokens (`kv_unified` off).
"""

from __future__ import annotations

import ctypes
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..structured.constraint import ConstraintFactory
from .base import GenerationChunk, SamplingParams, SequenceText
from .engine import Engine, Sequence, common_prefix
from .prefill_budget import PrefillBudget
from .prefix_store import PrefixStore
from .llama_vision import LlamaImages
from .prompt_lookup import PromptLookup, StepCost, guesses_to_feed

log = logging.getLogger("local_llm_api.batching")


@dataclass(eq=False)
class LlamaSequence(Sequence):
    sampler: Any = None  # llama_cpp._internals.LlamaSampler, the sequence's own chain
    pending: list[int] = field(default_factory=list)  # tokens to feed next: prompt rest, then the last sample
    lookup: PromptLookup | None = None  # drafts guesses from its prompt and output (None: speculation off)
    admitted: float = 0.0  # when it took its slot


@dataclass(eq=False)
class Slot:
    seq_id: int
    cached: list[int] = field(default_factory=list)  # the tokens whose KV this slot holds, positions 0..n-1
    sequence: LlamaSequence | None = None
    last_used: float = 0.0


@dataclass
class Fed:
    """One sequence's part of a batch."""

    slot: Slot
    start: int  # the position of its first token in this step
    tokens: list[int]  # a chunk of its prompt, or the token it sampled last
    samples: bool  # whether the last of `tokens` gives its next token (False: still reading its prompt)
    draft: list[int] = field(default_factory=list)  # guessed tokens fed after them, at positions that follow
    row: int = -1  # the batch row whose logits give its next token (-1: none yet)
    draft_rows: list[int] = field(default_factory=list)  # the guesses' rows, whose logits check the next guess


# Below this many tokens (or half the prompt) shared with a slot's cache, the slot is chosen as if nothing were
# shared: a chat template's opening tokens are no hit worth giving up another cache for. It is also the fewest shared
# tokens worth a copy from another slot until the engine has measured what reading a prompt token costs.
MIN_SHARED_PREFIX = 64
# The disk tier keeps prefixes of at least this many tokens (shorter ones read again in well under a second), and
# a stored prefix is loaded when it gives at least this many tokens more than the slots hold.
DISK_MIN_TOKENS = 1024


class BatchEngine(Engine):
    def __init__(
        self,
        *,
        llama_cpp: Any,
        context: Any,
        n_slots: int,
        slot_context: int,
        max_queue: int,
        batch_size: int,
        prefill_chunk: int,
        prefix_cache: bool,
        prefill_step_seconds: float = 0.0,
        reproducible: bool = False,
        draft_tokens: int = 0,
        adaptive_drafts: bool = True,
        make_sampler: Callable[[SamplingParams], Any],
        token_bytes: Callable[[int], bytes],
        is_end: Callable[[int], bool],
        name: str,
        n_vocab: int,
        constraints: ConstraintFactory | None = None,
        prefix_store: PrefixStore | None = None,
        slot_copy_seconds: float = 0.0,
        token_copy_seconds: float = 0.0,
    ) -> None:
        super().__init__(n_slots=n_slots, max_queue=max_queue, token_bytes=token_bytes, is_end=is_end, name=name,
                         constraints=constraints)
        self._store = prefix_store if prefix_cache else None
        # Files are written off the engine thread: it only copies a slot's state out of llama.cpp.
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefix-store") if self._store is not None else None
        self._copies_pending: set[int] = set()  # slots whose copied stream llama.cpp writes at the next decode
        self._slot_copy_seconds = slot_copy_seconds  # what copying a slot's KV stream whole is estimated to take
        # What moving one token's KV out of llama.cpp and into another slot takes (its sequence state, through host
        # memory): 0 where that is no quicker than the stream copy (a GPU's KV).
        self._token_copy_seconds = token_copy_seconds
        self._n_vocab = n_vocab
        self._lib = llama_cpp
        self._context = context
        self._batch = llama_cpp.llama_batch_init(batch_size, 0, 1)
        self._batch_size = batch_size
        self._prefill = PrefillBudget(prefill_step_seconds, prefill_chunk, batch_size)
        self._prefix_cache = prefix_cache
        self._reproducible = reproducible
        self._slot_context = slot_context
        self._draft_tokens = draft_tokens
        self._adaptive_drafts = adaptive_drafts
        self._step_cost = StepCost()
        self._prompt_in_step = 0  # prompt tokens the step being run reads (when any, its time is not a decode's)
        self._make_sampler = make_sampler
        self.slots = [Slot(i) for i in range(n_slots)]
        self.start()

    def _new_sequence(self, prompt: list[int], params: SamplingParams, text: SequenceText,
                      emit: Callable[[GenerationChunk | BaseException], None]) -> Sequence:
        return LlamaSequence(prompt, params, text, emit, sampler=self._make_sampler(params))

    def _release(self) -> None:
        """The engine thread has stopped (unload, shutdown): long prefixes go to disk before the KV is freed."""
        try:
            for slot in self.slots:
                self._save(slot)
        except Exception:  # the disk tier is a cache: failing to fill it never keeps the model from unloading
            log.exception("could not save the slots' prefixes to disk")
        if self._writer is not None:
            self._writer.shutdown(wait=True)
        self._lib.llama_batch_free(self._batch)

    # ---------------------------------------------------------------- the disk tier

    def _save(self, slot: Slot) -> None:
        """Copy a slot's KV state out of llama.cpp and have it written to the disk tier (when long, and new there)."""
        store = self._store
        if (store is None or len(slot.cached) < DISK_MIN_TOKENS or slot.seq_id in self._copies_pending
                or min(slot.cached) < 0 or store.covers(slot.cached)):  # (prefixes with images stay in RAM)
            return
        state = self._state_of(slot)
        if state is None:
            log.warning("could not read slot %d's state for the disk tier", slot.seq_id)
            return
        assert self._writer is not None
        self._writer.submit(store.write, list(slot.cached), state)
        self._counters["saved"] += 1

    def _state_of(self, slot: Slot) -> memoryview | None:
        """A copy of the slot's KV cells as llama.cpp's sequence state (None when llama.cpp gives none)."""
        ctx = self._context.ctx
        size = self._lib.llama_state_seq_get_size(ctx, slot.seq_id)
        buffer = (ctypes.c_uint8 * size)()
        written = self._lib.llama_state_seq_get_data(ctx, buffer, size, slot.seq_id)
        return memoryview(buffer)[:written] if written else None

    def _load(self, slot: Slot, prompt: list[int], reuse: int) -> int:
        """Fill `slot` from the disk tier when a stored prefix gives DISK_MIN_TOKENS more than `reuse` tokens of
        `prompt`; the tokens now reusable (`reuse` when nothing was loaded)."""
        store = self._store
        found = store.best(prompt) if store is not None else None
        if store is None or found is None or min(found[1], len(prompt) - 1) < reuse + DISK_MIN_TOKENS:
            return reuse
        entry, shared = found
        started = time.perf_counter()
        state = store.read(entry)
        if state is None:
            return reuse
        read = time.perf_counter()
        buffer = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
        accepted = self._lib.llama_state_seq_set_data(self._context.ctx, buffer, len(state), slot.seq_id)
        # Where a load's time goes: the file (read and checked) against llama.cpp taking the state, which is all a
        # RAM tier would leave (docs/benchmarks.md, the long prompt).
        log.debug("disk tier: %d tokens (%d bytes) loaded: file %.1f ms, state set %.1f ms", len(entry.tokens), len(state),
                  (read - started) * 1000, (time.perf_counter() - read) * 1000)
        if not accepted:
            log.warning("llama.cpp refused the stored state of %d tokens; reading the prompt instead", len(entry.tokens))
            self._lib.llama_memory_seq_rm(self._context.memory, slot.seq_id, 0, -1)
            slot.cached.clear()
            return 0
        slot.cached = list(entry.tokens)
        loaded = min(shared, len(prompt) - 1)
        self._counters["disk"] += loaded
        return loaded

    def _discard(self, sequence: Sequence) -> None:
        assert isinstance(sequence, LlamaSequence)
        sequence.sampler.close()

    def _running_count(self) -> int:
        return len(self._running())

    def _kv_cache_tokens(self) -> tuple[int, int]:
        return sum(len(slot.cached) for slot in self.slots), len(self.slots) * self._slot_context

    def _step(self) -> None:
        self._admit()
        self._drop_cancelled()
        self._read_image()
        started = time.perf_counter()
        fed = self._fill_batch()
        if not fed:
            return
        try:
            self._decode(fed)
        except Exception as exc:  # the error reaches the requests in the batch; the engine keeps going
            log.exception("decode failed")
            for item in fed:
                self._finish(item.slot, exc)
            return
        elapsed = time.perf_counter() - started
        if log.isEnabledFor(logging.DEBUG):  # the step log: where a new request waits before its first token
            log.debug("step: %d tokens, %d of them prompt, %d sequences, %.1f ms", self._batch.n_tokens,
                      self._prompt_in_step, len(fed), elapsed * 1000)
        if self._prompt_in_step:
            self._prefill.record(self._batch.n_tokens, elapsed)
            self._record_prompt(time.perf_counter(), self._prompt_in_step, elapsed)
        else:
            # A step of streaming sequences only, sampling included: what guesses are weighed against.
            self._step_cost.record(self._batch.n_tokens, elapsed)

    def _read_image(self) -> None:
        """One image per step, for the first sequence whose prompt reading has reached one: the vision tower encodes
        it and its embeddings go into the sequence's slot (a decode of its own; the batch of the step follows)."""
        for slot in self._running():
            sequence = slot.sequence
            assert isinstance(sequence, LlamaSequence)
            if sequence.first_token_at is not None or not sequence.pending or sequence.pending[0] >= 0:
                continue
            media = sequence.media
            assert isinstance(media, LlamaImages)
            chunk = media.chunks_at[len(slot.cached)]
            started = time.perf_counter()
            try:
                media.projector.read(chunk, self._context.ctx, len(slot.cached), slot.seq_id)
            except Exception as exc:  # this sequence's image: it alone fails
                log.error("an image could not be read: %s", exc)
                self._finish(slot, exc)
                return
            finally:
                self._copies_pending.discard(slot.seq_id)  # that decode applied any pending copy
            elapsed = time.perf_counter() - started
            slot.cached.extend(sequence.pending[: chunk.tokens])
            del sequence.pending[: chunk.tokens]
            self._counters["images"] += 1
            self._record_prompt(time.perf_counter(), chunk.tokens, elapsed)
            if not sequence.pending:  # nothing after the image gives the logits of a first token
                self._finish(slot, ValueError("the prompt ends with an image; a chat template ends it with text"))
            return

    def _running(self) -> list[Slot]:
        return [s for s in self.slots if s.sequence is not None]

    def _admit(self) -> None:
        """Give free slots to waiting sequences (in `_pop_waiting`'s order) whose prompts would be read now, each
        to the slot with the longest shared prefix; a longer prefix in another slot's cache (running or not) is
        copied into it first. Prompts are read shortest first (`_fill_batch`), so two long prompts (more than a
        step's worth each) read at once would only slow each other: while one is read, the next waits in the
        queue, and the slot stays free for short ones (the next turn of a conversation, while a new agent's long
        prompt is read)."""
        if not self._waiting:  # (every step: the budget below is weighed only when someone waits)
            return
        running = self._running()
        budget = self._prompt_budget(running)
        reading = [len(sequence.pending) for sequence in self._sequences(running) if sequence.first_token_at is None]

        def read_next_step(sequence: Sequence) -> bool:
            """Whether its prompt would be read now: it is short (under a step's worth), or no long one is read."""
            assert sequence.to_read is not None
            return sequence.to_read < budget or all(left < budget for left in reading)

        while self._waiting:
            free = [s for s in self.slots if s.sequence is None]
            if not free:
                return
            sequence = self._pop_waiting(read_next_step)
            if sequence is None:
                return
            assert isinstance(sequence, LlamaSequence)
            prompt = sequence.prompt
            # A sequence that reads its whole prompt takes the least recently used slot, leaving the caches that
            # others may share.
            from_scratch = not self._reuses_prefix(sequence)
            if not from_scratch and self._prefill_to_share(prompt):
                self._put_back(sequence)  # another slot is reading this prompt's prefix: wait, then copy it
                return
            # Of the slots with the longest shared prefix, one beside running sequences (see `_write_batch`).
            slot = max(free, key=lambda s: (common_prefix(s.cached, prompt), self._busy_neighbours(s), -s.last_used))
            hit = 0 if from_scratch else common_prefix(slot.cached, prompt)
            if hit < min(MIN_SHARED_PREFIX, len(prompt) // 2):
                # No real hit (a chat template's few opening tokens before a long prompt are not one): the least
                # recently used slot gives up its cache, so that those other prompts may still find theirs (of
                # never used slots, one beside running sequences).
                slot = min(free, key=lambda s: (s.last_used, -self._busy_neighbours(s)))
                hit = 0 if from_scratch else common_prefix(slot.cached, prompt)
            reuse = min(hit, len(prompt) - 1) if hit else 0
            if len(slot.cached) - hit >= DISK_MIN_TOKENS:
                self._save(slot)  # its long prefix is about to be dropped or overwritten
            if not from_scratch:
                donor = max(self.slots, key=lambda s: common_prefix(s.cached, prompt))
                shared = min(common_prefix(donor.cached, prompt), len(prompt) - 1)
                loaded = self._load(slot, prompt, max(reuse, shared))
                if loaded != max(reuse, shared):  # from disk, which gave more than any slot: no copy (it would land
                    reuse = loaded  # at the next decode, over what was loaded)
                elif donor is not slot and shared >= reuse + self._worth_copying(len(donor.cached)):
                    self._copy(donor, slot)  # the part past the shared prefix is dropped below
                    slot.cached = list(donor.cached)
                    self._counters["shared"] += shared
                    reuse = shared
            self._lib.llama_memory_seq_rm(self._context.memory, slot.seq_id, reuse, -1)
            del slot.cached[reuse:]
            sequence.pending = prompt[reuse:]
            if self._draft_tokens and sequence.media is None:  # (guesses from a prompt with images could be image ids)
                sequence.lookup = PromptLookup(prompt, self._draft_tokens)
            slot.sequence = sequence
            sequence.cached_tokens = reuse
            self._counters["prompt"] += len(prompt)
            self._counters["cached"] += reuse
            sequence.admitted = time.perf_counter()
            reading.append(len(sequence.pending))

    def _to_read(self, sequence: Sequence) -> int:
        """The prompt tokens past the longest prefix a slot (its own or one to copy) or the disk tier holds."""
        prompt = sequence.prompt
        if not self._reuses_prefix(sequence):
            return len(prompt)
        held = max(common_prefix(slot.cached, prompt) for slot in self.slots)
        stored = self._store.best(prompt) if self._store is not None else None
        if stored is not None:
            held = max(held, stored[1])
        return len(prompt) - min(held, len(prompt) - 1)

    def _busy_neighbours(self, slot: Slot) -> int:
        """How many of the slots with the sequence ids next to this one's are running a sequence."""
        return sum(0 <= i < len(self.slots) and self.slots[i].sequence is not None
                   for i in (slot.seq_id - 1, slot.seq_id + 1))

    def _copy_seconds(self, cells: int) -> float:
        """What copying a slot that holds `cells` tokens into another takes, the quicker way (see `_copy`)."""
        if self._token_copy_seconds:
            return min(self._slot_copy_seconds, 2 * cells * self._token_copy_seconds)  # 2: out of llama.cpp, then in
        return self._slot_copy_seconds

    def _copy(self, donor: Slot, slot: Slot) -> None:
        """Put `donor`'s KV into `slot`. Slots are separate KV streams: llama.cpp's sequence copy copies the donor's
        whole stream (at the next decode, before the batch), its size set by the slot's context, not by the prefix;
        where the donor holds few of its tokens, moving its sequence state out and into the slot (what the disk tier
        loads) moves only those, now."""
        if (donor.seq_id not in self._copies_pending  # (its cells land at that decode)
                and self._copy_seconds(len(donor.cached)) < self._slot_copy_seconds):
            state = self._state_of(donor)
            if state is not None and self._lib.llama_state_seq_set_data(
                    self._context.ctx, (ctypes.c_uint8 * len(state)).from_buffer(state), len(state), slot.seq_id):
                log.debug("slot %d: slot %d's %d tokens moved in as their state", slot.seq_id, donor.seq_id,
                          len(donor.cached))
                return
            log.warning("slot %d's state could not be moved into slot %d: its stream is copied", donor.seq_id,
                        slot.seq_id)
        self._lib.llama_memory_seq_cp(self._context.memory, donor.seq_id, slot.seq_id, -1, -1)
        self._copies_pending.add(slot.seq_id)

    def _worth_copying(self, cells: int) -> int:
        """The fewest shared tokens worth copying another slot's KV for, when that slot holds `cells` tokens: as many
        as cost the copy's time to read, by the steps measured so far. On a few CPU cores that is a handful (a
        42-token prompt took 185 ms to read, the copy of its slot's stream 5-8 ms, of its state under 1 ms); on a
        GPU, with long slots, hundreds."""
        per_token = self._prefill.seconds_per_token()
        if per_token is None or not self._slot_copy_seconds:
            return MIN_SHARED_PREFIX
        return max(1, math.ceil(self._copy_seconds(cells) / per_token))

    def _prefill_to_share(self, prompt: list[int]) -> bool:
        """Whether a running sequence is still reading a long prefix of `prompt` that no cache holds yet: the
        request that arrived with it waits for that read and copies it, instead of reading it again."""
        wanted = max(common_prefix(s.cached, prompt) for s in self.slots) + self._worth_copying(len(prompt))
        for slot in self._running():
            sequence = slot.sequence
            assert isinstance(sequence, LlamaSequence)
            if sequence.pending and common_prefix(sequence.prompt, prompt) >= wanted:
                return True
        return False

    def _drop_cancelled(self) -> None:
        for slot in self._running():
            if slot.sequence.cancelled:  # type: ignore[union-attr]  (running slots have one)
                self._free(slot)

    def _fill_batch(self) -> list[Fed]:
        """Fill the batch: each running sequence's next token, prompt chunks, then guesses worth their cost."""
        fed: list[Fed] = []
        n = 0
        self._prompt_in_step = 0
        running = self._running()
        prefill_budget = self._prompt_budget(running)
        # Streaming sequences first (one token each), then prompts, the shortest rest first (a conversation's next
        # turn is read in a step, not after a new agent's long prompt; of equal ones, the first to arrive).
        running.sort(key=self._feeding_order)
        # The prompt admitted first keeps half of the step's prompt tokens when shorter ones go ahead of it: a
        # stream of short prompts never holds a long one back for ever.
        readers = [slot for slot in running if slot.sequence.first_token_at is None]  # type: ignore[union-attr]
        first = min(readers, key=lambda slot: slot.sequence.admitted) if readers else None  # type: ignore[union-attr]
        kept = (min(len(first.sequence.pending), prefill_budget // 2)  # type: ignore[union-attr]
                if first is not None and first is not readers[0] else 0)
        for slot in running:
            sequence = slot.sequence
            assert sequence is not None
            reading_prompt = sequence.first_token_at is None
            if reading_prompt:
                room = max(0, min(self._batch_size - n, prefill_budget - (0 if slot is first else kept)))
            else:
                room = self._batch_size - n
            take = sequence.pending[:room]
            if sequence.media is not None:  # up to its next image, which `_read_image` reads in a step of its own
                take = take[: next((i for i, t in enumerate(take) if t < 0), len(take))]
            if not take:
                continue
            if reading_prompt:
                prefill_budget -= len(take)
                self._prompt_in_step += len(take)
            fed.append(Fed(slot, len(slot.cached), take, samples=len(take) == len(sequence.pending)))
            n += len(take)
            slot.cached.extend(take)
            del sequence.pending[: len(take)]
        self._add_guesses(fed, n)
        self._write_batch(fed)
        return fed

    def _prompt_budget(self, running: list[Slot]) -> int:
        """The prompt tokens the next step may read: while others stream, what fits in a bounded step beside the
        streams' tokens, so that their next token is not held up long; with none streaming, the batch."""
        streams = [sequence for sequence in self._sequences(running) if sequence.first_token_at is not None]
        return self._prefill.tokens(sum(len(sequence.pending) for sequence in streams)) if streams else self._batch_size

    @staticmethod
    def _sequences(running: list[Slot]) -> list[LlamaSequence]:
        return [slot.sequence for slot in running if slot.sequence is not None]

    @staticmethod
    def _feeding_order(slot: Slot) -> tuple[bool, int, float]:
        """Streams first, then sequences reading their prompt by the tokens they have left, then by arrival."""
        sequence = slot.sequence
        assert sequence is not None
        reading = sequence.first_token_at is None
        return reading, len(sequence.pending) if reading else 0, sequence.arrived

    def _write_batch(self, fed: list[Fed]) -> None:
        """Write the batch rows in slot order. llama.cpp splits a batch over separate KV streams into one pass over
        the weights per run of consecutive sequence ids in row order (`split_equal`, sequential): rows in arrival
        order made a step of 16 streams several passes, and the server slower the longer it ran."""
        n = 0
        for item in sorted(fed, key=lambda f: f.slot.seq_id):
            seq_id, position = item.slot.seq_id, item.start
            for i, token in enumerate(item.tokens):
                self._put(n, token, position, seq_id, logits=item.samples and i == len(item.tokens) - 1)
                n, position = n + 1, position + 1
            item.row = n - 1 if item.samples else -1
            for token in item.draft:
                self._put(n, token, position, seq_id, logits=True)
                item.draft_rows.append(n)
                n, position = n + 1, position + 1
        self._batch.n_tokens = n

    def _put(self, row: int, token: int, position: int, seq_id: int, *, logits: bool) -> None:
        batch = self._batch
        batch.token[row] = token
        batch.pos[row] = position
        batch.n_seq_id[row] = 1
        batch.seq_id[row][0] = seq_id
        batch.logits[row] = logits

    def _add_guesses(self, fed: list[Fed], n: int) -> None:
        """Give streaming sequences the guesses that raise the step's expected tokens per second (`n`: the tokens
        in the batch so far)."""
        if not self._draft_tokens:
            return
        cost = self._step_cost.estimate()
        produced = float(sum(item.samples for item in fed))
        fixed, per_token = cost or (1.0, 0.0)
        seconds = fixed + per_token * n
        for item in fed:
            slot, sequence = item.slot, item.slot.sequence
            assert isinstance(sequence, LlamaSequence)
            if sequence.lookup is None or sequence.first_token_at is None or not item.samples:
                continue
            # A guess past the slot's KV stream would fail the whole decode.
            guess = sequence.lookup.guess(min(self._batch_size - n, self._slot_context - len(slot.cached)))
            item.draft = guesses_to_feed(sequence.lookup, guess, cost, produced, seconds, self._adaptive_drafts)
            if not item.draft:
                continue
            drafted = len(item.draft)
            slot.cached.extend(item.draft)
            n += drafted
            produced += sequence.lookup.expected_tokens(drafted) - 1
            seconds += drafted * per_token

    def _decode(self, fed: list[Fed]) -> None:
        code = self._lib.llama_decode(self._context.ctx, self._batch)
        self._copies_pending.clear()
        if code != 0:
            raise RuntimeError(f"llama_decode returned {code}")
        now = time.perf_counter()
        produced = 0
        for item in fed:
            slot, sequence = item.slot, item.slot.sequence
            if item.row < 0 or sequence is None:
                continue
            accepted, finished = 0, False
            try:
                # The next token, then one more for each guess the sampler confirms: every token is drawn from its
                # own logits row by the sequence's sampler, exactly as one step at a time would.
                for j, row in enumerate([item.row, *item.draft_rows]):
                    token, finished = self._sample(sequence, row, now)
                    produced += 1
                    hit = j < len(item.draft) and token == item.draft[j]
                    accepted += hit
                    if finished or not hit:
                        break
            except Exception as exc:  # this sequence's grammar, sampler or text: it alone fails, the others go on
                log.error("a sequence failed on its own: %s: %s", type(exc).__name__, exc)
                self._finish(slot, exc)
                continue
            if item.draft:
                self._drop_rejected(slot, len(item.draft) - accepted)
                self._count_guesses(sequence.lookup, len(item.draft), accepted)
            if finished:
                self._free(slot)
            else:
                sequence.pending.append(token)
        self._record_step(now, produced)

    def _sample(self, sequence: LlamaSequence, row: int, now: float) -> tuple[int, bool]:
        """Draw the sequence's token from a logits row and hand it on; (token, sequence finished)."""
        logprobs = None
        if sequence.shapes_logits:
            # The sampler reads the context's logits row: shaping it in place is what it then samples from.
            logits = np.ctypeslib.as_array(self._lib.llama_get_logits_ith(self._context.ctx, row), shape=(self._n_vocab,))
            logprobs = self._shape_logits(sequence, logits)
        token = self._lib.llama_sampler_sample(sequence.sampler.sampler, self._context.ctx, row)
        if sequence.lookup is not None:
            sequence.lookup.extend([token])
        return token, self._deliver(sequence, token, now, self._logprob_of(sequence, logprobs, token))

    def _drop_rejected(self, slot: Slot, rejected: int) -> None:
        """Forget the KV cells of guesses the model did not confirm."""
        if rejected:
            keep = len(slot.cached) - rejected
            self._lib.llama_memory_seq_rm(self._context.memory, slot.seq_id, keep, -1)
            del slot.cached[keep:]

    def _fail_running(self, error: BaseException) -> None:
        for slot in self._running():
            self._finish(slot, error)

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
