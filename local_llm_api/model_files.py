"""What a model on disk is, read from its files without loading it (GGUF metadata, a Transformers folder's
configs), and the file operations on MODEL_DIR that Ollama's API offers (delete, copy).

Reading a GGUF header walks its whole tokenizer (a second or two for a big vocabulary), so descriptions
are cached by path, size and modification time, and callers run `describe` off the event loop.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from .catalog import ModelEntry

# Metadata arrays (the tokenizer's vocabulary, merges, scores) are far too long to show; scalars are kept.
_SHOWN_TYPES = (str, int, float, bool)


@dataclass(frozen=True)
class ModelFileFacts:
    format: str  # "gguf" or "safetensors"
    family: str | None = None  # the architecture: llama, qwen2, bert...
    parameter_count: int | None = None
    quantization: str | None = None  # Q4_1, F16, F32...
    context_length: int | None = None  # the training context
    embedding_length: int | None = None
    chat_template: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)  # GGUF-style keys (general.architecture...)
    kv_values_per_token: int = 0  # keys and values one token adds to the KV cache, over all layers (0: unknown)
    vision: bool = False  # it reads images (a vision tower in its folder)

    @property
    def parameter_size(self) -> str | None:
        """135M, 7.2B: as Ollama shows it."""
        if not self.parameter_count:
            return None
        for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
            if self.parameter_count >= scale:
                return f"{self.parameter_count / scale:.3g}{unit}"
        return str(self.parameter_count)


def describe(entry: ModelEntry) -> ModelFileFacts:
    """The facts of a model on disk; a model not downloaded yet (a Hub repo) has only its format."""
    path = entry.path
    if path is None or not path.exists():
        return ModelFileFacts(format="gguf" if entry.backend.value == "llama-cpp" else "safetensors")
    stat = path.stat()
    facts = _describe(path, stat.st_size, stat.st_mtime_ns)
    return replace(facts, vision=True) if path.is_file() and projector_for(entry) is not None else facts


def projector_for(entry: ModelEntry) -> Path | None:
    """A GGUF vision model's projector: MODELS_CONFIG's `mmproj`, else beside the model, named `mmproj-<stem>.gguf`
    or `<stem>.mmproj.gguf`, or the only `mmproj*.gguf` in a folder holding one model (a Hub download's layout)."""
    declared = entry.spec.mmproj if entry.spec else None
    if declared is not None:
        return declared if declared.is_absolute() or entry.path is None else entry.path.parent / declared
    model = entry.path
    if model is None or not model.is_file():
        return None
    for name in (f"mmproj-{model.stem}.gguf", f"{model.stem}.mmproj.gguf"):
        if (model.parent / name).is_file():
            return model.parent / name
    found = sorted(model.parent.glob("mmproj*.gguf"))
    models = [p for p in model.parent.glob("*.gguf") if not p.name.startswith("mmproj")]
    return found[0] if len(found) == 1 and len(models) == 1 else None


def digest(entry: ModelEntry) -> str:
    """A stable identity for this version of the model (name, size, modification time), in Ollama's sha256 form.
    Not the hash of the file's bytes: reading gigabytes on every listing would be too slow."""
    return hashlib.sha256(f"{entry.name}\0{entry.size_bytes}\0{entry.created}".encode()).hexdigest()


@lru_cache(maxsize=64)
def _describe(path: Path, size: int, mtime_ns: int) -> ModelFileFacts:
    if path.is_file():
        return _describe_gguf(path)
    return _describe_folder(path)


def _describe_gguf(path: Path) -> ModelFileFacts:
    from gguf import GGUFReader, LlamaFileType

    try:
        reader = GGUFReader(str(path))
    except (ValueError, OSError, IndexError, KeyError):
        return ModelFileFacts(format="gguf")  # not a readable GGUF: loading it will say why
    meta = {}
    for key, value in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        contents = value.contents()
        if isinstance(contents, _SHOWN_TYPES):
            meta[key] = contents
    arch = meta.get("general.architecture")
    file_type = meta.get("general.file_type")
    quantization = None
    if isinstance(file_type, int):
        try:
            quantization = LlamaFileType(file_type).name.removeprefix("MOSTLY_")
        except ValueError:
            quantization = None
    parameters = sum(int(t.n_elements) for t in reader.tensors)
    meta["general.parameter_count"] = parameters
    template = meta.pop("tokenizer.chat_template", None)
    heads = meta.get(f"{arch}.attention.head_count")
    width = meta.get(f"{arch}.embedding_length")
    kv = 0
    if isinstance(heads, int) and heads and isinstance(width, int):
        kv_heads = meta.get(f"{arch}.attention.head_count_kv", heads)
        key = meta.get(f"{arch}.attention.key_length", width // heads)
        kv = int(meta.get(f"{arch}.block_count", 0)) * int(kv_heads) * (int(key) + int(meta.get(f"{arch}.attention.value_length", key)))
    return ModelFileFacts(format="gguf", family=arch, parameter_count=parameters, quantization=quantization,
                          context_length=meta.get(f"{arch}.context_length"), embedding_length=width,
                          chat_template=template, metadata=meta, kv_values_per_token=kv)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _describe_folder(path: Path) -> ModelFileFacts:
    outer = _read_json(path / "config.json")
    family = outer.get("model_type")
    config = outer.get("text_config") if isinstance(outer.get("text_config"), dict) else outer  # a vision model's LM
    template = _read_json(path / "tokenizer_config.json").get("chat_template")
    if (path / "chat_template.jinja").is_file():
        template = (path / "chat_template.jinja").read_text(encoding="utf-8")
    if not isinstance(template, str):
        template = None  # a list of named templates: the default one is what the backend uses
    parameters, dtype = _safetensors_size(path)
    context = config.get("max_position_embeddings")
    width = config.get("hidden_size")
    meta: dict[str, Any] = {"general.architecture": family, "general.parameter_count": parameters}
    if family:
        meta.update({f"{family}.context_length": context, f"{family}.embedding_length": width,
                     f"{family}.block_count": config.get("num_hidden_layers")})
    heads = config.get("num_attention_heads")
    kv = 0
    if isinstance(heads, int) and heads and isinstance(width, int):
        head_dim = config.get("head_dim") or width // heads
        kv = int(config.get("num_hidden_layers", 0)) * int(config.get("num_key_value_heads") or heads) * int(head_dim) * 2
    return ModelFileFacts(format="safetensors", family=family, parameter_count=parameters, quantization=dtype,
                          context_length=context, embedding_length=width, chat_template=template,
                          metadata={k: v for k, v in meta.items() if v is not None}, kv_values_per_token=kv,
                          vision=isinstance(outer.get("vision_config"), dict))


def _safetensors_size(path: Path) -> tuple[int | None, str | None]:
    """Parameters and their dtype, from the safetensors headers alone."""
    try:
        from safetensors import safe_open
    except ImportError:
        return None, None
    total, dtype = 0, None
    for file in sorted(path.rglob("*.safetensors")):
        try:
            with safe_open(str(file), framework="np") as tensors:
                for name in tensors.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
                    piece = tensors.get_slice(name)
                    count = 1
                    for dim in piece.get_shape():
                        count *= dim
                    total += count
                    dtype = dtype or str(piece.get_dtype())
        except (OSError, ValueError, RuntimeError):
            return None, None
    return total or None, dtype


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def copy(source: Path, target: Path) -> None:
    """Copy a model file or folder, hard-linking where the file system allows (no second copy of the bytes).
    Files are never modified in place by this server, so sharing their inodes is safe."""
    if source.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        _link_or_copy(source, target)
        return
    for file in source.rglob("*"):
        if file.is_file() and not file.is_symlink():  # a link inside a model folder is not followed out of it
            destination = target / file.relative_to(source)
            destination.parent.mkdir(parents=True, exist_ok=True)
            _link_or_copy(file, destination)


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link, else a copy; never through a link that stands at `target` (both fail if anything is there)."""
    try:
        os.link(source, target)
    except FileExistsError:
        raise
    except OSError:
        with source.open("rb") as read, target.open("xb") as write:  # "x": O_EXCL, which refuses an existing link
            shutil.copyfileobj(read, write)
        shutil.copystat(source, target)
