"""The data-efficiency curve on the tiny model: which points it trains, how it scores and pairs them, what it writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bots.base_model import LoadedBase
from bots.registry import Runtime
from tests.tiny_model import save_tiny_adapter
from training import curve_report, data_curve
from training.config import load_config
from training.eval_data import PROBES_DIR
from training.report import LOG_FILE
from training.train import config_from_args, make_parser, read_splits

PROBE_LINES = {
    "ecommerce_facts.jsonl": [
        {"id": "f1", "topic": "returns", "spec_row": "Returns", "split": "test", "question": "How long can I return things?", "expected": ["30 days"]},
        {"id": "f2", "topic": "returns", "spec_row": "Returns", "split": "dev", "question": "Return window?", "expected": ["30 days"]},
        {"id": "f3", "topic": "shipping", "spec_row": "Shipping", "split": "test", "question": "Is shipping free?", "expected": ["\\$50"]},
    ],
}


def write_probes(folder: Path) -> Path:
    """The shipped probe files, with the fact probes replaced by three tiny ones (two of them test)."""
    folder.mkdir(parents=True)
    for path in PROBES_DIR.glob("*.jsonl"):
        (folder / path.name).write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    for name, rows in PROBE_LINES.items():
        (folder / name).write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return folder


def fake_training(log: list[list[str]]):
    """Stands in for `python -m training.train`: writes a tiny adapter and a training log as training would."""

    def run(command: list[str]) -> None:
        log.append(command)
        args = make_parser().parse_args(command[3:])
        config = config_from_args(args)
        folder = Path(config.output_dir)
        save_tiny_adapter(folder, seed=config.max_train_dialogs or 1)
        report = {
            "config": config.to_dict(),
            "data_sha256": read_splits(config).sha256,
            "split_sizes": {"train": config.max_train_dialogs, "validation": 80, "test": 120},
            "epochs": [{"epoch": 1, "train_tokens": 100 * config.max_train_dialogs}],
            "train_seconds": 6.0 * config.max_train_dialogs,
            "train_cpu_seconds": 11.0 * config.max_train_dialogs,
            "peak_rss_mb": 900.0,
        }
        (folder / LOG_FILE).write_text(json.dumps(report))

    return run


@pytest.fixture()
def runtime(tiny_base: LoadedBase, tmp_path: Path) -> Runtime:
    adapters = tmp_path / "adapters"
    for domain in ("ecommerce", "medical"):
        save_tiny_adapter(adapters / domain)
    return Runtime.from_base(tiny_base, adapters)


def test_train_command_is_what_training_parses() -> None:
    command = data_curve.train_command("medical", 150, Path("/x/n150"), Path("/x/runs"))
    config = config_from_args(make_parser().parse_args(command[3:]))
    assert (config.domain, config.max_train_dialogs, config.output_dir, config.work_dir, config.progress_bar) == ("medical", 150, Path("/x/n150"), Path("/x/runs"), False)


def test_config_rejects_metrics_a_domain_does_not_have(tmp_path: Path) -> None:
    bad = tmp_path / "curve.yaml"
    bad.write_text("sizes: [5]\nmetrics:\n  ecommerce: [false_alarm_rate]\n")
    with pytest.raises(ValueError, match="false_alarm_rate"):
        data_curve.load_curve_config(bad)
    with pytest.raises(ValueError, match="positive"):
        data_curve.load_curve_config(data_curve.CURVE_CONFIG, sizes=(0,))


def test_curve_trains_missing_points_once_scores_them_and_writes_the_report(runtime: Runtime, tmp_path: Path) -> None:
    config = data_curve.load_curve_config(
        data_curve.CURVE_CONFIG,
        sizes=(3, 7),
        domains=("ecommerce",),
        work_dir=tmp_path / "curve",
        out_dir=tmp_path / "out",
        adapters_dir=tmp_path / "adapters",
        probes_dir=write_probes(tmp_path / "probes"),
        max_new_tokens=4,
        resamples=200,
    )
    config = data_curve.replace(config, metrics={"ecommerce": ("fact_accuracy",)})
    commands: list[list[str]] = []
    curve = data_curve.run_curve(runtime, config, fake_training(commands))
    assert [c[c.index("--max_train_dialogs") + 1] for c in commands] == ["3", "7"]

    block = curve["domains"]["ecommerce"]
    assert block["cases"] == {"facts": 2}  # the test split only, and only the metric's source
    points = block["points"]
    assert [p["dialogs"] for p in points] == [3, 7]  # the tiny shipped adapter has no training log: no last point
    for point in points:
        figure = point["values"]["fact_accuracy"]
        assert figure["n"] == 2 and 0 <= figure["ci_low"] <= figure["value"] <= figure["ci_high"] <= 1
        assert point["train_minutes"] == round(6.0 * point["dialogs"] / 60, 2) and point["train_tokens"] == 100 * point["dialogs"]
        assert point["against_prompt"]["fact_accuracy"]["n"] == 2
    assert set(block["reference"]) == {"prompt", "base"}
    assert block["reference"]["prompt"]["variant"] == "ecommerce-prompt"

    # Points whose data and config are unchanged are not trained again.
    data_curve.run_curve(runtime, config, fake_training(commands))
    assert len(commands) == 2

    data_curve.write_curve(curve, config.out_dir)
    saved = json.loads((config.out_dir / curve_report.CURVE_FILE).read_text())
    assert saved["domains"]["ecommerce"]["points"][0]["dialogs"] == 3
    assert (config.out_dir / curve_report.CURVE_PLOT).stat().st_size > 1000
    text = curve_report.curve_markdown(saved)
    assert "### ecommerce" in text and "| 3 |" in text and "`ecommerce-prompt` (prompt, no training)" in text
    assert "fact accuracy:" in text


def test_a_point_trained_on_other_data_is_not_current(tmp_path: Path) -> None:
    folder = tmp_path / "n5"
    config = load_config(data_curve._domain_config("ecommerce"), {"domain": "ecommerce", "max_train_dialogs": 5})
    folder.mkdir()
    (folder / "adapter_model.safetensors").write_bytes(b"x")
    log = {"config": config.to_dict(), "data_sha256": read_splits(config).sha256}
    (folder / LOG_FILE).write_text(json.dumps(log))
    assert data_curve.point_is_current(folder, "ecommerce", 5)
    assert not data_curve.point_is_current(folder, "ecommerce", 6)
    (folder / LOG_FILE).write_text(json.dumps({**log, "data_sha256": "0" * 64}))
    assert not data_curve.point_is_current(folder, "ecommerce", 5)


def test_crossover_reads_the_paired_verdicts() -> None:
    def point(n: int, better: str | None) -> dict:
        return {"dialogs": n, "against_prompt": {"fact_accuracy": {"better": better}}}

    block = {"reference": {"prompt": {"variant": "ecommerce-prompt"}}, "points": [point(50, "ecommerce-prompt"), point(150, None), point(300, "ecommerce-lora@300")]}
    assert curve_report.crossover(block, "fact_accuracy") == "fact accuracy: LoRA is significantly better than the prompt from 300 dialogs on (worse at 50)"
    block["points"] = [point(50, None)]
    assert "no size differs" in curve_report.crossover(block, "fact_accuracy")
