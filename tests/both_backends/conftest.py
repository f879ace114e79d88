"""The API contract tests in this folder run twice: on the GGUF model (llama.cpp) and on its Transformers
copy. `client` and `served` here override the GGUF-only ones of tests/conftest.py."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from ..conftest import Served


@pytest.fixture
def served(backend_server: Served) -> Served:
    return backend_server


@pytest.fixture
def client(backend_server: Served) -> Iterator[httpx.Client]:
    with backend_server.server.client() as c:
        yield c
