"""The package's layers go one way: each part imports only parts of its own layer or of the layers below it, and
the parts of one layer do not import each other in a circle. docs/architecture.md describes these layers; this test
keeps that page true."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "local_llm_api"

# Bottom first. A part is a subpackage or a top-level module of local_llm_api ("__init__": the package itself).
LAYERS: list[set[str]] = [
    {"__init__", "config", "errors", "logs", "system", "web", "images"},  # settings, typed errors, logging, the machine,
    # the page, images read from requests
    {"prompting", "structured"},  # chat templates, reasoning and tool-call syntax; grammars and logprobs
    {"catalog", "model_files"},  # which models exist and what their files say
    {"backends", "pull"},  # engines that run a model; fetching one from the Hub
    {"manager"},  # loaded models, the memory budget, loading and unloading
    {"core"},  # the request every dialect shares: prompt, output plan, generation, streaming
    {"api"},  # the server's own routes and HTTP plumbing: auth, errors, middleware, metrics
    {"dialects"},  # OpenAI, Responses, Anthropic, Ollama, and the utility routes
    {"main"},  # the FastAPI app: everything put together
    {"ray_serve", "cli", "__main__"},  # replicas on Ray Serve; the command line
]


def part_of(path: Path) -> str:
    relative = path.relative_to(PACKAGE).with_suffix("")
    return relative.parts[0] if len(relative.parts) > 1 or relative.parts[0] != "__init__" else "__init__"


def imported_parts(path: Path) -> set[str]:
    """The parts of the package that a module imports."""
    package = list(path.relative_to(PACKAGE).parent.parts)
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)]
            target = base + (node.module.split(".") if node.module else [])
            if target:
                found.add(target[0])
            else:  # `from .. import x`: x is a part (or the package's own attribute, such as __version__)
                found.update(a.name if (PACKAGE / a.name).exists() or (PACKAGE / f"{a.name}.py").exists()
                             else "__init__" for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "local_llm_api":
            found.add(node.module.split(".")[1] if "." in node.module else "__init__")
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("local_llm_api."))
    return found


def graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        part = part_of(path)
        edges.setdefault(part, set()).update(imported_parts(path) - {part})
    return edges


def layer_of(part: str) -> int:
    for i, layer in enumerate(LAYERS):
        if part in layer:
            return i
    raise AssertionError(f"{part} is in no layer: add it to LAYERS here and to docs/architecture.md")


def test_every_part_imports_only_its_own_layer_and_the_layers_below() -> None:
    for part in graph():
        layer_of(part)
    upward = [f"{part} (layer {layer_of(part)}) imports {used} (layer {layer_of(used)})"
              for part, used_parts in graph().items() for used in used_parts if layer_of(used) > layer_of(part)]
    assert not upward, upward


def test_the_parts_of_one_layer_import_each_other_one_way() -> None:
    edges = graph()
    circles = [(a, b) for a, used in edges.items() for b in used
               if layer_of(a) == layer_of(b) and a in edges.get(b, set())]
    assert not circles, circles
