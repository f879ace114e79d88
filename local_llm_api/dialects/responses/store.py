"""Stored responses, so that `previous_response_id` continues a conversation and `GET /v1/responses/{id}`
works, across restarts: one SQLite file in DATA_DIR, bounded by count and age, each response readable only
with the API key that created it (its SHA-256 is stored, never the key)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,          -- SHA-256 of the API key that created it ('' when keys are off)
    created_at REAL NOT NULL,
    response TEXT NOT NULL,       -- the response object, as JSON
    input_items TEXT NOT NULL,    -- this request's input items, as JSON
    context TEXT NOT NULL         -- every item the model read before answering (earlier turns included), as JSON
);
CREATE INDEX IF NOT EXISTS responses_created ON responses (created_at);
"""


@dataclass(frozen=True)
class StoredResponse:
    response: dict[str, Any]
    input_items: list[dict[str, Any]]
    context: list[dict[str, Any]]


def owner_of(api_key: str | None) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest() if api_key else ""


class ResponseStore:
    def __init__(self, path: Path, max_count: int, max_age_seconds: float) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")  # a crash mid-write leaves the file consistent
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()
        self.max_count = max_count
        self.max_age_seconds = max_age_seconds

    def _put(self, owner: str, response: dict[str, Any], input_items: list[dict[str, Any]], context: list[dict[str, Any]]) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?)",
                             (response["id"], owner, time.time(), json.dumps(response), json.dumps(input_items),
                              json.dumps(context)))
            if self.max_age_seconds:
                self._db.execute("DELETE FROM responses WHERE created_at < ?", (time.time() - self.max_age_seconds,))
            if self.max_count:
                self._db.execute("DELETE FROM responses WHERE id NOT IN "
                                 "(SELECT id FROM responses ORDER BY created_at DESC, rowid DESC LIMIT ?)", (self.max_count,))

    def _get(self, owner: str, response_id: str) -> StoredResponse | None:
        with self._lock:
            row = self._db.execute("SELECT response, input_items, context, created_at FROM responses WHERE id = ? AND owner = ?",
                                   (response_id, owner)).fetchone()
        if row is None or (self.max_age_seconds and row[3] < time.time() - self.max_age_seconds):
            return None
        return StoredResponse(json.loads(row[0]), json.loads(row[1]), json.loads(row[2]))

    def _delete(self, owner: str, response_id: str) -> bool:
        with self._lock:
            return self._db.execute("DELETE FROM responses WHERE id = ? AND owner = ?", (response_id, owner)).rowcount > 0

    async def put(self, owner: str, response: dict[str, Any], input_items: list[dict[str, Any]], context: list[dict[str, Any]]) -> None:
        await asyncio.to_thread(self._put, owner, response, input_items, context)

    async def get(self, owner: str, response_id: str) -> StoredResponse | None:
        return await asyncio.to_thread(self._get, owner, response_id)

    async def delete(self, owner: str, response_id: str) -> bool:
        return await asyncio.to_thread(self._delete, owner, response_id)

    def close(self) -> None:
        with self._lock:
            self._db.close()
