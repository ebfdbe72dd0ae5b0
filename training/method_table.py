"""The comparison table of the methods, measured row by row, per domain: one value per method.

Rows: scope (words, the only row not measured), data needed, model updates, adaptability,
performance, resources and cost per reply. Nothing is computed twice: each row is read from
what measured it:

- performance and prompt tokens: the evaluation (``results.json``; the model alone);
- data needed and model updates: the adapters' training logs and weights, and the prompt files;
- adaptability: the fact-drift test (``fact_drift_<domain>.json``) and the adapter's training time;
- resources: training time and peak memory from the training logs (or the data-efficiency
  curve's runs where an old log lacks the memory), and serving memory measured here: one
  fresh process per method loads the base and answers one message with that method's variants;
- time to first token and latency: measured in that same fresh process, one reply at a time
  (``TIMED_QUESTIONS`` test-split questions of each domain's bench probe source), because the
  evaluation's own timings are taken with many replies in flight and across resumed runs.

    python -m training.method_table                 # measure serving memory, write the table, refresh report.md
    python -m training.method_table --no-measure    # keep the memory figures of the last run

Writes ``training/reports/method_table.json`` (shown by the report and the Report tab).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import resource
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

import domains
from bots.bot import LoraBot
from bots.cli_args import CommandParser
from bots.registry import METHODS
from prompts import load_prompt_spec
from training import metrics as m
from training.curve_report import CURVE_FILE
from training.eval_data import PROBES_DIR, read_probe_file
from training.eval_report import domain_title
from training.method_table_report import TABLE_FILE, table_markdown
from training.report import LOG_FILE
from training.report_sections import load_section_data, rerender_report

REPO_ROOT = Path(__file__).resolve().parent.parent
REPORTS = Path(__file__).resolve().parent / "reports"
TABLE_CONFIG = Path(__file__).resolve().parent / "method_table.yaml"
ADAPTERS = REPO_ROOT / "bots" / "adapters"
MEMORY_MESSAGE = "How long do I have to return an item, and is it safe to take ibuprofen for a headache?"
MEMORY_TAG = "MEMORY "
TIMED_QUESTIONS = 4
"""Replies timed per variant in the serving process, one at a time (the median is reported)."""


@dataclass(frozen=True)
class TableConfig:
    scope: dict[str, str] = field(default_factory=dict)
    performance: dict[str, tuple[str, ...]] = field(default_factory=dict)


def load_table_config(path: Path = TABLE_CONFIG) -> TableConfig:
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    performance = {domain: tuple(keys) for domain, keys in (data.get("performance") or {}).items()}
    for domain, keys in performance.items():
        unknown = [key for key in keys if key not in m.METRICS or domain not in m.METRICS[key].domains]
        if unknown:
            raise ValueError(f"{path}: {domain} has no metric {', '.join(unknown)}")
    return TableConfig({str(k): str(v) for k, v in (data.get("scope") or {}).items()}, performance)


# --------------------------------------------------------------------------- serving memory


def timed_questions(domain: str, count: int = TIMED_QUESTIONS) -> list[str]:
    """The first ``count`` test-split questions of the domain's bench probe source (its pack says which)."""
    pack = domains.pack(domain)
    rows = read_probe_file(PROBES_DIR / pack.probe(pack.bench_probe_source).file, ("question", "split"))
    return [row["question"] for row in rows if row["split"] == "test"][:count]


def memory_child(method: str, max_new_tokens: int = 32) -> None:
    """In a fresh process: load the runtime, answer one message with every variant of ``method``
    (the warm-up), print the peak RSS; then time a few replies per variant, one at a time."""
    from statistics import median

    from bots.generation import GenerationSettings
    from bots.registry import get_runtime

    runtime = get_runtime()
    answered = []
    for name, bot in runtime.bots.items():
        if bot.spec.method == method and bot.availability.ok:
            bot.reply([{"role": "user", "content": MEMORY_MESSAGE}], GenerationSettings(max_new_tokens=32), guard=False)
            answered.append(name)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    timings = {}
    for name in answered:
        bot = runtime.bots[name]
        stats = [bot.reply([{"role": "user", "content": q}], GenerationSettings(max_new_tokens=max_new_tokens), guard=False).stats for q in timed_questions(bot.spec.domain)]
        timings[name] = {"replies": len(stats), "ttft_s": round(median(s.ttft_s for s in stats), 3), "latency_s": round(median(s.latency_s for s in stats), 3), "new_tokens": round(median(s.new_tokens for s in stats), 1)}
    figures = {"method": method, "answered": answered, "peak_rss_mb": round(peak, 1), "backend": runtime.backbone.backend, "max_new_tokens": max_new_tokens, "timings": timings}
    print(MEMORY_TAG + json.dumps(figures), flush=True)


def measure_serving_memory(methods: list[str], needs_adapters: set[str], run: Any = subprocess.run, max_new_tokens: int = 32) -> dict[str, dict[str, Any]]:
    """Peak resident memory of a process serving each method alone (adapters loaded only where the
    method uses them), and its variants' replies timed one at a time."""
    figures = {}
    with tempfile.TemporaryDirectory() as no_adapters:
        for method in methods:
            env = dict(os.environ)
            if method not in needs_adapters:
                env["TOP_ADAPTERS_DIR"] = no_adapters
            command = [sys.executable, "-m", "training.method_table", "--memory-child", method, "--max-new-tokens", str(max_new_tokens)]
            proc = run(command, env=env, capture_output=True, text=True, check=False, cwd=REPO_ROOT)
            lines = [line for line in proc.stdout.splitlines() if line.startswith(MEMORY_TAG)]
            if proc.returncode or not lines:
                raise RuntimeError(f"memory measurement of {method} failed: {proc.stderr[-1500:]}")
            figures[method] = json.loads(lines[-1][len(MEMORY_TAG) :])
    return figures


# --------------------------------------------------------------------------- the rows


def _adapter_folder(method: str, domain: str) -> str | None:
    """The method's adapter folder for the domain; None for a method without an adapter."""
    spec = METHODS.get(method)
    if spec is None or not issubclass(spec.bot_class, LoraBot):
        return None
    return spec.bot_class.adapter_folder_of(domain)


def _log(adapters_dir: Path, folder: str) -> dict[str, Any] | None:
    try:
        return json.loads((adapters_dir / folder / LOG_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _with_interval(results: dict[str, Any], entry: str, key: str, digits: int | None = None) -> str:
    """The value with its 95% interval; ``digits``: plain numbers (the caller names the unit)."""
    spec = m.METRICS[key]
    show = (lambda v: f"{v:.{digits}f}") if digits is not None else (lambda v: m.format_value(spec, v))
    figure = results.get("intervals", {}).get(entry, {}).get(key)
    if not figure:
        value = results["variants"].get(entry, {}).get(key)
        return "–" if value is None else show(value)
    return f"{show(figure['value'])} [{show(figure['ci_low'])}, {show(figure['ci_high'])}]"


def _wins_over_control(results: dict[str, Any], domain: str, variant: str, control: str | None) -> str:
    if control is None or variant == control:
        return ""
    quality = [s.key for s in m.metrics_for(domain) if s.higher_is_better is not None and s.kind in ("rate", "score")]
    rows = [r for r in results.get("comparisons", {}).get(domain, []) if {r["a"], r["b"]} == {variant, control} and r["metric"] in quality]
    wins = sum(1 for r in rows if r["better"] == variant)
    losses = sum(1 for r in rows if r["better"] == control)
    return f" Measured: better than the control on {wins} of {len(rows)} quality metrics, worse on {losses} (paired, p < 0.05)."


def _training_time(log: dict[str, Any]) -> str:
    """Wall-clock minutes, and CPU minutes where the log has them: a run paused for a quiet
    benchmark shows a wall time well above its CPU time over its threads."""
    wall = f"{log['train_seconds'] / 60:.1f} min"
    cpu = log.get("train_cpu_seconds")
    return f"{wall} ({cpu / 60:.0f} CPU-min)" if cpu else wall


def _peak_training_memory(log: dict[str, Any] | None, curve: dict[str, Any] | None, domain: str) -> str:
    if log and log.get("peak_rss_mb"):
        return f"peak {log['peak_rss_mb']:.0f} MB"
    points = [p for p in ((curve or {}).get("domains", {}).get(domain, {}).get("points", [])) if p.get("peak_rss_mb")]
    if points:
        largest = max(points, key=lambda p: p["dialogs"])
        return f"peak {largest['peak_rss_mb']:.0f} MB (measured on the curve's {largest['dialogs']}-dialog run: batches, not dialogs, set it)"
    return "peak memory not recorded"


def domain_rows(
    domain: str,
    results: dict[str, Any],
    config: TableConfig,
    adapters_dir: Path,
    reports_dir: Path,
    memory: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    entries = results["meta"]["entries"]
    variants = {info["method"]: name for name, info in entries.items() if info["domain"] == domain and not info.get("guard")}
    methods = [method for method in ("lora", "prompt", "base", "hybrid") if method in variants] + sorted(set(variants) - {"lora", "prompt", "base", "hybrid"})
    control = variants.get("base")
    folders = {method: _adapter_folder(method, domain) for method in methods}
    logs = {method: _log(adapters_dir, folder) for method, folder in folders.items() if folder}
    prompt = load_prompt_spec(domain)
    drift = load_section_data(reports_dir, f"fact_drift_{domain}.json")
    curve = load_section_data(reports_dir, CURVE_FILE)
    trains = set(logs)

    def value(method: str, fn: Any) -> str:
        return fn(method, variants[method])

    rows: list[dict[str, Any]] = []

    def add(row: str, fn: Any) -> None:
        rows.append({"row": row, "values": {method: value(method, fn) for method in methods}})

    add("scope", lambda method, name: config.scope.get(method, "–") + _wins_over_control(results, domain, name, control))

    retrieval = prompt.retrieval
    retrieved = (
        f"up to {retrieval.settings.facts} facts retrieved from a {len(prompt.fact_sheet)}-line fact sheet"
        + (f" (and always {', '.join(retrieval.settings.always)})" if retrieval.settings.always else "")
        if retrieval
        else ""
    )
    in_prompt = {
        "lora": "no facts or examples in the prompt",
        "hybrid": f"{retrieved} in every request, no examples",
        "prompt": f"{retrieved} and {retrieval.settings.examples} of {len(retrieval.example_pool)} example dialogs, selected by similarity, in every request" if retrieval else "",
        "static": f"{len(prompt.few_shot)} few-shot dialogs and the whole {len(prompt.fact_sheet)}-line fact sheet in every request",
    }

    def data_needed(method: str, name: str) -> str:
        if method in trains and (log := logs[method]):
            tokens = (log.get("epochs") or [{}])[0].get("train_tokens")
            return f"{log['split_sizes']['train']} training dialogs, {tokens:,} tokens per pass × {len(log.get('epochs', []))} epochs; {in_prompt.get(method, '')}"
        if in_prompt.get(method):
            return f"no training data; {in_prompt[method]}"
        return "none"

    add("data needed", data_needed)

    def updates(method: str, name: str) -> str:
        if method in trains and (log := logs[method]):
            weights = adapters_dir / folders[method] / "adapter_model.safetensors"
            share = 100 * log["trainable_parameters"] / log["total_parameters"]
            return f"{log['trainable_parameters'] / 1e6:.2f} M trainable parameters ({share:.1f}% of {log['total_parameters'] / 1e6:.0f} M); adapter {weights.stat().st_size / 1e6:.1f} MB"
        return "0: the base weights are untouched"

    add("model updates", updates)

    def adaptability(method: str, name: str) -> str:
        row = (drift or {}).get("variants", {}).get(name)
        if not row:
            return "not measured (no fact-drift result)"
        new, old = row["new_value"], row["old_value"]
        text = f"after {len(drift['changes'])} changed fact(s): new value in {new['hits']}/{new['n']} = {new['value']:.0%} [{new['ci_low']:.0%}, {new['ci_high']:.0%}], old value still in {old['hits']}/{old['n']}"
        if method in trains and (log := logs[method]):
            text += f"; retraining to catch up: {_training_time(log)}"
        return text

    add("adaptability", adaptability)
    add("performance", lambda method, name: "; ".join(f"{m.METRICS[k].label} {_with_interval(results, name, k)}" for k in config.performance.get(domain, ())))

    def resources(method: str, name: str) -> str:
        serving = memory.get(method)
        serve = f"serving: peak {serving['peak_rss_mb']:.0f} MB" if serving else "serving memory not measured"
        if method in trains and (log := logs[method]):
            return f"training: {_training_time(log)} on {log['config'].get('threads')} CPU threads, {_peak_training_memory(log, curve, domain)}; {serve}"
        return f"training: none; {serve}"

    add("resources", resources)
    def cost(method: str, name: str) -> str:
        tokens = f"{_with_interval(results, name, 'prompt_tokens', 0)} prompt tokens"
        timed = ((memory.get(method) or {}).get("timings") or {}).get(name)
        if not timed:
            return f"{tokens}; time to first token and latency not measured one at a time"
        return (
            f"{tokens}; one reply at a time: time to first token {timed['ttft_s']:.2f} s, "
            f"latency {timed['latency_s']:.2f} s for {timed['new_tokens']:.0f} new tokens (median of {timed['replies']})"
        )

    add("cost per reply", cost)
    notes = []
    if memory:
        backend = next(iter(memory.values())).get("backend")
        notes.append(f"Serving memory: peak RSS of a fresh {backend} process that loads the base (and the adapters only where the method uses them) and answers one message with each variant of the method; the KV cache is allocated up front, so a longer prompt costs cache cells, not more memory.")
        notes.append(f"Cost per reply: prompt tokens from this report; time to first token and latency timed in that fresh process, one reply at a time, on {TIMED_QUESTIONS} test-split questions per variant (the report's own timings are taken with several replies in flight).")
    if drift:
        notes.append("Adaptability: " + "; ".join(change["name"] for change in drift["changes"]) + f" (`python -m training.fact_drift --domain {domain}`), model alone.")
    return {"title": domain_title(domain), "methods": methods, "variants": {k: variants[k] for k in methods}, "rows": rows, "notes": notes}


def build_table(results: dict[str, Any], config: TableConfig, adapters_dir: Path, reports_dir: Path, memory: dict[str, dict[str, Any]]) -> dict[str, Any]:
    domains = list(dict.fromkeys(info["domain"] for info in results["meta"]["entries"].values()))
    meta = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "results_date": results["meta"].get("date"),
        "split": results["meta"].get("split", "test"),
        "memory": memory,
    }
    return {"meta": meta, "domains": {d: domain_rows(d, results, config, adapters_dir, reports_dir, memory) for d in domains}}


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(prog="python -m training.method_table", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPORTS, help="the report folder with results.json (default: training/reports/)")
    parser.add_argument("--adapters-dir", type=Path, default=ADAPTERS, help="the shipped adapters (default: bots/adapters)")
    parser.add_argument("--config", type=Path, default=TABLE_CONFIG)
    parser.add_argument("--no-measure", action="store_true", help="reuse the serving-memory figures of the last table")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="reply length of the timed replies (default: the report's)")
    parser.add_argument("--memory-child", default=None, help=argparse_hidden())
    args = parser.parse_args(argv)
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        parser.error("--max-new-tokens must be at least 1")
    if args.memory_child:
        memory_child(args.memory_child, args.max_new_tokens or 32)
        return 0
    results = load_section_data(args.out, "results.json")
    if results is None:
        parser.error(f"no readable {args.out / 'results.json'}: run python -m training.evaluate first")
    try:
        config = load_table_config(args.config)
    except (OSError, ValueError) as exc:
        parser.error(str(exc))
    methods = list(dict.fromkeys(info["method"] for info in results["meta"]["entries"].values()))
    if args.no_measure:
        memory = ((load_section_data(args.out, TABLE_FILE) or {}).get("meta") or {}).get("memory", {})
    else:
        reply_length = args.max_new_tokens or int((results["meta"].get("settings") or {}).get("max_new_tokens", 64))
        memory = measure_serving_memory(methods, needs_adapters={"lora", "hybrid"}, max_new_tokens=reply_length)
    table = build_table(results, config, args.adapters_dir, args.out, memory)
    (args.out / TABLE_FILE).write_text(json.dumps(table, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    rerender_report(args.out)
    print(table_markdown(table))
    return 0


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    sys.exit(main())
