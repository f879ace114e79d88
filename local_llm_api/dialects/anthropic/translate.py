"""A Messages request in the core's terms, and the core's answer back as content blocks."""

from __future__ import annotations

import json
from collections.abc import Sequence

from ...core.chat import Answer
from ...errors import invalid_request, unsupported
from ...core.request import (ChatRequest, ForcedTool, ImageInput, JSONOutput, Message, Reasoning, Sampling, Tool, ToolCall,
                             ToolChoice, text_of)
from ...prompting.reasoning import seal, unseal
from ...prompting.tool_calls import Call, arguments_object
from .protocol import (
    CountTokensRequest,
    CreateMessage,
    FileSource,
    ImageBlock,
    OtherBlock,
    OtherTool,
    RedactedThinkingBlock,
    StopReason,
    TextBlock,
    TextOut,
    ThinkingAdaptive,
    ThinkingOut,
    ThinkingBlock,
    ThinkingDisabled,
    ThinkingEnabled,
    ToolAdditionBlock,
    ToolParam,
    ToolReferenceBlock,
    ToolRemovalBlock,
    ToolResultBlock,
    ToolUseBlock,
    ToolUseOut,
    URLSource,
    tool_use_id,
)


def _block_text(blocks: str | Sequence[object], param: str) -> str:
    if isinstance(blocks, str):
        return blocks
    for j, block in enumerate(blocks):
        if not isinstance(block, TextBlock):
            raise invalid_request(f"Only text blocks can stand here; got '{getattr(block, 'type', '?')}'.", f"{param}[{j}].type")
    return "\n".join(block.text for block in blocks if isinstance(block, TextBlock))


def _image(block: ImageBlock, param: str) -> ImageInput:
    source = block.source
    if isinstance(source, FileSource):
        raise invalid_request("Image blocks with a 'file' source are not supported: this server has no Files API; send "
                              "base64 data or a URL.", f"{param}.source.type", "unsupported_parameter")
    if isinstance(source, URLSource):
        return ImageInput(source.url, f"{param}.source.url")
    return ImageInput(source.data, f"{param}.source.data")


def _result_parts(content: str | Sequence[object], param: str) -> tuple[str | ImageInput, ...]:
    """A tool result's text and images (a screenshot a tool took); loaded deferred tools have no text of their own."""
    if isinstance(content, str):
        return (content,)
    parts: list[str | ImageInput] = []
    for j, block in enumerate(content):
        if isinstance(block, TextBlock):
            parts.append(block.text)
        elif isinstance(block, ImageBlock):
            parts.append(_image(block, f"{param}[{j}]"))
        elif not isinstance(block, ToolReferenceBlock):
            raise invalid_request(f"A '{getattr(block, 'type', '?')}' block cannot stand in a tool result.", f"{param}[{j}].type")
    return tuple(parts)


def messages_of(req: CountTokensRequest) -> list[Message]:
    """The conversation in the core's terms. System turns inside `messages` stay where they stand; their tool
    changes are read by `_tools_in_play`."""
    messages: list[Message] = []
    if req.system:
        messages.append(Message("system", _block_text(req.system, "system")))
    for i, message in enumerate(req.messages):
        where = f"messages[{i}].content"
        if isinstance(message.content, str):
            messages.append(Message(message.role, message.content))
            continue
        parts: list[str | ImageInput] = []
        reasoning: list[str] = []
        calls: list[ToolCall] = []
        for j, block in enumerate(message.content):
            if isinstance(block, TextBlock):
                parts.append(block.text)
            elif isinstance(block, ImageBlock) and message.role == "user":
                parts.append(_image(block, f"{where}[{j}]"))
            elif isinstance(block, ToolUseBlock) and message.role == "assistant":
                calls.append(ToolCall(block.id, block.name, json.dumps(block.input, ensure_ascii=False)))
            elif isinstance(block, ThinkingBlock) and message.role == "assistant":
                # With `display: "omitted"` the text came back empty: the signature holds it.
                reasoning.append(block.thinking or unseal(block.signature) or "")
            elif isinstance(block, RedactedThinkingBlock) and message.role == "assistant":
                continue  # reasoning another model encrypted: nothing a template can render
            elif isinstance(block, ToolResultBlock) and message.role == "user":
                result = _result_parts(block.content or "", f"{where}[{j}].content")
                content = text_of(result)
                loaded = [part.tool_name for part in block.content or () if isinstance(part, ToolReferenceBlock)]
                if loaded and not content:
                    content = "Tools loaded: " + ", ".join(loaded)
                if block.is_error:
                    content = f"Error: {content}"
                images = tuple(p for p in result if isinstance(p, ImageInput))
                messages.append(Message("tool", content, tool_call_id=block.tool_use_id,
                                        parts=(content, *images) if images else None))
            elif isinstance(block, ToolAdditionBlock | ToolRemovalBlock) and message.role == "system":
                continue
            elif isinstance(block, OtherBlock):
                raise invalid_request(f"Content blocks of type '{block.type}' are not supported: this server serves "
                                      "text and vision models.", f"{where}[{j}].type")
            else:
                raise invalid_request(f"A '{block.type}' block cannot stand in the {message.role}'s message.", f"{where}[{j}].type")
        if parts or calls or reasoning:
            messages.append(Message(message.role, text_of(tuple(parts)), tuple(calls),
                                    reasoning="\n".join(reasoning) if reasoning else None, parts=tuple(parts)))
    return messages


def _tools_in_play(req: CountTokensRequest) -> list[tuple[ToolParam, str]]:
    """The tools the model may call next, with where each was declared: those of `tools` (a deferred one once a
    tool result references it, as Anthropic's tool search loads it), then the system turns' additions and
    removals in order. A tool that only code may call (`allowed_callers` without "direct") is not the model's."""
    declared: dict[str, tuple[ToolParam, str]] = {}
    deferred: dict[str, tuple[ToolParam, str]] = {}
    for i, tool in enumerate(req.tools or []):
        if isinstance(tool, OtherTool):
            raise unsupported(f"tools[{i}]", f"(server tool '{tool.type}') is not supported: this server runs no tools itself")
        (deferred if tool.defer_loading else declared)[tool.name] = (tool, f"tools[{i}]")
    for i, message in enumerate(req.messages):
        for j, block in enumerate(message.content if isinstance(message.content, list) else ()):
            if isinstance(block, ToolResultBlock):
                for part in block.content if isinstance(block.content, list) else ():
                    if isinstance(part, ToolReferenceBlock) and part.tool_name in deferred:
                        declared[part.tool_name] = deferred.pop(part.tool_name)
            elif isinstance(block, ToolAdditionBlock):
                declared[block.tool.definition.name] = (block.tool.definition, f"messages[{i}].content[{j}].tool.definition")
            elif isinstance(block, ToolRemovalBlock):
                declared.pop(block.tool.name, None)
    return [(tool, where) for tool, where in declared.values()
            if tool.allowed_callers is None or "direct" in tool.allowed_callers]


def _tool(tool: ToolParam, where: str) -> Tool:
    description = tool.description
    if tool.input_examples:
        examples = "\n".join(json.dumps(example, ensure_ascii=False) for example in tool.input_examples)
        description = (description + "\n\n" if description else "") + "Examples of input:\n" + examples
    # Agents' schemas use keywords a grammar compiler may not know (propertyNames...): compiled leniently unless
    # the tool asks for strict.
    return Tool(tool.name, description, tool.input_schema, strict=bool(tool.strict), param=where)


def refuse_unsupported(req: CountTokensRequest) -> None:
    if req.mcp_servers:
        raise unsupported("mcp_servers", "(Anthropic's MCP connector) is not supported by this server")
    if isinstance(req, CreateMessage) and req.container is not None:
        raise unsupported("container")
    if isinstance(req, CreateMessage) and req.diagnostics is not None:
        raise unsupported("diagnostics", "(prompt-cache miss reports) is not supported by this server")


def tools_of(req: CountTokensRequest) -> tuple[list[Tool], ToolChoice | None, bool | None]:
    tools = [_tool(tool, where) for tool, where in _tools_in_play(req)]
    choice, parallel = req.tool_choice, None
    if choice is None:
        return tools, None, None
    if choice.type in ("any", "tool") and req.tools and not tools:
        raise invalid_request("'tool_choice' needs a tool the model can call now: every tool is deferred (defer_loading, "
                              "not referenced yet) or not the model's to call (allowed_callers).", "tool_choice")
    if choice.disable_parallel_tool_use is not None:
        parallel = not choice.disable_parallel_tool_use
    if choice.type == "tool":
        if not choice.name:
            raise invalid_request("tool_choice of type 'tool' needs a 'name'.", "tool_choice.name")
        return tools, ForcedTool(choice.name, "tool_choice.name"), parallel
    return tools, {"auto": "auto", "any": "required", "none": "none"}[choice.type], parallel  # type: ignore[return-value]


def reasoning_of(req: CountTokensRequest) -> Reasoning | None:
    """`thinking` and `output_config.effort` on the one scale every API maps to."""
    thinking, effort = req.thinking, req.output_config.effort if req.output_config else None
    if isinstance(thinking, ThinkingDisabled):
        return Reasoning(effort="none", param="thinking")
    if isinstance(thinking, ThinkingEnabled):
        return Reasoning(effort=effort, budget_tokens=thinking.budget_tokens, param="thinking")
    if isinstance(thinking, ThinkingAdaptive):
        return Reasoning(effort=effort, param="thinking")
    return Reasoning(effort=effort, param="output_config.effort") if effort else None


def chat_request(req: CountTokensRequest) -> ChatRequest:
    refuse_unsupported(req)
    tools, choice, parallel = tools_of(req)
    if isinstance(req, CreateMessage):
        sampling = Sampling(temperature=req.temperature, top_p=req.top_p, top_k=req.top_k, stop=tuple(req.stop_sequences or ()))
        max_tokens: int | None = req.max_tokens
    else:
        sampling, max_tokens = Sampling(), None
    fmt = req.output_config.format if req.output_config else None
    # Compiled leniently, like tool schemas: keywords a grammar cannot enforce do not fail the request.
    output = JSONOutput(fmt.schema_, strict=False, param="output_config.format.schema") if fmt else None
    # A final assistant turn is a prefill: the answer continues it.
    prefill = bool(req.messages) and req.messages[-1].role == "assistant"
    return ChatRequest(messages=messages_of(req), model=req.model, sampling=sampling, max_tokens=max_tokens,
                       tools=tools, tool_choice=choice, parallel_tool_calls=parallel, output=output,
                       reasoning=reasoning_of(req), add_generation_prompt=not prefill, continue_final_message=prefill)


def stop_reason(answer: Answer) -> StopReason:
    if answer.finish_reason == "length":  # a call cut off is not a whole tool_use
        return "max_tokens"
    if answer.calls:
        return "tool_use"
    return "stop_sequence" if answer.stop_sequence else "end_turn"


def shows_thinking(req: CreateMessage) -> bool:
    """Whether thinking blocks carry their text (`display: "omitted"` leaves only the signature)."""
    return getattr(req.thinking, "display", None) != "omitted"


def thinking_block(reasoning: str, shown: bool) -> ThinkingOut:
    return ThinkingOut(thinking=reasoning if shown else "", signature=seal(reasoning))


def content_blocks(answer: Answer, shown: bool = True) -> list[ThinkingOut | TextOut | ToolUseOut]:
    """The answer's blocks in the order the model wrote them: thinking, text, tool uses (and text after them)."""
    blocks: list[ThinkingOut | TextOut | ToolUseOut] = []
    if answer.reasoning is not None:
        blocks.append(thinking_block(answer.reasoning, shown))
    for part in answer.in_order():
        blocks.append(TextOut(text=part) if isinstance(part, str) else tool_use_block(part))
    if not any(block.type != "thinking" for block in blocks):  # an empty answer still has its text block
        blocks.append(TextOut(text=answer.content or ""))
    return blocks


def tool_use_block(call: Call) -> ToolUseOut:
    return ToolUseOut(id=tool_use_id(call.id), name=call.name, input=arguments_object(call.arguments))
