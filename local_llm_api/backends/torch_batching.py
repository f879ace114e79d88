"""Dynamic batching for Transformers models: the running sequences share one padded KV cache and one
forward pass per step.

One engine thread per model. Each step it
1. admits waiting sequences (those that waited longest for the prompt tokens they must read past the kept
   prefixes first, `Engine._pop_waiting`) while fewer than PARALLEL_SLOTS are in play,
2. feeds one prompt chunk (while others stream, what a pass of PREFILL_STEP_MS reads by the measured cost of a
   token, at least PREFILL_CHUNK, `prefill_budget.py`; the whole prompt otherwise) of the
   oldest sequence still reading its prompt, in a cache of its own; when the prompt is done, samples its
   first token and merges its cache into the batch (left-padded to the batch's length),
3. decodes one token of every running sequence in one forward pass (attention mask for the padding,
   each row its own positions), and samples each row with the sequence's own sampler.
Finished and cancelled rows leave the batch at once; padding columns no row needs are cut away.

Prefix cache: the KV of each read prompt, and of each finished sequence (prompt and answer), is kept for the
next PARALLEL_SLOTS prompts (least recently used first out); a new prompt starts from a copy of the longest
kept prefix it shares (agents: one system prompt and tool list; chats: the previous turn) and reads the rest.

Merging caches needs plain `DynamicLayer`s (full attention); a model with other cache layers (sliding
window, quantised, ...) runs its sequences one at a time.

Prompt lookup (`prompt_lookup.py`): a sequence decoding alone feeds guessed tokens after its next one in the same
forward pass when that raises the expected tokens per second, as on the GGUF engine; the cache is cropped back to
the tokens the sampler confirmed. Beside other rows it does not guess: the batch cache holds one column per step
for every row, and rows that kept different numbers of guesses would leave holes in it. Like the prefix cache, it
needs plain cache layers (a sliding-window layer cut back would have lost the columns the guesses pushed out).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..structured.constraint import ConstraintFactory
from ..structured.logprobs import TokenLogprob
from .base import GenerationChunk, SamplingParams, SequenceText
from .engine import Engine, Sequence, common_prefix
from .prefill_budget import PrefillBudget
from .torch_vision import TorchImages, prompt_embeddings
from .prompt_lookup import PromptLookup, StepCost, guesses_to_feed
from .torch_sampling import TokenSampler

log = logging.getLogger("local_llm_api.torch_batching")

# Below this many tokens a shared prefix is read again rather than copied.
MIN_SHARED_PREFIX = 16


@dataclass(eq=False)
class KeptPrefix:
    """The KV of a token sequence that was read (positions 0..n-1): per layer, keys and values (1, heads, n, dim)."""

    tokens: list[int]
    layers: list[tuple[torch.Tensor, torch.Tensor]]


@dataclass(eq=False)
class TorchSequence(Sequence):
    sampler: TokenSampler | None = None
    cache: Any = None  # its own DynamicCache while it reads its prompt
    fed: int = 0  # prompt tokens in the cache so far
    next_token: int = 0  # the last sample, fed at the next step
    history: list[int] = field(default_factory=list)  # prompt and answer, for the repetition penalties
    lookup: PromptLookup | None = None  # drafts guesses from its prompt and output (None: speculation off)
    embeddings: Any = None  # a prompt with images: all of it as input embeddings, made when first read


class TorchBatchEngine(Engine):
    def __init__(
        self,
        *,
        model: Any,
        n_slots: int,
        max_queue: int,
        prefill_chunk: int,
        prefix_cache: bool = True,
        prefill_step_seconds: float = 0.0,
        reproducible: bool = False,
        draft_tokens: int = 0,
        adaptive_drafts: bool = True,
        make_sampler: Callable[[SamplingParams], TokenSampler],
        token_bytes: Callable[[int], bytes],
        is_end: Callable[[int], bool],
        name: str,
        constraints: ConstraintFactory | None = None,
    ) -> None:
        super().__init__(n_slots=n_slots, max_queue=max_queue, token_bytes=token_bytes, is_end=is_end, name=name,
                         constraints=constraints)
        self._model = model
        self._device = model.device
        # No batch ceiling here: a prompt read is a forward pass of its own, as long as the prompt when nothing streams.
        self._prefill = PrefillBudget(prefill_step_seconds, prefill_chunk, 1 << 30)
        # A prefix of a sliding-window or quantised cache is not the prefix's KV: kept only for plain layers.
        self._prefix_cache = prefix_cache and can_batch(model)
        self._reproducible = reproducible
        self._kept: list[KeptPrefix] = []  # least recently used first
        # Guesses are taken back by cutting the cache's last columns: only plain layers hold every column.
        self._draft_tokens = draft_tokens if can_batch(model) else 0
        self._adaptive_drafts = adaptive_drafts
        self._step_cost = StepCost()
        self._max_positions = int(getattr(model.config.get_text_config(), "max_position_embeddings", 0) or 0)
        self._make_sampler = make_sampler
        self._rows: list[TorchSequence] = []  # decoding, in the order of the batch cache's rows
        self._reading: list[TorchSequence] = []  # admitted, still reading their prompt
        self._cache: Any = None
        self._mask: torch.Tensor | None = None  # (rows, cache length): 0 marks left padding
        self.start()

    def _new_sequence(self, prompt: list[int], params: SamplingParams, text: SequenceText,
                      emit: Callable[[GenerationChunk | BaseException], None]) -> Sequence:
        return TorchSequence(prompt, params, text, emit, sampler=self._make_sampler(params), history=list(prompt))

    def _running_count(self) -> int:
        return len(self._rows) + len(self._reading)

    def _kv_cache_tokens(self) -> tuple[int, int]:
        kept = sum(len(k.tokens) for k in list(self._kept))
        return kept + sum(len(s.history) for s in [*self._rows, *self._reading]), 0

    def close(self) -> None:
        super().close()
        self._model = None  # the last reference besides the backend's: the weights can be freed

    def _release(self) -> None:
        self._cache = self._mask = None
        self._rows.clear()
        self._reading.clear()
        self._kept.clear()

    # ---------------------------------------------------------------- one step

    @torch.inference_mode()
    def _step(self) -> None:
        while self._running_count() < self.n_slots and self._waiting:
            sequence = self._pop_waiting()
            if sequence is None:
                break
            assert isinstance(sequence, TorchSequence)
            if isinstance(sequence.media, TorchImages):  # image tokens go by their real ids past the prompt
                sequence.history = list(sequence.media.history)
            if self._draft_tokens:  # indexes the prompt's n-grams: here, off the event loop
                sequence.lookup = PromptLookup(sequence.history, self._draft_tokens)
            self._reading.append(sequence)
            self._counters["prompt"] += len(sequence.prompt)
        self._reading = [s for s in self._reading if not s.cancelled]
        self._keep_rows([s for s in self._rows if not s.cancelled])
        try:
            if self._reading:
                self._read_prompt(self._reading[0])
            if self._rows:
                self._decode()
        except Exception as exc:  # the error reaches the requests in play; the engine keeps going
            log.exception("forward pass failed")
            self._fail_running(exc)

    def _fail_running(self, error: BaseException) -> None:
        for sequence in self._rows + self._reading:
            sequence.emit(error)
        self._release()

    def _read_prompt(self, sequence: TorchSequence) -> None:
        from transformers import DynamicCache

        # Prompts are read one at a time: one that shares a prefix with the one read before it copies its KV.
        if sequence.cache is None and self._reuses_prefix(sequence):
            self._start_from_kept(sequence)
        if sequence.cache is None:
            sequence.cache = DynamicCache(config=self._model.config)
        room = self._prefill.tokens(0) if self._rows else len(sequence.prompt)
        chunk = sequence.prompt[sequence.fed : sequence.fed + room]
        started = time.perf_counter()
        out = self._model(
            **self._prompt_inputs(sequence, len(chunk)),
            position_ids=torch.arange(sequence.fed, sequence.fed + len(chunk), device=self._device)[None],
            past_key_values=sequence.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        elapsed = time.perf_counter() - started
        self._prefill.record(len(chunk), elapsed)
        self._record_prompt(time.perf_counter(), len(chunk), elapsed)
        sequence.fed += len(chunk)
        if sequence.fed < len(sequence.prompt):
            return
        self._reading.remove(sequence)
        sequence.embeddings = None
        self._keep(sequence.prompt, [(layer.keys, layer.values) for layer in sequence.cache.layers])
        now = time.perf_counter()
        try:
            token, logprob = self._sample(sequence, out.logits[0, -1])
            finished = self._deliver(sequence, token, now, logprob)
        except Exception as exc:  # this sequence's sampler, grammar or text: it alone fails
            self._fail_sequence(sequence, exc)
            return
        self._record_step(now, 1)
        if finished:
            self._counters["requests"] += 1
            return
        sequence.next_token = token
        self._join_batch(sequence)

    def _prompt_inputs(self, sequence: TorchSequence, count: int) -> dict[str, Any]:
        """The next `count` prompt tokens as the model reads them: ids, or for a prompt with images still to read,
        embeddings with the vision tower's features in place (the tower runs once per prompt, not per chunk)."""
        media = sequence.media
        if isinstance(media, TorchImages) and (sequence.embeddings is not None or media.reads_from(sequence.fed)):
            if sequence.embeddings is None:
                sequence.embeddings = prompt_embeddings(self._model, media)
                self._counters["images"] += media.count
            return {"inputs_embeds": sequence.embeddings[:, sequence.fed : sequence.fed + count]}
        # `history` is the prompt by the model's own ids (an image's tokens too), then the answer.
        return {"input_ids": torch.tensor([sequence.history[sequence.fed : sequence.fed + count]], device=self._device)}

    def _decode(self) -> None:
        rows = self._rows
        started = time.perf_counter()
        draft = self._draft(rows[0]) if len(rows) == 1 else []
        width = 1 + len(draft)
        assert self._mask is not None
        self._mask = torch.cat([self._mask, self._mask.new_ones((len(rows), width))], dim=1)
        out = self._model(
            input_ids=torch.tensor([[s.next_token, *draft] for s in rows], device=self._device),
            attention_mask=self._mask,
            position_ids=torch.tensor([[len(s.history) - 1 + i for i in range(width)] for s in rows],
                                      device=self._device),
            past_key_values=self._cache,
            use_cache=True,
        )
        now = time.perf_counter()
        staying, produced = [], 0
        for row, sequence in enumerate(rows):
            try:
                # The next token, then one more for each guess the sampler confirms: each drawn from its own
                # logits by the sequence's sampler, exactly as one step at a time would.
                accepted = 0
                for j in range(width):
                    token, logprob = self._sample(sequence, out.logits[row, j])
                    finished = self._deliver(sequence, token, now, logprob)
                    produced += 1
                    hit = j < len(draft) and token == draft[j]
                    accepted += hit
                    if finished or not hit:
                        break
            except Exception as exc:  # this sequence's sampler, grammar or text: it alone fails, the others go on
                self._fail_sequence(sequence, exc)
                continue
            if draft:
                self._count_guesses(sequence.lookup, len(draft), accepted)
                self._drop_guesses(len(draft) - j)
            if finished:
                self._counters["requests"] += 1
                self._keep_row(row, sequence)
            else:
                sequence.next_token = token
                staying.append(sequence)
        self._record_step(now, produced)
        self._step_cost.record(len(rows) * width, time.perf_counter() - started)
        self._keep_rows(staying)

    def _draft(self, sequence: TorchSequence) -> list[int]:
        """The guesses a lone sequence feeds after its next token: as many as raise the step's expected tokens per
        second (`prompt_lookup.draft_length`)."""
        lookup = sequence.lookup
        if lookup is None:
            return []
        room = self._max_positions - len(sequence.history) if self._max_positions else lookup.max_draft
        guess = lookup.guess(room)
        if not guess:
            return []
        cost = self._step_cost.estimate()
        step = cost[0] + cost[1] if cost else 1.0  # a step of its one token
        return guesses_to_feed(lookup, guess, cost, 1.0, step, self._adaptive_drafts)

    def _drop_guesses(self, rejected: int) -> None:
        """Cut the batch cache (one row) back by the `rejected` columns the sampler did not confirm: the next token
        and the confirmed guesses stay (the last token drawn is fed at the next step, as always)."""
        assert self._mask is not None
        if rejected:
            length = self._mask.shape[1] - rejected
            for layer in self._cache.layers:
                layer.keys, layer.values = layer.keys[:, :, :length], layer.values[:, :, :length]
            self._mask = self._mask[:, :length]

    def _sample(self, sequence: TorchSequence, logits: torch.Tensor) -> tuple[int, TokenLogprob | None]:
        assert sequence.sampler is not None
        logprobs = None
        if sequence.shapes_logits:
            # Log probabilities and the grammar mask work on a CPU float32 row (a view on CPU, else a copy).
            row = logits.float().cpu()
            logprobs = self._shape_logits(sequence, row.numpy())
            logits = row.to(logits.device)
        token = sequence.sampler.sample(logits, sequence.history)
        sequence.history.append(token)
        if sequence.lookup is not None:
            sequence.lookup.extend([token])
        return token, self._logprob_of(sequence, logprobs, token)

    # ---------------------------------------------------------------- kept prefixes

    def _to_read(self, sequence: Sequence) -> int:
        """The prompt tokens past the longest kept prefix it would start from."""
        prompt = sequence.prompt
        if not self._kept or not self._reuses_prefix(sequence):
            return len(prompt)
        shared = min(max(common_prefix(kept.tokens, prompt) for kept in self._kept), len(prompt) - 1)
        return len(prompt) - (shared if shared >= MIN_SHARED_PREFIX else 0)

    def _start_from_kept(self, sequence: TorchSequence) -> None:
        """Start the sequence's own cache from a copy of the longest kept prefix of its prompt (not all of it:
        its last token is read, for the logits of its first answer token)."""
        if not self._kept:
            return
        from transformers import DynamicCache

        best = max(self._kept, key=lambda kept: common_prefix(kept.tokens, sequence.prompt))
        shared = min(common_prefix(best.tokens, sequence.prompt), len(sequence.prompt) - 1)
        if shared < MIN_SHARED_PREFIX:
            return
        sequence.cache = DynamicCache(config=self._model.config)
        for index, (keys, values) in enumerate(best.layers):
            sequence.cache.update(keys[:, :, :shared].clone(), values[:, :, :shared].clone(), index)
        sequence.fed = sequence.cached_tokens = shared
        self._counters["cached"] += shared
        self._counters["shared"] += shared
        self._kept.remove(best)
        self._kept.append(best)

    def _keep_row(self, row: int, sequence: TorchSequence) -> None:
        """Keep a finished row's KV (its prompt and answer, without the left padding)."""
        if not self._prefix_cache:
            return
        assert self._mask is not None
        length = len(sequence.history) - 1  # the last token drawn was never fed
        start = self._mask.shape[1] - length  # its tokens are the last columns; padding is on the left
        layers = [(layer.keys[row:row + 1, :, start:start + length].clone(),
                   layer.values[row:row + 1, :, start:start + length].clone()) for layer in self._cache.layers]
        # Kept under the prompt's own ids (an image's tokens by its content), then the answer's tokens.
        self._keep((sequence.prompt + sequence.history[len(sequence.prompt):])[:length], layers)

    def _keep(self, tokens: list[int], layers: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        if not self._prefix_cache or len(tokens) < MIN_SHARED_PREFIX:
            return
        # A kept prefix of these tokens adds nothing: the longer one replaces it.
        self._kept = [kept for kept in self._kept if common_prefix(kept.tokens, tokens) < len(kept.tokens)]
        self._kept.append(KeptPrefix(list(tokens), layers))
        del self._kept[: max(0, len(self._kept) - self.n_slots)]

    # ---------------------------------------------------------------- the batch cache

    def _join_batch(self, sequence: TorchSequence) -> None:
        own, sequence.cache = sequence.cache, None
        own_mask = torch.ones((1, len(sequence.history) - 1), dtype=torch.long, device=self._device)
        if self._cache is None or not self._rows:
            self._cache, self._mask, self._rows = own, own_mask, [sequence]
            return
        assert self._mask is not None
        length = max(self._mask.shape[1], own_mask.shape[1])
        for batch_layer, own_layer in zip(self._cache.layers, own.layers, strict=True):
            batch_layer.keys = torch.cat([_left_pad(batch_layer.keys, length), _left_pad(own_layer.keys, length)])
            batch_layer.values = torch.cat([_left_pad(batch_layer.values, length), _left_pad(own_layer.values, length)])
        self._mask = torch.cat([_left_pad_mask(self._mask, length), _left_pad_mask(own_mask, length)])
        self._rows.append(sequence)

    def _keep_rows(self, keep: list[TorchSequence]) -> None:
        """Drop the rows not in `keep` (same order), and the padding columns no remaining row needs."""
        if len(keep) == len(self._rows):
            return
        if not keep:
            self._cache = self._mask = None
            self._rows = []
            return
        assert self._mask is not None
        index = torch.tensor([self._rows.index(s) for s in keep], device=self._device)
        mask = self._mask[index]
        start = int((mask.sum(dim=0) > 0).nonzero()[0])  # the first column some row attends to
        for layer in self._cache.layers:
            layer.keys = layer.keys[index, :, start:]
            layer.values = layer.values[index, :, start:]
        self._mask = mask[:, start:]
        self._rows = keep


def can_batch(model: Any) -> bool:
    """Whether this model's cache is made of plain full-attention layers that can be padded and merged."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache(config=model.config)
    return bool(cache.layers) and all(type(layer) is DynamicLayer for layer in cache.layers)


def _left_pad(tensor: torch.Tensor, length: int) -> torch.Tensor:
    """Pad (batch, heads, seq, dim) on the left of the sequence axis to `length`."""
    missing = length - tensor.shape[-2]
    return torch.nn.functional.pad(tensor, (0, 0, missing, 0)) if missing else tensor


def _left_pad_mask(mask: torch.Tensor, length: int) -> torch.Tensor:
    missing = length - mask.shape[1]
    return torch.nn.functional.pad(mask, (missing, 0)) if missing else mask
