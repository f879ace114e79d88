"""Side-by-side serving benchmark: our server, llama-cpp-python's own server, and the library called directly.

Each contender gets the same model, the same threads and the same closed-loop streaming load: C clients,
each sending its next request as soon as the previous answer ends; every answer is exactly MAX_TOKENS
tokens (end-of-generation tokens are biased away). Reported: aggregate completion tokens/s, time to first
token p50/p95, and the server's peak resident memory. Contenders run one after another, never together.

    pip install -e ".[bench]"
    python benchmarks/serve_bench.py --model models/SmolLM2-135M-Instruct.Q4_1.gguf --threads 2
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
    peak_rss_mb: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    def row(self) -> str:
        p50 = statistics.median(self.ttft)
        p95 = sorted(self.ttft)[max(0, round(0.95 * len(self.ttft)) - 1)]
        return (f"| {self.name} | {self.concurrency} | {self.tokens_per_second:.1f} | {p50:.2f} | {p95:.2f} "
                f"| {self.peak_rss_mb:.0f} |")


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


async def one_request(client: httpx.AsyncClient, url: str, body: dict) -> tuple[int, float]:
    """Stream one chat completion; return (completion tokens, time to first token)."""
    started = time.perf_counter()
    first: float | None = None
    tokens = 0
    async with client.stream("POST", url, json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            for choice in chunk.get("choices", []):
                if choice.get("delta", {}).get("content"):
                    tokens += 1
                    if first is None:
                        first = time.perf_counter() - started
    return tokens, first if first is not None else time.perf_counter() - started


async def closed_loop(base_url: str, model: str, concurrency: int, requests_per_client: int, max_tokens: int, name: str, pid: int) -> Result:
    body = {
        "model": model, "messages": PROMPT, "max_tokens": max_tokens, "stream": True, "temperature": 0.7,
        "logit_bias": {str(t): -100 for t in NO_END_TOKENS},
    }
    result = Result(name, concurrency)

    async def client_loop(client: httpx.AsyncClient) -> None:
        for _ in range(requests_per_client):
            tokens, ttft = await one_request(client, f"{base_url}/v1/chat/completions", body)
            result.tokens += tokens
            result.ttft.append(ttft)

    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=concurrency + 4)) as client:
        await one_request(client, f"{base_url}/v1/chat/completions", {**body, "max_tokens": 4})  # warm-up
        with PeakMemory(pid) as memory:
            started = time.perf_counter()
            await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
            result.seconds = time.perf_counter() - started
        result.peak_rss_mb = memory.peak / 2**20
    return result


def start(command: list[str], env: dict[str, str], health_url: str) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(command, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--skip", nargs="*", default=[], choices=["ours", "llama-cpp-python-server", "direct"])
    args = parser.parse_args()
    model = args.model.resolve()
    base = f"http://127.0.0.1:{args.port}"
    results: list[Result] = []

    contenders = {
        "ours": (
            [sys.executable, "-m", "local_llm_api", "serve", "--port", str(args.port)],
            {"MODEL_DIR": str(model.parent), "DEFAULT_MODEL": model.name, "PRELOAD_MODEL": "true",
             "THREADS": str(args.threads), "CONTEXT_SIZE": "4096", "LOG_LEVEL": "WARNING"},
            f"{base}/health", model.name, "local-llm-api",
        ),
        "llama-cpp-python-server": (
            [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--port", str(args.port),
             "--n_threads", str(args.threads), "--n_threads_batch", str(args.threads), "--n_ctx", "4096",
             "--interrupt_requests", "False"],
            {}, f"{base}/v1/models", model.name, "llama-cpp-python server",
        ),
    }
    with tempfile.TemporaryDirectory() as workdir:
        os.chdir(workdir)  # keep any .env of the checkout out of the servers' settings
        for key, (command, env, health, model_name, label) in contenders.items():
            if key in args.skip:
                continue
            process = start(command, env, health)
            try:
                for concurrency in args.concurrency:
                    result = asyncio.run(closed_loop(base, model_name, concurrency, args.requests_per_client, args.max_tokens, label, process.pid))
                    results.append(result)
                    print(result.row(), flush=True)
            finally:
                process.terminate()
                process.wait(timeout=30)
        if "direct" not in args.skip:
            result = direct_library(model, args.threads, args.requests_per_client * 2, args.max_tokens)
            results.append(result)
            print(result.row(), flush=True)

    print("\n| contender | concurrency | tokens/s (aggregate) | TTFT p50 (s) | TTFT p95 (s) | peak RSS (MB) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for result in results:
        print(result.row())


if __name__ == "__main__":
    main()
