"""What constrained decoding costs: tokens/s with and without a JSON schema (and with a forced tool call), on
our server's two backends and on llama-cpp-python's server (its GBNF grammar sampler), side by side.

Load: C clients in a closed loop of non-streamed chat completions; tokens/s is the completion tokens the
server reports (usage) over the wall time, prompt reading included. Free text answers are exactly MAX_TOKENS
tokens (end tokens biased away); constrained answers end when the schema is complete (up to 4 x MAX_TOKENS).
A forced tool call also reads the tools' description in its prompt. Every constrained answer is checked against its
schema ("valid"). Servers run one after another, never together.

llama-cpp-python's server takes a schema as `{"type": "json_object", "schema": ...}` (it ignores the
`json_schema` type), so it is sent that form; it has no forced tool call by schema for this model's chat format.

    python benchmarks/structured_bench.py --model models/SmolLM2-135M-Instruct.Q4_1.gguf \
        --hf-model-dir ~/.cache/local-llm-api/test-models/SmolLM2-135M-Instruct --threads 2 \
        --markdown docs/benchmarks-structured-latest.md
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jsonschema
from serve_bench import NO_END_TOKENS, start

PROMPTS = ["Describe a film you like.", "Review a restaurant in Rome.", "Write a poem", "Rate a new phone."]
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 60},
        "mood": {"type": "string", "enum": ["happy", "sad", "neutral"]},
        "score": {"type": "integer", "minimum": 0, "maximum": 10},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 20}, "minItems": 1, "maxItems": 4},
        "summary": {"type": "string", "maxLength": 200},
    },
    "required": ["title", "mood", "score", "tags", "summary"],
    "additionalProperties": False,
}
TOOL = {"type": "function", "function": {"name": "save_review", "description": "Save a review", "parameters": SCHEMA}}


@dataclass
class Row:
    server: str
    output: str
    clients: int
    tokens: int
    seconds: float
    valid: int
    requests: int

    def markdown(self, baseline: float | None) -> str:
        rate = self.tokens / self.seconds
        relative = f"{rate / baseline:.2f}x" if baseline else "1.00x"
        valid = f"{self.valid}/{self.requests}" if self.output != "free text" else "-"
        return f"| {self.server} | {self.output} | {self.clients} | {rate:.1f} | {relative} | {valid} |"


def body_for(output: str, prompt: str, model: str, max_tokens: int, llama_cpp_python: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
                            "temperature": 0.7}
    if output != "free text":
        body["max_tokens"] = 4 * max_tokens  # room to finish the object: a cut answer is not valid JSON
    if output == "free text":
        body["logit_bias"] = {str(t): -100 for t in NO_END_TOKENS}
    elif output == "json schema":
        body["response_format"] = ({"type": "json_object", "schema": SCHEMA} if llama_cpp_python else
                                   {"type": "json_schema", "json_schema": {"name": "review", "schema": SCHEMA, "strict": True}})
    else:
        body["tools"] = [TOOL]
        body["tool_choice"] = {"type": "function", "function": {"name": "save_review"}}
    return body


def valid(output: str, answer: dict[str, Any]) -> bool:
    message = answer["choices"][0]["message"]
    try:
        if output == "json schema":
            jsonschema.validate(json.loads(message["content"]), SCHEMA)
        else:
            jsonschema.validate(json.loads(message["tool_calls"][0]["function"]["arguments"]), SCHEMA)
        return True
    except (ValueError, KeyError, TypeError, IndexError, jsonschema.ValidationError):
        return False


async def closed_loop(base: str, server: str, model: str, output: str, clients: int, per_client: int, max_tokens: int,
                      llama_cpp_python: bool) -> Row:
    row = Row(server, output, clients, 0, 0.0, 0, 0)

    async def loop(client: httpx.AsyncClient, offset: int) -> None:
        for i in range(per_client):
            prompt = PROMPTS[(offset + i) % len(PROMPTS)]
            response = await client.post(f"{base}/v1/chat/completions", json=body_for(output, prompt, model, max_tokens, llama_cpp_python))
            response.raise_for_status()
            answer = response.json()
            row.tokens += answer["usage"]["completion_tokens"]
            row.requests += 1
            row.valid += output != "free text" and valid(output, answer)

    async with httpx.AsyncClient(timeout=900) as client:
        for prompt in PROMPTS:  # warm-up: grammar compiled, prompts in the prefix cache where there is one
            await client.post(f"{base}/v1/chat/completions", json=body_for(output, prompt, model, 4, llama_cpp_python))
        started = time.perf_counter()
        await asyncio.gather(*(loop(client, c) for c in range(clients)))
        row.seconds = time.perf_counter() - started
    return row


def run(server: str, command: list[str], env: dict[str, str], base: str, model: str, outputs: list[str],
        args: argparse.Namespace, llama_cpp_python: bool = False) -> list[str]:
    process = start(command, env, f"{base}/health" if not llama_cpp_python else f"{base}/v1/models")
    lines = []
    try:
        for clients in args.concurrency:
            baseline = None
            for output in outputs:
                row = asyncio.run(closed_loop(base, server, model, output, clients, args.requests_per_client, args.max_tokens,
                                              llama_cpp_python))
                rate = row.tokens / row.seconds
                baseline = baseline or rate
                lines.append(row.markdown(baseline))
                print(lines[-1], flush=True)
    finally:
        process.terminate()
        process.wait(timeout=30)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a GGUF file")
    parser.add_argument("--hf-model-dir", type=Path, help="a Transformers model folder (leave out to skip that backend)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--requests-per-client", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--port", type=int, default=8767)
    parser.add_argument("--skip-llama-cpp-python", action="store_true")
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--baseline", type=Path, help="also measure our server from another checkout (a git worktree of "
                        "the commit before), right after ours on each backend")
    args = parser.parse_args()
    for name in ("model", "hf_model_dir", "baseline", "markdown"):  # before leaving the working directory
        if getattr(args, name) is not None:
            setattr(args, name, getattr(args, name).resolve())
    os.chdir(tempfile.mkdtemp())  # the servers import the package installed (or --baseline's), not the working directory's
    base = f"http://127.0.0.1:{args.port}"
    ours = [sys.executable, "-m", "local_llm_api", "serve", "--port", str(args.port)]
    common = {"PRELOAD_MODEL": "true", "THREADS": str(args.threads), "CONTEXT_SIZE": "2048", "LOG_LEVEL": "WARNING",
              "PARALLEL_SLOTS": str(max(args.concurrency)), "OMP_NUM_THREADS": str(args.threads)}
    outputs = ["free text", "json schema", "forced tool call"]
    gguf = args.model.resolve()
    gguf_env = {**common, "MODEL_DIR": str(gguf.parent), "DEFAULT_MODEL": gguf.name}
    before = {"PYTHONPATH": str(args.baseline.resolve())} if args.baseline else {}  # its package shadows the installed one
    lines = run("local-llm-api (llama.cpp)", ours, gguf_env, base, gguf.stem, outputs, args)
    if args.baseline:
        lines += run(f"local-llm-api at {args.baseline.name} (llama.cpp)", ours, {**gguf_env, **before}, base, gguf.stem,
                     outputs, args)
    if args.hf_model_dir:
        folder = args.hf_model_dir.resolve()
        hf_env = {**common, "MODEL_DIR": str(folder.parent), "DEFAULT_MODEL": folder.name}
        lines += run("local-llm-api (transformers)", ours, hf_env, base, folder.name, outputs, args)
        if args.baseline:
            lines += run(f"local-llm-api at {args.baseline.name} (transformers)", ours, {**hf_env, **before}, base,
                         folder.name, outputs, args)
    if not args.skip_llama_cpp_python:
        command = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--n_threads", str(args.threads),
                   "--n_threads_batch", str(args.threads), "--n_ctx", "2048", "--port", str(args.port)]
        lines += run("llama-cpp-python server", command, {}, base, gguf.stem, outputs[:2], args, llama_cpp_python=True)
    header = (f"{gguf.name}, {args.threads} threads, answers up to {args.max_tokens} tokens, {args.requests_per_client} requests "
              f"per client, {platform.processor() or platform.machine()}\n\n"
              "| server | output | clients | tokens/s | vs free text | schema-valid |\n| --- | --- | --- | --- | --- | --- |\n")
    table = header + "\n".join(lines) + "\n"
    print(table)
    if args.markdown:
        args.markdown.write_text(table)


if __name__ == "__main__":
    main()
