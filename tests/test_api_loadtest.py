"""The API load test (benchmarks/api_loadtest.py) against the API on loopback, on the tiny model."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from benchmarks import api_loadtest
from bots import api
from bots.base_model import LoadedBase
from bots.gate import Gate, GateConfig
from bots.registry import VARIANTS, Runtime, set_runtime
from tests.tiny_model import save_tiny_adapter


@pytest.fixture()
def api_url(tiny_base: LoadedBase, tmp_path: Path) -> Iterator[str]:
    save_tiny_adapter(tmp_path / "ecommerce")  # medical-lora unavailable: it must be skipped
    runtime = Runtime.from_base(tiny_base, tmp_path)
    set_runtime(runtime)
    try:
        with api.running_server(api.ApiService(api.ApiConfig(), runtime=lambda: runtime)) as url:
            yield url
    finally:
        set_runtime(None)


def test_concurrent_clients_lose_and_mix_nothing(api_url: str) -> None:
    report = api_loadtest.run(api_url, clients=4, total_requests=2 * (len(VARIANTS) - 1), duration_s=60, max_tokens=12, timeout_s=60)
    text = api_loadtest.format_report(report)
    assert report.ok, text
    assert len(report.outcomes) == len(report.completed) == 2 * (len(VARIANTS) - 1) and not report.busy
    assert set(report.unavailable) == {"medical-lora", "ecommerce-hybrid", "medical-hybrid"}  # no adapter for them here
    assert {o.request.variant for o in report.outcomes} == set(VARIANTS) - set(report.unavailable)
    assert len({o.session for o in report.outcomes}) > 1
    # The replay check can fail: a reply that is not what the request gives alone is a mismatch.
    first = report.completed[0]
    tampered = [first, replace(first, reply=first.reply + " (from another client)")]
    assert len(api_loadtest.replay_mismatches(api_url, tampered, 12, 60, "")) == 1


def test_busy_answers_are_counted_apart(tiny_base: LoadedBase, tmp_path: Path) -> None:
    runtime = Runtime.from_base(tiny_base, tmp_path)
    gate = Gate(GateConfig(max_in_flight=1))
    with api.running_server(api.ApiService(api.ApiConfig(), runtime=lambda: runtime, gate=lambda: gate)) as url:
        someone = gate.admit()
        outcome = api_loadtest.chat_once(api_loadtest._client("", 30), url, api_loadtest.plan(["ecommerce-prompt"], 1)[0], 8, stream=True)
        gate.leave(someone)
    assert outcome.busy and outcome.reply is None and "429" in (outcome.error or "")


def test_command_line_serves_the_api_itself(tiny_base: LoadedBase, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    set_runtime(Runtime.from_base(tiny_base, tmp_path))
    try:
        assert api_loadtest.main(["--serve", "--clients", "3", "--requests", "6", "--max-tokens", "8"]) == 0
    finally:
        set_runtime(None)
    out = capsys.readouterr().out
    assert "clients: 3; requests planned 6, sent 6, completed 6, failed 0, busy 0, lost 0" in out and "OK: nothing lost, nothing mixed" in out
    assert api_loadtest.main(["--url", "http://10.1.2.3:8000/v1"]) == 2  # loopback only
