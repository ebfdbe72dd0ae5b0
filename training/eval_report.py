"""Turn an evaluation's ``results.json`` into ``report.md``: tables with intervals, paired comparisons, a generated reading.

``domain_table``, ``comparison_table``, ``reading`` and ``run_summary`` are also what the UI's
report tab (``webui/report_tab.py``) shows, so the page and the file say the same thing. The
reading says a method *wins* only where the paired test finds the gap significant (p < 0.05).
A results file from before the paired statistics (no ``intervals``/``comparisons``) still
renders, without intervals and without claims of significance. Used by ``training.evaluate``;
no command of its own (``python -m training.evaluate`` writes the report).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import domains
from prompts import load_prompt_spec
from training.metrics import METRICS, MetricSpec, format_value, metrics_for
from training.stats import ALPHA, MIN_BOOTSTRAP_CASES

Results = dict[str, Any]
DOMAIN_ORDER = domains.names()
"""The report's domain order: the packs' (domains/)."""
METHOD_ORDER = ("lora", "hybrid", "prompt", "base", "static")
"""Report column order (bots.registry.METHODS, with hybrid beside LoRA); unknown methods go last."""
METHOD_NAMES = {"lora": "LoRA", "hybrid": "the hybrid", "prompt": "the prompt", "base": "the base model", "static": "the static prompt"}
CONTROL = "base"
SOURCE_NAMES = {
    "test": "held-out dialogs",
    "facts": "store-fact probes",
    "support": "support-intent probes",
    "emergencies": "emergency probes",
    "ordinary": "ordinary health questions",
    "out_of_scope": "off-topic probes",
    "injection": "injection probes",
    "all": "every reply",
}

RESULTS_SCHEMA = """\
```text
{
  "variants": {                       # one entry per evaluated column of the report
    "<variant>":        {"<metric key>": number | null, ...},   # e.g. "ecommerce-lora", "ecommerce-base"
    "<variant>+guard":  {...}         # the same variant with the safety guards on, where they exist
  },
  "intervals": {                      # the same values with their 95% interval and case count
    "<entry>": {"<metric key>": {"value", "ci_low", "ci_high", "n", "method": "wilson" | "bootstrap"} | null}
  },
  "comparisons": {                    # paired by case id: both entries answered the same cases
    "<domain>": [{"a", "b", "metric", "a_value", "b_value",
                  "difference",       # a_value - b_value on the paired cases
                  "ci_low", "ci_high",    # 95% paired bootstrap interval of the difference
                  "p_value", "significant",   # significant: p < 0.05
                  "test": "exact McNemar" | "paired bootstrap", "n",
                  "better": "<entry>" | null}, ...]   # the better side where significant
  },
  "meta": {
    "base_model": {"name", "fingerprint"},        # sha256 identifying the base weights
    "adapters":   {"<variant>": {"path", "sha256"}},   # sha256 of adapter_model.safetensors
    "data":       {"<file>": "<sha256>"},         # test splits and probe files used
    "date", "duration_s", "limit",                # limit: cases per source (null: all)
    "split":      "dev" | "test" | "all",         # which probes
    "backend":    "llamacpp" | "transformers" | ...,   # what generated the replies
    "parallel":   n,                              # replies in flight at once (timings include sharing the CPU)
    "perplexity": {"backend", "note"},            # whose logits (backend null: not computed)
    "control":    {"<domain>": "<domain>-base"},  # the bare base model with a one-line system prompt
    "statistics": {"rate_interval", "continuous_interval", "rate_test", "continuous_test", "alpha", "pairing"},
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
`replies.jsonl` next to it holds every reply with its timings, per-reply checks and per-case
scores (`rouge_l`, `reference_nll`, `reference_tokens`): the per-case outcomes the paired tests use."""


def domain_title(domain: str) -> str:
    return load_prompt_spec(domain).title


def _method_rank(method: str) -> int:
    return METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)


def entries_of(results: Results, domain: str) -> list[str]:
    """The report's columns for a domain: LoRA, prompt, base (the control), then the guarded entries."""
    entries = results["meta"].get("entries", {})
    names = [name for name, info in entries.items() if info["domain"] == domain and name in results["variants"]]
    return sorted(names, key=lambda name: (bool(entries[name].get("guard")), _method_rank(entries[name]["method"]), name))


def arrow(spec: MetricSpec) -> str:
    """↑ higher is better, ↓ lower is better, nothing for descriptive metrics."""
    return {True: "↑", False: "↓"}.get(spec.higher_is_better, "")


def _best(spec: MetricSpec, values: list[float | None]) -> float | None:
    """The value to print in bold: None when there is no winner (fewer than two values, all equal, descriptive)."""
    present = [value for value in values if value is not None]
    if spec.higher_is_better is None or len(present) < 2 or len(set(present)) == 1:
        return None
    return max(present) if spec.higher_is_better else min(present)


def _number(spec: MetricSpec, value: float) -> str:
    """A bound of an interval: like the value, without the unit."""
    if spec.kind == "rate":
        return f"{value:.0%}"
    text = format_value(spec, value)
    return text[: -len(spec.unit)].strip() if spec.unit and text.endswith(spec.unit) else text


def interval_of(results: Results, entry: str, key: str) -> dict[str, Any] | None:
    return (results.get("intervals", {}).get(entry) or {}).get(key)


def format_with_interval(spec: MetricSpec, value: float | None, interval: dict[str, Any] | None) -> str:
    """'53% [44%, 62%]', '0.213 [0.19, 0.24]'; the bare value when there is no interval."""
    if value is None or not interval:
        return format_value(spec, value)
    return f"{format_value(spec, value)} [{_number(spec, interval['ci_low'])}, {_number(spec, interval['ci_high'])}]"


def domain_table(results: Results, domain: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows (metric, one column per entry with its 95% interval, source) with the best value in bold."""
    names = entries_of(results, domain)
    header = ["metric", *names, "measured on"]
    rows = []
    for spec in metrics_for(domain):
        values = [results["variants"][name].get(spec.key) for name in names]
        best = _best(spec, values)
        cells = []
        for name, value in zip(names, values, strict=True):
            text = format_with_interval(spec, value, interval_of(results, name, spec.key))
            cells.append(f"**{text}**" if best is not None and value == best else text)
        rows.append([f"{spec.label} {arrow(spec)}".strip(), *cells, SOURCE_NAMES.get(spec.source, spec.source)])
    return header, rows


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------- comparisons


def format_p(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.3f}" if p < 0.01 else f"p={p:.2f}"


def format_difference(spec: MetricSpec, comparison: dict[str, Any]) -> str:
    """'+24 pp [12, 36]' for rates; '-0.41 s [-0.52, -0.30]' otherwise."""
    d, low, high = comparison["difference"], comparison["ci_low"], comparison["ci_high"]
    if spec.kind == "rate":
        return f"{d * 100:+.0f} pp [{low * 100:+.0f}, {high * 100:+.0f}]"
    unit = f" {spec.unit}" if spec.unit else ""
    return f"{_signed(spec, d)}{unit} [{_signed(spec, low)}, {_signed(spec, high)}]"


def _signed(spec: MetricSpec, value: float) -> str:
    text = _number(spec, abs(value))
    return ("-" if value < 0 and text.strip("0.") else "+") + text


def comparisons_of(results: Results, domain: str) -> list[dict[str, Any]]:
    return list(results.get("comparisons", {}).get(domain, []))


def find_comparison(results: Results, domain: str, a: str, b: str, key: str) -> dict[str, Any] | None:
    for row in comparisons_of(results, domain):
        if row["metric"] == key and {row["a"], row["b"]} == {a, b}:
            return row if row["a"] == a else _swapped(row)
    return None


def _swapped(row: dict[str, Any]) -> dict[str, Any]:
    return {
        **row, "a": row["b"], "b": row["a"], "a_value": row["b_value"], "b_value": row["a_value"],
        "difference": -row["difference"], "ci_low": -row["ci_high"], "ci_high": -row["ci_low"],
    }  # fmt: skip


def comparison_table(results: Results, domain: str) -> tuple[list[str], list[list[str]]]:
    """Every paired comparison of the domain: A, B, metric, difference with its interval, p, test, n."""
    header = ["A", "B", "metric", "A − B [95% CI]", "p", "test", "n", "better"]
    rows = []
    for row in comparisons_of(results, domain):
        spec = METRICS.get(row["metric"])
        if spec is None:
            continue
        p = format_p(row["p_value"])
        rows.append([
            f"`{row['a']}`", f"`{row['b']}`", spec.label, format_difference(spec, row),
            f"**{p}**" if row["significant"] else p, row["test"], str(row["n"]), f"`{row['better']}`" if row.get("better") else "–",
        ])  # fmt: skip
    return header, rows


# --------------------------------------------------------------------------- the reading


def _alone(results: Results, domain: str) -> dict[str, str]:
    """The model-alone entries of a domain, by method."""
    found: dict[str, str] = {}
    for name, info in results["meta"].get("entries", {}).items():
        if info["domain"] == domain and not info.get("guard") and name in results["variants"]:
            found[info["method"]] = name
    return found


def _count(results: Results, entry: str, source: str) -> int:
    counts = results["meta"].get("counts", {}).get(entry, {})
    return sum(counts.values()) if source == "all" else counts.get(source, 0)


def _verdict(spec: MetricSpec, results: Results, domain: str, a: str, b: str) -> tuple[str, str]:
    """(winner: 'a', 'b' or 'tie', the text) for A against B on one metric; 'wins' only where significant."""
    va, vb = results["variants"][a].get(spec.key), results["variants"][b].get(spec.key)
    info = results["meta"]["entries"]
    name_a, name_b = METHOD_NAMES.get(info[a]["method"], a), METHOD_NAMES.get(info[b]["method"], b)
    if va is None or vb is None:
        return "tie", f"{spec.label}: not measured for both"
    values = f"{format_value(spec, va)} vs {format_value(spec, vb)}"
    row = find_comparison(results, domain, a, b, spec.key)
    if spec.higher_is_better is None:
        return "tie", f"{spec.label}: {name_a} {format_value(spec, va)}, {name_b} {format_value(spec, vb)}"
    if row is None:
        return "tie", f"{spec.label}: {values} (no paired test in this results file)"
    detail = f"{format_difference(spec, row)}, {row['test']} {format_p(row['p_value'])}, n={row['n']}"
    if row["significant"] and row.get("better"):
        side = "a" if row["better"] == a else "b"
        winner = name_a if side == "a" else name_b
        return side, f"{spec.label}: **{winner[0].upper() + winner[1:]}** wins, {values} ({detail})"
    if va == vb:
        return "tie", f"{spec.label}: tie at {format_value(spec, va)} (n={row['n']})"
    if row["test"] == "paired bootstrap" and row["n"] < MIN_BOOTSTRAP_CASES:
        return "tie", f"{spec.label}: {values}, too few cases to test ({detail})"
    return "tie", f"{spec.label}: {values}, not a significant gap ({detail})"


def _method_lines(results: Results, domain: str) -> list[str]:
    """The domain's headline bullet and one sub-bullet per metric: LoRA against the prompt."""
    alone = _alone(results, domain)
    lora, prompt = alone.get("lora"), alone.get("prompt")
    title = domain_title(domain)
    if not (lora and prompt):
        present = list(alone.values())
        skipped = results["meta"].get("skipped", {})
        why = "; ".join(f"`{name}` skipped: {reason}" for name, reason in skipped.items() if name.startswith(domain))
        if not present:
            return [f"- **{title}**: not evaluated. {why}".strip()]
        shown = ", ".join(f"`{name}`" for name in present)
        return [f"- **{title}**: LoRA and the prompt are not both evaluated ({shown} only), so there is no method comparison. {why}".strip()]
    quality, cost = [], []
    for spec in metrics_for(domain):
        verdict = _verdict(spec, results, domain, lora, prompt)
        (cost if spec.kind == "cost" else quality).append(verdict)
    wins = {side: sum(1 for w, _ in quality if w == side) for side in ("a", "b", "tie")}
    headline = (
        f"- **{title}**, LoRA against the prompt: on quality, LoRA wins {wins['a']} of {len(quality)} metrics, "
        f"the prompt {wins['b']}, {wins['tie']} without a significant difference (p ≥ {ALPHA})."
    )
    return [headline, *(f"  - {text}" for _, text in quality), *(f"  - cost, {text}" for _, text in cost)]


def control_lines(results: Results, domain: str) -> list[str]:
    """What each method buys over the control (the bare base model), per quality metric."""
    alone = _alone(results, domain)
    control = alone.get(CONTROL)
    if not control:
        return []
    lines = []
    for method in METHOD_ORDER:
        name = alone.get(method)
        if method == CONTROL or not name:
            continue
        parts = []
        for spec in metrics_for(domain):
            if spec.kind == "cost" or spec.higher_is_better is None:
                continue
            row = find_comparison(results, domain, name, control, spec.key)
            if row is None:
                continue
            mark = " ✓" if row["significant"] and row.get("better") == name else " ✗" if row["significant"] else ""
            parts.append(f"{spec.label} {format_difference(spec, row)} {format_p(row['p_value'])}{mark}")
        if parts:
            lines.append(f"  - what {METHOD_NAMES.get(method, method)} (`{name}`) buys over the control `{control}`: " + "; ".join(parts) + ".")
    if lines:
        lines.append("    (✓ significantly better than the control, ✗ significantly worse; no mark: not significant)")
    return lines


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
        changes = []
        for spec in metrics_for(domain):
            if spec.kind == "cost" or alone.get(spec.key) == guarded.get(spec.key):
                continue
            row = find_comparison(results, domain, name, info["variant"], spec.key)
            significance = f" ({format_p(row['p_value'])})" if row else ""
            changes.append(f"{spec.label} {format_value(spec, alone.get(spec.key))} → {format_value(spec, guarded.get(spec.key))}{significance}")
        how_often = f" (a guard acted on {acted[name]} of {_count(results, name, 'all')} cases)" if name in acted else ""
        lines.append(f"  - with the guards, `{name}`{how_often}: " + ("; ".join(changes) if changes else "no change on the quality metrics") + ".")
    return lines


def domain_reading(results: Results, domain: str) -> list[str]:
    """Bullets for one domain: LoRA against the prompt, what each buys over the control, then the guard's effect."""
    return _method_lines(results, domain) + control_lines(results, domain) + _guard_lines(results, domain)


def reading(results: Results) -> list[str]:
    """The generated reading of a whole run as markdown lines: a bullet per domain, sub-bullets per metric."""
    lines = []
    for domain in DOMAIN_ORDER:
        if any(info["domain"] == domain for info in results["meta"].get("entries", {}).values()) or any(
            name.startswith(domain) for name in results["meta"].get("skipped", {})
        ):
            lines += domain_reading(results, domain)
    if "comparisons" in results:
        lines.append(
            f"\n*Paired by case: rates with an exact McNemar test, the rest with a paired bootstrap; a method **wins** only "
            f"where p < {ALPHA}. Intervals are 95% (Wilson for rates, bootstrap otherwise). With many comparisons, "
            "expect about one in twenty to pass by chance.*"
        )
    else:
        lines.append("\n*This results file has no paired statistics: the differences above carry no significance test.*")
    return lines


# --------------------------------------------------------------------------- the file


def definitions() -> str:
    return "\n".join(
        f"- **{spec.label}** (`{spec.key}`{', ' + arrow(spec) if arrow(spec) else ''}, on {SOURCE_NAMES.get(spec.source, spec.source)}): {spec.definition}"
        for spec in METRICS.values()
    )


def run_summary(results: Results) -> str:
    """Split, backend, perplexity source, parallelism and the control, in one paragraph (report and UI)."""
    meta = results["meta"]
    split = meta.get("split")
    split_text = {
        "dev": "the **dev** split of the probes and the validation dialogs",
        "test": "the **test** split of the probes and the test dialogs",
        "all": "**all** probes (dev and test) and both held-out dialog files",
    }.get(split or "", "the probes (split not recorded)")
    backend = meta.get("backend")
    parallel = meta.get("parallel")
    backend_text = f"Replies generated by the **{backend}** backend" if backend else "Backend not recorded"
    if parallel and parallel > 1:
        backend_text += f", {parallel} replies in flight at once (timings include sharing the CPU)"
    perplexity = meta.get("perplexity") or {}
    perplexity_text = f"Reference perplexity: {perplexity['note']}." if perplexity.get("note") else ""
    controls = ", ".join(f"`{name}`" for name in (meta.get("control") or {}).values())
    control_text = f" The control ({controls}) is the bare base model with a one-line system prompt: no facts, no adapter, no few-shot." if controls else ""
    return f"Cases: {split_text}. {backend_text}. {perplexity_text}{control_text}".strip()


def _header(results: Results) -> str:
    meta = results["meta"]
    base = meta["base_model"]
    machine = meta["machine"]
    settings = meta["settings"]
    limit = f"at most {meta['limit']} cases per source" if meta.get("limit") else "every case"
    taken = sum(((meta.get("reuse") or {}).get("replies") or {}).values())
    # A resumed run's minutes are only what it generated: say so where its time is given.
    reused = f" (this run; it took {taken} replies from earlier runs, see the notes)" if taken else ""
    return (
        f"Generated by `python -m training.evaluate` on {meta['date']} in {meta.get('duration_s', 0) / 60:.1f} min{reused}: "
        f"{limit}, greedy decoding, at most {settings['max_new_tokens']} new tokens per reply.\n\n"
        f"{run_summary(results)}\n\n"
        f"Base model: {base['name']} (fingerprint `{base['fingerprint'][:16]}`). "
        f"Machine: {machine['platform']}, {machine['cpu_count']} CPUs, torch {machine['torch']} "
        f"({machine['torch_threads']} threads). Timings are wall-clock on this machine."
    )


def stale_methods_note(meta: dict[str, Any]) -> str:
    """A warning when the run's methods are not today's: a variant name may since mean another method."""
    from bots.registry import METHODS

    if meta.get("methods") == list(METHODS):
        return ""
    then = ", ".join(meta.get("methods") or sorted({info["method"] for info in meta.get("entries", {}).values()}))
    return (
        f"**This run predates today's methods** (it had: {then}; today: {', '.join(METHODS)}). A variant may since "
        "have changed meaning (the static full-sheet prompt, once `<domain>-prompt`, is now `<domain>-static`): "
        "rerun `python -m training.evaluate` before reading its columns as today's methods."
    )


def _notes(results: Results) -> list[str]:
    meta = results["meta"]
    notes = [f"`{name}` skipped: {reason}" for name, reason in meta.get("skipped", {}).items()]
    notes += list(meta.get("notes", []))
    notes += [f"`{name}`: {count} replies failed (scored as empty replies)" for name, count in meta.get("errors", {}).items() if count]
    if meta.get("companion"):
        notes.append(meta["companion"])
    stale = stale_methods_note(meta)
    if stale:
        notes.append(stale)
    statistics = meta.get("statistics")
    if statistics:
        notes.append(
            f"Statistics: rates with a {statistics['rate_interval']}, compared by {statistics['rate_test']}; the other metrics with a "
            f"{statistics['continuous_interval']}, compared by {statistics['continuous_test']}. Significant: p < {statistics['alpha']}."
        )
    return notes


def _provenance(results: Results) -> str:
    meta = results["meta"]
    rows = [[f"adapter `{name}`", f"`{info['path']}`", f"`{info['sha256']}`"] for name, info in meta.get("adapters", {}).items()]
    rows += [["data", f"`{path}`", f"`{digest}`"] for path, digest in meta.get("data", {}).items()]
    return markdown_table(["what", "file", "sha256"], rows) if rows else "(no files)"


def render_report(results: Results, plots: dict[str, Path], extras: Sequence[str] = ()) -> str:
    """The whole report.md as text; ``plots`` maps plot keys ('ecommerce', 'medical', 'scatter') to files;
    ``extras`` are sections made elsewhere (training/report_sections.py), placed after the reading."""
    parts = ["# Tune or Prompt: evaluation of the variants", _header(results)]
    notes = _notes(results)
    if notes:
        parts.append("## Notes\n" + "\n".join(f"- {note}" for note in notes))
    parts.append("## Reading\n" + "\n".join(reading(results)))
    parts.extend(extras)
    for domain in DOMAIN_ORDER:
        if not entries_of(results, domain):
            continue
        header, rows = domain_table(results, domain)
        counts = results["meta"].get("counts", {}).get(entries_of(results, domain)[0], {})
        cases = ", ".join(f"{SOURCE_NAMES.get(source, source)} {n}" for source, n in counts.items())
        section = [
            f"## {domain_title(domain)}",
            f"Cases per entry: {cases}. Each value with its 95% interval; best value per row in bold.",
            markdown_table(header, rows),
        ]
        if domain in plots:
            section.append(f"![{domain} metrics]({plots[domain].name})")
        comparison_header, comparison_rows = comparison_table(results, domain)
        if comparison_rows:
            section.append(
                f"### Paired comparisons ({domain})\nA − B on the cases both answered; p in bold where significant (p < {ALPHA}).\n\n"
                + markdown_table(comparison_header, comparison_rows)
            )
        parts.append("\n\n".join(section))
    if "scatter" in plots:
        parts.append(
            "## Quality against latency\nEach point is one entry: mean reply latency (x) against its domain's "
            f"headline quality metric (y), with 95% intervals. Up and to the left is better.\n\n![quality vs latency]({plots['scatter'].name})"
        )
    parts.append("## Metric definitions\n" + definitions())
    parts.append("## results.json\n" + RESULTS_SCHEMA)
    parts.append("## Provenance\n" + _provenance(results))
    return "\n\n".join(parts) + "\n"


def write_report(results: Results, path: Path, plots: dict[str, Path], extras: Sequence[str] = ()) -> Path:
    path.write_text(render_report(results, plots, extras), encoding="utf-8")
    return path
