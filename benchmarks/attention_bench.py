"""Flash attention on or off, on the CPU: llama.cpp's own step times by context length, side by side.

The library alone (no server): a context of SLOTS sequences with a KV stream each (as our engine makes it), each
filled to a context length; then, at that length, a step of one token for one sequence, one token for each
sequence (streams decoding together), and a 32-token read for one sequence (a conversation's next turn); the median
of 4 steps after a warm-up one, each step's tokens removed again. Both settings in one run, one after the other at
every length. Last, how much a token's logits differ between a step of one token and a step of several (the same
tokens after the same 200-token prefix), with each setting.

    python benchmarks/attention_bench.py --model models/SmolLM2-135M-Instruct.Q4_1.gguf --threads 2
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

SETTINGS = {"on": 1, "off": 0}  # llama.cpp's flash_attn_type


class Context:
    """A llama.cpp context of `slots` sequences, each its own KV stream of `per_slot` tokens."""

    def __init__(self, lib: Any, model: Any, flash: int, slots: int, per_slot: int, threads: int) -> None:
        from llama_cpp import _internals

        params = lib.llama_context_default_params()
        params.n_ctx, params.n_seq_max, params.kv_unified = per_slot * slots, slots, False
        params.n_batch = params.n_ubatch = 512
        params.n_threads = params.n_threads_batch = threads
        params.flash_attn_type = flash
        self.lib, self.n_vocab = lib, model.n_vocab()
        self.context = _internals.LlamaContext(model=model, params=params, verbose=False)
        self.batch = lib.llama_batch_init(512, 0, 1)
        self.memory = lib.llama_get_memory(self.context.ctx)

    def decode(self, rows: list[tuple[int, int, int]], logits: bool = False) -> float:
        """One step of (sequence, position, token) rows; its seconds."""
        for i, (seq, position, token) in enumerate(rows):
            self.batch.token[i], self.batch.pos[i], self.batch.n_seq_id[i] = token, position, 1
            self.batch.seq_id[i][0], self.batch.logits[i] = seq, logits or i == len(rows) - 1
        self.batch.n_tokens = len(rows)
        started = time.perf_counter()
        if self.lib.llama_decode(self.context.ctx, self.batch) != 0:
            raise RuntimeError("llama_decode failed")
        return time.perf_counter() - started

    def forget(self, seq: int, since: int) -> None:
        self.lib.llama_memory_seq_rm(self.memory, seq, since, -1)

    def logits(self, row: int) -> np.ndarray:
        return np.ctypeslib.as_array(self.lib.llama_get_logits_ith(self.context.ctx, row), shape=(self.n_vocab,)).copy()

    def close(self) -> None:
        self.lib.llama_batch_free(self.batch)
        self.context.close()


def median_step(context: Context, rows: list[tuple[int, int, int]], at: int) -> float:
    times = []
    for _ in range(5):
        times.append(context.decode(rows))
        for seq in {r[0] for r in rows}:
            context.forget(seq, at)
    return statistics.median(times[1:]) * 1000


def logit_drift(lib: Any, model: Any, flash: int, threads: int, tokens: list[int]) -> float:
    """The largest difference in a logit between reading 16 tokens one per step and four per step."""
    context = Context(lib, model, flash, 1, 1024, threads)
    try:
        runs = []
        for per_step in (1, 4):
            context.forget(0, 0)
            context.decode([(0, i, tokens[i]) for i in range(200)])
            out = []
            for start in range(200, 216, per_step):
                context.decode([(0, start + i, tokens[start + i]) for i in range(per_step)], logits=True)
                out += [context.logits(i) for i in range(per_step)]
            runs.append(np.array(out))
        return float(np.abs(runs[0] - runs[1]).max())
    finally:
        context.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--lengths", type=int, nargs="+", default=[50, 100, 200, 400, 800, 1600, 3200, 6400])
    args = parser.parse_args()

    import llama_cpp
    from llama_cpp import _internals

    model = _internals.LlamaModel(path_model=str(args.model), params=llama_cpp.llama_model_default_params(), verbose=False)
    random.seed(0)
    tokens = [random.randrange(1000, min(40000, model.n_vocab())) for _ in range(max(*args.lengths, 216) + 64)]
    per_slot = max(args.lengths) + 64
    contexts = {name: Context(llama_cpp, model, flash, args.slots, per_slot, args.threads) for name, flash in SETTINGS.items()}
    print(f"model {args.model.name}, {args.threads} threads, {args.slots} sequences of {per_slot} tokens; median step "
          "time (ms), flash attention on / off\n")
    print(f"| context | 1 stream, next token | {args.slots} streams, next token each | 32-token read |")
    print("| --- | --- | --- | --- |")
    filled = 0
    for length in sorted(args.lengths):
        while filled < length:  # every sequence to this length, in 512-token chunks
            n = min(512, length - filled)
            for context in contexts.values():
                for seq in range(args.slots):
                    context.decode([(seq, filled + i, tokens[filled + i]) for i in range(n)])
            filled += n
        cells = []
        for rows in ([(0, length, tokens[length])], [(s, length, tokens[length]) for s in range(args.slots)],
                     [(0, length + i, tokens[length + i]) for i in range(32)]):
            on, off = (median_step(contexts[name], rows, length) for name in SETTINGS)
            cells.append(f"{on:.1f} / {off:.1f}")
        print(f"| {length} | " + " | ".join(cells) + " |", flush=True)
    for context in contexts.values():
        context.close()
    print("\nA token's logits, 16 tokens read one per step against four per step (largest difference):")
    for name, flash in SETTINGS.items():
        print(f"- flash attention {name}: {logit_drift(llama_cpp, model, flash, args.threads, tokens):.4f}")


if __name__ == "__main__":
    main()
