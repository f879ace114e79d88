"""The real agent clients against the real server: Codex CLI, Claude Code, opencode and aider, each configured by
its recipe on docs/clients.md (tests/agents/clients.py), through a recording proxy that shows their own requests when a test
fails.

For each client: a one-shot answer; a second turn in the client's own session, read mostly from the prefix cache
(and said so in the usage); and a tool round trip through the client's own tool runner (Codex runs a shell
command, Claude Code and opencode read a file, aider edits one). The model is the scripted one
(tests/agents/scripted_model.py), which writes the call for certain and reads these long prompts in seconds.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .agents import clients
from .agents.recording_proxy import Exchange, RecordingProxy
from .agents.scripted_model import Script, build, tool_call
from .conftest import Server, start_server, stop_server

MARKER = f"marker-{uuid.uuid4().hex[:8]}"  # what the tool's result holds, so that it can be found in the next request


def scripts(root: Path) -> dict[str, Script]:
    def marker_file(name: str) -> str:
        return str(root / name / "work" / "marker.txt")

    return {
        "codex": Script(call=tool_call("exec_command", cmd="cat marker.txt")),
        "claude": Script(call=tool_call("Read", file_path=marker_file("claude"))),
        "opencode": Script(call=tool_call("read", filePath=marker_file("opencode"))),
        # aider's tool is its edit format: with an unknown model, a whole file under its name.
        "aider": Script(call="notes.txt\n```\nedited by the scripted model\n```"),
    }


@dataclass
class Agents:
    server: Server
    proxy: RecordingProxy
    root: Path

    def client(self, kind: type[clients.Client], name: str) -> clients.Client:
        workdir = self.root / name / "work"
        return kind(self.root / name / "home", workdir, self.proxy.url, f"{name}-agent")

    def exchanges(self, model: str, path: str) -> list[Exchange]:
        return [x for x in self.proxy.find(path) if isinstance(x.body, dict) and x.body.get("model") == model]


@pytest.fixture(scope="module")
def agents(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agents]:
    root = tmp_path_factory.mktemp("agents")
    models = root / "models"
    models.mkdir()
    for name, script in scripts(root).items():
        (root / name / "work").mkdir(parents=True)
        build(models / f"{name}-agent.gguf", script)
    # The recipes' server: CONTEXT_SIZE=32768 PARALLEL_SLOTS=2; and prefix reuse for every request, the default.
    server = start_server(root, models, wait_for_model=False, CONTEXT_SIZE="32768", PARALLEL_SLOTS="2",
                          REPRODUCIBLE="false", PRELOAD_MODEL="false", DEFAULT_MODEL="")
    proxy = RecordingProxy(server.url, root / "requests.jsonl").start()
    try:
        yield Agents(server, proxy, root)
    finally:
        proxy.stop()
        stop_server(server)


def place_marker(client: clients.Client) -> None:
    (client.workdir / "marker.txt").write_text(MARKER + "\n")


def answered(agents: Agents, model: str, path: str) -> list[Exchange]:
    found = agents.exchanges(model, path)
    assert found, agents.proxy.report()
    assert all(x.status == 200 for x in found), agents.proxy.report(path)
    return found


def final_event(exchange: Exchange, kind: str) -> dict:
    return next(e for e in reversed(exchange.events()) if e.get("type") == kind)


# ---------------------------------------------------------------- Codex CLI (Responses API)


def test_codex_answers_and_goes_on_in_its_session(agents: Agents) -> None:
    codex = agents.client(clients.Codex, "codex")
    first = codex.ask("Say hello in one word")
    assert first.returncode == 0 and "Hello from the scripted model." in first.stdout, f"{first}\n{agents.proxy.report()}"
    second = codex.ask("And once more", again=True)
    assert second.returncode == 0 and "Hello from the scripted model." in second.stdout, f"{second}\n{agents.proxy.report()}"
    turns = answered(agents, "codex-agent", "/v1/responses")
    last = turns[-1]
    assert last.body["stream"] is True and "client_metadata" in last.body and last.body["store"] is False
    assert "And once more" in json.dumps(last.body["input"]) and "Say hello in one word" in json.dumps(last.body["input"])
    usage = final_event(last, "response.completed")["response"]["usage"]
    # The first turn's ~9,000 tokens come from the cache.
    assert usage["input_tokens_details"]["cached_tokens"] > 0.9 * usage["input_tokens"] > 5000, usage


def test_codex_runs_a_shell_command_and_answers_with_its_output(agents: Agents) -> None:
    codex = agents.client(clients.Codex, "codex")
    place_marker(codex)
    run = codex.ask("Please use-the-tool to read marker.txt")
    assert run.returncode == 0 and "The tool ran." in run.stdout, f"{run}\n{agents.proxy.report()}"
    turns = answered(agents, "codex-agent", "/v1/responses")
    call = next(item for e in turns[-2].events() if e.get("type") == "response.output_item.done" for item in [e["item"]]
                if item["type"] == "function_call")
    assert call["name"] == "exec_command" and json.loads(call["arguments"]) == {"cmd": "cat marker.txt"}
    outputs = [item for item in turns[-1].body["input"] if item.get("type") == "function_call_output"]
    assert outputs and outputs[-1]["call_id"] == call["call_id"] and MARKER in json.dumps(outputs[-1]["output"])


# ---------------------------------------------------------------- Claude Code (Messages API)


def claude_result(run: clients.Run) -> dict:
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_claude_code_answers_and_goes_on_in_its_session(agents: Agents) -> None:
    claude = agents.client(clients.ClaudeCode, "claude")
    first = claude.ask("Say hello in one word")
    assert first.returncode == 0 and claude_result(first)["result"] == "Hello from the scripted model.", \
        f"{first}\n{agents.proxy.report()}"
    second = claude.ask("And once more", again=True)
    result = claude_result(second)
    assert second.returncode == 0 and result["result"] == "Hello from the scripted model.", f"{second}\n{agents.proxy.report()}"
    # What Claude Code reports from the server's usage: the session's earlier tokens read from the cache.
    assert result["usage"]["cache_read_input_tokens"] > 5000, result["usage"]
    last = answered(agents, "claude-agent", "/v1/messages")[-1]
    assert last.query == "beta=true" and last.body["stream"] is True and "thinking" in last.body
    assert "Say hello in one word" in json.dumps(last.body["messages"])
    assert last.response_headers.get("x-reasoning-ignored", "").startswith("thinking")


def test_claude_code_reads_a_file_and_answers(agents: Agents) -> None:
    claude = agents.client(clients.ClaudeCode, "claude")
    place_marker(claude)
    run = claude.ask("Please use-the-tool to read marker.txt")
    assert run.returncode == 0 and claude_result(run)["result"] == "The tool ran.", f"{run}\n{agents.proxy.report()}"
    turns = answered(agents, "claude-agent", "/v1/messages")
    results = [block for message in turns[-1].body["messages"] if isinstance(message["content"], list)
               for block in message["content"] if block.get("type") == "tool_result"]
    uses = [block for message in turns[-1].body["messages"] if message["role"] == "assistant"
            for block in message["content"] if block.get("type") == "tool_use"]
    assert uses[-1]["name"] == "Read" and results[-1]["tool_use_id"] == uses[-1]["id"]
    assert MARKER in json.dumps(results[-1]["content"])


# ---------------------------------------------------------------- opencode (chat completions)


def test_opencode_answers_and_goes_on_in_its_session(agents: Agents) -> None:
    opencode = agents.client(clients.OpenCode, "opencode")
    first = opencode.ask("Say hello in one word")
    assert first.returncode == 0 and "Hello from the scripted model." in first.stdout, f"{first}\n{agents.proxy.report()}"
    second = opencode.ask("And once more", again=True)
    assert second.returncode == 0 and "Hello from the scripted model." in second.stdout, f"{second}\n{agents.proxy.report()}"
    last = max(answered(agents, "opencode-agent", "/v1/chat/completions"), key=lambda x: len(x.body["messages"]))
    assert "Say hello in one word" in json.dumps(last.body["messages"]) and last.body.get("tools")
    usage = [e["usage"] for e in last.events() if e.get("usage")][-1]
    assert usage["prompt_tokens_details"]["cached_tokens"] > 0.9 * usage["prompt_tokens"], usage


def test_opencode_reads_a_file_and_answers(agents: Agents) -> None:
    opencode = agents.client(clients.OpenCode, "opencode")
    place_marker(opencode)
    run = opencode.ask("Please use-the-tool to read marker.txt")
    assert run.returncode == 0 and "The tool ran." in run.stdout, f"{run}\n{agents.proxy.report()}"
    last = answered(agents, "opencode-agent", "/v1/chat/completions")[-1]
    calls = [c for m in last.body["messages"] if m["role"] == "assistant" for c in m.get("tool_calls") or []]
    results = [m for m in last.body["messages"] if m["role"] == "tool"]
    assert calls[-1]["function"]["name"] == "read" and results[-1]["tool_call_id"] == calls[-1]["id"]
    assert MARKER in json.dumps(results[-1]["content"])


# ---------------------------------------------------------------- aider (chat completions)


def test_aider_answers_and_goes_on_with_its_history(agents: Agents) -> None:
    aider = agents.client(clients.Aider, "aider")
    first = aider.ask("Say hello in one word")
    assert first.returncode == 0 and "Hello from the scripted model." in first.stdout, f"{first}\n{agents.proxy.report()}"
    second = aider.ask("And once more", again=True)
    assert second.returncode == 0 and "Hello from the scripted model." in second.stdout, f"{second}\n{agents.proxy.report()}"
    last = answered(agents, "aider-agent", "/v1/chat/completions")[-1]
    assert "Say hello in one word" in json.dumps(last.body["messages"])
    usage = [e["usage"] for e in last.events() if e.get("usage")]
    if usage:  # litellm asks for the usage chunk
        assert usage[-1]["prompt_tokens_details"]["cached_tokens"] > 0, usage


def test_aider_edits_a_file(agents: Agents) -> None:
    aider = agents.client(clients.Aider, "aider")
    notes = aider.workdir / "notes.txt"
    notes.write_text("hello\n")
    args = aider.command("Please use-the-tool to change notes.txt", again=False) + [str(notes)]
    run = clients.subprocess.run(args, cwd=aider.workdir, env=aider.env(), stdin=clients.subprocess.DEVNULL,
                                 capture_output=True, text=True, timeout=clients.TIMEOUT)
    assert run.returncode == 0, f"{run.stdout[-3000:]}\n{run.stderr[-3000:]}\n{agents.proxy.report()}"
    assert notes.read_text() == "edited by the scripted model\n", run.stdout[-3000:]
