"""POST /completions: raw prompts (text or token ids, one or several) -> choices, streamed or not."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

from fastapi import Request
from fastapi.responses import Response

from ...backends.base import Backend, Reservation
from ...config import Settings
from ...errors import invalid_request
from ...core.generation import ChoiceJob, collect_choices, ensure_capacity, stream_choices, until_disconnected
from ...core.sampling import sampling_params, token_budget
from ...core.streaming import sse_data, sse_response
from ...manager import LoadedModel, ModelManager
from .errors import DONE, error_event
from .logprobs import completion_logprobs
from .protocol import CompletionChoice, CompletionLogprobs, CompletionRequest, CompletionResponse, new_id, now, usage
from .translate import refuse_unsupported_completion_fields, sampling


def prompt_list(prompt: str | list[str] | list[int] | list[list[int]]) -> list[str | list[int]]:
    """The spec's four prompt forms as a list of prompts, each text or token ids."""
    if isinstance(prompt, str):
        return [prompt]
    if prompt and all(isinstance(p, int) for p in prompt):
        return [prompt]  # type: ignore[list-item]
    if not prompt:
        raise invalid_request("'prompt' must not be an empty list.", "prompt")
    return list(prompt)  # type: ignore[arg-type]


def tokenize_prompt(backend: Backend, prompt: str | list[int], index: int) -> list[int]:
    if isinstance(prompt, str):
        tokens = backend.tokenize(prompt, add_special=True)
    else:
        vocab = backend.facts.vocab_size
        bad = next((t for t in prompt if not 0 <= t < vocab), None)
        if bad is not None:
            raise invalid_request(f"Token id {bad} is outside the vocabulary (0..{vocab - 1}).", f"prompt[{index}]",
                                  "token_out_of_vocabulary")
        tokens = list(prompt)
    if not tokens:
        raise invalid_request("The prompt is empty after tokenization.", "prompt")
    return tokens


def echo_text(backend: Backend, prompt: str | list[int]) -> str:
    if isinstance(prompt, str):
        return prompt
    return b"".join(backend.token_bytes(t) for t in prompt).decode("utf-8", "replace")


async def create_completion(
    req: CompletionRequest, manager: ModelManager, settings: Settings, request: Request
) -> Response | CompletionResponse:
    refuse_unsupported_completion_fields(req)
    prompts = prompt_list(req.prompt)
    params = sampling(req)
    n = req.n or 1
    stack = AsyncExitStack()
    model = await stack.enter_async_context(manager.use(req.model, "completion"))
    try:
        backend = model.backend
        token_prompts = [await asyncio.to_thread(tokenize_prompt, backend, p, i) for i, p in enumerate(prompts)]
        echoes = [echo_text(backend, p) if req.echo else "" for p in prompts]
        if req.max_tokens == 0:
            await stack.aclose()
            return _nothing_to_generate(req, model.entry.name, echoes, sum(len(t) for t in token_prompts), request)
        jobs = []
        for p, tokens in enumerate(token_prompts):
            budget = token_budget(len(tokens), req.max_tokens, backend.facts.context_size, settings, "prompt")
            jobs += [ChoiceJob(p * n + i, tokens, None, sampling_params(params, settings, backend.facts, budget, i, logprobs=req.logprobs))
                     for i in range(n)]
        reservation = ensure_capacity(model.backend, len(jobs))
        stack.callback(reservation.release)  # places not used when the request ends are given back
    except BaseException:
        await stack.aclose()
        raise
    prompt_tokens = sum(len(t) for t in token_prompts)
    request.state.model = model.entry.name
    echo_of = {job.index: echoes[job.index // n] for job in jobs}
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return sse_response(_stream(model, jobs, reservation, echo_of, prompt_tokens, include_usage, req.logprobs, request),
                            stack.aclose, error_event, DONE)
    async with stack:
        results = await until_disconnected(request, collect_choices(backend, jobs, reservation))
    request.state.usage = usage(prompt_tokens, sum(r.completion_tokens for r in results), sum(r.cached_tokens for r in results if r.index % n == 0))
    choices = []
    for r in results:
        logprobs = None
        if req.logprobs is not None:
            logprobs, _ = completion_logprobs(backend, r.logprobs, len(echo_of[r.index]), req.logprobs)
        choices.append(CompletionChoice(index=r.index, text=echo_of[r.index] + r.text, finish_reason=r.finish_reason,  # type: ignore[arg-type]
                                        logprobs=logprobs))
    return CompletionResponse(id=new_id("cmpl"), created=now(), model=model.entry.name, choices=choices, usage=request.state.usage)


def _nothing_to_generate(req: CompletionRequest, name: str, echoes: list[str], prompt_tokens: int,
                         request: Request) -> Response | CompletionResponse:
    """`max_tokens: 0`: each choice is its (echoed) prompt alone, finished for length, as OpenAI answers it."""
    n = req.n or 1
    empty = CompletionLogprobs(tokens=[], token_logprobs=[], top_logprobs=[], text_offset=[]) if req.logprobs is not None else None
    choices = [CompletionChoice(index=p * n + i, text=echo, finish_reason="length", logprobs=empty)
               for p, echo in enumerate(echoes) for i in range(n)]
    request.state.model = name
    request.state.usage = usage(prompt_tokens, 0)
    response = CompletionResponse(id=new_id("cmpl"), created=now(), model=name, choices=choices, usage=request.state.usage)
    if not req.stream:
        return response
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    frames = [sse_data(response.model_copy(update={"choices": [c]}).model_dump_json(exclude={"usage"})) for c in choices]
    if include_usage:
        frames.append(sse_data(response.model_copy(update={"choices": []}).model_dump_json()))

    async def events() -> AsyncIterator[str]:
        for frame in frames:
            yield frame

    async def nothing_to_release() -> None:
        return None

    return sse_response(events(), nothing_to_release, error_event, DONE)


async def _stream(
    model: LoadedModel, jobs: list[ChoiceJob], reservation: Reservation, echo_of: dict[int, str], prompt_tokens: int,
    include_usage: bool,
    top_n: int | None, request: Request,
) -> AsyncIterator[str]:
    chunk_id, created, name = new_id("cmpl"), now(), model.entry.name
    exclude = None if include_usage else {"usage"}

    def event(index: int, text: str, finish_reason: str | None = None, logprobs: CompletionLogprobs | None = None) -> str:
        choice = CompletionChoice(index=index, text=text, finish_reason=finish_reason, logprobs=logprobs)  # type: ignore[arg-type]
        return sse_data(CompletionResponse(id=chunk_id, created=created, model=name, choices=[choice]).model_dump_json(exclude=exclude))

    for index, text in echo_of.items():
        if text:
            yield event(index, text)
    offsets = {index: len(text) for index, text in echo_of.items()}  # where each choice's next token starts
    completion_tokens = 0
    prompt_of = {job.index: id(job.prompt) for job in jobs}
    cached: dict[int, int] = {}  # per prompt (its choices read the same cache)
    async for index, chunk in stream_choices(model.backend, jobs, reservation):
        logprobs = None
        if top_n is not None and chunk.logprobs:
            logprobs, offsets[index] = completion_logprobs(model.backend, chunk.logprobs, offsets[index], top_n)
        if chunk.text or chunk.finish_reason or logprobs:
            yield event(index, chunk.text, chunk.finish_reason, logprobs)
        if chunk.finish_reason is not None:
            completion_tokens += chunk.completion_tokens
            cached[prompt_of[index]] = max(cached.get(prompt_of[index], 0), chunk.cached_tokens)
    request.state.usage = usage(prompt_tokens, completion_tokens, sum(cached.values()))
    if include_usage:
        yield sse_data(CompletionResponse(id=chunk_id, created=created, model=name, choices=[], usage=request.state.usage).model_dump_json())
