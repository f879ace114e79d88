"""CORS for browser apps that call the server directly (Open WebUI in direct mode, editor webviews, local pages).
CORS_ORIGINS lists the allowed origins (or `*`); unset, only pages served from this machine may call.

CORS only keeps a foreign page from reading answers: a "simple" cross-origin POST (a form, a text/plain body) is
still sent without a preflight. So writes from an origin CORS does not allow are refused outright (403), unless
they come from our own pages (same origin)."""

from __future__ import annotations

import re

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from ..config import Settings
from ..errors import APIError
from .errors import ErrorRenderers
from .hosts import allowed_host_names, host_allowed

# Pages on this machine (any port), desktop-app shells and editor webviews: Ollama's default set, in spirit.
LOCAL_ORIGINS = r"^(https?://(localhost|127\.0\.0\.1|\[::1\])(:\d+)?|(app|file|tauri|vscode-webview)://.*)$"


def configured_origins(settings: Settings) -> list[str]:
    return [o.strip().rstrip("/") for o in settings.cors_origins.split(",") if o.strip()]


def add_cors(app: FastAPI, settings: Settings) -> None:
    """Outermost, so that a preflight is answered before the API-key check (browsers send no key with it)."""
    origins = configured_origins(settings)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=origins,
        allow_origin_regex=None if origins else LOCAL_ORIGINS,
        allow_methods=["GET", "POST", "DELETE", "HEAD", "OPTIONS"],
        allow_headers=["*"],
        expose_headers=["X-Request-ID", "Retry-After", "X-Ignored-Tools"],
        max_age=600,
    )


class CrossOriginWriteGuard:
    """Refuses POST / DELETE / PUT / PATCH from a browser page of an origin CORS does not allow."""

    def __init__(self, app: ASGIApp, settings: Settings, renderers: ErrorRenderers) -> None:
        self.app = app
        self.origins = configured_origins(settings)
        self.hosts = allowed_host_names(settings)
        self.renderers = renderers

    def allowed(self, origin: str, host: str) -> bool:
        if "*" in self.origins or origin in self.origins:
            return True
        # Our own pages (the playground), under any name the server answers to: not a rebound attacker's name.
        if origin.split("://", 1)[-1] == host and host_allowed(host, self.hosts):
            return True
        return not self.origins and re.match(LOCAL_ORIGINS, origin) is not None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in ("GET", "HEAD", "OPTIONS"):
            headers = {k: v.decode("latin-1") for k, v in scope["headers"] if k in (b"origin", b"host")}
            origin = headers.get(b"origin")
            if origin and not self.allowed(origin, headers.get(b"host", "")):
                error = APIError(403, f"A request from the web page origin '{origin}' is refused: add the origin to "
                                 "CORS_ORIGINS to let its pages call this server.", type="permission_error",
                                 code="origin_not_allowed")
                await self.renderers.render(scope["path"], error)(scope, receive, send)
                return
        await self.app(scope, receive, send)
