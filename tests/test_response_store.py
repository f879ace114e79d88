"""Stored responses: scoped to the API key that made them, bounded, kept across a restart; and the Messages
API's `x-api-key` auth."""

from __future__ import annotations

from pathlib import Path

import anthropic
import pytest
from openai import NotFoundError, OpenAI

from .conftest import MODEL, running_server

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
