"""Turning a token stream into text: incremental UTF-8 decoding and stop strings that never reach the client."""

from __future__ import annotations

import codecs


class Utf8Stream:
    """Tokens can end mid-character (emoji, CJK): hold the partial bytes back until the character is complete."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, data: bytes) -> str:
        return self._decoder.decode(data)

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)


class StopMatcher:
    """Finds the first stop string in the generated text.

    Text that could still turn into a stop string is held back, so that a stop string split over
    several tokens never reaches the client even when streaming.
    """

    def __init__(self, stops: list[str]) -> None:
        self._stops = [s for s in stops if s]
        self._held = ""
        self.matched: str | None = None  # the stop string found, once found

    def push(self, text: str) -> tuple[str, bool]:
        """Add text; return what is safe to emit and whether a stop string was found."""
        self._held += text
        if not self._stops:
            out, self._held = self._held, ""
            return out, False
        hits = [(i, s) for i, s in ((self._held.find(s), s) for s in self._stops) if i >= 0]
        if hits:
            first, self.matched = min(hits)
            out, self._held = self._held[:first], ""
            return out, True
        keep = self._longest_partial_stop()
        cut = len(self._held) - keep
        out, self._held = self._held[:cut], self._held[cut:]
        return out, False

    def flush(self) -> str:
        out, self._held = self._held, ""
        return out

    def _longest_partial_stop(self) -> int:
        """Length of the longest tail of the held text that is a proper prefix of some stop string."""
        best = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(self._held)), best, -1):
                if self._held.endswith(stop[:size]):
                    best = size
                    break
        return best
