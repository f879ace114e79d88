"""One chat request on a model: plan the output, build the prompt, run its choices, and read tool calls
back, as a stream of events that every dialect translates into its own frames (or collects)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, replace

from ..backends.base import Backend, Reservation, ThinkingControl
from ..config import Settings
from ..manager import LoadedModel, ModelManager
from ..prompting.chat_template import template_info
from ..prompting.reasoning import ReasoningFormat, ReasoningSplitter, reasoning_format
from ..prompting.tool_calls import Call, CallArguments, CallStarted, ToolCallStream
from ..prompting.tool_parser import ToolParser, compiled
from ..prompting.tool_syntax import iter_literals
from ..structured.logprobs import TokenLogprob
from ..errors import invalid_request
from ..images import ImageInput, ImageLimits, load
from .generation import ChoiceJob, ensure_capacity, stream_choices
from .output import OutputPlan, check_schemas, plan_output
from .prompt import Prompt, prompt_tokens
from .request import ChatRequest, Message
from .sampling import sampling_params, token_budget


@dataclass(frozen=True)
class TextDelta:
    """New answer text of one choice (possibly empty when only log probabilities came)."""

    index: int
    text: str
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class ReasoningDelta:
    """New reasoning text of one choice (a thinking model's, apart from its answer)."""

    index: int
    text: str


@dataclass(frozen=True)
class CallStart:
    """A tool call begins: its name and id (its arguments follow in `CallDelta`s)."""

    index: int
    number: int  # the call's place among the choice's calls
    call: Call


@dataclass(frozen=True)
class CallDelta:
    """More of a call's arguments: all of them, joined, are the call's final arguments."""

    index: int
    number: int
    text: str


@dataclass(frozen=True)
class ChoiceEnd:
    """A choice finished: `tool_calls` when its answer held calls, else the backend's stop/length."""

    index: int
    finish_reason: str
    calls: tuple[Call, ...]
    completion_tokens: int
    stop_sequence: str | None = None  # the request's stop string that ended it, if one did
    cached_tokens: int = 0  # prompt tokens read from the prefix cache
    reasoning_tokens: int = 0  # of the completion tokens, those spent reasoning


ChatEvent = TextDelta | ReasoningDelta | CallStart | CallDelta | ChoiceEnd


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
    reasoning_tokens: int = 0
    reasoning: str | None = None  # None: the model wrote no reasoning
    logprobs: list[TokenLogprob] = field(default_factory=list)
    parts: list[str | int] = field(default_factory=list)  # the answer in order: text, and calls by number

    def add(self, event: ChatEvent) -> None:
        if isinstance(event, ReasoningDelta):
            self.reasoning = (self.reasoning or "") + event.text
            return
        if isinstance(event, TextDelta):
            self.content = (self.content or "") + event.text
            self.logprobs += event.logprobs
            if event.text and self.parts and isinstance(self.parts[-1], str):
                self.parts[-1] += event.text
            elif event.text:
                self.parts.append(event.text)
            return
        if isinstance(event, CallStart):
            self.parts.append(event.number)
            return
        if isinstance(event, CallDelta):
            return
        self.finish_reason, self.calls, self.completion_tokens = event.finish_reason, event.calls, event.completion_tokens
        self.stop_sequence, self.cached_tokens = event.stop_sequence, event.cached_tokens
        self.reasoning_tokens = event.reasoning_tokens
        if event.calls:  # the text around tool calls, if any, without the whitespace before them
            self.content = (self.content or "").strip() or None

    def in_order(self) -> list[str | Call]:
        """The answer's text and calls in the order the model wrote them (blank text left out), for the APIs whose
        answers are a list of blocks or items."""
        out: list[str | Call] = []
        for part in self.parts:
            if isinstance(part, int):
                if part < len(self.calls):
                    out.append(self.calls[part])
            elif part.strip():
                out.append(part.strip() if self.calls else part)
        listed = sum(isinstance(p, Call) for p in out)
        return out + list(self.calls[listed:]) if listed < len(self.calls) else out


@dataclass
class ChatRun:
    """A prepared request holding its model: `events()` or `answers()` once, then `aclose()` to release it."""

    model: LoadedModel
    plan: OutputPlan
    prompt: list[int]
    jobs: list[ChoiceJob]
    _stack: AsyncExitStack
    notes: dict[str, str] = field(default_factory=dict)  # response headers that say what the server did differently
    reservation: Reservation | None = None  # the choices' places in the model's queue, until they are queued
    reasoning: ReasoningFormat | None = None  # set when the model thinks and may this time
    starts_inside: bool = False  # the prompt opened the reasoning block
    ignored: tuple[str, ...] = ()  # request fields that turned out to change nothing (template kwargs it does not read)
    prompt_text: str = ""  # the prompt's last characters, where a tool-call frame may begin

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt)

    async def aclose(self) -> None:
        if self.reservation is not None:
            self.reservation.release()
        await self._stack.aclose()

    async def __aenter__(self) -> ChatRun:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def events(self) -> AsyncIterator[ChatEvent]:
        # Reasoning is split off first; of the answer, content streams as it comes, and tool calls as soon as their
        # name is read (then their arguments in pieces); text that may be the start of a call is held.
        fmt = self.plan.tool_format
        splitters = {job.index: ToolCallStream(ToolParser(fmt.syntaxes, self.plan.declared, self.prompt_text))
                     for job in self.jobs} if fmt else {}
        ends = compiled(fmt.syntax).triggers if fmt is not None else ()
        thinkers = {job.index: ReasoningSplitter(self.reasoning, inside=self.starts_inside, ends=ends)
                    for job in self.jobs} if self.reasoning is not None else {}
        async for index, chunk in stream_choices(self.model.backend, self.jobs, self.reservation):
            text, thinker = chunk.text, thinkers.get(index)
            if thinker is not None:
                thought, text = thinker.push(text)
                if chunk.finish_reason is not None:
                    more_thought, more_text = thinker.finish()
                    thought, text = thought + more_thought, text + more_text
                if thought:
                    yield ReasoningDelta(index, thought)
            splitter = splitters.get(index)
            outputs = splitter.push(text) if splitter else [text] if text else []
            calls: list[Call] = []
            if splitter and chunk.finish_reason is not None:
                rest, calls = splitter.finish()
                outputs += rest
            for event in _events(index, outputs, chunk.logprobs):
                yield event
            if chunk.finish_reason is None:
                continue
            stop = chunk.stop_sequence if chunk.stop_sequence not in self.plan.stop else None
            # Cut off by max_tokens, the last call may be cut too (its JSON closed, see `healed`): the client is
            # told `length`, never that the calls are complete.
            ended = "tool_calls" if calls and chunk.finish_reason != "length" else chunk.finish_reason
            yield ChoiceEnd(index, ended, tuple(calls), chunk.completion_tokens, stop,
                            chunk.cached_tokens, chunk.reasoning_tokens)

    async def answers(self) -> list[Answer]:
        answers = {job.index: Answer(job.index) for job in self.jobs}
        async for event in self.events():
            answers[event.index].add(event)
        return [answers[job.index] for job in self.jobs]


def _events(index: int, outputs: list[str | CallStarted | CallArguments],
            logprobs: tuple[TokenLogprob, ...]) -> list[ChatEvent]:
    """A chunk's share of the answer as events; its log probabilities go with its first text (or alone)."""
    events: list[ChatEvent] = []
    for output in outputs:
        if isinstance(output, CallStarted):
            events.append(CallStart(index, output.number, output.call))
        elif isinstance(output, CallArguments):
            events.append(CallDelta(index, output.number, output.delta))
        elif output:
            events.append(TextDelta(index, output, logprobs))
            logprobs = ()
    if logprobs:
        events.insert(0, TextDelta(index, "", logprobs))
    return events


@dataclass(frozen=True)
class Prepared:
    plan: OutputPlan
    tokens: list[int]
    prompt: Prompt
    reasoning: ReasoningFormat | None  # the model's markers, when it thinks


def model_reasoning(model: LoadedModel) -> ReasoningFormat | None:
    """How the model marks its reasoning: MODELS_CONFIG's `reasoning`, else read from its chat template."""
    spec = model.entry.spec
    return reasoning_format(template_info(model.backend.facts.chat_template), spec.reasoning if spec else None)


def tool_format_of(model: LoadedModel) -> str | None:
    """MODELS_CONFIG's `tool_format` for the model, if it names one."""
    spec = model.entry.spec
    return spec.tool_format if spec else None


def prepare(model: LoadedModel, req: ChatRequest, plain_content: bool = False) -> Prepared:
    """The output plan (schemas compiled) and the prompt: work off the event loop. `plain_content`: control-token
    texts in messages are read as text (PARSE_SPECIAL_IN_CONTENT=false)."""
    backend = model.backend
    plan = plan_output(req, backend.facts.chat_template, tool_format_of(model))
    check_schemas(backend, plan)
    if req.raw_prompt is not None:
        return Prepared(plan, backend.tokenize(req.raw_prompt, add_special=True), Prompt(req.raw_prompt), None)
    reasoning = model_reasoning(model)
    room = (req.max_tokens or 1) if req.truncate else None
    tokens, prompt = prompt_tokens(backend, req, plan, room=room, context=req.context(backend.facts.context_size),
                                   reasoning=reasoning, plain_content=plain_content)
    opens = plan.tool_format.syntax.prompt_opens if plan.tool_format is not None and plan.grammar else ""
    if opens and prompt.text.endswith(opens):  # the forced call's frame is already open
        plan = plan_output(req, backend.facts.chat_template, tool_format_of(model), primed=True)
    return Prepared(plan, tokens, prompt, reasoning)


def kept_markers(backend: Backend, markers: Iterable[str]) -> dict[int, bytes]:
    """The special tokens in these markers whose text an answer must keep (a control token's text is otherwise left
    out of the answer), so that the splitters see the markers the model writes."""
    keep = {}
    for marker in markers:
        for token in backend.tokenize(marker, add_special=False, parse_special=True) if marker else ():
            if not backend.token_bytes(token):
                keep[token] = backend.token_piece(token)
    return keep


def thinking_control(backend: Backend, fmt: ReasoningFormat, prompt: Prompt, req: ChatRequest) -> tuple[ThinkingControl, dict[int, bytes]]:
    """What the engine watches of the reasoning block, and the special tokens of its markers whose text the answer
    must keep for the splitter to see them."""
    close = tuple(backend.tokenize(fmt.close, add_special=False, parse_special=True))
    keep = kept_markers(backend, (fmt.open, fmt.close, fmt.answer_prefix))
    asked = req.reasoning_asked
    budget = asked.budget_tokens if asked is not None else None
    return ThinkingControl(fmt.open, fmt.close, close, inside=prompt.starts_inside, budget=budget), keep


async def with_images(req: ChatRequest, model: LoadedModel, settings: Settings) -> ChatRequest:
    """The request with its images read and checked (each source once), for a model that reads images; a model that
    does not gets a 400 naming the first image, never an answer that left the picture out."""
    images = [image for message in req.messages for image in message.images]
    if not images:
        return req
    if not model.backend.vision:
        raise invalid_request(f"\"{model.entry.name}\" has no vision: it cannot read images. Send text only, or ask a "
                              "vision model (GET /v1/models lists each model's capabilities).", images[0].param,
                              "model_has_no_vision")
    limits = ImageLimits.of(settings)
    if len(images) > limits.max_images:
        raise invalid_request(f"The request has {len(images)} images; this server takes at most {limits.max_images} "
                              "(MAX_IMAGES).", images[limits.max_images].param, "too_many_images")
    read: dict[str, ImageInput] = {}
    for image in images:
        if image.source not in read:
            read[image.source] = await load(image, limits)

    def loaded(message: Message) -> Message:
        if not message.images:
            return message
        parts = tuple(replace(read[p.source], param=p.param) if isinstance(p, ImageInput) else p for p in message.parts or ())
        return replace(message, parts=parts)

    return replace(req, messages=[loaded(m) for m in req.messages])


async def start_chat(req: ChatRequest, manager: ModelManager, settings: Settings) -> ChatRun:
    """Load (or find) the model, plan and tokenize, and check the queue: everything that can fail with a clean
    status before a response starts. The run holds the model until `aclose()`."""
    stack = AsyncExitStack()
    model = await stack.enter_async_context(manager.use(req.model, "chat"))
    reservation: Reservation | None = None
    try:
        # The places in the queue first: a full queue refuses before any work is done, and an idle engine knows
        # that this request is on its way (it gathers a wave of requests into one step: `Engine._run`).
        reservation = ensure_capacity(model.backend, req.n)
        req = await with_images(req, model, settings)
        # Compiling schemas and tokenizing only read the vocabulary: they need not queue behind generations.
        prepared = await asyncio.to_thread(prepare, model, req, not settings.parse_special_in_content)
        backend, facts, reasoning = model.backend, model.backend.facts, prepared.reasoning
        asked = req.reasoning_asked
        if reasoning is None and asked is not None and asked.required:
            raise invalid_request(f"\"{model.entry.name}\" does not support thinking", asked.param)
        thinks = reasoning is not None and (asked is None or asked.wanted)
        control, keep = thinking_control(backend, reasoning, prepared.prompt, req) if thinks and reasoning else (None, {})
        if prepared.plan.tool_format is not None:
            keep = {**keep, **kept_markers(backend, iter_literals(prepared.plan.tool_format.syntax))}
        budget = token_budget(len(prepared.tokens), req.max_tokens, req.context(facts.context_size), settings, req.prompt_param)
        jobs = [ChoiceJob(i, prepared.tokens, prepared.prompt.media, sampling_params(req.sampling, settings, facts, budget, i,
                                                              grammar=prepared.plan.grammar, logprobs=req.logprobs,
                                                              extra_stop=prepared.plan.stop, thinking=control,
                                                              keep_tokens=keep))
                for i in range(req.n)]
    except BaseException:
        if reservation is not None:
            reservation.release()
        await stack.aclose()
        raise
    return ChatRun(model, prepared.plan, prepared.tokens, jobs, stack, notes(req, reasoning), reservation,
                   reasoning if thinks else None, prepared.prompt.starts_inside and thinks, prepared.prompt.ignored,
                   prepared.prompt.text[-64:])


REASONING_IGNORED = "X-Reasoning-Ignored"


def notes(req: ChatRequest, reasoning: ReasoningFormat | None) -> dict[str, str]:
    """What the answer could not honour, said in a header rather than refused (clients send these on every
    request whatever the model)."""
    asked = req.reasoning_asked
    if reasoning is None and asked is not None and asked.wanted:
        return {REASONING_IGNORED: f"{asked.param}: this model does not think; it answered without reasoning"}
    return {}


async def count_prompt_tokens(req: ChatRequest, manager: ModelManager) -> int:
    """How many tokens the model would read for this request: system, tools and the template's own tokens."""
    async with manager.use(req.model, "chat") as model:
        backend = model.backend
        req = await with_images(req, model, manager.settings)
        plan = plan_output(req, backend.facts.chat_template, tool_format_of(model))  # what the model is shown
        tokens, _ = await asyncio.to_thread(prompt_tokens, backend, req, plan, reasoning=model_reasoning(model),
                                            plain_content=not manager.settings.parse_special_in_content)
    return len(tokens)
