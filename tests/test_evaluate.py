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
from training import evaluate, method_table
from training.curve_report import CURVE_FILE, CURVE_PLOT, plot_curve
from training.eval_data import PROBE_SOURCES, PROBES_DIR, read_probe_file
from training.eval_report import render_report
from training.method_table_report import TABLE_FILE
from training.metrics import METRICS, metrics_for
from training.report_sections import rerender_report
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
        save_tiny_adapter(adapters / f"{domain}-hybrid", seed=2)
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
    # Tiny adapters: every variant runs (the base control too), each alone and then with the guards.
    assert {"ecommerce-base", "medical-base"} <= set(VARIANTS)
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
    assert set(meta["adapters"]) == {"ecommerce-lora", "medical-lora", "ecommerce-hybrid", "medical-hybrid"} and all(len(a["sha256"]) == 64 for a in meta["adapters"].values())
    assert any(path.endswith("ecommerce_facts.jsonl") for path in meta["data"]) and any(path.endswith("test.jsonl") for path in meta["data"])
    assert meta["limit"] == 2 and meta["settings"]["temperature"] == 0.0 and meta["settings"]["max_new_tokens"] == 6
    assert {"platform", "cpu_count", "torch"} <= set(meta["machine"]) and meta["date"]
    assert meta["guard"]["available"] and meta["guard"]["used"] and set(meta["guard"]["acted"]) == set(guarded)
    assert meta["split"] == "test" and meta["backend"] == "transformers" and meta["parallel"] == 1
    assert meta["perplexity"]["backend"] == "transformers" and "reference" in meta["perplexity"]["note"]
    assert meta["control"] == {"ecommerce": "ecommerce-base", "medical": "medical-base"}
    assert meta["entries"]["medical-base"]["method"] == "base" and meta["counts"]["ecommerce-lora"]["support"] == 2
    assert "support_policy_rate" in results["variants"]["ecommerce-base"] and "support_policy_rate" not in results["variants"]["medical-base"]
    replies = [json.loads(line) for line in (out / "replies.jsonl").read_text().splitlines()]
    assert len(replies) == sum(sum(c.values()) for c in meta["counts"].values())
    assert any(r["source"] == "test" and r["reference"] == "Standard shipping is free on orders over $50." for r in replies)  # last turn of a multi-turn dialog
    _check_intervals(results, replies)
    _check_comparisons(results, replies)
    report = (out / "report.md").read_text()
    for needle in (
        "## Reading", "E-commerce support: Northwind Goods", "## Metric definitions", "## results.json", "with the guards",
        "![quality vs latency](quality_vs_latency.png)", "the **test** split", "**transformers** backend", "buys over the control `ecommerce-base`",
        "### Paired comparisons (medical)", "exact McNemar", "paired bootstrap", "support policy",
    ):  # fmt: skip
        assert needle in report, needle
    assert " [" in report.split("## E-commerce support")[1].split("\n| ")[2]  # table cells carry their interval
    for plot in PLOTS:
        assert (out / plot).stat().st_size > 1000


def _check_intervals(results: dict, replies: list[dict]) -> None:
    """Every value has an interval around it, over as many cases as the entry answered in that source."""
    meta = results["meta"]
    for name, values in results["variants"].items():
        counts = meta["counts"][name]
        for key, value in values.items():
            interval = results["intervals"][name][key]
            if value is None:
                assert interval is None
                continue
            assert interval["value"] == value and interval["ci_low"] <= value <= interval["ci_high"], (name, key, interval)
            spec = METRICS[key]
            if spec.kind == "rate":
                assert interval["method"] == "wilson" and interval["n"] == counts[spec.source] and 0 <= interval["ci_low"] <= interval["ci_high"] <= 1
                shares = [r["checks"][evaluate.RATE_CHECKS[key][1]] for r in replies if r["entry"] == name and r["source"] == spec.source]
                assert value == pytest.approx(sum(shares) / len(shares))  # the rate is the share of its per-case checks
            else:
                assert interval["method"] == "bootstrap" and 1 <= interval["n"] <= sum(counts.values())
        assert results["intervals"][name]["rouge_l_f1"]["n"] == counts["test"] == 2


def _check_comparisons(results: dict, replies: list[dict]) -> None:
    """Paired on the same case ids; each difference is the difference of the two values on those cases."""
    by_case = {(r["entry"], r["source"], r["case_id"]): r for r in replies}
    for domain, rows in results["comparisons"].items():
        pairs = {(row["a"], row["b"]) for row in rows}
        assert {(f"{domain}-lora", f"{domain}-prompt"), (f"{domain}-lora", f"{domain}-base"), (f"{domain}-prompt", f"{domain}-base")} <= pairs
        assert (f"{domain}-lora{evaluate.GUARD_SUFFIX}", f"{domain}-lora") in pairs and (f"{domain}-lora", f"{domain}-prompt{evaluate.GUARD_SUFFIX}") not in pairs
        for row in rows:
            spec = METRICS[row["metric"]]
            assert spec.higher_is_better is not None and 0 < row["p_value"] <= 1
            assert row["significant"] == (row["p_value"] < 0.05 and (row["test"] == "exact McNemar" or row["n"] >= 10))
            assert row["difference"] == pytest.approx(row["a_value"] - row["b_value"], abs=1e-9)
            assert row["ci_low"] - 1e-9 <= row["difference"] <= row["ci_high"] + 1e-9 or row["n"] < 3
            assert row["better"] in (None, row["a"], row["b"]) and (row["better"] is None or row["significant"])
            if spec.kind == "rate":
                assert row["test"] == "exact McNemar"
                # Both answered every case: the paired rates are the reported rates.
                assert row["a_value"] == pytest.approx(results["variants"][row["a"]][row["metric"]])
                assert row["b_value"] == pytest.approx(results["variants"][row["b"]][row["metric"]])
                check = evaluate.RATE_CHECKS[row["metric"]][1]
                cases = [key for key in by_case if key[0] == row["a"] and key[1] == spec.source]
                assert row["n"] == len(cases)
                assert all((row["b"], source, case) in by_case for _, source, case in cases)  # the same case ids
                discordant = sum(by_case[(row["a"], s, c)]["checks"][check] != by_case[(row["b"], s, c)]["checks"][check] for _, s, c in cases)
                assert discordant > 0 or row["p_value"] == 1.0
            else:
                assert row["test"] == "paired bootstrap"


def test_split_dev_keeps_the_dev_probes_and_perplexity_says_where_it_is_missing(full_runtime: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(evaluate, "can_score", lambda bot: False)  # a backend that cannot score tokens
    out, results = _run(full_runtime, tmp_path, "--variants", "ecommerce-base,ecommerce-lora", "--split", "dev", "--no-guard", limit=3)
    meta = results["meta"]
    assert meta["split"] == "dev" and meta["perplexity"]["backend"] is None and "n/a" in meta["perplexity"]["note"]
    assert all(values["perplexity"] is None for values in results["variants"].values())
    dev = {row["id"] for source in PROBE_SOURCES if "ecommerce" in source.domains for row in read_probe_file(PROBES_DIR / source.file, source.fields) if row["split"] == "dev"}
    replies = [json.loads(line) for line in (out / "replies.jsonl").read_text().splitlines()]
    assert all(r["case_id"] in dev for r in replies if r["source"] != "test") and any(r["source"] == "support" for r in replies)
    report = (out / "report.md").read_text()
    assert "the **dev** split" in report and "n/a on transformers" in report
    # The control is compared with the method: what LoRA buys over the base model.
    assert "what LoRA (`ecommerce-lora`) buys over the control `ecommerce-base`" in report
    # A results file from before the paired statistics still renders, without claims of significance.
    old = {key: value for key, value in results.items() if key not in ("intervals", "comparisons")}
    old["meta"] = {key: value for key, value in meta.items() if key not in ("split", "backend", "perplexity", "control", "statistics", "parallel")}
    text = render_report(old, {})
    assert "no paired statistics" in text and "wins," not in text


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
    # Each guarded reply records the emergency guard's decision; the model alone records none.
    guarded_replies = [r for r in replies if r["entry"] == "medical-lora+guard"]
    assert guarded_replies and all(r["triage"]["tier"] in ("routine", "urgent", "emergency") for r in guarded_replies if not r["error"])
    assert all(r["triage"] is None for r in replies if r["entry"] == "medical-lora")
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
    for bad in (["--split", "train"], ["--backend", "vllm"], ["--parallel", "-1"], ["--resamples", "10"]):
        with pytest.raises(SystemExit):
            evaluate.main(bad)


def test_report_tab_builds_with_and_without_a_report(full_runtime: Runtime, tmp_path: Path) -> None:
    with gr.Blocks() as empty, gr.Tab("Evaluation"):
        build_report_tab(tmp_path / "nowhere")
    assert load_results(tmp_path / "nowhere") is None
    assert any("No evaluation report yet" in str(getattr(block, "value", "")) for block in empty.blocks.values())

    out, _ = _run(full_runtime, tmp_path, "--variants", "ecommerce-lora,ecommerce-prompt", limit=1)
    with gr.Blocks() as filled, gr.Tab("Evaluation"):
        build_report_tab(out)
    kinds = [type(block).__name__ for block in filled.blocks.values()]
    assert kinds.count("Dataframe") == 2 and kinds.count("Image") == 2  # e-commerce table + comparisons, bars + scatter
    texts = " ".join(str(getattr(block, "value", "")) for block in filled.blocks.values())
    assert str(out) not in texts and "report.md" in texts  # never the serving machine's absolute path
    assert "the **test** split" in texts and "transformers" in texts and "95% interval" in texts


def test_report_path_is_shown_relative_to_the_repository(tmp_path: Path) -> None:
    assert shown_path(DEFAULT_REPORT_DIR / "report.md") == "training/reports/report.md"
    assert shown_path(tmp_path / "elsewhere" / "report.md") == "report.md"


def test_report_and_tab_show_the_methods_table_and_the_curve_when_their_files_exist(full_runtime: Runtime, tmp_path: Path) -> None:
    out, results = _run(full_runtime, tmp_path, "--variants", "ecommerce-lora,ecommerce-prompt", limit=1)
    assert "## The methods compared" not in (out / "report.md").read_text()
    table = method_table.build_table(results, method_table.load_table_config(), tmp_path / "adapters", out, {})
    (out / TABLE_FILE).write_text(json.dumps(table))
    point = {"dialogs": 50, "shipped": False, "train_tokens": 6000, "train_minutes": 1.5, "peak_rss_mb": 2000.0, "values": {"fact_accuracy": {"value": 0.4, "ci_low": 0.3, "ci_high": 0.5, "n": 40}}, "against_prompt": {"fact_accuracy": None}}
    reference = {"prompt": {"variant": "ecommerce-prompt", "values": {"fact_accuracy": {"value": 0.3, "ci_low": 0.2, "ci_high": 0.4, "n": 40}}}}
    curve = {"meta": {"split": "test", "max_new_tokens": 96, "date": "d", "duration_s": 60}, "domains": {"ecommerce": {"metrics": ["fact_accuracy"], "cases": {"facts": 40}, "points": [point], "reference": reference}}}
    (out / CURVE_FILE).write_text(json.dumps(curve))
    plot_curve(curve, out / CURVE_PLOT)
    rerender_report(out)
    report = (out / "report.md").read_text()
    assert report.index("## Reading") < report.index("## The methods compared") < report.index("## Data efficiency") < report.index("## Metric definitions")
    with gr.Blocks() as filled, gr.Tab("Evaluation"):
        build_report_tab(out)
    texts = " ".join(str(getattr(block, "value", "")) for block in filled.blocks.values())
    assert "The methods compared" in texts and "Data efficiency" in texts
    assert [type(block).__name__ for block in filled.blocks.values()].count("Image") == 3  # bars, scatter and the curve


def test_one_run_of_both_splits_writes_a_test_report_and_a_dev_report(full_runtime: Runtime, tmp_path: Path) -> None:
    out, results = _run(full_runtime, tmp_path, "--split", "all", "--variants", "ecommerce-lora,ecommerce-prompt", "--no-guard", limit=4)
    dev = json.loads((out / "dev" / "results.json").read_text())
    assert results["meta"]["split"] == "test" and dev["meta"]["split"] == "dev"
    assert "test" in results["meta"]["counts"]["ecommerce-lora"] and "test" not in dev["meta"]["counts"]["ecommerce-lora"]  # dialogs: test only
    test_ids = {json.loads(line)["case_id"] for line in (out / "replies.jsonl").read_text().splitlines()}
    dev_ids = {json.loads(line)["case_id"] for line in (out / "dev" / "replies.jsonl").read_text().splitlines()}
    assert test_ids and dev_ids and not test_ids & dev_ids
    probes = {row["id"]: row["split"] for probe in PROBE_SOURCES for row in read_probe_file(PROBES_DIR / probe.file, probe.fields)}
    assert all(probes[i] == "dev" for i in dev_ids) and all(probes.get(i, "test") == "test" for i in test_ids)
    assert "dev/report.md" in (out / "report.md").read_text() and "**dev** split" in (out / "dev" / "report.md").read_text()


def test_the_report_tab_points_to_the_dev_report_of_the_same_run(full_runtime: Runtime, tmp_path: Path) -> None:
    out, _ = _run(full_runtime, tmp_path, "--split", "all", "--variants", "ecommerce-lora,ecommerce-prompt", "--no-guard", limit=2)
    with gr.Blocks() as tab, gr.Tab("Evaluation"):
        build_report_tab(out)
    texts = " ".join(str(getattr(block, "value", "")) for block in tab.blocks.values())
    assert "**dev** split" in texts and "What the dev split says" in texts


def test_a_report_of_an_older_set_of_methods_says_so(full_runtime: Runtime, tmp_path: Path) -> None:
    from training.eval_report import stale_methods_note

    _, results = _run(full_runtime, tmp_path, "--variants", "ecommerce-lora", "--no-guard", limit=1)
    assert stale_methods_note(results["meta"]) == ""  # made with today's methods
    older = {**results["meta"], "methods": ["lora", "prompt", "base"]}
    assert "predates today's methods" in stale_methods_note(older) and "lora, prompt, base" in stale_methods_note(older)
    assert "predates" in render_report({**results, "meta": older}, {})


def test_a_run_reuses_an_earlier_runs_replies_where_nothing_they_depend_on_changed(
    full_runtime: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_test_split(tmp_path / "data")
    variants = "ecommerce-lora,ecommerce-prompt,medical-prompt"

    def run(out: str, *extra: str) -> dict:
        argv = ["--split", "all", "--variants", variants, "--limit", "2", "--out", str(tmp_path / out), "--data-dir", str(data), "--max-new-tokens", "6", "--no-progress", *extra]
        assert evaluate.main(argv, runtime=full_runtime) == 0
        return json.loads((tmp_path / out / "results.json").read_text())

    first = run("first")
    generated: list[str] = []
    real_generate = evaluate.generate

    def counting_generate(bot: Bot, entry: evaluate.Entry, *args: object) -> evaluate.ReplyRecord:
        generated.append(entry.name)
        return real_generate(bot, entry, *args)

    monkeypatch.setattr(evaluate, "generate", counting_generate)
    again = run("again", "--reuse", str(tmp_path / "first"))
    assert generated == []  # every reply, of both splits, was taken from the first run
    assert any(note.startswith("--reuse: ") and "replies were taken from the run of" in note for note in again["meta"]["notes"])
    assert again["variants"] == first["variants"] and again["comparisons"] == first["comparisons"]
    taken = again["meta"]["reuse"]["replies"]
    dev_counts = json.loads((tmp_path / "again" / "dev" / "results.json").read_text())["meta"]["counts"]
    assert set(taken) == set(again["meta"]["counts"])
    assert all(taken[name] == sum(counts.values()) + sum(dev_counts[name].values()) > 0 for name, counts in again["meta"]["counts"].items())  # both splits
    assert all(json.loads(line)["reused"] for line in (tmp_path / "again" / "replies.jsonl").read_text().splitlines())
    # The header's minutes are this run's only, and it says so.
    assert f"it took {sum(taken.values())} replies from earlier runs" in (tmp_path / "again" / "report.md").read_text()
    assert "from earlier runs" not in (tmp_path / "first" / "report.md").read_text()

    # A new adapter: only that variant's replies are generated again.
    save_tiny_adapter(Path(full_runtime.bot("ecommerce-lora").adapter_path), seed=7)
    changed = Runtime.from_base(full_runtime.backbone.base, Path(full_runtime.bot("ecommerce-lora").adapter_path).parent)
    full_runtime = changed
    run("new_adapter", "--reuse", str(tmp_path / "first"))
    assert generated and set(generated) == {"ecommerce-lora", "ecommerce-lora+guard"}
    rows = [json.loads(line) for line in (tmp_path / "new_adapter" / "replies.jsonl").read_text().splitlines()]
    assert {r["entry"] for r in rows if not r["reused"]} == {"ecommerce-lora", "ecommerce-lora+guard"}

    # A new detector or new rules: only guarded replies are generated again; the model alone is taken.
    generated.clear()
    from training import eval_reuse

    monkeypatch.setattr(eval_reuse, "guard_fingerprint", lambda: {"safety_rules": "edited", "detector": "retrained"})
    run("new_detector", "--reuse", str(tmp_path / "new_adapter"))
    assert generated and all(name.endswith("+guard") for name in generated)
    rows = [json.loads(line) for line in (tmp_path / "new_detector" / "replies.jsonl").read_text().splitlines()]
    assert all(r["reused"] for r in rows if not r["entry"].endswith("+guard"))
    # ...and of those only where the guard changes the reply: elsewhere the guarded reply is the model
    # alone's, decided without generating, and it is the reply a full run gives.
    def both_splits(out: str) -> list[dict]:
        return [json.loads(line) for name in ("replies.jsonl", "dev/replies.jsonl") for line in (tmp_path / out / name).read_text().splitlines()]

    guarded = [r for r in both_splits("new_detector") if r["entry"].endswith("+guard")]
    assert len(generated) == sum(1 for r in guarded if r["guard_acted"]) < len(guarded)
    before = {(r["entry"], r["source"], r["case_id"]): r for r in both_splits("new_adapter")}
    for row in guarded:
        earlier = before[(row["entry"], row["source"], row["case_id"])]
        assert (row["reply"], row["guard_acted"], row["triage"]) == (earlier["reply"], earlier["guard_acted"], earlier["triage"])

    # An adapter served another way (merged into the base): its replies are generated again, the rest are taken.
    generated.clear()
    monkeypatch.setattr(type(full_runtime.backbone), "adapter_serving", lambda self, name: "merged Q8_0" if name else None)
    merged = run("merged", "--reuse", str(tmp_path / "new_detector"))
    assert set(generated) == {"ecommerce-lora", "ecommerce-lora+guard"}
    assert merged["meta"]["adapters"]["ecommerce-lora"]["served"] == "merged Q8_0"
    monkeypatch.undo()
    monkeypatch.setattr(evaluate, "generate", counting_generate)

    # Served differently (another reply length): nothing is taken, and the run says why.
    generated.clear()
    capsys.readouterr()
    argv = ["--split", "test", "--variants", "ecommerce-prompt", "--limit", "2", "--out", str(tmp_path / "longer"), "--data-dir", str(data), "--max-new-tokens", "7", "--no-progress", "--reuse", str(tmp_path / "first")]
    assert evaluate.main(argv, runtime=full_runtime) == 0
    assert "served differently (settings)" in capsys.readouterr().err and "ecommerce-prompt" in generated
    with pytest.raises(SystemExit):
        evaluate.main(["--reuse", str(tmp_path / "nowhere")], runtime=full_runtime)


def test_an_interrupted_run_resumes_with_reuse_on_its_own_folder(full_runtime: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from training.eval_reuse import PARTIAL_META, PARTIAL_REPLIES

    data = write_test_split(tmp_path / "data")
    out = tmp_path / "report"
    argv = ["--variants", "ecommerce-prompt,medical-prompt", "--limit", "2", "--out", str(out), "--data-dir", str(data), "--max-new-tokens", "6", "--no-progress", "--no-guard"]
    real_generate = evaluate.generate
    generated: list[str] = []

    def stopped_in_medical(bot: Bot, entry: evaluate.Entry, *args: object) -> evaluate.ReplyRecord:
        if entry.variant == "medical-prompt" and "medical-prompt" in generated:
            raise KeyboardInterrupt  # the run is stopped half-way through its second variant
        generated.append(entry.name)
        return real_generate(bot, entry, *args)

    monkeypatch.setattr(evaluate, "generate", stopped_in_medical)
    with pytest.raises(KeyboardInterrupt):
        evaluate.main(argv, runtime=full_runtime)
    kept = [json.loads(line) for line in (out / PARTIAL_REPLIES).read_text().splitlines()]
    assert kept and {row["entry"] for row in kept} == {"ecommerce-prompt", "medical-prompt"} and not (out / "results.json").exists()
    assert sum(row["entry"] == "medical-prompt" for row in kept) == 1  # the one case done before the stop is kept
    done_before = len(generated)

    def counting(bot: Bot, entry: evaluate.Entry, *args: object) -> evaluate.ReplyRecord:
        generated.append(entry.name)
        return real_generate(bot, entry, *args)

    # Stopped again before its first case: what the first run kept is still there.
    def stopped_at_once(*args: object, **kwargs: object) -> dict:
        raise KeyboardInterrupt

    real_run_variant = evaluate.run_variant
    monkeypatch.setattr(evaluate, "run_variant", stopped_at_once)
    with pytest.raises(KeyboardInterrupt):
        evaluate.main([*argv, "--reuse", str(out)], runtime=full_runtime)
    kept_again = {(r["entry"], r["source"], r["case_id"]) for r in map(json.loads, (out / PARTIAL_REPLIES).read_text().splitlines())}
    assert kept_again == {(r["entry"], r["source"], r["case_id"]) for r in kept}

    monkeypatch.setattr(evaluate, "run_variant", real_run_variant)
    monkeypatch.setattr(evaluate, "generate", counting)
    assert evaluate.main([*argv, "--reuse", str(out)], runtime=full_runtime) == 0
    assert set(generated[done_before:]) == {"medical-prompt"}  # ecommerce-prompt came from the interrupted run
    results = json.loads((out / "results.json").read_text())
    assert len(generated[done_before:]) == sum(results["meta"]["counts"]["medical-prompt"].values()) - 1  # and one medical case
    kept_ecommerce = {(r["source"], r["case_id"]) for r in kept if r["entry"] == "ecommerce-prompt"}  # each case once per case, once more at the variant's end
    assert results["meta"]["reuse"]["replies"]["ecommerce-prompt"] == len(kept_ecommerce) and results["meta"]["reuse"]["replies"]["medical-prompt"] == 1
    assert not (out / PARTIAL_META).exists() and not (out / PARTIAL_REPLIES).exists()  # a finished run cleans up


def test_a_half_written_last_line_of_an_interrupted_run_is_dropped_and_other_damage_is_an_error(tmp_path: Path) -> None:
    from training.eval_reuse import PARTIAL_META, PARTIAL_REPLIES, ReuseError, append_partial, load_previous, start_partial

    serving = {"base": "b", "backend": "llamacpp", "llama_cpp": "0", "settings": {}}
    (tmp_path / PARTIAL_META).write_text(json.dumps({"serving": serving, "date": "d"}))
    rows = [{"entry": "ecommerce-prompt", "source": "facts", "case_id": str(i), "fingerprint": "f", "reply": "r"} for i in range(2)]
    lines = [json.dumps(row) for row in rows]
    (tmp_path / PARTIAL_REPLIES).write_text("\n".join([*lines, lines[0][:17]]))  # stopped while writing the third
    previous = load_previous(tmp_path, serving)
    assert sorted(key[2] for key in previous.records) == ["0", "1"] and previous.partial_taken
    # Resumed on its own folder: the broken tail is cut, so the next rows stand on lines of their own.
    start_partial(tmp_path, serving, "d2", keep=True)
    append_partial(tmp_path, [{**rows[0], "case_id": "2"}])
    assert sorted(key[2] for key in load_previous(tmp_path, serving).records) == ["0", "1", "2"]
    (tmp_path / PARTIAL_REPLIES).write_text("\n".join([lines[0], lines[1][:17], lines[1]]))
    with pytest.raises(ReuseError, match="line 2 is not JSON"):
        load_previous(tmp_path, serving)


def test_a_case_in_both_reports_of_a_folder_is_taken_from_the_one_that_served_it_alike(tmp_path: Path) -> None:
    """A ``--split all`` folder holds a test and a dev report; both can hold one case, generated
    differently (merged adapters for one, run-time for the other). The dev report, read last,
    must not hide the test report's reply that matches."""
    from training.eval_reuse import DEV_FOLDER, load_previous

    serving = {"base": "b", "backend": "llamacpp", "llama_cpp": "0", "settings": {}}
    (tmp_path / DEV_FOLDER).mkdir()
    (tmp_path / "results.json").write_text(json.dumps({"meta": {"serving": serving, "date": "d"}}))
    row = {"entry": "ecommerce-lora", "source": "test", "case_id": "ecommerce-test-0001", "reply": "merged"}
    (tmp_path / "replies.jsonl").write_text(json.dumps({**row, "fingerprint": "merged"}) + "\n")
    (tmp_path / DEV_FOLDER / "replies.jsonl").write_text(json.dumps({**row, "fingerprint": "run-time", "reply": "run-time"}) + "\n")
    previous = load_previous(tmp_path, serving)
    key = ("ecommerce-lora", "test", "ecommerce-test-0001")
    assert previous.take(*key, "merged")["reply"] == "merged"
    assert previous.take(*key, "run-time")["reply"] == "run-time"
    assert previous.take(*key, "another") is None
