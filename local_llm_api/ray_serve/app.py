"""The Ray Serve application: `Gateway` (the HTTP ingress, one FastAPI app) in front of `ModelServer` replicas,
each our whole server (manager, engines, constrained decoding) with its own models and caches.

    local-llm-api serve --replicas 2                 # a local Ray instance, or RAY_ADDRESS / --ray-address
    serve deploy deploy/ray-serve.yaml               # a cluster (KubeRay: the same file in a RayService)
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve.config import RequestRouterConfig
from ray.serve.handle import DeploymentHandle

from ..config import Settings, load_settings
from ..errors import APIError
from ..main import create_app
from .forward import Forwarded, Head, run_app
from .gateway import REPLICA_HEADER, create_gateway
from .router import ModelAwareRouter

log = logging.getLogger("local_llm_api.ray_serve")

# Ray's own cap on the models a replica holds for routing; our manager unloads by MEMORY_BUDGET and
# MAX_LOADED_MODELS, and the routing table is corrected from it before each request.
MODELS_PER_REPLICA = 16


class ModelServer:
    """One replica: the single-process server's app, driven by forwarded requests instead of a socket."""

    async def __init__(self, settings: dict[str, Any]) -> None:
        self._app = create_app(Settings(**settings))
        self._lifespan = self._app.router.lifespan_context(self._app)
        await self._lifespan.__aenter__()  # the manager starts
        self.replica = serve.get_replica_context().replica_id.unique_id
        settings = self._app.state.settings
        if settings.preload_model and settings.default_model:
            # Loaded through Ray's multiplexing, so that every replica is known to hold the default model and
            # its requests spread over all of them.
            try:
                await self._hold(settings.default_model)
            except APIError as exc:
                log.error("preloading the default model failed: %s", exc.body.message)

    async def __del__(self) -> None:
        await self._lifespan.__aexit__(None, None, None)  # engines stop, models are freed

    @serve.multiplexed(max_num_models_per_replica=MODELS_PER_REPLICA)
    async def _hold(self, model: str) -> str:
        """Load `model` here (Ray then routes its requests to this replica)."""
        await self._app.state.manager.load(model)
        return model

    async def _tell_ray_what_is_loaded(self) -> None:
        """Keep Ray's routing table true: models this replica unloaded (memory, idle) leave it; models it loaded
        by other routes (POST /models/{name}/load, Ollama's keep_alive) join it."""
        loaded = self._app.state.manager.loaded
        wrapper = getattr(self, "__serve_multiplex_wrapper", None)
        known = wrapper.models if wrapper is not None else {}
        stale = [m for m in known if m not in loaded]
        for model in stale:
            del known[model]
        if stale:
            wrapper._push_model_ids_info()
        for model in [m for m in loaded if m not in known]:
            try:
                await self._hold(model)  # already loaded: only registered
            except APIError:
                pass  # unloaded meanwhile

    async def forward(self, request: Forwarded, replica: str | None = None,
                      affinity: str | None = None) -> AsyncIterator[Head | bytes]:
        # `replica` and `affinity` are read by the router (router.py); here they are only passed along.
        model = serve.get_multiplexed_model_id()
        await self._tell_ray_what_is_loaded()
        if model:
            try:
                await self._hold(model)
            except APIError:
                pass  # the app answers the request with this model's error (unknown, too big, failed to load)
        async for piece in run_app(self._app, request):
            if isinstance(piece, Head):
                piece.headers.append((REPLICA_HEADER.encode(), self.replica.encode()))
            yield piece
        await self._tell_ray_what_is_loaded()  # the request may have loaded or unloaded a model


class Gateway:
    def __init__(self, servers: DeploymentHandle, settings: dict[str, Any]) -> None:
        self._servers = servers.options(stream=True)

        async def send(request: Forwarded, *, model: str = "", affinity: str | None = None,
                       replica: str | None = None) -> AsyncIterator[Head | bytes]:
            handle = self._servers.options(multiplexed_model_id=model) if model else self._servers
            return handle.forward.remote(request, replica=replica, affinity=affinity)

        self._gateway = create_gateway(Settings(**settings), send)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return self._gateway


def build(args: dict[str, Any]) -> serve.Application:
    """The application from a `serve deploy` config's `args:` (deploy/ray-serve.yaml): our settings by their
    environment names (MODEL_DIR, REPLICAS, THREADS, ...); the rest come from the environment and .env, as for
    the single-process server."""
    return application(load_settings(**{name.lower(): value for name, value in args.items()}))


def application(settings: Settings) -> serve.Application:
    """REPLICAS replicas (at least one); with MAX_REPLICAS above it, autoscaled on requests in hand per replica."""
    replicas = max(1, settings.replicas)
    values = settings.model_dump()
    cpus = settings.replica_cpus if settings.replica_cpus is not None else float(settings.threads or 1)
    actor = {"num_cpus": cpus, "num_gpus": settings.replica_gpus}
    scaling: dict[str, Any] = {"num_replicas": replicas} if settings.max_replicas <= replicas else {
        "autoscaling_config": {"min_replicas": replicas, "max_replicas": settings.max_replicas,
                               "target_ongoing_requests": settings.parallel_slots}}
    servers = serve.deployment(
        ModelServer,
        name="ModelServer",
        ray_actor_options=actor,
        # A replica takes its slots' worth and a short queue; the rest wait in Ray's router for whichever frees first.
        max_ongoing_requests=2 * settings.parallel_slots,
        request_router_config=RequestRouterConfig(request_router_class=ModelAwareRouter,
                                                  request_router_kwargs={"slots": settings.parallel_slots}),
        health_check_period_s=5,
        **scaling,
    ).bind(values)
    gateway = serve.deployment(serve.ingress()(Gateway), name="Gateway", num_replicas=1,
                               ray_actor_options={"num_cpus": 0}, max_ongoing_requests=10_000)
    return gateway.bind(servers, values)
