"""POST /chat/completions: the request in the core's terms, run, and the answers (or the stream of events)
as OpenAI's chat completion objects and chunks."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import Response

from ...config import Settings
from ...core.chat import CallDelta, CallStart, ChatRun, ReasoningDelta, TextDelta, start_chat
from ...core.generation import until_disconnected
from ...core.streaming import sse_data, sse_response
from ...manager import ModelManager
from ...prompting.tool_calls import Call
from ..base import say_what_changed
from .errors import DONE, error_event
from .logprobs import chat_logprobs
from .protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    ChoiceLogprobs,
    FunctionCall,
    FunctionCallDelta,
    ToolCall,
    ToolCallDelta,
    new_id,
    now,
    usage,
)
from .translate import chat_request


def call_id(call: Call) -> str:
    return f"call_{call.id or uuid.uuid4().hex[:24]}"


def tool_calls(calls: tuple[Call, ...]) -> list[ToolCall] | None:
    return [ToolCall(id=call_id(c), function=FunctionCall(name=c.name, arguments=c.arguments)) for c in calls] or None


async def create_chat_completion(
    req: ChatCompletionRequest, manager: ModelManager, settings: Settings, request: Request
) -> Response | ChatCompletionResponse:
    run = await start_chat(chat_request(req), manager, settings)
    say_what_changed(request, run.notes, run.ignored)
    request.state.model = run.model.entry.name
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return sse_response(_stream(run, include_usage, request), run.aclose, error_event, DONE)
    async with run:
        answers = await until_disconnected(request, run.answers())
    request.state.usage = usage(run.prompt_tokens, sum(a.completion_tokens for a in answers), answers[0].cached_tokens,
                                sum(a.reasoning_tokens for a in answers))
    choices = [
        ChatChoice(index=a.index, message=AssistantMessage(content=a.content, tool_calls=tool_calls(a.calls),
                                                           reasoning_content=a.reasoning, reasoning=a.reasoning),
                   finish_reason=a.finish_reason,  # type: ignore[arg-type]
                   logprobs=chat_logprobs(run.model.backend, a.logprobs) if req.logprobs else None)
        for a in answers
    ]
    return ChatCompletionResponse(id=new_id("chatcmpl"), created=now(), model=run.model.entry.name, choices=choices,
                                  usage=request.state.usage)


async def _stream(run: ChatRun, include_usage: bool, request: Request) -> AsyncIterator[str]:
    chunk_id, created, name = new_id("chatcmpl"), now(), run.model.entry.name
    # Without include_usage the `usage` key is left out; with it, null on every chunk but the last.
    exclude = None if include_usage else {"usage"}

    def event(index: int, delta: ChatDelta, finish_reason: str | None = None, logprobs: ChoiceLogprobs | None = None) -> str:
        choice = ChatChunkChoice(index=index, delta=delta, finish_reason=finish_reason, logprobs=logprobs)  # type: ignore[arg-type]
        chunk = ChatCompletionChunk(id=chunk_id, created=created, model=name, choices=[choice])
        return sse_data(chunk.model_dump_json(exclude=exclude))

    for job in run.jobs:
        yield event(job.index, ChatDelta(role="assistant", content=""))
    completion_tokens = cached_tokens = reasoning_tokens = 0
    async for item in run.events():
        if isinstance(item, ReasoningDelta):
            yield event(item.index, ChatDelta(reasoning_content=item.text, reasoning=item.text))
            continue
        if isinstance(item, TextDelta):
            logprobs = chat_logprobs(run.model.backend, item.logprobs) if item.logprobs else None
            yield event(item.index, ChatDelta(content=item.text), logprobs=logprobs)
            continue
        if isinstance(item, CallStart):  # the name and id once, then the arguments in pieces
            head = ToolCallDelta(index=item.number, id=call_id(item.call), type="function",
                                 function=FunctionCallDelta(name=item.call.name, arguments=""))
            yield event(item.index, ChatDelta(tool_calls=[head]))
            continue
        if isinstance(item, CallDelta):
            piece = ToolCallDelta(index=item.number, function=FunctionCallDelta(arguments=item.text))
            yield event(item.index, ChatDelta(tool_calls=[piece]))
            continue
        completion_tokens += item.completion_tokens
        cached_tokens = max(cached_tokens, item.cached_tokens)
        reasoning_tokens += item.reasoning_tokens
        yield event(item.index, ChatDelta(), item.finish_reason)
    request.state.usage = usage(run.prompt_tokens, completion_tokens, cached_tokens, reasoning_tokens)
    if include_usage:
        final = ChatCompletionChunk(id=chunk_id, created=created, model=name, choices=[], usage=request.state.usage)
        yield sse_data(final.model_dump_json())
