"""OpenAI chat and completion requests in the core's terms, and the spec fields this server refuses
(each with a 400 that names it)."""

from __future__ import annotations

from ...errors import invalid_request, unsupported
from ...core.request import (ChatRequest, ForcedTool, ImageInput, JSONOutput, Message, Reasoning, Sampling, Tool, ToolCall,
                             text_of)
from .protocol import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    JSONObjectFormat,
    JSONSchemaFormat,
    NamedToolChoice,
    ImagePart,
    SamplingFields,
    TextPart,
)


def refuse_stream_options_without_stream(req: SamplingFields) -> None:
    if req.stream_options is not None and not req.stream:
        raise invalid_request("'stream_options' is only allowed when 'stream' is true.", "stream_options")


def refuse_unsupported_chat_fields(req: ChatCompletionRequest) -> None:
    refuse_stream_options_without_stream(req)
    if req.top_logprobs is not None and not req.logprobs:
        raise invalid_request("'top_logprobs' needs 'logprobs' set to true.", "top_logprobs")
    if req.continue_final_message and req.add_generation_prompt:
        raise invalid_request("'continue_final_message' continues the last message: set 'add_generation_prompt' to false.",
                              "continue_final_message")
    if req.functions is not None or req.function_call is not None:
        name = "functions" if req.functions is not None else "function_call"
        raise unsupported(name, "(the deprecated function calling) is not supported; use 'tools' and 'tool_choice'")
    if req.modalities is not None and req.modalities != ["text"]:
        raise unsupported("modalities", "can only be ['text'] on this server")
    for name in ("audio", "prediction", "web_search_options", "verbosity", "moderation"):
        if getattr(req, name) is not None:
            raise unsupported(name)


def refuse_unsupported_completion_fields(req: CompletionRequest) -> None:
    refuse_stream_options_without_stream(req)
    if req.suffix:
        raise unsupported("suffix", "(fill-in-the-middle) is not supported by this server")
    if req.echo and req.logprobs is not None:
        raise unsupported("echo", "together with 'logprobs' (log probabilities of the prompt) is not supported")
    if req.best_of is not None and req.best_of not in (0, 1, req.n or 1):
        raise unsupported("best_of", "other than 1 or n is not supported; ask for n choices instead")


def sampling(req: SamplingFields) -> Sampling:
    stop = () if req.stop is None else (req.stop,) if isinstance(req.stop, str) else tuple(req.stop)
    return Sampling(
        temperature=req.temperature, top_p=req.top_p, top_k=req.top_k, min_p=req.min_p,
        repeat_penalty=req.repeat_penalty, presence_penalty=req.presence_penalty or 0.0,
        frequency_penalty=req.frequency_penalty or 0.0, seed=req.seed, logit_bias=req.logit_bias, stop=stop,
    )


def message_parts(message: ChatMessage, index: int) -> tuple[str | ImageInput, ...] | None:
    """The text and image parts of list content (None for a string)."""
    content = message.content
    if not isinstance(content, list):
        return None
    parts: list[str | ImageInput] = []
    for j, part in enumerate(content):
        if isinstance(part, TextPart):
            parts.append(part.text)
        elif isinstance(part, ImagePart):
            parts.append(ImageInput(part.image_url.url, f"messages[{index}].content[{j}].image_url.url"))
        else:
            raise invalid_request(f"Content parts of type '{part.type}' are not supported: this server serves text "
                                  "and vision models.", f"messages[{index}].content[{j}].type", "unsupported_content_type")
    return tuple(parts)


def message_of(m: ChatMessage, i: int) -> Message:
    if m.audio is not None:
        raise unsupported(f"messages[{i}].audio", "(an earlier audio answer) is not supported: this server serves text models")
    calls = [ToolCall(c.id, c.function.name, c.function.arguments) for c in m.tool_calls or ()]
    if m.function_call is not None:  # the deprecated single call, in the history as a tool call
        calls.append(ToolCall(f"call_{i}", m.function_call.name, m.function_call.arguments))
    parts = message_parts(m, i)
    content = text_of(parts) if parts is not None else m.content if isinstance(m.content, str) else ""
    return Message(role="system" if m.role == "developer" else m.role, content=content, tool_calls=tuple(calls),
                   tool_call_id=m.tool_call_id, name=m.name, reasoning=m.reasoning_content or m.reasoning, parts=parts)


def chat_request(req: ChatCompletionRequest) -> ChatRequest:
    refuse_unsupported_chat_fields(req)
    messages = [message_of(m, i) for i, m in enumerate(req.messages)]
    tools = [Tool(t.function.name, t.function.description, t.function.parameters, bool(t.function.strict),
                  param=f"tools[{i}].function") for i, t in enumerate(req.tools or [])]
    choice = req.tool_choice
    tool_choice = ForcedTool(choice.function.name, "tool_choice.function.name") if isinstance(choice, NamedToolChoice) else choice
    rf = req.response_format
    output = None
    if isinstance(rf, JSONObjectFormat):
        output = JSONOutput()
    elif isinstance(rf, JSONSchemaFormat):
        if rf.json_schema.schema_ is None:
            raise invalid_request("response_format json_schema needs a 'schema'.", "response_format.json_schema.schema")
        output = JSONOutput(rf.json_schema.schema_, bool(rf.json_schema.strict), "response_format.json_schema.schema")
    requested = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    return ChatRequest(
        messages=messages, model=req.model, sampling=sampling(req), max_tokens=requested,
        n=req.n or 1, tools=tools, tool_choice=tool_choice,
        parallel_tool_calls=req.parallel_tool_calls, output=output,
        logprobs=(req.top_logprobs or 0) if req.logprobs else None,
        reasoning=Reasoning(effort=req.reasoning_effort, param="reasoning_effort") if req.reasoning_effort else None,
        add_generation_prompt=req.add_generation_prompt, continue_final_message=req.continue_final_message,
        template_kwargs=req.chat_template_kwargs or {},
    )
