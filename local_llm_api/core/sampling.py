"""From a request's sampling fields to what the backend needs: sampling parameters and the token budget."""

from __future__ import annotations

from ..backends.base import ModelFacts, SamplingParams, ThinkingControl
from ..config import Settings
from ..errors import context_length_exceeded, invalid_request
from .request import Sampling

# Below these, the arithmetic overflows (logits / 1e-300 is infinite, then NaN after softmax) while the intent
# is plain: a temperature this small is greedy decoding, a repeat penalty this small is the smallest we apply.
GREEDY_BELOW_TEMPERATURE = 1e-6
MIN_REPEAT_PENALTY = 1e-3


def logit_bias_tokens(bias: dict[str, int] | None, vocab_size: int) -> dict[int, float]:
    tokens: dict[int, float] = {}
    for key, value in (bias or {}).items():
        try:
            token = int(key)
        except ValueError:
            raise invalid_request(f"logit_bias keys must be token ids; got '{key}'.", "logit_bias") from None
        if not 0 <= token < vocab_size:
            raise invalid_request(f"logit_bias token {token} is outside the vocabulary (0..{vocab_size - 1}).", "logit_bias",
                                  "token_out_of_vocabulary")
        tokens[token] = float(value)
    return tokens


def token_budget(prompt_tokens: int, requested: int | None, context: int, settings: Settings, prompt_param: str) -> int:
    """How many tokens a completion may generate in `context` tokens (the model's per-request context, or less
    when the request asks for less): what was asked for, cut to what the context has left (the answer then ends
    with "length", as llama.cpp's server and Ollama do); 400 context_length_exceeded, naming the prompt's field,
    only when the prompt leaves no room at all."""
    room = context - prompt_tokens
    if room <= 0:
        raise context_length_exceeded(prompt_tokens, context, prompt_param)
    return min(requested if requested is not None else settings.max_tokens or room, room)


def sampling_params(sampling: Sampling, settings: Settings, facts: ModelFacts, max_tokens: int, choice: int, *,
                    grammar: str | None = None, logprobs: int | None = None, extra_stop: tuple[str, ...] = (),
                    thinking: ThinkingControl | None = None, keep_tokens: dict[int, bytes] | None = None) -> SamplingParams:
    """Sampling for one choice; with a seed, choice i uses seed + i so that n choices differ but repeat."""

    def pick(value: float | int | None, default: float | int) -> float | int:
        return default if value is None else value

    temperature = float(pick(sampling.temperature, settings.temperature))
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=0.0 if temperature < GREEDY_BELOW_TEMPERATURE else temperature,
        top_p=float(pick(sampling.top_p, settings.top_p)),
        top_k=int(pick(sampling.top_k, settings.top_k)),
        min_p=float(pick(sampling.min_p, settings.min_p)),
        repeat_penalty=max(float(pick(sampling.repeat_penalty, settings.repeat_penalty)), MIN_REPEAT_PENALTY),
        presence_penalty=float(sampling.presence_penalty or 0.0),
        frequency_penalty=float(sampling.frequency_penalty or 0.0),
        seed=None if sampling.seed is None else (sampling.seed + choice) % 2**32,
        logit_bias=logit_bias_tokens(sampling.logit_bias, facts.vocab_size),
        stop=sampling.stop + extra_stop,
        grammar=grammar,
        logprobs=logprobs,
        thinking=thinking,
        keep_tokens=keep_tokens or {},
    )
