"""Images: time to first token of a request with a picture the server has not seen (the vision tower encodes it,
then the prompt is read) and of the same conversation sent again with another question (the picture and the text
before it from the prefix cache), against a text-only request; ours and llama.cpp's C++ server (`--mmproj`) when
`--llama-server` gives its path, on the same GGUF and projector, one after the other.

Each contender: a warm-up, then for each of `--pictures` different pictures (distinct colours, `--size` pixels a
side): the picture and a question (cold), the same picture and another question (cached), and a text-only question.
Reported: the median of each, and each server's count of prompt tokens.

    python -c "from tests.models import tiny_llava_gguf; print(*tiny_llava_gguf())"   # the tests' tiny model
    python benchmarks/vision_bench.py --model M.gguf --mmproj mmproj-M.gguf --threads 2 --llama-server path/to/llama-server
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from restart_bench import ready  # sibling scripts, not a package
from serve_bench import one_request, serving

QUESTIONS = ["What is in this picture?", "Which colour is it, in one word?"]


def picture(index: int, size: int) -> str:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (size, size), ((index * 67) % 256, (index * 131) % 256, (index * 199) % 256)).save(out, "PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


async def ask(base: str, model: str, content: list[dict] | str) -> tuple[float, int]:
    """Time to first token, and the prompt tokens the server counted."""
    body = {"model": model, "max_tokens": 4, "temperature": 0, "messages": [{"role": "user", "content": content}],
            "logit_bias": {"0": -100, "2": -100}}  # an answer, not an end at once (SmolLM2's end tokens)
    async with httpx.AsyncClient(timeout=600) as client:
        _, ttft = await one_request(client, f"{base}/v1/chat/completions", {**body, "stream": True})
        usage = (await client.post(f"{base}/v1/chat/completions", json={**body, "max_tokens": 1})).json()["usage"]
    return ttft, usage["prompt_tokens"]


def run(command: list[str], env: dict[str, str], base: str, model: str, pictures: int, size: int, ours: bool) -> dict:
    cold, cached, text = [], [], []
    with serving(command, env, f"{base}/health", "the server"):
        ready(base, ours)
        asyncio.run(ask(base, model, [{"type": "image_url", "image_url": {"url": picture(999, size)}},
                                      {"type": "text", "text": QUESTIONS[0]}]))  # warm-up
        for i in range(pictures):
            image = {"type": "image_url", "image_url": {"url": picture(i, size)}}
            seconds, with_image = asyncio.run(ask(base, model, [image, {"type": "text", "text": QUESTIONS[0]}]))
            cold.append(seconds)
            cached.append(asyncio.run(ask(base, model, [image, {"type": "text", "text": QUESTIONS[1]}]))[0])
            text.append(asyncio.run(ask(base, model, f"Question {i}: {QUESTIONS[0]}"))[0])
    return {"cold": statistics.median(cold), "cached": statistics.median(cached), "text": statistics.median(text),
            "tokens": with_image}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="the text GGUF")
    parser.add_argument("--mmproj", type=Path, required=True, help="its projector")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pictures", type=int, default=5)
    parser.add_argument("--size", type=int, default=256, help="pixels a side of each picture (resized by the model)")
    parser.add_argument("--port", type=int, default=8768)
    parser.add_argument("--llama-server", type=Path, help="also measure llama.cpp's C++ server (path to llama-server)")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    args = parser.parse_args()
    base = f"http://127.0.0.1:{args.port}"
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        os.chdir(workdir)  # keep any .env of the checkout out of the servers' settings
        models = Path(workdir) / "models"
        models.mkdir()
        shutil.copy(args.model, models / args.model.name)
        shutil.copy(args.mmproj, models / f"mmproj-{args.model.name}")  # found beside the model by its name
        contenders = {"local-llm-api": ([sys.executable, "-m", "local_llm_api", "serve", "--port", str(args.port)], {
            "MODEL_DIR": str(models), "DEFAULT_MODEL": args.model.name, "PRELOAD_MODEL": "true", "THREADS": str(args.threads),
            "CONTEXT_SIZE": "2048", "PARALLEL_SLOTS": "2", "LOG_LEVEL": "WARNING"}, True)}
        if args.llama_server:
            contenders["llama.cpp server, C++"] = ([
                str(args.llama_server), "-m", str(args.model), "--mmproj", str(args.mmproj), "--port", str(args.port),
                "-t", str(args.threads), "-tb", str(args.threads), "-c", "4096", "-np", "2", "--jinja"], {}, False)
        for label, (command, env, ours) in contenders.items():
            found = run(command, env, base, args.model.name, args.pictures, args.size, ours)
            row = (f"| {label} | {found['tokens']} | {found['cold'] * 1000:.1f} | {found['cached'] * 1000:.1f} | "
                   f"{found['text'] * 1000:.1f} |")
            rows.append(row)
            print(row, flush=True)
    lines = [f"model {args.model.name} with {args.mmproj.name}, {args.threads} threads, {args.pictures} pictures of "
             f"{args.size}x{args.size} pixels, 4-token answers, temperature 0; medians", "",
             "| server | prompt tokens (picture and question) | TTFT, new picture (ms) | TTFT, same picture again, "
             "another question (ms) | TTFT, text only (ms) |", "| --- | --- | --- | --- | --- |", *rows]
    print("\n" + "\n".join(lines))
    if args.markdown:
        args.markdown.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
