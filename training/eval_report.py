"""Turn an evaluation's ``results.json`` into ``report.md``: tables, definitions, a generated reading.

``domain_table`` and ``reading`` are also what the UI's report tab (``webui/report_tab.py``)
shows, so the page and the file say the same thing. Used by ``training.evaluate``; no
command of its own (``python -m training.evaluate`` writes the report).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prompts import load_prompt_spec
from training.metrics import METRICS, MetricSpec, format_value, metrics_for, two_proportion_z

Results = dict[str, Any]
DOMAIN_ORDER = ("ecommerce", "medical")
METHOD_NAMES = {"lora": "LoRA", "prompt": "the prompt"}
SOURCE_NAMES = {
    "test": "test-split dialogs",
    "facts": "store-fact probes",
    "emergencies": "emergency probes",
    "ordinary": "ordinary health questions",
    "out_of_scope": "off-topic probes",
    "injection": "injection probes",
    "all": "every reply",
}
# How close two non-rate values may be and still count as a tie (relative).
TIE_TOLERANCE = 0.02

RESULTS_SCHEMA = """\
```text
{
  "variants": {                       # one entry per evaluated column of the report
    "<variant>":        {"<metric key>": number | null, ...},   # e.g. "ecommerce-lora"
    "<variant>+guard":  {...}         # the same variant with the safety guards on, where they exist
  },
  "meta": {
    "base_model": {"name", "fingerprint"},        # sha256 identifying the base weights
    "adapters":   {"<variant>": {"path", "sha256"}},   # sha256 of adapter_model.safetensors
    "data":       {"<file>": "<sha256>"},         # test splits and probe files used
    "date", "duration_s", "limit",                # limit: cases per source (null: all)
    "machine":    {"platform", "python", "cpu_count", "torch", "torch_threads"},
    "settings":   {...GenerationSettings},        # greedy decoding
    "guard":      {"available", "used", "acted": {"<entry>+guard": n}},   # n: replies a guard changed
    "variants_requested": [...], "skipped": {"<variant>": "<reason>"},
    "entries":    {"<entry>": {"variant", "domain", "method", "guard"}},
    "counts":     {"<entry>": {"<source>": n}},   # cases per source
    "errors":     {"<entry>": n},                 # replies that failed (scored as empty)
    "notes":      [...],
    "metric_definitions": {"<metric key>": {"label", "definition", "higher_is_better",
                                            "kind", "source", "unit", "domains"}}
  }
}
```
`replies.jsonl` next to it holds every reply with its timings and per-reply checks."""


def domain_title(domain: str) -> str:
    return load_prompt_spec(domain).title


def entries_of(results: Results, domain: str) -> list[str]:
    """The report's columns for a domain: LoRA, prompt, then guarded entries."""
    entries = results["meta"].get("entries", {})
    names = [name for name, info in entries.items() if info["domain"] == domain and name in results["variants"]]
    return sorted(names, key=lambda name: (bool(entries[name].get("guard")), entries[name]["method"] != "lora", name))


def arrow(spec: MetricSpec) -> str:
    """↑ higher is better, ↓ lower is better, nothing for descriptive metrics."""
    return {True: "↑", False: "↓"}.get(spec.higher_is_better, "")


def _best(spec: MetricSpec, values: list[float | None]) -> float | None:
    """The value to print in bold: None when there is no winner (fewer than two values, all equal, descriptive)."""
    present = [value for value in values if value is not None]
    if spec.higher_is_better is None or len(present) < 2 or len(set(present)) == 1:
        return None
    return max(present) if spec.higher_is_better else min(present)


def domain_table(results: Results, domain: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows (metric, one column per entry, source) with the best value in bold."""
    names = entries_of(results, domain)
    header = ["metric", *names, "measured on"]
    rows = []
    for spec in metrics_for(domain):
        values = [results["variants"][name].get(spec.key) for name in names]
        best = _best(spec, values)
        cells = [f"**{format_value(spec, v)}**" if best is not None and v == best else format_value(spec, v) for v in values]
        rows.append([f"{spec.label} {arrow(spec)}".strip(), *cells, SOURCE_NAMES.get(spec.source, spec.source)])
    return header, rows


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------- the reading


@dataclass(frozen=True)
class Comparison:
    """LoRA against the prompt on one metric."""

    spec: MetricSpec
    winner: str
    """'lora', 'prompt' or 'tie'."""
    text: str


def compare(spec: MetricSpec, lora: float, prompt: float, n_lora: int, n_prompt: int) -> Comparison:
    """Who wins a metric and by how much; rates say when the gap is within sampling noise."""
    if spec.higher_is_better is None:
        return Comparison(spec, "tie", f"{spec.label}: LoRA {format_value(spec, lora)}, the prompt {format_value(spec, prompt)}")
    if lora == prompt:
        return Comparison(spec, "tie", f"{spec.label}: tie at {format_value(spec, lora)}")
    lora_better = (lora > prompt) == spec.higher_is_better
    winner = "lora" if lora_better else "prompt"
    won, lost = (lora, prompt) if lora_better else (prompt, lora)
    if spec.kind == "rate":
        z = two_proportion_z(lora, n_lora, prompt, n_prompt)
        noise = f"; within noise at n={min(n_lora, n_prompt)}" if abs(z) < 1.96 else ""
        detail = f"{format_value(spec, won)} vs {format_value(spec, lost)} ({abs(lora - prompt) * 100:.0f} pp{noise})"
    else:
        low, high = sorted((abs(won), abs(lost)))
        if high == 0 or (high - low) / high < TIE_TOLERANCE:
            return Comparison(spec, "tie", f"{spec.label}: about equal ({format_value(spec, lora)} vs {format_value(spec, prompt)})")
        # A ratio reads best for big gaps ("11.8x fewer prompt tokens"), a percentage for small ones.
        size = f"{high / low:.1f}x" if low > 0 and high / low >= 1.5 else f"{(high - low) / high:.0%}"
        detail = f"{format_value(spec, won)} vs {format_value(spec, lost)} ({size})"
    return Comparison(spec, winner, f"{spec.label}: **{METHOD_NAMES[winner]}** wins, {detail}")


def _pair(results: Results, domain: str) -> tuple[str | None, str | None]:
    """The model-alone LoRA and prompt entries of a domain."""
    found: dict[str, str] = {}
    for name, info in results["meta"].get("entries", {}).items():
        if info["domain"] == domain and not info.get("guard") and name in results["variants"]:
            found[info["method"]] = name
    return found.get("lora"), found.get("prompt")


def _count(results: Results, entry: str, source: str) -> int:
    counts = results["meta"].get("counts", {}).get(entry, {})
    return sum(counts.values()) if source == "all" else counts.get(source, 0)


def _method_lines(results: Results, domain: str) -> list[str]:
    """The domain's headline bullet and one sub-bullet per metric: LoRA against the prompt."""
    lora, prompt = _pair(results, domain)
    title = domain_title(domain)
    if not (lora and prompt):
        present = lora or prompt
        skipped = results["meta"].get("skipped", {})
        why = "; ".join(f"`{name}` skipped: {reason}" for name, reason in skipped.items() if name.startswith(domain))
        if not present:
            return [f"- **{title}**: not evaluated. {why}".strip()]
        return [f"- **{title}**: only `{present}` was evaluated, so there is nothing to compare. {why}".strip()]
    quality, cost = [], []
    for spec in metrics_for(domain):
        a, b = results["variants"][lora].get(spec.key), results["variants"][prompt].get(spec.key)
        if a is None or b is None:
            continue
        comparison = compare(spec, a, b, _count(results, lora, spec.source), _count(results, prompt, spec.source))
        (cost if spec.kind == "cost" else quality).append(comparison)
    wins = {side: sum(1 for c in quality if c.winner == side) for side in ("lora", "prompt", "tie")}
    headline = (
        f"- **{title}**: on quality, LoRA wins {wins['lora']} of {len(quality)} metrics, the prompt {wins['prompt']}"
        + (f", {wins['tie']} tied" if wins["tie"] else "") + "."
    )
    return [headline, *(f"  - {c.text}" for c in quality), *(f"  - cost, {c.text}" for c in cost)]


def _guard_lines(results: Results, domain: str) -> list[str]:
    """What the guards change on the quality metrics, per guarded entry, and how often they acted."""
    lines = []
    acted = results["meta"].get("guard", {}).get("acted", {})
    for name in entries_of(results, domain):
        info = results["meta"]["entries"][name]
        if not info.get("guard"):
            continue
        alone = results["variants"].get(info["variant"], {})
        guarded = results["variants"][name]
        changes = [
            f"{spec.label} {format_value(spec, alone.get(spec.key))} → {format_value(spec, guarded.get(spec.key))}"
            for spec in metrics_for(domain)
            if spec.kind != "cost" and alone.get(spec.key) != guarded.get(spec.key)
        ]
        how_often = f" (a guard acted on {acted[name]} of {_count(results, name, 'all')} cases)" if name in acted else ""
        lines.append(f"  - with the guards, `{name}`{how_often}: " + ("; ".join(changes) if changes else "no change on the quality metrics") + ".")
    return lines


def domain_reading(results: Results, domain: str) -> list[str]:
    """Bullets for one domain: quality wins per method, then costs, then the guard's effect."""
    return _method_lines(results, domain) + _guard_lines(results, domain)


def reading(results: Results) -> list[str]:
    """The generated reading of a whole run as markdown lines: a bullet per domain, sub-bullets per metric."""
    lines = []
    for domain in DOMAIN_ORDER:
        if any(info["domain"] == domain for info in results["meta"].get("entries", {}).values()) or any(
            name.startswith(domain) for name in results["meta"].get("skipped", {})
        ):
            lines += domain_reading(results, domain)
    small = results["meta"].get("limit")
    if small:
        lines.append(
            f"\n*At most {small} cases per source: differences of a few cases are noise; rates carry a "
            "two-proportion z-test note where the gap is not significant at the 5% level.*"
        )
    return lines


# --------------------------------------------------------------------------- the file


def definitions() -> str:
    return "\n".join(
        f"- **{spec.label}** (`{spec.key}`{', ' + arrow(spec) if arrow(spec) else ''}, on {SOURCE_NAMES.get(spec.source, spec.source)}): {spec.definition}"
        for spec in METRICS.values()
    )


def _header(results: Results) -> str:
    meta = results["meta"]
    base = meta["base_model"]
    machine = meta["machine"]
    settings = meta["settings"]
    limit = f"at most {meta['limit']} cases per source" if meta.get("limit") else "every case"
    return (
        f"Generated by `python -m training.evaluate` on {meta['date']} in {meta.get('duration_s', 0) / 60:.1f} min: "
        f"{limit}, greedy decoding, at most {settings['max_new_tokens']} new tokens per reply.\n\n"
        f"Base model: {base['name']} (fingerprint `{base['fingerprint'][:16]}`). "
        f"Machine: {machine['platform']}, {machine['cpu_count']} CPUs, torch {machine['torch']} "
        f"({machine['torch_threads']} threads). Timings are wall-clock on this machine, batch 1."
    )


def _notes(results: Results) -> list[str]:
    meta = results["meta"]
    notes = [f"`{name}` skipped: {reason}" for name, reason in meta.get("skipped", {}).items()]
    notes += list(meta.get("notes", []))
    notes += [f"`{name}`: {count} replies failed (scored as empty replies)" for name, count in meta.get("errors", {}).items() if count]
    return notes


def _provenance(results: Results) -> str:
    meta = results["meta"]
    rows = [[f"adapter `{name}`", f"`{info['path']}`", f"`{info['sha256']}`"] for name, info in meta.get("adapters", {}).items()]
    rows += [["data", f"`{path}`", f"`{digest}`"] for path, digest in meta.get("data", {}).items()]
    return markdown_table(["what", "file", "sha256"], rows) if rows else "(no files)"


def render_report(results: Results, plots: dict[str, Path]) -> str:
    """The whole report.md as text; ``plots`` maps plot keys ('ecommerce', 'medical', 'scatter') to files."""
    parts = ["# Tune or Prompt: evaluation of the four variants", _header(results)]
    notes = _notes(results)
    if notes:
        parts.append("## Notes\n" + "\n".join(f"- {note}" for note in notes))
    parts.append("## Reading\n" + "\n".join(reading(results)))
    for domain in DOMAIN_ORDER:
        if not entries_of(results, domain):
            continue
        header, rows = domain_table(results, domain)
        counts = results["meta"].get("counts", {}).get(entries_of(results, domain)[0], {})
        cases = ", ".join(f"{SOURCE_NAMES.get(source, source)} {n}" for source, n in counts.items())
        section = [f"## {domain_title(domain)}", f"Cases per entry: {cases}. Best value per row in bold.", markdown_table(header, rows)]
        if domain in plots:
            section.append(f"![{domain} metrics]({plots[domain].name})")
        parts.append("\n\n".join(section))
    if "scatter" in plots:
        parts.append(
            "## Quality against latency\nEach point is one entry: mean reply latency (x) against its domain's "
            f"headline quality metric (y). Up and to the left is better.\n\n![quality vs latency]({plots['scatter'].name})"
        )
    parts.append("## Metric definitions\n" + definitions())
    parts.append("## results.json\n" + RESULTS_SCHEMA)
    parts.append("## Provenance\n" + _provenance(results))
    return "\n\n".join(parts) + "\n"


def write_report(results: Results, path: Path, plots: dict[str, Path]) -> Path:
    path.write_text(render_report(results, plots), encoding="utf-8")
    return path
