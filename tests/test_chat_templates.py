"""Every chat template of tests/chat_templates.py (our own, one per model family) rendered the server's way
(core.prompt, what /apply-template and every chat route use) and Transformers' way (`render_jinja_template`, what
`apply_chat_template` calls) on five conversations: the same text, or the documented difference.

Documented differences (docs/models/templates.md): a template that reads no `tools` gets the tools in a system
message; one that renders neither tool calls nor the `tool` role reads calls and results as text; list content is
joined for a template that cannot read it; a request that turns thinking off gets the reasoning block closed
where the template left it open."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest

from local_llm_api.backends.base import ModelFacts
from local_llm_api.core.output import OutputPlan
from local_llm_api.core.prompt import generation_prompt, prompt_text
from local_llm_api.core.request import ChatRequest, Message, Reasoning, Tool, ToolCall
from local_llm_api.prompting.chat_template import ChatTemplateError, render_chat, template_info
from local_llm_api.prompting.reasoning import reasoning_format
from local_llm_api.prompting.tool_families import tool_format

from .chat_templates import TEMPLATES, THINKING
from .conftest import Server

transformers_render = pytest.importorskip("transformers.utils.chat_template_utils").render_jinja_template

WEATHER = Tool("get_weather", "The weather in a city", {"type": "object", "properties": {"city": {"type": "string"}}})
CALL = ToolCall("call_1", "get_weather", json.dumps({"city": "Oslo"}))


def conversations() -> dict[str, dict[str, Any]]:
    return {
        "plain": {"messages": [Message("system", "Be brief."), Message("user", "Hello!")]},
        "list-content": {"messages": [Message("system", "Be brief."),
                                      Message("user", "Hello\nworld", parts=("Hello", "world"))]},
        "tools": {"messages": [Message("user", "Weather in Oslo?"), Message("assistant", "", (CALL,)),
                               Message("tool", "Sunny, 21 C", tool_call_id="call_1", name="get_weather"),
                               Message("user", "Thanks. And tomorrow?")], "tools": [WEATHER]},
        "reasoning-off": {"messages": [Message("user", "2+2?"), Message("assistant", "4", reasoning="Two and two."),
                                       Message("user", "3+3?")],
                          "kwargs": {"enable_thinking": False, "thinking": False, "reasoning_effort": "low"},
                          "reasoning": Reasoning(effort="none")},
        "prefill": {"messages": [Message("user", "Count to three."), Message("assistant", "One, two,")], "prefill": True},
    }


def transformers_messages(messages: list[Message], iterates: bool) -> list[dict[str, Any]]:
    """The same conversation as Transformers' documentation writes one: arguments as objects, list content as
    text parts (joined for a template that cannot read them), reasoning as `reasoning_content`."""
    out = []
    for m in messages:
        item: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.parts is not None and iterates:
            item["content"] = [{"type": "text", "text": t} for t in m.parts]
        if m.tool_calls:
            item["tool_calls"] = [{"id": c.id, "type": "function",
                                   "function": {"name": c.name, "arguments": json.loads(c.arguments)}} for c in m.tool_calls]
        if m.tool_call_id:
            item["tool_call_id"] = m.tool_call_id
        if m.name:
            item["name"] = m.name
        if m.reasoning:
            item["reasoning_content"] = m.reasoning
        out.append(item)
    return out


def ours(template: str, case: dict[str, Any], tools: list[Tool]) -> str:
    backend = SimpleNamespace(facts=ModelFacts(context_size=4096, embedding_size=8, vocab_size=10, chat_template=template,
                                               bos_token="<s>", eos_token="</s>"), image_text="", renders_image_parts=True)
    req = ChatRequest(messages=case["messages"], tools=tools, template_kwargs=case.get("kwargs", {}),
                      reasoning=case.get("reasoning"), add_generation_prompt=not case.get("prefill"),
                      continue_final_message=bool(case.get("prefill")))
    plan = OutputPlan(tools=[t.shown() for t in tools] or None, tool_format=tool_format(template) if tools else None)
    return prompt_text(backend, req, plan, reasoning=reasoning_format(template_info(template))).text  # type: ignore[arg-type]


CASES = [(name, case) for name in TEMPLATES for case in conversations()]


@pytest.mark.parametrize(("name", "case_name"), CASES, ids=[f"{n}-{c}" for n, c in CASES])
def test_rendered_as_transformers_renders_it(name: str, case_name: str) -> None:
    template = TEMPLATES[name]
    info = template_info(template)
    case = conversations()[case_name]
    # A template that reads no tools gets them in a system message (and, knowing no calls, reads them as text): the
    # history of calls is compared without the tool list there.
    tools = case.get("tools", []) if info.reads_tools else []
    if case_name == "tools" and not (info.renders_tool_calls or info.knows_tool_role):
        expected_fallback = ours(template, case, case["tools"])
        assert "<tools>" in expected_fallback and '"name": "get_weather"' in expected_fallback  # calls as text, tools listed
        return
    try:
        theirs = transformers_render([transformers_messages(case["messages"], info.iterates_content)],
                                     tools=[t.shown() for t in tools] or None, chat_template=template,
                                     add_generation_prompt=not case.get("prefill"),
                                     continue_final_message=bool(case.get("prefill")), bos_token="<s>", eos_token="</s>",
                                     **case.get("kwargs", {}))[0][0]
    except ValueError:  # Transformers refuses it (a prefill the template does not keep): so must we
        with pytest.raises(Exception, match="continued|cannot be continued|rejected"):
            ours(template, case, tools)
        return
    fmt = reasoning_format(info)
    if case.get("reasoning") is not None and fmt is not None:  # off means off: the block closed where left open
        theirs += fmt.closing(generation_prompt(theirs, case["messages"]))
    assert ours(template, case, tools) == theirs


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_thinking_is_detected_from_the_template(name: str) -> None:
    fmt = reasoning_format(template_info(TEMPLATES[name]))
    assert (fmt.name if fmt else None) == THINKING.get(name)


def test_a_generation_prompt_that_opens_the_block_starts_the_answer_inside_it() -> None:
    fmt = reasoning_format(template_info(TEMPLATES["deepseek-r1"]))
    assert fmt is not None
    text = render_chat(TEMPLATES["deepseek-r1"], [{"role": "user", "content": "Hi"}], bos_token="", eos_token="")
    assert fmt.starts_inside(generation_prompt(text, [Message("user", "Hi")]))
    assert fmt.closing(generation_prompt(text, [Message("user", "Hi")])) == "</think>\n\n"
    qwen = reasoning_format(template_info(TEMPLATES["qwen3-think"]))
    assert qwen is not None and qwen.closing("<|im_start|>assistant\n<think>\n\n</think>\n\n") == ""  # closed already
    assert qwen.closing("<|im_start|>assistant\n") == "<think>\n\n</think>\n\n"


def test_what_templates_read() -> None:
    assert template_info(TEMPLATES["gemma-3"]).iterates_content
    assert template_info(TEMPLATES["kimi-k2"]).iterates_content and not template_info(TEMPLATES["chatml-tools"]).iterates_content
    assert template_info(TEMPLATES["deepseek-r1"]).renders_tool_calls and not template_info(TEMPLATES["deepseek-r1"]).reads_tools
    assert {"enable_thinking"} <= template_info(TEMPLATES["qwen3-think"]).variables
    assert {"reasoning_effort"} <= template_info(TEMPLATES["gpt-oss"]).variables


def test_continue_final_message_and_generation_prompt_cannot_both_be_set() -> None:
    with pytest.raises(ChatTemplateError):
        render_chat(TEMPLATES["chatml-tools"], [{"role": "user", "content": "x"}], bos_token="", eos_token="",
                    add_generation_prompt=True, continue_final_message=True)


# ---------------------------------------------------------------- through the server


@pytest.fixture(scope="module")
def template_server(tmp_path_factory: pytest.TempPathFactory, model_dir: Any) -> Any:
    from .conftest import MODEL, start_server, stop_server

    root = tmp_path_factory.mktemp("templates")
    config = root / "models.yaml"
    config.write_text("models:\n" + "\n".join(
        f"  - name: tpl-{name}\n    path: {model_dir / MODEL}\n    chat_template: {json.dumps(TEMPLATES[name])}"
        for name in ("lfm2", "poolside", "gemma-3", "qwen3-think")))
    server = start_server(root, model_dir, MODELS_CONFIG=str(config), PRELOAD_MODEL="false", wait_for_model=False)
    yield server
    stop_server(server)


def test_templates_served_per_model(template_server: Server) -> None:
    with template_server.client() as client:
        lfm = client.post("/apply-template", json={"model": "tpl-lfm2", "messages": [
            {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye"}]})
        assert lfm.status_code == 200 and "<|im_start|>assistant\nHello<|im_end|>" in lfm.json()["prompt"], lfm.text
        for model in ("tpl-lfm2", "tpl-poolside"):  # templates with {% generation %} tags serve chats
            chat = client.post("/v1/chat/completions", json={"model": model, "max_tokens": 2,
                                                             "messages": [{"role": "user", "content": "Hi"}]})
            assert chat.status_code == 200, chat.text
        parts = [{"type": "text", "text": "Hello"}, {"type": "text", "text": "world"}]
        gemma = client.post("/apply-template", json={"model": "tpl-gemma-3", "messages": [{"role": "user", "content": parts}]})
        assert "<start_of_turn>user\nHelloworld<end_of_turn>" in gemma.json()["prompt"]  # its own loop over the parts
        qwen = client.post("/apply-template", json={"model": "tpl-qwen3-think", "messages": [{"role": "user", "content": "Hi"}],
                                                    "chat_template_kwargs": {"enable_thinking": False, "colour": "red"}})
        assert qwen.json()["prompt"].endswith("<think>\n\n</think>\n\n") and qwen.headers["x-ignored-fields"] == \
            "chat_template_kwargs.colour"
        wrong = client.post("/apply-template", json={"model": "tpl-qwen3-think", "messages": [{"role": "user", "content": "Hi"}],
                                                     "chat_template_kwargs": {"enable_thinking": "no"}})
        assert wrong.status_code == 400 and wrong.json()["error"]["param"] == "chat_template_kwargs.enable_thinking"
        prefill = client.post("/apply-template", json={"model": "tpl-qwen3-think", "add_generation_prompt": False,
                                                       "continue_final_message": True, "messages": [
                                                           {"role": "user", "content": "Count"}, {"role": "assistant", "content": "One,"}]})
        assert prefill.json()["prompt"].endswith("<|im_start|>assistant\nOne,"), prefill.text
        both = client.post("/v1/chat/completions", json={"model": "tpl-qwen3-think", "continue_final_message": True,
                                                         "messages": [{"role": "user", "content": "x"}]})
        assert both.status_code == 400 and both.json()["error"]["param"] == "continue_final_message"
