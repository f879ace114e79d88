"""The interface every model backend implements, and the per-sequence text logic they share.

A backend turns a prompt into an async stream of `GenerationChunk`s. How it schedules the model (one
request at a time, or many sequences in one batch) is its own business; what a token means for the
client's text (UTF-8 pieces, stop strings, length limit, end-of-generation) is the same everywhere and
lives in `SequenceText`.
"""

from __future__ import annotations

import codecs
import hashlib
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, Field

from ..images import ImageInput
from ..prompting.text import StopMatcher, Utf8Stream
from ..structured.constraint import ConstraintFactory
from ..structured.logprobs import TokenLogprob


def image_token_ids(digest: str, count: int) -> list[int]:
    """The ids an image's `count` tokens stand under in a prompt: below zero (no vocabulary id), the same for the same
    picture and different for another, so that the prefix cache reuses a repeated image and nothing else."""
    base = int(hashlib.blake2b(digest.encode(), digest_size=7).hexdigest(), 16) << 8
    return [-1 - base - i for i in range(count)]


@dataclass(frozen=True)
class ThinkingControl:
    """A thinking model's reasoning block, as the engine watches it: its markers, whether the answer starts inside
    it (the prompt opened it), and a budget of tokens after which the close marker is forced."""

    open: str
    close: str
    close_tokens: tuple[int, ...]  # the close marker as tokens, forced once the budget is spent
    inside: bool = False
    budget: int | None = None


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
    grammar: str | None = None  # an llguidance grammar the output must match (structured output, forced tools)
    logprobs: int | None = None  # None: no log probabilities; n: the drawn token's and the n most likely ones
    thinking: ThinkingControl | None = None  # set for a thinking model: reasoning counted, its budget enforced
    keep_tokens: dict[int, bytes] = field(default_factory=dict)  # special tokens whose text the answer keeps (markers)

    @property
    def wants_repeatable(self) -> bool:
        """A seed or greedy decoding asks for the same answer to the same request."""
        return self.seed is not None or self.temperature == 0


@dataclass(frozen=True)
class GenerationChunk:
    """New text of one sequence; the last chunk carries the finish reason and the token count."""

    text: str
    finish_reason: Literal["stop", "length"] | None = None
    completion_tokens: int = 0
    logprobs: tuple[TokenLogprob, ...] = ()  # of the tokens behind this text, when asked for
    stop_sequence: str | None = None  # the stop string that ended the sequence, if one did
    cached_tokens: int = 0  # on the last chunk: prompt tokens read from the prefix cache instead of computed
    reasoning_tokens: int = 0  # on the last chunk: tokens spent inside the reasoning block


@dataclass(frozen=True)
class ModelFacts:
    """What the API needs to know about a loaded model."""

    context_size: int  # per request
    embedding_size: int
    vocab_size: int
    chat_template: str  # the model's own, or the family fallback when it carries none
    bos_token: str
    eos_token: str


class EngineStats(BaseModel):
    """A backend's scheduling figures, for /health and /metrics."""

    alive: bool = True  # the engine thread is running (a dead one fails its requests at once with 503)
    slots: int
    running: int
    queued: int
    max_queue: int
    prompt_tokens_total: int = 0
    cached_prompt_tokens_total: int = 0
    shared_prompt_tokens_total: int = 0  # of those, copied from another slot's cache
    disk_prompt_tokens_total: int = 0  # of those, loaded from the prefix cache's disk tier (PREFIX_CACHE_DISK)
    disk_prefixes_saved_total: int = 0  # prompt prefixes written to the disk tier
    generated_tokens_total: int = 0
    draft_tokens_total: int = 0  # guessed by prompt lookup and checked by the model (speculative decoding)
    accepted_draft_tokens_total: int = 0  # of those, confirmed: tokens won without a decode step of their own
    requests_total: int = 0
    images_encoded_total: int = 0  # images run through a vision tower (an image in a cached prefix is not)
    kv_cache_tokens: int = 0  # tokens whose keys and values are held: running sequences and prefixes kept for reuse
    kv_cache_capacity: int = 0  # how many it can hold (GGUF: slots x context); 0 where the cache grows as needed
    prefix_cache_hit_rate: float = 0.0  # cached_prompt_tokens_total / prompt_tokens_total
    tokens_per_second: float = 0.0
    prompt_tokens_per_second: float = 0.0  # prompt tokens read per second of reading, over the last 10 s
    time_to_first_token_p50: float | None = None
    # Prometheus histogram of time to first token: cumulative counts per upper bound, and the sum.
    ttft_buckets: dict[float, int] = Field(default_factory=dict, exclude=True)
    ttft_sum: float = Field(0.0, exclude=True)


class ModelLoadError(Exception):
    """The model file could not be loaded; the message says why, for the client."""


class EngineStoppedError(Exception):
    """The model's engine thread is gone; its requests cannot run (503)."""


class QueueFullError(Exception):
    """The backend's waiting queue is full; the client should retry later (429)."""


class NeverFitsError(Exception):
    """More choices than slots and queue together can ever hold: retrying cannot help (400)."""


class Reservation:
    """Places a request's choices hold in a model's queue, from the capacity check until each is queued, so that
    requests checked together cannot overfill it. `release` (idempotent) gives back what was not used."""

    def __init__(self, holder: object = None, count: int = 0) -> None:
        self._holder = holder  # the engine (anything with `_release_places`), None where nothing is held
        self.left = count

    def release(self) -> None:
        if self._holder is not None and self.left:
            self._holder._release_places(self)  # type: ignore[attr-defined]


class ThinkingTracker:
    """Where a sequence stands in its reasoning block: watches the markers in its text, counts the tokens spent
    inside, and once the budget is spent names the close marker's tokens to force."""

    def __init__(self, control: ThinkingControl) -> None:
        self._control = control
        self.inside = control.inside
        self._settled = control.inside  # whether it is known if (and where) the block starts
        self._over = False  # the block has closed: reasoning cannot start again
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._tail = ""
        self.tokens = 0
        self._forced: deque[int] = deque()

    def forced(self) -> int | None:
        """The token the sequence must take next, if any."""
        return self._forced[0] if self._forced else None

    def feed(self, token: int, piece: bytes) -> None:
        if self._forced and token == self._forced[0]:
            self._forced.popleft()
        if self._over:
            return
        self._tail = (self._tail + self._utf8.decode(piece))[-4 * len(self._control.close) - 16:]
        if not self.inside:
            head = self._tail.lstrip()
            if head.startswith(self._control.open):
                self.inside, self._settled = True, True
                self._tail = head[len(self._control.open):]
            elif head and not self._control.open.startswith(head):
                self._over = True  # the answer did not open with reasoning
            return
        self.tokens += 1
        if self._control.close in self._tail:
            self.inside, self._over = False, True
            self._forced.clear()
        elif self._control.budget is not None and self.tokens >= self._control.budget and not self._forced:
            self._forced.extend(self._control.close_tokens)


class SequenceText:
    """One sequence's tokens turned into the client's text: UTF-8 pieces, stop strings held back and cut,
    the length limit, end-of-generation tokens, and (for a thinking model) where its reasoning stands. `feed`
    returns what to send, if anything; log probabilities travel with the text of their tokens."""

    def __init__(self, params: SamplingParams, token_bytes: Callable[[int], bytes], is_end: Callable[[int], bool]) -> None:
        self._params = params
        self._token_bytes = token_bytes
        self._is_end = is_end
        self._utf8 = Utf8Stream()
        self._stops = StopMatcher(list(params.stop))
        self._logprobs: list[TokenLogprob] = []
        self.tokens = 0
        self.thinking = ThinkingTracker(params.thinking) if params.thinking is not None else None

    @property
    def reasoning(self) -> bool:
        """Inside the reasoning block: a grammar does not apply yet (it constrains the answer)."""
        return self.thinking is not None and self.thinking.inside

    def forced(self) -> int | None:
        return self.thinking.forced() if self.thinking is not None else None

    def feed(self, token: int, logprob: TokenLogprob | None = None, *, last: bool = False) -> GenerationChunk | None:
        """`last`: nothing may follow this token (its grammar is complete), so the sequence ends with it."""
        if self._is_end(token):
            return self._chunk(self._rest(), "stop")
        self.tokens += 1
        if logprob is not None:
            self._logprobs.append(logprob)
        piece = self._params.keep_tokens.get(token) or self._token_bytes(token)
        if self.thinking is not None:
            self.thinking.feed(token, piece)
        out, hit = self._stops.push(self._utf8.push(piece))
        if hit:
            return self._chunk(out, "stop")
        if self.tokens >= self._params.max_tokens:
            return self._chunk(out + self._rest(), "length")
        if last:
            return self._chunk(out + self._rest(), "stop")
        return self._chunk(out) if out else None

    def _rest(self) -> str:
        """At the end: the text still held back (a partial character, a partial stop string that never completed)."""
        tail, hit = self._stops.push(self._utf8.flush())
        return tail + ("" if hit else self._stops.flush())

    def _chunk(self, text: str, finish_reason: Literal["stop", "length"] | None = None) -> GenerationChunk:
        logprobs, self._logprobs = tuple(self._logprobs), []
        reasoning = self.thinking.tokens if self.thinking is not None and finish_reason else 0
        return GenerationChunk(text, finish_reason, self.tokens if finish_reason else 0, logprobs, self._stops.matched,
                               reasoning_tokens=reasoning)


class Backend(ABC):
    """One loaded model."""

    kind: str
    constraints: ConstraintFactory | None = None  # grammars for this model's tokens; None: it does not generate
    image_text: str = ""  # where a vision model reads images: the text a chat template writes for one ("" none)
    renders_image_parts = True  # the template is given {"type": "image"} parts (else `image_text` as text)

    @property
    def vision(self) -> bool:
        """It reads images."""
        return bool(self.image_text)

    def read_images(self, text: str, images: list[ImageInput]) -> tuple[list[int], object]:
        """The prompt's tokens with each image's place (`image_text`) expanded into its tokens, and what `generate`
        needs to read them (its `history`: the same tokens by the model's own ids, as /tokenize shows them). An
        image's tokens are ids below zero, drawn from its content: the prefix cache tells images apart by them, and the
        engine reads the picture there."""
        raise NotImplementedError("this model does not read images")  # the API refuses before this

    @property
    @abstractmethod
    def facts(self) -> ModelFacts: ...

    @abstractmethod
    def tokenize(self, text: str, *, add_special: bool, parse_special: bool | None = None) -> list[int]:
        """`add_special`: the BOS/CLS tokens the model adds; `parse_special` (default: as `add_special`): special
        token texts (`<|im_end|>`) read as those tokens, else as plain text."""

    def control_texts(self) -> tuple[str, ...]:
        """The texts of the model's control tokens (what a chat template writes and user text must not)."""
        return ()

    @abstractmethod
    def token_bytes(self, token: int) -> bytes:
        """What the token adds to an answer's text (special tokens add nothing)."""

    def token_piece(self, token: int) -> bytes:
        """The token as a person inspecting it wants to see it: special tokens spelled out (/tokenize, /detokenize)."""
        return self.token_bytes(token)

    def detokenize(self, tokens: list[int]) -> str:
        """Token ids back to text, special tokens spelled out."""
        return b"".join(self.token_piece(t) for t in tokens).decode("utf-8", "replace")

    @abstractmethod
    def generate(self, prompt: list[int], params: SamplingParams, reservation: Reservation | None = None,
                 media: object | None = None) -> AsyncIterator[GenerationChunk]:
        """Stream one completion (taking one of the reservation's places as it queues); `media`: what `read_images`
        gave for the prompt's images. Closing the iterator early (client gone) stops it within a step."""

    @abstractmethod
    async def embed(self, inputs: list[list[int]]) -> list[list[float]]:
        """One pooled, L2-normalised vector per input."""

    async def rerank(self, query: str, documents: list[str]) -> tuple[list[float], int]:
        """Relevance scores of `documents` for `query` and the tokens read: cross-encoders only."""
        raise NotImplementedError("this model does not rerank")  # the API refuses before this

    @abstractmethod
    def check_capacity(self, sequences: int) -> Reservation:
        """Hold places for `sequences` more (given to `generate`); QueueFullError when they would overflow the waiting
        queue, NeverFitsError when they never could."""

    @abstractmethod
    def stats(self) -> EngineStats: ...

    @abstractmethod
    async def close(self) -> None:
        """Stop scheduling and free the model's memory."""
