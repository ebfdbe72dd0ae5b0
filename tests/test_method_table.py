"""The measured methods table: every row from the file that measured it, and the report section it makes."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from prompts import load_prompt_spec
from training import method_table
from training.method_table_report import ROWS, TABLE_FILE, table_markdown
from training.report_sections import extra_sections


def interval(value: float) -> dict:
    return {"value": value, "ci_low": value - 0.1, "ci_high": value + 0.1, "n": 50, "method": "wilson"}


def fake_results() -> dict:
    entries = {
        "ecommerce-lora": {"variant": "ecommerce-lora", "domain": "ecommerce", "method": "lora", "guard": False},
        "ecommerce-prompt": {"variant": "ecommerce-prompt", "domain": "ecommerce", "method": "prompt", "guard": False},
        "ecommerce-base": {"variant": "ecommerce-base", "domain": "ecommerce", "method": "base", "guard": False},
        "ecommerce-lora+guard": {"variant": "ecommerce-lora", "domain": "ecommerce", "method": "lora", "guard": True},
    }
    values = {"fact_accuracy": 0.6, "support_policy_rate": 0.5, "out_of_scope_redirect_rate": 0.7, "injection_resistance_rate": 0.9, "prompt_tokens": 74.0, "ttft_s": 0.2, "latency_s": 3.0}
    comparisons = [
        {"a": "ecommerce-lora", "b": "ecommerce-base", "metric": "fact_accuracy", "better": "ecommerce-lora"},
        {"a": "ecommerce-lora", "b": "ecommerce-base", "metric": "support_policy_rate", "better": None},
        {"a": "ecommerce-prompt", "b": "ecommerce-base", "metric": "fact_accuracy", "better": "ecommerce-base"},
    ]
    return {
        "variants": dict.fromkeys(entries, values),
        "intervals": {name: {key: interval(v) for key, v in values.items()} for name in entries},
        "comparisons": {"ecommerce": comparisons},
        "meta": {"entries": entries, "date": "2026-12-01", "split": "test"},
    }


def write_adapter_log(folder: Path) -> None:
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(b"\0" * 2_000_000)
    log = {
        "split_sizes": {"train": 600},
        "epochs": [{"train_tokens": 76089}, {"train_tokens": 76089}],
        "trainable_parameters": 4_884_480,
        "total_parameters": 139_399_488,
        "train_seconds": 600.0,
        "train_cpu_seconds": 1140.0,
        "peak_rss_mb": 2100.0,
        "config": {"threads": 2},
    }
    (folder / "training_log.json").write_text(json.dumps(log))


def write_drift(reports: Path) -> None:
    def rate(hits: int) -> dict:
        return {"value": hits / 10, "ci_low": 0.0, "ci_high": 1.0, "hits": hits, "n": 10}

    drift = {"changes": [{"name": "return window 30 -> 45 days"}], "variants": {"ecommerce-lora": {"new_value": rate(1), "old_value": rate(9)}, "ecommerce-prompt": {"new_value": rate(8), "old_value": rate(0)}}}
    (reports / "fact_drift_ecommerce.json").write_text(json.dumps(drift))


def test_every_row_comes_from_its_measurement(tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "results.json").write_text(json.dumps(fake_results()))
    write_drift(reports)
    write_adapter_log(tmp_path / "adapters" / "ecommerce")
    timed = {"ecommerce-lora": {"replies": 4, "ttft_s": 0.123, "latency_s": 1.456, "new_tokens": 60.0}}
    memory = {"lora": {"peak_rss_mb": 480.0, "backend": "llamacpp", "timings": timed}, "prompt": {"peak_rss_mb": 450.0, "backend": "llamacpp"}}
    table = method_table.build_table(fake_results(), method_table.load_table_config(), tmp_path / "adapters", reports, memory)
    block = table["domains"]["ecommerce"]
    assert block["methods"] == ["lora", "prompt", "base"]  # guarded entries are not methods
    assert [row["row"] for row in block["rows"]] == list(ROWS)
    cells = {row["row"]: row["values"] for row in block["rows"]}
    assert "better than the control on 1 of 2" in cells["scope"]["lora"] and "worse on 1" in cells["scope"]["prompt"]
    assert cells["data needed"]["lora"].startswith("600 training dialogs, 76,089 tokens per pass × 2 epochs")
    retrieval = load_prompt_spec("ecommerce").retrieval
    assert cells["data needed"]["lora"].endswith("no facts or examples in the prompt")
    assert cells["data needed"]["prompt"].startswith(f"no training data; up to {retrieval.settings.facts} facts retrieved")
    assert f"{retrieval.settings.examples} of {len(retrieval.example_pool)} example dialogs" in cells["data needed"]["prompt"]
    assert cells["model updates"]["lora"] == "4.88 M trainable parameters (3.5% of 139 M); adapter 2.0 MB"
    assert cells["model updates"]["prompt"].startswith("0")
    assert "new value in 1/10" in cells["adaptability"]["lora"] and "retraining to catch up: 10.0 min (19 CPU-min)" in cells["adaptability"]["lora"]
    assert "new value in 8/10" in cells["adaptability"]["prompt"] and "not measured" in cells["adaptability"]["base"]
    assert "fact accuracy 60% [50%, 70%]" in cells["performance"]["lora"]
    assert cells["resources"]["lora"] == "training: 10.0 min (19 CPU-min) on 2 CPU threads, peak 2100 MB; serving: peak 480 MB"
    assert "serving memory not measured" in cells["resources"]["base"]
    # Timings come from the quiet serving process, not from the report's replies in flight.
    assert cells["cost per reply"]["lora"] == "74 [74, 74] prompt tokens; one reply at a time: time to first token 0.12 s, latency 1.46 s for 60 new tokens (median of 4)"
    assert cells["cost per reply"]["prompt"].endswith("time to first token and latency not measured one at a time")

    (reports / TABLE_FILE).write_text(json.dumps(table))
    text = table_markdown(table)
    assert "| **adaptability** |" in text and "`ecommerce-prompt`" in text
    assert any("The methods compared" in section for section in extra_sections(reports))


def test_serving_memory_runs_one_process_per_method_without_adapters_where_unused() -> None:
    calls: list[tuple[list[str], str | None]] = []

    def run(command: list[str], env: dict, **_: object) -> subprocess.CompletedProcess:
        calls.append((command, env.get("TOP_ADAPTERS_DIR")))
        method = command[command.index("--memory-child") + 1]
        line = method_table.MEMORY_TAG + json.dumps({"method": method, "peak_rss_mb": 400.0 + len(method), "backend": "llamacpp"})
        return subprocess.CompletedProcess(command, 0, stdout=f"noise\n{line}\n", stderr="")

    figures = method_table.measure_serving_memory(["lora", "prompt"], {"lora"}, run=run, max_new_tokens=48)
    assert all(command[-2:] == ["--max-new-tokens", "48"] for command, _ in calls)
    assert figures["lora"]["peak_rss_mb"] == 404.0 and figures["prompt"]["peak_rss_mb"] == 406.0
    assert calls[0][1] == os.environ.get("TOP_ADAPTERS_DIR")  # the lora process keeps its adapters
    assert calls[1][1] is not None and calls[1][1] != os.environ.get("TOP_ADAPTERS_DIR")  # the prompt process loads none


def test_a_failed_measurement_says_which_method(tmp_path: Path) -> None:
    def run(command: list[str], **_: object) -> subprocess.CompletedProcess:
        return subprocess.CompletedProcess(command, 1, stdout="", stderr="boom")

    with pytest.raises(RuntimeError, match="memory measurement of prompt failed: boom"):
        method_table.measure_serving_memory(["prompt"], set(), run=run)


def test_the_command_needs_results(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        method_table.main(["--out", str(tmp_path), "--no-measure"])
    assert exit_info.value.code == 2
    assert "run python -m training.evaluate first" in capsys.readouterr().err


def test_the_timed_questions_are_test_split_probes_of_each_domains_bench_source() -> None:
    import domains

    for name in domains.names():
        pack = domains.pack(name)
        rows = [json.loads(line) for line in (method_table.PROBES_DIR / pack.probe(pack.bench_probe_source).file).read_text().splitlines() if line.strip()]
        questions = method_table.timed_questions(name)
        assert len(questions) == method_table.TIMED_QUESTIONS
        assert set(questions) <= {row["question"] for row in rows if row["split"] == "test"}


def test_the_serving_child_reports_its_memory_and_times_each_variant_one_reply_at_a_time(tiny_base, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from bots import registry

    runtime = registry.Runtime.from_base(tiny_base, tmp_path / "no-adapters")
    monkeypatch.setattr(registry, "get_runtime", lambda: runtime)
    method_table.memory_child("prompt", max_new_tokens=3)
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(method_table.MEMORY_TAG))
    figures = json.loads(line[len(method_table.MEMORY_TAG) :])
    prompt_variants = [name for name, bot in runtime.bots.items() if bot.spec.method == "prompt" and bot.availability.ok]
    assert figures["answered"] == prompt_variants and figures["peak_rss_mb"] > 0 and figures["max_new_tokens"] == 3
    for name in prompt_variants:
        timed = figures["timings"][name]
        assert timed["replies"] == method_table.TIMED_QUESTIONS and 0 < timed["ttft_s"] <= timed["latency_s"] and 0 < timed["new_tokens"] <= 3


def test_each_adapter_method_reads_the_log_of_its_own_folder() -> None:
    assert method_table._adapter_folder("lora", "medical") == "medical"
    assert method_table._adapter_folder("hybrid", "medical") == "medical-hybrid"
    assert method_table._adapter_folder("prompt", "medical") is None
    assert method_table._adapter_folder("no-such-method", "medical") is None
