"""The web playground end to end in headless Chromium (Debian's `chromium`, driven by Playwright): load the
page, send a message, watch the answer stream in, stop a generation and check that the server really
stopped it; with API keys, the page asks for one."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import MODEL, ROOT, Server, running_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is part of the dev extra")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


def engine(server: Server) -> dict:
    return httpx.get(f"{server.url}/health", timeout=10).json()["engines"][MODEL]


@pytest.mark.parametrize("path", ["/", "/ui"])
def test_the_playground_is_served(server: Server, path: str) -> None:
    response = httpx.get(server.url + path)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert "local-llm-api playground" in response.text


def test_chat_streams_and_stop_really_cancels(browser: Any, server: Server, tmp_path: Path) -> None:
    page = browser.new_page(viewport={"width": 1100, "height": 760})
    page.goto(server.url + "/")
    page.wait_for_selector(f"#model option[value='{MODEL}']", state="attached")
    page.fill("#system", "You are a concise assistant.")
    page.fill("#max-tokens", "24")
    page.fill("#prompt", "Name three colours.")
    page.click("#send")
    page.wait_for_selector(".msg.assistant .meta", timeout=60_000)  # shown when the stream ends
    answer = page.inner_text(".msg.assistant")
    assert "finish:" in answer and len(answer.split("finish:")[0].strip()) > 0
    if os.environ.get("PLAYGROUND_SCREENSHOT"):  # docs/playground.png is made this way
        page.screenshot(path=os.environ["PLAYGROUND_SCREENSHOT"])

    # A long answer: watch it grow (streamed, not in one piece at the end), then stop it.
    page.fill("#max-tokens", "1500")
    page.fill("#prompt", "Write a very long story about a dragon who learns to cook.")
    page.click("#send")
    bubble = page.locator(".msg.assistant").last
    lengths = []
    deadline = time.time() + 30
    while len(lengths) < 3 or lengths[-1] == lengths[0]:
        lengths.append(len(bubble.inner_text()))
        assert time.time() < deadline, "the answer did not stream"
        time.sleep(0.15)
    assert page.is_enabled("#stop")
    page.click("#stop")
    page.wait_for_selector("#status:has-text('Stopped.')")
    deadline = time.time() + 5
    while engine(server)["running"]:  # the sequence left the batch: the server stopped generating
        assert time.time() < deadline, "generation went on after Stop"
        time.sleep(0.1)
    generated = engine(server)["generated_tokens_total"]
    time.sleep(1)
    assert engine(server)["generated_tokens_total"] == generated
    assert page.is_enabled("#send") and not page.is_enabled("#stop")
    page.screenshot(path=str(tmp_path / "after-stop.png"))
    page.close()


def test_the_page_asks_for_a_key_when_the_server_needs_one(browser: Any, tmp_path: Path, model_dir: Path) -> None:
    with running_server(tmp_path, model_dir, API_KEY_REQUIRED="true", API_KEY="sk-playground") as server:
        page = browser.new_page()
        page.goto(server.url + "/ui")
        page.wait_for_selector("#key-hint:has-text('required')")
        page.fill("#api-key", "sk-playground")
        page.dispatch_event("#api-key", "change")
        page.wait_for_selector(f"#model option[value='{MODEL}']", state="attached")
        page.fill("#max-tokens", "4")
        page.fill("#prompt", "Hi")
        page.click("#send")
        page.wait_for_selector(".msg.assistant .meta", timeout=60_000)
        page.close()


def test_embeddings_tab(browser: Any, server: Server) -> None:
    page = browser.new_page()
    page.goto(server.url + "/")
    page.click("#tab-embeddings")
    page.wait_for_selector(f"#model option[value='{MODEL}']", state="attached")
    page.click("#embed")
    page.wait_for_selector("#embed-output:has-text('cosine similarity')")
    assert "576 dimensions" in page.inner_text("#embed-output")
    page.close()


def test_docs_screenshot_exists() -> None:
    assert (ROOT / "docs" / "playground.png").stat().st_size > 10_000
