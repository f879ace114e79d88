"""The web playground at / and /ui: one static page (no build step) that uses the OpenAI routes like any client."""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter(include_in_schema=False)


@cache
def playground_html() -> str:
    return files("local_llm_api.web").joinpath("playground.html").read_text(encoding="utf-8")


@router.api_route("/", methods=["GET", "HEAD"])  # HEAD: the health probe Claude Code and Ollama apps send
@router.get("/ui")
async def playground() -> HTMLResponse:
    # The page itself needs no key: it asks for one when the API answers 401.
    return HTMLResponse(playground_html())
