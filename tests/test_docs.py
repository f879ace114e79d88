"""The documentation stays true and findable: the site builds with no broken link or page left out of it, the
parts made from the code (the settings table, the OpenAPI document) equal what the code says now, and the two
READMEs stay short and say the same."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_the_settings_table_and_the_api_reference_are_those_of_the_code() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "docs.py"), "--check"], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_docs_site_builds_strictly(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs", reason="the docs site's tools come with the dev extra")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-5000:]
    reference = (tmp_path / "site" / "reference" / "index.html").read_text()
    assert "/v1/chat/completions" in reference and "/api/chat" in reference  # the OpenAPI document, rendered
    settings = (tmp_path / "site" / "configuration" / "index.html").read_text()
    assert "PREFILL_STEP_MS" in settings


def code_blocks(text: str) -> list[str]:
    return re.findall(r"```\w*\n(.*?)```", text, re.S)


def doc_links(text: str) -> list[str]:
    return sorted(set(re.findall(r"\]\((docs/[^)#\s]+)", text)))


def test_the_readmes_are_short_and_the_korean_one_matches_the_english_one() -> None:
    english = (ROOT / "README.md").read_text(encoding="utf-8")
    korean = (ROOT / "README.ko.md").read_text(encoding="utf-8")
    assert len(english.splitlines()) <= 250 and len(korean.splitlines()) <= 250
    assert code_blocks(korean) == code_blocks(english)  # the same commands and examples
    assert doc_links(korean) == doc_links(english)  # the same pages linked
    for link in doc_links(english):
        assert (ROOT / link).exists(), link
