"""A Messages request in the core's terms, and the core's answer back as content blocks."""

from __future__ import annotations

import json
from collections.abc import Sequence

from ...core.chat import Answer
from ...core.errors import invalid_request, unsupported
from ...core.request import ChatRequest, ForcedTool, JSONOutput, Message, Sampling, Tool, ToolCall, ToolChoice
from .protocol import (
    CountTokensRequest,
    CreateMessage,
    OtherBlock,
    OtherTool,
    StopReason,
    TextBlock,
    TextOut,
    ToolResultBlock,
    ToolUseBlock,
    ToolUseOut,
    tool_use_id,
)


def _block_text(blocks: str | Sequence[TextBlock | OtherBlock | ToolUseBlock | ToolResultBlock], param: str) -> str:
    if isinstance(blocks, str):
        return blocks
    texts = []
    for j, block in enumerate(blocks):
        if not isinstance(block, TextBlock):
            raise invalid_request(f"Only text blocks can stand here; got '{block.type}'.", f"{param}[{j}].type")
        texts.append(block.text)
    return "\n".join(texts)


def messages_of(req: CountTokensRequest) -> list[Message]:
    messages: list[Message] = []
    if req.system:
        messages.append(Message("system", _block_text(req.system, "system")))
    for i, message in enumerate(req.messages):
        where = f"messages[{i}].content"
        if isinstance(message.content, str):
            messages.append(Message(message.role, message.content))
            continue
        text: list[str] = []
        calls: list[ToolCall] = []
        for j, block in enumerate(message.content):
            if isinstance(block, TextBlock):
                text.append(block.text)
            elif isinstance(block, ToolUseBlock) and message.role == "assistant":
                calls.append(ToolCall(block.id, block.name, json.dumps(block.input, ensure_ascii=False)))
            elif isinstance(block, ToolResultBlock) and message.role == "user":
                content = _block_text(block.content or "", f"{where}[{j}].content")
                if block.is_error:
                    content = f"Error: {content}"
                messages.append(Message("tool", content, tool_call_id=block.tool_use_id))
            elif isinstance(block, OtherBlock):
                raise invalid_request(f"Content blocks of type '{block.type}' are not supported: this server serves "
                                      "text models.", f"{where}[{j}].type")
            else:
                raise invalid_request(f"A '{block.type}' block cannot stand in the {message.role}'s message.", f"{where}[{j}].type")
        if text or calls:
            messages.append(Message(message.role, "\n".join(text), tuple(calls)))
    return messages


def refuse_unsupported(req: CountTokensRequest) -> None:
    if req.thinking is not None and req.thinking.type != "disabled":
        raise unsupported("thinking", "is not supported: the models this server runs do not think; leave it out")
    if req.mcp_servers:
        raise unsupported("mcp_servers", "(Anthropic's MCP connector) is not supported by this server")
    if isinstance(req, CreateMessage) and req.container is not None:
        raise unsupported("container")
    if isinstance(req, CreateMessage) and req.diagnostics is not None:
        raise unsupported("diagnostics", "(prompt-cache miss reports) is not supported by this server")


def tools_of(req: CountTokensRequest) -> tuple[list[Tool], ToolChoice | None, bool | None]:
    tools = []
    for i, tool in enumerate(req.tools or []):
        if isinstance(tool, OtherTool):
            raise unsupported(f"tools[{i}]", f"(server tool '{tool.type}') is not supported: this server runs no tools itself")
        # Agents' schemas use keywords a grammar compiler may not know (propertyNames...): compile leniently.
        tools.append(Tool(tool.name, tool.description, tool.input_schema, strict=False, param=f"tools[{i}]"))
    choice, parallel = req.tool_choice, None
    if choice is None:
        return tools, None, None
    if choice.disable_parallel_tool_use is not None:
        parallel = not choice.disable_parallel_tool_use
    if choice.type == "tool":
        if not choice.name:
            raise invalid_request("tool_choice of type 'tool' needs a 'name'.", "tool_choice.name")
        return tools, ForcedTool(choice.name, "tool_choice.name"), parallel
    return tools, {"auto": "auto", "any": "required", "none": "none"}[choice.type], parallel  # type: ignore[return-value]


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
    return ChatRequest(messages=messages_of(req), model=req.model, sampling=sampling, max_tokens=max_tokens,
                       tools=tools, tool_choice=choice, parallel_tool_calls=parallel, output=output)


def stop_reason(answer: Answer) -> StopReason:
    if answer.calls:
        return "tool_use"
    if answer.finish_reason == "length":
        return "max_tokens"
    return "stop_sequence" if answer.stop_sequence else "end_turn"


def content_blocks(answer: Answer) -> list[TextOut | ToolUseOut]:
    blocks: list[TextOut | ToolUseOut] = []
    if answer.content or not answer.calls:
        blocks.append(TextOut(text=answer.content or ""))
    blocks += [ToolUseOut(id=tool_use_id(), name=call.name, input=json.loads(call.arguments)) for call in answer.calls]
    return blocks
