"""One chat request on a model: plan the output, build the prompt, run its choices, and read tool calls
back, as a stream of events that every dialect translates into its own frames (or collects)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

from ..config import Settings
from ..manager import LoadedModel, ModelManager
from ..prompting.tool_calls import Call, ToolCallStream
from ..structured.logprobs import TokenLogprob
from .generation import ChoiceJob, ensure_capacity, stream_choices
from .output import OutputPlan, check_schemas, plan_output
from .prompt import prompt_tokens
from .request import ChatRequest
from .sampling import sampling_params, token_budget


@dataclass(frozen=True)
class TextDelta:
    """New answer text of one choice (possibly empty when only log probabilities came)."""

    index: int
    text: str
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class ChoiceEnd:
    """A choice finished: `tool_calls` when its answer held calls, else the backend's stop/length."""

    index: int
    finish_reason: str
    calls: tuple[Call, ...]
    completion_tokens: int
    stop_sequence: str | None = None  # the request's stop string that ended it, if one did
    cached_tokens: int = 0  # prompt tokens read from the prefix cache


ChatEvent = TextDelta | ChoiceEnd


@dataclass
class Answer:
    """A whole choice, collected from its events."""

    index: int
    content: str | None = ""
    calls: tuple[Call, ...] = ()
    finish_reason: str = "stop"
    completion_tokens: int = 0
    stop_sequence: str | None = None
    cached_tokens: int = 0
    logprobs: list[TokenLogprob] = field(default_factory=list)

    def add(self, event: ChatEvent) -> None:
        if isinstance(event, TextDelta):
            self.content = (self.content or "") + event.text
            self.logprobs += event.logprobs
            return
        self.finish_reason, self.calls, self.completion_tokens = event.finish_reason, event.calls, event.completion_tokens
        self.stop_sequence, self.cached_tokens = event.stop_sequence, event.cached_tokens
        if event.calls:  # the text around tool calls, if any, without the whitespace before them
            self.content = (self.content or "").strip() or None


@dataclass
class ChatRun:
    """A prepared request holding its model: `events()` or `answers()` once, then `aclose()` to release it."""

    model: LoadedModel
    plan: OutputPlan
    prompt: list[int]
    jobs: list[ChoiceJob]
    _stack: AsyncExitStack
    notes: dict[str, str] = field(default_factory=dict)  # response headers that say what the server did differently

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt)

    async def aclose(self) -> None:
        await self._stack.aclose()

    async def __aenter__(self) -> ChatRun:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def events(self) -> AsyncIterator[ChatEvent]:
        # With tools, content streams as it comes while text that may be a tool call is held and parsed at the end.
        fmt = self.plan.tool_format
        splitters = {job.index: ToolCallStream(fmt) for job in self.jobs} if fmt else {}
        async for index, chunk in stream_choices(self.model.backend, self.jobs):
            splitter = splitters.get(index)
            text = splitter.push(chunk.text) if splitter else chunk.text
            if text or chunk.logprobs:
                yield TextDelta(index, text, chunk.logprobs)
            if chunk.finish_reason is None:
                continue
            calls: list[Call] = []
            if splitter:
                rest, calls = splitter.finish()
                if rest:
                    yield TextDelta(index, rest)
            stop = chunk.stop_sequence if chunk.stop_sequence not in self.plan.stop else None
            yield ChoiceEnd(index, "tool_calls" if calls else chunk.finish_reason, tuple(calls), chunk.completion_tokens, stop,
                            chunk.cached_tokens)

    async def answers(self) -> list[Answer]:
        answers = {job.index: Answer(job.index) for job in self.jobs}
        async for event in self.events():
            answers[event.index].add(event)
        return [answers[job.index] for job in self.jobs]


def prepare(model: LoadedModel, req: ChatRequest) -> tuple[OutputPlan, list[int]]:
    """The output plan (schemas compiled) and the prompt's tokens: work off the event loop."""
    backend = model.backend
    plan = plan_output(req, backend.facts.chat_template)
    check_schemas(backend, plan)
    if req.raw_prompt is not None:
        return plan, backend.tokenize(req.raw_prompt, add_special=True)
    room = (req.max_tokens or 1) if req.truncate else None
    return plan, prompt_tokens(backend, req.messages, plan, room=room, context=req.context(backend.facts.context_size))


async def start_chat(req: ChatRequest, manager: ModelManager, settings: Settings) -> ChatRun:
    """Load (or find) the model, plan and tokenize, and check the queue: everything that can fail with a clean
    status before a response starts. The run holds the model until `aclose()`."""
    stack = AsyncExitStack()
    model = await stack.enter_async_context(manager.use(req.model, "chat"))
    try:
        # Compiling schemas and tokenizing only read the vocabulary: they need not queue behind generations.
        plan, prompt = await asyncio.to_thread(prepare, model, req)
        facts = model.backend.facts
        budget = token_budget(len(prompt), req.max_tokens, req.context(facts.context_size), settings, req.prompt_param)
        jobs = [ChoiceJob(i, prompt, sampling_params(req.sampling, settings, facts, budget, i, grammar=plan.grammar,
                                                     logprobs=req.logprobs, extra_stop=plan.stop))
                for i in range(req.n)]
        ensure_capacity(model.backend, jobs)
    except BaseException:
        await stack.aclose()
        raise
    return ChatRun(model, plan, prompt, jobs, stack, notes(req))


REASONING_IGNORED = "X-Reasoning-Ignored"


def notes(req: ChatRequest) -> dict[str, str]:
    """What the answer could not honour, said in a header rather than refused (clients send these on every
    request whatever the model)."""
    if req.reasoning is not None and req.reasoning.wanted:
        return {REASONING_IGNORED: f"{req.reasoning.param}: this model does not think; it answered without reasoning"}
    return {}


async def count_prompt_tokens(req: ChatRequest, manager: ModelManager) -> int:
    """How many tokens the model would read for this request: system, tools and the template's own tokens."""
    async with manager.use(req.model, "chat") as model:
        backend = model.backend
        plan = plan_output(req, backend.facts.chat_template)  # what the model is shown; no grammar is compiled
        prompt = await asyncio.to_thread(prompt_tokens, backend, req.messages, plan)
    return len(prompt)
