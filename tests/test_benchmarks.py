"""Every benchmark script runs (tiny settings, no timing asserted), so that the figures in docs/benchmarks.md can
always be reproduced with the commands given there."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from local_llm_api.cli import bundled_model_path

from .conftest import free_port
from .models import smollm2_transformers_folder, tiny_llava_gguf

ROOT = Path(__file__).resolve().parent.parent


def run(script: str, *args: str) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True, text=True,
                          timeout=240, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_serve_bench() -> None:
    out = run("serve_bench.py", "--port", str(free_port()), "--model", str(bundled_model_path()), "--threads", "1", "--concurrency", "1",
              "--requests-per-client", "1", "--max-tokens", "4", "--skip", "llama-cpp-python-server", "direct", "prefix",
              "--runs", "2")
    assert "| local-llm-api" in out and "Spread over 2 runs" in out and "| first wave p50 (s) | steady p50 (s) |" in out


def test_agent_bench() -> None:
    out = run("agent_bench.py", "--port", str(free_port()), "--model", str(bundled_model_path()), "--threads", "1",
              "--clients", "2", "--turns", "2", "--system-words", "60", "--max-tokens", "4", "--alone", "2")
    assert "| local-llm-api (prefix reuse" in out and "| local-llm-api, REPRODUCIBLE=true" in out
    assert "a later turn alone: TTFT (s) |" in out and "| server | turn 1 | turn 2 |" in out


def test_agent_bench_with_more_agents_than_slots(tmp_path: Path) -> None:
    out = run("agent_bench.py", "--port", str(free_port()), "--model", str(bundled_model_path()), "--threads", "1",
              "--clients", "3", "--slots", "2", "--distinct", "--disk-off", "--skip", "reproducible", "default",
              "--variant", "PREFILL_STEP_MS=300", "--turns", "2",
              "--system-words", "60", "--max-tokens", "4", "--alone", "1", "--timeline", str(tmp_path / "t.json"))
    assert "3 clients x 2 turns on 2 slots, a system prompt of its own for each client" in out
    assert "| local-llm-api, PREFIX_CACHE_DISK=0 |" in out and "| local-llm-api, PREFILL_STEP_MS=300 |" in out
    # The least each server's own cold read allows
    assert "| one cold prompt: alone / first in the load | TTFT p95 at least |" in out
    timeline = json.loads((tmp_path / "t.json").read_text())["local-llm-api, PREFIX_CACHE_DISK=0"]
    assert sorted((client, turn) for client, turn, *_ in timeline) == [(c, t) for c in range(3) for t in range(2)]
    assert all(sent <= first <= end for *_, sent, first, end in timeline)


def test_wave_bench() -> None:
    out = run("wave_bench.py", "--port", str(free_port()), "--model", str(bundled_model_path()), "--threads", "1",
              "--clients", "2", "--waves", "2", "--baseline", str(ROOT))
    assert "| local-llm-api | 2 |" in out and f"| local-llm-api at {ROOT.name} | 2 |" in out


def test_copy_bench() -> None:
    out = run("copy_bench.py", "--port", str(free_port()), "--model", str(bundled_model_path()), "--threads", "1",
              "--clients", "1", "2", "--rounds", "1", "--max-tokens", "8")
    assert "| local-llm-api (prompt lookup" in out and "| local-llm-api, PROMPT_LOOKUP_TOKENS=0 | 2 |" in out


def test_ray_bench() -> None:
    pytest.importorskip("ray.serve", reason="Ray Serve is the optional extra local-llm-api[ray]")
    out = run("ray_bench.py", "--port", str(free_port()), "--model", str(bundled_model_path()), "--threads", "1", "--slots", "2",
              "--replicas", "1", "--concurrency", "1", "--requests-per-client", "1", "--max-tokens", "8")
    assert "| local-llm-api (1 thread, 2 slots each) | 1 |" in out and "| Ray Serve, 1 replica (1 thread, 2 slots each) | 1 |" in out


def test_transformers_bench() -> None:
    out = run("transformers_bench.py", "--port", str(free_port()), "--model-dir", str(smollm2_transformers_folder()), "--threads", "1",
              "--concurrency", "1", "--requests-per-client", "1", "--max-tokens", "4", "--skip", "transformers-serve",
              "transformers-serve-cb")
    assert "| local-llm-api (transformers)" in out


def test_structured_bench() -> None:
    out = run("structured_bench.py", "--port", str(free_port()), "--model", str(bundled_model_path()), "--threads", "1", "--concurrency", "1",
              "--requests-per-client", "1", "--max-tokens", "8", "--skip-llama-cpp-python", "--baseline", str(ROOT))
    assert "forced tool call" in out and f"| local-llm-api at {ROOT.name} (llama.cpp) | forced tool call" in out


def test_ab_bench() -> None:
    out = run("ab_bench.py", "--port", str(free_port()), "--model", str(bundled_model_path()), "--threads", "1",
              "--baseline", str(ROOT), "--rounds", "2", "--requests", "1", "--max-tokens", "4")
    assert "| candidate |" in out and f"| baseline ({ROOT.name}) |" in out


def test_engine_profile() -> None:
    out = run("engine_profile.py", "--model", str(bundled_model_path()), "--threads", "1", "--sequences", "1",
              "--max-tokens", "4")
    assert "tokens/s" in out


@pytest.mark.parametrize("baseline", [False, True])
def test_discovery_bench(baseline: bool) -> None:
    out = run("discovery_bench.py", "--models", "3", "--files", "2", "--repeat", "3", *(["--baseline", str(ROOT)] if baseline else []))
    assert out.count("entries() median") == 1 + baseline


def test_soak() -> None:
    out = run("soak.py", "--clients", "4", "--duration", "6", "--warm-up", "2", "--port", str(free_port()))
    assert "| 5xx answers | 0 | 0 |" in out and "running 0, queued 0" in out


def test_restart_bench() -> None:
    out = run("restart_bench.py", "--port", str(free_port()), "--model", str(bundled_model_path()), "--threads", "1",
              "--slots", "1", "--context", "2048", "--system-words", "900")
    assert "| local-llm-api, disk tier on (the default) |" in out and "| local-llm-api, PREFIX_CACHE_DISK=0 |" in out


def test_vision_bench() -> None:
    model, projector = tiny_llava_gguf()
    out = run("vision_bench.py", "--port", str(free_port()), "--model", str(model), "--mmproj", str(projector),
              "--threads", "1", "--pictures", "1", "--size", "64")
    assert "| local-llm-api | 31 |" in out  # 16 image tokens and the question's, as llama-server counts them


def test_long_prompt_bench() -> None:
    out = run("long_prompt_bench.py", "--port", str(free_port()), "--model", str(bundled_model_path()), "--threads", "1",
              "--context", "4096", "--system-words", "1000", "--bucket", "512")
    assert "| context positions | tokens read | seconds | tokens/s |" in out and "| 0-512 |" in out
    assert "After a restart, from the disk tier" in out and "llama.cpp taking the state" in out


def test_record_agent_sessions(tmp_path: Path) -> None:
    from .agents.clients import npm_bin

    npm_bin("codex")  # installed once (or this test skipped with the reason), before the script needs it
    out = run("record_agent_sessions.py", "--out", str(tmp_path))
    assert "codex.json.gz: 4 requests" in out and "claude-code.json.gz: 4 requests" in out
    import gzip
    import json

    claude = json.loads(gzip.decompress((tmp_path / "claude-code.json.gz").read_bytes()))
    assert claude["client"].startswith("@anthropic-ai/claude-code@") and claude["requests"][0]["body"]["tools"]


def test_replay_bench(tmp_path: Path) -> None:
    # The recorded sessions of benchmarks/data, read by a model that answers any prompt at once with one token
    # (SmolLM2 would read their 9,000-12,000 tokens for minutes).
    from .agents.scripted_model import TEMPLATE, build_model

    model = build_model(tmp_path / "replayer.gguf", [("<|replayed|>",)], TEMPLATE, otherwise="<|replayed|>")
    out = run("replay_bench.py", "--port", str(free_port()), "--model", str(model), "--threads", "1", "--sessions", "2",
              "--slots", "2", "--context", "16384", "--max-tokens", "4", "--baseline", str(ROOT),
              "--timeline", str(tmp_path / "t.json"), "--same-work")
    assert "2 sessions of codex (4 requests), claude-code (4 requests) on 2 slots" in out
    assert "the same work for both servers (function tools only)" in out
    for label in ("local-llm-api", f"local-llm-api at {ROOT.name}"):
        assert out.split(f"| {label} |")[1].split("\n")[0].rstrip().endswith("| 0 |")
    timeline = json.loads((tmp_path / "t.json").read_text())["local-llm-api"]
    assert sorted((user, request) for user, request, *_ in timeline) == [(u, r) for u in range(2) for r in range(4)]
    assert all(sent <= first <= end for _, _, sent, first, end, _, _ in timeline)
    assert all(0 <= cached < prompt for *_, prompt, cached in timeline)  # what each request read, as the server says


def test_attention_bench() -> None:
    out = run("attention_bench.py", "--model", str(bundled_model_path()), "--threads", "1", "--slots", "2",
              "--lengths", "8", "16")
    assert "| 16 |" in out and "- flash attention on: " in out and "- flash attention off: " in out
