"""Ollama's native API, through the official `ollama` Python client unchanged, on both backends: list, show,
ps, chat and generate (streamed and not), `format` with a Pydantic schema, a tool round trip, embed,
keep_alive, and errors in Ollama's `{"error": ...}` shape."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import httpx
import ollama
import pytest
from pydantic import BaseModel

from ..conftest import Served
from ..models import MINILM

GREEDY = {"temperature": 0, "num_predict": 24}
TOOL_GREEDY = {"temperature": 0, "num_predict": 80}  # room for a whole <tool_call> block


@pytest.fixture
def oc(served: Served) -> Iterator[ollama.Client]:
    client = ollama.Client(host=served.server.url, timeout=120)
    yield client
    client._client.close()


def tagged(served: Served) -> str:
    """The name /api/tags lists for the served model."""
    return Path(served.model).name.removesuffix(".gguf") + ":latest"


def embedding_model(served: Served) -> str:
    return served.model if served.backend == "llama-cpp" else MINILM


def test_list_show_and_ps(oc: ollama.Client, served: Served) -> None:
    listed = {m.model: m for m in oc.list().models}
    model = listed[tagged(served)]
    assert model.details.family == "llama"
    assert model.details.format == ("gguf" if served.backend == "llama-cpp" else "safetensors")
    assert model.details.parameter_size == "135M" and model.size and len(model.digest or "") == 64
    if served.backend == "transformers":
        assert listed[f"{MINILM}:latest"].details.family == "bert"
    shown = oc.show(tagged(served))
    assert "<|im_start|>" in (shown.template or "")
    assert shown.capabilities == ["completion", "tools"]
    assert shown.modelinfo["general.architecture"] == "llama"
    assert "num_ctx" in (shown.parameters or "")
    oc.generate(tagged(served), "Hi", options={"num_predict": 1})  # loaded now, whatever ran before
    running = {m.model: m for m in oc.ps().models}[tagged(served)]
    assert running.context_length == 2048 and running.expires_at is not None
    assert running.size_vram == 0  # no GPU here


def test_chat_plain_and_streamed_agree(oc: ollama.Client, served: Served) -> None:
    messages = [{"role": "user", "content": "Name three colours."}]
    whole = oc.chat(tagged(served), messages=messages, options=GREEDY)
    assert whole.done and whole.done_reason in ("stop", "length") and whole.message.role == "assistant"
    assert whole.message.content and whole.eval_count and whole.prompt_eval_count
    assert whole.total_duration >= whole.eval_duration > 0
    parts = list(oc.chat(tagged(served), messages=messages, options=GREEDY, stream=True))
    assert len(parts) > 3 and parts[-1].done and not any(p.done for p in parts[:-1])
    assert "".join(p.message.content or "" for p in parts) == whole.message.content
    assert parts[-1].eval_count == whole.eval_count and parts[-1].prompt_eval_count == whole.prompt_eval_count


def test_generate_plain_streamed_raw_and_limits(oc: ollama.Client, served: Served) -> None:
    whole = oc.generate(tagged(served), "Write a word.", options=GREEDY)
    assert whole.done and whole.response
    streamed = list(oc.generate(tagged(served), "Write a word.", options=GREEDY, stream=True))
    assert "".join(p.response or "" for p in streamed) == whole.response
    raw = oc.generate(tagged(served), "The capital of France is", raw=True, options={"temperature": 0, "num_predict": 3})
    assert raw.eval_count == 3 and raw.done_reason == "length"
    # The raw prompt is read as-is: far fewer tokens than the templated one with its default system prompt.
    assert raw.prompt_eval_count < whole.prompt_eval_count
    stopped = oc.generate(tagged(served), "Count: 1, 2, 3,", raw=True, options={"temperature": 0, "num_predict": 20, "stop": [","]})
    assert "," not in stopped.response and stopped.done_reason == "stop"
    with_system = oc.generate(tagged(served), "Hi", system="Answer in French.", options=GREEDY)
    assert with_system.prompt_eval_count != whole.prompt_eval_count


def test_num_ctx_is_honoured_within_the_model(oc: ollama.Client, served: Served) -> None:
    long = "word " * 300
    with pytest.raises(ollama.ResponseError) as refused:
        oc.generate(tagged(served), long, raw=True, options={"num_ctx": 64, "num_predict": 4})
    assert refused.value.status_code == 400 and "maximum context length is 64" in refused.value.error
    answer = oc.generate(tagged(served), long, raw=True, options={"num_ctx": 100000, "num_predict": 2})
    assert answer.done and answer.prompt_eval_count > 300  # capped at the model's 2048, not refused
    # Chat drops the oldest turns to fit num_ctx, as Ollama does, unless truncate is false.
    history = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"Turn {i}: " + "text " * 30} for i in range(8)]
    history.append({"role": "user", "content": "Say hi."})
    fitted = oc.chat(tagged(served), messages=history, options={"num_ctx": 200, "num_predict": 8, "temperature": 0})
    assert fitted.prompt_eval_count + 8 <= 200
    strict = httpx.post(f"{served.server.url}/api/chat", timeout=60,
                        json={"model": tagged(served), "messages": history, "stream": False, "truncate": False,
                              "options": {"num_ctx": 200, "num_predict": 8}})
    assert strict.status_code == 400 and "maximum context length is 200" in strict.json()["error"]


class Country(BaseModel):
    name: str
    capital: str
    continent: str


def test_format_with_a_pydantic_schema_and_json(oc: ollama.Client, served: Served) -> None:
    answer = oc.chat(tagged(served), messages=[{"role": "user", "content": "Describe France."}],
                     format=Country.model_json_schema(), options={"temperature": 0, "num_predict": 200})
    Country.model_validate_json(answer.message.content)
    loose = oc.generate(tagged(served), 'Reply with a JSON object that has a key "colour" set to "red".', format="json",
                        options={"temperature": 0, "num_predict": 200})
    assert loose.done_reason == "stop" and isinstance(json.loads(loose.response), dict)


def add_two_numbers(a: int, b: int) -> int:
    """Add two numbers.

    Args:
      a: The first number
      b: The second number
    """
    return a + b


@pytest.mark.parametrize("stream", [False, True])
def test_tool_round_trip(oc: ollama.Client, served: Served, stream: bool) -> None:
    # Ollama's API cannot force a tool and this 135M model does not choose one by itself; asked to repeat a call in
    # the tool-call format, it writes one, which the server must recognise and answer in Ollama's shape.
    call_text = '<tool_call>\n{"name": "add_two_numbers", "arguments": {"a": 3, "b": 4}}\n</tool_call>'
    messages = [{"role": "user", "content": f"Repeat exactly, with nothing else:\n{call_text}"}]
    if stream:
        parts = list(oc.chat(tagged(served), messages=messages, tools=[add_two_numbers], options=TOOL_GREEDY, stream=True))
        assert parts[-1].done
        calls = [c for p in parts for c in (p.message.tool_calls or [])]
        assert "<tool_call>" not in "".join(p.message.content or "" for p in parts)  # the call is not leaked as text
    else:
        answer = oc.chat(tagged(served), messages=messages, tools=[add_two_numbers], options=TOOL_GREEDY)
        calls = list(answer.message.tool_calls or [])
    assert len(calls) == 1, calls
    call = calls[0]
    assert call.function.name == "add_two_numbers" and dict(call.function.arguments) == {"a": 3, "b": 4}
    result = add_two_numbers(**call.function.arguments)
    messages += [{"role": "assistant", "content": "", "tool_calls": [call]},
                 {"role": "tool", "content": str(result), "tool_name": call.function.name}]
    final = oc.chat(tagged(served), messages=messages, tools=[add_two_numbers], options=TOOL_GREEDY)
    assert final.done and (final.message.content or final.message.tool_calls)


def test_embed_and_the_older_embeddings(oc: ollama.Client, served: Served) -> None:
    model = embedding_model(served)
    size = 576 if served.backend == "llama-cpp" else 384
    out = oc.embed(model, input=["The cat sat on the mat.", "Stock markets fell today."])
    assert len(out.embeddings) == 2 and all(len(v) == size for v in out.embeddings)
    assert math.isclose(sum(x * x for x in out.embeddings[0]), 1.0, rel_tol=1e-3)
    assert out.prompt_eval_count and out.total_duration
    short = oc.embed(model, input="The cat sat on the mat.", dimensions=64)
    assert len(short.embeddings[0]) == 64 and math.isclose(sum(x * x for x in short.embeddings[0]), 1.0, rel_tol=1e-3)
    legacy = oc.embeddings(model=model, prompt="The cat sat on the mat.")
    assert len(legacy.embedding) == size
    assert math.isclose(sum(a * b for a, b in zip(legacy.embedding, out.embeddings[0])), 1.0, rel_tol=1e-3)
    with pytest.raises(ollama.ResponseError) as too_wide:
        oc.embed(model, input="x", dimensions=size + 1)
    assert too_wide.value.status_code == 400 and "dimensions" in too_wide.value.error
    with pytest.raises(ollama.ResponseError) as too_long:
        oc.embed(model, input="word " * 3000, truncate=False)
    assert too_long.value.status_code == 400 and "context length" in too_long.value.error
    assert len(oc.embed(model, input="word " * 3000).embeddings[0]) == size  # truncated by default, as in Ollama


def _loaded(oc: ollama.Client) -> set[str]:
    return {m.model for m in oc.ps().models}


def _wait_until(condition, timeout: float = 30) -> None:  # type: ignore[no-untyped-def]
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "condition never held"
        time.sleep(0.1)


def test_keep_alive_loads_unloads_and_sets_expiry(oc: ollama.Client, served: Served) -> None:
    name = tagged(served)
    loaded = oc.generate(name, "", keep_alive="5m")  # an empty prompt only loads
    assert loaded.done and loaded.done_reason == "load"
    running = {m.model: m for m in oc.ps().models}[name]
    expires_in = (running.expires_at - datetime.now(timezone.utc)).total_seconds()
    assert 250 < expires_in <= 300
    oc.generate(name, "Hi", options={"num_predict": 2}, keep_alive=0)  # answered, then unloaded
    _wait_until(lambda: name not in _loaded(oc))
    assert oc.chat(name, messages=[{"role": "user", "content": "Hi"}], options={"num_predict": 2}, keep_alive=-1).done
    running = {m.model: m for m in oc.ps().models}[name]
    assert running.expires_at.year >= 2100  # kept loaded
    unloaded = oc.chat(name, messages=[], keep_alive=0)
    assert unloaded.done_reason == "unload" and name not in _loaded(oc)
    assert oc.chat(name, messages=[], keep_alive="1h30m").done_reason == "load"


def test_errors_in_ollamas_shape(oc: ollama.Client, served: Served) -> None:
    name = tagged(served)
    cases = [
        (lambda: oc.chat("no-such-model", messages=[{"role": "user", "content": "Hi"}]), 404, "no-such-model"),
        (lambda: oc.chat(name, messages=[{"role": "user", "content": "Hi", "images": [b"\x89PNG"]}]), 400, "images"),
        (lambda: oc.chat(name, messages=[{"role": "user", "content": "Hi"}], think=True), 400, "think"),
        (lambda: oc.generate(name, "Hi", options={"num_thread": 2}), 400, "options.num_thread"),
        (lambda: oc.generate(name, "Hi", options={"mirostat": 2}), 400, "options.mirostat"),
        (lambda: oc.generate(name, "Hi", keep_alive="5 parsecs"), 400, "keep_alive"),
        (lambda: oc.generate(name, "Hi", suffix="end"), 400, "suffix"),
        (lambda: oc.generate(name, "Hi", template="{{ .Prompt }}"), 400, "template"),
        (lambda: oc.generate(name, "Hi", context=[1, 2, 3]), 400, "context"),
        (lambda: oc.show("no-such-model"), 404, "no-such-model"),
    ]
    for call, status, text in cases:
        with pytest.raises(ollama.ResponseError) as caught:
            call()
        assert caught.value.status_code == status and text in caught.value.error, caught.value.error
    # Fields Ollama does not have (a typo, a newer client's) are accepted and named; one of the wrong type is a 400.
    for body, text in (({"model": name, "prompt": "Hi", "colour": 1, "stream": False, "options": {"num_predict": 1}}, "colour"),
                       ({"model": name, "options": {"num_gpus": 1}}, "options.num_gpus"),
                       ({"model": name, "input": "x", "options": {"temperature": 0.5}}, "options.temperature")):
        raw = httpx.post(f"{served.server.url}/api/{'embed' if 'input' in body else 'generate'}", json=body, timeout=30)
        assert raw.status_code == 200 and text in raw.headers["x-ignored-fields"], raw.text
    raw = httpx.post(f"{served.server.url}/api/generate", json={"model": name, "prompt": "Hi", "raw": "yes"}, timeout=30)
    assert raw.status_code == 400 and set(raw.json()) == {"error"} and "raw" in raw.json()["error"]
    # curl -d sends JSON as form data, as Ollama's own examples do: still read as JSON.
    form = httpx.post(f"{served.server.url}/api/generate", timeout=60,
                      content=json.dumps({"model": name, "prompt": "Hi", "stream": False, "options": {"num_predict": 2}}),
                      headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert form.status_code == 200 and form.json()["done"]
    # Our own /api/v1 routes keep the OpenAI envelope.
    assert "message" in httpx.post(f"{served.server.url}/api/v1/chat/completions", json={}, timeout=30).json()["error"]
