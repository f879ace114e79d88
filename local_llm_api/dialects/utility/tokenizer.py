"""POST /tokenize, /detokenize and /apply-template: what the model reads, exactly as the chat route builds it
(same template, same tools prompt, same tokenizer), so a client can count and inspect before it sends."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Request

from ...api.auth import require_api_key
from ...backends.base import Backend
from ...core.chat import model_reasoning, with_images
from ...errors import invalid_request
from ...core.output import plan_output
from ...core.prompt import Prompt, prompt_text, prompt_tokens
from ...core.request import ChatRequest
from ...manager import LoadedModel, ModelManager
from ..base import JSONBodyRoute, say_what_changed
from ..openai.protocol import ChatCompletionRequest
from ..openai.routes import ERRORS
from ..openai.translate import chat_request
from .protocol import (
    ApplyTemplateResponse,
    ChatPrompt,
    DetokenizeRequest,
    DetokenizeResponse,
    Piece,
    TokenizeRequest,
    TokenizeResponse,
)

router = APIRouter(dependencies=[Depends(require_api_key)], responses=ERRORS, tags=["utility"], route_class=JSONBodyRoute)


def _manager(request: Request) -> ModelManager:
    return request.app.state.manager


IMAGE_TOKEN = -1  # an image's token where the model has no id for it


def _chat(body: ChatPrompt | TokenizeRequest) -> ChatRequest:
    fields = body.model_dump(exclude_none=True, by_alias=True, exclude={"content", "prompt", "add_special", "with_pieces"})
    return chat_request(ChatCompletionRequest.model_validate(fields))


def _render(model: LoadedModel, req: ChatRequest, plain_content: bool) -> Prompt:
    backend = model.backend
    return prompt_text(backend, req, plan_output(req, backend.facts.chat_template), reasoning=model_reasoning(model),
                       plain_content=plain_content)


@router.post("/apply-template")
async def apply_template(body: ChatPrompt, request: Request) -> ApplyTemplateResponse:
    """The exact prompt text the chat route feeds the model for these messages, tools and template variables."""
    req = _chat(body)
    async with _manager(request).use(body.model, "chat") as model:
        req = await with_images(req, model, request.app.state.settings)
        prompt = await asyncio.to_thread(_render, model, req, not request.app.state.settings.parse_special_in_content)
    say_what_changed(request, {}, prompt.ignored)
    return ApplyTemplateResponse(prompt=prompt.text, model=model.entry.name)


def _tokenize(model: LoadedModel, body: TokenizeRequest, req: ChatRequest | None, plain_content: bool) -> list[int]:
    backend = model.backend
    if req is not None:
        tokens, prompt = prompt_tokens(backend, req, plan_output(req, backend.facts.chat_template),
                                       reasoning=model_reasoning(model), plain_content=plain_content)
        # An image's tokens by the model's own id where it has one (Transformers), else -1 (llama.cpp's embeddings).
        return [t if t >= 0 else IMAGE_TOKEN for t in getattr(prompt.media, "history", tokens)]
    return backend.tokenize(body.content if body.content is not None else body.prompt or "", add_special=body.add_special)


def _piece(backend: Backend, token: int) -> str | list[int]:
    if token == IMAGE_TOKEN:
        return "<image>"
    raw = backend.token_piece(token)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return list(raw)  # part of a character: the bytes, as llama.cpp's server gives them


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, request: Request) -> TokenizeResponse:
    async with _manager(request).use(body.model, "chat" if body.messages is not None else None) as model:
        backend = model.backend
        req = await with_images(_chat(body), model, request.app.state.settings) if body.messages is not None else None
        tokens = await asyncio.to_thread(_tokenize, model, body, req, not request.app.state.settings.parse_special_in_content)
        out: list[int] | list[Piece] = [Piece(id=t, piece=_piece(backend, t)) for t in tokens] if body.with_pieces else tokens
    return TokenizeResponse(tokens=out, count=len(tokens), max_model_len=backend.facts.context_size, model=model.entry.name)


@router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, request: Request) -> DetokenizeResponse:
    async with _manager(request).use(body.model, None) as model:
        backend = model.backend
        vocab = backend.facts.vocab_size
        bad = next((i for i, t in enumerate(body.tokens) if not 0 <= t < vocab), None)
        if bad is not None:
            raise invalid_request(f"Token id {body.tokens[bad]} is outside the vocabulary (0..{vocab - 1}).", f"tokens[{bad}]",
                                  "token_out_of_vocabulary")
        text = await asyncio.to_thread(backend.detokenize, body.tokens)
    return DetokenizeResponse(content=text, model=model.entry.name)
