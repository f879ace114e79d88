"""A grammar as a per-token mask: llguidance's matcher says which tokens may come next, the engine sets
every other token's logit to -inf before its sampler runs, then tells the matcher which token was drawn.

Both backends use the same code: only how the tokenizer is described to llguidance differs (llama.cpp's
vocabulary or a Hugging Face fast tokenizer), and that is built once per model, on first use.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

log = logging.getLogger("local_llm_api.structured")


class GrammarError(ValueError):
    """The grammar (a JSON schema or tool signature) cannot be compiled; the message says why."""


class UnconstrainableModel(Exception):
    """The model's tokenizer cannot be described to llguidance: no grammar can run on this model."""


def _readable(error: str, size: int) -> str:
    """The compiler's complaint for the client: its first line. A panic (an assertion inside the library, with a
    backtrace) is logged whole and answered in words; the memory the failed compile took is given back."""
    _give_memory_back()
    first = error.strip().splitlines()[0] if error.strip() else "unknown error"
    if not first.startswith("panic"):
        return first
    log.warning("the grammar compiler failed on a %d-byte grammar: %s", size, error)
    return "the grammar is too large or too complex for the grammar compiler; send fewer tools or a smaller schema"


def _give_memory_back() -> None:
    """glibc keeps freed heap pages; a large failed compile otherwise leaves its peak resident."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def import_llguidance() -> Any:
    try:
        import llguidance
    except ImportError as exc:  # a dependency of the package; only a broken install lacks it
        raise GrammarError("llguidance is not installed; structured output needs `pip install llguidance`") from exc
    return llguidance


class TokenConstraint:
    """One sequence's grammar state."""

    def __init__(self, matcher: Any, vocab_size: int) -> None:
        self._matcher = matcher
        self._words = (vocab_size + 31) // 32
        self._bitmask = np.full(self._words, -1, dtype=np.int32)

    def allowed(self, size: int) -> np.ndarray:
        """Which of the first `size` token ids the grammar allows next (a bool array of that size)."""
        self._matcher.unsafe_compute_mask_ptr(self._bitmask.ctypes.data, self._bitmask.nbytes)
        bits = np.unpackbits(self._bitmask.view(np.uint8), bitorder="little").view(bool)
        if bits.shape[0] >= size:
            return bits[:size]
        return np.concatenate([bits, np.zeros(size - bits.shape[0], dtype=bool)])  # ids the tokenizer lacks

    def mask(self, logits: np.ndarray) -> None:
        """Set the logits of tokens the grammar forbids to -inf, in place."""
        logits[~self.allowed(logits.shape[0])] = -np.inf

    def accept(self, token: int) -> None:
        if not self._matcher.consume_token(token):  # cannot happen with the mask applied; ends the sequence
            log.warning("grammar rejected token %d: %s", token, self._matcher.get_error().splitlines()[0])

    @property
    def complete(self) -> bool:
        """The grammar can take no more text (or failed): the sequence is done."""
        return bool(self._matcher.is_stopped() or self._matcher.is_error())


class ConstraintFactory:
    """Compiles grammars for one model. The llguidance tokenizer takes about a second to build, so it is
    built on the first structured request, not at load time. Compiled grammars are kept (an agent sends the
    same tools with every turn): each sequence starts from a copy."""

    CACHED_GRAMMARS = 64

    def __init__(self, build_tokenizer: Callable[[], Any]) -> None:
        self._build_tokenizer = build_tokenizer
        self._tokenizer: Any = None
        self._failure: UnconstrainableModel | None = None  # remembered: building it again would fail again
        self._compiled: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def _lltokenizer(self) -> Any:
        with self._lock:
            if self._tokenizer is None:
                if self._failure is not None:
                    raise self._failure
                try:
                    self._tokenizer = self._build_tokenizer()
                except Exception as exc:  # whatever the adapter raises, the answer is the same
                    self._failure = UnconstrainableModel(f"{type(exc).__name__}: {exc}")
                    log.error("this model's tokenizer cannot be used for grammars: %s", self._failure)
                    raise self._failure from exc
            return self._tokenizer

    def _pristine(self, grammar: str) -> Any:
        with self._lock:
            if grammar in self._compiled:
                self._compiled.move_to_end(grammar)
                return self._compiled[grammar]
        llguidance = import_llguidance()
        matcher = llguidance.LLMatcher(self._lltokenizer(), grammar, log_level=0)
        if matcher.is_error():
            raise GrammarError(_readable(matcher.get_error(), len(grammar)))
        with self._lock:
            self._compiled[grammar] = matcher
            while len(self._compiled) > self.CACHED_GRAMMARS:
                self._compiled.popitem(last=False)
        return matcher

    def check(self, grammar: str) -> None:
        """Raise GrammarError when the grammar does not compile for this model."""
        self._pristine(grammar)

    def new(self, grammar: str) -> TokenConstraint:
        return TokenConstraint(self._pristine(grammar).deep_copy(), self._lltokenizer().vocab_size)
