"""Copying answers: C clients each ask for a ~300-token piece of code (or JSON) rewritten with a small change, at
temperature 0, the kind of answer where speculative decoding from the prompt (prompt lookup) pays.

Reported per contender and number of clients: completion tokens/s, time to first token p50, the share of guessed
tokens the model confirmed (from /health), and whether every answer is the same text as our server's with
speculation off (greedy decoding: it must be). Contenders run one after another: our server (prompt lookup on,
the default), our server with PROMPT_LOOKUP_TOKENS=0, our server feeding every guess it finds
(PROMPT_LOOKUP_ADAPTIVE=false), and llama.cpp's C++ server when `--llama-server` gives its path (built from the
same llama.cpp as our engine; not part of this repository).

    python benchmarks/copy_bench.py --model models/SmolLM2-135M-Instruct.Q4_1.gguf --threads 2 --clients 1 4
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_bench import engine_counters, serving  # a sibling script, not a package

CODE = '''def load_orders(path):
    """Read orders from a CSV file and return them as a list of dictionaries."""
    orders = []
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        for row in reader:
            order = {
                "id": int(row["id"]),
                "customer": row["customer"].strip(),
                "quantity": int(row["quantity"]),
                "unit_price": float(row["unit_price"]),
                "shipped": row["shipped"].lower() == "yes",
            }
            orders.append(order)
    return orders


def order_total(order, tax_rate):
    """Price of one order with tax."""
    subtotal = order["quantity"] * order["unit_price"]
    return round(subtotal * (1 + tax_rate), 2)


def summarise(orders, tax_rate):
    """Count shipped orders and add up what every customer owes."""
    owed = {}
    shipped = 0
    for order in orders:
        owed[order["customer"]] = owed.get(order["customer"], 0) + order_total(order, tax_rate)
        if order["shipped"]:
            shipped += 1
    return {"shipped": shipped, "owed": owed}
'''
JSON = ('{"store": "North Street", "manager": "Ines Duarte", "opened": 2016, "staff": 14, "open_on_sunday": false, '
        '"products": [{"sku": "A-100", "name": "kettle", "price": 34.5, "stock": 12}, {"sku": "A-101", "name": "toaster", '
        '"price": 29.9, "stock": 4}, {"sku": "B-200", "name": "blender", "price": 79.0, "stock": 7}, {"sku": "B-201", '
        '"name": "mixer", "price": 119.0, "stock": 2}], "address": {"street": "12 North Street", "city": "Leeds", '
        '"postcode": "LS1 4AB"}}')
TASKS = [
    f"Rewrite this code with the function load_orders renamed to read_orders. Output only the code.\n\n{CODE}",
    f"Add a comment line above each function of this code. Output only the code.\n\n{CODE}",
    f"Rewrite this JSON with the staff count changed to 15. Output only the JSON.\n\n{JSON}",
    f"Rewrite this code with the variable owed renamed to balances. Output only the code.\n\n{CODE}",
]


@dataclass
class Outcome:
    label: str
    clients: int
    ttft: list[float] = field(default_factory=list)
    tokens: int = 0
    seconds: float = 0.0
    answers: dict[int, str] = field(default_factory=dict)  # task -> text
    acceptance: float | None = None
    same_as_plain: str = "n/a"

    def row(self) -> str:
        rate = "n/a" if self.acceptance is None else f"{100 * self.acceptance:.0f} %"
        return (f"| {self.label} | {self.clients} | {self.tokens / self.seconds:.1f} | {statistics.median(self.ttft):.2f} | "
                f"{rate} | {self.same_as_plain} |")


async def ask(client: httpx.AsyncClient, base: str, model: str, task: int, max_tokens: int) -> tuple[str, int, float]:
    body = {"model": model, "messages": [{"role": "user", "content": TASKS[task]}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    started, first, text, tokens = time.perf_counter(), None, [], 0
    async with client.stream("POST", f"{base}/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            for choice in chunk.get("choices") or []:
                if choice["delta"].get("content"):
                    first = first or time.perf_counter()
                    text.append(choice["delta"]["content"])
    return "".join(text), tokens, (first or time.perf_counter()) - started


async def copy_load(base: str, model: str, label: str, clients: int, rounds: int, max_tokens: int) -> Outcome:
    outcome = Outcome(label, clients)

    async def client_loop(client: httpx.AsyncClient, index: int) -> None:
        for r in range(rounds):
            task = (index + r) % len(TASKS)
            text, tokens, ttft = await ask(client, base, model, task, max_tokens)
            outcome.answers[task] = text
            outcome.tokens += tokens
            outcome.ttft.append(ttft)

    drafts = ("draft_tokens_total", "accepted_draft_tokens_total")
    before = await engine_counters(base, *drafts)
    # No kept-alive connections: llama-server closes idle ones on its side, and a reused one then fails.
    async with httpx.AsyncClient(timeout=1800, limits=httpx.Limits(max_keepalive_connections=0)) as client:
        started = time.perf_counter()
        await asyncio.gather(*(client_loop(client, i) for i in range(clients)))
        outcome.seconds = time.perf_counter() - started
    after = await engine_counters(base, *drafts)
    if before is not None and after is not None and after[0] > before[0]:
        outcome.acceptance = (after[1] - before[1]) / (after[0] - before[0])
    return outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--rounds", type=int, default=4, help="requests per client")
    parser.add_argument("--max-tokens", type=int, default=400)
    parser.add_argument("--port", type=int, default=8767)
    parser.add_argument("--llama-server", type=Path, help="also measure llama.cpp's C++ server (path to llama-server)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["plain", "eager"],
                        help="leave out the server without lookup, or the one that feeds every guess")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    args = parser.parse_args()

    model = args.model.resolve()
    base = f"http://127.0.0.1:{args.port}"
    slots = max(args.clients)
    ours_env = {"MODEL_DIR": str(model.parent), "DEFAULT_MODEL": model.name, "PRELOAD_MODEL": "true",
                "THREADS": str(args.threads), "CONTEXT_SIZE": "2048", "PARALLEL_SLOTS": str(slots), "LOG_LEVEL": "WARNING"}
    ours = [sys.executable, "-m", "local_llm_api", "serve", "--port", str(args.port)]
    contenders = {
        "lookup": ("local-llm-api (prompt lookup, the default)", ours, ours_env),
        "plain": ("local-llm-api, PROMPT_LOOKUP_TOKENS=0", ours, {**ours_env, "PROMPT_LOOKUP_TOKENS": "0"}),
        # Every guess fed, whatever it costs: what the adaptive decision saves (or misses) on this hardware.
        "eager": ("local-llm-api, PROMPT_LOOKUP_ADAPTIVE=false", ours, {**ours_env, "PROMPT_LOOKUP_ADAPTIVE": "false"}),
    }
    if args.llama_server:
        contenders["llama.cpp"] = (f"llama.cpp server, C++ ({slots} slots)", [
            str(args.llama_server), "-m", str(model), "--port", str(args.port), "-t", str(args.threads), "-tb",
            str(args.threads), "-c", str(2048 * slots), "-np", str(slots)], {})
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory() as workdir:
        os.chdir(workdir)  # keep any .env of the checkout out of the servers' settings
        for key, (label, command, env) in contenders.items():
            if key in args.skip:
                continue
            with serving(command, env, f"{base}/health", label):
                # Our /health answers before the model is loaded (PRELOAD_MODEL): one short request waits for it.
                httpx.post(f"{base}/v1/chat/completions", timeout=600, json={
                    "model": model.name, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
                for clients in args.clients:
                    outcomes.append(asyncio.run(copy_load(base, model.name, label, clients, args.rounds, args.max_tokens)))
    plain = {o.clients: o.answers for o in outcomes if o.label == contenders["plain"][0]}
    for outcome in outcomes:
        reference = plain.get(outcome.clients, {})
        outcome.same_as_plain = "n/a" if not reference else "yes" if outcome.answers == reference else (
            f"{sum(outcome.answers.get(t) == reference.get(t) for t in reference)} of {len(reference)} tasks")
    title = (f"model {model.name}, {args.threads} threads, temperature 0, {args.rounds} requests per client, "
             f"answers up to {args.max_tokens} tokens")
    lines = [title, "",
             "| server | clients | tokens/s | TTFT p50 (s) | guesses confirmed | same text as lookup off |",
             "| --- | --- | --- | --- | --- | --- |", *(o.row() for o in outcomes)]
    print("\n".join(lines))
    if args.markdown:
        args.markdown.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
