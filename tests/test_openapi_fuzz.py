"""Schemathesis against the live server, from the server's own /openapi.json: every operation but the pull
(which downloads), both /v1 and /api/v1 and the Ollama and utility routes, valid and invalid requests from a
fixed seed. All of schemathesis's checks: no 5xx, every status documented, every body as documented, requests
the document calls valid accepted (or refused for a reason the document allows: an unknown model is a 404),
requests it calls invalid refused. The exceptions are what a JSON Schema document cannot state: limits of the
loaded model (its context length, its vocabulary, its embedding size), references between fields (a
tool_choice naming one of the tools, two tools of one name) and the validity of a JSON Schema given as a tool's
parameters or an output format (the document does not restate JSON Schema's meta-schema) may refuse a request the
document calls valid, each with a 400 that says so.

Run with `-p no:schemathesis` in effect (pyproject's addopts): schemathesis's own pytest plugin is for its
`@schema.parametrize` tests and gets in the way of ours.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import positive_data_acceptance

from local_llm_api.config import Settings
from local_llm_api.main import create_app

from .conftest import Server, place_model, running_server
from .models import MINILM, minilm_folder, place_tree

NOT_FUZZED = r"/pull$"  # downloads from the Hub
# Per operation, valid and invalid each: about 450 requests in all (FUZZ_EXAMPLES=40 for a deeper run).
EXAMPLES_PER_MODE = int(os.environ.get("FUZZ_EXAMPLES", "5"))

# Collected from the app itself (no server needed to list the operations), then called on the live server.
SCHEMA = schemathesis.openapi.from_dict(create_app(Settings(_env_file=None)).openapi()).exclude(path_regex=NOT_FUZZED)
OPERATIONS = [result.ok() for result in SCHEMA.get_all_operations()]
# Invalid requests where there is something to break: a body (path parameters are free-form strings).
CASES = [pytest.param(operation, mode, id=f"{mode.value}-{operation.label}") for operation in OPERATIONS
         for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if mode is GenerationMode.POSITIVE or operation.body]


# Those refusals, by their message (Anthropic's and Ollama's envelopes carry no error code).
BEYOND_THE_DOCUMENT = ("maximum context length", "outside the vocabulary", "-dimensional embeddings and cannot shorten",
                       "which is not among the tools", "Two tools are named", "This JSON schema cannot be used")


def refused_for_what_no_document_states(response: requests.Response) -> bool:
    return response.status_code == 400 and any(reason in response.text for reason in BEYOND_THE_DOCUMENT)


@pytest.fixture(scope="module")
def fuzzed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    models = tmp_path_factory.mktemp("fuzz-models")
    place_model(models)
    place_tree(minilm_folder(), models / MINILM)
    # A short context keeps the longest answer a fuzzer can ask for to a few seconds.
    with running_server(tmp_path_factory.mktemp("fuzz"), models, CONTEXT_SIZE="256", PARALLEL_SLOTS="2") as server:
        yield server


@pytest.mark.parametrize(("operation", "mode"), CASES)
def test_the_server_answers_as_its_openapi_document_says(operation: schemathesis.APIOperation, mode: GenerationMode,
                                                         fuzzed_server: Server) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES_PER_MODE, derandomize=True, database=None, deadline=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    def check(case: schemathesis.Case) -> None:
        response = case.call(base_url=fuzzed_server.url, timeout=120)
        excluded = [positive_data_acceptance] if refused_for_what_no_document_states(response) else []
        case.validate_response(response, excluded_checks=excluded)

    check()
