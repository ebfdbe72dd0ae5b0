"""The evaluation's PNG plots: per-metric bar charts by variant for each domain, and quality vs latency, with 95% error bars.

``write_plots(results, out_dir)`` draws from a results dict (the content of ``results.json``)
and returns ``{"ecommerce": path, "medical": path, "scatter": path}`` for the domains present.
Used by ``training.evaluate``; no command of its own.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402

import domains  # noqa: E402
from training.eval_report import DOMAIN_ORDER, arrow, domain_title, entries_of, interval_of  # noqa: E402
from training.metrics import format_value, metrics_for  # noqa: E402

Results = dict[str, Any]
METHOD_COLOURS = {"lora": "tab:orange", "hybrid": "tab:red", "prompt": "tab:blue", "base": "tab:gray", "static": "tab:cyan"}
HEADLINE = {name: domains.pack(name).headline_metric for name in domains.names()}
"""The metric each domain's plot leads with (its pack's ``headline_metric``)."""
"""The quality metric each domain is mostly about (the scatter's y axis)."""
COLUMNS = 5


def _style(results: Results, entry: str) -> dict[str, Any]:
    info = results["meta"]["entries"][entry]
    return {"color": METHOD_COLOURS.get(info["method"], "grey"), "hatch": "//" if info.get("guard") else None, "edgecolor": "black", "linewidth": 0.5}


def _error(results: Results, entry: str, key: str, value: float | None, scale: float) -> list[list[float]] | None:
    """matplotlib's asymmetric error: [[below], [above]] of the 95% interval, None without one."""
    interval = interval_of(results, entry, key)
    if value is None or not interval:
        return None
    return [[max(0.0, value - interval["ci_low"]) * scale], [max(0.0, interval["ci_high"] - value) * scale]]


def plot_domain(results: Results, domain: str, path: Path) -> Path:
    """One small bar chart per metric of the domain, one bar per entry with its 95% interval; the arrow says which way is better."""
    names = entries_of(results, domain)
    specs = metrics_for(domain)
    rows = math.ceil(len(specs) / COLUMNS)
    figure, axes = plt.subplots(rows, COLUMNS, figsize=(3.0 * COLUMNS, 2.9 * rows), dpi=100, squeeze=False)
    for axis, spec in zip(axes.flat, specs, strict=False):
        values = [results["variants"][name].get(spec.key) for name in names]
        scale = 100 if spec.kind == "rate" else 1
        for index, (name, value) in enumerate(zip(names, values, strict=True)):
            height = 0.0 if value is None else value * scale
            error = _error(results, name, spec.key, value, scale)
            axis.bar(index, height, yerr=error, capsize=2, error_kw={"elinewidth": 0.8, "ecolor": "black"}, **_style(results, name))
            top = height + (error[1][0] if error else 0.0)
            axis.text(index, top, format_value(spec, value), ha="center", va="bottom", fontsize=7)
        axis.set_title(f"{spec.label} {arrow(spec)}".strip(), fontsize=9)
        axis.set_xticks(range(len(names)), [name.replace(f"{domain}-", "") for name in names], fontsize=7, rotation=30, ha="right")
        axis.tick_params(axis="y", labelsize=7)
        if spec.kind == "rate":
            axis.set_ylim(0, 118)
            axis.set_ylabel("%", fontsize=7)
        else:
            axis.margins(y=0.2)
        axis.grid(axis="y", alpha=0.3)
    for axis in list(axes.flat)[len(specs):]:
        axis.axis("off")
    figure.suptitle(f"{domain_title(domain)}: LoRA (orange), prompt (blue), base control (grey); hatched = with guard; bars: 95% intervals", fontsize=11)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def plot_quality_vs_latency(results: Results, path: Path) -> Path:
    """Two panels, mean reply latency (x) against the domain's headline metric and against ROUGE-L F1 (y)."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=100)
    markers = {name: domains.pack(name).plot_marker for name in domains.names()}
    for name, values in results["variants"].items():
        info = results["meta"]["entries"][name]
        latency = values.get("latency_s")
        if latency is None:
            continue
        style = {"color": METHOD_COLOURS.get(info["method"], "grey"), "marker": markers.get(info["domain"], "o"), "s": 70, "edgecolors": "black"}
        if info.get("guard"):
            style["facecolors"] = "none"
            style["edgecolors"] = style.pop("color")
        for axis, key in ((left, HEADLINE[info["domain"]]), (right, "rouge_l_f1")):
            quality = values.get(key)
            if quality is None:
                continue
            error = _error(results, name, key, quality, 1.0)
            if error:
                axis.errorbar(latency, quality, yerr=error, fmt="none", ecolor="grey", elinewidth=0.8, capsize=2, zorder=1)
            axis.scatter(latency, quality, zorder=2, **style)
            axis.annotate(name, (latency, quality), fontsize=7, xytext=(5, 4), textcoords="offset points")
    left.set_ylabel("headline metric (share of probes)")
    left.set_title("fact accuracy (e-commerce) / escalation first (medical)", fontsize=9)
    left.set_ylim(-0.05, 1.1)
    right.set_ylabel("ROUGE-L F1 vs reference")
    right.set_title("similarity to the test-split reference answers", fontsize=9)
    for axis in (left, right):
        axis.set_xlabel("mean reply latency (s)")
        axis.grid(alpha=0.3)
        axis.margins(x=0.25)
    figure.suptitle("Quality against latency (orange LoRA, blue prompt, grey base; circle e-commerce, square medical; hollow = with guard)", fontsize=10)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def write_plots(results: Results, out_dir: Path) -> dict[str, Path]:
    plots: dict[str, Path] = {}
    for domain in DOMAIN_ORDER:
        if entries_of(results, domain):
            plots[domain] = plot_domain(results, domain, out_dir / f"metrics_{domain}.png")
    if results["variants"]:
        plots["scatter"] = plot_quality_vs_latency(results, out_dir / "quality_vs_latency.png")
    return plots
