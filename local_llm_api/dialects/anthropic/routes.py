"""POST /messages (JSON or its event stream) and POST /messages/count_tokens. Auth is the shared API-key
check, which takes the SDK's `x-api-key` as well as `Authorization: Bearer`; `anthropic-version` and
`anthropic-beta` headers and Claude Code's `?beta=true` are accepted."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from ...api.auth import require_api_key
from ...core.chat import Answer, CallDelta, CallStart, ChatRun, ReasoningDelta, TextDelta, count_prompt_tokens, start_chat
from ...core.generation import TokenCounts, until_disconnected
from ...core.streaming import sse_data, sse_response
from ...prompting.reasoning import seal
from ..base import DialectRoute, say_what_changed
from .errors import error_event
from .protocol import CountTokensRequest, CreateMessage, ErrorEnvelope, MessageOut, TokenCount, Usage, message_id, tool_use_id
from .translate import chat_request, content_blocks, shows_thinking, stop_reason

ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorEnvelope} for code in (400, 401, 404, 413, 429, 503)}
STREAM = {200: {"content": {"text/event-stream": {}}, "description": "JSON, or server-sent events when `stream` is true"}}

router = APIRouter(dependencies=[Depends(require_api_key)], responses=ERRORS, route_class=DialectRoute, tags=["anthropic"])


@router.post("/messages", response_model=MessageOut, responses=STREAM)
async def create_message(req: CreateMessage, request: Request) -> Response | MessageOut:
    run = await start_chat(chat_request(req), request.app.state.manager, request.app.state.settings)
    say_what_changed(request, run.notes, run.ignored)
    request.state.model = run.model.entry.name
    if req.stream:
        return sse_response(_stream(run, request, shows_thinking(req)), run.aclose, error_event, keepalive=_event("ping"))
    async with run:
        answer = (await until_disconnected(request, run.answers()))[0]
    request.state.usage = TokenCounts(run.prompt_tokens, answer.completion_tokens)
    return MessageOut(id=message_id(), model=run.model.entry.name, content=content_blocks(answer, shows_thinking(req)),
                      stop_reason=stop_reason(answer), stop_sequence=answer.stop_sequence,
                      usage=usage(run.prompt_tokens, answer))


@router.post("/messages/count_tokens")
async def count_tokens(req: CountTokensRequest, request: Request) -> TokenCount:
    """The tokens the model would read: system, tools and the chat template's own tokens included."""
    return TokenCount(input_tokens=await count_prompt_tokens(chat_request(req), request.app.state.manager))


def usage(prompt_tokens: int, answer: Answer) -> Usage:
    """Anthropic counts a prompt's cached part apart: `input_tokens` are the ones read anew."""
    return Usage(input_tokens=prompt_tokens - answer.cached_tokens, output_tokens=answer.completion_tokens,
                 cache_read_input_tokens=answer.cached_tokens)


def _event(kind: str, **fields: Any) -> str:
    return sse_data(json.dumps({"type": kind, **fields}, ensure_ascii=False, separators=(",", ":")), kind)


async def _stream(run: ChatRun, request: Request, shown: bool) -> AsyncIterator[str]:
    message = MessageOut(id=message_id(), model=run.model.entry.name, content=[], stop_reason=None,
                         usage=Usage(input_tokens=run.prompt_tokens, output_tokens=0))
    yield _event("message_start", message=message.model_dump(mode="json"))
    yield _event("ping")
    index, open_block = 0, None  # the content block being streamed: "thinking" or "text"
    answer = Answer(0)

    def close_block() -> Iterator[str]:
        nonlocal index, open_block
        if open_block == "thinking":  # its signature seals what was thought
            yield _event("content_block_delta", index=index, delta={"type": "signature_delta", "signature": seal(answer.reasoning or "")})
        if open_block is not None:
            yield _event("content_block_stop", index=index)
            index, open_block = index + 1, None

    def open_text() -> Iterator[str]:
        nonlocal open_block
        if open_block != "text":
            for frame in close_block():
                yield frame
            open_block = "text"
            yield _event("content_block_start", index=index, content_block={"type": "text", "text": ""})

    async for item in run.events():
        answer.add(item)
        if isinstance(item, ReasoningDelta):
            if open_block != "thinking":
                for frame in close_block():
                    yield frame
                open_block = "thinking"
                yield _event("content_block_start", index=index, content_block={"type": "thinking", "thinking": "", "signature": ""})
            if shown:
                yield _event("content_block_delta", index=index, delta={"type": "thinking_delta", "thinking": item.text})
        elif isinstance(item, CallStart):  # a tool_use block: its name at once, its input as the model writes it
            for frame in close_block():
                yield frame
            open_block = "tool_use"
            yield _event("content_block_start", index=index, content_block={
                "type": "tool_use", "id": tool_use_id(item.call.id), "name": item.call.name, "input": {}})
        elif isinstance(item, CallDelta) and item.text:
            yield _event("content_block_delta", index=index, delta={"type": "input_json_delta", "partial_json": item.text})
        elif isinstance(item, TextDelta) and item.text and (item.text.strip() or open_block == "text"):
            for frame in open_text():
                yield frame
            yield _event("content_block_delta", index=index, delta={"type": "text_delta", "text": item.text})
    if not any(isinstance(part, int) or part.strip() for part in answer.parts):
        for frame in open_text():  # an empty answer still has its text block
            yield frame
    for frame in close_block():
        yield frame
    request.state.usage = TokenCounts(run.prompt_tokens, answer.completion_tokens)
    yield _event("message_delta", delta={"stop_reason": stop_reason(answer), "stop_sequence": answer.stop_sequence},
                 usage=usage(run.prompt_tokens, answer).model_dump())
    yield _event("message_stop")
