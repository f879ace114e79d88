"""Waves of requests that share a prompt no cache holds yet: the first token of N requests sent together with the
same new prompt (a chat product's users behind one new system prompt, a benchmark's first wave), as many waves as
asked, each with a prompt of its own. One request reads the prompt; the others wait for that read and copy its KV
into their slots. Reported per contender and wave size: time to first token p50, mean and highest over all the
waves' requests. One slot per request, each of `--context` tokens (a copy's cost grows with the slot's size where
the KV stream is copied whole). Contenders run one after another: our server, our server from another checkout
(`--baseline`), llama.cpp's C++ server (`--llama-server`).

    python benchmarks/wave_bench.py --model models/SmolLM2-135M-Instruct.Q4_1.gguf --threads 2 --clients 8 16 \\
        --llama-server path/to/llama-server
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_bench import one_request, serving  # a sibling script, not a package


def body(model: str, wave: int) -> dict:
    """The wave's prompt: its first words differ from every other wave's, so no cache holds any of it."""
    question = f"Wave {wave}: write a long story about a dragon who learns to cook."
    return {"model": model, "max_tokens": 4, "temperature": 0.7, "stream": True,
            "messages": [{"role": "user", "content": question}]}


async def waves(base: str, model: str, clients: int, count: int, first: int) -> list[float]:
    """`count` waves of `clients` requests each, numbered from `first`; every request's time to first token."""
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=0)
    ttfts: list[float] = []
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        for wave in range(first, first + count):
            answers = await asyncio.gather(*(one_request(client, f"{base}/v1/chat/completions", body(model, wave))
                                             for _ in range(clients)))
            ttfts += [ttft for _, ttft in answers]
            await asyncio.sleep(0.3)  # the wave's answers end; the next starts on an idle server
    return ttfts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clients", type=int, nargs="+", default=[8, 16], help="requests per wave (and slots)")
    parser.add_argument("--waves", type=int, default=10)
    parser.add_argument("--context", type=int, default=2048, help="context per slot")
    parser.add_argument("--port", type=int, default=8768)
    parser.add_argument("--baseline", type=Path, help="also measure our server from another checkout (e.g. a git "
                        "worktree of an earlier commit): a before/after comparison in one run")
    parser.add_argument("--llama-server", type=Path, help="also measure llama.cpp's C++ server (path to llama-server)")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    args = parser.parse_args()

    model = args.model.resolve()
    base = f"http://127.0.0.1:{args.port}"
    ours = [sys.executable, "-m", "local_llm_api", "serve", "--port", str(args.port)]
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        os.chdir(workdir)  # keep any .env of the checkout out of the servers' settings
        for clients in args.clients:
            ours_env = {"MODEL_DIR": str(model.parent), "DEFAULT_MODEL": model.name, "PRELOAD_MODEL": "true",
                        "THREADS": str(args.threads), "CONTEXT_SIZE": str(args.context),
                        "PARALLEL_SLOTS": str(clients), "LOG_LEVEL": "WARNING", "DATA_DIR": f"{workdir}/data"}
            contenders = [("local-llm-api", ours, ours_env)]
            if args.baseline:  # its package shadows the installed one
                contenders.append((f"local-llm-api at {args.baseline.name}", ours,
                                   {**ours_env, "PYTHONPATH": str(args.baseline.resolve())}))
            if args.llama_server:
                contenders.append(("llama.cpp server, C++", [
                    str(args.llama_server), "-m", str(model), "--port", str(args.port), "-t", str(args.threads),
                    "-tb", str(args.threads), "-c", str(args.context * clients), "-np", str(clients)], {}))
            for label, command, env in contenders:
                with serving(command, env, f"{base}/health", label):
                    asyncio.run(waves(base, model.name, clients, 2, 1000))  # warm up (and wait for the model)
                    ttfts = asyncio.run(waves(base, model.name, clients, args.waves, 0))
                row = (f"| {label} | {clients} | {statistics.median(ttfts):.3f} | {statistics.mean(ttfts):.3f} | "
                       f"{max(ttfts):.3f} |")
                rows.append(row)
                print(row, flush=True)
    lines = [f"model {model.name}, {args.threads} threads, {args.waves} waves, one slot of {args.context} tokens per "
             "request, 4-token answers", "",
             "| contender | requests per wave | TTFT p50 (s) | mean (s) | highest (s) |",
             "| --- | --- | --- | --- | --- |", *rows]
    print("\n" + "\n".join(lines))
    if args.markdown:
        args.markdown.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
