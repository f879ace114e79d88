"""Test harness: the real server in a subprocess, on loopback, serving real models: SmolLM2-135M as a
GGUF (llama.cpp) and as a Transformers folder, and all-MiniLM-L6-v2 (sentence-transformers).

`server`/`client` serve the GGUF; `backend_server` runs once per backend, for the API contract tests.

Servers are started with THREADS=1 so that one core stays free for the test client and the HTTP side, and with
REPRODUCIBLE=true, so that tests comparing two greedy or seeded answers compare exact computations (the default,
prefix reuse for every request, is tested on its own servers in tests/test_batching.py).
"""

from __future__ import annotations

import copy
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from local_llm_api.cli import BUNDLED_FILE, bundled_model_path

from .models import HF_SMOLLM2, MINILM, minilm_folder, place_tree, smollm2_transformers_folder

ROOT = Path(__file__).resolve().parent.parent
SPEC_PATHS = [ROOT / "tests" / "data" / "openai-openapi.yaml", ROOT.parent / "shared" / "spec" / "openai-openapi.yaml"]
MODEL = BUNDLED_FILE
MODEL_STEM = MODEL.removesuffix(".gguf")
# SmolLM2's end-of-generation tokens (<|endoftext|>, <|im_end|>, <|endofprompt|>); biasing them away makes long answers.
NO_END = {"0": -100, "2": -100, "4": -100}


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log_file: Path
    model_dir: Path

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kwargs.pop("timeout", 120), **kwargs)

    def log(self) -> str:
        return self.log_file.read_text() if self.log_file.exists() else ""

    def wait_for_log(self, text: str, timeout: float = 10) -> str:
        """The log once it holds `text`: a request's log line is written when its response has ended, which
        may be after the client has read it."""
        deadline = time.time() + timeout
        while text not in (log := self.log()):
            assert time.time() < deadline, f"{text!r} never reached the log:\n{log[-2000:]}"
            time.sleep(0.05)
        return log


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def place_model(model_dir: Path) -> Path:
    """Hard-link (or copy) the bundled GGUF into a test MODEL_DIR; symlinks out of MODEL_DIR are refused."""
    model_dir.mkdir(parents=True, exist_ok=True)
    target = model_dir / MODEL
    if not target.exists():
        source = bundled_model_path()
        try:
            os.link(source, target)
        except OSError:
            target.write_bytes(source.read_bytes())
    return target


def wait_until(condition: Callable[[], bool], timeout: float = 30, what: str = "condition") -> None:
    """Poll `condition` until it holds; fail after `timeout` seconds instead of hanging."""
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"{what} never held"
        time.sleep(0.02)


def start_server(tmp: Path, model_dir: Path, wait_for_model: bool = True, prefix: Sequence[str] = (),
                 args: Sequence[str] = (), **env: str) -> Server:
    """`prefix`: a command the server runs under (fewer privileges, another mount namespace); `args`: more flags."""
    port = free_port()
    log_file = tmp / f"server-{port}.log"
    environment = {
        **os.environ,
        "MODEL_DIR": str(model_dir),
        "DEFAULT_MODEL": MODEL,
        "THREADS": "1",
        "CONTEXT_SIZE": "2048",
        "REPRODUCIBLE": "true",
        "PRELOAD_MODEL": "true",
        "LOG_FILE": str(log_file),
        "LOG_LEVEL": "INFO",
        **env,
    }
    process = subprocess.Popen(
        [*prefix, sys.executable, "-m", "local_llm_api", "serve", "--host", "127.0.0.1", "--port", str(port), *args],
        env=environment,
        cwd=tmp,
        stdout=subprocess.DEVNULL,
        stderr=(tmp / f"server-{port}.stderr").open("wb"),
    )
    server = Server(f"http://127.0.0.1:{port}", process, log_file, model_dir)
    deadline = time.time() + 120
    with httpx.Client(base_url=server.url, timeout=5) as client:
        while time.time() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"server exited: {(tmp / f'server-{port}.stderr').read_text()}")
            try:
                health = client.get("/health").json()
                if not wait_for_model or health["loaded_models"]:
                    return server
            except (httpx.HTTPError, ValueError, KeyError):  # not up yet (Ray's proxy answers 404 until deployed)
                pass
            time.sleep(0.2)
    stop_server(server)
    raise RuntimeError("server did not become ready")


def stop_server(server: Server) -> None:
    """SIGTERM, then SIGKILL after 20 s; then whatever the server started and left behind (a Ray instance's
    processes, when it ran with --replicas) is killed too."""
    try:
        family = psutil.Process(server.process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    server.process.terminate()
    try:
        server.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.process.kill()
    for process in family:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass


@contextmanager
def running_server(tmp: Path, model_dir: Path, wait_for_model: bool = True, prefix: Sequence[str] = (),
                   **env: str) -> Iterator[Server]:
    server = start_server(tmp, model_dir, wait_for_model, prefix, **env)
    try:
        yield server
    finally:
        stop_server(server)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("models")
    place_model(directory)
    (directory / "not-a-model.gguf").write_bytes(b"this is not a GGUF file" * 10)
    return directory


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("server"), model_dir)
    yield srv
    stop_server(srv)


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


@pytest.fixture(scope="session")
def hf_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2 as a Transformers folder and all-MiniLM-L6-v2, side by side."""
    directory = tmp_path_factory.mktemp("hf-models")
    place_tree(smollm2_transformers_folder(), directory / HF_SMOLLM2)
    place_tree(minilm_folder(), directory / MINILM)
    return directory


@dataclass
class Served:
    """A server and the model its requests use by default."""

    server: Server
    model: str
    backend: str


@pytest.fixture(scope="session", params=["llama-cpp", "transformers"])
def backend_server(request: pytest.FixtureRequest, server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    if request.param == "llama-cpp":
        yield Served(server, MODEL, "llama-cpp")
        return
    hf_dir = request.getfixturevalue("hf_model_dir")
    srv = start_server(tmp_path_factory.mktemp("hf-server"), hf_dir, DEFAULT_MODEL=HF_SMOLLM2)
    yield Served(srv, HF_SMOLLM2, "transformers")
    stop_server(srv)


# ---------------------------------------------------------------- the OpenAI spec


def _nullable_to_anyof(node: Any) -> Any:
    """The spec is OpenAPI 3.1 but keeps 3.0's `nullable: true`, which JSON Schema 2020-12 ignores."""
    if isinstance(node, dict):
        node = {k: _nullable_to_anyof(v) for k, v in node.items()}
        if node.pop("nullable", False):
            return {"anyOf": [node, {"type": "null"}]}
        return node
    if isinstance(node, list):
        return [_nullable_to_anyof(v) for v in node]
    return node


class SpecValidator:
    def __init__(self, path: Path) -> None:
        import yaml
        from referencing import Registry, Resource
        from referencing.jsonschema import DRAFT202012

        document = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        self.document = _nullable_to_anyof(document)
        self.registry = Registry().with_resource("spec", Resource(self.document, specification=DRAFT202012))

    def validate(self, instance: Any, schema: str, *, patch: Any = None) -> None:
        from jsonschema import Draft202012Validator

        target: dict[str, Any] = {"$ref": f"spec#/components/schemas/{schema}"}
        if patch is not None:
            target = patch(copy.deepcopy(self.document["components"]["schemas"][schema]))
            target = {"$id": "patched", **_rebase_refs(target)}
        Draft202012Validator(target, registry=self.registry).validate(instance)


def _rebase_refs(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: ("spec" + v if k == "$ref" and v.startswith("#") else _rebase_refs(v)) for k, v in node.items()}
    if isinstance(node, list):
        return [_rebase_refs(v) for v in node]
    return node


@pytest.fixture(scope="session")
def spec() -> SpecValidator:
    for path in SPEC_PATHS:
        if path.exists():
            return SpecValidator(path)
    pytest.skip("the OpenAI spec (tests/data/openai-openapi.yaml or ../shared/spec/) is not present")


def sse_events(response: httpx.Response) -> list[str]:
    """The `data:` payloads of a server-sent-events response, in order."""
    return [line[len("data: "):] for line in response.iter_lines() if line.startswith("data: ")]


@pytest.fixture(scope="session")
def vocab(model_dir: Path) -> Any:
    """The model's tokenizer alone (llama.cpp `vocab_only`), to find token ids for tests."""
    from llama_cpp import Llama

    return Llama(str(model_dir / MODEL), vocab_only=True, verbose=False)
