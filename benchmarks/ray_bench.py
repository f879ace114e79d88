"""Ray Serve: the same machine's cores as one replica or several, and what Ray's proxy costs.

Contenders, one after another on the same model and the same total threads and slots:
- the plain server (`local-llm-api serve`, THREADS=T, PARALLEL_SLOTS=S);
- Ray Serve with 1 replica of T threads and S slots (against the plain server: the cost of Ray's proxy and our
  gateway);
- Ray Serve with N replicas of T/N threads and S/N slots each.
Each gets the closed-loop streaming load of serve_bench.py (C clients, each sending its next request when its
answer ends; every answer exactly MAX_TOKENS tokens): completion tokens/s, time to first token p50/p95, and the
peak resident memory of the whole process tree (Ray's own processes included).

    python benchmarks/ray_bench.py --model models/SmolLM2-135M-Instruct.Q4_1.gguf --threads 2 --replicas 2 \\
        --concurrency 1 8 16
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_bench import Result, closed_loop, spread_table  # a sibling script, not a package

HEADER = ["| contender | concurrency | tokens/s (aggregate) | TTFT p50 (ms) | TTFT p95 (ms) | peak RSS, all processes (MB) |",
          "| --- | --- | --- | --- | --- | --- |"]


def row(result: Result) -> str:
    """serve_bench's row with times to first token in milliseconds: the proxy's cost is a few of them."""
    p50 = statistics.median(result.ttft) * 1000
    p95 = sorted(result.ttft)[max(0, round(0.95 * len(result.ttft)) - 1)] * 1000
    return (f"| {result.name} | {result.concurrency} | {result.tokens_per_second:.1f} | {p50:.0f} | {p95:.0f} "
            f"| {result.peak_rss_mb:.0f} |")


@contextmanager
def server(model: Path, port: int, threads: int, slots: int, replicas: int | None, log: Path) -> Iterator[int]:
    """A server (plain, or on Ray Serve with `replicas`) that holds the model on every replica; yields its pid."""
    env = {**os.environ, "MODEL_DIR": str(model.parent), "DEFAULT_MODEL": model.name, "PRELOAD_MODEL": "true",
           "THREADS": str(threads), "PARALLEL_SLOTS": str(slots), "CONTEXT_SIZE": "2048", "LOG_LEVEL": "WARNING"}
    command = [sys.executable, "-m", "local_llm_api", "serve", "--host", "127.0.0.1", "--port", str(port)]
    if replicas is not None:
        command += ["--replicas", str(replicas)]
    process = subprocess.Popen(command, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        wait_until_ready(f"http://127.0.0.1:{port}", model.name, replicas, process)
        yield process.pid
    except Exception:
        print(log.read_text(errors="replace")[-3000:], file=sys.stderr)
        raise
    finally:
        stop(process)


def wait_until_ready(base: str, model: str, replicas: int | None, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the server exited")
        try:
            state = httpx.get(f"{base}/health", timeout=10).json()
            held = [r for r in state["replicas"].values() if r and model in r["loaded_models"]] if replicas else (
                [state] if model in state["loaded_models"] else [])
            if len(held) == (replicas or 1):
                return
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        time.sleep(0.5)
    raise RuntimeError("the server did not become ready")


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the CLI shuts Serve and Ray down); whatever is left of the process tree is then killed."""
    family = psutil.Process(process.pid).children(recursive=True)
    process.terminate()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
    for child in family:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2, help="threads in all, split over the replicas")
    parser.add_argument("--slots", type=int, default=8, help="parallel slots in all, split over the replicas")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 16])
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--port", type=int, default=8390)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    model = args.model.resolve()
    contenders = [
        ("local-llm-api", None, args.threads, args.slots),
        ("Ray Serve, 1 replica", 1, args.threads, args.slots),
    ]
    if args.replicas > 1:
        contenders.append((f"Ray Serve, {args.replicas} replicas", args.replicas, max(1, args.threads // args.replicas),
                           max(1, args.slots // args.replicas)))
    results: list[Result] = []
    with tempfile.TemporaryDirectory() as logs:
        for _ in range(args.runs):
            for name, replicas, threads, slots in contenders:
                label = f"{name} ({threads} thread{'s' if threads > 1 else ''}, {slots} slots each)"
                with server(model, args.port, threads, slots, replicas, Path(logs) / "server.log") as pid:
                    for clients in args.concurrency:
                        result = asyncio.run(closed_loop(f"http://127.0.0.1:{args.port}", model.name, clients,
                                                         args.requests_per_client, args.max_tokens, label, pid))
                        results.append(result)
                        print(row(result), flush=True)
    lines = [f"model {model.name}, {args.threads} threads and {args.slots} slots in all, {args.max_tokens}-token answers, "
             f"{args.requests_per_client} requests per client", "", *HEADER, *(row(r) for r in results)]
    if args.runs > 1:
        lines += ["", f"Spread over {args.runs} runs:", "", *spread_table(results)]
    print("\n".join(lines))
    if args.markdown:
        args.markdown.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
