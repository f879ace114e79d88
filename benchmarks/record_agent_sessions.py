"""Record what the real Codex CLI and Claude Code send in a session: the data that `replay_bench.py` replays.

Each client runs one session of three prompts (a question, a second turn in the same session, a tool round trip)
against our server, through the agent tests' recording proxy. The server serves the agent tests' scripted model
(tests/agents/scripted_model.py): it reads the clients' long prompts in seconds and calls the tool for certain,
so the session takes the path a real one does. The generating requests (Codex: POST /v1/responses, Claude Code:
POST /v1/messages), their bodies as sent, in order, go to benchmarks/data/agent-sessions/<client>.json.gz with the
client's version. The clients are those of the agent tests (pinned in tests/agents/clients.py, installed on first
use from npm).

    python benchmarks/record_agent_sessions.py
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the agent tests' clients, proxy and scripted model

from tests.agents import clients  # noqa: E402
from tests.agents.recording_proxy import RecordingProxy  # noqa: E402
from tests.agents.scripted_model import Script, build, tool_call  # noqa: E402
from tests.conftest import start_server, stop_server  # noqa: E402

DATA = ROOT / "benchmarks" / "data" / "agent-sessions"
PROMPTS = ("Say what this project is in one line", "And once more, shorter", "Please use-the-tool to read marker.txt")
SESSIONS = {  # client: (its class, the generating path, the scripted tool call)
    "codex": (clients.Codex, "/v1/responses", tool_call("exec_command", cmd="cat marker.txt")),
    "claude-code": (clients.ClaudeCode, "/v1/messages", None),
}


def record(name: str, root: Path, proxy: RecordingProxy) -> dict:
    kind, path, _ = SESSIONS[name]
    client = kind(root / name / "home", root / name / "work", proxy.url, f"{name}-agent")
    (client.workdir / "marker.txt").write_text("marker-recorded\n")
    for i, prompt in enumerate(PROMPTS):
        run = client.ask(prompt, again=i > 0)
        if run.returncode != 0:
            raise SystemExit(f"{name} failed:\n{run}\n{proxy.report()}")
    requests = [{"path": x.path, "query": x.query, "body": x.body} for x in proxy.find(path)
                if x.method == "POST" and x.path == path and isinstance(x.body, dict) and x.body.get("model") == f"{name}-agent"]
    package = clients.NPM_PACKAGES["codex" if name == "codex" else "claude"]
    return {"client": package, "recorded": datetime.date.today().isoformat(), "prompts": list(PROMPTS),
            "requests": requests}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DATA)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as workdir:
        root = Path(workdir)
        models = root / "models"
        models.mkdir()
        for name, (_, _, call) in SESSIONS.items():
            (root / name / "work").mkdir(parents=True)
            marker = str(root / name / "work" / "marker.txt")
            build(models / f"{name}-agent.gguf", Script(call=call or tool_call("Read", file_path=marker)))
        # The agent recipes' server (docs/clients.md): 2 slots of 32,768 tokens, prefix reuse for every request.
        server = start_server(root, models, wait_for_model=False, CONTEXT_SIZE="32768", PARALLEL_SLOTS="2",
                              REPRODUCIBLE="false", PRELOAD_MODEL="false", DEFAULT_MODEL="")
        try:
            with RecordingProxy(server.url) as proxy:
                for name in SESSIONS:
                    session = record(name, root, proxy)
                    target = args.out / f"{name}.json.gz"
                    # mtime=0: the same session gives the same file
                    target.write_bytes(gzip.compress(json.dumps(session, indent=1).encode(), mtime=0))
                    print(f"{target}: {len(session['requests'])} requests from {session['client']}", flush=True)
        finally:
            stop_server(server)


if __name__ == "__main__":
    main()
