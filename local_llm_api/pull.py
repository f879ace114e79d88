"""Pulling models from the Hugging Face Hub into MODEL_DIR, with huggingface_hub (resumable downloads;
HF_ENDPOINT, HF_TOKEN work as everywhere else).

A GGUF file lands as MODEL_DIR/<file>; a Transformers or sentence-transformers repo as the folder
MODEL_DIR/<repo name>. Either way discovery finds it at once. Progress is kept in a `PullStatus` that
`/models` shows while the download runs; the terminal gets huggingface_hub's own progress bars.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, Literal

from .backends.hub import MODEL_FILES


class PullError(Exception):
    """The repo cannot be pulled as asked; the message says why."""


@dataclass
class PullStatus:
    repo: str
    name: str  # what the model will be called: the GGUF file or the folder, relative to MODEL_DIR
    file: str | None  # the GGUF file, or None for a whole model folder
    state: Literal["downloading", "done", "failed"] = "downloading"
    completed: int = 0  # bytes (a GGUF file) or files (a model folder) done so far
    total: int | None = None
    unit: Literal["bytes", "files"] = "bytes"
    error: str | None = None
    size: int = 0  # bytes to download, as the Hub lists them


def plan(repo: str, file: str | None = None, revision: str | None = None, quant: str | None = None,
         max_bytes: int = 0) -> PullStatus:
    """What pulling `repo` means: one GGUF file (named, the one whose name holds `quant` such as Q4_K_M, or the
    only one), or the whole model folder; refused when it is larger than `max_bytes` (0: no cap)."""
    status = _choose(repo, file, revision, quant)
    if max_bytes and status.size > max_bytes:
        raise PullError(f"'{repo}' is {status.size / 2**30:.1f} GiB to download, more than PULL_MAX_BYTES allows "
                        f"({max_bytes / 2**30:.1f} GiB)")
    return status


def _choose(repo: str, file: str | None, revision: str | None, quant: str | None) -> PullStatus:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError, RevisionNotFoundError
    from huggingface_hub.hf_api import RepoFile

    try:
        sizes = {entry.path: getattr(entry, "size", 0) or 0
                 for entry in HfApi().list_repo_tree(repo, revision=revision, recursive=True) if isinstance(entry, RepoFile)}
        files = list(sizes)
    except HFValidationError as exc:
        raise PullError(f"'{repo}' is not a valid Hugging Face repo id: {exc}") from None
    except RepositoryNotFoundError:
        raise PullError(f"the Hugging Face Hub has no repo '{repo}' (or it needs a token: set HF_TOKEN)") from None
    except RevisionNotFoundError:
        raise PullError(f"repo '{repo}' has no revision '{revision}'") from None
    except Exception as exc:  # noqa: BLE001  (HTTP and network errors differ between huggingface_hub versions)
        raise PullError(f"the Hugging Face Hub could not be reached for '{repo}': {type(exc).__name__}: {exc}") from None
    ggufs = sorted(f for f in files if f.endswith(".gguf"))
    if file is not None:
        if file not in files:
            raise PullError(f"repo '{repo}' has no file '{file}'" + (f"; its GGUF files: {', '.join(ggufs)}" if ggufs else ""))
        if not file.endswith(".gguf"):
            raise PullError(f"'{file}' is not a .gguf file; leave --file out to pull the whole model folder")
        return PullStatus(repo, Path(file).name, file, size=sizes[file])
    if quant is not None:
        matching = [f for f in ggufs if quant.lower() in Path(f).name.lower()]
        if len(matching) != 1:
            found = "none" if not matching else f"{len(matching)}"
            raise PullError(f"repo '{repo}' has {found} GGUF files matching '{quant}'; its GGUF files: {', '.join(ggufs) or 'none'}")
        return PullStatus(repo, Path(matching[0]).name, matching[0], size=sizes[matching[0]])
    if "config.json" in files or "modules.json" in files:
        wanted = sum(size for name, size in sizes.items() if any(fnmatch(name, pattern) for pattern in MODEL_FILES))
        return PullStatus(repo, repo.split("/")[-1], None, unit="files", size=wanted)
    if len(ggufs) == 1:
        return PullStatus(repo, Path(ggufs[0]).name, ggufs[0], size=sizes[ggufs[0]])
    if ggufs:
        raise PullError(f"repo '{repo}' has {len(ggufs)} GGUF files; choose one with file: {', '.join(ggufs)}")
    raise PullError(f"repo '{repo}' has neither GGUF files nor a model config.json")


def download(status: PullStatus, model_dir: Path, revision: str | None = None, *, show_progress: bool = False) -> Path:
    """Download what `status` planned into `model_dir`, resuming a partial download; updates `status`."""
    from huggingface_hub import hf_hub_download, snapshot_download

    progress = _progress_class(status, show_progress)
    model_dir.mkdir(parents=True, exist_ok=True)
    for written in (model_dir / status.name, model_dir / (status.file or status.name)):
        if not written.resolve().is_relative_to(model_dir.resolve()):  # a link in MODEL_DIR pointing out of it
            status.state, status.error = "failed", f"{written} leads outside MODEL_DIR"
            raise PullError(f"'{written.relative_to(model_dir)}' leads outside MODEL_DIR (through a symbolic link); "
                            "pulls are written inside it only")
    try:
        if status.file is not None:
            path = Path(hf_hub_download(status.repo, status.file, revision=revision, local_dir=model_dir, tqdm_class=progress))
            target = model_dir / status.name
            if path != target:  # a file in a subfolder of the repo: keep it at the top of MODEL_DIR
                path.replace(target)
        else:
            target = model_dir / status.name
            snapshot_download(status.repo, revision=revision, local_dir=target, allow_patterns=MODEL_FILES, tqdm_class=progress)
    except Exception as exc:
        status.state, status.error = "failed", f"{type(exc).__name__}: {exc}"
        raise PullError(f"downloading '{status.repo}' failed: {exc}") from exc
    status.state = "done"
    return target


def _progress_class(status: PullStatus, show: bool) -> Any:
    """A tqdm class that also writes its count into `status` (huggingface_hub drives it)."""
    from tqdm.auto import tqdm

    class Progress(tqdm):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            # A folder pull has several bars (bytes moved, bytes written, files); follow the files one.
            self._tracked = status.unit == "bytes" or str(kwargs.get("desc", "")).startswith("Fetching")
            kwargs["disable"] = not show
            super().__init__(*args, **kwargs)
            if self._tracked:
                status.total = int(kwargs["total"]) if kwargs.get("total") else status.total
                status.completed = int(kwargs.get("initial") or 0)  # a resumed download starts part-way

        def update(self, n: float | None = 1) -> bool | None:
            if self._tracked:
                status.completed += int(n or 0)
            return super().update(n)

    return Progress
