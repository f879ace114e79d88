"""Prompt lookup: draft tokens for speculative decoding from the sequence's own text, with no draft model.

Answers that copy their input (code edits, JSON extraction, quotes) repeat long runs of the prompt: when the
last tokens written also appeared earlier, the tokens that followed them there are a good guess for the next
ones. The engine feeds the guesses after the sequence's next token in one decode and keeps a guess only when
the model, sampling that position as usual, draws the same token (`BatchEngine._decode`): the answer is the
one it would have written without guesses, token for token (greedy or seeded) and in distribution.

Guessing pays only when a step's cost grows little with its tokens (a GPU) or guesses usually hold; on a few
CPU cores every token in a step costs nearly as much as a step of its own. So the engine guesses as many
tokens as raise the step's expected output per second (`draft_length`), from two measured figures: how a
step's time grows with its tokens (`StepCost`) and how often this sequence's guesses have held (`acceptance`).
A guess not worth feeding is still checked, for free, against the tokens the sequence writes next, so the
acceptance is learned without paying for guesses: free text, where a match rarely continues, stops guessing
after a few tokens; an answer that copies its prompt starts guessing as soon as its guesses would have held.
"""

from __future__ import annotations

NGRAM_SIZES = (3, 2)  # the longest match first: three tokens in common predict better than two
PRIOR_ACCEPTANCE = 0.5  # what a new sequence's guesses are assumed to do: on a few CPU cores, not worth a try
LEARNING_RATE = 0.25  # weight of each checked guess in the running acceptance


class PromptLookup:
    def __init__(self, prompt: list[int], max_draft: int) -> None:
        self.max_draft = max_draft
        self.acceptance = PRIOR_ACCEPTANCE  # chance that a guessed token holds, given that those before it did
        self._tokens: list[int] = []
        # n-gram -> where the token after its latest earlier occurrence is
        self._follows: dict[tuple[int, ...], int] = {}
        self._unfed: list[int] = []  # a guess that was not fed, checked against the tokens written next
        self._unfed_held = 0
        self.extend(prompt)

    def extend(self, tokens: list[int]) -> None:
        """Tokens of the prompt, or tokens the sequence has just written."""
        for token in tokens:
            if self._unfed:
                self._check_unfed(token)
            end = len(self._tokens)
            for n in NGRAM_SIZES:
                if end >= n:
                    self._follows[tuple(self._tokens[end - n:end])] = end
            self._tokens.append(token)

    def guess(self, room: int) -> list[int]:
        """Up to `room` (and the setting) tokens that followed the latest earlier occurrence of the text's end."""
        want = min(self.max_draft, room)
        if want <= 0:
            return []
        for n in NGRAM_SIZES:
            if len(self._tokens) > n:
                start = self._follows.get(tuple(self._tokens[-n:]))
                if start is not None:
                    return self._tokens[start:start + want]
        return []

    def expected_tokens(self, drafted: int) -> float:
        """Tokens a step gives this sequence with `drafted` guesses: its own, plus each guess that holds."""
        return sum(self.acceptance ** i for i in range(drafted + 1))

    def verified(self, drafted: int, accepted: int) -> None:
        """The first `accepted` of `drafted` guesses held (each checked guess counts; those after a miss were not)."""
        self._unfed = []
        outcomes = [1.0] * accepted + ([0.0] if accepted < drafted else [])
        for outcome in outcomes:
            self.acceptance += LEARNING_RATE * (outcome - self.acceptance)

    def skipped(self, guess: list[int]) -> None:
        """A guess was found but not worth feeding: learn from it anyway, as the next tokens are written."""
        if not self._unfed:
            self._unfed, self._unfed_held = guess, 0

    def _check_unfed(self, token: int) -> None:
        if token == self._unfed[self._unfed_held]:
            self._unfed_held += 1
            if self._unfed_held < len(self._unfed):
                return
        self.verified(len(self._unfed), self._unfed_held)


class StepCost:
    """A decode step's time as a fixed part plus a part per token, fitted by least squares over recent steps
    (older ones fading), so that the same rule serves a GPU (tokens nearly free) and a few CPU cores."""

    def __init__(self, decay: float = 0.995) -> None:
        self._decay = decay
        self._w = self._n = self._t = self._nn = self._nt = 0.0
        self._fitted: tuple[float, float] | None = None

    def record(self, tokens: int, seconds: float) -> None:
        d = self._decay
        self._w = d * self._w + 1
        self._n = d * self._n + tokens
        self._t = d * self._t + seconds
        self._nn = d * self._nn + tokens * tokens
        self._nt = d * self._nt + tokens * seconds

    def average(self) -> float | None:
        """Seconds per token over the recorded steps, their fixed part included (None: none recorded)."""
        return self._t / self._n if self._n else None

    def estimate(self) -> tuple[float, float] | None:
        """(seconds per step, seconds per token); None until steps of different sizes have been seen. When the
        recent steps are all of one size (one stream, no guesses), the last fit holds: without it the engine would
        have to feed guesses again only to measure their cost."""
        if self._w < 2:
            return self._fitted
        mean_n, mean_t = self._n / self._w, self._t / self._w
        variance = self._nn / self._w - mean_n ** 2
        if variance < 0.25:
            return self._fitted
        per_token = max(0.0, (self._nt / self._w - mean_n * mean_t) / variance)
        self._fitted = max(1e-6, mean_t - per_token * mean_n), per_token
        return self._fitted


def guesses_to_feed(lookup: PromptLookup, guess: list[int], cost: tuple[float, float] | None, produced: float,
                    step: float, adaptive: bool = True) -> list[int]:
    """Of `guess`, the tokens to feed this step (both engines): all of them when not `adaptive`; two until a step
    cost has been fitted (enough to learn what a token costs); else `draft_length`'s choice. A guess not fed is
    checked later against the tokens written (`PromptLookup.skipped`)."""
    if not adaptive:
        return guess
    if cost is None:
        return guess[:2]
    drafted = draft_length(lookup, len(guess), produced, step, cost[1])
    if not drafted:
        lookup.skipped(guess)
    return guess[:drafted]


def draft_length(lookup: PromptLookup, guessed: int, produced: float, step: float, per_token: float) -> int:
    """How many of `guessed` tokens to feed: the number that gives the step the most expected tokens per second,
    where the step so far yields `produced` tokens in `step` seconds and each fed token adds `per_token`."""
    best, best_rate = 0, produced / step
    for drafted in range(1, guessed + 1):
        rate = (produced + lookup.expected_tokens(drafted) - 1) / (step + drafted * per_token)
        if rate > best_rate:
            best, best_rate = drafted, rate
    return best
