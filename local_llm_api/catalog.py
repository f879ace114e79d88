"""Which models exist: files and folders found in MODEL_DIR, models declared in the MODELS_CONFIG file,
and TRANSFORMERS_DEFAULT_MODEL; and which backend serves each.

`MODEL_BACKEND=auto` (and a declared model without `backend`) goes by the model itself: a `.gguf` file is
llama.cpp's; a folder with `modules.json` is a sentence-transformers embedding model; a folder with
`config.json` is a Transformers model.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .config import BackendChoice, Settings, SettingsError
from .prompting.tool_families import FAMILY_NAMES

log = logging.getLogger(__name__)

Capability = Literal["chat", "completion", "embedding", "rerank"]


class ModelSpec(BaseModel):
    """One model of the models config file; every field but `name` and `path`/`repo` is optional."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="What requests put in 'model'.")
    path: Path | None = Field(None, description="A .gguf file or model folder; relative paths are in MODEL_DIR.")
    repo: str | None = Field(None, description="A Hugging Face repo id, fetched through huggingface_hub's cache.")
    revision: str | None = None
    file: str | None = Field(None, description="With `repo`: the .gguf file of the repo to serve.")
    backend: BackendChoice = BackendChoice.auto
    context_size: int | None = Field(None, ge=1)
    gpu_layers: int | None = Field(None, ge=-1)
    chat_template: str | None = Field(None, description="A Jinja chat template used instead of the model's own.")
    reasoning: str | None = Field(None, pattern=r"^(auto|none|[^,]+,[^,]+)$",
                                  description="How the model marks its reasoning: auto (from the chat template), none "
                                              "(it does not think), or the open and close markers, comma-separated.")
    tool_format: str | None = Field(None, description="The model family whose tool-call format the model writes "
                                    "(hermes, qwen3-coder, llama3, mistral, ...; see docs/models/tool-formats.md); unset: read from the "
                                    "chat template.")
    mmproj: Path | None = Field(None, description="A GGUF vision model's projector (`mmproj-*.gguf`); a relative path "
                                "is beside the model; unset: found there by its name.")
    embedding_only: bool = False
    trust_remote_code: bool = False
    keep_alive: float | None = Field(None, ge=0, description="Seconds idle before unloading; 0 keeps it loaded.")

    @field_validator("tool_format")
    @classmethod
    def _known_format(cls, value: str | None) -> str | None:
        if value is not None and value not in FAMILY_NAMES:
            raise ValueError(f"unknown tool_format '{value}'; one of: {', '.join(FAMILY_NAMES)}")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        if (self.path is None) == (self.repo is None):
            raise ValueError("give exactly one of 'path' and 'repo'")
        return self


class ModelsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: list[ModelSpec]


@dataclass(frozen=True)
class ModelEntry:
    """A model that can be loaded."""

    name: str  # what requests use: path relative to MODEL_DIR, repo id, or the declared name
    backend: BackendChoice  # never `auto` here
    path: Path | None  # local file or folder; None for a repo not downloaded yet
    repo: str | None
    size_bytes: int
    created: int
    spec: ModelSpec | None = None  # the declaration, when the models config file has one

    @property
    def stem(self) -> str:
        return self.name.removesuffix(".gguf")

    @property
    def embedding_only(self) -> bool:
        return self.backend == BackendChoice.sentence_transformers or bool(self.spec and self.spec.embedding_only)

    @property
    def capabilities(self) -> list[Capability]:
        if self.backend == BackendChoice.cross_encoder:
            return ["rerank"]
        return ["embedding"] if self.embedding_only else ["chat", "completion", "embedding"]


def read_models_file(path: Path) -> list[ModelSpec]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        specs = ModelsFile.model_validate(data).models
    except FileNotFoundError:
        raise SettingsError("MODELS_CONFIG", f"file '{path}' does not exist") from None
    except yaml.YAMLError as exc:
        raise SettingsError("MODELS_CONFIG", f"file '{path}' is not valid YAML: {exc}") from None
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"])
        raise SettingsError("MODELS_CONFIG", f"file '{path}': {where}: {error['msg']}") from None
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise SettingsError("MODELS_CONFIG", f"file '{path}' names a model twice")
    return specs


def is_cross_encoder(folder: Path) -> bool:
    """A reranker: saved by sentence-transformers as a CrossEncoder, or a Transformers sequence classifier."""
    for name, check in (("config_sentence_transformers.json", lambda c: c.get("model_type") == "CrossEncoder"),
                        ("config.json", lambda c: any(str(a).endswith("ForSequenceClassification") for a in c.get("architectures") or ()))):
        try:
            config = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(config, dict) and check(config):
            return True
    return False


def detect_backend(path: Path) -> BackendChoice | None:
    """The backend for a model on disk, from what it is; None for anything that is not a model."""
    if path.is_file():  # a vision model's projector (mmproj-*.gguf) is part of its model, not a model
        return BackendChoice.llama_cpp if path.suffix == ".gguf" and not path.name.startswith("mmproj") else None
    if is_cross_encoder(path):
        return BackendChoice.cross_encoder
    if (path / "modules.json").is_file() or (path / "config_sentence_transformers.json").is_file():
        return BackendChoice.sentence_transformers
    if (path / "config.json").is_file():
        return BackendChoice.transformers
    return None


def size_on_disk(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@dataclass(frozen=True)
class _FolderFacts:
    backend: BackendChoice | None
    size: int


class Catalog:
    def __init__(self, settings: Settings, specs: list[ModelSpec]) -> None:
        self.settings = settings
        self.root = settings.model_dir.resolve()
        self.specs = specs
        # What each folder is and its size, by (modification time, file names): see `_folder`.
        self._folders: dict[Path, tuple[tuple[int, frozenset[str]], _FolderFacts]] = {}
        # Entries of MODEL_DIR the server may not read (name -> why): skipped, logged once, named in a 404.
        self.unreadable: dict[str, str] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> Catalog:
        specs = read_models_file(settings.models_config) if settings.models_config else []
        return cls(settings, specs)

    def entries(self) -> list[ModelEntry]:
        """Declared models first, then TRANSFORMERS_DEFAULT_MODEL, then what MODEL_DIR holds."""
        found = [self._declared(spec) for spec in self.specs]
        default = self.settings.transformers_default_model
        if default and all(e.name != default for e in found):
            found.append(self._declared(ModelSpec(name=default, **_source_of(default, self.root))))
        taken = {e.path.resolve() for e in found if e.path is not None}
        discovered = self._discovered()
        if taken:
            discovered = [e for e in discovered if e.path is not None and e.path.resolve() not in taken]
        return found + discovered

    def inside_root(self, path: Path) -> bool:
        return path.resolve().is_relative_to(self.root)

    def _declared(self, spec: ModelSpec) -> ModelEntry:
        path = spec.path if spec.path is None or spec.path.is_absolute() else self.settings.model_dir / spec.path
        if path is not None and path.exists():
            stat = path.stat()
            backend = self._backend_for(path, spec.backend) or BackendChoice.transformers
            size = stat.st_size if path.is_file() else self._folder(path).size
            return ModelEntry(spec.name, backend, path, None, size, int(stat.st_mtime), spec)
        backend = spec.backend
        if backend == BackendChoice.auto:
            backend = BackendChoice.llama_cpp if (spec.file or "").endswith(".gguf") else BackendChoice.transformers
        return ModelEntry(spec.name, backend, path, spec.repo, 0, 0, spec)

    def _discovered(self) -> list[ModelEntry]:
        """Walk MODEL_DIR (on every look-up, so it stays cheap: what a folder is comes from `_folder`): hidden
        folders such as download caches and the insides of model folders are not entered."""
        if not self.root.is_dir():
            return []
        entries: list[ModelEntry] = []
        unreadable: dict[str, str] = {}
        for folder, subfolders, files in os.walk(self.root):
            here = Path(folder)
            candidates = [here / f for f in files if not f.startswith(".")]
            keep = []
            for name in sorted(subfolders):
                sub = here / name
                if name.startswith("."):
                    continue
                try:
                    is_model = self._folder(sub).backend is not None
                except OSError as exc:  # one folder we may not read must not hide the others
                    unreadable[sub.relative_to(self.root).as_posix()] = exc.strerror or str(exc)
                    continue
                if is_model:
                    candidates.append(sub)  # a model folder: a model, not more folders to search
                else:
                    keep.append(name)
            subfolders[:] = keep
            for path in candidates:
                name = path.relative_to(self.root).as_posix()
                # os.walk does not follow links, so only a candidate itself can lead out of MODEL_DIR.
                if path.is_symlink() and not self.inside_root(path):
                    continue  # symlinks that lead out of MODEL_DIR are not ours to serve
                try:
                    backend = self._backend_for(path, BackendChoice.auto)
                    if backend is not None:
                        stat = path.stat()
                        size = stat.st_size if path.is_file() else self._folder(path).size
                        entries.append(ModelEntry(name, backend, path, None, size, int(stat.st_mtime)))
                except OSError as exc:
                    unreadable[name] = exc.strerror or str(exc)
        for name in unreadable.keys() - self.unreadable.keys():
            log.warning("MODEL_DIR entry %s cannot be read (%s): not served", name, unreadable[name])
        self.unreadable = unreadable
        return sorted(entries, key=lambda e: e.name)

    def _folder(self, path: Path) -> _FolderFacts:
        """What a folder is and its size, remembered while the folder's modification time and file names stay the
        same (names too: some file systems keep times in whole seconds), so that a look-up does not read every
        model's configs and files again."""
        key = (path.stat().st_mtime_ns, frozenset(os.listdir(path)))
        known = self._folders.get(path)
        if known is not None and known[0] == key:
            return known[1]
        detected = detect_backend(path)
        facts = _FolderFacts(detected, size_on_disk(path) if detected is not None else 0)
        self._folders[path] = (key, facts)
        return facts

    def _backend_for(self, path: Path, declared: BackendChoice) -> BackendChoice | None:
        detected = detect_backend(path) if path.is_file() else self._folder(path).backend
        if declared != BackendChoice.auto:
            return declared if detected is not None else None
        forced = self.settings.model_backend
        if detected == BackendChoice.llama_cpp and forced == BackendChoice.transformers:
            return BackendChoice.transformers  # Transformers reads GGUF files too (dequantised)
        if detected not in (None, BackendChoice.llama_cpp) and forced == BackendChoice.llama_cpp:
            return None  # MODEL_BACKEND=llama-cpp: GGUF files only
        return detected


def _source_of(default: str, root: Path) -> dict[str, object]:
    """TRANSFORMERS_DEFAULT_MODEL is a folder (absolute, or in MODEL_DIR) or else a Hugging Face repo id."""
    path = Path(default)
    if path.is_absolute() or (root / path).exists():
        return {"path": path, "backend": BackendChoice.transformers}
    return {"repo": default, "backend": BackendChoice.transformers}
