"""A failure in the middle of a stream (the HTTP status is already sent) ends each dialect's stream with its own
terminal error events, and the model is released. The generator below stands in for an engine that fails after
its first token: this tests the dialects' stream endings, not the engines."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from local_llm_api.errors import APIError
from local_llm_api.core.streaming import sse_response
from local_llm_api.dialects.anthropic.errors import error_event as anthropic_error_event
from local_llm_api.dialects.openai.errors import DONE
from local_llm_api.dialects.openai.errors import error_event as openai_error_event
from local_llm_api.dialects.responses.protocol import ResponseObject
from local_llm_api.dialects.responses.routes import Events, _failure_events

from .conftest import SpecValidator


def body_of(events: AsyncIterator[str], error_event, done: str | None = None) -> tuple[str, list[str]]:  # noqa: ANN001
    closed: list[str] = []

    async def on_close() -> None:
        closed.append("released")

    async def run() -> str:
        response = sse_response(events, on_close, error_event, done)
        return "".join([chunk async for chunk in response.body_iterator])

    return asyncio.run(run()), closed


def failing(first: str, error: Exception) -> AsyncIterator[str]:
    async def events() -> AsyncIterator[str]:
        yield first
        raise error

    return events()


def test_responses_stream_ends_with_error_and_failed(spec: SpecValidator) -> None:
    response, event = ResponseObject(id="resp_1", status="in_progress", model="m"), Events()
    first = event("response.created", response=response.model_dump(mode="json"))
    body, closed = body_of(failing(first, RuntimeError("engine died")), lambda exc: _failure_events(response, exc, event))
    frames = [json.loads(line[len("data: "):]) for line in body.splitlines() if line.startswith("data: ")]
    assert [f["type"] for f in frames] == ["response.created", "error", "response.failed"]
    assert [f["sequence_number"] for f in frames] == [0, 1, 2]
    spec.validate(frames[1], "ResponseErrorEvent")
    spec.validate(frames[2], "ResponseFailedEvent")
    assert frames[2]["response"]["status"] == "failed" and "RuntimeError" in frames[2]["response"]["error"]["message"]
    assert closed == ["released"]


def test_anthropic_stream_ends_with_an_error_event() -> None:
    error = APIError(429, "The server is busy", type="requests")
    body, closed = body_of(failing("event: ping\ndata: {\"type\":\"ping\"}\n\n", error), anthropic_error_event)
    assert body.endswith('event: error\ndata: {"type":"error","error":{"type":"rate_limit_error","message":"The server is busy"}}\n\n')
    assert closed == ["released"]


def test_openai_stream_ends_with_an_error_then_done() -> None:
    body, closed = body_of(failing("data: {}\n\n", ValueError("x")), openai_error_event, DONE)
    frames = [line for line in body.splitlines() if line.startswith("data: ")]
    assert json.loads(frames[1][len("data: "):])["error"]["type"] == "server_error" and frames[2] == "data: [DONE]"
    assert closed == ["released"]
