"""A long prompt read cold (an agent's instructions and tools: ~20,000 tokens at the default) on a context that holds
it, on our server alone: tokens read per second by how far into the context the reading is (where attention's cost
starts to tell), from the engine's DEBUG step log; then the server restarted and the same prompt sent again, read
from the prefix cache's disk tier, with the load's time split between the file (read and checked) and llama.cpp
taking the state: the second part is all a RAM tier between the slots and the disk would leave.

    python benchmarks/long_prompt_bench.py --model models/SmolLM2-135M-Instruct.Q4_1.gguf --threads 2
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import tempfile
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from agent_bench import system_prompt  # sibling scripts, not a package
from restart_bench import ready
from serve_bench import one_request, serving

STEP = re.compile(r"step: (\d+) tokens, (\d+) of them prompt, (\d+) sequences, ([\d.]+) ms")
LOAD = re.compile(r"disk tier: (\d+) tokens \((\d+) bytes\) loaded: file ([\d.]+) ms, state set ([\d.]+) ms")


async def ask(base: str, model: str, system: str, question: str) -> tuple[float, int]:
    body = {"model": model, "max_tokens": 4, "temperature": 0, "stream": True,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}]}
    async with httpx.AsyncClient(timeout=3600) as client:
        ttft = (await one_request(client, f"{base}/v1/chat/completions", body))[1]
        usage = (await client.post(f"{base}/v1/chat/completions", json={**body, "stream": False, "max_tokens": 1})).json()
    return ttft, usage["usage"]["prompt_tokens"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--context", type=int, default=24576, help="tokens of the one slot")
    parser.add_argument("--system-words", type=int, default=15400, help="about 20,000 tokens at the default")
    parser.add_argument("--bucket", type=int, default=2048, help="context positions per row of the table")
    parser.add_argument("--port", type=int, default=8769)
    parser.add_argument("--markdown", type=Path, help="also write the tables to this file")
    args = parser.parse_args()
    model = args.model.resolve()
    base = f"http://127.0.0.1:{args.port}"
    system = system_prompt(args.system_words)
    with tempfile.TemporaryDirectory() as workdir:
        os.chdir(workdir)  # keep any .env of the checkout out of the server's settings
        log = Path(workdir) / "server.log"
        env = {"MODEL_DIR": str(model.parent), "DEFAULT_MODEL": model.name, "PRELOAD_MODEL": "true",
               "THREADS": str(args.threads), "CONTEXT_SIZE": str(args.context), "PARALLEL_SLOTS": "1",
               "LOG_LEVEL": "DEBUG", "LOG_FILE": str(log), "DATA_DIR": f"{workdir}/data"}
        command = [sys.executable, "-m", "local_llm_api", "serve", "--port", str(args.port)]
        with serving(command, env, f"{base}/health", "the server"):
            ready(base, True)
            cold, tokens = asyncio.run(ask(base, model.name, system, "Which tool reads a file?"))
        steps = [tuple(map(float, m.groups())) for m in STEP.finditer(log.read_text())]
        with serving(command, env, f"{base}/health", "the restarted server"):  # stopped with SIGTERM: the slot saved
            ready(base, True)
            restarted, _ = asyncio.run(ask(base, model.name, system, "How do I run only the failing tests?"))
        loads = [tuple(map(float, m.groups())) for m in LOAD.finditer(log.read_text())]
    # The cold read's prompt steps in order: each read `prompt` tokens at positions that follow the ones before.
    rows, position = {}, 0
    for _, prompt, _, ms in steps:
        if not prompt:
            continue
        bucket = position // args.bucket
        read, seconds = rows.get(bucket, (0, 0.0))
        rows[bucket] = (read + int(prompt), seconds + ms / 1000)
        position += int(prompt)
        if position >= tokens:
            break
    lines = [f"model {model.name}, {args.threads} threads, one slot of {args.context} tokens, a prompt of {tokens} tokens",
             "", "| context positions | tokens read | seconds | tokens/s |", "| --- | --- | --- | --- |"]
    for bucket, (read, seconds) in sorted(rows.items()):
        lines.append(f"| {bucket * args.bucket:,}-{(bucket + 1) * args.bucket:,} | {read} | {seconds:.1f} | "
                     f"{read / seconds:.0f} |")
    lines += ["", f"Cold read: time to first token {cold:.1f} s ({tokens / cold:.0f} tokens/s). After a restart, from the "
              f"disk tier: {restarted:.2f} s."]
    if loads:
        count, size, file_ms, set_ms = loads[-1]
        lines.append(f"That load: {int(count)} tokens, {size / 2**20:.0f} MiB of state; the file read and checked "
                     f"{file_ms:.0f} ms, llama.cpp taking the state {set_ms:.0f} ms.")
    print("\n".join(lines))
    if args.markdown:
        args.markdown.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
