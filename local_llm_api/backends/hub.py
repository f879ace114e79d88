"""Hugging Face Hub models through huggingface_hub's own cache (HF_HOME / HF_HUB_CACHE, HF_TOKEN,
HF_ENDPOINT and HF_HUB_OFFLINE work as everywhere else)."""

from __future__ import annotations

from pathlib import Path

from .base import ModelLoadError

# What a Transformers or sentence-transformers model needs; repos often carry other formats too.
MODEL_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.py", "*.tiktoken", "*/*.json"]


def fetch(repo: str, revision: str | None = None, file: str | None = None) -> Path:
    """The local folder (or file, with `file`) of a Hub model: downloaded or resumed when the Hub can be
    reached, read from the cache when it cannot."""
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        if file:
            return Path(hf_hub_download(repo, file, revision=revision))
        return Path(snapshot_download(repo, revision=revision, allow_patterns=MODEL_FILES))
    except LocalEntryNotFoundError as exc:
        raise ModelLoadError(
            f"'{repo}' is not in the local Hugging Face cache and the Hub could not be reached to download it "
            f"(offline, or HF_HUB_OFFLINE set): {exc}"
        ) from exc
    except RepositoryNotFoundError as exc:
        raise ModelLoadError(f"the Hugging Face Hub has no repo '{repo}' (or it needs a token: set HF_TOKEN)") from exc
    except (HfHubHTTPError, OSError) as exc:
        raise ModelLoadError(f"downloading '{repo}' from the Hugging Face Hub failed: {exc}") from exc
