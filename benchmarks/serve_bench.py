"""Side-by-side serving benchmark: our server, llama-cpp-python's own server, and the library called directly.

Throughput: each contender gets the same model, threads and context, and the same closed-loop streaming
load: C clients, each sending its next request as soon as the previous answer ends; every answer is exactly
MAX_TOKENS tokens (end-of-generation tokens are biased away). Reported: aggregate completion tokens/s, time to
first token p50/p95 over all requests, then apart for the first wave (each client's first request: they arrive
together) and for the steady stream (the later ones, which arrive while the others stream), and the server's
peak resident memory. Contenders run one after another, never together.

Prefix cache: a 10-turn chat behind a long system prompt, one client; the time to first token of each turn,
on our server with PREFIX_CACHE on and off, and on llama-cpp-python's server.

    pip install -e ".[bench]"
    python benchmarks/serve_bench.py --model models/SmolLM2-135M-Instruct.Q4_1.gguf --threads 2 \
        --markdown docs/benchmarks-latest.md --plot docs/benchmarks.png
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

PROMPT = [{"role": "user", "content": "Write a long story about a dragon who learns to cook."}]
NO_END_TOKENS = (0, 2, 4)  # SmolLM2's end-of-generation tokens; for other models pass --no-end-tokens


@dataclass
class Result:
    name: str
    concurrency: int
    tokens: int = 0
    seconds: float = 0.0
    ttft: list[float] = field(default_factory=list)
    wave: list[float] = field(default_factory=list)  # each client's first request's TTFT (they arrive together)
    # (client, request, sent, first token, end), seconds from the load's start: where each request waited
    timeline: list[tuple[int, int, float, float, float]] = field(default_factory=list)
    peak_rss_mb: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    @property
    def steady(self) -> list[float]:
        """The TTFTs of the later requests, which arrive one at a time while the others stream."""
        rest = list(self.ttft)
        for value in self.wave:
            rest.remove(value)
        return rest

    def row(self) -> str:
        wave, steady = (f"{statistics.median(v):.2f}" if v else "-" for v in (self.wave, self.steady))
        return (f"| {self.name} | {self.concurrency} | {self.tokens_per_second:.1f} | {statistics.median(self.ttft):.2f} "
                f"| {percentile(self.ttft, 0.95):.2f} | {wave} | {steady} "
                f"| {self.peak_rss_mb:.0f} |")


TABLE_HEAD = ["| contender | concurrency | tokens/s (aggregate) | TTFT p50 (s) | TTFT p95 (s) | first wave p50 (s) "
              "| steady p50 (s) | peak RSS (MB) |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]


def percentile(values: list[float], q: float) -> float:
    return sorted(values)[max(0, round(q * len(values)) - 1)]


class PeakMemory:
    """Polls a process tree's resident memory in a thread."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                rss = self.process.memory_info().rss + sum(c.memory_info().rss for c in self.process.children(recursive=True))
                self.peak = max(self.peak, rss)
            except psutil.Error:
                pass
            time.sleep(0.05)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def spread_table(results: list[Result]) -> list[str]:
    """Throughput over the repeated runs of each contender and load: median, lowest and highest."""
    rows = ["| contender | concurrency | runs | tokens/s median | lowest | highest |", "| --- | --- | --- | --- | --- | --- |"]
    for key in dict.fromkeys((r.name, r.concurrency) for r in results):
        rates = [r.tokens_per_second for r in results if (r.name, r.concurrency) == key]
        rows.append(f"| {key[0]} | {key[1]} | {len(rates)} | {statistics.median(rates):.1f} | {min(rates):.1f} | {max(rates):.1f} |")
    return rows


async def one_request(client: httpx.AsyncClient, url: str, body: dict) -> tuple[int, float]:
    """Stream one chat completion; return (completion tokens, time to first token). Tokens are the server's own
    count (`usage`, asked for with stream_options); a server that sends none is counted by content chunks."""
    started = time.perf_counter()
    first: float | None = None
    chunks, usage = 0, None
    async with client.stream("POST", url, json={**body, "stream_options": {"include_usage": True}}) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]["completion_tokens"]
            for choice in chunk.get("choices", []):
                if choice.get("delta", {}).get("content"):
                    chunks += 1
                    if first is None:
                        first = time.perf_counter() - started
    return usage if usage is not None else chunks, first if first is not None else time.perf_counter() - started


async def closed_loop(base_url: str, model: str, concurrency: int, requests_per_client: int, max_tokens: int, name: str,
                      pid: int, logit_bias: bool = True) -> Result:
    body: dict[str, object] = {"model": model, "messages": PROMPT, "max_tokens": max_tokens, "stream": True, "temperature": 0.7}
    if logit_bias:  # some servers refuse it (transformers serve answers 500)
        body["logit_bias"] = {str(t): -100 for t in NO_END_TOKENS}
    result = Result(name, concurrency)

    async def client_loop(client: httpx.AsyncClient, number: int) -> None:
        for i in range(requests_per_client):
            sent = time.perf_counter() - started
            tokens, ttft = await one_request(client, f"{base_url}/v1/chat/completions", body)
            result.tokens += tokens
            result.ttft.append(ttft)
            result.timeline.append((number, i, round(sent, 3), round(sent + ttft, 3),
                                    round(time.perf_counter() - started, 3)))
            if i == 0:
                result.wave.append(ttft)

    # A connection per request: llama.cpp's server closes idle keep-alive connections, and a request sent on one
    # as it closes fails (the same for every contender).
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        await one_request(client, f"{base_url}/v1/chat/completions", {**body, "max_tokens": 4})  # warm-up
        with PeakMemory(pid) as memory:
            started = time.perf_counter()
            await asyncio.gather(*(client_loop(client, n) for n in range(concurrency)))
            result.seconds = time.perf_counter() - started
        result.peak_rss_mb = memory.peak / 2**20
    return result


@contextmanager
def serving(command: list[str], env: dict[str, str], health_url: str, label: str) -> Iterator[subprocess.Popen[bytes]]:
    """A server for the block's length; when the block fails, the server's last output is printed."""
    with tempfile.TemporaryDirectory() as logs:
        log = Path(logs) / "server.log"
        process = start(command, env, health_url, log)
        try:
            yield process
        except Exception:
            print(f"{label} failed; its last output:\n{log.read_text(errors='replace')[-3000:]}", file=sys.stderr)
            raise
        finally:
            process.terminate()
            process.wait(timeout=30)


async def engine_counters(base: str, *names: str) -> tuple[int, ...] | None:
    """The named counters of the server's first engine in /health; None where the server does not report them."""
    async with httpx.AsyncClient(timeout=10) as client:
        engines = (await client.get(f"{base}/health")).json().get("engines") or {}
    stats = next(iter(engines.values()), {})
    return tuple(stats[name] for name in names) if all(name in stats for name in names) else None


def start(command: list[str], env: dict[str, str], health_url: str, log: Path | None = None) -> subprocess.Popen[bytes]:
    """Start a server and wait for its health route; its output goes to `log` when given."""
    output = log.open("wb") if log else subprocess.DEVNULL
    process = subprocess.Popen(command, env={**os.environ, **env}, stdout=output, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(health_url, timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.3)
    process.kill()
    raise RuntimeError(f"{command[0]} did not start")


def direct_library(model: Path, threads: int, requests: int, max_tokens: int) -> Result:
    """The library alone, no HTTP: the ceiling for one stream."""
    from llama_cpp import Llama

    llm = Llama(str(model), n_ctx=4096, n_threads=threads, n_threads_batch=threads, verbose=False)
    bias = {t: -100.0 for t in NO_END_TOKENS}
    result = Result("llama-cpp-python library, direct", 1)
    llm.create_chat_completion(messages=PROMPT, max_tokens=4)
    with PeakMemory(os.getpid()) as memory:
        started = time.perf_counter()
        for _ in range(requests):
            t0, first = time.perf_counter(), None
            for chunk in llm.create_chat_completion(messages=PROMPT, max_tokens=max_tokens, stream=True, logit_bias=bias, temperature=0.7):
                if chunk["choices"][0]["delta"].get("content"):
                    result.tokens += 1
                    first = first or time.perf_counter() - t0
            result.ttft.append(first or 0.0)
        result.seconds = time.perf_counter() - started
    result.peak_rss_mb = memory.peak / 2**20
    llm.close()
    return result


SYSTEM = ("You are the support assistant of a hardware store. Answer briefly and politely. " * 40).strip()
QUESTIONS = ["Do you sell hammers?", "What about nails?", "Which size for a picture frame?", "Do you deliver?",
             "How long does delivery take?", "Can I return an item?", "Do you have paint?", "Which brush for it?",
             "Are you open on Sunday?", "Thanks, what is your address?"]


async def prefix_chat(base_url: str, model: str) -> list[float]:
    """Time to first token of each turn of one growing conversation."""
    messages: list[dict] = [{"role": "system", "content": SYSTEM}]
    ttfts = []
    async with httpx.AsyncClient(timeout=600) as client:
        for question in QUESTIONS:
            messages.append({"role": "user", "content": question})
            body = {"model": model, "messages": messages, "max_tokens": 24, "stream": True, "temperature": 0.7}
            started, first, answer = time.perf_counter(), None, ""
            async with client.stream("POST", f"{base_url}/v1/chat/completions", json=body) as response:
                response.raise_for_status()
                async for line in response.aiter_lines():
                    if line.startswith("data: {"):
                        delta = json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                        if delta and first is None:
                            first = time.perf_counter() - started
                        answer += delta
            ttfts.append(first or 0.0)
            messages.append({"role": "assistant", "content": answer})
    return ttfts


def plot(results: list[Result], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for name in dict.fromkeys(r.name for r in results):
        rows = [r for r in results if r.name == name]
        if len(rows) < 2:
            left.axhline(rows[0].tokens_per_second, linestyle=":", color="grey", label=f"{name} (c=1)")
            continue
        left.plot([r.concurrency for r in rows], [r.tokens_per_second for r in rows], marker="o", label=name)
        right.plot([r.concurrency for r in rows], [statistics.median(r.ttft) for r in rows], marker="o", label=name)
    left.set(xlabel="concurrent streaming clients", ylabel="aggregate tokens/s", title="Throughput")
    left.set_ylim(bottom=0)
    right.set(xlabel="concurrent streaming clients", ylabel="seconds", title="Time to first token (p50)", yscale="log")
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--context", type=int, default=2048, help="context per request, the same for every contender")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--skip", nargs="*", default=[],
                        choices=["ours", "llama-cpp-python-server", "llama.cpp-server", "direct", "prefix"])
    parser.add_argument("--llama-server", type=Path, help="also measure llama.cpp's C++ server (path to a llama-server binary)")
    parser.add_argument("--baseline", type=Path, help="also measure our server from another checkout (e.g. a git worktree "
                        "of an earlier commit), run by this interpreter: a before/after comparison in one run")
    parser.add_argument("--runs", type=int, default=1, help="repeat each measurement; the spread is reported")
    parser.add_argument("--markdown", type=Path, help="also write the tables to this file")
    parser.add_argument("--plot", type=Path, help="write a PNG plot of throughput and TTFT")
    parser.add_argument("--timeline", type=Path, help="also write each request's client, number and times (sent, first "
                        "token, end; seconds from the load's start) as JSON, by contender and concurrency")
    args = parser.parse_args()
    model = args.model.resolve()
    args.markdown = args.markdown and args.markdown.resolve()
    args.plot = args.plot and args.plot.resolve()
    args.timeline = args.timeline and args.timeline.resolve()
    base = f"http://127.0.0.1:{args.port}"
    slots = max(args.concurrency)
    ours_env = {"MODEL_DIR": str(model.parent), "DEFAULT_MODEL": model.name, "PRELOAD_MODEL": "true",
                "THREADS": str(args.threads), "CONTEXT_SIZE": str(args.context), "PARALLEL_SLOTS": str(slots),
                "LOG_LEVEL": "WARNING"}
    ours = ([sys.executable, "-m", "local_llm_api", "serve", "--port", str(args.port)], ours_env, f"{base}/health")
    theirs = ([sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--port", str(args.port),
               "--n_threads", str(args.threads), "--n_threads_batch", str(args.threads), "--n_ctx", str(args.context),
               "--interrupt_requests", "False"], {}, f"{base}/v1/models")
    contenders = {"ours": ours, "llama-cpp-python-server": theirs}
    labels = {"ours": f"local-llm-api ({slots} slots)", "llama-cpp-python-server": "llama-cpp-python server",
              "llama.cpp-server": f"llama.cpp server, C++ ({slots} slots)"}
    if args.baseline:
        baseline_env = {**ours_env, "PYTHONPATH": str(args.baseline.resolve())}  # its package shadows the installed one
        contenders["baseline"] = (ours[0], baseline_env, ours[2])
        labels["baseline"] = f"local-llm-api at {args.baseline.name} ({slots} slots)"
    if args.llama_server:
        # -c is the whole KV cache, shared by the -np slots: give each slot the same context as the others.
        contenders["llama.cpp-server"] = (
            [str(args.llama_server), "-m", str(model), "--port", str(args.port), "-t", str(args.threads),
             "-tb", str(args.threads), "-c", str(args.context * slots), "-np", str(slots)], {}, f"{base}/health")
    results: list[Result] = []
    prefix_rows: list[str] = []
    lines = [f"model {model.name}, {args.threads} threads, context {args.context}, {args.max_tokens}-token answers, "
             f"{args.requests_per_client} requests per client", ""]

    with tempfile.TemporaryDirectory() as workdir:
        os.chdir(workdir)  # keep any .env of the checkout out of the servers' settings
        for key, (command, env, health) in contenders.items():
            if key in args.skip:
                continue
            process = start(command, env, health)
            try:
                for _ in range(args.runs):
                    for concurrency in args.concurrency:
                        result = asyncio.run(closed_loop(base, model.name, concurrency, args.requests_per_client,
                                                         args.max_tokens, labels[key], process.pid))
                        results.append(result)
                        print(result.row(), flush=True)
            finally:
                process.terminate()
                process.wait(timeout=30)
        if "direct" not in args.skip:
            result = direct_library(model, args.threads, args.requests_per_client * 2, args.max_tokens)
            results.append(result)
            print(result.row(), flush=True)
        if "prefix" not in args.skip:
            cache_off = (ours[0], {**ours_env, "PREFIX_CACHE": "false"}, ours[2])
            for label, (command, env, health) in {"local-llm-api, prefix cache on": ours,
                                                  "local-llm-api, prefix cache off": cache_off,
                                                  "llama-cpp-python server": theirs}.items():
                process = start(command, env, health)
                try:
                    ttfts = asyncio.run(prefix_chat(base, model.name))
                finally:
                    process.terminate()
                    process.wait(timeout=30)
                row = f"| {label} | {ttfts[0]:.3f} | {statistics.median(ttfts[1:]):.3f} | {ttfts[-1]:.3f} |"
                prefix_rows.append(row)
                print(row, flush=True)

    lines += [*TABLE_HEAD, *(r.row() for r in results)]
    if args.runs > 1:
        lines += ["", f"Spread over {args.runs} runs:", "", *spread_table(results)]
    if prefix_rows:
        lines += ["", "10-turn chat behind a long system prompt, time to first token (s):", "",
                  "| server | turn 1 | turns 2-10 (median) | turn 10 |", "| --- | --- | --- | --- |", *prefix_rows]
    print("\n" + "\n".join(lines))
    if args.markdown:
        args.markdown.write_text("\n".join(lines) + "\n")
    if args.plot and results:
        plot(results, args.plot)
    if args.timeline:  # which requests sit at the median: the first wave, a later wave, or one arriving alone
        args.timeline.write_text(json.dumps([{"contender": r.name, "concurrency": r.concurrency,
                                              "requests": sorted(r.timeline)} for r in results], indent=1))


if __name__ == "__main__":
    main()
