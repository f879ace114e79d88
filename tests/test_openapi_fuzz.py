"""Schemathesis against the live server, from the server's own /openapi.json: every operation but the pull
(which downloads), both /v1 and /api/v1 and the Ollama and utility routes, valid and invalid requests from a
fixed seed, and its coverage phase (every boundary of every field: each schema-valid value at its edges, each
way to break one, unexpected methods). All of schemathesis's checks: no 5xx, every status documented, every body as documented, requests
the document calls valid accepted (or refused for a reason the document allows: an unknown model is a 404),
requests it calls invalid refused. The exceptions are what a JSON Schema document cannot state: limits of the
loaded model (its context length, its vocabulary, its embedding size, whether it reads images, how many choices
its slots and queue hold at once), references between fields (a
tool_choice naming one of the tools, two tools of one name, continue_final_message with add_generation_prompt) and the validity of a JSON Schema given as a tool's
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
from schemathesis.generation.coverage import GenerationSession
from schemathesis.generation.drivers import CoverageGenerator
from schemathesis.generation.feedback import FeedbackSources
from schemathesis.generation.overrides import Override

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
                       "which is not among the tools", "Two tools are named", "This JSON schema cannot be used",
                       "a tool the model can call now", "prompt is too long", "has no vision",
                       "continues the last message: set 'add_generation_prompt' to false",
                       "choices cannot be served at once")


def refused_for_what_no_document_states(response: requests.Response) -> bool:
    return response.status_code == 400 and any(reason in response.text for reason in BEYOND_THE_DOCUMENT)


@pytest.fixture(scope="module")
def fuzzed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    models = tmp_path_factory.mktemp("fuzz-models")
    place_model(models)
    place_tree(minilm_folder(), models / MINILM)
    # A short context keeps the longest answer a fuzzer can ask for to a few seconds.
    with running_server(tmp_path_factory.mktemp("fuzz"), models, CONTEXT_SIZE="192", PARALLEL_SLOTS="2",
                        REPRODUCIBLE="false") as server:  # prefix reuse: the fuzzer repeats its prompts
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


@pytest.mark.parametrize("operation", OPERATIONS, ids=[operation.label for operation in OPERATIONS])
def test_the_coverage_phase_finds_nothing(operation: schemathesis.APIOperation, fuzzed_server: Server) -> None:
    generation = SCHEMA.config.generation_for(operation=operation, phase="coverage")
    cases = CoverageGenerator(operation=operation, generation_modes=generation.modes, generation_config=generation,
                              auth_storage=None, override=Override(query={}, headers={}, cookies={}, path_parameters={}, body={}),
                              feedback=FeedbackSources(), session=GenerationSession())
    failures = []
    for case in cases:
        response = case.call(base_url=fuzzed_server.url, timeout=120)
        excluded = [positive_data_acceptance] if refused_for_what_no_document_states(response) else []
        try:
            case.validate_response(response, excluded_checks=excluded)
        except AssertionError as failure:  # schemathesis's check failures (one group per case)
            failures.append(f"{case.method} {case.path} {case.body!r:.300}: {str(failure)[:600]}")
    assert not failures, "\n".join(failures[:10])
