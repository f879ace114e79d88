"""Thinking models on every API, both backends, through the official SDKs.

The models are built by the test (tests/agents/scripted_model.py): they write, for certain, a reasoning block of
three pieces and then the answer, in the `<think>` markers of their chat templates (our own, Qwen3-shaped): one
opens the block itself (`thinker`, the model writes `<think>`), one has the generation prompt open it (`opener`,
as DeepSeek R1's distills). Both backends serve the same files (Transformers reads GGUF files too)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import ollama
import openai
import pytest

from local_llm_api.prompting.reasoning import APRIEL, COMMAND_R, FORMATS, HARMONY, KIMI, MAGISTRAL, SEED, THINK, ReasoningSplitter

from .agents.scripted_model import build_model
from .conftest import MODEL, Server, place_model, start_server, stop_server

PIECES = ("Let me think. ", "First, the question. ", "Then the answer. ")
REASONING = "".join(PIECES)
ANSWER = "The answer is 4."
TEMPLATE = """{%- for message in messages %}<|im_start|>{{ message.role }}
{% if message.role == 'assistant' and message.reasoning_content %}<think>{{ message.reasoning_content }}</think>{% endif %}{{ message.content }}<|im_end|>
{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant
{% if enable_thinking is defined and not enable_thinking %}<think></think>{% else %}OPEN{% endif %}{% endif %}"""
NEWLINES = 1116  # SmolLM2's "\n\n": what follows the block the server closes ("</think>\n\n")
USER = [{"role": "user", "content": "2+2?"}]


def build(models: Path) -> None:
    thinker = TEMPLATE.replace("OPEN", "<|script:think|>")
    build_model(models / "thinker.gguf", [("<|script:think|>", "<think>", *PIECES, "</think>", ANSWER), (NEWLINES, ANSWER)],
                thinker, control=("<|script:think|>",), context_length=4096)
    opener = TEMPLATE.replace("OPEN", "<think>")
    build_model(models / "opener.gguf", [("<think>", *PIECES, "</think>", ANSWER), (NEWLINES, ANSWER)], opener,
                context_length=4096)


@pytest.fixture(scope="module", params=["llama-cpp", "transformers"])
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    models = tmp_path_factory.mktemp("thinking-models")
    build(models)
    if request.param == "llama-cpp":
        place_model(models)  # a model that does not think, beside them
    server = start_server(tmp_path_factory.mktemp("thinking"), models, wait_for_model=False, PRELOAD_MODEL="false",
                          DEFAULT_MODEL="thinker.gguf", MODEL_BACKEND=request.param, REPRODUCIBLE="false")
    yield server
    stop_server(server)


def sdk(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)


@pytest.mark.parametrize("model", ["thinker", "opener"])
def test_chat_completions_separate_reasoning(served: Server, model: str) -> None:
    answer = sdk(served).chat.completions.create(model=model, messages=USER)
    message = openai.types.chat.ChatCompletion.model_validate(answer.model_dump()).choices[0].message
    assert message.content == ANSWER
    assert message.model_extra == {"reasoning_content": REASONING, "reasoning": REASONING}
    assert answer.usage.completion_tokens_details.reasoning_tokens >= len(PIECES)
    chunks = list(sdk(served).chat.completions.create(model=model, messages=USER, stream=True,
                                                      stream_options={"include_usage": True}))
    reasoning = "".join((c.choices[0].delta.model_extra or {}).get("reasoning_content") or "" for c in chunks if c.choices)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert (reasoning, content) == (REASONING, ANSWER)
    assert all("<think>" not in (c.choices[0].delta.content or "") for c in chunks if c.choices)
    assert chunks[-1].usage.completion_tokens_details.reasoning_tokens == answer.usage.completion_tokens_details.reasoning_tokens


def test_responses_reasoning_items_and_events(served: Server) -> None:
    client = sdk(served)
    response = client.responses.create(model="opener", input="2+2?", reasoning={"summary": "auto"},
                                       include=["reasoning.encrypted_content"])
    response = openai.types.responses.Response.model_validate(response.model_dump())
    item = response.output[0]
    assert item.type == "reasoning" and item.content[0].text == REASONING and item.summary[0].text == REASONING
    assert item.encrypted_content and response.output_text == ANSWER
    assert response.usage.output_tokens_details.reasoning_tokens >= len(PIECES)
    with client.responses.stream(model="opener", input="2+2?") as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[:5] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added", "response.reasoning_text.delta"]
    assert kinds.index("response.reasoning_text.done") < kinds.index("response.output_text.delta")
    assert "response.reasoning_summary_text.delta" not in kinds  # no summary asked for
    assert "".join(e.delta for e in events if e.type == "response.reasoning_text.delta") == REASONING
    assert [o.type for o in final.output] == ["reasoning", "message"] and final.output_text == ANSWER
    # A stateless client sends the reasoning back (its sealed content only): it reaches the template again.
    sealed = {"type": "reasoning", "id": item.id, "summary": [], "encrypted_content": item.encrypted_content}
    turns = [{"role": "user", "content": "2+2?"}, sealed, {"role": "assistant", "content": ANSWER},
             {"role": "user", "content": "And 3+3?"}]
    without = client.responses.create(model="opener", input=[t for t in turns if t is not sealed], store=False)
    with_it = client.responses.create(model="opener", input=turns, store=False)
    assert with_it.usage.input_tokens > without.usage.input_tokens


def test_anthropic_thinking_blocks(served: Server) -> None:
    client = anthropic.Anthropic(base_url=served.url, api_key="x", max_retries=0)
    message = client.messages.create(model="thinker", max_tokens=100, messages=USER,
                                     thinking={"type": "enabled", "budget_tokens": 1024})
    message = anthropic.types.Message.model_validate(message.model_dump(), strict=True)
    assert [b.type for b in message.content] == ["thinking", "text"]
    assert message.content[0].thinking == REASONING and message.content[0].signature and message.content[1].text == ANSWER
    with client.messages.stream(model="thinker", max_tokens=100, messages=USER, thinking={"type": "adaptive"}) as stream:
        final = stream.get_final_message()
    assert final.content[0].thinking == REASONING and final.content[0].signature == message.content[0].signature
    hidden = client.messages.create(model="thinker", max_tokens=100, messages=USER,
                                    thinking={"type": "adaptive", "display": "omitted"})
    assert hidden.content[0].thinking == "" and hidden.content[0].signature == message.content[0].signature
    # Sent back in the history, the reasoning reaches the template; from the signature alone too.
    def counted(blocks: list[dict]) -> int:
        history = [*USER, {"role": "assistant", "content": blocks}, {"role": "user", "content": "And 3+3?"}]
        return client.messages.count_tokens(model="thinker", messages=history).input_tokens

    text = {"type": "text", "text": ANSWER}
    shown = {"type": "thinking", "thinking": REASONING, "signature": message.content[0].signature}
    assert counted([shown, text]) > counted([text])
    assert counted([{**shown, "thinking": ""}, text]) == counted([shown, text])


def test_ollama_thinking(served: Server) -> None:
    client = ollama.Client(host=served.url)
    answer = client.chat("thinker", messages=USER, think=True)
    assert answer.message.thinking == REASONING and answer.message.content == ANSWER
    parts = list(client.chat("opener", messages=USER, stream=True))
    assert "".join(p.message.thinking or "" for p in parts) == REASONING
    assert "".join(p.message.content for p in parts) == ANSWER
    generated = client.generate("thinker", "2+2?")
    assert generated.thinking == REASONING and generated.response == ANSWER
    direct = client.chat("opener", messages=USER, think=False)
    assert direct.message.thinking is None and direct.message.content == ANSWER


@pytest.mark.parametrize("model", ["thinker", "opener"])
def test_off_means_off_on_every_api(served: Server, model: str) -> None:
    client, http = sdk(served), httpx.Client(base_url=served.url, timeout=60)
    chat = client.chat.completions.create(model=model, messages=USER, reasoning_effort="none")
    assert chat.choices[0].message.content == ANSWER and not chat.choices[0].message.model_extra
    assert chat.usage.completion_tokens_details.reasoning_tokens == 0
    kwargs = client.chat.completions.create(model=model, messages=USER, extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    assert kwargs.choices[0].message.content == ANSWER and not kwargs.choices[0].message.model_extra
    response = client.responses.create(model=model, input="2+2?", reasoning={"effort": "none"})
    assert [o.type for o in response.output] == ["message"]
    message = http.post("/v1/messages", json={"model": model, "max_tokens": 50, "messages": USER,
                                              "thinking": {"type": "disabled"}}).json()
    assert [b["type"] for b in message["content"]] == ["text"]
    generated = http.post("/api/generate", json={"model": model, "prompt": "2+2?", "think": False, "stream": False}).json()
    assert "thinking" not in generated and generated["response"] == ANSWER


def test_a_budget_ends_the_reasoning(served: Server) -> None:
    client = anthropic.Anthropic(base_url=served.url, api_key="x", max_retries=0)
    message = client.messages.create(model="thinker", max_tokens=100, messages=USER,
                                     thinking={"type": "enabled", "budget_tokens": 2})
    # Two tokens of reasoning, then the close marker forced, then the answer (which follows it in this model).
    assert message.content[0].thinking == "".join(PIECES[:2]) and message.content[1].text == ANSWER


def test_a_model_that_does_not_think(served: Server) -> None:
    # Generous timeouts: the suite's other servers share the cores, and a model card reads its file's metadata.
    http = httpx.Client(base_url=served.url, timeout=60)
    served_models = {m["id"].removesuffix(".gguf") for m in http.get("/v1/models").json()["data"]}
    if MODEL.removesuffix(".gguf") not in served_models:
        pytest.skip("the model that does not think is served by the GGUF server only")
    with pytest.raises(ollama.ResponseError) as refused:
        ollama.Client(host=served.url).chat("SmolLM2", messages=USER, think=True, options={"num_predict": 2})
    assert refused.value.status_code == 400 and "SmolLM2-135M-Instruct.Q4_1.gguf\" does not support thinking" in refused.value.error
    plain = http.post("/v1/chat/completions", json={
        "model": "SmolLM2", "messages": USER, "max_tokens": 2, "reasoning_effort": "high"})
    assert plain.status_code == 200 and "does not think" in plain.headers["x-reasoning-ignored"]
    cards = {m["id"]: m["capabilities"] for m in http.get("/v1/models").json()["data"]}
    assert "thinking" in cards["thinker.gguf"] and "thinking" not in cards[MODEL]
    show = http.post("/api/show", json={"model": "thinker"}).json()
    assert "thinking" in show["capabilities"]


# ---------------------------------------------------------------- the splitter on fixed texts


def split(fmt, text: str, chunks: list[str], inside: bool = False) -> tuple[str, str]:  # noqa: ANN001
    splitter = ReasoningSplitter(fmt, inside=inside, ends=("<tool_call>",))
    reasoning = content = ""
    for chunk in chunks:
        r, c = splitter.push(chunk)
        reasoning, content = reasoning + r, content + c
    r, c = splitter.finish()
    return reasoning + r, content + c


TEXTS = [
    (THINK, "<think>\nI should add.\n</think>\n\nIt is 4.", False, ("\nI should add.\n", "It is 4.")),
    (THINK, "I should add.</think>It is 4.", True, ("I should add.", "It is 4.")),
    (THINK, "<think>cut off at max_tokens", False, ("cut off at max_tokens", "")),
    (THINK, "<think>plan<tool_call>{\"name\": \"f\"}", False, ("plan", "<tool_call>{\"name\": \"f\"}")),
    (THINK, "No reasoning. <think> is just text here", False, ("", "No reasoning. <think> is just text here")),
    (HARMONY, "<|channel|>analysis<|message|>Add.<|end|><|start|>assistant<|channel|>final<|message|>4", False, ("Add.", "4")),
    (MAGISTRAL, "[THINK]Add.[/THINK]4", False, ("Add.", "4")),
    (SEED, "<seed:think>Add.</seed:think>4", False, ("Add.", "4")),
    (COMMAND_R, "<|START_THINKING|>Add.<|END_THINKING|><|START_RESPONSE|>4<|END_RESPONSE|>", False, ("Add.", "4")),
    (KIMI, "◁think▷Add.◁/think▷4", False, ("Add.", "4")),
    (APRIEL, "Add.\n[BEGIN FINAL RESPONSE]\n4\n[END FINAL RESPONSE]", True, ("Add.\n", "4\n")),
]


@pytest.mark.parametrize(("fmt", "text", "inside", "expected"), TEXTS, ids=[f"{t[0].name}-{i}" for i, t in enumerate(TEXTS)])
def test_the_splitter_is_the_same_in_any_chunks(fmt, text: str, inside: bool, expected: tuple[str, str]) -> None:  # noqa: ANN001
    assert split(fmt, text, [text], inside) == expected
    for i in range(len(text) + 1):
        for j in range(i, len(text) + 1):
            assert split(fmt, text, [text[:i], text[i:j], text[j:]], inside) == expected, (i, j)
    assert split(fmt, text, list(text), inside) == expected  # one character at a time
    assert {f.name for f in FORMATS} >= {fmt.name}


def test_sealed_reasoning_round_trips() -> None:
    from local_llm_api.prompting.reasoning import seal, unseal

    assert unseal(seal("Add two and two.")) == "Add two and two."
    assert unseal("EqwBCkYIBxgCKkCsig==") is None and unseal(None) is None  # another server's signature
    assert json.dumps(seal("x")).isascii()
