"""The real agent clients, installed once into a cache folder, and run the way the recipes of docs/clients.md say.

Codex CLI, Claude Code and opencode come from npm (pinned versions), aider from PyPI into a virtual environment
of its own. An install that cannot reach its registry skips the tests that need it, with the reason. Each run
gets a home of its own (config, sessions) so that nothing of the user's is read or written; the recipes' lines
are taken from docs/clients.md (`recipe`) and only the address and the model are put in.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from ..models import CACHE

ROOT = Path(__file__).resolve().parents[2]
AGENTS = CACHE.parent / "agents"
NPM_PACKAGES = {"codex": "@openai/codex@0.171.0", "claude": "@anthropic-ai/claude-code@2.1.332", "opencode": "opencode-ai@1.18.33"}
AIDER = "aider-chat==0.86.2"
README_URL, README_MODEL = "http://localhost:8000", "SmolLM2"
TIMEOUT = 300  # seconds a client may take for one prompt


def _skip(why: str) -> None:
    pytest.skip(f"{why} (the agent tests install their clients from npm / PyPI into {AGENTS})")


def npm_bin(name: str) -> Path:
    """The client's executable, installed on first use (the three npm clients together, ~1.2 GB, under a minute)."""
    versions = "_".join(sorted(NPM_PACKAGES.values())).replace("@", "").replace("/", "-")
    prefix = AGENTS / "npm" / re.sub(r"[^A-Za-z0-9._-]", "-", versions)[:120]
    if not (prefix / ".complete").exists():
        npm = shutil.which("npm")
        if npm is None:
            _skip("npm is not installed")
        shutil.rmtree(prefix, ignore_errors=True)
        prefix.mkdir(parents=True)
        try:
            subprocess.run([npm, "install", "--no-audit", "--no-fund", "--prefix", str(prefix), *NPM_PACKAGES.values()],
                           check=True, capture_output=True, timeout=900)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            _skip(f"npm could not install the clients: {getattr(exc, 'stderr', b'')[-500:]!r}")
        (prefix / ".complete").touch()
    return prefix / "node_modules" / ".bin" / name


def aider_bin() -> Path:
    venv = AGENTS / f"aider-{AIDER.split('==')[1]}"
    if not (venv / ".complete").exists():
        shutil.rmtree(venv, ignore_errors=True)
        try:
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
            subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", AIDER], check=True,
                           capture_output=True, timeout=900)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            _skip(f"pip could not install {AIDER}: {getattr(exc, 'stderr', b'')[-500:]!r}")
        (venv / ".complete").touch()
    return venv / "bin" / "aider"


# ---------------------------------------------------------------- the recipes of docs/clients.md


def recipe(name: str, readme: Path = ROOT / "docs" / "clients.md") -> str:
    """The code block that follows `<!-- recipe: NAME -->` on the clients page (docs/clients.md)."""
    text = readme.read_text(encoding="utf-8")
    found = re.search(rf"<!-- recipe: {re.escape(name)} -->.*?```\w*\n(.*?)```", text, re.S)
    assert found, f"{readme.name} has no recipe '{name}'"
    return found.group(1)


def filled(text: str, url: str, model: str) -> str:
    """A recipe with the test's server address and model in place of the page's."""
    return text.replace(README_URL, url).replace(README_MODEL, model)


def exported(text: str) -> dict[str, str]:
    """`export NAME=value` lines of a shell recipe."""
    return dict(re.findall(r"^export (\w+)=(\S+)", text, re.M))


@dataclass
class Run:
    """One client command: its output and exit status."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return f"$ {' '.join(self.args)}\nexit {self.returncode}\n--- stdout\n{self.stdout[-4000:]}\n--- stderr\n{self.stderr[-4000:]}"


class Client:
    """A client with a home of its own, pointed at `url` for `model`; `ask` runs one prompt in `workdir`."""

    name = ""

    def __init__(self, home: Path, workdir: Path, url: str, model: str) -> None:
        self.home, self.workdir, self.url, self.model = home, workdir, url, model
        home.mkdir(parents=True, exist_ok=True)
        workdir.mkdir(parents=True, exist_ok=True)

    def env(self) -> dict[str, str]:
        keep = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TERM", "TMPDIR")}
        return {**keep, "HOME": str(self.home), "NO_COLOR": "1"}

    def command(self, prompt: str, *, again: bool) -> list[str]:
        raise NotImplementedError

    def ask(self, prompt: str, *, again: bool = False) -> Run:
        """One prompt; `again`: in the session of the previous prompt (the client's own way to go on)."""
        args = self.command(prompt, again=again)
        done = subprocess.run(args, cwd=self.workdir, env=self.env(), stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=TIMEOUT)
        return Run(args, done.returncode, done.stdout, done.stderr)


class Codex(Client):
    name = "codex"

    def __init__(self, *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        config = filled(recipe("codex"), self.url, self.model)
        (self.home / "codex").mkdir(exist_ok=True)
        (self.home / "codex" / "config.toml").write_text(config)

    def env(self) -> dict[str, str]:
        return {**super().env(), "CODEX_HOME": str(self.home / "codex")}

    def command(self, prompt: str, *, again: bool) -> list[str]:
        resume = ["resume", "--last"] if again else []
        return [str(npm_bin("codex")), "exec", *resume, "--skip-git-repo-check", prompt]


class ClaudeCode(Client):
    name = "claude"

    def env(self) -> dict[str, str]:
        recipe_env = exported(filled(recipe("claude-code"), self.url, self.model))
        # Beside the recipe: no telemetry, update checks or other calls to Anthropic from a test.
        quiet = {"CLAUDE_CONFIG_DIR": str(self.home / "claude"), "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
                 "DISABLE_AUTOUPDATER": "1", "DISABLE_TELEMETRY": "1"}
        return {**super().env(), **recipe_env, **quiet}

    def command(self, prompt: str, *, again: bool) -> list[str]:
        return [str(npm_bin("claude")), "-p", *(["--continue"] if again else []), prompt, "--output-format", "json"]


class OpenCode(Client):
    name = "opencode"

    def __init__(self, *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        config = filled(recipe("opencode"), self.url, self.model)
        json.loads(config)  # the recipe is valid JSON
        (self.home / "opencode.json").write_text(config)

    def env(self) -> dict[str, str]:
        # Its config outside the working folder's parents; its package cache (it fetches the provider's npm
        # package on first use) shared between runs.
        return {**super().env(), "OPENCODE_CONFIG": str(self.home / "opencode.json"),
                "XDG_CACHE_HOME": str(AGENTS / "opencode-cache")}

    def command(self, prompt: str, *, again: bool) -> list[str]:
        return [str(npm_bin("opencode")), "run", *(["--continue"] if again else []), prompt]


class Aider(Client):
    name = "aider"

    def env(self) -> dict[str, str]:
        return {**super().env(), **exported(filled(recipe("aider"), self.url, self.model))}

    def command(self, prompt: str, *, again: bool) -> list[str]:
        line = next(line for line in filled(recipe("aider"), self.url, self.model).splitlines() if line.startswith("aider "))
        args = shlex.split(line)
        args[0] = str(aider_bin())
        args[args.index("--message") + 1] = prompt
        # Beside the recipe: no git, no questions, no version check or analytics from a test; `again` reads the
        # chat so far from its history file, as aider's own option does.
        quiet = ["--no-git", "--yes-always", "--no-check-update", "--no-show-release-notes", "--no-analytics",
                 "--no-show-model-warnings", "--no-pretty"]
        return [*args, *quiet, *(["--restore-chat-history"] if again else [])]
