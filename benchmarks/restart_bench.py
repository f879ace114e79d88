"""Restart: an agent session's first turn after the server restarts, with the prefix cache's disk tier on and off,
and on llama.cpp's C++ server (restarted too) when `--llama-server` gives its path.

For each contender, one after another: start the server and wait for the model; turn 1, a long system prompt (an
agent's instructions and tools, ~7,500 tokens at the default) and a question, read cold; turn 2, the same prompt and
another question, read from the slot (warm); stop the server (SIGTERM, as a restart does) and start it again; turn 3,
the same prompt and a third question: what a session that starts after the restart waits for. Reported: the time to
first token of each, and turn 3 against turn 2 (target: at most 2x) and against turn 1 (target: at most a tenth).

    python benchmarks/restart_bench.py --model models/SmolLM2-135M-Instruct.Q4_1.gguf --threads 2 \
        --llama-server path/to/llama-server
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from agent_bench import system_prompt  # sibling scripts, not a package
from serve_bench import one_request, serving

QUESTIONS = ["Which tool reads a file?", "How do I run only the failing tests?", "When should I ask the user?"]


def ready(base: str, ours: bool) -> None:
    """Wait until the model is loaded (our /health lists it; llama-server's /health answers 200 once loaded)."""
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            health = httpx.get(f"{base}/health", timeout=5)
            if health.status_code == 200 and (not ours or health.json().get("loaded_models")):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError("the model did not load")


async def turn(base: str, model: str, system: str, question: str) -> float:
    body = {"model": model, "max_tokens": 8, "temperature": 0, "stream": True,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}]}
    async with httpx.AsyncClient(timeout=1800) as client:
        return (await one_request(client, f"{base}/v1/chat/completions", body))[1]


def session(command: list[str], env: dict[str, str], base: str, model: str, system: str, ours: bool) -> list[float]:
    with serving(command, env, f"{base}/health", "the server"):
        ready(base, ours)
        cold = asyncio.run(turn(base, model, system, QUESTIONS[0]))
        warm = asyncio.run(turn(base, model, system, QUESTIONS[1]))  # from the slot
    with serving(command, env, f"{base}/health", "the restarted server"):  # stopped with SIGTERM, as a restart does
        ready(base, ours)
        return [cold, warm, asyncio.run(turn(base, model, system, QUESTIONS[2]))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--context", type=int, default=8192, help="context per slot, the same on every contender")
    parser.add_argument("--system-words", type=int, default=5700, help="about 7,500 tokens at the default")
    parser.add_argument("--port", type=int, default=8767)
    parser.add_argument("--llama-server", type=Path, help="also measure llama.cpp's C++ server (path to llama-server)")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    args = parser.parse_args()
    model = args.model.resolve()
    base = f"http://127.0.0.1:{args.port}"
    system = system_prompt(args.system_words)
    ours = [sys.executable, "-m", "local_llm_api", "serve", "--port", str(args.port)]
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        os.chdir(workdir)  # keep any .env of the checkout out of the servers' settings
        env = {"MODEL_DIR": str(model.parent), "DEFAULT_MODEL": model.name, "PRELOAD_MODEL": "true",
               "THREADS": str(args.threads), "CONTEXT_SIZE": str(args.context), "PARALLEL_SLOTS": str(args.slots),
               "LOG_LEVEL": "WARNING"}
        contenders: dict[str, tuple[list[str], dict[str, str], bool]] = {
            "local-llm-api, disk tier on (the default)": (ours, {**env, "DATA_DIR": f"{workdir}/on"}, True),
            "local-llm-api, PREFIX_CACHE_DISK=0": (ours, {**env, "DATA_DIR": f"{workdir}/off", "PREFIX_CACHE_DISK": "0"},
                                                   True),
        }
        if args.llama_server:
            contenders["llama.cpp server, C++"] = ([
                str(args.llama_server), "-m", str(model), "--port", str(args.port), "-t", str(args.threads), "-tb",
                str(args.threads), "-c", str(args.context * args.slots), "-np", str(args.slots)], {}, False)
        for label, (command, environment, is_ours) in contenders.items():
            cold, warm, after = session(command, environment, base, model.name, system, is_ours)
            row = (f"| {label} | {cold:.2f} | {warm:.2f} | {after:.2f} | {after / warm:.1f}x | {after / cold:.3f}x |")
            rows.append(row)
            print(row, flush=True)
    lines = [f"model {model.name}, {args.threads} threads, {args.slots} slots of {args.context} tokens, a system prompt "
             f"of {args.system_words} words, 8-token answers, temperature 0", "",
             "| server | turn 1, cold: TTFT (s) | turn 2, warm (s) | turn 3, after a restart (s) | restart / warm | "
             "restart / cold |", "| --- | --- | --- | --- | --- | --- |", *rows]
    print("\n" + "\n".join(lines))
    if args.markdown:
        args.markdown.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
