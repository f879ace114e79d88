"""The batching engines of both backends, in-process with the real SmolLM2, with faults injected where no
request could cause them on purpose: a sequence whose grammar fails fails alone while its neighbour
finishes, and a bug in a scheduling step fails the requests in play (cleanly) without stopping the engine."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from local_llm_api.backends.base import Backend, EngineStoppedError, SamplingParams
from local_llm_api.catalog import ModelEntry
from local_llm_api.config import BackendChoice, load_settings

from .conftest import place_model
from .models import smollm2_transformers_folder

NO_END = {0: -100.0, 2: -100.0, 4: -100.0}


def params(max_tokens: int, grammar: str | None = None) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, top_p=1.0, top_k=0, min_p=0.0, repeat_penalty=1.0,
                          logit_bias=NO_END, grammar=grammar)


@pytest.fixture(scope="module", params=["llama-cpp", "transformers"])
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    settings = load_settings(None, threads=1, context_size=512, parallel_slots=2)
    if request.param == "llama-cpp":
        from local_llm_api.backends.llama_cpp import LlamaCppBackend

        path = place_model(tmp_path_factory.mktemp("engine-faults"))
        made: Backend = LlamaCppBackend(ModelEntry(path.name, BackendChoice.llama_cpp, path, None, 0, 0), settings)
    else:
        from local_llm_api.backends.transformers_lm import TransformersBackend

        folder = smollm2_transformers_folder()
        made = TransformersBackend(ModelEntry(folder.name, BackendChoice.transformers, folder, None, 0, 0), settings)
    yield made
    asyncio.run(made.close())


class ExplodingGrammar:
    """A grammar that fails when asked for its mask, as a bug in a grammar library would."""

    complete = False

    def mask(self, logits: np.ndarray) -> None:
        raise RuntimeError("the grammar broke")

    def accept(self, token: int) -> None:
        pass


class ExplodingFactory:
    def new(self, grammar: str) -> ExplodingGrammar:
        return ExplodingGrammar()


async def tokens_of(backend: Backend, prompt: list[int], sampling: SamplingParams) -> int:
    count = 0
    async for chunk in backend.generate(prompt, sampling):
        if chunk.finish_reason is not None:
            count = chunk.completion_tokens
    return count


def test_a_failing_sequence_fails_alone(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = backend._engine  # type: ignore[attr-defined]
    monkeypatch.setattr(engine, "_constraints", ExplodingFactory())
    prompt = backend.tokenize("Tell me a story.", add_special=True)

    async def both() -> list[object]:
        healthy = asyncio.ensure_future(tokens_of(backend, prompt, params(40)))
        await asyncio.sleep(0)  # the healthy one is in the batch first
        broken = asyncio.ensure_future(tokens_of(backend, prompt, params(40, grammar="anything")))
        return list(await asyncio.gather(healthy, broken, return_exceptions=True))

    healthy, broken = asyncio.run(both())
    assert healthy == 40  # finished in full, beside the failure
    assert isinstance(broken, RuntimeError) and "grammar broke" in str(broken)
    # The last answer token reaches the request before the engine thread ends its step: wait for that.
    deadline = time.monotonic() + 30
    while engine.stats().running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.alive and engine.stats().running == 0
    assert asyncio.run(tokens_of(backend, prompt, params(5))) == 5


def test_a_bug_in_a_scheduling_step_fails_the_requests_in_play_and_the_engine_goes_on(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = backend._engine  # type: ignore[attr-defined]
    real_step, failures = engine._step, []

    def step_failing_once() -> None:
        if not failures:
            failures.append(1)
            raise KeyError("a bug outside the model call")
        real_step()

    monkeypatch.setattr(engine, "_step", step_failing_once)
    prompt = backend.tokenize("Hello", add_special=True)
    with pytest.raises(KeyError):
        asyncio.run(asyncio.wait_for(tokens_of(backend, prompt, params(10)), timeout=60))  # failed, not hung
    assert engine.alive and engine.stats().queued == 0
    assert asyncio.run(tokens_of(backend, prompt, params(10))) == 10  # the engine serves on


def test_a_stopped_engine_refuses_at_once(tmp_path: Path) -> None:
    from local_llm_api.backends.llama_cpp import LlamaCppBackend

    path = place_model(tmp_path)
    backend = LlamaCppBackend(ModelEntry(path.name, BackendChoice.llama_cpp, path, None, 0, 0),
                              load_settings(None, threads=1, context_size=256, parallel_slots=1))
    engine = backend._engine
    engine.close()  # the thread ends, as a crash would end it
    assert not engine.alive and not backend.stats().alive
    with pytest.raises(EngineStoppedError):
        backend.check_capacity(1)
    with pytest.raises(EngineStoppedError):
        asyncio.run(tokens_of(backend, [1, 2, 3], params(3)))


def test_unloading_a_transformers_model_frees_its_weights() -> None:
    import gc
    import weakref

    from local_llm_api.backends.transformers_lm import TransformersBackend

    folder = smollm2_transformers_folder()
    backend = TransformersBackend(ModelEntry(folder.name, BackendChoice.transformers, folder, None, 0, 0),
                                  load_settings(None, threads=1, context_size=256, parallel_slots=1))
    prompt = backend.tokenize("Hi", add_special=True)
    assert asyncio.run(tokens_of(backend, prompt, params(3))) == 3
    weights = weakref.ref(backend._model)
    asyncio.run(backend.close())
    gc.collect()
    assert weights() is None  # nothing holds the model: on a GPU, empty_cache() can then return its memory
