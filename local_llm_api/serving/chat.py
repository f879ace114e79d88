"""POST /chat/completions: messages -> the model's chat template -> tokens -> choices, streamed or not."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from ..api.errors import invalid_request
from ..api.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    ChatMessage,
    TextPart,
    new_id,
    now,
)
from ..config import Settings
from ..manager import LoadedModel, ModelManager
from ..prompting.chat_template import ChatTemplateError, render_chat
from .generation import ChoiceJob, collect_choices, ensure_capacity, sse, sse_response, stream_choices, until_disconnected, usage
from .params import refuse_unsupported_chat_fields, sampling_params, token_budget


def template_messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """Spec messages as chat templates expect them: plain string content, `developer` spoken as `system`."""
    out = []
    for i, message in enumerate(messages):
        content = message.content
        if isinstance(content, list):
            for j, part in enumerate(content):
                if not isinstance(part, TextPart):
                    raise invalid_request(
                        f"Content parts of type '{part.type}' are not supported: this server serves text models.",
                        f"messages[{i}].content[{j}].type",
                        "unsupported_content_type",
                    )
            content = "\n".join(part.text for part in content if isinstance(part, TextPart))
        item: dict[str, Any] = {"role": "system" if message.role == "developer" else message.role, "content": content or ""}
        if message.name:
            item["name"] = message.name
        if message.tool_calls:
            item["tool_calls"] = [call.model_dump() for call in message.tool_calls]
        if message.tool_call_id:
            item["tool_call_id"] = message.tool_call_id
        out.append(item)
    return out


def chat_prompt(model: LoadedModel, messages: list[ChatMessage]) -> list[int]:
    backend = model.backend
    facts = backend.facts
    try:
        text = render_chat(facts.chat_template, template_messages(messages), bos_token=facts.bos_token, eos_token=facts.eos_token)
    except ChatTemplateError as exc:
        raise invalid_request(f"The model's chat template rejected these messages: {exc}", "messages") from None
    return backend.tokenize(text, add_special=True)


async def create_chat_completion(
    req: ChatCompletionRequest, manager: ModelManager, settings: Settings, request: Request
) -> Response | ChatCompletionResponse:
    refuse_unsupported_chat_fields(req)
    stack = AsyncExitStack()
    model = await stack.enter_async_context(manager.use(req.model, "chat"))
    try:
        # Tokenizing only reads the vocabulary: it need not queue behind running generations.
        prompt = await asyncio.to_thread(chat_prompt, model, req.messages)
        requested = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        budget = token_budget(len(prompt), requested, model.backend.facts, settings, "max_tokens" if requested else "messages")
        jobs = [ChoiceJob(i, prompt, sampling_params(req, settings, model.backend.facts, budget, i)) for i in range(req.n or 1)]
        ensure_capacity(model.backend, jobs)
    except BaseException:
        await stack.aclose()
        raise
    request.state.model = model.entry.name
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return sse_response(_stream(model, jobs, len(prompt), include_usage, request), stack.aclose)
    async with stack:
        results = await until_disconnected(request, collect_choices(model.backend, jobs))
    request.state.usage = usage(len(prompt), sum(r.completion_tokens for r in results))
    return ChatCompletionResponse(
        id=new_id("chatcmpl"),
        created=now(),
        model=model.entry.name,
        choices=[
            ChatChoice(index=r.index, message=AssistantMessage(content=r.text), finish_reason=r.finish_reason)  # type: ignore[arg-type]
            for r in results
        ],
        usage=request.state.usage,
    )


async def _stream(
    model: LoadedModel, jobs: list[ChoiceJob], prompt_tokens: int, include_usage: bool, request: Request
) -> AsyncIterator[str]:
    chunk_id, created, name = new_id("chatcmpl"), now(), model.entry.name
    # Without include_usage the `usage` key is left out; with it, null on every chunk but the last.
    exclude = None if include_usage else {"usage"}

    def event(index: int, delta: ChatDelta, finish_reason: str | None = None) -> str:
        choice = ChatChunkChoice(index=index, delta=delta, finish_reason=finish_reason)  # type: ignore[arg-type]
        chunk = ChatCompletionChunk(id=chunk_id, created=created, model=name, choices=[choice])
        return sse(chunk.model_dump_json(exclude=exclude))

    for job in jobs:
        yield event(job.index, ChatDelta(role="assistant", content=""))
    completion_tokens = 0
    async for index, chunk in stream_choices(model.backend, jobs):
        if chunk.text:
            yield event(index, ChatDelta(content=chunk.text))
        if chunk.finish_reason is not None:
            completion_tokens += chunk.completion_tokens
            yield event(index, ChatDelta(), chunk.finish_reason)
    request.state.usage = usage(prompt_tokens, completion_tokens)
    if include_usage:
        final = ChatCompletionChunk(id=chunk_id, created=created, model=name, choices=[], usage=request.state.usage)
        yield sse(final)
