"""The fact-drift test's data and runner, on the tiny model. Run: ``python -m pytest tests/test_fact_drift.py``."""

from __future__ import annotations

from pathlib import Path

import pytest

from bots.base_model import LoadedBase
from bots.registry import Runtime
from prompts import load_prompt_spec
from training.fact_drift import DriftFileError, affected_cases, drifted_prompt, format_summary, load_changes, run_drift


def test_every_change_edits_the_prompt_file_and_affects_probes() -> None:
    changes = load_changes("ecommerce")
    spec = load_prompt_spec("ecommerce")
    drifted = drifted_prompt(spec, changes)
    text = drifted.system_message() + " ".join(shot.assistant for shot in drifted.few_shot)
    for change in changes:
        assert change.find in spec.system_message() and change.find not in text and change.replace in text
    cases = affected_cases("ecommerce", changes, None)
    assert {case.change.name for case in cases} == {change.name for change in changes}
    assert all(case.probe_id.startswith("fact-") for case in cases)


def test_run_reports_every_variant_of_the_domain_with_paired_cases(tiny_base: LoadedBase, tmp_path: Path) -> None:
    runtime = Runtime.from_base(tiny_base, tmp_path / "no-adapters")
    changes = load_changes("ecommerce")
    cases = affected_cases("ecommerce", changes, None)[:2]
    result = run_drift(runtime, "ecommerce", changes, cases, max_new_tokens=4)
    assert set(result["variants"]) == {"ecommerce-prompt", "ecommerce-base", "ecommerce-static"}  # the adapters are missing here
    for row in result["variants"].values():
        assert row["new_value"]["n"] == len(cases) == len(row["replies"])
        assert row["new_value"]["ci_low"] <= row["new_value"]["value"] <= row["new_value"]["ci_high"]
    assert "affected probes" in format_summary(result)


def test_medical_drift_edits_every_prompt_and_affects_every_emergency_probe_of_the_split() -> None:
    changes = load_changes("medical")
    spec = load_prompt_spec("medical")
    drifted = drifted_prompt(spec, changes)
    assert "911" in spec.system_message() and "911" not in drifted.system_message() and "112" in drifted.system_message()
    cases = affected_cases("medical", changes, "test")
    assert cases and all(case.probe_id.startswith("emg-") for case in cases)
    assert all(case.old_expected == ("\\b911\\b",) for case in cases)


def test_a_change_of_an_unknown_source_is_refused(tmp_path: Path) -> None:
    (tmp_path / "ecommerce.yaml").write_text(
        "changes:\n  - {name: x, source: nowhere, topics: ['*'], old_value: a, find: a, replace: b, expected: [b]}\n"
    )
    with pytest.raises(DriftFileError, match="source must be one of"):
        load_changes("ecommerce", tmp_path)


def test_drift_also_edits_the_prompt_methods_example_pool() -> None:
    changes = load_changes("medical")
    spec = load_prompt_spec("medical")
    drifted = drifted_prompt(spec, changes)
    assert any("911" in shot.assistant for shot in spec.retrieval.example_pool)
    assert not any("911" in shot.assistant for shot in drifted.retrieval.example_pool)
    assert [f.keywords for f in drifted.fact_sheet] == [f.keywords for f in spec.fact_sheet]  # retrieval still finds the facts
