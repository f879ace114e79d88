"""POST /responses (JSON or its event stream), and the stored responses: GET, input items, DELETE."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response

from ...api.auth import presented_key, require_api_key
from ...core.chat import Answer, CallDelta, CallStart, ChatEvent, ChatRun, ReasoningDelta, TextDelta, start_chat
from ...prompting.tool_calls import Call
from ...errors import APIError, not_found
from ...core.generation import TokenCounts, until_disconnected
from ...core.streaming import sse_data, sse_response
from ..base import DialectRoute, say_what_changed
from ..openai.errors import ErrorResponse
from .protocol import (
    CreateResponse,
    CustomToolCallOutput,
    FunctionCallOutput,
    OutputItem,
    DeletedResponse,
    IncompleteDetails,
    InputTokensDetails,
    Logprob,
    ReasoningItem,
    OutputTokensDetails,
    InputItem,
    InputItemList,
    OutputMessage,
    OutputText,
    ResponseError,
    ResponseObject,
    ResponseUsage,
    TextFormatText,
    TextParam,
    new_id,
)
from .store import ResponseStore, owner_of
from .translate import (
    ITEMS,
    ToolSet,
    call_item,
    chat_request,
    input_items,
    output_items,
    reasoning_item,
    refuse_unsupported,
    response_logprobs,
    tool_set,
)

ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 429, 503)}
STREAM = {200: {"content": {"text/event-stream": {}}, "description": "JSON, or server-sent events when `stream` is true"}}
IGNORED_TOOLS_HEADER = "X-Ignored-Tools"  # built-in tools in the request that this server cannot run

router = APIRouter(dependencies=[Depends(require_api_key)], responses=ERRORS, route_class=DialectRoute, tags=["responses"])


def store_of(request: Request) -> ResponseStore:
    return request.app.state.response_store


def owner(request: Request) -> str:
    return owner_of(presented_key(request) if request.app.state.settings.api_key_required else None)


def usage(prompt_tokens: int, answer: Answer) -> ResponseUsage:
    return ResponseUsage(input_tokens=prompt_tokens, output_tokens=answer.completion_tokens,
                         total_tokens=prompt_tokens + answer.completion_tokens,
                         input_tokens_details=InputTokensDetails(cached_tokens=answer.cached_tokens),
                         output_tokens_details=OutputTokensDetails(reasoning_tokens=answer.reasoning_tokens))


def skeleton(req: CreateResponse, model: str) -> ResponseObject:
    """The response as it starts: what was asked, no output yet."""
    return ResponseObject(
        id=new_id("resp"), status="in_progress", model=model, instructions=req.instructions,
        max_output_tokens=req.max_output_tokens, parallel_tool_calls=req.parallel_tool_calls is not False,
        previous_response_id=req.previous_response_id, reasoning=req.reasoning, store=req.store is not False,
        temperature=req.temperature, top_p=req.top_p, top_logprobs=req.top_logprobs,
        text=req.text if req.text is not None and req.text.format is not None else TextParam(format=TextFormatText(type="text")),
        tool_choice=req.tool_choice or "auto", tools=req.tools or [], truncation=req.truncation or "disabled",
        user=req.user, metadata=req.metadata or {},
    )


async def conclude(request: Request, req: CreateResponse, run: ChatRun, response: ResponseObject, answer: Answer,
                   own: list[InputItem], context: list[InputItem]) -> None:
    """The finished response: status, output text and usage; logged, and stored unless `store` is false."""
    response.output_text = "".join(part.text for item in response.output if isinstance(item, OutputMessage) for part in item.content)
    response.usage = usage(run.prompt_tokens, answer)
    if answer.finish_reason == "length":
        response.status, response.incomplete_details = "incomplete", IncompleteDetails(reason="max_output_tokens")
    else:
        response.status, response.completed_at = "completed", int(time.time())
    request.state.usage = TokenCounts(run.prompt_tokens, answer.completion_tokens)
    if req.store is not False:
        dump = ITEMS.dump_python
        await store_of(request).put(owner(request), response.model_dump(mode="json"), dump(own, mode="json", exclude_none=True),
                                    dump(context + own, mode="json", exclude_none=True))


@router.post("/responses", response_model=ResponseObject, responses=STREAM)
async def create_response(req: CreateResponse, request: Request) -> Response:
    refuse_unsupported(req)
    context: list[InputItem] = []
    if req.previous_response_id:
        previous = await store_of(request).get(owner(request), req.previous_response_id)
        if previous is None:
            raise not_found(f"No stored response with id '{req.previous_response_id}' (it may have expired, been "
                            "deleted, created with store: false, or with another API key).", "previous_response_id",
                            "previous_response_not_found")
        context = ITEMS.validate_python(previous.context) + ITEMS.validate_python(previous.response["output"])
    tools = tool_set(req)
    own = input_items(req)
    run = await start_chat(chat_request(req, context, own, tools), request.app.state.manager, request.app.state.settings)
    say_what_changed(request, run.notes, run.ignored)
    request.state.model = run.model.entry.name
    response = skeleton(req, run.model.entry.name)
    headers = {IGNORED_TOOLS_HEADER: ", ".join(tools.ignored)} if tools.ignored else None
    if req.stream:
        event = Events()  # one numbering for the stream and the failure events that may end it
        stream = _stream(run, req, response, tools, own, context, request, event)
        return sse_response(stream, run.aclose, lambda exc: _failure_events(response, exc, event), headers=headers)
    async with run:
        answer = (await until_disconnected(request, run.answers()))[0]
    logprobs = response_logprobs(run.model.backend, answer.logprobs) if run.jobs[0].params.logprobs is not None else []
    response.output = output_items(answer, tools, logprobs, req)
    await conclude(request, req, run, response, answer, own, context)
    return JSONResponse(response.model_dump(mode="json"), headers=headers)


class Events:
    """Numbers the stream's events, as the spec requires."""

    def __init__(self) -> None:
        self.sequence = 0

    def __call__(self, kind: str, **fields: Any) -> str:
        data = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return sse_data(_json(data), kind)


def _json(data: dict[str, Any]) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def _dump(model: Any) -> Any:
    return model.model_dump(mode="json")


async def _stream(run: ChatRun, req: CreateResponse, response: ResponseObject, tools: ToolSet, own: list[InputItem],
                  context: list[InputItem], request: Request, event: Events) -> AsyncIterator[str]:
    """The spec's event order: each output item added, filled as the model writes it, and done before the next one
    (a reasoning item, messages and calls in the order the model wrote them)."""
    yield event("response.created", response=_dump(response))
    yield event("response.in_progress", response=_dump(response))
    items = _StreamedItems(run, req, tools, event)
    answer = Answer(0)
    async for item in run.events():
        answer.add(item)
        for line in items.take(item):
            yield line
    for line in items.close(answer):
        yield line
    response.output = items.done
    await conclude(request, req, run, response, answer, own, context)
    yield event("response.completed" if response.status == "completed" else "response.incomplete", response=_dump(response))


class _StreamedItems:
    """The output items of a streamed response, opened, filled and closed as the model's events come."""

    def __init__(self, run: ChatRun, req: CreateResponse, tools: ToolSet, event: Events) -> None:
        self.req, self.tools, self.event = req, tools, event
        self.backend, self.wants_logprobs = run.model.backend, run.jobs[0].params.logprobs is not None
        self.done: list[OutputItem] = []  # the items closed, in order: the response's output
        self.kind = "none"  # the item open: "none", "reasoning", "message", "call"
        self.item_id = ""
        self.text = ""  # the open item's text (reasoning, message) or arguments (call)
        self.pending = ""  # whitespace before a message's first text: no message if a call comes next
        self.logprobs: list[Logprob] = []
        self.call: Call | None = None
        self.status = "completed"  # a message's, at its end: "incomplete" when the answer ran out of tokens

    @property
    def index(self) -> int:
        return len(self.done)

    def take(self, item: ChatEvent) -> Iterator[str]:
        event, index = self.event, self.index
        if isinstance(item, ReasoningDelta):
            if self.kind != "reasoning":
                yield from self._close()
                yield from self._open_reasoning()
            self.text += item.text
            yield event("response.reasoning_text.delta", item_id=self.item_id, output_index=index, content_index=0,
                        delta=item.text)
        elif isinstance(item, TextDelta):
            delta_logprobs = response_logprobs(self.backend, item.logprobs) if self.wants_logprobs else []
            self.logprobs += delta_logprobs
            self.pending += item.text
            if not self.pending.strip() and (self.kind != "message" or not self.pending):
                return  # whitespace before any text is held (before a call it is no message)
            if self.kind != "message":
                yield from self._close()
                yield from self._open_message()
                index = self.index
            self.text += self.pending
            yield event("response.output_text.delta", item_id=self.item_id, output_index=index, content_index=0,
                        delta=self.pending, logprobs=[_dump(lp) for lp in delta_logprobs])
            self.pending = ""
        elif isinstance(item, CallStart):
            yield from self._close()
            self.pending = ""
            yield from self._open_call(item.call)
        elif isinstance(item, CallDelta) and self.call is not None:
            self.text += item.text
            if self._streams_input():
                kind = "response.custom_tool_call_input.delta" if self._custom() else "response.function_call_arguments.delta"
                yield event(kind, item_id=self.item_id, output_index=index, delta=item.text)

    def close(self, answer: Answer) -> Iterator[str]:
        """At the end: the open item closed; a reasoning that came at once with the end, or an empty answer, too."""
        if answer.reasoning is not None and not any(isinstance(i, ReasoningItem) for i in self.done) and self.kind != "reasoning":
            yield from self._open_reasoning()
            self.text = answer.reasoning
        self.status = "incomplete" if answer.finish_reason == "length" else "completed"
        yield from self._close()
        if not any(isinstance(i, OutputMessage | FunctionCallOutput | CustomToolCallOutput) for i in self.done):
            yield from self._open_message()  # an answer with nothing in it still has its (empty) message
            yield from self._close()

    # ------------------------------------------------------------------------------------------ items

    def _custom(self) -> bool:
        return self.call is not None and (self.call.custom or self.tools.is_custom(self.call.name))

    def _streams_input(self) -> bool:
        """A custom tool's call the model wrote as JSON (`{"input": ...}`) is sent whole, as its input text."""
        return self.call is not None and (not self._custom() or self.call.custom)

    def _open_reasoning(self) -> Iterator[str]:
        self.kind, self.item_id, self.text = "reasoning", new_id("rs"), ""
        item = ReasoningItem(type="reasoning", id=self.item_id, summary=[], status="in_progress")
        yield self.event("response.output_item.added", output_index=self.index, item=_dump(item))
        yield self.event("response.content_part.added", item_id=self.item_id, output_index=self.index, content_index=0,
                         part={"type": "reasoning_text", "text": ""})

    def _open_message(self) -> Iterator[str]:
        self.kind, self.item_id, self.text = "message", new_id("msg"), ""
        item = OutputMessage(id=self.item_id, status="in_progress", content=[])
        yield self.event("response.output_item.added", output_index=self.index, item=_dump(item))
        yield self.event("response.content_part.added", item_id=self.item_id, output_index=self.index, content_index=0,
                         part=_dump(OutputText(text="")))

    def _open_call(self, call: Call) -> Iterator[str]:
        self.kind, self.call, self.text = "call", call, ""
        opened = call_item(call, self.tools)
        self.item_id = opened.id
        empty = {"input": ""} if isinstance(opened, CustomToolCallOutput) else {"arguments": "", "status": "in_progress"}
        yield self.event("response.output_item.added", output_index=self.index, item=_dump(opened.model_copy(update=empty)))

    def _close(self) -> Iterator[str]:
        event, index, item_id = self.event, self.index, self.item_id
        if self.kind == "reasoning":
            done = reasoning_item(self.text, self.req, item_id)
            yield event("response.reasoning_text.done", item_id=item_id, output_index=index, content_index=0, text=self.text)
            yield event("response.content_part.done", item_id=item_id, output_index=index, content_index=0,
                        part={"type": "reasoning_text", "text": self.text})
            for n, part in enumerate(done.summary):
                yield event("response.reasoning_summary_part.added", item_id=item_id, output_index=index, summary_index=n,
                            part={"type": "summary_text", "text": ""})
                yield event("response.reasoning_summary_text.delta", item_id=item_id, output_index=index, summary_index=n,
                            delta=part.text)
                yield event("response.reasoning_summary_text.done", item_id=item_id, output_index=index, summary_index=n,
                            text=part.text)
                yield event("response.reasoning_summary_part.done", item_id=item_id, output_index=index, summary_index=n,
                            part=_dump(part))
        elif self.kind == "message":
            logprobs = self.logprobs if not any(isinstance(i, OutputMessage) for i in self.done) else []
            done = OutputMessage(id=item_id, status=self.status,
                                 content=[OutputText(text=self.text, logprobs=logprobs)])
            part = done.content[0]
            yield event("response.output_text.done", item_id=item_id, output_index=index, content_index=0, text=part.text,
                        logprobs=[_dump(lp) for lp in part.logprobs])
            yield event("response.content_part.done", item_id=item_id, output_index=index, content_index=0, part=_dump(part))
        elif self.kind == "call" and self.call is not None:
            done = call_item(Call(self.call.name, self.text, self.call.custom, self.call.id), self.tools)
            if isinstance(done, CustomToolCallOutput):
                if not self._streams_input():
                    yield event("response.custom_tool_call_input.delta", item_id=item_id, output_index=index, delta=done.input)
                yield event("response.custom_tool_call_input.done", item_id=item_id, output_index=index, input=done.input)
            else:
                yield event("response.function_call_arguments.done", item_id=item_id, output_index=index, name=done.name,
                            arguments=done.arguments)
        else:
            return
        yield event("response.output_item.done", output_index=index, item=_dump(done))
        self.done.append(done)
        self.kind, self.text, self.call = "none", "", None


def _failure_events(response: ResponseObject, exc: APIError, event: Events) -> str:
    """A failure mid-stream: an `error` event, then `response.failed`, so that the stream always ends with a
    terminal event."""
    response.status = "failed"
    response.error = ResponseError(code=exc.body.code or ("server_error" if exc.status >= 500 else "invalid_request"),
                                   message=exc.body.message)
    return (event("error", code=exc.body.code, message=exc.body.message, param=exc.body.param)
            + event("response.failed", response=_dump(response)))


@router.get("/responses/{response_id}", response_model=ResponseObject)
async def get_response(response_id: str, request: Request) -> JSONResponse:
    stored = await store_of(request).get(owner(request), response_id)
    if stored is None:
        raise not_found(f"No response with id '{response_id}'.", "response_id", "response_not_found")
    return JSONResponse(stored.response)


@router.get("/responses/{response_id}/input_items")
async def list_input_items(
    response_id: str, request: Request, limit: int = Query(20, ge=1, le=100),
    order: Literal["asc", "desc"] = "desc", after: str | None = None,
) -> InputItemList:
    stored = await store_of(request).get(owner(request), response_id)
    if stored is None:
        raise not_found(f"No response with id '{response_id}'.", "response_id", "response_not_found")
    items = ITEMS.validate_python(stored.input_items)
    if order == "desc":
        items.reverse()
    if after is not None:
        ids = [getattr(item, "id", None) for item in items]
        items = items[ids.index(after) + 1:] if after in ids else []
    page = items[:limit]
    return InputItemList(data=page, first_id=getattr(page[0], "id", None) if page else None,
                         last_id=getattr(page[-1], "id", None) if page else None, has_more=len(items) > limit)


@router.delete("/responses/{response_id}")
async def delete_response(response_id: str, request: Request) -> DeletedResponse:
    if not await store_of(request).delete(owner(request), response_id):
        raise not_found(f"No response with id '{response_id}'.", "response_id", "response_not_found")
    return DeletedResponse(id=response_id)
