"""Soak: many concurrent clients for a long time against the bundled model, with a mix of everything a real
load sends (streamed and plain chat, completions with n > 1, embeddings, forced tool calls, JSON schemas,
streams abandoned after a few tokens, bad inputs). Reports requests by kind and status, 5xx, streams that ended
without `[DONE]` or an error event, requests that hung, the server's memory after warm-up and at the end, and
whether slots and queue are back to idle.

    python benchmarks/soak.py --clients 64 --duration 600 --markdown docs/soak-latest.md
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
from serve_bench import start  # a sibling script: its folder is on the path when this one runs

from local_llm_api.cli import bundled_model_path

TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                         "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                        "required": ["city"]}}}
SCHEMA = {"type": "json_schema", "json_schema": {"name": "colour", "strict": True, "schema": {
    "type": "object", "properties": {"name": {"type": "string"}, "hex": {"type": "string"}},
    "required": ["name", "hex"], "additionalProperties": False}}}
MESSAGES = [{"role": "user", "content": "Name a colour and say why you like it."}]
HUNG_AFTER = 180.0  # seconds: a request still unanswered by then counts as hung


@dataclass
class Tally:
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    unterminated_streams: int = 0
    hung: int = 0
    errors: Counter[str] = field(default_factory=Counter)  # transport errors by type


async def stream(client: httpx.AsyncClient, path: str, body: dict, tally: Tally, kind: str, abandon_after: int | None) -> None:
    async with client.stream("POST", path, json=body) as response:
        tally.statuses[(kind, response.status_code)] += 1
        if response.status_code != 200:
            await response.aread()
            return
        lines = 0
        last = ""
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            lines += 1
            last = line
            if abandon_after is not None and lines >= abandon_after:
                return  # leave mid-answer: the server must stop and free the slot
        ended = last == "data: [DONE]" or '"error"' in last
        if not ended:
            tally.unterminated_streams += 1


async def one(client: httpx.AsyncClient, tally: Tally, rng: random.Random) -> None:
    kind = rng.choice(["chat", "chat_stream", "completion_n", "embedding", "tool", "schema", "abandoned", "bad"])
    chat = {"messages": MESSAGES, "max_tokens": 24}
    if kind == "chat":
        response = await client.post("/v1/chat/completions", json=chat)
    elif kind == "chat_stream":
        return await stream(client, "/v1/chat/completions", {**chat, "stream": True}, tally, kind, None)
    elif kind == "abandoned":
        return await stream(client, "/v1/chat/completions", {**chat, "stream": True, "max_tokens": 200}, tally, kind, 3)
    elif kind == "completion_n":
        response = await client.post("/v1/completions", json={"prompt": "Once upon a time", "max_tokens": 16, "n": 3})
    elif kind == "embedding":
        response = await client.post("/v1/embeddings", json={"input": ["a soak test", "of the embeddings"]})
    elif kind == "tool":
        response = await client.post("/v1/chat/completions", json={**chat, "max_tokens": 64, "tools": [TOOL],
                                                                   "tool_choice": "required"})
    elif kind == "schema":
        response = await client.post("/v1/chat/completions", json={**chat, "max_tokens": 64, "response_format": SCHEMA})
    else:
        body = rng.choice([b"{not json", json.dumps({"messages": "x"}).encode(), json.dumps({**chat, "colour": 1}).encode(),
                           json.dumps({**chat, "max_tokens": 10**9}).encode(), json.dumps({"prompt": [[False]]}).encode()])
        path = rng.choice(["/v1/chat/completions", "/v1/completions"])
        response = await client.post(path, content=body, headers={"Content-Type": "application/json"})
    tally.statuses[(kind, response.status_code)] += 1


async def client_loop(base: str, deadline: float, tally: Tally, seed: int) -> None:
    rng = random.Random(seed)
    async with httpx.AsyncClient(base_url=base, timeout=HUNG_AFTER) as client:
        while time.time() < deadline:
            try:
                await one(client, tally, rng)
            except httpx.TimeoutException:
                tally.hung += 1
            except httpx.HTTPError as exc:
                tally.errors[type(exc).__name__] += 1


async def idle_after(base: str, model: str, timeout: float = 60) -> dict:
    """The engine's figures once nothing runs or waits (or after `timeout`)."""
    deadline = time.time() + timeout
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        while True:
            engine = (await client.get("/health")).json()["engines"][model]
            if (engine["running"] == 0 and engine["queued"] == 0) or time.time() > deadline:
                return engine
            await asyncio.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--duration", type=float, default=600, help="seconds of load")
    parser.add_argument("--warm-up", type=float, default=60, help="seconds before the first memory reading")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--port", type=int, default=8768)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    model = bundled_model_path()
    base = f"http://127.0.0.1:{args.port}"
    with tempfile.TemporaryDirectory() as workdir:
        os.chdir(workdir)
        env = {"MODEL_DIR": str(model.parent), "DEFAULT_MODEL": model.name, "PRELOAD_MODEL": "true",
               "THREADS": str(args.threads), "CONTEXT_SIZE": "2048", "LOG_LEVEL": "WARNING"}
        process = start([sys.executable, "-m", "local_llm_api", "serve", "--port", str(args.port)], env, f"{base}/health")
        try:
            tally = Tally()
            memory = psutil.Process(process.pid)

            async def run() -> tuple[int, int, dict]:
                deadline = time.time() + args.duration
                clients = [asyncio.ensure_future(client_loop(base, deadline, tally, seed)) for seed in range(args.clients)]
                await asyncio.sleep(min(args.warm_up, args.duration / 2))
                warm = memory.memory_info().rss
                await asyncio.gather(*clients)
                engine = await idle_after(base, model.name)
                return warm, memory.memory_info().rss, engine

            started = time.time()
            warm, end, engine = asyncio.run(run())
            elapsed = time.time() - started
        finally:
            process.terminate()
            process.wait(timeout=60)
    total = sum(tally.statuses.values())
    server_errors = sum(n for (_, status), n in tally.statuses.items() if status >= 500)
    kinds = sorted({kind for kind, _ in tally.statuses})
    statuses = sorted({status for _, status in tally.statuses})
    lines = [(f"{args.clients} clients for {args.duration:.0f} s ({elapsed:.0f} s with the drain), {args.threads} threads, "
              f"{model.name}: {total} requests"), "",
             "| kind | " + " | ".join(str(s) for s in statuses) + " |", "| --- |" + " --- |" * len(statuses)]
    for kind in kinds:
        lines.append(f"| {kind} | " + " | ".join(str(tally.statuses[(kind, s)]) for s in statuses) + " |")
    growth = 100 * (end - warm) / warm
    lines += ["", "| check | result | target |", "| --- | --- | --- |",
              f"| 5xx answers | {server_errors} | 0 |",
              f"| streams ended without [DONE] or an error event | {tally.unterminated_streams} | 0 |",
              f"| requests that hung (no answer within {HUNG_AFTER:.0f} s) | {tally.hung} | 0 |",
              f"| transport errors | {dict(tally.errors) or 0} | 0 |",
              f"| server RSS after warm-up -> at the end | {warm / 2**20:.0f} MB -> {end / 2**20:.0f} MB ({growth:+.1f} %) | < 5 % growth |",
              f"| slots and queue once the load stops | running {engine['running']}, queued {engine['queued']} | 0, 0 |"]
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")


if __name__ == "__main__":
    main()
