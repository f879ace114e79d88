"""Agent load: C clients, each holding a conversation of T turns behind the same long system prompt (a manual of
six tools, as agents send), at temperature 0 (what agents and evaluation harnesses send) or another temperature.
Each client sends its next turn (its history, the answer, a new question) as soon as the previous answer ends.

Reported per contender: time to first token p50/p95, aggregate completion tokens/s, the prompt tokens the
server evaluated versus read from its prefix cache (from /health), and, after the load, the time to first token
of a later turn sent alone (a new first question, a fixed answer and a second question behind the cached system
prompt: the least a later turn can take on that server, its new tokens read after the long context). Contenders run one after another:
our server with the default (prefix reuse for every request), our server with REPRODUCIBLE=true (seeded and
greedy requests read their whole prompt: the behaviour before prefix reuse became the default), and llama.cpp's
C++ server when `--llama-server` gives its path (built from the same llama.cpp as our engine; not part of this
repository).

    python benchmarks/agent_bench.py --model models/SmolLM2-135M-Instruct.Q4_1.gguf --threads 2 \
        --clients 8 --turns 4 --temperature 0
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_bench import engine_counters, one_request, percentile, serving  # a sibling script, not a package

TOOLS = ["search_files", "read_file", "edit_file", "run_tests", "open_url", "ask_user"]
QUESTIONS = ["Which tool reads a file?", "How do I run only the failing tests?", "Can I edit two files at once?",
             "What should I do when a URL times out?", "When should I ask the user?", "Summarise the rules."]


def system_prompt(words: int, agent: int | None = None) -> str:
    """A tool manual of about `words` words (a word is about 1.3 tokens for SmolLM2's tokenizer); with `agent`, one of
    its own (its first tokens differ from every other agent's, as different agents' or projects' prompts do)."""
    sections = []
    for i, tool in enumerate(TOOLS):
        schema = {"name": tool, "parameters": {"type": "object", "properties": {
            "path": {"type": "string", "description": f"the path {tool} works on"},
            "limit": {"type": "integer", "description": f"the most results {tool} returns"}}}}
        sections.append(f"## Tool {i + 1}: {tool}\n{json.dumps(schema)}\n")
    rule = ("Call a tool only when the answer needs it; give its arguments exactly as its schema says; "
            "report what it returned in one short sentence; never invent a result. ")
    text = ("" if agent is None else f"Project {agent}: agent number {agent} of the team. ") + \
        "You are a coding agent with these tools.\n" + "".join(sections)
    while len(text.split()) < words:
        text += rule
    return text


@dataclass
class Outcome:
    label: str
    ttft: list[float] = field(default_factory=list)
    tokens: int = 0
    seconds: float = 0.0
    evaluated: int | None = None  # None: the server does not report them
    cached: int | None = None
    alone: list[float] = field(default_factory=list)  # TTFT of later turns sent with nothing else running
    cold: float | None = None  # TTFT of one agent's prompt no request had, sent with nothing else running
    by_turn: dict[int, list[float]] = field(default_factory=dict)  # TTFT of each turn number (0: the first)
    # Each request: client, turn, and seconds from the load's start to its sending, first token and end.
    timeline: list[tuple[int, int, float, float, float]] = field(default_factory=list)

    def turn_row(self) -> str:
        cells = [f"{statistics.median(v):.2f} / {percentile(v, 0.95):.2f}" for _, v in sorted(self.by_turn.items())]
        return f"| {self.label} | " + " | ".join(cells) + " |"

    def row(self) -> str:
        ttft = sorted(self.ttft)
        p95 = ttft[min(len(ttft) - 1, round(0.95 * (len(ttft) - 1)))]
        alone = (f"{statistics.median(self.alone):.2f} ({min(self.alone):.2f}-{max(self.alone):.2f})"
                 if self.alone else "n/a")
        return (f"| {self.label} | {statistics.median(ttft):.2f} | {p95:.2f} | {self.tokens / self.seconds:.1f} | "
                f"{'n/a' if self.evaluated is None else self.evaluated} | {'n/a' if self.cached is None else self.cached} | "
                f"{alone} |")

    def bound_row(self, clients: int) -> str:
        """The least any scheduler could reach on this server, from how fast it reads one cold prompt (the quicker of
        `cold`, alone after the load, and the first turn to start in the load): each agent's first turn needs its
        whole prompt read, and a server reads prompts no faster than one at its own pace, so the j-th first turn to
        start waits at least j reads and the load lasts at least `clients` of them. The p95 is the k-th largest TTFT
        (k: the requests above its index), so at least the (clients - k + 1)-th first turn's bound."""
        assert self.cold is not None
        read = min(self.cold, min(self.by_turn[0]))
        above = len(self.ttft) - 1 - round(0.95 * (len(self.ttft) - 1))
        return (f"| {self.label} | {self.cold:.2f} / {min(self.by_turn[0]):.2f} | {(clients - above) * read:.2f} | "
                f"{max(self.by_turn[0]):.2f} | {clients * read:.2f} | {self.seconds:.2f} | "
                f"{self.tokens / (clients * read):.1f} |")


async def later_turns_alone(base: str, model: str, system: str, count: int, max_tokens: int) -> list[float]:
    """Time to first token of later turns sent one at a time: each has a first question no earlier request had,
    so only the system prompt is cached and the turn reads its own new tokens after it."""
    ttfts = []
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_keepalive_connections=0)) as client:
        for i in range(count):
            messages = [{"role": "system", "content": system},
                        {"role": "user", "content": f"Which tool should I use for task number {i + 40}?"},
                        {"role": "assistant", "content": "Answer 1: see the manual."},
                        {"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]
            body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True}
            ttfts.append((await one_request(client, f"{base}/v1/chat/completions", body))[1])
    return ttfts


async def cold_alone(base: str, model: str, system: str) -> float:
    """Time to first token of one agent's first turn whose prompt no request had, sent with nothing else running:
    the server's cold read of one prompt at its own pace."""
    body = {"model": model, "messages": [{"role": "system", "content": system},
                                         {"role": "user", "content": QUESTIONS[0]}],
            "max_tokens": 1, "temperature": 0, "stream": True}
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_keepalive_connections=0)) as client:
        return (await one_request(client, f"{base}/v1/chat/completions", body))[1]


async def agent_load(base: str, model: str, label: str, clients: int, turns: int, system: str | list[str],
                     temperature: float, max_tokens: int) -> Outcome:
    """`system`: the prompt all clients share, or one per client."""
    outcome = Outcome(label)
    started = time.perf_counter()

    async def conversation(client: httpx.AsyncClient, index: int) -> None:
        messages = [{"role": "system", "content": system if isinstance(system, str) else system[index % len(system)]}]
        for turn in range(turns):
            messages.append({"role": "user", "content": QUESTIONS[(index + turn) % len(QUESTIONS)]})
            body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": temperature,
                    "stream": True}
            sent = time.perf_counter() - started
            tokens, ttft = await one_request(client, f"{base}/v1/chat/completions", body)
            outcome.timeline.append((index, turn, sent, sent + ttft, time.perf_counter() - started))
            outcome.tokens += tokens
            outcome.ttft.append(ttft)
            outcome.by_turn.setdefault(turn, []).append(ttft)
            # The history keeps a fixed answer, so that every contender reads the same prompts.
            messages.append({"role": "assistant", "content": f"Answer {turn + 1}: see the manual."})

    outcome.seconds, outcome.evaluated, outcome.cached = await concurrently(base, conversation, clients, 1800)
    return outcome


async def concurrently(base: str, user: Callable[[httpx.AsyncClient, int], Awaitable[None]], count: int,
                       timeout: float) -> tuple[float, int | None, int | None]:
    """Run `count` users at once; (seconds, prompt tokens the server evaluated, prompt tokens from its cache), the
    token counts None where the server does not report them."""
    counters = ("prompt_tokens_total", "cached_prompt_tokens_total")  # in all, and read from the cache
    before = await engine_counters(base, *counters)
    # No kept-alive connections: llama-server closes idle ones on its side, and a reused one then fails.
    limits = httpx.Limits(max_connections=count + 4, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(user(client, i) for i in range(count)))
        seconds = time.perf_counter() - started
    after = await engine_counters(base, *counters)
    if before is None or after is None:
        return seconds, None, None
    return seconds, after[0] - before[0] - (after[1] - before[1]), after[1] - before[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--system-words", type=int, default=1500, help="about 2,000 tokens at the default")
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--context", type=int, default=4096, help="context per slot")
    parser.add_argument("--slots", type=int, help="slots on every contender (default: one per client); fewer than "
                        "clients makes conversations take turns in the slots")
    parser.add_argument("--distinct", action="store_true", help="a system prompt of its own for each client (different "
                        "agents or projects) instead of one shared prompt")
    parser.add_argument("--disk-off", action="store_true", help="also measure our server with PREFIX_CACHE_DISK=0")
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--llama-server", type=Path, help="also measure llama.cpp's C++ server (path to llama-server)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["default", "reproducible"])
    parser.add_argument("--baseline", type=Path, help="also measure our server from another checkout (e.g. a git "
                        "worktree of an earlier commit) with the default settings: a before/after comparison in one run")
    parser.add_argument("--llama-server-fa-off", action="store_true", help="also measure llama-server with -fa off "
                        "(its default is on: the same attention kernels as ours on a CPU, FLASH_ATTN=auto)")
    parser.add_argument("--variant", action="append", default=[], metavar="KEY=VALUE", help="also measure our server "
                        "with this setting (repeatable, one contender each): a trade measured side by side")
    parser.add_argument("--alone", type=int, default=6, help="later turns sent alone after the load")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    parser.add_argument("--timeline", type=Path, help="also write each request's client, turn and times (sent, "
                        "first token, end: seconds from the load's start) per contender to this JSON file")
    args = parser.parse_args()

    model = args.model.resolve()
    base = f"http://127.0.0.1:{args.port}"
    slots = args.slots or args.clients
    ours_env = {"MODEL_DIR": str(model.parent), "DEFAULT_MODEL": model.name, "PRELOAD_MODEL": "true",
                "THREADS": str(args.threads), "CONTEXT_SIZE": str(args.context), "PARALLEL_SLOTS": str(slots),
                "LOG_LEVEL": "WARNING"}
    ours = [sys.executable, "-m", "local_llm_api", "serve", "--port", str(args.port)]
    contenders = {
        "default": ("local-llm-api (prefix reuse for every request, the default)", ours, ours_env, f"{base}/health"),
        "reproducible": ("local-llm-api, REPRODUCIBLE=true", ours, {**ours_env, "REPRODUCIBLE": "true"}, f"{base}/health"),
    }
    if args.disk_off:
        contenders["disk-off"] = ("local-llm-api, PREFIX_CACHE_DISK=0", ours, {**ours_env, "PREFIX_CACHE_DISK": "0"},
                                  f"{base}/health")
    for variant in args.variant:
        key, _, value = variant.partition("=")
        contenders[variant] = (f"local-llm-api, {variant}", ours, {**ours_env, key: value}, f"{base}/health")
    if args.baseline:  # its package shadows the installed one
        contenders["baseline"] = (f"local-llm-api at {args.baseline.name}", ours,
                                  {**ours_env, "PYTHONPATH": str(args.baseline.resolve())}, f"{base}/health")
    if args.llama_server:
        contenders["llama.cpp"] = (f"llama.cpp server, C++ ({slots} slots)", [
            str(args.llama_server), "-m", str(model), "--port", str(args.port), "-t", str(args.threads), "-tb",
            str(args.threads), "-c", str(args.context * slots), "-np", str(slots)], {}, f"{base}/health")
        if args.llama_server_fa_off:
            label, command, env, health = contenders["llama.cpp"]
            contenders["llama.cpp-fa-off"] = (f"{label[:-1]}, -fa off)", [*command, "-fa", "off"], env, health)
    system: str | list[str] = ([system_prompt(args.system_words, agent) for agent in range(args.clients)]
                               if args.distinct else system_prompt(args.system_words))
    alone_system = system if isinstance(system, str) else system[0]
    outcomes = []
    with tempfile.TemporaryDirectory() as workdir:
        os.chdir(workdir)  # keep any .env of the checkout out of the servers' settings
        for key, (label, command, env, health) in contenders.items():
            if key in args.skip:
                continue
            env = {**env, "DATA_DIR": f"{workdir}/data-{key}"} if command is ours else env  # each its own disk tier
            with serving(command, env, health, label):
                asyncio.run(agent_load(base, model.name, label, 1, 1, "Warm up.", args.temperature, 2))
                outcome = asyncio.run(agent_load(base, model.name, label, args.clients, args.turns, system,
                                                 args.temperature, args.max_tokens))
                outcome.alone = asyncio.run(later_turns_alone(base, model.name, alone_system, args.alone, 4))
                if args.distinct:  # a prompt of an agent not in the load
                    outcome.cold = asyncio.run(cold_alone(base, model.name,
                                                          system_prompt(args.system_words, args.clients + 1)))
            outcomes.append(outcome)
            print(outcome.row(), flush=True)
    title = (f"model {model.name}, {args.threads} threads, {args.clients} clients x {args.turns} turns on {slots} slots, "
             f"{'a system prompt of its own for each client' if args.distinct else 'one system prompt'} of "
             f"{args.system_words} words, temperature {args.temperature}, {args.max_tokens}-token answers")
    lines = [title, "",
             "| server | TTFT p50 (s) | TTFT p95 (s) | tokens/s | prompt tokens evaluated | prompt tokens from cache | "
             "a later turn alone: TTFT (s) |",
             "| --- | --- | --- | --- | --- | --- | --- |", *(o.row() for o in outcomes), "",
             "Time to first token by turn, p50 / p95 (s):", "",
             "| server | " + " | ".join(f"turn {t + 1}" for t in range(args.turns)) + " |",
             "| --- |" + " --- |" * args.turns, *(o.turn_row() for o in outcomes)]
    if args.distinct:  # how near each server came to what its own read speed allows
        lines += ["", "The least its own cold read allows (s; tokens/s the most):", "",
                  "| server | one cold prompt: alone / first in the load | TTFT p95 at least | last first turn | "
                  "the load at least | the load took | tokens/s at most |",
                  "| --- | --- | --- | --- | --- | --- | --- |", *(o.bound_row(args.clients) for o in outcomes)]
    print("\n" + "\n".join(lines))
    if args.markdown:
        args.markdown.write_text("\n".join(lines) + "\n")
    if args.timeline:  # where each request waited: which turns went ahead of which
        args.timeline.write_text(json.dumps({o.label: sorted(o.timeline) for o in outcomes}, indent=1))


if __name__ == "__main__":
    main()
