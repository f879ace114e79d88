"""Where an engine step's time goes: the batching engine called in-process (no HTTP), with llama.cpp's decode
and sampling calls timed. Used for the analysis in docs/benchmarks.md.

    python benchmarks/engine_profile.py --model models/SmolLM2-135M-Instruct.Q4_1.gguf --threads 2
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import defaultdict
from pathlib import Path

import llama_cpp

from local_llm_api.backends.base import SamplingParams
from local_llm_api.backends.llama_cpp import LlamaCppBackend
from local_llm_api.catalog import ModelEntry
from local_llm_api.config import BackendChoice, load_settings

timings: dict[object, list[float]] = defaultdict(list)
_decode, _sample = llama_cpp.llama_decode, llama_cpp.llama_sampler_sample


def timed_decode(ctx, batch):  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    result = _decode(ctx, batch)
    timings[("decode", batch.n_tokens)].append(time.perf_counter() - started)
    return result


def timed_sample(sampler, ctx, index):  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    result = _sample(sampler, ctx, index)
    timings["sample"].append(time.perf_counter() - started)
    return result


llama_cpp.llama_decode = timed_decode
llama_cpp.llama_sampler_sample = timed_sample


async def run(model: Path, threads: int, sequences: int, max_tokens: int) -> None:
    settings = load_settings(env_file=None, threads=threads, parallel_slots=sequences, context_size=2048)
    entry = ModelEntry(model.name, BackendChoice.llama_cpp, model, None, model.stat().st_size, 0)
    backend = LlamaCppBackend(entry, settings)
    prompt = backend.tokenize("<|im_start|>user\nWrite a long story about a dragon.<|im_end|>\n<|im_start|>assistant\n", add_special=True)
    params = SamplingParams(max_tokens=max_tokens, temperature=0.7, top_p=0.95, top_k=40, min_p=0.05,
                            repeat_penalty=1.0, logit_bias={0: -100, 2: -100, 4: -100})

    async def one() -> None:
        async for _ in backend.generate(prompt, params):
            pass

    await asyncio.gather(*(one() for _ in range(sequences)))  # warm-up
    timings.clear()
    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(sequences)))
    elapsed = time.perf_counter() - started
    decode_total = sum(sum(v) for k, v in timings.items() if k != "sample")
    steps = {k[1]: (len(v), 1000 * sum(v) / len(v)) for k, v in timings.items() if k != "sample"}
    common = max(steps.items(), key=lambda kv: kv[1][0])
    samples = timings["sample"]
    print(f"{sequences} sequences: {sequences * max_tokens / elapsed:.1f} tokens/s; "
          f"decode of {common[0]} tokens: {common[1][1]:.1f} ms x{common[1][0]}; "
          f"decode {100 * decode_total / elapsed:.0f}% of the time; "
          f"sampling {1000 * sum(samples) / len(samples):.2f} ms per token")
    await backend.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sequences", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args()
    for sequences in args.sequences:
        asyncio.run(run(args.model, args.threads, sequences, args.max_tokens))


if __name__ == "__main__":
    main()
