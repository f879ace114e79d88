"""The GGUF engine's own scheduling logic, without a model: how it writes a step's batch, which slot a new
sequence takes, and how many prompt tokens a step reads while others stream. llama.cpp (separate KV streams per slot) splits a batch into one pass over the weights per run of
consecutive sequence ids in row order, so rows go in slot order and a new sequence goes beside running ones
where that costs no cached prefix. The served effect is measured in docs/benchmarks.md; here the rules themselves.
"""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

from local_llm_api.backends.base import SamplingParams
from local_llm_api.backends.batching import BatchEngine, LlamaSequence, Slot
from local_llm_api.backends.prefill_budget import PrefillBudget
from local_llm_api.backends.prompt_lookup import PromptLookup


class FakeLlamaLib:
    """The few llama.cpp calls that admission and batch filling make; the batch is plain lists."""

    def llama_batch_init(self, n_tokens: int, embd: int, n_seq_max: int) -> SimpleNamespace:
        return SimpleNamespace(token=[0] * n_tokens, pos=[0] * n_tokens, n_seq_id=[0] * n_tokens,
                               seq_id=[[0] for _ in range(n_tokens)], logits=[False] * n_tokens, n_tokens=0)

    def llama_memory_seq_rm(self, *_: Any) -> bool:
        return True

    def llama_memory_seq_cp(self, *_: Any) -> None:
        pass

    def llama_batch_free(self, _: Any) -> None:
        pass


class StillEngine(BatchEngine):
    def start(self) -> None:
        """No engine thread: the test takes the steps' parts itself."""


def engine(slots: int, draft_tokens: int = 0, batch_size: int = 64, prefill_step_seconds: float = 0.0) -> StillEngine:
    return StillEngine(llama_cpp=FakeLlamaLib(), context=SimpleNamespace(memory=None, ctx=None), n_slots=slots,
                       slot_context=512, max_queue=8, batch_size=batch_size, prefill_chunk=16, prefix_cache=True,
                       prefill_step_seconds=prefill_step_seconds, draft_tokens=draft_tokens, make_sampler=lambda _: None, token_bytes=lambda t: b"x",
                       is_end=lambda t: False, name="test", n_vocab=100)


PARAMS = SamplingParams(max_tokens=8, temperature=0.7, top_p=1.0, top_k=0, min_p=0.0, repeat_penalty=1.0)


def sequence(prompt: list[int]) -> LlamaSequence:
    return LlamaSequence(prompt, PARAMS, None, lambda _: None)  # type: ignore[arg-type]  (no text: never sampled)


def streaming(slot: Slot, prompt: list[int], arrived: float) -> LlamaSequence:
    """A sequence in `slot` that has read its prompt and waits to feed its last sampled token."""
    running = sequence(prompt)
    running.arrived, running.first_token_at = arrived, arrived
    running.pending = [7]
    slot.cached, slot.sequence = list(prompt), running
    return running


def rows(e: StillEngine) -> list[tuple[int, int, int, bool]]:
    """(sequence id, position, token, logits wanted) of each batch row."""
    b = e._batch
    return [(b.seq_id[r][0], b.pos[r], b.token[r], b.logits[r]) for r in range(b.n_tokens)]


def test_rows_are_written_in_slot_order_whatever_the_arrival_order() -> None:
    e = engine(4)
    for slot, arrived in zip(e.slots, (3.0, 1.0, 4.0, 2.0), strict=True):
        streaming(slot, [1, 2, 3], arrived)
    reader = e.slots[2].sequence  # one still reading its prompt: its chunk follows its slot's place too
    assert reader is not None
    reader.first_token_at, reader.pending = None, [5, 6, 8]
    e.slots[2].cached = [1]
    fed = e._fill_batch()
    assert rows(e) == [(0, 3, 7, True), (1, 3, 7, True), (2, 1, 5, False), (2, 2, 6, False), (2, 3, 8, True),
                       (3, 3, 7, True)]
    # Each sequence's sampled row is found where it was written.
    assert {item.slot.seq_id: item.row for item in fed} == {0: 0, 1: 1, 2: 4, 3: 5}


def test_guesses_follow_their_own_sequence_in_the_batch() -> None:
    e = engine(3, draft_tokens=4)
    # Slot 0 arrived last; slot 1 can guess: its text ends with "4 5", which its prompt continued with 6 9.
    streaming(e.slots[0], [9, 9, 9], arrived=2.0)
    guesser = streaming(e.slots[1], [4, 5, 6, 9, 4], arrived=1.0)
    guesser.pending = [5]
    guesser.lookup = _lookup([4, 5, 6, 9, 4, 5])
    streaming(e.slots[2], [8, 8, 8], arrived=3.0)
    fed = e._fill_batch()  # no step timed yet: the engine feeds two guesses to learn what a token costs
    assert rows(e) == [(0, 3, 7, True), (1, 5, 5, True), (1, 6, 6, True), (1, 7, 9, True), (2, 3, 7, True)]
    item = next(f for f in fed if f.slot.seq_id == 1)
    assert (item.row, item.draft, item.draft_rows) == (1, [6, 9], [2, 3])


def _lookup(text: list[int]) -> PromptLookup:
    lookup = PromptLookup(text[:-1], max_draft=4)
    lookup.extend(text[-1:])
    return lookup


def test_a_new_sequence_takes_a_slot_beside_running_ones_among_equal_hits() -> None:
    e = engine(6)
    prompt = list(range(100, 200))
    now = time.perf_counter()
    for i, slot in enumerate(e.slots):  # every slot holds the same prompt; slot 0 is the least recently used
        slot.cached, slot.last_used = list(prompt), now + i
    streaming(e.slots[4], prompt, arrived=now)
    e._waiting.append(sequence(prompt))
    e._admit()
    assert e.slots[5].sequence is not None or e.slots[3].sequence is not None
    assert e.slots[0].sequence is None


def test_a_prompt_without_a_hit_keeps_the_least_recently_used_rule_and_prefers_neighbours_among_unused_slots() -> None:
    e = engine(6)
    streaming(e.slots[3], [1, 2, 3], arrived=1.0)
    e._waiting.append(sequence([50, 51, 52]))
    e._admit()  # no slot has been used: one beside the running sequence
    assert e.slots[2].sequence is not None or e.slots[4].sequence is not None
    e = engine(6)
    now = time.perf_counter()
    for i, slot in enumerate(e.slots):
        slot.cached, slot.last_used = [60 + i] * 80, now + i
    streaming(e.slots[3], [1, 2, 3], arrived=1.0)
    e._waiting.append(sequence([50] * 80))
    e._admit()  # every free slot keeps another prompt's cache: the least recently used one gives its cache up
    assert e.slots[0].sequence is not None


def reading(slot: Slot, prompt: list[int], arrived: float) -> LlamaSequence:
    """A sequence in `slot` admitted with nothing cached, about to read its whole prompt."""
    new = sequence(prompt)
    new.arrived, new.pending = arrived, list(prompt)
    slot.cached, slot.sequence = [], new
    return new


def prompt_tokens_read(e: StillEngine) -> dict[int, int]:
    """Prompt rows of the step just filled, by slot (streams feed one row each, token 7)."""
    counts: dict[int, int] = {}
    for seq_id, _, token, _ in rows(e):
        if token != 7:
            counts[seq_id] = counts.get(seq_id, 0) + 1
    return counts


def measured(e: StillEngine, fixed: float, per_token: float) -> None:
    """Steps that read prompts, as the engine records them: `fixed` seconds plus `per_token` for each token."""
    for tokens in (20, 60, 100, 140):
        e._prefill.record(tokens, fixed + per_token * tokens)


def test_prompts_arriving_together_beside_streams_are_read_in_one_step_when_it_fits_the_bound() -> None:
    e = engine(6, batch_size=512, prefill_step_seconds=0.15)
    streaming(e.slots[0], [1, 2, 3], 1.0)
    streaming(e.slots[1], [1, 2, 3], 1.0)
    for i, slot in enumerate(e.slots[2:]):
        reading(slot, list(range(10, 40)), 2.0 + i)  # four prompts of 30 tokens, arrived together
    measured(e, fixed=0.01, per_token=0.001)  # 0.15 s holds 140 tokens: 2 streams' tokens and 120 of the prompts
    e._fill_batch()
    assert prompt_tokens_read(e) == {2: 30, 3: 30, 4: 30, 5: 30}


def test_the_bound_cuts_prompts_beside_streams_in_arrival_order() -> None:
    e = engine(4, batch_size=512, prefill_step_seconds=0.15)
    streaming(e.slots[0], [1, 2, 3], 1.0)
    reading(e.slots[1], list(range(10, 110)), 3.0)
    reading(e.slots[2], list(range(10, 110)), 2.0)  # arrived first: read first
    measured(e, fixed=0.01, per_token=0.001)  # 139 prompt tokens fit beside the stream
    e._fill_batch()
    assert prompt_tokens_read(e) == {2: 100, 1: 39}


def test_after_one_measured_step_the_budget_takes_its_time_per_token_as_the_cost() -> None:
    e = engine(4, batch_size=512, prefill_step_seconds=0.15)
    streaming(e.slots[0], [1, 2, 3], 1.0)
    for i, slot in enumerate(e.slots[1:]):
        reading(slot, list(range(10, 50)), 2.0 + i)
    e._prefill.record(40, 0.04)  # one prompt read so far (a fresh server): 1 ms a token, fixed part unknown
    e._fill_batch()
    assert prompt_tokens_read(e) == {1: 40, 2: 40, 3: 40}  # 149 tokens would fit beside the stream


def test_until_a_step_has_been_measured_or_with_no_bound_a_step_reads_prefill_chunk_tokens() -> None:
    for e in (engine(3, batch_size=512, prefill_step_seconds=0.15), engine(3, batch_size=512)):
        streaming(e.slots[0], [1, 2, 3], 1.0)
        reading(e.slots[1], list(range(10, 40)), 2.0)
        reading(e.slots[2], list(range(10, 40)), 3.0)
        if e._prefill._step_seconds == 0:
            measured(e, fixed=0.01, per_token=0.001)  # measured, but no bound: the chunk only
        e._fill_batch()
        assert prompt_tokens_read(e) == {1: 16}  # PREFILL_CHUNK in all, to the first arrived


def test_with_nothing_streaming_prompts_fill_the_batch_and_a_slow_machine_still_reads_prefill_chunk() -> None:
    e = engine(3, batch_size=64, prefill_step_seconds=0.15)
    reading(e.slots[0], list(range(10, 50)), 1.0)
    reading(e.slots[1], list(range(10, 50)), 2.0)
    e._fill_batch()
    assert prompt_tokens_read(e) == {0: 40, 1: 24}  # the batch's 64 tokens, no bound: nobody waits on them
    slow = engine(3, batch_size=512, prefill_step_seconds=0.15)
    streaming(slow.slots[0], [1, 2, 3], 1.0)
    reading(slow.slots[1], list(range(10, 50)), 2.0)
    measured(slow, fixed=0.01, per_token=0.05)  # only 2 tokens would fit: PREFILL_CHUNK is the floor
    slow._fill_batch()
    assert prompt_tokens_read(slow) == {1: 16}


def test_prefill_budget_takes_the_whole_batch_where_tokens_cost_nothing_more() -> None:
    budget = PrefillBudget(0.15, floor=64, ceiling=2048)
    assert budget.tokens(8) == 64
    for tokens in (10, 200, 900):
        budget.record(tokens, 0.02)  # a GPU: the step's time does not grow with its tokens
    assert budget.tokens(8) == 2048
