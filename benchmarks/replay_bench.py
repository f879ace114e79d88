"""Replay recorded agent sessions: what the real Codex CLI and Claude Code sent (benchmarks/data/agent-sessions,
written by `record_agent_sessions.py`), as several users of them at once.

Each session replays one client's recorded requests in order, its next request as soon as the previous answer
ends (the bodies as the client sent them: its instructions, tools and history; the model's name and the answer's
length put in). Sessions alternate between the clients, and each session's first prompt gets its session number,
so sessions of one client share the client's long instructions and tools (as users of one agent do) and differ
from their first message on. Reported per contender: time to first output (text, thinking or a tool call's
arguments) p50 and p95, by turn too, and output tokens/s over the run (the servers' own usage counts).

    python benchmarks/replay_bench.py --model models/SmolLM2-135M-Instruct.Q4_1.gguf --threads 2 --sessions 8 \\
        --slots 4 --llama-server path/to/llama-server
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import statistics
import sys
import tempfile
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from agent_bench import concurrently  # sibling scripts, not a package
from serve_bench import percentile, serving

DATA = Path(__file__).resolve().parent / "data" / "agent-sessions"
FIRST_OUTPUT = {"response.output_text.delta", "response.reasoning_text.delta", "response.function_call_arguments.delta",
                "content_block_delta"}  # Responses and Messages events that carry generated text


@dataclass
class Session:
    name: str
    first_prompt: str
    requests: list[dict]  # {"path", "query", "body"}

    @classmethod
    def load(cls, path: Path) -> Session:
        data = json.loads(gzip.decompress(path.read_bytes()))
        return cls(path.name.removesuffix(".json.gz"), data["prompts"][0], data["requests"])

    def bodies(self, number: int, model: str, max_tokens: int,
               function_tools_only: bool = False) -> list[tuple[str, dict]]:
        """This session's requests as user `number` sends them; `function_tools_only`: without the tools that are not
        functions (Codex's `namespace` of multi-agent tools, `web_search`), which llama-server leaves out of the
        prompt, so that both servers read the same prompt."""
        out = []
        for request in self.requests:
            text = json.dumps(request["body"]).replace(self.first_prompt, f"{self.first_prompt} (session {number})")
            body = json.loads(text)
            if function_tools_only and "tools" in body:
                body["tools"] = [tool for tool in body["tools"] if tool.get("type", "function") == "function"]
            body["model"] = model
            body["stream"] = True
            body["max_output_tokens" if request["path"] == "/v1/responses" else "max_tokens"] = max_tokens
            query = f"?{request['query']}" if request["query"] else ""
            out.append((request["path"] + query, body))
        return out


@dataclass
class Outcome:
    label: str
    ttft: list[float] = field(default_factory=list)
    by_turn: dict[int, list[float]] = field(default_factory=dict)
    tokens: int = 0
    seconds: float = 0.0
    evaluated: int | None = None
    cached: int | None = None
    failures: list[str] = field(default_factory=list)
    # (user, request of the session, sent, first output, end: seconds from the replay's start; prompt tokens, of them
    # from the server's cache: None where it does not say): where each waited, and what it had to read
    timeline: list[tuple[int, int, float, float, float, int | None, int | None]] = field(default_factory=list)

    def row(self) -> str:
        return (f"| {self.label} | {statistics.median(self.ttft):.2f} | {percentile(self.ttft, 0.95):.2f} | "
                f"{self.tokens / self.seconds:.2f} | {'n/a' if self.evaluated is None else self.evaluated} | "
                f"{'n/a' if self.cached is None else self.cached} | {len(self.failures)} |")

    def turn_row(self) -> str:
        cells = [f"{statistics.median(v):.2f} / {percentile(v, 0.95):.2f}" for _, v in sorted(self.by_turn.items())]
        return f"| {self.label} | " + " | ".join(cells) + " |"


def output_tokens(event: dict) -> int | None:
    """The answer's length from a final event's usage (Responses: response.completed; Messages: message_delta)."""
    if event.get("type") == "response.completed":
        return (event["response"].get("usage") or {}).get("output_tokens")
    if event.get("type") == "message_delta":
        return (event.get("usage") or {}).get("output_tokens")
    return None


def prompt_tokens(event: dict) -> tuple[int, int | None] | None:
    """The prompt's length and its part read from the server's cache (Responses: response.completed; Messages:
    message_start, then message_delta when it says more, whose input tokens leave out those read from the cache)."""
    if event.get("type") == "response.completed":
        usage = event["response"].get("usage") or {}
        if "input_tokens" in usage:
            return usage["input_tokens"], (usage.get("input_tokens_details") or {}).get("cached_tokens")
    if event.get("type") in ("message_start", "message_delta"):
        usage = (event.get("message") or event).get("usage") or {}
        if "input_tokens" in usage:
            cached = usage.get("cache_read_input_tokens")
            return usage["input_tokens"] + (cached or 0), cached
    return None


async def replay_one(client: httpx.AsyncClient, url: str,
                     body: dict) -> tuple[int, float, tuple[int, int | None] | None]:
    """Send one recorded request; (output tokens, seconds to the first generated output, its prompt tokens and those
    from the cache, when the server says)."""
    started = time.perf_counter()
    first: float | None = None
    tokens = 0
    prompt = None
    async with client.stream("POST", url, json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{response.status_code}: {(await response.aread())[:300]!r}")
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            try:
                event = json.loads(line[6:])
            except ValueError:
                continue
            if first is None and event.get("type") in FIRST_OUTPUT:
                first = time.perf_counter() - started
            tokens = output_tokens(event) or tokens
            prompt = prompt_tokens(event) or prompt
    return tokens, first if first is not None else time.perf_counter() - started, prompt


async def replay(base: str, model: str, label: str, sessions: list[Session], count: int, max_tokens: int,
                 function_tools_only: bool) -> Outcome:
    outcome = Outcome(label)
    started = time.perf_counter()

    async def user(client: httpx.AsyncClient, number: int) -> None:
        session = sessions[number % len(sessions)]
        for turn, (path, body) in enumerate(session.bodies(number, model, max_tokens, function_tools_only)):
            sent = time.perf_counter() - started
            try:
                tokens, ttft, prompt = await replay_one(client, base + path, body)
            except (RuntimeError, httpx.HTTPError) as exc:
                outcome.failures.append(f"{session.name} #{number} request {turn}: {exc}")
                return
            outcome.timeline.append((number, turn, round(sent, 3), round(sent + ttft, 3),
                                     round(time.perf_counter() - started, 3), *(prompt or (None, None))))
            outcome.tokens += tokens
            outcome.ttft.append(ttft)
            outcome.by_turn.setdefault(turn, []).append(ttft)

    outcome.seconds, outcome.evaluated, outcome.cached = await concurrently(base, user, count, 3600)
    return outcome


def architecture(model: Path) -> str:
    """The GGUF's architecture name, the prefix of its metadata keys (llama, qwen2, ...)."""
    import gguf  # a dependency of the server (GGUF metadata); imported here, used by --same-work only

    return str(gguf.GGUFReader(model).fields["general.architecture"].contents())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sessions", type=int, default=8, help="users at once, alternating between the clients")
    parser.add_argument("--clients", nargs="+", default=["codex", "claude-code"], help="recorded sessions to replay")
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--context", type=int, default=24576, help="context per slot (Claude Code's prompt is ~21,000)")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--port", type=int, default=8767)
    parser.add_argument("--llama-server", type=Path, help="also measure llama.cpp's C++ server (path to llama-server)")
    parser.add_argument("--chat-template", type=Path, default=DATA.parent / "chatml-tools.jinja", help="the template "
                        "both servers use (SmolLM2's own renders no tools: llama-server would leave them out)")
    parser.add_argument("--skip-ours", action="store_true")
    parser.add_argument("--llama-server-fa-off", action="store_true", help="llama-server with -fa off (its default is "
                        "on; ours turns it off on a CPU for slots this long: the same attention kernels as ours)")
    parser.add_argument("--same-work", action="store_true", help="give both servers the same work: only the tools "
                        "that are functions (llama-server leaves the others out of the prompt), and llama-server's "
                        "slots past the model's training context, as ours allow (its --override-kv)")
    parser.add_argument("--baseline", type=Path, help="also replay on our server from another checkout (e.g. a git "
                        "worktree of an earlier commit): a before/after comparison in one run")
    parser.add_argument("--markdown", type=Path, help="also write the tables to this file")
    parser.add_argument("--timeline", type=Path, help="also write each request's user, number, times (sent, first "
                        "output, end; seconds from the replay's start), prompt tokens and those from the server's "
                        "cache as JSON, by contender")
    args = parser.parse_args()

    model = args.model.resolve()
    args.timeline = args.timeline and args.timeline.resolve()
    sessions = [Session.load(DATA / f"{name}.json.gz") for name in args.clients]
    base = f"http://127.0.0.1:{args.port}"
    workdir = tempfile.TemporaryDirectory()
    config = Path(workdir.name) / "models.yaml"
    template = args.chat_template.resolve()
    config.write_text(f"models:\n  - name: {model.name}\n    path: {model}\n"
                      f"    chat_template: {json.dumps(template.read_text())}\n")
    ours = [sys.executable, "-m", "local_llm_api", "serve", "--port", str(args.port)]
    ours_env = {"MODEL_DIR": str(model.parent), "DEFAULT_MODEL": model.name, "PRELOAD_MODEL": "true",
                "THREADS": str(args.threads), "CONTEXT_SIZE": str(args.context), "PARALLEL_SLOTS": str(args.slots),
                "LOG_LEVEL": "WARNING", "MODELS_CONFIG": str(config)}
    contenders = {} if args.skip_ours else {"ours": ("local-llm-api", ours, ours_env)}
    if args.baseline:  # its package shadows the installed one
        contenders["baseline"] = (f"local-llm-api at {args.baseline.name}", ours,
                                  {**ours_env, "PYTHONPATH": str(args.baseline.resolve())})
    if args.llama_server:
        past_training = ["--override-kv", f"{architecture(model)}.context_length=int:{args.context}"]
        contenders["llama.cpp"] = ("llama.cpp server, C++" + (", -fa off" if args.llama_server_fa_off else ""), [
            str(args.llama_server), "-m", str(model), "--port", str(args.port), "-t", str(args.threads), "-tb",
            str(args.threads), "-c", str(args.context * args.slots), "-np", str(args.slots), "--jinja",
            "--chat-template-file", str(template), *(past_training if args.same_work else []),
            *(["-fa", "off"] if args.llama_server_fa_off else [])], {})
    outcomes = []
    with workdir:
        os.chdir(workdir.name)  # keep any .env of the checkout out of the servers' settings
        for key, (label, command, env) in contenders.items():
            env = {**env, "DATA_DIR": f"{workdir.name}/data-{key}"} if command is ours else env
            with serving(command, env, f"{base}/health", label):
                # The health route answers before a preloaded model is ready: one short request waits for it, so that
                # the prompt-token counters are read from a loaded engine.
                httpx.post(f"{base}/v1/chat/completions", timeout=300, json={
                    "model": model.name, "messages": [{"role": "user", "content": "Warm up."}], "max_tokens": 2})
                outcome = asyncio.run(replay(base, model.name, label, sessions, args.sessions, args.max_tokens,
                                             args.same_work))
            outcomes.append(outcome)
            print(outcome.row(), *outcome.failures[:3], sep="\n", flush=True)
    recorded = ", ".join(f"{s.name} ({len(s.requests)} requests)" for s in sessions)
    lines = [f"model {model.name}, {args.threads} threads, {args.sessions} sessions of {recorded} on {args.slots} slots "
             f"of {args.context} tokens, {args.max_tokens}-token answers, template {template.name}"
             f"{', the same work for both servers (function tools only)' if args.same_work else ''}", "",
             "| server | time to first output p50 (s) | p95 (s) | output tokens/s | prompt tokens evaluated | "
             "prompt tokens from cache | failed sessions |", "| --- | --- | --- | --- | --- | --- | --- |",
             *(o.row() for o in outcomes), "", "Time to first output by request of the session, p50 / p95 (s):", "",
             "| server | " + " | ".join(f"request {i + 1}" for i in range(max(len(s.requests) for s in sessions))) + " |",
             "| --- |" + " --- |" * max(len(s.requests) for s in sessions), *(o.turn_row() for o in outcomes)]
    print("\n" + "\n".join(lines))
    if args.markdown:
        args.markdown.write_text("\n".join(lines) + "\n")
    if args.timeline:  # which requests waited, and behind which
        args.timeline.write_text(json.dumps({o.label: sorted(o.timeline) for o in outcomes}, indent=1))


if __name__ == "__main__":
    main()
