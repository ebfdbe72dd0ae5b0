"""The data-efficiency curve as the report shows it: a markdown section and a plot, from ``data_curve.json``.

Pure functions of the curve dict that ``python -m training.data_curve`` writes; used by that
command, by the evaluation report (training/report_sections.py) and by the Report tab.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from training import metrics as m
from training import stats

CURVE_FILE = "data_curve.json"
CURVE_PLOT = "data_curve.png"


def crossover(domain_curve: dict[str, Any], key: str) -> str:
    """One line: from how many dialogs LoRA is significantly better than the prompt on ``key``."""
    label = m.METRICS[key].label
    verdicts = [(point["dialogs"], (point["against_prompt"].get(key) or {}).get("better")) for point in domain_curve["points"]]
    better = [n for n, who in verdicts if who is not None and who != domain_curve["reference"]["prompt"]["variant"]]
    worse = [n for n, who in verdicts if who == domain_curve["reference"]["prompt"]["variant"]]
    if better:
        return f"{label}: LoRA is significantly better than the prompt from {min(better)} dialogs on" + (f" (worse at {', '.join(map(str, worse))})" if worse else "")
    if worse:
        return f"{label}: LoRA is significantly worse than the prompt at {', '.join(map(str, worse))} dialogs, and better at none"
    return f"{label}: no size differs significantly from the prompt (p ≥ {stats.ALPHA})"


def _cell(spec: m.MetricSpec, figure: dict[str, Any] | None) -> str:
    if not figure:
        return "–"
    return f"{m.format_value(spec, figure['value'])} [{m.format_value(spec, figure['ci_low'])}, {m.format_value(spec, figure['ci_high'])}]"


def curve_markdown(curve: dict[str, Any], plot: str | None = CURVE_PLOT) -> str:
    """The report section: per domain a table (dialogs × metrics, training cost) and the crossover reading."""
    meta = curve["meta"]
    parts = [
        "## Data efficiency: how much data LoRA needs\n"
        f"LoRA adapters trained on the first N training dialogs (same config and epochs; the shipped adapter is the last "
        f"point), scored on the **{meta['split']}** split's probes, model alone, at most {meta['max_new_tokens']} new tokens; the "
        f"prompt variant and the control on the same cases. Paired with the prompt by case (exact McNemar). Built by "
        f"`python -m training.data_curve` on {meta['date']} in {meta['duration_s'] / 60:.1f} min (training of new points included)."
    ]
    for domain, block in curve["domains"].items():
        specs = [m.METRICS[key] for key in block["metrics"]]
        header = ["training dialogs", "tokens per pass", *[f"{s.label} {'↑' if s.higher_is_better else '↓'}" for s in specs], "training min", "peak memory"]
        rows = []
        for point in block["points"]:
            label = f"{point['dialogs']} (shipped)" if point["shipped"] else str(point["dialogs"])
            cost = f"{point['train_minutes']:.1f}" if point.get("train_minutes") else "–"
            memory = f"{point['peak_rss_mb']:.0f} MB" if point.get("peak_rss_mb") else "–"
            rows.append([label, f"{point['train_tokens']:,}" if point.get("train_tokens") else "–", *[_cell(s, point["values"].get(s.key)) for s in specs], cost, memory])
        for method, reference in block["reference"].items():
            rows.append([f"`{reference['variant']}` ({method}, no training)", "0", *[_cell(s, reference["values"].get(s.key)) for s in specs], "0", "–"])
        cases = ", ".join(f"{source} {n}" for source, n in block["cases"].items())
        lines = [f"- {crossover(block, key)}" for key in block["metrics"]]
        parts.append(f"### {domain}\nCases: {cases}.\n\n" + _table(header, rows) + "\n\n" + "\n".join(lines))
    if plot:
        parts.append(f"![data efficiency]({plot})")
    return "\n\n".join(parts)


def _table(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *["| " + " | ".join(row) + " |" for row in rows]])


def plot_curve(curve: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks = list(curve["domains"].items())
    columns = max(len(block["metrics"]) for _, block in blocks)
    figure, axes = plt.subplots(len(blocks), columns, figsize=(4.2 * columns, 3.4 * len(blocks)), squeeze=False)
    for row, (domain, block) in enumerate(blocks):
        for column in range(columns):
            axis = axes[row][column]
            if column >= len(block["metrics"]):
                axis.axis("off")
                continue
            spec = m.METRICS[block["metrics"][column]]
            points = [p for p in block["points"] if p["values"].get(spec.key)]
            xs = [p["dialogs"] for p in points]
            ys = [p["values"][spec.key]["value"] * 100 for p in points]
            errors = [[y - p["values"][spec.key]["ci_low"] * 100 for p, y in zip(points, ys, strict=True)], [p["values"][spec.key]["ci_high"] * 100 - y for p, y in zip(points, ys, strict=True)]]
            axis.errorbar(xs, ys, yerr=errors, marker="o", color="tab:orange", capsize=3, label="LoRA")
            for method, colour, style in (("prompt", "tab:blue", "-"), ("base", "tab:gray", "--")):
                figure_ = block["reference"].get(method, {}).get("values", {}).get(spec.key)
                if figure_:
                    axis.axhline(figure_["value"] * 100, color=colour, linestyle=style, label=f"{method} (no training)")
                    axis.axhspan(figure_["ci_low"] * 100, figure_["ci_high"] * 100, color=colour, alpha=0.12)
            axis.set_xscale("log")
            axis.set_xticks(xs, [str(x) for x in xs])
            axis.set_ylim(0, 100)
            axis.set_title(f"{domain}: {spec.label} {'↑' if spec.higher_is_better else '↓'}", fontsize=10)
            axis.set_xlabel("training dialogs")
            axis.set_ylabel("% of probes")
            if row == 0 and column == 0:
                axis.legend(fontsize=8, loc="best")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
