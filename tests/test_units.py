"""Units with logic of their own: stop strings, UTF-8 streaming, chat templates, model names, settings."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest

from local_llm_api import manager as manager_module
from local_llm_api.catalog import Catalog, ModelEntry
from local_llm_api.config import BackendChoice, SettingsError, load_settings
from local_llm_api.errors import APIError
from local_llm_api.dialects.ollama.models import hub_reference
from local_llm_api.dialects.ollama.translate import keep_alive_seconds, model_name
from local_llm_api.manager import LoadedModel, ModelManager
from local_llm_api.prompting.chat_template import CHATML, LLAMA3, ChatTemplateError, fallback_template, render_chat
from local_llm_api.prompting.text import StopMatcher, Utf8Stream

from .conftest import MODEL


def run_stops(stops: list[str], pieces: list[str]) -> tuple[str, bool]:
    matcher, out = StopMatcher(stops), ""
    for piece in pieces:
        text, hit = matcher.push(piece)
        out += text
        if hit:
            return out, True
    return out + matcher.flush(), False


@pytest.mark.parametrize(
    ("stops", "pieces", "expected"),
    [
        (["END"], ["Hello ", "E", "N", "D", " more"], ("Hello ", True)),
        (["END"], ["Hello E", "ND"], ("Hello ", True)),
        (["END"], ["Hello E", "NOUGH"], ("Hello ENOUGH", False)),
        (["\n\n", "User:"], ["a\n", "b\n", "\nc"], ("a\nb", True)),
        (["ab", "b"], ["xab"], ("x", True)),
        ([], ["free", " text"], ("free text", False)),
        (["é"], ["caf", "é!"], ("caf", True)),
    ],
)
def test_stop_matcher(stops: list[str], pieces: list[str], expected: tuple[str, bool]) -> None:
    assert run_stops(stops, pieces) == expected


def test_stop_matcher_holds_back_only_possible_prefixes() -> None:
    matcher = StopMatcher(["STOP"])
    assert matcher.push("abcS") == ("abc", False)
    assert matcher.push("x") == ("Sx", False)


def test_utf8_stream_waits_for_whole_characters() -> None:
    stream, data = Utf8Stream(), "🐉 용".encode()
    out = [stream.push(data[i : i + 1]) for i in range(len(data))]
    assert "".join(out) + stream.flush() == "🐉 용"
    assert out[0] == out[1] == out[2] == ""  # the dragon's four bytes arrive before it is printed


def test_template_renders_like_llama_cpp_python(vocab) -> None:
    """Our sandboxed rendering of the model's own template matches llama-cpp-python's Jinja2ChatFormatter."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    template = vocab.metadata["tokenizer.chat_template"]
    messages = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi!"},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}]
    ours = render_chat(template, messages, bos_token="<|im_start|>", eos_token="<|im_end|>")
    theirs = Jinja2ChatFormatter(template, eos_token="<|im_end|>", bos_token="<|im_start|>")(messages=messages).prompt
    assert ours == theirs
    assert ours.endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize("evil", ["{{ messages.__class__.__mro__[1].__subclasses__() }}", "{{ messages.append(1) }}"])
def test_template_sandbox_blocks_python_internals_and_mutation(evil: str) -> None:
    with pytest.raises(ChatTemplateError):
        render_chat(evil, [{"role": "user", "content": "x"}], bos_token="", eos_token="")


def test_template_raise_exception_becomes_a_template_error() -> None:
    template = "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    with pytest.raises(ChatTemplateError, match="System role not supported"):
        render_chat(template, [{"role": "system", "content": "x"}], bos_token="", eos_token="")


def test_family_fallbacks() -> None:
    assert fallback_template("Meta-Llama-3-8B-Instruct.Q4_K_M.gguf llama") == LLAMA3
    assert fallback_template("unknown-model.gguf qwen2") == CHATML


def make_dir(tmp_path: Path, *names: str) -> Path:
    for name in names:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"GGUF")
    return tmp_path


def test_model_names_resolve_by_name_stem_and_unique_prefix(tmp_path: Path) -> None:
    root = make_dir(tmp_path, "llama3-8b-instruct.Q4_K_M.gguf", "llama3-70b.Q4_0.gguf", "sub/phi-3.gguf")
    manager = ModelManager(load_settings(model_dir=root))
    assert manager.resolve("llama3-8b").name == "llama3-8b-instruct.Q4_K_M.gguf"
    assert manager.resolve("llama3-70b.Q4_0").name == "llama3-70b.Q4_0.gguf"
    assert manager.resolve("sub/phi-3.gguf").name == "sub/phi-3.gguf"
    with pytest.raises(APIError) as ambiguous:
        manager.resolve("llama3")
    assert ambiguous.value.body.code == "ambiguous_model"
    with pytest.raises(APIError) as missing:
        manager.resolve("mistral")
    assert missing.value.status == 404
    for bad in ("../x.gguf", "/etc/passwd", "sub/../../x", "a\\b"):
        with pytest.raises(APIError) as refused:
            manager.resolve(bad)
        assert refused.value.status == 404 and refused.value.body.code == "invalid_model_name"


def test_a_loaded_model_named_exactly_is_found_without_walking_model_dir(tmp_path: Path) -> None:
    root = make_dir(tmp_path, "llama3-8b-instruct.Q4_K_M.gguf", "phi-3.gguf")
    manager = ModelManager(load_settings(model_dir=root, default_model="phi-3.gguf"))
    for name in ("llama3-8b-instruct.Q4_K_M.gguf", "phi-3.gguf"):
        manager.loaded[name] = LoadedModel(manager.resolve(name), backend=None)  # type: ignore[arg-type]

    def walked(*_: object, **__: object) -> None:
        raise AssertionError("MODEL_DIR was walked")

    async def used(name: str | None) -> str:
        async with manager.use(name, None) as model:
            return model.entry.name

    manager.resolve = walked  # type: ignore[method-assign]
    assert asyncio.run(used("llama3-8b-instruct.Q4_K_M.gguf")) == "llama3-8b-instruct.Q4_K_M.gguf"
    assert asyncio.run(used(None)) == "phi-3.gguf"  # DEFAULT_MODEL
    del manager.resolve  # a prefix, or a file gone from MODEL_DIR: the catalog decides
    assert asyncio.run(used("llama3-8b")) == "llama3-8b-instruct.Q4_K_M.gguf"
    (root / "phi-3.gguf").unlink()
    with pytest.raises(APIError) as gone:
        asyncio.run(used("phi-3.gguf"))
    assert gone.value.status == 404


def test_settings_names_and_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_KEY", " one , two,")
    monkeypatch.setenv("LOG_LEVEL", "debug")
    settings = load_settings()
    assert settings.api_keys == ("one", "two") and settings.log_level.value == "DEBUG"
    monkeypatch.setenv("CONTEXT_SIZE", "-5")
    with pytest.raises(SettingsError, match="CONTEXT_SIZE"):
        load_settings()


def test_model_entry_sizes_and_default(tmp_path: Path) -> None:
    manager = ModelManager(load_settings(model_dir=make_dir(tmp_path, MODEL)))
    assert manager.default_model_name() == MODEL  # the only model is the default
    assert asyncio.run(_state(manager)) == "available"


async def _state(manager: ModelManager) -> str:
    return manager.state(manager.resolve(None)).value


def test_env_example_loads_with_its_defaults() -> None:
    settings = load_settings(env_file=Path(__file__).parent.parent / ".env.example")
    assert settings.model_dir == Path("models") and settings.threads is None and settings.log_file is None
    assert settings.context_size == 0 and settings.api_keys == ()


def test_catalog_tells_backends_apart_and_follows_model_backend(tmp_path: Path) -> None:
    (tmp_path / "a.gguf").write_bytes(b"GGUF")
    (tmp_path / "lm").mkdir()
    (tmp_path / "lm" / "config.json").write_text("{}")
    (tmp_path / "lm" / "inside.gguf").write_bytes(b"GGUF")  # part of the folder, not a model of its own
    (tmp_path / "st" / "1_Pooling").mkdir(parents=True)
    (tmp_path / "st" / "config.json").write_text("{}")
    (tmp_path / "st" / "modules.json").write_text("[]")
    (tmp_path / ".cache" / "x").mkdir(parents=True)
    (tmp_path / ".cache" / "x" / "config.json").write_text("{}")
    (tmp_path / "notes").mkdir()

    def kinds(**settings: object) -> dict[str, str]:
        catalog = Catalog.from_settings(load_settings(None, model_dir=tmp_path, **settings))
        return {e.name: e.backend.value for e in catalog.entries()}

    assert kinds() == {"a.gguf": "llama-cpp", "lm": "transformers", "st": "sentence-transformers"}
    assert kinds(model_backend="llama-cpp") == {"a.gguf": "llama-cpp"}
    assert kinds(model_backend="transformers")["a.gguf"] == "transformers"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("models: [", "not valid YAML"),
        ("models:\n  - name: x\n", "exactly one of 'path' and 'repo'"),
        ("models:\n  - name: x\n    path: a\n    colour: red\n", "colour"),
        ("models:\n  - {name: x, path: a}\n  - {name: x, repo: o/r}\n", "twice"),
    ],
)
def test_models_config_errors_name_the_problem(tmp_path: Path, text: str, problem: str) -> None:
    config = tmp_path / "models.yaml"
    config.write_text(text)
    with pytest.raises(SettingsError, match="MODELS_CONFIG") as raised:
        Catalog.from_settings(load_settings(None, models_config=config))
    assert problem in str(raised.value)


class FakeBackend:
    closed = False

    async def close(self) -> None:
        self.closed = True


def _manager_with(tmp_path: Path, sizes: dict[str, int], **settings: object) -> ModelManager:
    manager = ModelManager(load_settings(None, model_dir=tmp_path, **settings))
    for age, (name, size) in enumerate(sizes.items()):
        entry = ModelEntry(name, BackendChoice.llama_cpp, tmp_path / name, None, size, 0)
        manager.loaded[name] = LoadedModel(entry, FakeBackend(), last_used=float(age))  # type: ignore[arg-type]
    return manager


def test_making_room_unloads_least_recently_used_idle_models(tmp_path: Path) -> None:
    new = ModelEntry("new", BackendChoice.llama_cpp, tmp_path / "new", None, 300, 0)

    async def run(manager: ModelManager) -> list[str]:
        await manager._make_room(new)
        return sorted(manager.loaded)

    by_memory = _manager_with(tmp_path, {"old": 400, "mid": 400, "recent": 100}, memory_budget="1000")
    by_memory.loaded["old"].in_flight = 1  # serving: never unloaded, though least recently used
    assert asyncio.run(run(by_memory)) == ["old", "recent"]
    by_count = _manager_with(tmp_path, {"old": 1, "mid": 1, "recent": 1}, max_loaded_models=2)
    assert asyncio.run(run(by_count)) == ["recent"]
    busy = _manager_with(tmp_path, {"a": 1}, max_loaded_models=1)
    busy.loaded["a"].in_flight = 1
    with pytest.raises(APIError) as raised:
        asyncio.run(run(busy))
    assert raised.value.status == 503 and raised.value.body.code == "model_capacity"
    too_big = _manager_with(tmp_path, {}, memory_budget="100")
    with pytest.raises(APIError) as raised:
        asyncio.run(run(too_big))
    assert raised.value.status == 400 and raised.value.body.code == "model_too_large"


@pytest.mark.parametrize(("value", "seconds"), [
    (None, None), (0, 0.0), (300, 300.0), ("0", 0.0), ("10", 10.0), ("5m", 300.0), ("1h30m", 5400.0),
    ("1.5s", 1.5), ("250ms", 0.25), (-1, math.inf), ("-1", math.inf), ("-5m", math.inf),
])
def test_ollama_keep_alive_durations(value: object, seconds: float | None) -> None:
    assert keep_alive_seconds(value) == seconds  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["5 parsecs", "m", "", "1h30", "nan"])
def test_ollama_keep_alive_refuses_what_is_not_a_duration(value: str) -> None:
    with pytest.raises(APIError) as caught:
        keep_alive_seconds(value)
    assert caught.value.status == 400 and caught.value.body.param == "keep_alive"


@pytest.mark.parametrize(("name", "reference"), [
    ("hf.co/org/repo", ("org/repo", None, None)),
    ("hf.co/org/repo:latest", ("org/repo", None, None)),
    ("https://huggingface.co/org/repo:Q4_K_M", ("org/repo", None, "Q4_K_M")),
    ("org/repo:model.Q8_0.gguf", ("org/repo", "model.Q8_0.gguf", None)),
])
def test_ollama_pull_names_as_hub_references(name: str, reference: tuple[str, str | None, str | None]) -> None:
    assert hub_reference(name) == reference


def test_ollama_model_names_drop_latest_only() -> None:
    assert model_name("SmolLM2:latest") == "SmolLM2" and model_name("SmolLM2:q8") == "SmolLM2:q8"


class BrokenBackend(FakeBackend):
    async def close(self) -> None:
        raise RuntimeError("cannot free")


def test_keep_alive_loop_survives_a_failing_unload(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manager_module, "KEEP_ALIVE_CHECK_SECONDS", 0.01)
    manager = _manager_with(tmp_path, {"broken": 1, "fine": 1}, keep_alive=0.01)
    manager.loaded["broken"].backend = BrokenBackend()  # type: ignore[assignment]
    fine = manager.loaded["fine"].backend

    async def run() -> bool:
        manager.start_keep_alive()
        for _ in range(500):
            if fine.closed:  # type: ignore[attr-defined]
                break
            await asyncio.sleep(0.01)
        assert manager._keep_alive_task is not None
        alive = not manager._keep_alive_task.done()
        manager._keep_alive_task.cancel()
        return alive

    assert asyncio.run(run()) and fine.closed and not manager.loaded  # type: ignore[attr-defined]


def test_close_frees_every_model_even_when_one_fails_or_its_file_is_gone(tmp_path: Path) -> None:
    # These entries' files do not exist (deleted while loaded): close must not look them up by name.
    manager = _manager_with(tmp_path, {"a": 1, "broken": 1, "c": 1})
    manager.loaded["broken"].backend = BrokenBackend()  # type: ignore[assignment]
    backends = {name: model.backend for name, model in manager.loaded.items()}
    asyncio.run(manager.close())
    assert not manager.loaded and backends["a"].closed and backends["c"].closed  # type: ignore[attr-defined]


def test_context_size_zero_is_the_training_context_where_memory_allows() -> None:
    from local_llm_api.backends.llama_cpp import MIN_CONTEXT, per_slot_context

    budget = load_settings(None, memory_budget="1GB", parallel_slots=3)  # 4 KV caches: 3 slots and embeddings
    assert per_slot_context(None, 8192, 1000, 0, budget, "m") == 8192  # 4 x 8192 x 1000 bytes fit 1 GB
    # 131072 tokens do not: the most that fit beside the weights, in steps of 256.
    assert per_slot_context(None, 131072, 10000, 10**8, budget, "m") == (10**9 - 10**8) // 40000 // 256 * 256
    assert per_slot_context(None, 131072, 10**6, 0, budget, "m") == MIN_CONTEXT  # never below MIN_CONTEXT
    assert per_slot_context(65536, 131072, 1000, 0, budget, "m") == 65536  # asked for: given
    assert per_slot_context(None, 4096, 0, 0, budget, "m") == 4096  # the cache's size unknown: the training context
    # Without flash attention a step's scores count too, per token of one slot's context.
    assert per_slot_context(None, 131072, 10000, 10**8, budget, "m", 20000) == (10**9 - 10**8) // 60000 // 256 * 256


def test_flash_attention_auto_is_off_on_the_cpu_with_an_f16_cache() -> None:
    from local_llm_api.backends.llama_cpp import attention_scratch_per_token, flash_attention
    from local_llm_api.config import FlashAttention

    cpu, long, short = 0, 8192, 2048  # GPU_LAYERS=0: attention on the CPU whatever the build
    assert flash_attention(load_settings(None, reproducible=False), cpu, long) == FlashAttention.off
    # Slots of short chats keep it: below about 100 tokens of context it is the faster kernel.
    assert flash_attention(load_settings(None, reproducible=False), cpu, short) == FlashAttention.auto
    assert flash_attention(load_settings(None, flash_attn="on"), cpu, long) == FlashAttention.on  # asked for: kept
    assert flash_attention(load_settings(None, kv_cache_type="q8_0"), cpu, long) == FlashAttention.auto  # needs it
    # The same logits for a token whatever the step's shape: what REPRODUCIBLE=true asks for.
    assert flash_attention(load_settings(None, reproducible=True), cpu, long) == FlashAttention.auto
    meta = {"general.architecture": "llama", "llama.attention.head_count": 9}
    settings = load_settings(None, batch_size=256)
    assert attention_scratch_per_token(meta, settings, FlashAttention.off) == 256 * 9 * 4  # f32 scores, every head
    assert attention_scratch_per_token(meta, settings, FlashAttention.on) == 0


def test_discovery_sees_changes_to_a_remembered_folder(tmp_path: Path) -> None:
    import json

    catalog = Catalog.from_settings(load_settings(None, model_dir=tmp_path))
    folder = tmp_path / "later-a-model"
    folder.mkdir()
    assert catalog.entries() == []  # an empty folder, remembered as not a model
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    found = catalog.entries()
    assert [e.name for e in found] == ["later-a-model"] and found[0].backend == BackendChoice.transformers
    (folder / "modules.json").write_text("[]")
    assert catalog.entries()[0].backend == BackendChoice.sentence_transformers


def test_gguf_embeddings_pool_as_the_model_says() -> None:
    from local_llm_api.backends.llama_cpp import pooling_type

    assert pooling_type({"general.architecture": "llama"}) == 1  # a generative model: mean
    assert pooling_type({"general.architecture": "bert", "bert.pooling_type": "2"}) == 2  # CLS
    assert pooling_type({"general.architecture": "qwen3", "qwen3.pooling_type": "3"}) == 3  # last token
    assert pooling_type({"general.architecture": "bert", "bert.pooling_type": "4"}) == 1  # a ranker's score is no embedding


def test_a_tokenizer_that_cannot_take_grammars_is_a_400_not_a_500() -> None:
    from local_llm_api.core.output import OutputPlan, check_schemas
    from local_llm_api.structured.constraint import ConstraintFactory

    builds = []

    def unadaptable() -> None:
        builds.append(1)
        raise KeyError("no byte fallback tokens")

    backend = type("B", (), {"constraints": ConstraintFactory(unadaptable)})()
    plan = OutputPlan(grammar='start: "x"')
    for _ in range(2):
        with pytest.raises(APIError) as refused:
            check_schemas(backend, plan)  # type: ignore[arg-type]
        assert refused.value.status == 400 and refused.value.body.code == "model_not_supported"
    assert len(builds) == 1  # the failure is remembered, not rebuilt for every request


def test_memory_budget_counts_the_kv_cache_of_every_slot(tmp_path: Path) -> None:
    from tests.conftest import place_model

    path = place_model(tmp_path)
    entry = ModelEntry(path.name, BackendChoice.llama_cpp, path, None, path.stat().st_size, 0)
    manager = ModelManager(load_settings(None, model_dir=tmp_path, context_size=2048, parallel_slots=4))
    # SmolLM2-135M: 30 layers x 3 KV heads x (64 + 64) values per token, f16; 4 slots + the embedding context.
    assert manager.footprint(entry) == entry.size_bytes + 2048 * 5 * 30 * 3 * 128 * 2
    tight = ModelManager(load_settings(None, model_dir=tmp_path, context_size=2048, memory_budget=str(entry.size_bytes + 1000)))
    with pytest.raises(APIError) as refused:
        asyncio.run(tight._make_room(entry))
    assert refused.value.body.code == "model_too_large" and "KV cache" in refused.value.body.message


def test_loose_objects_are_closed_for_grammars_only_where_they_say_nothing() -> None:
    from local_llm_api.core.output import closed_objects

    schema = {"type": "object", "properties": {"properties": {"type": "object", "properties": {"x": {"type": "integer"}}},
                                               "free": {"type": "object", "additionalProperties": True},
                                               "pattern": {"type": "object", "patternProperties": {"^a": {}}}},
              "$defs": {"item": {"type": "object", "properties": {"y": {}}}}, "default": {"properties": {}}}
    closed = closed_objects(schema)
    assert closed["additionalProperties"] is False
    assert closed["properties"]["properties"]["additionalProperties"] is False  # a property named "properties"
    assert "additionalProperties" not in closed["properties"]["properties"]["properties"]  # its own map of names
    assert closed["properties"]["free"]["additionalProperties"] is True  # said explicitly: kept
    assert "additionalProperties" not in closed["properties"]["pattern"]
    assert closed["$defs"]["item"]["additionalProperties"] is False
    assert closed["default"] == {"properties": {}}  # data, not a schema


def test_the_queue_admits_the_longest_wait_for_the_work_brought_first() -> None:
    # More conversations than slots: a returning turn whose prompt is cached (ANSWER_WORK: its answer's work only)
    # goes ahead of a cold prompt of 2,000 tokens that came earlier, until that one has waited long enough.
    import time

    from local_llm_api.backends.engine import Engine, Sequence

    class Queue(Engine):
        def __init__(self) -> None:
            super().__init__(n_slots=1, max_queue=8, token_bytes=lambda t: b"", is_end=lambda t: False, name="q")
            self.discarded: list[Sequence] = []

        def _new_sequence(self, *args: object) -> Sequence:
            raise NotImplementedError

        def _running_count(self) -> int:
            return 0

        def _step(self) -> None:
            pass

        def _fail_running(self, error: BaseException) -> None:
            pass

        def _to_read(self, sequence: Sequence) -> int:
            return 0 if sequence.prompt[0] == 1 else len(sequence.prompt)  # prompts starting with 1 are cached

        def _discard(self, sequence: Sequence) -> None:
            self.discarded.append(sequence)

    def queued(engine: Queue, *sequences: tuple[list[int], float]) -> list[Sequence]:
        now = time.perf_counter()
        made = [Sequence(prompt, None, None, lambda c: None, arrived=now - waited)  # type: ignore[arg-type]
                for prompt, waited in sequences]
        engine._waiting.extend(made)
        return made

    engine = Queue()
    cold, warm = queued(engine, ([2] * 2000, 10.0), ([1] * 2000, 1.0))
    assert engine._pop_waiting() is warm and warm.to_read == 0 and cold.to_read == 2000
    engine._waiting.clear()
    cold, warm = queued(engine, ([2] * 2000, 40.0), ([1] * 2000, 1.0))  # waited 40 s for 2,064: passes a 1-s wait
    assert engine._pop_waiting() is cold
    engine._waiting.clear()
    first, second = queued(engine, ([2] * 50, 2.0), ([3] * 50, 1.0))  # the same work: arrival order
    gone, = queued(engine, ([1] * 10, 5.0))
    gone.cancelled = True
    assert engine._pop_waiting(lambda s: s is not first) is second  # what the engine cannot admit yet is passed over
    engine._put_back(second)
    assert engine._pop_waiting() is first and engine.discarded == [gone]
    engine._put_back(first)  # back in its arrival place
    assert list(engine._waiting) == [first, second]


def test_an_idle_engine_reads_a_wave_of_requests_in_one_step() -> None:
    # Requests checked together (their places in the queue held) but queued one by one as each prompt is ready: the
    # idle engine's first step waits for all of them, or for GATHER_SECONDS when one never comes.
    from collections import deque

    from local_llm_api.backends.base import GenerationChunk, SamplingParams
    from local_llm_api.backends.engine import Engine, Sequence

    class Steps(Engine):
        def __init__(self) -> None:
            super().__init__(n_slots=4, max_queue=8, token_bytes=lambda t: b"", is_end=lambda t: False, name="steps")
            self.steps: list[int] = []

        def _new_sequence(self, prompt: list[int], params: SamplingParams, text: object, emit: object) -> Sequence:
            return Sequence(prompt, params, text, emit)  # type: ignore[arg-type]

        def _running_count(self) -> int:
            return 0

        def _step(self) -> None:
            with self._wake:
                wave, self._waiting = list(self._waiting), deque()
            self.steps.append(len(wave))
            for sequence in wave:
                sequence.emit(GenerationChunk("", finish_reason="stop"))

        def _fail_running(self, error: BaseException) -> None:
            pass

        def _discard(self, sequence: Sequence) -> None:
            pass

    params = SamplingParams(max_tokens=1, temperature=0.7, top_p=1.0, top_k=0, min_p=0.0, repeat_penalty=1.0)

    async def answer(engine: Steps, reservation: object) -> None:
        async for _ in engine.generate([1, 2, 3], params, reservation):  # type: ignore[arg-type]
            pass

    async def wave(engine: Steps, ready_one_by_one: int) -> None:
        places = [engine.check_capacity(1) for _ in range(ready_one_by_one)]
        tasks = []
        for place in places:  # each queued once its prompt is ready, a while apart (the engine thread wakes between)
            tasks.append(asyncio.create_task(answer(engine, place)))
            await asyncio.sleep(0.05)
        await asyncio.gather(*tasks)

    engine = Steps()
    engine._gather_seconds = 600.0  # only the wave's last arrival ends the wait
    engine.start()
    try:
        asyncio.run(wave(engine, 3))
        assert engine.steps == [3]
        asyncio.run(wave(engine, 1))  # a request alone: no wait
        assert engine.steps == [3, 1]
        engine._gather_seconds = 0.05
        never = engine.check_capacity(1)  # a request checked whose prompt never comes (it failed, and has not
        asyncio.run(wave(engine, 1))  # released its place yet): the step goes ahead after GATHER_SECONDS
        assert engine.steps == [3, 1, 1]
        never.release()
    finally:
        engine.close()


def test_a_prefix_is_copied_from_another_slot_when_reading_it_would_cost_more() -> None:
    from local_llm_api.backends.batching import MIN_SHARED_PREFIX, BatchEngine
    from local_llm_api.backends.prefill_budget import PrefillBudget

    engine = object.__new__(BatchEngine)
    # A CPU: a 2,048-token slot's stream copies in 12 ms, a token's state moves out and in at 5.6 us each way.
    engine._prefill, engine._slot_copy_seconds, engine._token_copy_seconds = PrefillBudget(0.15, 64, 512), 0.012, 5.6e-6
    assert engine._worth_copying(2048) == MIN_SHARED_PREFIX  # nothing read yet: what a token costs is not known
    engine._prefill.record(42, 0.185)  # 4.4 ms a token
    assert engine._worth_copying(2048) == 3  # a full slot: its stream (12 ms), cheaper than its state (23 ms)
    assert engine._copy_seconds(2048) == 0.012
    assert engine._worth_copying(44) == 1  # a slot that holds 44 tokens: their state, 0.5 ms
    assert engine._copy_seconds(44) == 2 * 44 * 5.6e-6
    # A GPU: long slots, fast reads; its KV's state would go through host memory, so only the stream is copied.
    engine._prefill, engine._slot_copy_seconds, engine._token_copy_seconds = PrefillBudget(0.15, 64, 512), 0.04, 0.0
    engine._prefill.record(512, 0.02)
    assert engine._worth_copying(44) == engine._worth_copying(2048) == 1024


def test_prompts_are_read_shortest_first_and_the_first_admitted_keeps_half_a_step() -> None:
    # The batch's prompt tokens (64 here: PREFILL_CHUNK while a stream runs) go to the shortest rest first, but the
    # prompt admitted first keeps half of them, so that short prompts arriving step after step never stall it.
    from local_llm_api.backends.batching import BatchEngine, LlamaSequence, Slot
    from local_llm_api.backends.prefill_budget import PrefillBudget

    def slot(seq_id: int, arrived: float, pending: int, streaming: bool = False) -> Slot:
        sequence = LlamaSequence([1] * pending, None, None, lambda c: None, arrived=arrived,  # type: ignore[arg-type]
                                 first_token_at=arrived if streaming else None, pending=[1] * pending,
                                 admitted=arrived)
        return Slot(seq_id, sequence=sequence)

    engine = object.__new__(BatchEngine)  # the batch's own logic: no model behind it
    engine._prefill, engine._batch_size, engine._draft_tokens = PrefillBudget(0.15, 64, 512), 512, 0
    engine._write_batch = lambda fed: None  # type: ignore[method-assign]
    long_one, short_one = slot(1, 0.0, 1000), slot(2, 1.0, 40)
    engine.slots = [slot(0, 0.0, 1, streaming=True), long_one, short_one]
    fed = {item.slot.seq_id: len(item.tokens) for item in engine._fill_batch()}
    assert fed == {0: 1, 2: 32, 1: 32}
    engine.slots[0].sequence.pending = [1]  # type: ignore[union-attr]  (its next token, sampled)
    fed = {item.slot.seq_id: len(item.tokens) for item in engine._fill_batch()}
    assert fed == {0: 1, 2: 8, 1: 56}
    first_short, later_long = slot(1, 0.0, 10), slot(2, 1.0, 1000)  # the first admitted is also the shortest
    engine.slots = [slot(0, 0.0, 1, streaming=True), first_short, later_long]
    assert {item.slot.seq_id: len(item.tokens) for item in engine._fill_batch()} == {0: 1, 1: 10, 2: 54}
