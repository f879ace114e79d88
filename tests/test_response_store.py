"""Stored responses: scoped to the API key that made them, bounded, kept across a restart; and the Messages
API's `x-api-key` auth."""

from __future__ import annotations

from pathlib import Path

import anthropic
import pytest
from openai import NotFoundError, OpenAI

from local_llm_api.dialects.responses.store import ResponseStore

from .conftest import MODEL, running_server
from .models import HF_SMOLLM2

KEYS = {"API_KEY_REQUIRED": "true", "API_KEY": "key-a, key-b", "RESPONSES_MAX_STORED": "2"}


def test_store_scoping_bound_and_restart(tmp_path: Path, model_dir: Path) -> None:
    with running_server(tmp_path, model_dir, **KEYS) as server:
        a = OpenAI(base_url=server.url + "/v1", api_key="key-a", max_retries=0)
        b = OpenAI(base_url=server.url + "/v1", api_key="key-b", max_retries=0)
        first = a.responses.create(model=MODEL, input="Hello", max_output_tokens=3)
        assert a.responses.retrieve(first.id).id == first.id
        with pytest.raises(NotFoundError):
            b.responses.retrieve(first.id)  # another key never reads it
        with pytest.raises(NotFoundError):
            b.responses.create(model=MODEL, input="x", previous_response_id=first.id)
        items = a.responses.input_items.list(first.id).data
        assert len(items) == 1 and items[0].content[0].text == "Hello"
        second = a.responses.create(model=MODEL, input="One", max_output_tokens=3)
        third = a.responses.create(model=MODEL, input="Two", max_output_tokens=3)
        with pytest.raises(NotFoundError):
            a.responses.retrieve(first.id)  # RESPONSES_MAX_STORED=2: the oldest went
        a.responses.delete(second.id)
        with pytest.raises(NotFoundError):
            a.responses.retrieve(second.id)
        claude = anthropic.Anthropic(base_url=server.url, api_key="key-b", max_retries=0)  # sent as x-api-key
        assert claude.messages.create(model=MODEL, max_tokens=2, messages=[{"role": "user", "content": "x"}]).content
        with pytest.raises(anthropic.AuthenticationError):
            anthropic.Anthropic(base_url=server.url, api_key="wrong", max_retries=0).messages.count_tokens(
                model=MODEL, messages=[{"role": "user", "content": "x"}])
    with running_server(tmp_path, model_dir, **KEYS) as server:  # the same DATA_DIR (tmp_path/data)
        a = OpenAI(base_url=server.url + "/v1", api_key="key-a", max_retries=0)
        follow = a.responses.create(model=MODEL, input="And?", previous_response_id=third.id, max_output_tokens=3)
        assert follow.previous_response_id == third.id and follow.usage.input_tokens > third.usage.input_tokens


@pytest.mark.parametrize("backend", ["llama-cpp", "transformers"])
def test_previous_response_id_across_a_restart(tmp_path: Path, model_dir: Path, backend: str,
                                                request: pytest.FixtureRequest) -> None:
    served, name = (model_dir, MODEL) if backend == "llama-cpp" else (request.getfixturevalue("hf_model_dir"), HF_SMOLLM2)
    with running_server(tmp_path, served, DEFAULT_MODEL=name) as server:
        first = OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0).responses.create(
            model=name, instructions="Remember: the code word is tulip.", input="Hello", max_output_tokens=3)
    with running_server(tmp_path, served, DEFAULT_MODEL=name) as server:  # same DATA_DIR, new process
        client = OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
        follow = client.responses.create(model=name, input="What was the code word?", previous_response_id=first.id,
                                         max_output_tokens=3)
        alone = client.responses.create(model=name, input="What was the code word?", max_output_tokens=3)
    assert follow.previous_response_id == first.id
    assert follow.usage.input_tokens > alone.usage.input_tokens  # the stored turn was read before the new one


def test_store_drops_responses_past_their_age(tmp_path: Path) -> None:
    store = ResponseStore(tmp_path / "r.sqlite3", max_count=0, max_age_seconds=3600)
    response = {"id": "resp_old", "output": []}
    store._put("", response, [], [])
    store._db.execute("UPDATE responses SET created_at = created_at - 7200")  # written two hours ago
    assert store._get("", "resp_old") is None  # expired: not served even before it is purged
    store._put("", {"id": "resp_new", "output": []}, [], [])
    assert store._db.execute("SELECT id FROM responses").fetchall() == [("resp_new",)]  # and purged on the next write
    assert store._get("other-key", "resp_new") is None and store._get("", "resp_new") is not None
    store.close()
