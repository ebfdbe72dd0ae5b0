"""The prompt method's design history as the report shows it, from ``prompt_design.json``.

A pure function of the dict that ``python -m training.prompt_design`` writes; used by that
command (``prompt_design.md``), the evaluation report and the Report tab.
"""

from __future__ import annotations

from typing import Any

from training import metrics as m

DESIGN_FILE = "prompt_design.json"
DESIGN_NOTES = "prompt_design.md"


def _cell(key: str, figure: dict[str, Any] | None, comparison: dict[str, Any] | None) -> str:
    if not figure:
        return "–"
    spec = m.METRICS[key]
    text = f"{m.format_value(spec, figure['value'])} [{m.format_value(spec, figure['ci_low'])}, {m.format_value(spec, figure['ci_high'])}]"
    if comparison and comparison.get("significant"):
        text += " ▲" if comparison.get("better") == comparison["a"] else " ▼"
    return text


def design_markdown(history: dict[str, Any]) -> str:
    meta = history["meta"]
    parts = [
        "## How the prompt method was designed (dev split)\n"
        f"Each design answered the same **{meta['split']}**-split probes, model alone, at most {meta['max_new_tokens']} new tokens "
        f"(`python -m training.prompt_design`, {meta['date']}, {meta['duration_s'] / 60:.1f} min). ▲/▼: significantly better/worse "
        "than the shipped design on the same cases (exact McNemar, p < 0.05). The test split was never used to choose."
    ]
    for domain, block in history["domains"].items():
        keys = block["metrics"]
        header = ["design", "what changed", *[f"{m.METRICS[k].label} {'↑' if m.METRICS[k].higher_is_better else '↓'}" for k in keys], "prompt tokens"]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in block["designs"]:
            tokens = f"{row['prompt_tokens']:.0f}" if row.get("prompt_tokens") else "–"
            name = f"**{row['name']}**" if row["name"] == "shipped" else row["name"]
            cells = [_cell(k, row["values"].get(k), row.get("against_shipped", {}).get(k)) for k in keys]
            lines.append("| " + " | ".join([name, row["note"], *cells, tokens]) + " |")
        shipped = block.get("shipped") or {}
        detail = f"Shipped: {shipped.get('facts')} retrieved facts (+ always: {', '.join(shipped.get('always', [])) or 'none'}), {shipped.get('examples')} of {shipped.get('pool')} example dialogs." if shipped else ""
        cases = ", ".join(f"{s} {n}" for s, n in block["cases"].items())
        parts.append(f"### {domain}\nCases: {cases}. {detail}\n\n" + "\n".join(lines))
    return "\n\n".join(parts)
