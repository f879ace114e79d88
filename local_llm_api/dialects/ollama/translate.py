"""Ollama requests in the core's terms: model names with tags, keep_alive durations, `options`, messages,
tools and `format`; and the core's answers back as Ollama's tool calls and log probabilities."""

from __future__ import annotations

import json
import math
import re
import uuid

from ...backends.base import Backend
from ...core.chat import Answer
from ...errors import invalid_request, unsupported
from ...core.request import ChatRequest, ImageInput, JSONOutput, Message, Reasoning, Sampling, Tool, ToolCall
from ...prompting.tool_calls import arguments_object
from ...structured.logprobs import TokenLogprob
from .protocol import (
    ChatMessage,
    Duration,
    Format,
    GenerateRequest,
    Generation,
    Logprob,
    ModelOptions,
    Options,
    OutFunction,
    OutToolCall,
    TopLogprob,
)
from .protocol import ChatRequest as OllamaChat

# Known options that change nothing here at these values; any other value is refused by name.
NEUTRAL_OPTIONS = {"typical_p": 1.0, "tfs_z": 1.0, "mirostat": 0, "repeat_last_n": 64, "penalize_newline": True}
# Options Ollama applies when it loads a model: here they are the model's settings.
LOAD_OPTIONS = {"numa": "", "num_batch": "BATCH_SIZE", "num_gpu": "GPU_LAYERS", "main_gpu": "", "low_vram": "",
                "f16_kv": "", "logits_all": "", "vocab_only": "", "use_mmap": "", "use_mlock": "",
                "embedding_only": "", "num_thread": "THREADS"}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def model_name(name: str) -> str:
    """Ollama apps add a tag to every name; `:latest` is the model itself."""
    return name.removesuffix(":latest")


def listed_name(stem: str) -> str:
    return f"{stem}:latest"


def keep_alive_seconds(value: Duration | None, param: str = "keep_alive") -> float | None:
    """Ollama's keep_alive in seconds: a number of seconds or a Go duration ("5m", "1h30m"); negative keeps the
    model loaded (inf); None leaves the model's configured keep-alive."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        text = str(value).strip()
        sign = -1.0 if text.startswith("-") else 1.0
        body = text.lstrip("+-")
        if re.fullmatch(r"\d+(\.\d+)?", body):
            seconds = sign * float(body)
        elif body and _DURATION_PART.sub("", body) == "":
            seconds = sign * sum(float(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(body))
        else:
            raise invalid_request(f"'{param}' must be seconds or a duration such as \"5m\" or \"1h30m\"; got '{value}'.", param)
    if math.isnan(seconds):
        raise invalid_request(f"'{param}' must be a number of seconds.", param)
    return math.inf if seconds < 0 else seconds


def refuse_unsupported_options(options: ModelOptions | None) -> None:
    if options is None:
        return
    for name, value in options.model_dump(exclude_none=True).items():
        param = f"options.{name}"
        if name in LOAD_OPTIONS:
            setting = LOAD_OPTIONS[name]
            where = f" (server setting {setting})" if setting else ""
            raise unsupported(param, f"is fixed when this server loads the model{where}; leave it out of the request")
        if name in NEUTRAL_OPTIONS and value != NEUTRAL_OPTIONS[name]:
            raise unsupported(param, f"is not supported by this server except at {NEUTRAL_OPTIONS[name]!r}")
        if name in ("mirostat_tau", "mirostat_eta"):
            raise unsupported(param, "is not supported: this server has no mirostat sampling")


def sampling(options: Options | None) -> tuple[Sampling, int | None]:
    """Sampling and the answer's token cap (None: up to the context) from `options`."""
    if options is None:
        return Sampling(), None
    stop = options.stop
    stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
    if options.num_predict == 0:
        raise invalid_request("'options.num_predict' must be at least 1, or -1 / -2 for up to the context.", "options.num_predict")
    max_tokens = options.num_predict if options.num_predict and options.num_predict > 0 else None
    return Sampling(temperature=options.temperature, top_p=options.top_p, top_k=options.top_k, min_p=options.min_p,
                    repeat_penalty=options.repeat_penalty, presence_penalty=options.presence_penalty or 0.0,
                    frequency_penalty=options.frequency_penalty or 0.0, seed=options.seed, stop=stops), max_tokens


def json_output(fmt: Format | None) -> JSONOutput | None:
    if fmt in (None, ""):
        return None
    if fmt == "json":
        return JSONOutput(None, param="format")
    # Compiled leniently, as Ollama does: keywords a grammar cannot enforce do not fail the request.
    return JSONOutput(fmt, strict=False, param="format")  # type: ignore[arg-type]


def _refuse_common(req: Generation) -> None:
    refuse_unsupported_options(req.options)


def reasoning_of(req: Generation) -> Reasoning | None:
    """`think`: true thinks (a model that cannot is an error, as in Ollama), false answers directly, a level sets
    the effort."""
    if req.think is None:
        return None
    if req.think is False:
        return Reasoning(effort="none", param="think")
    return Reasoning(effort=None if req.think is True else req.think, param="think", required=True)


def _arguments(arguments: dict[str, object] | str) -> str:
    return arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)


def messages_of(messages: list[ChatMessage]) -> list[Message]:
    out = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        calls = tuple(ToolCall(call.id or f"call_{i}_{j}", call.function.name, _arguments(call.function.arguments))
                      for j, call in enumerate(message.tool_calls or ()))
        if calls and message.role != "assistant":
            raise invalid_request("Only assistant messages carry tool calls.", f"{where}.tool_calls")
        out.append(Message(message.role, message.content or "", calls, tool_call_id=message.tool_call_id,
                           name=message.tool_name if message.role == "tool" else None, reasoning=message.thinking or None,
                           parts=_with_images(message.content or "", message.images, f"{where}.images")))
    return out


def _with_images(text: str, images: list[str] | None, param: str) -> tuple[str | ImageInput, ...] | None:
    """A message's images (base64), then its text, as Ollama places them; None without images."""
    if not images:
        return None
    return (*(ImageInput(data, f"{param}[{j}]") for j, data in enumerate(images)), text)


def chat_request(req: OllamaChat, model: str) -> ChatRequest:
    _refuse_common(req)
    tools = [Tool(t.function.name, t.function.description, t.function.parameters, strict=False, param=f"tools[{i}]")
             for i, t in enumerate(req.tools or [])]
    sampled, max_tokens = sampling(req.options)
    return ChatRequest(messages=messages_of(req.messages), model=model, sampling=sampled, max_tokens=max_tokens,
                       tools=tools, output=json_output(req.format),
                       logprobs=_logprobs(req), truncate=req.truncate is not False,
                       context_limit=req.options.num_ctx if req.options else None, reasoning=reasoning_of(req),
                       **_prefill(req.messages))


def _prefill(messages: list[ChatMessage]) -> dict[str, bool]:
    """A final assistant message is continued, as Ollama does."""
    prefill = bool(messages) and messages[-1].role == "assistant"
    return {"add_generation_prompt": not prefill, "continue_final_message": prefill}


def generate_request(req: GenerateRequest, model: str) -> ChatRequest:
    """/api/generate: the prompt (and `system`) rendered with the model's chat template, or as-is with `raw`."""
    _refuse_common(req)
    if req.images and req.raw:
        raise invalid_request("'images' cannot be used with 'raw': a raw prompt has no place for them; send them "
                              "without 'raw'.", "images")
    if req.suffix:
        raise unsupported("suffix", "(fill-in-the-middle) is not supported by this server")
    if req.template:
        raise unsupported("template", "is not supported: prompts use the model's own Jinja chat template; send `raw: true` "
                          "with a prompt you formatted yourself instead")
    if req.context:
        raise unsupported("context", "(token history from an earlier answer) is not supported: send the conversation to "
                          "/api/chat instead")
    if req.raw and req.system:
        raise invalid_request("'system' cannot be used with 'raw': a raw prompt is read as-is.", "system")
    sampled, max_tokens = sampling(req.options)
    prompt = Message("user", req.prompt or "", parts=_with_images(req.prompt or "", req.images, "images"))
    messages = ([Message("system", req.system)] if req.system else []) + [prompt]
    return ChatRequest(messages=messages, model=model, sampling=sampled, max_tokens=max_tokens,
                       prompt_param="prompt", output=json_output(req.format), logprobs=_logprobs(req),
                       context_limit=req.options.num_ctx if req.options else None,
                       raw_prompt=req.prompt if req.raw else None, reasoning=reasoning_of(req))


def _logprobs(req: Generation) -> int | None:
    if req.top_logprobs and not req.logprobs:
        raise invalid_request("'top_logprobs' needs 'logprobs': true.", "top_logprobs")
    return (req.top_logprobs or 0) if req.logprobs else None


def tool_calls(answer: Answer) -> list[OutToolCall] | None:
    if not answer.calls:
        return None
    return [OutToolCall(id=f"call_{call.id or uuid.uuid4().hex[:24]}",
                        function=OutFunction(index=i, name=call.name, arguments=arguments_object(call.arguments)))
            for i, call in enumerate(answer.calls)]


def logprobs(backend: Backend, items: tuple[TokenLogprob, ...] | list[TokenLogprob]) -> list[Logprob]:
    def top(token: int, logprob: float) -> TopLogprob:
        raw = backend.token_bytes(token)
        return TopLogprob(token=raw.decode("utf-8", "replace"), logprob=logprob, bytes=list(raw))

    return [Logprob(**top(item.token, item.logprob).model_dump(), top_logprobs=[top(t, lp) for t, lp in item.top] or None)
            for item in items]
