"""The Evaluation tab: the latest report of ``python -m training.evaluate``, read from its files.

``build_report_tab(report_dir)`` lays out, inside the current gr.Blocks / gr.Tab, the run's
summary (split, backend, where perplexity came from, the control), a table with 95% intervals,
a bar chart and the paired comparisons per domain, the quality-vs-latency plot and the metric
definitions, from ``results.json`` and the PNGs in ``training/reports/``. Nothing is computed
here and no model is loaded: without a report the tab says how to make one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gradio as gr

from training.curve_report import CURVE_PLOT
from training.eval_report import (
    DOMAIN_ORDER,
    comparison_table,
    definitions,
    domain_table,
    domain_title,
    entries_of,
    reading,
    run_summary,
    stale_methods_note,
)
from training.report_sections import extra_sections

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_REPORT_DIR = REPO_ROOT / "training" / "reports"
NO_REPORT = (
    "### No evaluation report yet\n"
    "Run `python -m training.evaluate --limit 10` (a few minutes per variant on a CPU); it writes "
    "`training/reports/results.json`, `report.md` and the plots shown here."
)
HOW_TO_READ = (
    "Every variant (LoRA, prompt, and the bare base model as the control) runs on the same base model, the same questions "
    "and greedy decoding. Each value carries its 95% interval in brackets (Wilson for rates, bootstrap otherwise); the "
    "comparisons are paired by question (exact McNemar test for rates, paired bootstrap otherwise), and the reading says "
    "a method wins only where p < 0.05. "
    "↑ marks metrics where higher is better, ↓ where lower is better; the best value of a row is in bold. "
    "Rates are shares of probe questions (hand-written, not from the training data); ROUGE-L and "
    "perplexity compare with the test split's reference answers; the cost rows are measured on this "
    "machine's CPU, where a longer prompt (the prompt template's fact sheet and few-shot) costs time to first token."
)


def shown_path(path: Path) -> str:
    """``path`` as a reader finds it in the repository (never the serving machine's absolute path)."""
    resolved = path.resolve()
    return resolved.relative_to(REPO_ROOT).as_posix() if resolved.is_relative_to(REPO_ROOT) else path.name


def load_results(report_dir: Path) -> dict[str, Any] | None:
    """The parsed results.json, or None when there is none (or it cannot be read)."""
    path = report_dir / "results.json"
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return results if isinstance(results, dict) and results.get("variants") is not None and "meta" in results else None


def _summary(results: dict[str, Any]) -> str:
    meta = results["meta"]
    limit = f"at most {meta['limit']} cases per source" if meta.get("limit") else "every case"
    skipped = "".join(f"\n- `{name}` skipped: {reason}" for name, reason in meta.get("skipped", {}).items())
    stale = stale_methods_note(meta)
    notes = "".join(f"\n- {note}" for note in [*([stale] if stale else []), *meta.get("notes", [])])
    return (
        f"### Latest evaluation ({meta.get('date', '?')})\n"
        f"Base model {meta.get('base_model', {}).get('name', '?')}; {limit}; "
        f"{meta.get('duration_s', 0) / 60:.1f} min on {meta.get('machine', {}).get('cpu_count', '?')} CPUs.\n\n"
        f"{run_summary(results)}{skipped}{notes}"
    )


def _image(path: Path, label: str) -> None:
    if path.is_file() and path.stat().st_size > 0:
        gr.Image(value=str(path), label=label, show_label=True, interactive=False, buttons=["download", "fullscreen"])


def build_report_tab(report_dir: Path | None = None) -> None:
    """Lay out the report inside the current Blocks context; a clear message when there is none."""
    report_dir = report_dir or DEFAULT_REPORT_DIR
    results = load_results(report_dir)
    if results is None:
        gr.Markdown(NO_REPORT)
        return
    gr.Markdown(_summary(results))
    gr.Markdown("#### What it says\n" + "\n".join(reading(results)))
    gr.Markdown(HOW_TO_READ)
    for domain in DOMAIN_ORDER:
        if not entries_of(results, domain):
            continue
        header, rows = domain_table(results, domain)
        gr.Markdown(f"### {domain_title(domain)}")
        gr.Dataframe(value=rows, headers=header, datatype="markdown", interactive=False, wrap=True)
        _image(report_dir / f"metrics_{domain}.png", f"{domain}: every metric by variant, with 95% intervals")
        comparison_header, comparison_rows = comparison_table(results, domain)
        if comparison_rows:
            with gr.Accordion(f"{domain}: paired comparisons (A − B, 95% interval, p)", open=False):
                gr.Dataframe(value=comparison_rows, headers=comparison_header, datatype="markdown", interactive=False, wrap=True)
    _image(report_dir / "quality_vs_latency.png", "quality against latency")
    # The measured methods table and the data-efficiency curve, each from its own command's file.
    for section in extra_sections(report_dir):
        gr.Markdown(section.replace(f"![data efficiency]({CURVE_PLOT})", ""))
        if section.startswith("## Data efficiency"):
            _image(report_dir / CURVE_PLOT, "LoRA quality against training dialogs, the prompt and the control across (95% intervals)")
    with gr.Accordion("Metric definitions", open=False):
        gr.Markdown(definitions())
    report = report_dir / "report.md"
    if report.is_file():
        gr.Markdown(f"The full report with provenance (base, adapter and data hashes) is `{shown_path(report)}`.")
    dev = load_results(report_dir / "dev")
    if dev is not None:
        gr.Markdown(
            f"The same run's **dev** split, used for choosing prompts and settings: `{shown_path(report_dir / 'dev' / 'report.md')}`.\n\n"
            "#### What the dev split says\n" + "\n".join(reading(dev))
        )
