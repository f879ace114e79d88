"""CORS for browser apps that call the server directly (Open WebUI in direct mode, editor webviews, local pages).
CORS_ORIGINS lists the allowed origins (or `*`); unset, only pages served from this machine may call."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from ..config import Settings

# Pages on this machine (any port), desktop-app shells and editor webviews: Ollama's default set, in spirit.
LOCAL_ORIGINS = r"^(https?://(localhost|127\.0\.0\.1|\[::1\])(:\d+)?|(app|file|tauri|vscode-webview)://.*)$"


def add_cors(app: FastAPI, settings: Settings) -> None:
    """Outermost, so that a preflight is answered before the API-key check (browsers send no key with it)."""
    origins = [o.strip().rstrip("/") for o in settings.cors_origins.split(",") if o.strip()]
    app.add_middleware(
        CORSMiddleware,
        allow_origins=origins,
        allow_origin_regex=None if origins else LOCAL_ORIGINS,
        allow_methods=["GET", "POST", "DELETE", "HEAD", "OPTIONS"],
        allow_headers=["*"],
        expose_headers=["X-Request-ID", "Retry-After", "X-Ignored-Tools"],
        max_age=600,
    )
