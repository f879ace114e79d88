"""The prefix cache's disk tier (GGUF): a long prompt prefix read once is kept under DATA_DIR when its slot is
reused, the model unloaded or the server stopped, and a later prompt that shares it (after a restart too) reads
only what is new, with the same greedy answer. Files are checked when read (a truncated, corrupt or foreign one
is removed, never loaded), the folder holds its budget, and two writers sharing it never leave half a file."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx

from local_llm_api.backends.prefix_store import MAGIC, PrefixStore, cache_key

from .conftest import running_server

# About 1,300 tokens of SmolLM2's tokenizer: past the disk tier's 1,024-token floor.
MANUAL = "You are a careful assistant for a hardware shop. " + " ".join(
    f"Rule {i}: item {i} costs {i * 3} euros and ships in {i % 5 + 1} days." for i in range(90))
DISK = {"REPRODUCIBLE": "false", "PARALLEL_SLOTS": "1", "CONTEXT_SIZE": "4096"}


def ask(client: httpx.Client, question: str) -> dict:
    response = client.post("/v1/chat/completions", json={
        "messages": [{"role": "system", "content": MANUAL}, {"role": "user", "content": question}],
        "max_tokens": 12, "temperature": 0}, timeout=300)
    assert response.status_code == 200, response.text
    return response.json()


def cached(answer: dict) -> int:
    return answer["usage"]["prompt_tokens_details"]["cached_tokens"]


def engine_stats(client: httpx.Client) -> dict:
    return next(iter(client.get("/health").json()["engines"].values()))


def stored_files(data: Path) -> list[Path]:
    return sorted(data.glob("prefix-cache/*/*.kv"))


def test_a_restart_reads_only_what_is_new_and_answers_the_same(tmp_path: Path, model_dir: Path) -> None:
    data = tmp_path / "data"
    with running_server(tmp_path, model_dir, DATA_DIR=str(data), **DISK) as server, server.client() as client:
        cold = ask(client, "What does item 7 cost?")
        assert cached(cold) == 0
    assert len(stored_files(data)) == 1  # written at shutdown
    with running_server(tmp_path, model_dir, DATA_DIR=str(data), **DISK) as server, server.client() as client:
        warm = ask(client, "What does item 7 cost?")
        assert cached(warm) >= 1024  # the manual came from disk
        assert engine_stats(client)["disk_prompt_tokens_total"] == cached(warm)
        other = ask(client, "How long does item 12 take to ship?")  # the same manual, a new question: from the slot
        assert cached(other) >= 1024
    # Without the disk tier the same request reads everything and gives the same greedy answer.
    with running_server(tmp_path, model_dir, DATA_DIR=str(tmp_path / "other"), PREFIX_CACHE_DISK="0",
                        **DISK) as server, server.client() as client:
        plain = ask(client, "What does item 7 cost?")
        assert cached(plain) == 0 and not (tmp_path / "other" / "prefix-cache").exists()
    assert warm["choices"][0]["message"]["content"] == plain["choices"][0]["message"]["content"]
    assert warm["choices"][0]["message"]["content"] == cold["choices"][0]["message"]["content"]


def test_a_slot_given_to_another_prompt_keeps_its_prefix_on_disk(tmp_path: Path, model_dir: Path) -> None:
    data = tmp_path / "data"
    with running_server(tmp_path, model_dir, DATA_DIR=str(data), **DISK) as server, server.client() as client:
        ask(client, "What does item 7 cost?")
        # One slot: another long prompt takes it, and the manual's KV goes to disk first.
        response = client.post("/v1/completions", json={"prompt": "Once upon a time. " * 300, "max_tokens": 2},
                               timeout=300)
        assert response.status_code == 200, response.text
        assert engine_stats(client)["disk_prefixes_saved_total"] >= 1
        again = ask(client, "What does item 9 cost?")
        assert cached(again) >= 1024 and engine_stats(client)["disk_prompt_tokens_total"] >= 1024


def test_a_corrupt_file_is_removed_and_the_prompt_read_again(tmp_path: Path, model_dir: Path) -> None:
    data = tmp_path / "data"
    with running_server(tmp_path, model_dir, DATA_DIR=str(data), **DISK) as server, server.client() as client:
        reference = ask(client, "What does item 7 cost?")
    [stored] = stored_files(data)
    raw = bytearray(stored.read_bytes())
    raw[-100] ^= 0xFF  # a flipped bit in the state
    stored.write_bytes(bytes(raw))
    with running_server(tmp_path, model_dir, DATA_DIR=str(data), **DISK) as server, server.client() as client:
        answer = ask(client, "What does item 7 cost?")
        assert cached(answer) == 0 and answer["choices"][0]["message"]["content"] == reference["choices"][0]["message"]["content"]
        assert "truncated or corrupt" in server.wait_for_log("truncated or corrupt") and not stored.exists()
        assert client.get("/health").json()["status"] == "ok"


# ---------------------------------------------------------------- the store itself


def store(folder: Path, budget: int = 10**9, key: str = "k") -> PrefixStore:
    return PrefixStore(folder, cache_key(name=key), budget)


def test_truncated_foreign_and_junk_files_are_removed_never_loaded(tmp_path: Path) -> None:
    mine = store(tmp_path)
    tokens = list(range(2000))
    path = mine.write(tokens, b"state" * 1000)
    assert path is not None and mine.read(mine.best(tokens)[0]) == b"state" * 1000  # type: ignore[index]
    path.write_bytes(path.read_bytes()[:-10])  # truncated
    found = mine.best(tokens)
    assert found is not None and mine.read(found[0]) is None and not path.exists()
    # A file another model (another key) wrote, copied into this model's folder; and junk.
    other = store(tmp_path / "elsewhere", key="another model")
    foreign = other.write(tokens, b"x" * 100)
    assert foreign is not None
    (mine.folder / foreign.name).write_bytes(foreign.read_bytes())
    (mine.folder / "junk.kv").write_bytes(b"not a prefix" * 10)
    (mine.folder / "short.kv").write_bytes(MAGIC)
    reopened = store(tmp_path)
    assert reopened.best(tokens) is None and reopened.count() == 0
    assert not list(reopened.folder.glob("*.kv"))


def test_the_budget_holds_least_recently_used_out(tmp_path: Path) -> None:
    one = len(MAGIC) + 4 + 200 + 4 * 1500 + 10_000  # about one entry's size
    s = store(tmp_path, budget=3 * one)
    written = [s.write([i] * 1500, bytes(10_000)) for i in range(5)]
    assert all(written)
    assert s.total_bytes() <= 3 * one and s.count() <= 3
    left = sorted(p.name for p in s.folder.glob("*.kv"))
    assert written[4] is not None and written[4].name in left and written[0] is not None and written[0].name not in left
    assert s.write([9] * 1500, bytes(5 * one)) is None  # larger than the whole budget: not written


def test_two_writers_sharing_a_folder_leave_only_whole_files(tmp_path: Path) -> None:
    a, b = store(tmp_path), store(tmp_path)

    def write(s: PrefixStore, start: int) -> None:
        for i in range(20):
            s.write([start + i % 5] * 1200, bytes([i]) * 50_000)

    threads = [threading.Thread(target=write, args=(s, start)) for s, start in ((a, 0), (b, 0), (a, 100), (b, 100))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not list(a.folder.glob("*.tmp"))
    checker = store(tmp_path)
    assert checker.count() == 10
    for tokens in ([i] * 1200 for i in (*range(5), *range(100, 105))):
        found = checker.best(tokens)
        assert found is not None and found[1] == 1200 and checker.read(found[0]) is not None


# ---------------------------------------------------------------- KV settings (in the disk tier's key)


def test_a_quantised_kv_cache_serves_and_counts_its_smaller_memory(tmp_path: Path, model_dir: Path) -> None:
    footprints, contexts = {}, {}
    # f16 with flash attention (as q8_0 has it) to compare the caches alone; f16 with FLASH_ATTN=auto, which is off
    # on a CPU, counts the attention scores of a step as well.
    for name, kv_type, attention in (("f16", "f16", "on"), ("q8_0", "q8_0", "auto"), ("f16-auto", "f16", "auto")):
        with running_server(tmp_path, model_dir, DATA_DIR=str(tmp_path / name), KV_CACHE_TYPE=kv_type,
                            FLASH_ATTN=attention, **DISK) as server, server.client() as client:
            answer = ask(client, "What does item 7 cost?")
            assert answer["choices"][0]["message"]["content"]
            [info] = [m for m in client.get("/models").json()["data"] if m["state"] == "loaded"]
            footprints[name] = info["memory_bytes"] - info["size_bytes"]  # the KV cache of every slot
            contexts[name] = info["context_size"]
        # The stored state is this setting's own: the servers' files are in different folders.
    kv_f16, kv_q8 = footprints["f16"], footprints["q8_0"]
    assert 0.5 < kv_q8 / kv_f16 < 0.56  # 34 bytes per 32 values against 64
    assert contexts["f16"] == contexts["f16-auto"]
    batch_size, heads = 512, 9  # SmolLM2-135M: 9 query heads; a step's scores in f32
    assert footprints["f16-auto"] - kv_f16 == contexts["f16"] * batch_size * heads * 4
    folders = {p.parent.name for name in footprints for p in (tmp_path / name).glob("prefix-cache/*/*.kv")}
    assert len(folders) == 3
