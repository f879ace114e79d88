"""The application: settings, routes, middleware, error handlers and the model manager's lifespan.

`uvicorn local_llm_api.main:app` builds the app from the environment; tests and the CLI call `create_app`.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from . import __version__
from .api import admin, web
from .api.cors import CrossOriginWriteGuard, add_cors
from .api.errors import ErrorRenderers, install_error_handlers
from .api.hosts import HostCheckMiddleware
from .api.metrics import metrics_registry
from .api.metrics import router as metrics_router
from .api.middleware import RequestContextMiddleware
from .api.openapi import install_openapi
from .catalog import Catalog
from .config import Settings, SettingsError, load_settings
from .errors import APIError
from .dialects.anthropic import errors as anthropic_errors
from .dialects.anthropic import routes as anthropic
from .dialects.ollama import errors as ollama_errors
from .dialects.ollama import models as ollama_models
from .dialects.ollama import routes as ollama
from .dialects.openai import errors as openai_errors
from .dialects.openai import routes as openai
from .dialects.responses import routes as responses
from .dialects.responses.store import ResponseStore
from .dialects.utility import rerank, tokenizer
from .logs import setup_logging
from .manager import ModelManager

log = logging.getLogger("local_llm_api")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    setup_logging(settings.log_level.value, settings.log_file, settings.log_format)

    catalog = Catalog.from_settings(settings)  # a bad MODELS_CONFIG stops start-up here, with its reason

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        manager = ModelManager(settings, catalog)
        manager.start_keep_alive()
        app.state.manager = manager
        app.state.metrics = metrics_registry(manager)
        app.state.response_store = ResponseStore(settings.data_dir / "responses.sqlite3", settings.responses_max_stored,
                                                 settings.responses_max_age_seconds)
        preload = asyncio.create_task(_preload(manager)) if settings.preload_model else None
        log.info("serving models from %s", manager.root)
        yield
        if preload is not None:
            preload.cancel()
        await manager.close()
        app.state.response_store.close()

    app = FastAPI(
        title="local-llm-api",
        version=__version__,
        summary="Local LLMs (GGUF and Transformers) behind the OpenAI HTTP API.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.started_at = time.time()
    renderers = error_renderers()
    install_error_handlers(app, renderers)
    app.add_middleware(CrossOriginWriteGuard, settings=settings, renderers=renderers)
    app.add_middleware(HostCheckMiddleware, settings=settings, renderers=renderers)  # inside: refusals are logged too
    app.add_middleware(RequestContextMiddleware, max_body_bytes=settings.max_request_bytes, renderers=renderers,
                       body_timeout=settings.body_read_timeout_seconds)
    add_cors(app, settings)
    app.include_router(web.router)
    app.include_router(admin.health_router)
    app.include_router(admin.router)
    app.include_router(metrics_router)
    for prefix in ("/v1", "/api/v1"):
        app.include_router(openai.router, prefix=prefix)
        app.include_router(responses.router, prefix=prefix)
        app.include_router(anthropic.router, prefix=prefix)
    for prefix in ("", "/v1", "/api/v1"):  # llama.cpp's server has /tokenize and /rerank at the root, vLLM both
        app.include_router(tokenizer.router, prefix=prefix)
        app.include_router(rerank.router, prefix=prefix)
    app.include_router(ollama_models.version_router, prefix="/api")
    app.include_router(ollama_models.router, prefix="/api")
    app.include_router(ollama.router, prefix="/api")
    install_openapi(app)
    return app


def error_renderers() -> ErrorRenderers:
    """Each API's error envelope by path (the Ray Serve gateway answers its own errors with them too)."""
    renderers = ErrorRenderers(default=openai_errors.error_response)
    renderers.add(r"^(/api)?/v1/messages(/|$)", anthropic_errors.error_response)
    renderers.add(r"^/api/(?!v1(/|$))", ollama_errors.error_response)  # Ollama's /api/*, not our /api/v1
    return renderers


async def _preload(manager: ModelManager) -> None:
    try:
        await manager.load(None)
    except APIError as exc:
        log.error("preloading the default model failed: %s", exc.body.message)


def __getattr__(name: str) -> FastAPI:
    """`local_llm_api.main:app`, built on first access so that importing this module reads no settings."""
    if name != "app":
        raise AttributeError(name)
    try:
        return create_app()
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(2) from None
