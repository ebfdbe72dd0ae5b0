"""The load test (benchmarks/loadtest.py) against the UI served on loopback, on the tiny model."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from benchmarks import loadtest
from bots.base_model import LoadedBase
from bots.registry import VARIANTS, Runtime, set_runtime
from tests.tiny_model import save_tiny_adapter


@pytest.fixture()
def tiny_runtime(tiny_base: LoadedBase, tmp_path: Path) -> Iterator[Runtime]:
    # Only the ecommerce adapter: medical-lora is unavailable and must be skipped.
    save_tiny_adapter(tmp_path / "ecommerce")
    runtime = Runtime.from_base(tiny_base, tmp_path)
    set_runtime(runtime)
    try:
        yield runtime
    finally:
        set_runtime(None)


def test_concurrent_sessions_lose_and_mix_nothing(tiny_runtime: Runtime) -> None:
    with loadtest.serve_ui() as url:
        available = {name for name, bot in tiny_runtime.bots.items() if bot.availability.ok}
        report = loadtest.run(url, sessions=4, total_requests=len(available), duration_s=60, max_new_tokens=16, timeout_s=60)
        assert report.ok, loadtest.format_report(report)
        assert len(report.outcomes) == len(report.completed) == len(available)
        assert not report.failed and not report.lost and not report.mismatches
        assert set(report.unavailable) == set(VARIANTS) - available == {"medical-lora", "ecommerce-hybrid", "medical-hybrid"}
        assert {o.request.variant for o in report.outcomes} == available  # the requests cycle through every available variant
        assert len({o.session for o in report.outcomes}) > 1  # really concurrent sessions
        assert 0 < report.latency(0.5) <= report.latency(0.95)
        # The replay check can fail: a reply that is not what the request gives alone is a mismatch.
        first = report.completed[0]
        tampered = [first, replace(first, reply=first.reply + " (from another session)")]
        assert len(loadtest.replay_mismatches(url, tampered, 16, 60)) == 1
        # --variants narrows the mix: only the named variants are probed, unavailable ones still skipped.
        chosen, skipped = loadtest.probe_variants(url, 16, 60, ["medical-lora", "ecommerce-lora"])
        assert chosen == ["ecommerce-lora"] and list(skipped) == ["medical-lora"]
        lost = replace(first, reply=None, lost=True, error="no answer")
        report.outcomes.append(lost)
        assert not report.ok and "LOST" in loadtest.format_report(report)


def test_the_sweep_serves_the_ui_in_its_own_process_and_reports_every_level(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json
    import sys

    figures = tmp_path / "load.json"
    command = f"{sys.executable} -m tests.ui_child"
    status = loadtest.main(["--serve", "--serve-command", command, "--sessions", "1,3", "--per-session", "1", "--max-new-tokens", "16", "--json", str(figures)])
    out, err = capsys.readouterr()
    assert status == 0, out + err
    rows = json.loads(figures.read_text())["levels"]
    assert len(json.loads(figures.read_text())["variants"]) == 8
    assert [row["sessions"] for row in rows] == [1, 3]
    # Each level sends whole cycles of the mix: the 8 available variants of the tiny UI (no medical adapters), 6 questions each.
    assert [row["sent"] for row in rows] == [row["completed"] for row in rows] == [48, 48]
    assert rows[0]["ratio_to_first_level"] == 1.0 and rows[1]["ratio_to_first_level"] > 0
    assert all(row["busy"] == row["lost"] == row["failed"] == 0 and 0 < row["p50_s"] <= row["p95_s"] for row in rows)
    assert "vs 1st" in out and "48 distinct requests re-run alone, 0 mismatch(es)" in out and "OK: nothing lost, nothing mixed" in out


def test_a_server_that_dies_at_start_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    import sys

    command = f"{sys.executable} -c 'import sys; print(\"no model here\"); sys.exit(3)'"
    assert loadtest.main(["--serve", "--serve-command", command, "--sessions", "1"]) == 2
    err = capsys.readouterr().err
    assert "ended with status 3 before answering" in err and "no model here" in err


def test_levels_are_distinct_positive_numbers() -> None:
    assert loadtest.parse_levels("1,4,16,64") == [1, 4, 16, 64]
    for bad in ("", "0,4", "4,4", "one"):
        with pytest.raises(ValueError, match="--sessions"):
            loadtest.parse_levels(bad)
    assert loadtest.level_requests(["ecommerce-prompt", "medical-prompt"], sessions=4, per_session=4) == 24  # 16 rounded up to 2 cycles of 12 (6 questions a domain)
    assert loadtest.level_requests(["ecommerce-prompt", "medical-prompt"], sessions=1, per_session=1) == 12


def test_the_mix_can_be_the_headline_variants_or_a_list() -> None:
    from bots.registry import HEADLINE_VARIANTS

    assert loadtest.parse_variants("all") == list(VARIANTS)
    assert loadtest.parse_variants("headline") == list(HEADLINE_VARIANTS) and len(HEADLINE_VARIANTS) == 4
    assert loadtest.parse_variants("medical-prompt, ecommerce-lora") == ["medical-prompt", "ecommerce-lora"]
    for bad in ("", "ecommerce-nothing", "medical-prompt,medical-prompt"):
        with pytest.raises(ValueError, match="--variants"):
            loadtest.parse_variants(bad)
    with pytest.raises(SystemExit) as exited:  # a bad mix is a usage error before anything is sent
        loadtest.main(["--url", "http://127.0.0.1:7860/", "--variants", "ecommerce-nothing"])
    assert exited.value.code == 2


def test_only_loopback_targets_are_accepted() -> None:
    loadtest.require_loopback("http://127.0.0.1:7860/")
    loadtest.require_loopback("http://localhost:7860/")
    with pytest.raises(ValueError, match="loopback"):
        loadtest.require_loopback("http://8.8.8.8:7860/")
    assert loadtest.main(["--url", "http://10.1.2.3:7860/", "--sessions", "1"]) == 2


def test_plan_cycles_variants_and_questions() -> None:
    requests = loadtest.plan(["ecommerce-prompt", "medical-prompt"], 6)
    assert [r.variant for r in requests] == ["ecommerce-prompt", "medical-prompt"] * 3
    assert all(r.domain == VARIANTS[r.variant].domain and r.method == VARIANTS[r.variant].method for r in requests)
    assert len({r.message for r in requests if r.variant == "ecommerce-prompt"}) == 3  # different questions


def test_latency_quantiles_use_completed_requests_only() -> None:
    request = loadtest.ChatRequest("ecommerce-prompt", "ecommerce", "prompt", "hi")
    report = loadtest.LoadReport(sessions=1, planned=5)
    report.outcomes = [loadtest.Outcome(request, 0, latency_s=float(s), reply="x") for s in (1, 2, 3, 4)]
    report.outcomes.append(loadtest.Outcome(request, 0, latency_s=99.0, error="busy: Queue is full!", busy=True))
    assert (report.latency(0.5), report.latency(0.95)) == (2.0, 4.0)
    assert len(report.busy) == 1 and not report.failed and report.ok  # busy is counted apart, not a failure


def test_busy_requests_are_counted_apart_from_failures(tiny_runtime: Runtime) -> None:
    from tests.gates import small_gate
    from webui.admission import is_busy

    request = loadtest.ChatRequest("ecommerce-prompt", "ecommerce", "prompt", "hi")
    with loadtest.serve_ui() as url, small_gate(max_in_flight=1) as gate:
        client = loadtest._client(url)
        someone = gate.admit()  # the UI is full
        busy = loadtest.chat_once(client, request, 16, timeout_s=30)
        gate.leave(someone)
        done = loadtest.chat_once(client, request, 16, timeout_s=30)
    assert busy.busy and not busy.lost and busy.reply is None and is_busy(busy.error or "") and busy.latency_s < 5
    assert done.reply is not None and not done.busy
    failed = loadtest.Outcome(request, 0, error="AppError: boom")
    report = loadtest.LoadReport(sessions=1, planned=3, outcomes=[done, busy, failed], wall_s=1.0)
    assert report.busy == [busy] and report.failed == [failed] and report.completed == [done]
    text = loadtest.format_report(report)
    assert "sent 3, completed 1, failed 1, busy 1, lost 0" in text and "BUSY: 1 request(s)" in text and "FAILED: " in text
    report.outcomes.remove(failed)
    assert report.ok and "OK: nothing lost" in loadtest.format_report(report)
