"""One sequence's sampler for the Transformers backend, with the same steps and order as the llama.cpp
chain of the GGUF backend: logit bias, repetition penalties over the last 64 tokens, then greedy, or
top-k, top-p, min-p, temperature and a draw from the sequence's own seeded generator."""

from __future__ import annotations

import random

import torch
from transformers import LogitsProcessorList, MinPLogitsWarper, TemperatureLogitsWarper, TopPLogitsWarper

from .base import SamplingParams

PENALTY_WINDOW = 64  # llama.cpp's penalty_last_n, as the GGUF backend uses it


class TokenSampler:
    def __init__(self, params: SamplingParams, vocab_size: int, device: torch.device) -> None:
        self._params = params
        self._bias: torch.Tensor | None = None
        if params.logit_bias:
            self._bias = torch.zeros(vocab_size, device=device)
            for token, bias in params.logit_bias.items():
                self._bias[token] = bias
        self._penalised = (params.repeat_penalty, params.frequency_penalty, params.presence_penalty) != (1.0, 0.0, 0.0)
        self._greedy = params.temperature == 0 or params.top_k == 1 or params.top_p == 0
        warpers = []
        if params.top_p < 1:
            warpers.append(TopPLogitsWarper(params.top_p))
        if params.min_p > 0:
            warpers.append(MinPLogitsWarper(params.min_p))
        if not self._greedy and params.temperature != 1:
            warpers.append(TemperatureLogitsWarper(params.temperature))
        self._warpers = LogitsProcessorList(warpers)
        self._generator = torch.Generator(device=device)
        self._generator.manual_seed(params.seed if params.seed is not None else random.getrandbits(63))

    def sample(self, logits: torch.Tensor, history: list[int]) -> int:
        scores = logits.float()[None]  # (1, vocab): the warpers work on batches
        if self._bias is not None:
            scores[0, : self._bias.shape[0]] += self._bias
        if self._penalised and history:
            scores = self._penalise(scores, history[-PENALTY_WINDOW:])
        if self._greedy:
            return int(scores.argmax())
        # Top-k first, as a cut to k candidates: the other warpers then sort k values, not the vocabulary.
        candidates = None
        if 0 < self._params.top_k < scores.shape[-1]:
            scores, candidates = scores.topk(self._params.top_k, dim=-1)
        scores = self._warpers(None, scores)  # type: ignore[arg-type]  (these warpers ignore input_ids)
        # Extreme penalties or biases can overflow: +inf becomes the largest float (softmax stays finite), NaN excluded.
        scores = torch.nan_to_num(scores, nan=float("-inf"), posinf=torch.finfo(scores.dtype).max)
        probabilities = torch.softmax(scores, dim=-1)
        choice = int(torch.multinomial(probabilities[0], 1, generator=self._generator))
        return int(candidates[0, choice]) if candidates is not None else choice

    def _penalise(self, scores: torch.Tensor, recent: list[int]) -> torch.Tensor:
        p = self._params
        tokens, counts = torch.tensor(recent, device=scores.device).unique(return_counts=True)
        values = scores[0, tokens]
        values = torch.where(values > 0, values / p.repeat_penalty, values * p.repeat_penalty)
        values = values - counts * p.frequency_penalty - p.presence_penalty
        scores[0, tokens] = values
        return scores
