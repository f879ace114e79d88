"""Side-by-side benchmark of the Transformers backend: our server (dynamic batching) against `transformers
serve` with and without its continuous batching, on the same model folder, threads and load.

The load is serve_bench.py's: C clients in a closed loop, streamed chat completions of exactly MAX_TOKENS
tokens each (end-of-generation tokens biased away on our server; `transformers serve` answers 500 to
`logit_bias`, so it gets none and may stop early: its tokens/s counts what it sent). Contenders run one after
another, never together.

    python benchmarks/transformers_bench.py --model-dir ~/.cache/local-llm-api/test-models/SmolLM2-135M-Instruct \
        --threads 2 --markdown docs/benchmarks-transformers-latest.md
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import sys
from pathlib import Path

import torch
from serve_bench import TABLE_HEAD, Result, closed_loop, spread_table, start


def run(name: str, command: list[str], env: dict[str, str], base: str, model: str, args: argparse.Namespace) -> list[Result]:
    process = start(command, env, f"{base}/health")
    try:
        results = []
        for _ in range(args.runs):
            for concurrency in args.concurrency:
                result = asyncio.run(closed_loop(base, model, concurrency, args.requests_per_client, args.max_tokens, name,
                                                 process.pid, logit_bias=name.startswith("local-llm-api")))
                print(result.row(), flush=True)
                results.append(result)
        return results
    finally:
        process.terminate()
        process.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, required=True, help="a Transformers model folder")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--skip", nargs="*", default=[], choices=["ours", "transformers-serve", "transformers-serve-cb"])
    parser.add_argument("--runs", type=int, default=1, help="repeat each measurement; the spread is reported")
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    folder = args.model_dir.resolve()
    base = f"http://127.0.0.1:{args.port}"
    threads = {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    results: list[Result] = []
    if "ours" not in args.skip:
        env = {**threads, "MODEL_DIR": str(folder.parent), "DEFAULT_MODEL": folder.name, "PRELOAD_MODEL": "true",
               "THREADS": str(args.threads), "PARALLEL_SLOTS": str(max(args.concurrency)), "CONTEXT_SIZE": "2048",
               "LOG_LEVEL": "WARNING"}
        command = [sys.executable, "-m", "local_llm_api", "serve", "--port", str(args.port)]
        results += run("local-llm-api (transformers)", command, env, base, folder.name, args)
    for name, extra in (("transformers-serve", []), ("transformers-serve-cb", ["--continuous-batching"])):
        if name in args.skip:
            continue
        beside = Path(sys.executable).parent / "transformers"  # the CLI of this interpreter's environment
        cli = str(beside) if beside.exists() else "transformers"
        command = [cli, "serve", str(folder), "--port", str(args.port), "--device", "cpu", *extra]
        results += run(f"transformers serve{' --continuous-batching' if extra else ''}", command, threads, base, str(folder), args)
    header = (f"Model folder {folder.name}, {args.threads} threads, {args.max_tokens}-token answers, "
              f"{args.requests_per_client} requests per client; torch {torch.__version__}, {platform.processor() or platform.machine()}\n\n"
              + "\n".join(TABLE_HEAD) + "\n")
    table = header + "\n".join(r.row() for r in results) + "\n"
    if args.runs > 1:
        table += f"\nSpread over {args.runs} runs:\n\n" + "\n".join(spread_table(results)) + "\n"
    print(table)
    if args.markdown:
        args.markdown.write_text(table)


if __name__ == "__main__":
    main()
