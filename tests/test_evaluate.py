"""End-to-end runs of training.evaluate on the tiny model, and the report tab built from its output."""

from __future__ import annotations

import json
from pathlib import Path

import gradio as gr
import pytest

from bots.base_model import LoadedBase
from bots.bot import Bot, ReplyStream
from bots.registry import VARIANTS, Runtime
from tests.tiny_model import save_tiny_adapter
from training import evaluate
from training.metrics import metrics_for
from webui.report_tab import DEFAULT_REPORT_DIR, build_report_tab, load_results, shown_path

SYSTEM = {"role": "system", "content": "short system prompt"}
TEST_DIALOGS = {
    "ecommerce": [
        [{"role": "user", "content": "How long do I have to return my order?"}, {"role": "assistant", "content": "Returns are accepted within 30 days of delivery."}],
        [
            {"role": "user", "content": "hello"},
            {"role": "assistant", "content": "Hello! How can I help?"},
            {"role": "user", "content": "Is shipping free?"},
            {"role": "assistant", "content": "Standard shipping is free on orders over $50."},
        ],
    ],
    "medical": [
        [{"role": "user", "content": "My chest hurts badly."}, {"role": "assistant", "content": "Call 911 now or go to the nearest emergency department."}],
        [{"role": "user", "content": "What helps a cold?"}, {"role": "assistant", "content": "Rest and fluids. This is general information and does not replace a clinician."}],
    ],
}
PLOTS = ("metrics_ecommerce.png", "metrics_medical.png", "quality_vs_latency.png")


def write_test_split(data_dir: Path) -> Path:
    for domain, dialogs in TEST_DIALOGS.items():
        folder = data_dir / domain
        folder.mkdir(parents=True)
        lines = [json.dumps({"id": f"{domain}-test-{i}", "topic": "t", "kind": "single", "messages": [SYSTEM, *d]}) for i, d in enumerate(dialogs)]
        (folder / "test.jsonl").write_text("\n".join(lines) + "\n")
    return data_dir


@pytest.fixture()
def full_runtime(tiny_base: LoadedBase, tmp_path: Path) -> Runtime:
    adapters = tmp_path / "adapters"
    for domain in ("ecommerce", "medical"):
        save_tiny_adapter(adapters / domain)
    return Runtime.from_base(tiny_base, adapters)


def _run(runtime: Runtime, tmp_path: Path, *extra: str, limit: int = 2) -> tuple[Path, dict]:
    out = tmp_path / "report"
    data = write_test_split(tmp_path / "data")
    argv = ["--limit", str(limit), "--out", str(out), "--data-dir", str(data), "--max-new-tokens", "6", "--no-progress", *extra]
    assert evaluate.main(argv, runtime=runtime) == 0
    return out, json.loads((out / "results.json").read_text())


def test_end_to_end_on_the_tiny_model(full_runtime: Runtime, tmp_path: Path) -> None:
    out, results = _run(full_runtime, tmp_path)
    guarded = [name + evaluate.GUARD_SUFFIX for name in VARIANTS]
    # Tiny adapters: all four run, each alone and then with the guards.
    assert list(results["variants"]) == [entry for name in VARIANTS for entry in (name, name + evaluate.GUARD_SUFFIX)]
    meta = results["meta"]
    for name, values in results["variants"].items():
        domain = meta["entries"][name]["domain"]
        assert list(values) == [spec.key for spec in metrics_for(domain)]
        assert values["perplexity"] > 1 and values["prompt_tokens"] > 0 and values["ttft_s"] > 0
        assert 0 <= values["rouge_l_f1"] <= 1
        assert meta["counts"][name]["test"] == 2 and all(n <= 2 for n in meta["counts"][name].values())
        assert meta["errors"][name] == 0
    assert meta["base_model"]["fingerprint"] == "tiny-test-model"
    assert set(meta["adapters"]) == {"ecommerce-lora", "medical-lora"} and all(len(a["sha256"]) == 64 for a in meta["adapters"].values())
    assert any(path.endswith("ecommerce_facts.jsonl") for path in meta["data"]) and any(path.endswith("test.jsonl") for path in meta["data"])
    assert meta["limit"] == 2 and meta["settings"]["temperature"] == 0.0 and meta["settings"]["max_new_tokens"] == 6
    assert {"platform", "cpu_count", "torch"} <= set(meta["machine"]) and meta["date"]
    assert meta["guard"]["available"] and meta["guard"]["used"] and set(meta["guard"]["acted"]) == set(guarded)
    report = (out / "report.md").read_text()
    for needle in ("## Reading", "E-commerce support: Northwind Goods", "## Metric definitions", "## results.json", "with the guards", "![quality vs latency](quality_vs_latency.png)"):
        assert needle in report
    for plot in PLOTS:
        assert (out / plot).stat().st_size > 1000
    replies = [json.loads(line) for line in (out / "replies.jsonl").read_text().splitlines()]
    assert len(replies) == sum(sum(c.values()) for c in meta["counts"].values())
    assert any(r["source"] == "test" and r["reference"] == "Standard shipping is free on orders over $50." for r in replies)  # last turn of a multi-turn dialog


def test_missing_adapter_is_skipped_with_its_reason(tiny_base: LoadedBase, tmp_path: Path) -> None:
    runtime = Runtime.from_base(tiny_base, tmp_path / "no-adapters")
    out, results = _run(runtime, tmp_path, "--variants", "ecommerce-lora,ecommerce-prompt", "--no-guard", limit=1)
    assert list(results["variants"]) == ["ecommerce-prompt"]
    assert "does not exist" in results["meta"]["skipped"]["ecommerce-lora"]
    assert "`ecommerce-lora` skipped" in (out / "report.md").read_text()
    assert (out / "metrics_ecommerce.png").stat().st_size > 0 and not (out / "metrics_medical.png").exists()


def test_the_guard_entries_and_no_guard(full_runtime: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bool] = []
    original = Bot.stream

    def spy(self: Bot, conversation: list, settings=None, override=None, guard: bool = True) -> ReplyStream:  # noqa: ANN001
        calls.append(guard)
        return original(self, conversation, settings, override, guard)

    monkeypatch.setattr(Bot, "stream", spy)
    # The LoRA variant's prompt is short, so this stays quick on the tiny model.
    out, results = _run(full_runtime, tmp_path, "--variants", "medical-lora", limit=3)
    alone, guarded = results["variants"]["medical-lora"], results["variants"]["medical-lora+guard"]
    acted = results["meta"]["guard"]["acted"]["medical-lora+guard"]
    replies = [json.loads(line) for line in (out / "replies.jsonl").read_text().splitlines()]
    # A reply is generated once where the guard did not act, twice where it did.
    cases = sum(results["meta"]["counts"]["medical-lora"].values())
    assert cases == 14 and calls.count(True) == cases and calls.count(False) == acted == sum(1 for r in replies if r["guard_acted"])
    assert guarded["escalation_first_rate"] >= alone["escalation_first_rate"] and guarded["perplexity"] == alone["perplexity"]
    assert acted > 0 and "a guard acted on" in (out / "report.md").read_text()
    # --no-guard: the model alone, guard=False passed on every call.
    calls.clear()
    _, results = _run(full_runtime, tmp_path / "second", "--variants", "medical-lora", "--no-guard", limit=1)
    assert list(results["variants"]) == ["medical-lora"] and calls and not any(calls)


def test_without_a_guard_parameter_the_model_alone_is_reported(full_runtime: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = Bot.stream

    def no_guard(self: Bot, conversation: list, settings=None, override=None) -> ReplyStream:  # noqa: ANN001
        return original(self, conversation, settings, override, False)

    monkeypatch.setattr(Bot, "stream", no_guard)
    out, results = _run(full_runtime, tmp_path, "--variants", "ecommerce-lora", limit=1)
    assert list(results["variants"]) == ["ecommerce-lora"] and results["meta"]["guard"]["available"] is False
    assert "no `guard` parameter" in (out / "report.md").read_text()


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(SystemExit):
        evaluate.main(["--variants", "nope"])
    with pytest.raises(SystemExit):
        evaluate.main(["--limit", "0"])


def test_report_tab_builds_with_and_without_a_report(full_runtime: Runtime, tmp_path: Path) -> None:
    with gr.Blocks() as empty, gr.Tab("Evaluation"):
        build_report_tab(tmp_path / "nowhere")
    assert load_results(tmp_path / "nowhere") is None
    assert any("No evaluation report yet" in str(getattr(block, "value", "")) for block in empty.blocks.values())

    out, _ = _run(full_runtime, tmp_path, "--variants", "ecommerce-lora,ecommerce-prompt", limit=1)
    with gr.Blocks() as filled, gr.Tab("Evaluation"):
        build_report_tab(out)
    kinds = [type(block).__name__ for block in filled.blocks.values()]
    assert "Dataframe" in kinds and kinds.count("Image") == 2  # e-commerce bars + scatter
    texts = " ".join(str(getattr(block, "value", "")) for block in filled.blocks.values())
    assert str(out) not in texts and "report.md" in texts  # never the serving machine's absolute path


def test_report_path_is_shown_relative_to_the_repository(tmp_path: Path) -> None:
    assert shown_path(DEFAULT_REPORT_DIR / "report.md") == "training/reports/report.md"
    assert shown_path(tmp_path / "elsewhere" / "report.md") == "report.md"
