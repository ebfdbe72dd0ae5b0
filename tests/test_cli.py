"""The `python -m bots` CLI on the tiny model: list, ask and the batch round trip."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from bots import cli
from bots.base_model import LoadedBase
from bots.registry import Runtime, set_runtime
from tests.tiny_model import save_tiny_adapter


@pytest.fixture()
def tiny_runtime(tiny_base: LoadedBase, tmp_path: Path) -> Iterator[Runtime]:
    save_tiny_adapter(tmp_path / "adapters" / "ecommerce")
    runtime = Runtime.from_base(tiny_base, tmp_path / "adapters")
    set_runtime(runtime)
    yield runtime
    set_runtime(None)


def test_list_shows_every_variant_and_why_one_is_unavailable(tiny_runtime: Runtime) -> None:
    out = io.StringIO()
    assert cli.main(["list"], out=out) == 0
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("base model: tiny-llama")
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(rows) == {"ecommerce-lora", "ecommerce-prompt", "medical-lora", "medical-prompt"}
    assert rows["ecommerce-lora"].endswith("available")
    assert "unavailable: adapter folder" in rows["medical-lora"]


def test_ask_streams_the_reply(tiny_runtime: Runtime) -> None:
    out = io.StringIO()
    assert cli.main(["ask", "--variant", "ecommerce-lora", "--max-new-tokens", "6", "hello"], out=out) == 0
    expected = tiny_runtime.bots["ecommerce-lora"].reply([{"role": "user", "content": "hello"}], cli.settings_from(cli.make_parser().parse_args(["ask", "--variant", "ecommerce-lora", "--max-new-tokens", "6", "x"])))
    assert out.getvalue() == expected.text + "\n"


def test_batch_round_trip_keeps_ids_and_reports_stats(tiny_runtime: Runtime, tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    records = [
        {"id": "a", "messages": [{"role": "user", "content": "What is the return window?"}]},
        {"id": 7, "messages": [{"role": "system", "content": "ignored"}, {"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "thanks"}]},
    ]
    source.write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    target = tmp_path / "out" / "replies.jsonl"
    args = ["batch", "--variant", "medical-prompt", "--input", str(source), "--output", str(target), "--max-new-tokens", "8"]
    assert cli.main(args) == 0
    first = [json.loads(line) for line in target.read_text().splitlines()]
    assert [row["id"] for row in first] == ["a", 7]
    for row in first:
        assert {"reply", "latency_s", "ttft_s", "new_tokens"} <= set(row)
        assert 1 <= row["new_tokens"] <= 8 and row["latency_s"] >= row["ttft_s"] > 0
    assert cli.main(args) == 0  # greedy by default: a second run gives the same replies
    second = [json.loads(line) for line in target.read_text().splitlines()]
    assert [r["reply"] for r in second] == [r["reply"] for r in first]


def test_batch_refuses_a_malformed_file_naming_the_line(tiny_runtime: Runtime, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"id": 1, "messages": [{"role": "user", "content": "hi"}]}\n{not json\n')
    target = tmp_path / "out.jsonl"
    assert cli.main(["batch", "--variant", "medical-prompt", "--input", str(source), "--output", str(target)]) == cli.EXIT_USAGE
    assert "in.jsonl:2: not valid JSON" in capsys.readouterr().err
    assert not target.exists()  # nothing half-written


def test_batch_reports_bad_lines_and_keeps_going(tiny_runtime: Runtime, tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"id": "empty", "messages": [{"role": "user", "content": "  "}]}\n{"id": "ok", "messages": [{"role": "user", "content": "hi"}]}\n')
    target = tmp_path / "out.jsonl"
    assert cli.main(["batch", "--variant", "ecommerce-prompt", "--input", str(source), "--output", str(target), "--max-new-tokens", "4"]) == 1
    rows = [json.loads(line) for line in target.read_text().splitlines()]
    assert "empty" in rows[0]["error"] and "reply" in rows[1]


def test_unavailable_variant_and_bad_settings_are_clear_errors(tiny_runtime: Runtime, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["ask", "--variant", "medical-lora", "hi"]) == cli.EXIT_USAGE
    assert "medical-lora is unavailable" in capsys.readouterr().err
    assert cli.main(["ask", "--variant", "medical-prompt", "--temperature", "-1", "hi"]) == cli.EXIT_USAGE
    assert "temperature" in capsys.readouterr().err
