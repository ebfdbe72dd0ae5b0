"""The page in a real browser, on the tiny model: chat, side by side, arena + leaderboard, prompt lab, report.

    pytest -q tests/browser        # screenshots in artifacts/screenshots/
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from bots.registry import VARIANTS
from tests.ui_server import ServedUI

if TYPE_CHECKING:
    from playwright.sync_api import Locator, Page


def open_tab(page: Page, name: str) -> None:
    page.get_by_role("tab", name=name, exact=True).click()


def set_max_new_tokens(page: Page, tab: str, value: int = 16) -> None:
    """The tiny model's byte-level tokenizer makes the prompt template long: keep replies short to fit its context."""
    settings = page.locator(f"#{tab}-settings")
    settings.get_by_text("Generation settings").click()
    number = settings.get_by_label("number input for Max new tokens")
    number.wait_for(state="visible")
    check = f"() => document.querySelector('#{tab}-settings input[type=range]').value === '{value}'"
    # The accordion may still be opening when the first fill lands; try again, then insist.
    for _ in range(3):
        number.fill(str(value))
        number.press("Tab")
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        try:
            page.wait_for_function(check, timeout=5_000)
            return
        except PlaywrightTimeout:
            continue
    page.wait_for_function(check)


def watch_growth(text: Locator, done: Locator, timeout_s: float = 60.0) -> list[int]:
    """The lengths ``text`` goes through until ``done`` appears (polled every 20 ms)."""
    seen: list[int] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        finished = done.count() > 0
        length = len(text.inner_text()) if text.count() else 0
        if not seen or seen[-1] != length:
            seen.append(length)
        if finished:
            return seen
        time.sleep(0.02)
    raise AssertionError(f"not done after {timeout_s} s; lengths seen: {seen}")


def test_chat_switches_variants_and_streams_a_reply(page: Page, screenshot) -> None:
    page.get_by_label("LoRA adapter", exact=True).check()
    page.get_by_text("ecommerce-lora is available").wait_for()
    box = page.get_by_placeholder("Ask something…")
    box.fill("hello")
    box.press("Enter")
    page.get_by_text("generating…").wait_for()
    lengths = watch_growth(page.locator('[data-testid="bot"]').last, page.get_by_text("ecommerce-lora: "))
    screenshot("streamed")
    assert len([n for n in lengths if n > 0]) >= 3, f"the reply did not stream in pieces: {lengths}"
    assert page.locator('[data-testid="user"]').last.inner_text().strip() == "hello"
    # Another variant: the medical LoRA adapter is missing in the test set-up, and the page says so.
    page.get_by_label("medical", exact=True).check()
    page.get_by_text("unavailable", exact=False).first.wait_for()
    assert page.locator('[data-testid="bot"]').count() == 0  # switching variants starts a new conversation
    screenshot("medical-lora-unavailable")


def test_side_by_side_streams_both_panes_with_timings(page: Page, screenshot) -> None:
    open_tab(page, "Side by side")
    set_max_new_tokens(page, "compare")
    page.locator("#compare-message textarea").fill("hello")
    page.locator("#compare-send").click()
    lora_stats, prompt_stats = page.locator("#compare-stats-ecommerce-lora"), page.locator("#compare-stats-ecommerce-prompt")
    for stats in (lora_stats, prompt_stats):
        stats.get_by_text("tok/s").wait_for()
        assert "first token" in stats.inner_text() and "tokens" in stats.inner_text()
    for name in ("ecommerce-lora", "ecommerce-prompt"):
        assert page.locator(f'#compare-chat-{name} [data-testid="user"]').inner_text().strip() == "hello"
    assert page.locator('#compare-chat-ecommerce-lora [data-testid="bot"]').inner_text().strip()
    assert not page.locator("#compare-chat-medical-prompt").is_visible()
    screenshot("ecommerce")

    # All variants: the medical panes appear; medical-lora reports that it is unavailable.
    page.get_by_label("All variants").check()
    page.locator("#compare-chat-medical-prompt").wait_for(state="visible")
    box = page.locator("#compare-message textarea")
    # The scope change re-renders the panes and may clear the box after a fast fill: fill until it holds.
    for _ in range(20):
        box.fill("thanks")
        page.wait_for_timeout(250)
        if box.input_value() == "thanks":
            break
    page.locator("#compare-send").click()
    # Every method of both domains, one pane after the other on the tiny model: give the last ones time.
    page.locator("#compare-stats-medical-prompt").get_by_text("tok/s").wait_for(timeout=120_000)
    assert "unavailable" in page.locator("#compare-stats-medical-lora").inner_text()
    assert page.locator('#compare-chat-ecommerce-lora [data-testid="user"]').count() == 2  # its own history
    assert page.locator('#compare-chat-medical-prompt [data-testid="user"]').count() == 1
    screenshot("all-variants")
    page.locator("#compare-clear").click()
    page.wait_for_function("() => document.querySelectorAll('#compare-chat-ecommerce-lora [data-testid=\"user\"]').length === 0")


def test_arena_vote_reveals_names_and_moves_the_leaderboard(page: Page, served: ServedUI, screenshot) -> None:
    open_tab(page, "Arena")
    set_max_new_tokens(page, "arena")
    board = page.locator("#leaderboard-ecommerce")
    board.get_by_text("ecommerce-lora").wait_for()
    before = board.inner_text()
    page.locator("#arena-message textarea").fill("Do you ship to Canada?")
    page.locator("#arena-send").click()
    page.locator("#arena-status").get_by_text("which one is better").wait_for()
    assert page.locator("#arena-reveal").inner_text().strip() == ""  # names stay hidden until the vote
    assert "ecommerce-" not in page.locator("#arena-chat-a").inner_text() + page.locator("#arena-chat-b").inner_text()
    screenshot("before-vote")
    page.locator("#arena-vote-a").click()
    reveal = page.locator("#arena-reveal")
    reveal.get_by_text("Model A").wait_for()
    shown = reveal.inner_text()
    assert sum(f"was {name}" in shown for name in VARIANTS if name.startswith("ecommerce-")) == 2
    page.wait_for_function(
        "before => document.querySelector('#leaderboard-ecommerce').innerText !== before", arg=before
    )
    after = board.inner_text()
    assert "100%" in after and "100%" not in before
    screenshot("after-vote")
    # The export holds the vote.
    with page.expect_download() as download:
        page.locator("#arena-export-jsonl").click()
    assert "Do you ship to Canada?" in download.value.path().read_text(encoding="utf-8")


def test_prompt_lab_edit_shows_a_diff_and_reset_restores_the_template(page: Page, screenshot) -> None:
    open_tab(page, "Prompt lab")
    system_prompt = page.locator("#lab-system-prompt textarea")
    system_prompt.wait_for()
    set_max_new_tokens(page, "lab")
    shipped = system_prompt.input_value()
    system_prompt.fill(shipped + " Always answer in one sentence.")
    diff = page.locator("#lab-diff")
    diff.get_by_text("+  Always answer in one sentence.").wait_for()
    assert "Using your edit" in page.locator("#lab-status").inner_text()
    page.locator("#lab-message textarea").fill("hello")
    page.locator("#lab-send").click()
    page.locator("#lab-chat-status").get_by_text("with your edit").wait_for()
    page.locator("#lab-chat-status").get_by_text("tok/s").wait_for()
    screenshot("edited")
    page.locator("#lab-reset").click()
    diff.get_by_text("no changes").wait_for()
    assert system_prompt.input_value() == shipped
    screenshot("reset")


def test_report_tab_opens(page: Page, screenshot) -> None:
    open_tab(page, "Report")
    panel = page.get_by_role("tabpanel")
    panel.wait_for()
    assert panel.inner_text().strip()
    screenshot("report")


def test_html_and_script_in_messages_show_as_text_and_never_run(page: Page, screenshot) -> None:
    page.get_by_label("LoRA adapter", exact=True).check()
    page.get_by_text("ecommerce-lora is available").wait_for()
    hostile = '<b>bold</b> <img src=x onerror="window.__pwned=1"> <script>window.__pwned=2</script> **stars**'
    box = page.get_by_placeholder("Ask something…")
    box.fill(hostile)
    box.press("Enter")
    page.get_by_text("ecommerce-lora: ").wait_for()
    screenshot("hostile-message")
    shown = page.locator('[data-testid="user"]').last.inner_text()
    assert page.evaluate("window.__pwned") is None
    assert page.locator('[data-testid="user"] img').count() == 0
    assert "<b>bold</b>" in shown and "<script>" in shown, shown
