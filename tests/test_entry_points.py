"""Every command of the project answers ``--help`` and refuses a bad argument with one clear line.

The commands run in-process (``runpy``, as ``python -m`` does), so the test pays no start-up
per command. Run: ``python -m pytest tests/test_entry_points.py``.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MODULES = (
    "bots",
    "bots.base_model",
    "benchmarks.serving",
    "bots.gguf_lora",
    "benchmarks.loadtest",
    "bots.safety_eval",
    "bots.api",
    "benchmarks.api_loadtest",
    "benchmarks.detector",
    "bots.gguf_truncate",
    "bots.gguf_merge",
    "benchmarks.merged_adapters",
    "benchmarks.batch_scaling",
    "prompts",
    "training.train",
    "training.evaluate",
    "training.datagen",
    "benchmarks.training_speed",
    "training.hub_cards",
    "training.train_detector",
    "training.fact_drift",
    "training.data_curve",
    "training.method_table",
    "training.prompt_design",
    "training.hybrid_data",
    "webui.votes",
    "webui.leaderboard",
    "tests.check_wheel",
    "tests.ddp_train_tiny",
)
COMMANDS = [*MODULES, "ui.py"]


def _run(command: str, args: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(sys, "argv", [command, *args])
    with pytest.raises(SystemExit) as stopped:
        if command.endswith(".py"):
            runpy.run_path(str(REPO / command), run_name="__main__")
        else:
            runpy.run_module(command, run_name="__main__", alter_sys=False)
    code = stopped.value.code
    return 0 if code is None else int(code)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # runpy: the module was imported before
@pytest.mark.parametrize("command", COMMANDS)
def test_help_exits_0_with_usage(command: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(command, ["--help"], monkeypatch) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: ") and "--help" in out


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("command", COMMANDS)
def test_a_bad_argument_exits_2_with_one_line(command: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(command, ["--no-such-option"], monkeypatch) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert "error:" in lines[0] and "(see --help)" in lines[0] and "Traceback" not in captured.err
