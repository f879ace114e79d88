"""What agent clients send, on every API, through the real server and the bundled model: fields the server does not
know (accepted and named, or refused on a strict server), known fields of the wrong JSON type, thinking controls
for a model that does not think, answers longer than the context has room for (cut, not refused), prompts that do
not fit (refused in the words each client recognises), cache hits in the usage, streams that open at once and
stay alive while a long prompt is read, clients that leave mid-stream (499), and Claude Code's and Codex's own
request shapes (system turns in `messages`, deferred tools, outputs without a call id, model aliases).
The real clients themselves run in tests/test_agents.py."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from local_llm_api.core.request import Message, ToolCall
from local_llm_api.core.streaming import _kept_alive
from local_llm_api.dialects.anthropic.protocol import CountTokensRequest
from local_llm_api.dialects.anthropic.translate import chat_request as anthropic_chat
from local_llm_api.dialects.responses.protocol import CreateResponse
from local_llm_api.dialects.responses.translate import messages_of

from .conftest import MODEL, NO_END, Server, running_server, start_server, stop_server

USER = [{"role": "user", "content": "Hi"}]
CLAUDE_REGEX = re.compile(r"^prompt is too long: \d+ tokens > \d+ maximum$")  # Claude Code's, from its own code


@pytest.fixture(scope="module")
def agent_server(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("agent-requests"), model_dir, REPRODUCIBLE="false",
                          STREAM_KEEPALIVE_SECONDS="0.05", MODEL_ALIASES="claude-*=SmolLM2")
    yield server
    stop_server(server)


@pytest.fixture
def http(agent_server: Server) -> Iterator[httpx.Client]:
    with agent_server.client() as client:
        yield client


# Each route with a body that carries fields no API has, at the top and inside a part.
UNKNOWN = [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi", "x_note": 1}], "max_tokens": 2, "x_client": {}}),
    ("/v1/completions", {"prompt": "Hi", "max_tokens": 2, "x_client": 1}),
    ("/v1/embeddings", {"input": "Hi", "x_client": 1}),
    ("/v1/responses", {"input": [{"role": "user", "content": "Hi", "x_note": 1}], "max_output_tokens": 2, "x_client": 1}),
    ("/v1/messages", {"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi", "x_note": 1}]}],
                      "max_tokens": 2, "x_client": 1}),
    ("/api/chat", {"messages": [{"role": "user", "content": "Hi", "x_note": 1}], "stream": False,
                   "options": {"num_predict": 2}, "x_client": 1}),
    ("/tokenize", {"content": "Hi", "x_client": 1}),
]


@pytest.mark.parametrize(("path", "body"), UNKNOWN, ids=[p for p, _ in UNKNOWN])
def test_unknown_fields_are_accepted_and_named(http: httpx.Client, agent_server: Server, path: str, body: dict) -> None:
    answer = http.post(path, json={"model": "SmolLM2", **body})
    assert answer.status_code == 200, answer.text
    named = answer.headers["x-ignored-fields"]
    assert "x_client" in named and ("x_note" in named or "x_note" not in json.dumps(body)), named
    if "x_note" in json.dumps(body):
        assert re.search(r"(messages|input)\[\*\]\.(content\[\*\]\.)?x_note", named), named
    agent_server.wait_for_log(f"path={path} status=200")
    line = [line for line in agent_server.wait_for_log("ignored_fields=x_client").splitlines() if f"path={path} " in line][-1]
    assert "ignored_fields=" in line and "x_client" in line


def test_a_strict_server_refuses_unknown_fields_in_each_envelope(tmp_path: Path, model_dir: Path) -> None:
    with running_server(tmp_path, model_dir, wait_for_model=False, PRELOAD_MODEL="false", STRICT_REQUEST_FIELDS="true") as srv:
        with srv.client() as client:
            chat = client.post("/v1/chat/completions", json={"messages": USER, "x_client": 1})
            assert chat.status_code == 400 and chat.json()["error"]["param"] == "x_client", chat.text
            messages = client.post("/v1/messages", json={"max_tokens": 2, "messages": USER, "tools": [
                {"name": "t", "input_schema": {"type": "object"}, "x_new": True}]})
            assert messages.status_code == 400 and "tools[*].x_new" in messages.json()["error"]["message"], messages.text
            ollama = client.post("/api/chat", json={"model": "SmolLM2", "messages": USER, "x_client": 1})
            assert ollama.status_code == 400 and "x_client" in ollama.json()["error"], ollama.text


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/v1/chat/completions", {"messages": USER, "parallel_tool_calls": 0}, "parallel_tool_calls"),
    ("/v1/completions", {"prompt": "Hi", "echo": 1}, "echo"),
    ("/v1/responses", {"input": "Hi", "stream": "true"}, "stream"),
    ("/v1/messages", {"max_tokens": 2, "messages": [{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t", "content": "x", "is_error": 0}]}]}, "is_error"),
    ("/v1/chat/completions", {"messages": USER, "max_tokens": True}, "max_tokens"),
])
def test_known_fields_keep_strict_json_types(http: httpx.Client, path: str, body: dict, param: str) -> None:
    answer = http.post(path, json=body)
    assert answer.status_code == 400, answer.text
    assert param in answer.text


def test_thinking_asked_of_a_model_that_does_not_think_is_answered_without_it_and_said(http: httpx.Client) -> None:
    for path, body in [
        ("/v1/chat/completions", {"messages": USER, "max_tokens": 2, "reasoning_effort": "high"}),
        ("/v1/responses", {"input": "Hi", "max_output_tokens": 2, "reasoning": {"summary": "auto"},
                           "include": ["reasoning.encrypted_content"]}),
        ("/v1/messages", {"messages": USER, "max_tokens": 2, "thinking": {"type": "adaptive", "display": "omitted"},
                          "output_config": {"effort": "high"}}),
        ("/v1/messages", {"messages": USER, "max_tokens": 2, "thinking": {"type": "enabled", "budget_tokens": 1024}}),
    ]:
        answer = http.post(path, json=body)
        assert answer.status_code == 200, answer.text
        assert "does not think" in answer.headers["x-reasoning-ignored"]
    plain = http.post("/v1/messages", json={"messages": USER, "max_tokens": 2, "thinking": {"type": "disabled"}})
    assert plain.status_code == 200 and "x-reasoning-ignored" not in plain.headers


def long_prompt(http: httpx.Client, room: int) -> str:
    """A user text that leaves between `room` and `room` + 12 tokens of the 2,048-token context once rendered."""
    unit = "The quick brown fox jumps over the lazy dog. "

    def tokens(units: int) -> int:
        answer = http.post("/v1/messages/count_tokens", json={"messages": [{"role": "user", "content": unit * units}]})
        return answer.json()["input_tokens"]

    units = 250
    while tokens(units) > 2048 - room:
        units -= 1
    return unit * units


def test_answers_longer_than_the_context_allows_are_cut_and_cache_hits_are_reported(http: httpx.Client,
                                                                                    agent_server: Server) -> None:
    text = long_prompt(http, room=40)
    messages = [{"role": "user", "content": text}]
    # A cold read of ~2,000 tokens: the stream opens at once and keeps alive (STREAM_KEEPALIVE_SECONDS=0.05 here).
    lines: list[str] = []
    with http.stream("POST", "/v1/chat/completions", json={
            "messages": messages, "max_tokens": 100_000, "logit_bias": NO_END, "stream": True,
            "stream_options": {"include_usage": True}}) as response:
        assert response.status_code == 200
        lines = list(response.iter_lines())
    first_content = next(i for i, line in enumerate(lines) if '"content":"' in line and '"content":""' not in line)
    assert '"role":"assistant"' in lines[0]  # the role chunk first, before the prompt is read
    assert ": keep-alive" in lines[:first_content]
    chunks = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    usage = chunks[-1]["usage"]
    assert any(c["choices"] and c["choices"][0]["finish_reason"] == "length" for c in chunks)
    assert usage["prompt_tokens"] + usage["completion_tokens"] == 2048  # max_tokens cut to what the context has left

    # The same prompt on the other APIs: the same cut, and the prefix read from the cache.
    sdk = openai.OpenAI(base_url=f"{agent_server.url}/v1", api_key="x", max_retries=0)
    response = sdk.responses.create(model="SmolLM2", input=text, max_output_tokens=100_000)
    assert response.usage.input_tokens_details.cached_tokens >= response.usage.input_tokens - 2
    claude = anthropic.Anthropic(base_url=agent_server.url, api_key="x", max_retries=0)
    with claude.messages.stream(model="SmolLM2", max_tokens=32000, messages=messages) as stream:  # as Claude Code asks
        message = stream.get_final_message()
    assert message.stop_reason in ("max_tokens", "end_turn")
    assert message.usage.cache_read_input_tokens > 1900 and message.usage.input_tokens < 10, message.usage
    ollama = http.post("/api/chat", json={"model": "SmolLM2", "messages": messages, "stream": False,
                                          "options": {"num_predict": 100_000}}).json()
    assert ollama["prompt_eval_count"] < 10  # as Ollama counts: only the tokens it evaluated


def test_a_prompt_that_does_not_fit_is_refused_in_each_clients_words(http: httpx.Client) -> None:
    text = "The quick brown fox jumps over the lazy dog. " * 300
    chat = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": text}]})
    assert chat.status_code == 400 and chat.json()["error"]["param"] == "messages"
    assert "maximum context length" in chat.json()["error"]["message"]
    responses = http.post("/v1/responses", json={"input": text})
    assert responses.status_code == 400 and responses.json()["error"]["param"] == "input"
    assert responses.json()["error"]["code"] == "context_length_exceeded"
    for stream in (False, True):
        messages = http.post("/v1/messages", json={"max_tokens": 32000, "stream": stream,
                                                   "messages": [{"role": "user", "content": text}]})
        assert messages.status_code == 400
        assert CLAUDE_REGEX.match(messages.json()["error"]["message"]), messages.text
    ollama = http.post("/api/chat", json={"model": "SmolLM2", "messages": [{"role": "user", "content": text}],
                                          "truncate": False, "stream": False})
    assert ollama.status_code == 400 and "maximum context length" in ollama.json()["error"]


@pytest.mark.parametrize(("path", "body", "marker"), [
    ("/v1/chat/completions", {"messages": USER, "stream": True}, '"content":"'),
    ("/v1/responses", {"input": "Hi", "stream": True}, "response.output_text.delta"),
    ("/v1/messages", {"messages": USER, "stream": True}, "text_delta"),
    ("/api/chat", {"model": "SmolLM2", "messages": USER}, '"content":"'),
])
def test_a_client_that_leaves_mid_stream_is_logged_499(http: httpx.Client, agent_server: Server, path: str, body: dict,
                                                         marker: str) -> None:
    long = {"max_tokens": 400, "logit_bias": NO_END} if not path.startswith("/api") else {"options": {"num_predict": 400}}
    if path == "/v1/responses":
        long = {"max_output_tokens": 400}
    with http.stream("POST", path, json={**body, **long}) as response:
        for line in response.iter_lines():
            if marker in line and '"content":""' not in line:
                break  # leave after the first text
    agent_server.wait_for_log(f"path={path} status=499", timeout=30)


def test_keep_alive_frames_fill_silences_only() -> None:
    async def slow() -> AsyncIterator[str]:
        yield "first"
        await asyncio.sleep(0.35)
        yield "second"

    async def collect() -> list[str]:
        return [frame async for frame in _kept_alive(slow(), "ping", 0.1)]

    frames = asyncio.run(collect())
    assert frames[0] == "first" and frames[-1] == "second" and 2 <= frames.count("ping") <= 4


# ---------------------------------------------------------------- Claude Code's request shapes


def count(http: httpx.Client, **body: object) -> int:
    answer = http.post("/v1/messages/count_tokens", json={"messages": USER, **body})
    assert answer.status_code == 200, answer.text
    return answer.json()["input_tokens"]


TOOL = {"name": "lookup", "description": "Find a word in the dictionary", "input_schema": {
    "type": "object", "properties": {"word": {"type": "string"}}}}


def test_deferred_tools_wait_for_a_tool_reference(http: httpx.Client) -> None:
    search = {"name": "ToolSearch", "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}}}
    without = count(http, tools=[search])
    deferred = {**TOOL, "defer_loading": True}
    assert count(http, tools=[search, deferred]) == without  # not shown to the model
    history = [*USER, {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "ToolSearch", "input": {"query": "x"}}]},
               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1",
                                             "content": [{"type": "tool_reference", "tool_name": "lookup"}]}]}]
    referenced = count(http, tools=[search, deferred], messages=history)
    assert referenced == count(http, tools=[search, TOOL], messages=history)  # loaded once referenced


def test_system_turns_in_messages_are_rendered_where_they_stand_and_change_the_tools(http: httpx.Client) -> None:
    turns = [*USER, {"role": "system", "content": [{"type": "text", "text": "Answer in French.", "cache_control": {"type": "ephemeral"}}]}]
    answer = http.post("/v1/messages", json={"max_tokens": 2, "messages": turns})
    assert answer.status_code == 200, answer.text
    request = CountTokensRequest.model_validate({"messages": [*turns, {"role": "system", "content": [
        {"type": "tool_addition", "tool": {"type": "tool_definition", "definition": TOOL}}]}], "tools": []})
    core = anthropic_chat(request)
    assert [m.role for m in core.messages] == ["user", "system"] and core.messages[1].content == "Answer in French."
    assert [t.name for t in core.tools] == ["lookup"]
    removed = CountTokensRequest.model_validate({"messages": [*USER, {"role": "system", "content": [
        {"type": "tool_removal", "tool": {"type": "tool_reference", "name": "lookup"}}]}], "tools": [TOOL]})
    assert anthropic_chat(removed).tools == []


def test_thinking_blocks_sent_back_reach_the_template(http: httpx.Client) -> None:
    history = [*USER, {"role": "assistant", "content": [{"type": "thinking", "thinking": "They greet me.", "signature": "s"},
                                                        {"type": "redacted_thinking", "data": "abc"}, {"type": "text", "text": "Hello"}]},
               {"role": "user", "content": "And?"}]
    core = anthropic_chat(CountTokensRequest.model_validate({"messages": history}))
    assert core.messages[1].reasoning == "They greet me." and core.messages[1].content == "Hello"
    assert http.post("/v1/messages", json={"max_tokens": 2, "messages": history}).status_code == 200


def test_model_aliases_and_the_connectivity_check(http: httpx.Client) -> None:
    answer = http.post("/v1/messages", json={"model": "claude-haiku-4-5-20251001", "max_tokens": 2, "messages": USER})
    assert answer.status_code == 200 and answer.json()["model"] == MODEL, answer.text
    missing = http.post("/v1/messages", json={"model": "gpt-9", "max_tokens": 2, "messages": USER})
    assert missing.status_code == 404
    assert http.head("/api/hello").status_code == 200
    card = http.get("/v1/models").json()["data"][0]
    assert card["context_length"] == 2048
    assert http.get("/models").json()["data"][0]["context_size"] == 2048


# ---------------------------------------------------------------- Codex's request shapes


def test_a_function_call_output_without_call_id_answers_the_call_of_its_name() -> None:
    request = CreateResponse.model_validate({"input": [
        {"type": "function_call", "call_id": "c1", "name": "update_goal", "namespace": "goals", "arguments": "{}"},
        {"type": "function_call", "call_id": "c2", "name": "other", "arguments": "{}"},
        {"type": "function_call_output", "name": "update_goal", "namespace": "goals", "output": "done"},
        {"type": "function_call_output", "name": "nothing_called", "output": "plain"},
    ]})
    messages = messages_of(list(request.input or []))
    assert messages[0].tool_calls == (ToolCall("c1", "goals.update_goal", "{}"), ToolCall("c2", "other", "{}"))
    assert messages[1] == Message("tool", "done", tool_call_id="c1")
    assert messages[2] == Message("tool", "plain", tool_call_id=None)


def test_prompt_cache_key_routes_a_session_to_one_replica() -> None:
    pytest.importorskip("ray")
    from local_llm_api.ray_serve.gateway import routing_hints

    first = {"model": "m", "prompt_cache_key": "session-1", "input": [{"role": "user", "content": "a"}]}
    later = {**first, "input": [{"role": "user", "content": "something else entirely"}]}
    other = {**first, "prompt_cache_key": "session-2"}
    key = routing_hints(json.dumps(first).encode(), "d")[1]
    assert key == routing_hints(json.dumps(later).encode(), "d")[1] != routing_hints(json.dumps(other).encode(), "d")[1]
    import zstandard

    assert routing_hints(zstandard.ZstdCompressor().compress(json.dumps(first).encode()), "d", "zstd")[1] == key


def test_streams_wait_for_no_token_to_open(http: httpx.Client) -> None:
    """The first event of each SSE dialect comes before any text (here it is also quick: a short prompt)."""
    started = time.perf_counter()
    with http.stream("POST", "/v1/messages", json={"messages": USER, "max_tokens": 3, "stream": True}) as response:
        first = next(line for line in response.iter_lines() if line.startswith("event:"))
        assert first == "event: message_start" and time.perf_counter() - started < 30
