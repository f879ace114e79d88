"""Plain chat tokens/s of two checkouts of our server, measured in alternation (A B, B A, A B, ...).

On a shared two-core machine a server measured once, before or after another, can be 20% off for reasons that have
nothing to do with it (another process, the CPU's clock, the page cache). Alternating the two, each round starting
fresh servers, and comparing medians separates a real change from that noise.

Each round: start the server, one warm-up request, then REQUESTS non-streamed chat completions of exactly
MAX_TOKENS tokens (end tokens biased away) from one client; tokens/s is completion tokens over wall time.

    git worktree add /tmp/base-before <commit>
    python benchmarks/ab_bench.py --model models/SmolLM2-135M-Instruct.Q4_1.gguf --baseline /tmp/base-before \
        --rounds 6
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from serve_bench import NO_END_TOKENS, start


def measure(base: str, model: str, requests: int, max_tokens: int) -> float:
    body = {"model": model, "messages": [{"role": "user", "content": "Describe a film you like."}], "max_tokens": max_tokens,
            "temperature": 0.7, "logit_bias": {str(t): -100 for t in NO_END_TOKENS}}
    with httpx.Client(timeout=600) as client:
        client.post(f"{base}/v1/chat/completions", json={**body, "max_tokens": 4}).raise_for_status()
        started, tokens = time.perf_counter(), 0
        for _ in range(requests):
            response = client.post(f"{base}/v1/chat/completions", json=body)
            response.raise_for_status()
            tokens += response.json()["usage"]["completion_tokens"]
    return tokens / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a GGUF file")
    parser.add_argument("--baseline", type=Path, required=True, help="a checkout of the commit to compare with")
    parser.add_argument("--candidate", type=Path, help="a checkout to measure (default: the installed package)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--port", type=int, default=8799)
    args = parser.parse_args()
    model = args.model.resolve()
    paths = {"candidate": str(args.candidate.resolve()) if args.candidate else "",
             f"baseline ({args.baseline.name})": str(args.baseline.resolve())}
    os.chdir(tempfile.mkdtemp())  # the servers import the installed package (or PYTHONPATH's), not the working directory's
    env = {"MODEL_DIR": str(model.parent), "DEFAULT_MODEL": model.name, "PRELOAD_MODEL": "true", "THREADS": str(args.threads),
           "CONTEXT_SIZE": "2048", "LOG_LEVEL": "WARNING", "OMP_NUM_THREADS": str(args.threads)}
    base = f"http://127.0.0.1:{args.port}"
    rates: dict[str, list[float]] = {name: [] for name in paths}
    for round_ in range(args.rounds):
        for name in (list(paths) if round_ % 2 == 0 else list(reversed(paths))):
            extra = {"PYTHONPATH": paths[name]} if paths[name] else {}
            process = start([sys.executable, "-m", "local_llm_api", "serve", "--port", str(args.port)], {**env, **extra},
                            f"{base}/health")
            try:
                rates[name].append(measure(base, model.stem, args.requests, args.max_tokens))
            finally:
                process.terminate()
                process.wait(timeout=30)
            print(f"round {round_ + 1}: {name} {rates[name][-1]:.1f} tok/s", flush=True)
    print(f"\n{model.name}, {args.threads} threads, 1 client, {args.requests} x {args.max_tokens}-token answers per round, "
          f"{args.rounds} rounds alternating\n\n| server | median tok/s | each round |\n| --- | --- | --- |")
    for name, values in rates.items():
        print(f"| {name} | {statistics.median(values):.1f} | {', '.join(f'{v:.1f}' for v in values)} |")


if __name__ == "__main__":
    main()
