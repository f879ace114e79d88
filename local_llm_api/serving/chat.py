"""POST /chat/completions: messages (and tools) -> the model's chat template -> tokens -> choices, streamed or
not; tool calls read back from the answers (`structured.py` plans the grammar and the tool format)."""

from __future__ import annotations

import asyncio
import json
import uuid
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
    ChoiceLogprobs,
    FunctionCall,
    FunctionCallDelta,
    TextPart,
    ToolCall,
    ToolCallDelta,
    new_id,
    now,
)
from ..config import Settings
from ..manager import LoadedModel, ModelManager
from ..prompting.chat_template import ChatTemplateError, render_chat
from ..prompting.tool_calls import Call, ToolCallStream, template_takes_tools, tool_format, tools_system_prompt
from .generation import ChoiceJob, collect_choices, ensure_capacity, sse, sse_response, stream_choices, until_disconnected, usage
from .logprobs import chat_logprobs
from .params import refuse_unsupported_chat_fields, sampling_params, token_budget
from .structured import OutputPlan, check_schemas, plan_output


def template_messages(messages: list[ChatMessage], plan: OutputPlan, template: str) -> list[dict[str, Any]]:
    """Spec messages as chat templates expect them: plain string content, `developer` spoken as `system`,
    tool-call arguments as objects. A template that knows no tools reads calls and results as text, and
    the tools in a system message."""
    takes_tools = template_takes_tools(template)
    fmt = tool_format(template)
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
        calls = message.tool_calls or []
        if calls and takes_tools:
            item["tool_calls"] = [{"id": c.id, "type": "function",
                                   "function": {"name": c.function.name, "arguments": _arguments(c.function.arguments)}}
                                  for c in calls]
        elif calls:
            text = fmt.call_text([Call(c.function.name, c.function.arguments) for c in calls])
            item["content"] = (item["content"] + "\n" if item["content"] else "") + text
        if message.role == "tool" and not takes_tools:
            item = {"role": "user", "content": f"<tool_response>\n{item['content']}\n</tool_response>"}
        elif message.tool_call_id:
            item["tool_call_id"] = message.tool_call_id
        out.append(item)
    if plan.tools and not takes_tools:
        instructions = tools_system_prompt(plan.tools)
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": out[0]["content"] + "\n\n" + instructions}
        else:
            out.insert(0, {"role": "system", "content": instructions})
    return out


def _arguments(arguments: str) -> Any:
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments


def chat_prompt(model: LoadedModel, messages: list[ChatMessage], plan: OutputPlan) -> list[int]:
    backend = model.backend
    facts = backend.facts
    try:
        text = render_chat(facts.chat_template, template_messages(messages, plan, facts.chat_template),
                           bos_token=facts.bos_token, eos_token=facts.eos_token,
                           tools=plan.tools if template_takes_tools(facts.chat_template) else None)
    except ChatTemplateError as exc:
        raise invalid_request(f"The model's chat template rejected these messages: {exc}", "messages") from None
    return backend.tokenize(text, add_special=True)


def prepare(model: LoadedModel, req: ChatCompletionRequest) -> tuple[OutputPlan, list[int]]:
    """The output plan (schemas compiled) and the prompt's tokens: work off the event loop."""
    plan = plan_output(req, model.backend.facts.chat_template)
    check_schemas(model.backend, plan)
    return plan, chat_prompt(model, req.messages, plan)


def answer_message(text: str, plan: OutputPlan) -> tuple[AssistantMessage, bool]:
    """The assistant message for a finished answer, and whether it holds tool calls."""
    if plan.tool_format is None:
        return AssistantMessage(content=text), False
    content, calls = plan.tool_format.parse(text)
    if not calls:
        return AssistantMessage(content=text), False
    tool_calls = [ToolCall(id=call_id(), function=FunctionCall(name=c.name, arguments=c.arguments)) for c in calls]
    return AssistantMessage(content=content, tool_calls=tool_calls), True


def call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


async def create_chat_completion(
    req: ChatCompletionRequest, manager: ModelManager, settings: Settings, request: Request
) -> Response | ChatCompletionResponse:
    refuse_unsupported_chat_fields(req)
    stack = AsyncExitStack()
    model = await stack.enter_async_context(manager.use(req.model, "chat"))
    try:
        # Compiling schemas and tokenizing only read the vocabulary: they need not queue behind generations.
        plan, prompt = await asyncio.to_thread(prepare, model, req)
        requested = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        budget = token_budget(len(prompt), requested, model.backend.facts, settings, "max_tokens" if requested else "messages")
        top_n = (req.top_logprobs or 0) if req.logprobs else None
        jobs = [ChoiceJob(i, prompt, sampling_params(req, settings, model.backend.facts, budget, i, grammar=plan.grammar,
                                                     logprobs=top_n, extra_stop=plan.stop))
                for i in range(req.n or 1)]
        ensure_capacity(model.backend, jobs)
    except BaseException:
        await stack.aclose()
        raise
    request.state.model = model.entry.name
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return sse_response(_stream(model, jobs, plan, len(prompt), include_usage, request), stack.aclose)
    async with stack:
        results = await until_disconnected(request, collect_choices(model.backend, jobs))
    request.state.usage = usage(len(prompt), sum(r.completion_tokens for r in results))
    choices = []
    for r in results:
        message, has_calls = answer_message(r.text, plan)
        logprobs = chat_logprobs(model.backend, r.logprobs) if req.logprobs else None
        finish_reason = "tool_calls" if has_calls else r.finish_reason
        choices.append(ChatChoice(index=r.index, message=message, finish_reason=finish_reason, logprobs=logprobs))  # type: ignore[arg-type]
    return ChatCompletionResponse(id=new_id("chatcmpl"), created=now(), model=model.entry.name, choices=choices,
                                  usage=request.state.usage)


async def _stream(
    model: LoadedModel, jobs: list[ChoiceJob], plan: OutputPlan, prompt_tokens: int, include_usage: bool, request: Request
) -> AsyncIterator[str]:
    chunk_id, created, name = new_id("chatcmpl"), now(), model.entry.name
    # Without include_usage the `usage` key is left out; with it, null on every chunk but the last.
    exclude = None if include_usage else {"usage"}

    def event(index: int, delta: ChatDelta, finish_reason: str | None = None, logprobs: ChoiceLogprobs | None = None) -> str:
        choice = ChatChunkChoice(index=index, delta=delta, finish_reason=finish_reason, logprobs=logprobs)  # type: ignore[arg-type]
        chunk = ChatCompletionChunk(id=chunk_id, created=created, model=name, choices=[choice])
        return sse(chunk.model_dump_json(exclude=exclude))

    # With tools, content streams as it comes while text that may be a tool call is held and parsed at the end.
    splitters = {job.index: ToolCallStream(plan.tool_format) for job in jobs} if plan.tool_format else {}
    for job in jobs:
        yield event(job.index, ChatDelta(role="assistant", content=""))
    completion_tokens = 0
    async for index, chunk in stream_choices(model.backend, jobs):
        splitter = splitters.get(index)
        text = splitter.push(chunk.text) if splitter else chunk.text
        logprobs = chat_logprobs(model.backend, chunk.logprobs) if chunk.logprobs else None
        if text or logprobs:
            yield event(index, ChatDelta(content=text), logprobs=logprobs)
        if chunk.finish_reason is None:
            continue
        completion_tokens += chunk.completion_tokens
        finish_reason: str = chunk.finish_reason
        if splitter:
            rest, calls = splitter.finish()
            if rest:
                yield event(index, ChatDelta(content=rest))
            for n, call in enumerate(calls):
                head = ToolCallDelta(index=n, id=call_id(), type="function", function=FunctionCallDelta(name=call.name, arguments=""))
                yield event(index, ChatDelta(tool_calls=[head]))
                yield event(index, ChatDelta(tool_calls=[ToolCallDelta(index=n, function=FunctionCallDelta(arguments=call.arguments))]))
            finish_reason = "tool_calls" if calls else finish_reason
        yield event(index, ChatDelta(), finish_reason)
    request.state.usage = usage(prompt_tokens, completion_tokens)
    if include_usage:
        final = ChatCompletionChunk(id=chunk_id, created=created, model=name, choices=[], usage=request.state.usage)
        yield sse(final)
