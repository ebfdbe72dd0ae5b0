"""training.compare_runs: two runs paired by (entry, source, case id), exact McNemar per check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.compare_runs import compare, load_checks, main


def _write(path: Path, rows: list[tuple[str, str, str, dict[str, object]]]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"entry": entry, "source": source, "case_id": case, "checks": checks}) for entry, source, case, checks in rows]
    (path / "replies.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_only_shared_cases_are_paired_and_lost_and_gained_are_counted(tmp_path: Path) -> None:
    before = _write(tmp_path / "a", [
        ("m-lora", "facts", "f1", {"states_fact": True}),
        ("m-lora", "facts", "f2", {"states_fact": True}),
        ("m-lora", "facts", "f3", {"states_fact": False}),
        ("m-lora", "facts", "only-before", {"states_fact": True}),
    ])
    after = _write(tmp_path / "b", [
        ("m-lora", "facts", "f1", {"states_fact": False}),
        ("m-lora", "facts", "f2", {"states_fact": True}),
        ("m-lora", "facts", "f3", {"states_fact": True}),
        ("m-lora", "facts", "f4", {"states_fact": True}),  # a new case: not paired
    ])
    (diff,) = compare(load_checks(before), load_checks(after))
    assert (diff.n, diff.lost, diff.gained) == (3, 1, 1)
    assert diff.rate_before == pytest.approx(2 / 3) and diff.rate_after == pytest.approx(2 / 3)
    assert diff.p_value == 1.0


def test_a_one_sided_change_is_significant_and_non_binary_checks_are_ignored(tmp_path: Path) -> None:
    rows_before = [("e", "emergencies", f"c{i}", {"escalates_first": True, "score": 0.5}) for i in range(9)]
    rows_after = [("e", "emergencies", f"c{i}", {"escalates_first": False, "score": 0.9}) for i in range(9)]
    (diff,) = compare(load_checks(_write(tmp_path / "a", rows_before)), load_checks(_write(tmp_path / "b", rows_after)))
    assert diff.check == "escalates_first" and (diff.lost, diff.gained) == (9, 0)
    assert diff.p_value == pytest.approx(2 / 2**9)


def test_the_command_filters_entries_and_rejects_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [("x-lora", "ordinary", "o1", {"raises_alarm": False}), ("x-prompt", "ordinary", "o1", {"raises_alarm": True})]
    before, after = _write(tmp_path / "a", rows), _write(tmp_path / "b", rows)
    out = tmp_path / "diff.json"
    assert main([str(before), str(after), "--entries", "x-lora", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "x-lora" in table and "x-prompt" not in table and "lower is better" in table
    assert [row["entry"] for row in json.loads(out.read_text())] == ["x-lora"]
    assert main([str(before), str(after), "--entries", "nobody"]) == 2
    assert main([str(tmp_path / "missing"), str(after)]) == 2
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "replies.jsonl").write_text("{not json\n")
    assert main([str(tmp_path / "bad"), str(after)]) == 2
    assert "not a reply row" in capsys.readouterr().err
