"""How long one model look-up (`Catalog.entries()`, run for every request that names a model) takes on a
MODEL_DIR of many models: N GGUF files and N Transformers-style folders of F files each.

    .venv/bin/python benchmarks/discovery_bench.py --models 50 --files 20 --repeat 200 [--baseline ../old-checkout]

With --baseline, the same measurement runs on the same folder with `local_llm_api` imported from another checkout
(a subprocess), and both lines are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from local_llm_api.catalog import Catalog
from local_llm_api.config import load_settings


def make_dir(root: Path, models: int, files: int) -> None:
    for i in range(models):
        (root / f"model-{i}.gguf").write_bytes(b"GGUF" + b"\0" * 60)
        folder = root / f"folder-{i}"
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}))
        for j in range(files - 1):
            (folder / f"part-{j}.bin").write_bytes(b"\0" * 16)


def measure(root: Path, repeat: int) -> list[float]:
    catalog = Catalog.from_settings(load_settings(None, model_dir=root))
    catalog.entries()  # the first look-up reads every folder once
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        catalog.entries()
        times.append(time.perf_counter() - started)
    return sorted(times)


def line(label: str, times: list[float], models: int, files: int) -> str:
    return (f"{label}: {models} models ({files} files per folder): entries() median {statistics.median(times) * 1e3:.2f} ms, "
            f"p95 {times[int(len(times) * 0.95)] * 1e3:.2f} ms over {len(times)} look-ups")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", type=int, default=50)
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--baseline", type=Path, help="another checkout whose local_llm_api to measure too")
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)  # the baseline's run measures this folder
    args = parser.parse_args()
    if args.dir is not None:
        print(json.dumps(measure(args.dir, args.repeat)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_dir(root, args.models, args.files)
        print(line("this checkout", measure(root, args.repeat), 2 * args.models, args.files))
        if args.baseline is not None:
            env = {**os.environ, "PYTHONPATH": str(args.baseline.resolve())}
            out = subprocess.run([sys.executable, __file__, "--dir", str(root), "--repeat", str(args.repeat)], env=env,
                                 capture_output=True, text=True, check=True).stdout
            print(line(f"baseline {args.baseline}", json.loads(out), 2 * args.models, args.files))


if __name__ == "__main__":
    main()
