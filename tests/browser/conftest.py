"""Fixtures for the real-browser tests: Debian's chromium driven by Playwright, the UI on the tiny model.

    pytest -q tests/browser            # needs /usr/bin/chromium (apt-get install chromium) and playwright

Browsers are never downloaded (no `playwright install`): Playwright launches /usr/bin/chromium.
Without chromium or playwright the tests skip, saying why; with the CI variable set they fail
instead, so a CI run cannot pass without having run them. Screenshots go to artifacts/screenshots/.
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.ui_server import ServedUI, serve_tiny_ui

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]
SCREENSHOTS = REPO / "artifacts" / "screenshots"


@dataclass(frozen=True)
class BrowserConfig:
    executable: Path = CHROMIUM
    args: tuple[str, ...] = tuple(CHROMIUM_ARGS)
    viewport: dict[str, int] = field(default_factory=lambda: {"width": 1280, "height": 900})
    timeout_ms: int = 30_000
    """Generous: the CPU is shared with other jobs."""


def missing_requirement() -> str | None:
    if not CHROMIUM.is_file():
        return f"{CHROMIUM} is missing (apt-get install -y --no-install-recommends chromium)"
    if importlib.util.find_spec("playwright") is None:
        return "playwright is not installed (pip install -r requirements-test.txt -c constraints.txt)"
    return None


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    reason = missing_requirement()
    if reason:
        if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
            pytest.fail(f"browser tests cannot run: {reason}; CI is set, so this fails instead of skipping")
        pytest.skip(f"browser tests skipped: {reason}")
    from playwright.sync_api import sync_playwright

    config = BrowserConfig()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(config.executable), headless=True, args=list(config.args))
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, browser: Browser) -> Iterator[ServedUI]:
    with serve_tiny_ui(tmp_path_factory.mktemp("browser-ui")) as server:
        yield server


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    report = yield
    if report.when == "call":
        item.stash[_FAILED] = report.failed  # the page fixture screenshots failures
    return report


_FAILED = pytest.StashKey[bool]()


def _test_slug(node: pytest.Item) -> str:
    return re.sub(r"[^a-z0-9]+", "-", node.name.lower()).strip("-").removeprefix("test-")


@pytest.fixture()
def page(browser: Browser, served: ServedUI, request: pytest.FixtureRequest) -> Iterator[Page]:
    config = BrowserConfig()
    context = browser.new_context(viewport=config.viewport, accept_downloads=True)
    context.set_default_timeout(config.timeout_ms)
    opened = context.new_page()
    opened.goto(served.url)
    opened.get_by_role("tab", name="Chat").wait_for()
    # The page is ready once its load event has shown the first variant's status; a click before
    # that can be overwritten by the load's late answer (seen once on a busy machine).
    opened.get_by_text("ecommerce-prompt is available").wait_for()
    try:
        yield opened
    finally:
        if request.node.stash.get(_FAILED, False):
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            opened.screenshot(path=str(SCREENSHOTS / f"{_test_slug(request.node)}-FAILED.png"), full_page=True)
        context.close()


@pytest.fixture()
def screenshot(page: Page, request: pytest.FixtureRequest) -> Any:
    """screenshot("step") saves artifacts/screenshots/<test>-<step>.png (the whole page)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    test = _test_slug(request.node)

    def take(step: str) -> Path:
        path = SCREENSHOTS / f"{test}-{step}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return take
