"""How many prompt tokens a step may read while other sequences stream (both engines).

A fixed chunk per step (PREFILL_CHUNK) keeps streams smooth but makes prompts that arrive together wait: eight
prompts of 40 tokens took five steps at 64 tokens a step, while llama.cpp's server reads them in one. Here the
budget follows the load: as many prompt tokens as fit in PREFILL_STEP_MS by the measured cost of a step that reads
prompts (a fixed part plus a part per token, fitted as the guesses' cost is), never fewer than PREFILL_CHUNK and
never more than the batch. On a GPU, where a token more costs little, that is the whole batch; on a few CPU cores
a few hundred tokens. Long prompts still go in pieces beside running streams, and a stream's time between tokens
stays under the bound (or one PREFILL_CHUNK's cost, when that is more).
"""

from __future__ import annotations

from .prompt_lookup import StepCost


class PrefillBudget:
    def __init__(self, step_seconds: float, floor: int, ceiling: int) -> None:
        self._step_seconds = step_seconds
        self._floor = min(floor, ceiling)
        self._ceiling = ceiling
        self._cost = StepCost()

    def record(self, tokens: int, seconds: float) -> None:
        """A step that read prompt tokens: all the tokens it fed (prompts, streams' tokens, guesses) and its time."""
        self._cost.record(tokens, seconds)

    def seconds_per_token(self) -> float | None:
        """What reading a prompt token costs by the steps so far: the fitted part per token, else their average
        with the fixed part (None before a step has read a prompt)."""
        cost = self._cost.estimate()
        return cost[1] if cost is not None and cost[1] > 0 else self._cost.average()

    def tokens(self, other_tokens: int) -> int:
        """Prompt tokens the next step may read beside `other_tokens` (the streams' tokens in it)."""
        cost = self._cost.estimate()
        if cost is None:
            # Until steps of different sizes have been seen (a fresh server's first wave: one prompt read before it),
            # a token costs what the steps so far took per token, at most: the budget errs small, never long.
            average = self._cost.average()
            if average is None:  # nothing read yet: the fixed chunk, whose steps give the fit its first points
                return self._floor
            cost = (0.0, average)
        fixed, per_token = cost
        if per_token <= 0:
            return self._ceiling
        fits = int((self._step_seconds - fixed) / per_token + 1e-6) - other_tokens  # 1e-6: float noise, not a token
        return max(self._floor, min(self._ceiling, fits))
