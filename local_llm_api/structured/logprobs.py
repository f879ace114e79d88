"""Log probabilities of the drawn token and the most likely alternatives, from the model's own
distribution at that step (the raw logits, before logit bias, penalties, grammar mask and temperature),
as OpenAI reports them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TokenLogprob:
    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()  # (token, logprob), most likely first


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float32, copy=False) - np.max(logits)
    return shifted - np.log(np.sum(np.exp(shifted)))


def token_logprob(logprobs: np.ndarray, token: int, top_n: int) -> TokenLogprob:
    """The drawn token's log probability and the `top_n` most likely tokens' (a log-softmaxed row)."""
    top: tuple[tuple[int, float], ...] = ()
    if top_n > 0:
        best = np.argpartition(-logprobs, top_n - 1)[:top_n]
        best = best[np.argsort(-logprobs[best], kind="stable")]
        top = tuple((int(t), float(logprobs[t])) for t in best)
    return TokenLogprob(token, float(logprobs[token]), top)
