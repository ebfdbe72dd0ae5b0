"""The prompt design search on the tiny model: designs as data, the same dev cases for all, the history it writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bots.base_model import LoadedBase
from bots.bot import PromptedBot, RetrievalBot
from bots.registry import Runtime
from prompts import load_prompt_spec
from training import prompt_design
from training.prompt_design_report import DESIGN_FILE, design_markdown


def test_the_shipped_designs_file_loads_and_each_design_changes_what_it_says() -> None:
    metrics, designs = prompt_design.load_designs()
    assert set(designs) == {"ecommerce", "medical"} and set(metrics) == set(designs)
    spec = load_prompt_spec("ecommerce")
    for design in designs["ecommerce"]:
        changed = prompt_design.designed_prompt(spec, design)
        if design.static or not design.retrieval:
            assert changed is spec
        else:
            for key, value in design.retrieval.items():
                if key == "question_vote":
                    assert (changed.retrieval.question_vote is not None) == value and spec.retrieval.question_vote is not None
                else:
                    assert getattr(changed.retrieval.settings, key) == (tuple(value) if isinstance(value, list) else value)


def test_bad_designs_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "designs.yaml"
    path.write_text("metrics: {ecommerce: [fact_accuracy]}\ndesigns:\n  ecommerce:\n    - {name: other}\n")
    with pytest.raises(ValueError, match="shipped"):
        prompt_design.load_designs(path)
    path.write_text("metrics: {ecommerce: [fact_accuracy]}\ndesigns:\n  ecommerce:\n    - {name: shipped, retrieval: {fact: 2}}\n")
    with pytest.raises(ValueError, match="unknown retrieval field"):
        prompt_design.load_designs(path)
    path.write_text("metrics: {ecommerce: [fact_accuracy]}\ndesigns:\n  ecommerce:\n    - {name: shipped, retrieval: {question_vote: 'false'}}\n")
    with pytest.raises(ValueError, match="question_vote must be true or false"):
        prompt_design.load_designs(path)


def test_every_design_answers_the_same_dev_cases_and_the_history_is_written(tiny_base: LoadedBase, tmp_path: Path) -> None:
    runtime = Runtime.from_base(tiny_base, tmp_path / "no-adapters")
    designs = {"ecommerce": [
        prompt_design.Design("static sheet", "the ablation", static=True),
        prompt_design.Design("shipped", "as is"),
        prompt_design.Design("one fact", "fewer facts", retrieval={"facts": 1, "examples": 0}),
    ]}  # fmt: skip
    assert isinstance(prompt_design.design_bot(runtime, "ecommerce", designs["ecommerce"][0]), PromptedBot)
    assert isinstance(prompt_design.design_bot(runtime, "ecommerce", designs["ecommerce"][2]), RetrievalBot)
    history = prompt_design.run_designs(runtime, ["ecommerce"], {"ecommerce": ("fact_accuracy",)}, designs, max_new_tokens=2, resamples=200)
    block = history["domains"]["ecommerce"]
    assert history["meta"]["split"] == "dev" and set(block["cases"]) == {"facts"}
    rows = {row["name"]: row for row in block["designs"]}
    n = block["cases"]["facts"]
    assert all(row["values"]["fact_accuracy"]["n"] == n for row in rows.values())
    assert rows["static sheet"]["prompt_tokens"] > rows["shipped"]["prompt_tokens"] > rows["one fact"]["prompt_tokens"]
    assert rows["one fact"]["against_shipped"]["fact_accuracy"]["n"] == n and rows["shipped"]["against_shipped"] == {}
    prompt_design.write_history(history, tmp_path / "out")
    saved = json.loads((tmp_path / "out" / DESIGN_FILE).read_text())
    text = design_markdown(saved)
    assert "| **shipped** |" in text and "| one fact | fewer facts |" in text and "dev" in text
