"""From a validated request to what the backend needs: sampling parameters, token budgets, refusals.

Every request field is either honoured here or refused with a 400 that names it.
"""

from __future__ import annotations

from ..api.errors import context_length_exceeded, invalid_request, unsupported
from ..api.protocol import ChatCompletionRequest, CompletionRequest, SamplingFields
from ..backends.base import ModelFacts, SamplingParams
from ..config import Settings


def refuse_stream_options_without_stream(req: SamplingFields) -> None:
    if req.stream_options is not None and not req.stream:
        raise invalid_request("'stream_options' is only allowed when 'stream' is true.", "stream_options")


def refuse_unsupported_chat_fields(req: ChatCompletionRequest) -> None:
    refuse_stream_options_without_stream(req)
    if req.top_logprobs is not None and not req.logprobs:
        raise invalid_request("'top_logprobs' needs 'logprobs' set to true.", "top_logprobs")
    if req.functions is not None or req.function_call is not None:
        name = "functions" if req.functions is not None else "function_call"
        raise unsupported(name, "(the deprecated function calling) is not supported; use 'tools' and 'tool_choice'")
    if req.modalities is not None and req.modalities != ["text"]:
        raise unsupported("modalities", "can only be ['text'] on this server")
    for name in ("audio", "prediction", "web_search_options", "reasoning_effort", "verbosity", "moderation"):
        if getattr(req, name) is not None:
            raise unsupported(name)


def refuse_unsupported_completion_fields(req: CompletionRequest) -> None:
    refuse_stream_options_without_stream(req)
    if req.suffix:
        raise unsupported("suffix", "(fill-in-the-middle) is not supported by this server")
    if req.echo and req.logprobs is not None:
        raise unsupported("echo", "together with 'logprobs' (log probabilities of the prompt) is not supported")
    if req.best_of is not None and req.best_of not in (0, 1, req.n or 1):
        raise unsupported("best_of", "other than 1 or n is not supported; ask for n choices instead")


def logit_bias_tokens(req: SamplingFields, vocab_size: int) -> dict[int, float]:
    bias: dict[int, float] = {}
    for key, value in (req.logit_bias or {}).items():
        try:
            token = int(key)
        except ValueError:
            raise invalid_request(f"logit_bias keys must be token ids; got '{key}'.", "logit_bias") from None
        if not 0 <= token < vocab_size:
            raise invalid_request(f"logit_bias token {token} is outside the vocabulary (0..{vocab_size - 1}).", "logit_bias")
        bias[token] = float(value)
    return bias


def stop_strings(req: SamplingFields) -> tuple[str, ...]:
    if req.stop is None:
        return ()
    return (req.stop,) if isinstance(req.stop, str) else tuple(req.stop)


def token_budget(prompt_tokens: int, requested: int | None, facts: ModelFacts, settings: Settings, param: str) -> int:
    """How many tokens a completion may generate; 400 context_length_exceeded when the prompt leaves no room."""
    room = facts.context_size - prompt_tokens
    if requested is not None and requested > room or room <= 0:
        error = context_length_exceeded(prompt_tokens, requested or 0, facts.context_size)
        error.body.param = param
        raise error
    if requested is not None:
        return requested
    return min(room, settings.max_tokens or room)


def sampling_params(req: SamplingFields, settings: Settings, facts: ModelFacts, max_tokens: int, choice: int, *,
                    grammar: str | None = None, logprobs: int | None = None, extra_stop: tuple[str, ...] = ()) -> SamplingParams:
    """Sampling for one choice; with a seed, choice i uses seed + i so that n choices differ but repeat."""

    def pick(value: float | int | None, default: float | int) -> float | int:
        return default if value is None else value

    return SamplingParams(
        max_tokens=max_tokens,
        temperature=float(pick(req.temperature, settings.temperature)),
        top_p=float(pick(req.top_p, settings.top_p)),
        top_k=int(pick(req.top_k, settings.top_k)),
        min_p=float(pick(req.min_p, settings.min_p)),
        repeat_penalty=float(pick(req.repeat_penalty, settings.repeat_penalty)),
        presence_penalty=float(req.presence_penalty or 0.0),
        frequency_penalty=float(req.frequency_penalty or 0.0),
        seed=None if req.seed is None else (req.seed + choice) % 2**32,
        logit_bias=logit_bias_tokens(req, facts.vocab_size),
        stop=stop_strings(req) + extra_stop,
        grammar=grammar,
        logprobs=logprobs,
    )
