"""The continuous batching engine, through the real server: queue limits, prefix cache, chunked prefill,
no cross-talk between sequences, and the engine's figures in /health and /metrics."""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from .conftest import MODEL, NO_END, Server, running_server, wait_until
from .models import HF_SMOLLM2

STORY = [{"role": "user", "content": "Write a long story about a dragon."}]


def engine(client: httpx.Client) -> dict:
    return client.get("/health").json()["engines"][MODEL]


def test_health_reports_the_engine(client: httpx.Client) -> None:
    stats = engine(client)
    assert stats["slots"] == 4 and stats["max_queue"] == 64
    assert {"running", "queued", "tokens_per_second", "time_to_first_token_p50", "generated_tokens_total"} <= set(stats)


def test_prefix_cache_serves_the_next_turn(client: httpx.Client) -> None:
    system = {"role": "system", "content": "You are a careful assistant. " * 40}
    turns = [system, {"role": "user", "content": "Hello, who are you?"}]
    first = client.post("/v1/chat/completions", json={"messages": turns, "max_tokens": 8}).json()
    before = engine(client)["cached_prompt_tokens_total"]
    turns += [first["choices"][0]["message"], {"role": "user", "content": "Tell me more."}]
    second = client.post("/v1/chat/completions", json={"messages": turns, "max_tokens": 8}).json()
    reused = engine(client)["cached_prompt_tokens_total"] - before
    # Everything up to the first answer is reused; only the new turn is evaluated.
    assert reused >= first["usage"]["prompt_tokens"], (reused, first["usage"], second["usage"])


def test_greedy_requests_reuse_cached_prefixes_by_default(tmp_path: Path, model_dir: Path) -> None:
    # Agents send temperature 0: the next turn of a greedy conversation is read from the cache, not re-read.
    system = {"role": "system", "content": "You are a careful assistant. " * 40}
    with running_server(tmp_path, model_dir, REPRODUCIBLE="false") as srv, srv.client() as client:
        turns = [system, {"role": "user", "content": "Hello, who are you?"}]
        first = client.post("/v1/chat/completions", json={"messages": turns, "max_tokens": 8, "temperature": 0}).json()
        before = engine(client)["cached_prompt_tokens_total"]
        turns += [first["choices"][0]["message"], {"role": "user", "content": "Tell me more."}]
        client.post("/v1/chat/completions", json={"messages": turns, "max_tokens": 8, "temperature": 0, "seed": 7})
        assert engine(client)["cached_prompt_tokens_total"] - before >= first["usage"]["prompt_tokens"]


def test_requests_sharing_a_system_prompt_copy_it_from_another_slot(tmp_path: Path, model_dir: Path) -> None:
    # Agents: several requests behind the same long system prompt, at once. One slot reads it; the others copy
    # its KV cache (from a slot still running) instead of reading it again.
    system = {"role": "system", "content": "You are a careful assistant who follows the manual. " * 50}
    questions = ["Who are you?", "What can you do?", "Name a colour."]
    with running_server(tmp_path, model_dir, REPRODUCIBLE="false", PARALLEL_SLOTS="4") as srv, srv.client() as client:
        system_tokens = client.post("/tokenize", json={"content": system["content"]}).json()["count"]
        with ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(lambda q: client.post("/v1/chat/completions", json={
                "messages": [system, {"role": "user", "content": q}], "max_tokens": 8, "temperature": 0}), questions))
        assert all(a.status_code == 200 and a.json()["choices"][0]["message"]["content"] for a in answers)
        stats = engine(client)
        assert stats["shared_prompt_tokens_total"] >= 2 * system_tokens, stats
        # Read once, copied twice: the prompt tokens evaluated are about one system prompt and three questions.
        evaluated = stats["prompt_tokens_total"] - stats["cached_prompt_tokens_total"]
        assert evaluated < 2 * system_tokens, stats


def test_a_short_prompt_held_by_a_running_slot_is_copied_not_read_again(tmp_path: Path, model_dir: Path) -> None:
    # A prompt of a few dozen tokens (a benchmark's, a chat's opening) sent again while the first is still answered:
    # on a CPU, copying the running slot's KV (its few tokens' state, under a millisecond) costs less than reading
    # even a few tokens again, and gives the answer that reading the prompt gives.
    with running_server(tmp_path, model_dir, REPRODUCIBLE="false", PARALLEL_SLOTS="4") as srv, srv.client() as client:
        greedy = {"messages": STORY, "max_tokens": 8, "temperature": 0}
        read = client.post("/v1/chat/completions", json=greedy).json()  # no cache holds it yet: read whole
        body = {"messages": STORY, "max_tokens": 400, "logit_bias": NO_END, "stream": True}
        with client.stream("POST", "/v1/chat/completions", json=body) as running:
            next(line for line in running.iter_lines() if re.search(r'"content":"[^"]', line))  # its prompt is read
            before = engine(client)["shared_prompt_tokens_total"]
            again = client.post("/v1/chat/completions", json=greedy).json()
        assert again["choices"][0]["message"]["content"] == read["choices"][0]["message"]["content"]
        prompt = again["usage"]["prompt_tokens"]
        assert prompt < 64  # under the fixed threshold this replaced
        assert engine(client)["shared_prompt_tokens_total"] - before == prompt - 1
        assert again["usage"]["prompt_tokens_details"]["cached_tokens"] == prompt - 1


def test_a_prompt_without_a_real_hit_takes_the_least_recently_used_slot(tmp_path: Path, model_dir: Path) -> None:
    # Three different long prompts, one after another, share only the chat template's first tokens: each
    # takes an unused slot rather than the one whose cache shares those, so all three are still cached.
    prompts = [[{"role": "user", "content": f"{topic} " * 120 + "Summarise."}] for topic in ("apples", "rivers", "engines")]
    with running_server(tmp_path, model_dir, REPRODUCIBLE="false", PARALLEL_SLOTS="4") as srv, srv.client() as client:
        for messages in prompts:
            client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 2})
        before = engine(client)["cached_prompt_tokens_total"]
        usage = [client.post("/v1/chat/completions", json={"messages": m, "max_tokens": 2}).json()["usage"] for m in prompts]
        assert engine(client)["cached_prompt_tokens_total"] - before == sum(u["prompt_tokens"] - 1 for u in usage)


def test_transformers_engine_starts_prompts_from_kept_prefixes(tmp_path: Path, hf_model_dir: Path) -> None:
    # The Transformers engine keeps the KV of read prompts and finished answers: the next turn of a chat, and
    # requests behind the same system prompt, copy it and read only the rest; the answer is the same.
    system = {"role": "system", "content": "You are a careful assistant who follows the manual. " * 30}
    with running_server(tmp_path, hf_model_dir, REPRODUCIBLE="false", DEFAULT_MODEL=HF_SMOLLM2) as srv, \
            srv.client(timeout=300) as client:
        def ask(messages: list[dict]) -> dict:
            answer = client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 8, "temperature": 0})
            assert answer.status_code == 200, answer.text
            return answer.json()

        def stats() -> dict:
            return client.get("/health").json()["engines"][HF_SMOLLM2]

        turns = [system, {"role": "user", "content": "Hello, who are you?"}]
        first = ask(turns)
        assert stats()["cached_prompt_tokens_total"] == 0
        again = ask(turns)  # all but its last token copied
        assert again["choices"][0]["message"] == first["choices"][0]["message"]
        assert stats()["cached_prompt_tokens_total"] == first["usage"]["prompt_tokens"] - 1
        before = stats()["cached_prompt_tokens_total"]
        turns += [first["choices"][0]["message"], {"role": "user", "content": "Tell me more."}]
        ask(turns)
        assert stats()["cached_prompt_tokens_total"] - before >= first["usage"]["prompt_tokens"]
        before = stats()
        with ThreadPoolExecutor(3) as pool:  # three new questions behind the system prompt: each copies it
            list(pool.map(ask, [[system, {"role": "user", "content": q}] for q in ("Name a colour.", "Count to 3.", "Hi.")]))
        system_tokens = client.post("/tokenize", json={"content": system["content"]}).json()["count"]
        assert stats()["shared_prompt_tokens_total"] - before["shared_prompt_tokens_total"] >= 3 * system_tokens


def test_reproducible_requests_read_their_whole_prompt(server: Server) -> None:
    # REPRODUCIBLE=true (the test servers' setting): a greedy request's prompt is never read from the cache.
    body = {"messages": [{"role": "user", "content": "Name three colours."}], "max_tokens": 4, "temperature": 0}
    with server.client() as client:
        client.post("/v1/chat/completions", json=body)
        before = engine(client)["cached_prompt_tokens_total"]
        client.post("/v1/chat/completions", json=body)
        assert engine(client)["cached_prompt_tokens_total"] == before


def test_seeded_output_does_not_depend_on_batch_neighbours(server: Server) -> None:
    def ask(prompt: str, seed: int) -> str:
        body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": 24, "temperature": 1.0, "seed": seed}
        with server.client() as c:
            return c.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]

    jobs = [("Tell me about the sea.", 1), ("List some fruits.", 2), ("Why is the sky blue?", 3), ("Write a haiku.", 4)]
    alone = [ask(*job) for job in jobs]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda job: ask(*job), jobs))
    assert together == alone


def test_long_prompt_does_not_freeze_running_streams(server: Server) -> None:
    """Chunked prefill: a 700-token prompt arriving mid-stream is fed in small chunks between decode steps."""
    gaps: list[float] = []
    streaming = threading.Event()

    def stream() -> None:
        with server.client() as c:
            body = {"messages": STORY, "max_tokens": 60, "logit_bias": NO_END, "stream": True}
            with c.stream("POST", "/v1/chat/completions", json=body) as response:
                last = None
                for line in response.iter_lines():
                    now = time.perf_counter()
                    if line.startswith("data: {") and last is not None:
                        gaps.append(now - last)
                        streaming.set()
                    last = now

    streamer = threading.Thread(target=stream)
    streamer.start()
    assert streaming.wait(60)  # the long prompt arrives while tokens are streaming
    long_prompt = [{"role": "user", "content": "tell me about apples and pears " * 100}]
    with server.client() as c:
        reply = c.post("/v1/chat/completions", json={"messages": long_prompt, "max_tokens": 2})
    streamer.join()
    assert reply.status_code == 200 and reply.json()["usage"]["prompt_tokens"] > 600
    # Unchunked, the stream would stall for the whole prompt (~4 s at one thread); chunked, a step stays short.
    assert max(gaps) < 3.0, max(gaps)


def test_full_queue_answers_429(tmp_path: Path, model_dir: Path) -> None:
    with running_server(tmp_path, model_dir, PARALLEL_SLOTS="1", MAX_QUEUE="1") as srv:
        long = {"messages": STORY, "max_tokens": 400, "logit_bias": NO_END, "stream": True}
        with srv.client() as a, srv.client() as b, srv.client() as c:
            with a.stream("POST", "/v1/chat/completions", json=long) as running:
                lines = running.iter_lines()  # kept: dropping the iterator would close the stream
                next(lines)  # the slot is taken
                with b.stream("POST", "/v1/chat/completions", json=long) as waiting:
                    deadline = time.time() + 10
                    while engine(c)["queued"] < 1:
                        assert time.time() < deadline
                        time.sleep(0.05)
                    refused = c.post("/v1/chat/completions", json={"messages": STORY, "max_tokens": 2})
                    assert refused.status_code == 429, refused.text
                    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
                    assert refused.headers["retry-after"] == "1"
                    streamed = c.post("/v1/chat/completions", json={"messages": STORY, "max_tokens": 2, "stream": True})
                    assert streamed.status_code == 429  # refused before any event, not inside the stream
                    waiting.close()
                running.close()
            deadline = time.time() + 10
            while engine(c)["running"] or engine(c)["queued"]:
                assert time.time() < deadline, engine(c)
                time.sleep(0.05)
            assert c.post("/v1/chat/completions", json={"messages": STORY, "max_tokens": 2}).status_code == 200


def test_a_returning_conversation_goes_ahead_of_a_cold_prompt(tmp_path: Path, model_dir: Path) -> None:
    # More conversations than slots: when the slot frees, the next turn of a conversation whose prompt is cached
    # (a few tokens to read) goes before a long cold prompt that came earlier, instead of waiting for its read.
    chat = [{"role": "system", "content": "You are a careful assistant. " * 40}, {"role": "user", "content": "Hello"}]
    cold = [{"role": "user", "content": "rivers and mountains " * 300 + "Summarise."}]
    with running_server(tmp_path, model_dir, REPRODUCIBLE="false", PARALLEL_SLOTS="1") as srv, \
            srv.client() as a, srv.client() as b, srv.client() as c, srv.client() as d:
        finished: list[str] = []

        def ask(client: httpx.Client, name: str, messages: list[dict]) -> dict:
            reply = client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 4})
            assert reply.status_code == 200, reply.text
            finished.append(name)
            return reply.json()

        body = {"messages": chat, "max_tokens": 1000, "logit_bias": NO_END, "stream": True}
        with a.stream("POST", "/v1/chat/completions", json=body) as running, ThreadPoolExecutor(2) as pool:
            lines = running.iter_lines()
            next(lines)  # the slot is taken, and holds the conversation's prompt
            waiting = [pool.submit(ask, b, "cold", cold)]
            wait_until(lambda: engine(d)["queued"] >= 1, what="the cold prompt queued")
            turn = chat + [{"role": "assistant", "content": "Hi."}, {"role": "user", "content": "Go on."}]
            waiting.append(pool.submit(ask, c, "turn", turn))
            wait_until(lambda: engine(d)["queued"] >= 2, what="both queued")
            for _ in range(30):  # both wait a while longer (the order weighs the time waited), then the slot frees
                next(lines)
            running.close()
            replies = [future.result() for future in waiting]
        assert finished == ["turn", "cold"]
        assert replies[1]["usage"]["prompt_tokens_details"]["cached_tokens"] > 200


def test_a_long_prompt_waits_in_the_queue_while_another_is_read_and_short_ones_go_first(tmp_path: Path,
                                                                                        model_dir: Path) -> None:
    # Prompts are read shortest first, a step's worth at a time: while one long prompt is read, a second waits in
    # the queue instead of in a slot where it could only wait behind it, and a short prompt that arrives meanwhile
    # takes a free slot and is answered before the long one.
    def long(topic: str) -> list[dict]:
        return [{"role": "user", "content": f"{topic} " * 400 + "Summarise."}]

    with running_server(tmp_path, model_dir, REPRODUCIBLE="false", PARALLEL_SLOTS="3") as srv, \
            srv.client() as a, srv.client() as b, srv.client() as c, srv.client() as d, ThreadPoolExecutor(3) as pool:
        finished: list[str] = []

        def ask(client: httpx.Client, name: str, messages: list[dict]) -> None:
            reply = client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 1})
            assert reply.status_code == 200, reply.text
            finished.append(name)

        first = pool.submit(ask, a, "long", long("rivers and mountains"))
        wait_until(lambda: engine(d)["running"] >= 1, what="the first long prompt admitted")
        second = pool.submit(ask, b, "second long", long("apples and pears"))
        wait_until(lambda: engine(d)["queued"] >= 1, what="the second long prompt queued")
        assert engine(d)["running"] == 1 and not finished  # two slots free, the second long prompt still queued
        ask(c, "short", [{"role": "user", "content": "Name a colour."}])
        first.result(), second.result()
        assert finished == ["short", "long", "second long"]


def test_cancelled_sequence_leaves_the_batch(client: httpx.Client, server: Server) -> None:
    with server.client() as streaming:
        body = {"messages": STORY, "max_tokens": 1000, "logit_bias": NO_END, "stream": True}
        with streaming.stream("POST", "/v1/chat/completions", json=body) as response:
            for n, _ in enumerate(response.iter_lines()):
                if n > 4:
                    break
    deadline = time.time() + 3
    while engine(client)["running"]:
        assert time.time() < deadline, "the cancelled sequence is still decoding"
        time.sleep(0.02)


def test_prometheus_metrics(client: httpx.Client) -> None:
    client.post("/v1/chat/completions", json={"messages": STORY, "max_tokens": 3})
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    for name in ("llm_queue_length", "llm_running_sequences", "llm_generated_tokens_total", "llm_tokens_per_second",
                 "llm_time_to_first_token_seconds_bucket", "llm_cached_prompt_tokens_total", "llm_models_loaded"):
        assert name in text, name
    assert f'llm_slots{{model="{MODEL}"}} 4.0' in text
    for name in ("llm_kv_cache_tokens", "llm_kv_cache_capacity_tokens", "llm_prefix_cache_hit_ratio"):
        assert f'{name}{{model="{MODEL}"}}' in text, name


def test_health_tells_cells_in_use_and_the_hit_rate(client: httpx.Client) -> None:
    # The KV cells held (running sequences and prefixes kept for reuse) against the slots' capacity, and the
    # share of prompt tokens that came from the cache.
    client.post("/v1/chat/completions", json={"messages": STORY, "max_tokens": 3})
    stats = engine(client)
    assert 0 < stats["kv_cache_tokens"] <= stats["kv_cache_capacity"] == stats["slots"] * 2048
    assert stats["prefix_cache_hit_rate"] == round(stats["cached_prompt_tokens_total"] / stats["prompt_tokens_total"], 4)
