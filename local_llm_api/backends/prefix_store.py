"""The prefix cache's disk tier: the KV state of long prompt prefixes, kept under DATA_DIR across evictions,
unloads and restarts (GGUF engine).

An agent's first turn is a long cold prompt (Codex CLI's ~9,000 tokens, Claude Code's ~20,000), the same every
session; reading it takes minutes on a CPU, while loading its saved KV state takes a fraction of a second. The engine
saves a slot's state (llama.cpp's sequence state) when the slot's cache is about to be dropped and when the model
is unloaded or the server stops; a new prompt that shares a stored prefix longer than any slot holds starts from it.

One file per prefix, `<sha256 of its tokens>.kv` in a folder named by the cache key (the model file's identity and
every setting that changes the KV: context per slot, KV type, flash attention, GPU layers, llama.cpp's version), so
that a state is never loaded into a model it was not made by. A file is written to a temporary name and renamed
(atomic: readers and other servers sharing DATA_DIR never see half a file), and checked when read (magic, key, sizes,
a BLAKE2 digest of the state): a truncated, corrupt or foreign file is removed, never loaded. The folder is held under
PREFIX_CACHE_DISK bytes, least recently used out.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .engine import common_prefix

log = logging.getLogger("local_llm_api.prefix_store")

MAGIC = b"LLAPIKV1"
SUFFIX = ".kv"
BAD_FILE = (OSError, ValueError, KeyError, TypeError, struct.error)  # what reading a damaged or foreign file raises


@dataclass
class StoredPrefix:
    path: Path
    tokens: list[int]
    size: int  # bytes of the file


def cache_key(**parts: object) -> str:
    """A short digest of what the stored states depend on."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def tokens_name(tokens: list[int]) -> str:
    return hashlib.sha256(np.asarray(tokens, dtype="<i4").tobytes()).hexdigest()[:32] + SUFFIX


class PrefixStore:
    def __init__(self, folder: Path, key: str, budget_bytes: int) -> None:
        self.folder = folder / key
        self.key = key
        self.budget = budget_bytes
        self._lock = threading.Lock()
        self._entries: dict[str, StoredPrefix] = {}
        self._seen_mtime = -1.0
        self.folder.mkdir(parents=True, exist_ok=True)
        self._rescan()

    # ---------------------------------------------------------------- reading

    def best(self, prompt: list[int]) -> tuple[StoredPrefix, int] | None:
        """The stored prefix sharing the most tokens with `prompt`, and how many (None: none shares any)."""
        self._rescan_if_changed()
        with self._lock:
            entries = list(self._entries.values())
        found = max(((e, common_prefix(e.tokens, prompt)) for e in entries), key=lambda pair: pair[1], default=None)
        return found if found is not None and found[1] > 0 else None

    def covers(self, tokens: list[int]) -> bool:
        """Whether a stored prefix already starts with all of `tokens` (saving them again would add nothing)."""
        self._rescan_if_changed()
        with self._lock:
            return any(len(e.tokens) >= len(tokens) and e.tokens[: len(tokens)] == tokens for e in self._entries.values())

    def read(self, entry: StoredPrefix) -> bytes | None:
        """The state of a stored prefix, checked; a file that fails a check is removed (None)."""
        try:
            with entry.path.open("rb") as f:
                header, tokens = self._read_header(f)
                state = f.read(header["state_bytes"] + 1)
        except BAD_FILE as exc:
            self._drop(entry, f"unreadable: {exc}")
            return None
        if len(state) != header["state_bytes"] or hashlib.blake2b(state, digest_size=16).hexdigest() != header["digest"]:
            self._drop(entry, "truncated or corrupt")
            return None
        if tokens != entry.tokens:
            self._drop(entry, "changed on disk")
            return None
        try:
            os.utime(entry.path)  # recently used: last out
        except OSError:
            pass
        return state

    def _read_header(self, f: object) -> tuple[dict[str, int | str], list[int]]:
        read = f.read  # type: ignore[attr-defined]
        if read(len(MAGIC)) != MAGIC:
            raise ValueError("not a prefix-cache file")
        (length,) = struct.unpack("<I", read(4))
        if length > 1 << 16:
            raise ValueError("header too long")
        header = json.loads(read(length))
        if header.get("key") != self.key:
            raise ValueError("made by another model or other settings")
        raw = read(4 * int(header["tokens"]))
        if len(raw) != 4 * int(header["tokens"]):
            raise ValueError("truncated")
        return header, np.frombuffer(raw, dtype="<i4").tolist()

    # ---------------------------------------------------------------- writing

    def write(self, tokens: list[int], state: bytes | memoryview) -> Path | None:
        """Store a prefix's state (atomically), then hold the folder under the budget. None: not written (too big
        for the budget, or the disk refused: the server goes on without it)."""
        header = json.dumps({"key": self.key, "tokens": len(tokens), "state_bytes": len(state),
                             "digest": hashlib.blake2b(state, digest_size=16).hexdigest()}).encode()
        size = len(MAGIC) + 4 + len(header) + 4 * len(tokens) + len(state)
        if size > self.budget:
            return None
        path = self.folder / tokens_name(tokens)
        temporary = self.folder / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            with temporary.open("wb") as f:
                f.write(MAGIC + struct.pack("<I", len(header)) + header)
                f.write(np.asarray(tokens, dtype="<i4").tobytes())
                f.write(state)
            os.replace(temporary, path)
        except OSError as exc:
            log.warning("could not store a prompt prefix in %s: %s", self.folder, exc)
            temporary.unlink(missing_ok=True)
            return None
        with self._lock:
            self._entries[path.name] = StoredPrefix(path, list(tokens), size)
        self._hold_budget()
        return path

    def _hold_budget(self) -> None:
        """Remove the least recently used files until the folder holds at most the budget (other servers' files too)."""
        files = []
        for path in self.folder.glob(f"*{SUFFIX}"):
            try:
                stat = path.stat()
            except OSError:
                continue
            files.append((stat.st_mtime, stat.st_size, path))
        total = sum(size for _, size, _ in files)
        for _, size, path in sorted(files, key=lambda f: f[0]):
            if total <= self.budget:
                break
            path.unlink(missing_ok=True)
            total -= size
            with self._lock:
                self._entries.pop(path.name, None)

    # ---------------------------------------------------------------- the index

    def _rescan_if_changed(self) -> None:
        try:
            mtime = self.folder.stat().st_mtime
        except OSError:
            return
        if mtime != self._seen_mtime:
            self._rescan()

    def _rescan(self) -> None:
        """Read the headers of the folder's files (another server sharing DATA_DIR may have written some)."""
        try:
            self._seen_mtime = self.folder.stat().st_mtime
            paths = list(self.folder.glob(f"*{SUFFIX}"))
        except OSError:
            return
        entries: dict[str, StoredPrefix] = {}
        for path in paths:
            with self._lock:
                known = self._entries.get(path.name)
            if known is not None:
                entries[path.name] = known
                continue
            try:
                with path.open("rb") as f:
                    header, tokens = self._read_header(f)
                stat = path.stat()
            except BAD_FILE as exc:
                self._drop(StoredPrefix(path, [], 0), f"unreadable header: {exc}")
                continue
            entries[path.name] = StoredPrefix(path, tokens, stat.st_size)
        with self._lock:
            self._entries = entries

    def _drop(self, entry: StoredPrefix, why: str) -> None:
        log.warning("prefix cache: removed %s (%s)", entry.path.name, why)
        entry.path.unlink(missing_ok=True)
        with self._lock:
            self._entries.pop(entry.path.name, None)

    def total_bytes(self) -> int:
        with self._lock:
            return sum(e.size for e in self._entries.values())

    def count(self) -> int:
        with self._lock:
            return len(self._entries)
