"""Tool calls in every model family's own format, through the real server on both backends and the official SDKs.

Forced: the bundled SmolLM2 (the GGUF, and its Transformers copy) is served under one name per family, with that
family's template (tests/chat_templates.py, our own) set in MODELS_CONFIG. `tool_choice` forces a call; the grammar
writes it in the family's frame, with arguments fixed by the schema (an enum), so the answer is certain even from a
135M model. Ollama's API has no `tool_choice`: its path is tested with the written calls below.

Written: a scripted model per family (tests/agents/scripted_model.py) writes, unprompted and in small pieces, a
sentence and then a call in its family's own text; its template is in the GGUF (detected, not configured). The call
comes back as a call on chat, Responses, Messages and Ollama, streamed and not, with the same arguments.

The families' unit tests (detection, grammars, every chunking, fuzz) are in tests/test_tool_families.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import anthropic
import ollama
import openai
import pytest
from pydantic import BaseModel

from local_llm_api.prompting.chat_template import render_chat
from local_llm_api.prompting.tool_families import tool_format
from local_llm_api.prompting.tool_syntax import Call

from .agents.scripted_model import build_model, smollm2_vocabulary
from .chat_templates import TEMPLATES, TOOL_FAMILIES
from .conftest import MODEL, Server, start_server, stop_server
from .models import HF_SMOLLM2

# One template per family (the first that the table names for it).
FAMILY_TEMPLATES = {family: name for name, family in reversed(list(TOOL_FAMILIES.items()))}
# On Transformers (slower), one family per way of writing arguments.
ONE_PER_STYLE = ["hermes", "mistral-v11", "qwen3-coder", "lfm2", "functiongemma", "glm-4.5"]
WRITTEN_ON_TRANSFORMERS = ["qwen3-coder", "mistral-v11", "functiongemma"]  # each scripted model loads in ~15 s there

CITIES = ["Oslo", "Lima"]
SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "enum": CITIES}}, "required": ["city"]}
OPENAI_TOOL = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                                "parameters": SCHEMA}}
RESPONSES_TOOL = {"type": "function", "name": "get_weather", "description": "The weather in a city", "parameters": SCHEMA}
ANTHROPIC_TOOL = {"name": "get_weather", "description": "The weather in a city", "input_schema": SCHEMA}
QUESTION = "What is the weather in Oslo?"
GREEDY = {"temperature": 0}
# Thinking families would think first, and a 135M model's thinking does not end: these ask for the call at once.
NO_THINKING = {"chat": {"reasoning_effort": "none"}, "responses": {"reasoning": {"effort": "none"}},
               "messages": {"thinking": {"type": "disabled"}}}


class Weather(BaseModel):
    city: Literal["Oslo", "Lima"]


# ---------------------------------------------------------------- forced calls on the bundled model


def forced_config(root: Path, path: Path, families: list[str]) -> Path:
    config = root / "models.yaml"
    config.write_text("models:\n" + "\n".join(
        f"  - name: f-{family}\n    path: {path}\n    chat_template: {json.dumps(TEMPLATES[FAMILY_TEMPLATES[family]])}"
        for family in families))
    return config


@pytest.fixture(scope="module", params=["llama-cpp", "transformers"])
def forced(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, list[str]]]:
    root = tmp_path_factory.mktemp(f"forced-{request.param}")
    if request.param == "llama-cpp":
        model_dir = request.getfixturevalue("model_dir")
        families, path = list(FAMILY_TEMPLATES), model_dir / MODEL
    else:
        model_dir = request.getfixturevalue("hf_model_dir")
        families, path = ONE_PER_STYLE, model_dir / HF_SMOLLM2
    server = start_server(root, model_dir, wait_for_model=False, PRELOAD_MODEL="false", MAX_LOADED_MODELS="2",
                          REPRODUCIBLE="false",  # the second request of each family reads its prompt from the cache
                          PARALLEL_SLOTS="1", MODELS_CONFIG=str(forced_config(root, path, families)))
    yield server, families
    stop_server(server)


def test_every_family_is_detected_when_served(forced: tuple[Server, list[str]]) -> None:
    server, families = forced
    with server.client() as client:
        listed = {m["id"]: m for m in client.get("/models").json()["data"]}
        for family in families:
            expected = {"family": family, "how": "detected"} if family != "derived" else {"family": "derived", "how": "derived"}
            assert listed[f"f-{family}"]["tool_format"] == expected
            # The prompt holds the tools as the family's template shows them, or in the fallback system prompt.
            prompt = client.post("/apply-template", json={"model": f"f-{family}", "tools": [OPENAI_TOOL],
                                                          "messages": [{"role": "user", "content": QUESTION}]})
            assert prompt.status_code == 200 and "get_weather" in prompt.json()["prompt"], (family, prompt.text)


def forced_on_chat(server: Server, model: str) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
    user = [{"role": "user", "content": QUESTION}]
    answer = client.chat.completions.create(model=model, messages=user, tools=[OPENAI_TOOL], tool_choice="required",
                                            max_tokens=120, **GREEDY, **NO_THINKING["chat"])
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather" and json.loads(call.function.arguments)["city"] in CITIES
    # Streamed, through the SDK's own parser: a strict Pydantic tool, parsed from the joined argument deltas.
    named = {"type": "function", "function": {"name": "get_weather"}}
    with client.chat.completions.stream(model=model, messages=user, max_tokens=120, tool_choice=named,
                                        tools=[openai.pydantic_function_tool(Weather, name="get_weather")],
                                        **GREEDY, **NO_THINKING["chat"]) as stream:
        chunks = [e.chunk for e in stream if e.type == "chunk"]
        final = stream.get_final_completion()
    deltas = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []]
    assert deltas and deltas[0].id and deltas[0].function.name == "get_weather"
    assert all(d.id is None and d.function.name is None for d in deltas[1:])  # named once
    joined = "".join(d.function.arguments or "" for d in deltas)
    assert joined == final.choices[0].message.tool_calls[0].function.arguments
    assert final.choices[0].message.tool_calls[0].function.parsed_arguments.city in CITIES
    assert final.choices[0].finish_reason == "tool_calls" and not (final.choices[0].message.content or "").strip()


def forced_on_responses(server: Server, model: str) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
    response = client.responses.create(model=model, input=QUESTION, tools=[RESPONSES_TOOL], tool_choice="required",
                                        max_output_tokens=120, **GREEDY, **NO_THINKING["responses"])
    calls = [item for item in response.output if item.type == "function_call"]
    assert calls and calls[0].name == "get_weather" and json.loads(calls[0].arguments)["city"] in CITIES, response
    with client.responses.stream(model=model, input=QUESTION, tools=[RESPONSES_TOOL], max_output_tokens=120,
                                 tool_choice={"type": "function", "name": "get_weather"}, **GREEDY,
                                 **NO_THINKING["responses"]) as stream:
        events = list(stream)
        final = stream.get_final_response()
    deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    item = next(i for i in final.output if i.type == "function_call")
    assert deltas == done[0].arguments == item.arguments and json.loads(item.arguments)["city"] in CITIES


def forced_on_messages(server: Server, model: str) -> None:
    client = anthropic.Anthropic(base_url=server.url, api_key="x", max_retries=0)
    user = [{"role": "user", "content": QUESTION}]
    message = client.messages.create(model=model, max_tokens=120, tools=[ANTHROPIC_TOOL], tool_choice={"type": "any"},
                                     messages=user, extra_body=GREEDY, **NO_THINKING["messages"])
    message = anthropic.types.Message.model_validate(message.model_dump(), strict=True)
    use = message.content[-1]
    assert message.stop_reason == "tool_use" and use.type == "tool_use" and use.input["city"] in CITIES, message
    with client.messages.stream(model=model, max_tokens=120, tools=[ANTHROPIC_TOOL], extra_body=GREEDY, messages=user,
                                tool_choice={"type": "tool", "name": "get_weather"}, **NO_THINKING["messages"]) as stream:
        events = list(stream)
        final = stream.get_final_message()
    partial = "".join(e.delta.partial_json for e in events if e.type == "content_block_delta"
                      and e.delta.type == "input_json_delta")
    assert json.loads(partial) == final.content[-1].input and final.content[-1].input["city"] in CITIES


FORCED_ON = [forced_on_chat, forced_on_responses, forced_on_messages]


def test_forced_calls_in_every_family(forced: tuple[Server, list[str]]) -> None:
    """Each family on one API, in turn (the parser is one for all APIs; each API sees a third of the families),
    streamed and not."""
    server, families = forced
    for i, family in enumerate(families):
        check = FORCED_ON[i % len(FORCED_ON)]
        try:
            check(server, f"f-{family}")
        except AssertionError as error:
            raise AssertionError(f"{family} on {check.__name__}: {error}") from error


# ---------------------------------------------------------------- calls the model writes itself


PROSE = "Let me look that up. "
WRITTEN = Call("get_weather", json.dumps({"city": "Oslo", "days": 3}), id="0")


def written_text(family: str) -> tuple[str, str]:
    """What the scripted model of this family writes, and the sentence before its call ("" where the family's
    calls start the answer: Llama 3's bare JSON, gpt-oss's channels, Functionary v3.2's `>>>` sections)."""
    syntax = tool_format(TEMPLATES[FAMILY_TEMPLATES[family]]).syntax
    call = syntax.call_text([WRITTEN])
    prompt = render_chat(TEMPLATES[FAMILY_TEMPLATES[family]], [{"role": "user", "content": QUESTION}],
                         bos_token="", eos_token="", add_generation_prompt=True)
    if syntax.prompt_opens and prompt.endswith(syntax.prompt_opens):
        return call[len(syntax.prompt_opens):], ""
    if syntax.bare or family == "gpt-oss":
        return call, ""
    return PROSE + call, PROSE.strip()


def pieces(text: str, size: int = 6) -> list[str]:
    """The text in pieces of about `size` characters, each a new token: none twice (a token has one successor),
    none a text SmolLM2's vocabulary has (the prompt may end with that token)."""
    vocabulary = set(smollm2_vocabulary()[0])
    out: list[str] = []
    at = 0
    while at < len(text):
        end = min(at + size, len(text))
        while (text[at:end] in out or text[at:end] in vocabulary) and end < len(text):
            end += 1
        out.append(text[at:end])
        at = end
    while len(out) > 1 and (out.count(out[-1]) > 1 or out[-1] in vocabulary):
        last = out.pop()
        out[-1] += last
    assert "".join(out) == text
    return out


@pytest.fixture(scope="module")
def written_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    models = tmp_path_factory.mktemp("written-calls")
    for family in FAMILY_TEMPLATES:
        chain = tuple(pieces(written_text(family)[0]))
        build_model(models / f"w-{family}.gguf", [chain], TEMPLATES[FAMILY_TEMPLATES[family]], context_length=4096,
                    otherwise=chain[0])
    return models


@pytest.fixture(scope="module", params=["llama-cpp", "transformers"])
def written(request: pytest.FixtureRequest, written_models: Path,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, list[str]]]:
    families = list(FAMILY_TEMPLATES) if request.param == "llama-cpp" else WRITTEN_ON_TRANSFORMERS
    server = start_server(tmp_path_factory.mktemp(f"written-{request.param}"), written_models, wait_for_model=False,
                          PRELOAD_MODEL="false", DEFAULT_MODEL="w-hermes.gguf", MODEL_BACKEND=request.param,
                          MAX_LOADED_MODELS="3", PARALLEL_SLOTS="1", REPRODUCIBLE="false")
    yield server, families
    stop_server(server)


def test_written_calls_on_every_api(written: tuple[Server, list[str]]) -> None:
    server, families = written
    chat = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
    messages = anthropic.Anthropic(base_url=server.url, api_key="x", max_retries=0)
    olla = ollama.Client(host=server.url)
    user = [{"role": "user", "content": QUESTION}]
    weather = {"city": "Oslo", "days": 3}
    tool = {**OPENAI_TOOL, "function": {**OPENAI_TOOL["function"], "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}}}
    for family in families:
        model, prose = f"w-{family}", written_text(family)[1]
        said = lambda text, thought="": (text or "").strip() or thought.strip()  # noqa: E731 (a thinking family's prose may be reasoning)

        answer = chat.chat.completions.create(model=model, messages=user, tools=[tool], max_tokens=200)
        message = answer.choices[0].message
        assert [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls or []] == \
            [("get_weather", weather)], (family, message)
        assert answer.choices[0].finish_reason == "tool_calls"
        assert said(message.content, (message.model_extra or {}).get("reasoning_content") or "") == prose, family

        chunks = list(chat.chat.completions.create(model=model, messages=user, tools=[tool], max_tokens=200, stream=True))
        deltas = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []]
        assert [d.function.name for d in deltas if d.function.name] == ["get_weather"], family
        assert json.loads("".join(d.function.arguments or "" for d in deltas)) == weather, family
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        thought = "".join((c.choices[0].delta.model_extra or {}).get("reasoning_content") or "" for c in chunks if c.choices)
        assert said(text, thought) == prose, (family, text)  # no piece of a marker leaks into the content

        with chat.responses.stream(model=model, input=QUESTION, tools=[{**RESPONSES_TOOL, "parameters": tool["function"]["parameters"]}],
                                   max_output_tokens=200) as stream:
            events = list(stream)
            final = stream.get_final_response()
        item = next(i for i in final.output if i.type == "function_call")
        assert (item.name, json.loads(item.arguments)) == ("get_weather", weather), family
        assert "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta") == item.arguments

        input_schema = tool["function"]["parameters"]
        with messages.messages.stream(model=model, max_tokens=200, messages=user,
                                      tools=[{**ANTHROPIC_TOOL, "input_schema": input_schema}]) as stream:
            final_message = stream.get_final_message()
        use = final_message.content[-1]
        assert final_message.stop_reason == "tool_use" and (use.name, use.input) == ("get_weather", weather), family

        for streamed in (False, True):
            parts = olla.chat(model=model, messages=user, tools=[tool], stream=streamed)
            parts = list(parts) if streamed else [parts]
            calls = [c for p in parts for c in p.message.tool_calls or []]
            assert [(c.function.name, dict(c.function.arguments)) for c in calls] == [("get_weather", weather)], family
