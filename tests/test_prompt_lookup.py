"""Speculative decoding from the prompt: guessed tokens that the model checks change nothing in the answer, greedy
or sampled, constrained or not, with log probabilities; and they are used. On both engines (the Transformers engine
guesses for a sequence decoding alone).

`eager` feeds every guess it finds (PROMPT_LOOKUP_ADAPTIVE=false: whether a guess pays depends on measured step
times, which a test must not), `plain` is the same model with speculation off; `hf_fast` and `hf_plain` are the
same pair for the Transformers copy of the model. The suite's shared server runs with the defaults.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from local_llm_api.backends.prompt_lookup import PromptLookup, StepCost, draft_length

from .conftest import MODEL, Server, running_server
from .models import HF_SMOLLM2

CODE = """def total_price(items, tax_rate):
    subtotal = 0
    for item in items:
        subtotal += item.price * item.quantity
    tax = subtotal * tax_rate
    return subtotal + tax
"""
COPY = [
    f"Copy this Python function exactly, but rename total_price to order_total:\n\n{CODE}",
    f"Repeat the following code exactly as it is:\n\n{CODE}",
    'Repeat this JSON exactly: {"name": "Ada Lovelace", "born": 1815, "field": "mathematics", "city": "London"}',
]


@pytest.fixture(scope="module")
def eager(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("eager"), model_dir, PROMPT_LOOKUP_ADAPTIVE="false") as srv:
        yield srv


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("plain"), model_dir, PROMPT_LOOKUP_TOKENS="0") as srv:
        yield srv


def ask(server: Server, prompt: str, **fields: Any) -> dict:
    body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": 100, **fields}
    with server.client() as client:
        answer = client.post("/v1/chat/completions", json=body)
    assert answer.status_code == 200, answer.text
    return answer.json()["choices"][0]


@pytest.fixture(scope="module")
def hf_fast(tmp_path_factory: pytest.TempPathFactory, hf_model_dir: Path) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("hf-fast"), hf_model_dir, DEFAULT_MODEL=HF_SMOLLM2,
                        PROMPT_LOOKUP_ADAPTIVE="false") as srv:
        yield srv


@pytest.fixture(scope="module")
def hf_plain(tmp_path_factory: pytest.TempPathFactory, hf_model_dir: Path) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("hf-plain"), hf_model_dir, DEFAULT_MODEL=HF_SMOLLM2,
                        PROMPT_LOOKUP_TOKENS="0") as srv:
        yield srv


def drafts(server: Server, model: str = MODEL) -> tuple[int, int]:
    """The guess counters once the engine is idle: a step's counts are added after its last token is sent."""
    deadline = time.monotonic() + 30
    with server.client() as client:
        while True:
            stats = client.get("/health").json()["engines"][model]
            if stats["running"] == 0 or time.monotonic() > deadline:
                return stats["draft_tokens_total"], stats["accepted_draft_tokens_total"]
            time.sleep(0.02)


def test_greedy_answers_and_their_logprobs_are_unchanged_and_guesses_are_used(eager: Server, plain: Server) -> None:
    before = drafts(eager)
    for prompt in COPY:
        fast = ask(eager, prompt, temperature=0, logprobs=True, top_logprobs=2)
        slow = ask(plain, prompt, temperature=0, logprobs=True, top_logprobs=2)
        assert fast["message"]["content"] == slow["message"]["content"]
        assert fast["finish_reason"] == slow["finish_reason"]
        # The logprobs are the verifying step's: the same tokens, the same alternatives.
        for a, b in zip(fast["logprobs"]["content"], slow["logprobs"]["content"], strict=True):
            assert a["token"] == b["token"] and a["logprob"] == pytest.approx(b["logprob"], abs=1e-3)
            assert [t["token"] for t in a["top_logprobs"]] == [t["token"] for t in b["top_logprobs"]]
    drafted, accepted = (after - was for after, was in zip(drafts(eager), before, strict=True))
    assert accepted > 0 and drafted >= accepted, (drafted, accepted)
    assert drafts(plain) == (0, 0)


def test_sampled_answers_are_the_same_seed_for_seed(eager: Server, plain: Server) -> None:
    # Each emitted token is one draw of the sequence's sampler from that position's distribution, confirmed
    # guess or not (for a guess from the prompt, this is the speculative sampling rule): the same seed gives
    # the same answer, so the distribution of answers over seeds is the one without guesses.
    for seed in range(6):
        fields = {"temperature": 0.8, "top_p": 0.95, "seed": seed, "max_tokens": 60}
        assert ask(eager, COPY[0], **fields)["message"] == ask(plain, COPY[0], **fields)["message"]


def test_constrained_answers_are_unchanged(eager: Server, plain: Server) -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "born": {"type": "integer"},
                                                "city": {"type": "string"}},
              "required": ["name", "born", "city"], "additionalProperties": False}
    fields = {"temperature": 0, "response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": schema}}}
    fast, slow = ask(eager, COPY[2], **fields), ask(plain, COPY[2], **fields)
    assert fast["message"]["content"] == slow["message"]["content"]


def test_streamed_answer_equals_the_plain_one(eager: Server, plain: Server) -> None:
    # Several tokens of one step arrive as one or more chunks; the text is the same.
    body = {"messages": [{"role": "user", "content": COPY[1]}], "max_tokens": 80, "temperature": 0, "stream": True}
    with eager.client() as client, client.stream("POST", "/v1/chat/completions", json=body) as response:
        pieces = [line for line in response.iter_lines() if line.startswith("data: {")]
    text = "".join(json.loads(p[6:])["choices"][0]["delta"].get("content") or "" for p in pieces)
    assert text == ask(plain, COPY[1], temperature=0, max_tokens=80)["message"]["content"]


def test_transformers_greedy_answers_and_logprobs_are_unchanged_and_guesses_are_used(hf_fast: Server,
                                                                                      hf_plain: Server) -> None:
    # A lone sequence feeds its guesses in one forward pass and the cache is cropped back to the confirmed ones.
    before = drafts(hf_fast, HF_SMOLLM2)
    for prompt in COPY[1:]:
        fast = ask(hf_fast, prompt, temperature=0, max_tokens=60, logprobs=True, top_logprobs=2)
        slow = ask(hf_plain, prompt, temperature=0, max_tokens=60, logprobs=True, top_logprobs=2)
        assert fast["message"]["content"] == slow["message"]["content"]
        for a, b in zip(fast["logprobs"]["content"], slow["logprobs"]["content"], strict=True):
            assert a["token"] == b["token"] and a["logprob"] == pytest.approx(b["logprob"], abs=1e-3)
    drafted, accepted = (after - was for after, was in zip(drafts(hf_fast, HF_SMOLLM2), before, strict=True))
    assert accepted > 0 and drafted >= accepted, (drafted, accepted)
    assert drafts(hf_plain, HF_SMOLLM2) == (0, 0)


def test_transformers_sampled_and_constrained_answers_are_unchanged(hf_fast: Server, hf_plain: Server) -> None:
    for seed in range(3):
        fields = {"temperature": 0.8, "top_p": 0.95, "seed": seed, "max_tokens": 40}
        assert ask(hf_fast, COPY[0], **fields)["message"] == ask(hf_plain, COPY[0], **fields)["message"]
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "born": {"type": "integer"}},
              "required": ["name", "born"], "additionalProperties": False}
    fields = {"temperature": 0, "max_tokens": 40,
              "response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": schema}}}
    assert ask(hf_fast, COPY[2], **fields)["message"] == ask(hf_plain, COPY[2], **fields)["message"]


def test_transformers_rows_that_join_a_guessing_sequence_are_whole(hf_fast: Server, hf_plain: Server) -> None:
    # Two choices: the first decodes alone (and guesses) while the second reads its prompt, then both decode
    # together without guesses; the cropped cache they share gives each the plain server's answer.
    body = {"messages": [{"role": "user", "content": COPY[1]}], "max_tokens": 40, "temperature": 0, "n": 2}
    with hf_fast.client() as client:
        answer = client.post("/v1/chat/completions", json=body).json()
    assert answer["usage"]["completion_tokens"] == 80
    alone = ask(hf_plain, COPY[1], temperature=0, max_tokens=40)["message"]["content"]
    assert [c["message"]["content"] for c in answer["choices"]] == [alone, alone]


def test_a_guess_is_what_followed_the_latest_match() -> None:
    lookup = PromptLookup([1, 2, 3, 4, 5, 9, 1, 2, 3], max_draft=3)
    assert lookup.guess(10) == [4, 5, 9]  # "1 2 3" was followed by "4 5 9"; no more than the setting
    assert lookup.guess(2) == [4, 5]  # no more than the room
    lookup.extend([7])
    assert lookup.guess(10) == []  # "2 3 7" / "3 7": never seen


def test_acceptance_follows_how_guesses_fare() -> None:
    lookup = PromptLookup([1, 2, 3], max_draft=8)
    start = lookup.acceptance
    lookup.verified(4, 4)
    assert lookup.acceptance > start
    for _ in range(10):
        lookup.verified(3, 0)
    assert lookup.acceptance < 0.1


def test_guesses_not_fed_are_checked_against_the_tokens_written_next() -> None:
    # Free text: a guess that does not hold lowers the acceptance, although it cost nothing.
    lookup = PromptLookup([5, 6, 7, 8, 5, 6], max_draft=4)
    start = lookup.acceptance
    lookup.skipped(lookup.guess(4))  # "5 6" was followed by "7 8 5 6"
    lookup.extend([9])
    assert lookup.acceptance < start
    # A copy: guesses that would have held raise it, so the engine starts feeding them.
    lookup = PromptLookup([1, 2, 3, 4, 5, 6, 7, 8, 1, 2], max_draft=6)
    for _ in range(2):
        guess = lookup.guess(6)
        lookup.skipped(guess)
        lookup.extend(guess)
    assert lookup.acceptance > 0.9
    assert draft_length(lookup, 6, produced=1, step=0.011, per_token=0.006) > 0


def test_guesses_are_fed_only_where_they_raise_the_expected_rate() -> None:
    lookup = PromptLookup([1, 2, 3], max_draft=8)
    lookup.acceptance = 0.9
    # A GPU: a token in a step costs almost nothing beside the step; guess all.
    assert draft_length(lookup, 8, produced=1, step=0.010, per_token=0.0001) == 8
    # Two CPU cores (measured: 11 ms for one token, about 6 ms more per token): a few.
    assert 1 <= draft_length(lookup, 8, produced=1, step=0.011, per_token=0.006) <= 4
    # Eight streams on those cores: the step is all compute already; guesses that may fail do not pay.
    assert draft_length(lookup, 8, produced=8, step=0.050, per_token=0.006) == 0
    lookup.acceptance = 0.2
    assert draft_length(lookup, 8, produced=1, step=0.011, per_token=0.006) == 0


def test_step_cost_is_fitted_from_steps_of_different_sizes() -> None:
    cost = StepCost()
    for _ in range(5):
        cost.record(1, 0.011)
    assert cost.estimate() is None  # one size only: no slope yet
    for tokens in (4, 8, 64):
        cost.record(tokens, 0.005 + 0.006 * tokens)
    fixed, per_token = cost.estimate()  # type: ignore[misc]
    assert per_token == pytest.approx(0.006, rel=0.05) and fixed == pytest.approx(0.005, rel=0.2)
    for _ in range(5000):  # one stream for a long time: the old steps fade, the fit holds
        cost.record(1, 0.011)
    assert cost.estimate() == (fixed, per_token)


def test_a_new_sequence_guesses_only_where_tokens_are_cheap() -> None:
    lookup = PromptLookup([1, 2, 3], max_draft=8)
    assert draft_length(lookup, 8, produced=1, step=0.011, per_token=0.006) == 0  # two CPU cores
    assert draft_length(lookup, 8, produced=1, step=0.010, per_token=0.0001) > 0  # a GPU


def test_health_and_metrics_count_guesses(client: httpx.Client) -> None:
    ask_body = {"messages": [{"role": "user", "content": COPY[2]}], "max_tokens": 40, "temperature": 0}
    client.post("/v1/chat/completions", json=ask_body)
    metrics = client.get("/metrics").text
    assert f'llm_draft_tokens_total{{model="{MODEL}"}}' in metrics
    assert f'llm_accepted_draft_tokens_total{{model="{MODEL}"}}' in metrics
