"""Evaluate the four variants on their domain's test split and probe sets; write a report.

    python -m training.evaluate                                   # every available variant
    python -m training.evaluate --variants ecommerce-prompt,medical-prompt --limit 3 --out /tmp/evaltest
    python -m training.evaluate --limit 12 --no-guard --max-new-tokens 128 --threads 2

Each selected variant answers greedily (reproducible) every case of its domain: the test split
(the dialog's last assistant turn is the reference, earlier turns are the history) and the
probe sets in ``training/probes/``. ``--limit N`` keeps N evenly spread cases per source, which
keeps a real-model run affordable on a CPU. A LoRA variant whose adapter is missing is skipped
with the reason in the report. Where the bots have safety guards (``Bot.stream(..., guard=)``:
emergency escalation first, canned replies to injections and off-topic requests), every variant
is reported twice: the model alone (``guard=False``) and ``<variant>+guard``; ``--no-guard``
keeps only the model alone. A guard that does not act leaves the reply unchanged (greedy
decoding), so such a reply is generated once and counted for both.

Writes into ``--out`` (default ``training/reports/``): ``results.json``, ``report.md``,
``replies.jsonl`` (every reply with its checks) and PNG plots. The metrics are defined in
``training.metrics``; the report in ``training.eval_report``; the plots in ``training.eval_plots``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import inspect
import json
import math
import os
import platform
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from bots.base_model import BaseModelSpec, file_sha256
from bots.bot import Bot
from bots.cli_args import CommandParser
from bots.conversation import clean_conversation
from bots.generation import GenerationSettings
from bots.registry import VARIANTS, Runtime, get_runtime
from training import metrics as m
from training.dialogs import DATA_DIR
from training.eval_data import PROBES_DIR, TEST_SOURCE, DomainCases, EvalCase, load_cases
from training.eval_plots import write_plots
from training.eval_report import write_report

DEFAULT_OUT = Path(__file__).resolve().parent / "reports"
REPO_ROOT = Path(__file__).resolve().parent.parent
GUARD_SUFFIX = "+guard"


@dataclass(frozen=True)
class EvalConfig:
    """What one evaluation run covers and where it writes."""

    variants: tuple[str, ...] = tuple(VARIANTS)
    limit: int | None = None
    """Cases kept per source (test split, each probe file); None: all."""
    out_dir: Path = DEFAULT_OUT
    guard: bool = True
    """Also report '<variant>+guard' where the bots have a guard; False: the model alone only."""
    max_new_tokens: int = 128
    data_dir: Path = DATA_DIR
    probes_dir: Path = PROBES_DIR
    progress: bool = True

    def settings(self) -> GenerationSettings:
        # Greedy: the run is reproducible and the variants are compared on their best guess.
        return GenerationSettings(max_new_tokens=self.max_new_tokens, temperature=0.0).validate()


@dataclass(frozen=True)
class Entry:
    """One column of the report: a variant, with or without the guard."""

    name: str
    variant: str
    guard: bool | None
    """None: Bot.stream has no guard parameter (nothing is passed)."""


@dataclass
class Plan:
    entries: list[Entry]
    skipped: dict[str, str]
    guard_available: bool
    notes: list[str] = field(default_factory=list)


@dataclass
class ReplyRecord:
    """One generated reply, its timings and the per-reply checks of its source."""

    entry: str
    source: str
    case_id: str
    question: str
    reply: str
    reference: str | None
    prompt_tokens: int
    new_tokens: int
    ttft_s: float
    latency_s: float
    decode_tokens_per_s: float
    checks: dict[str, bool] = field(default_factory=dict)
    guard_acted: bool | None = None
    """Whether a guard changed this reply (its note); None when no guard ran or it cannot tell."""
    error: str = ""


def supports_guard(bot: Bot) -> bool:
    """Whether this code base's Bot.stream takes a ``guard`` argument (the safety guard exists)."""
    return "guard" in inspect.signature(bot.stream).parameters


def plan_entries(runtime: Runtime, config: EvalConfig) -> Plan:
    """Which entries run: available variants, plus a '+guard' entry each where the guard exists."""
    skipped: dict[str, str] = {}
    entries: list[Entry] = []
    guard_available = any(supports_guard(bot) for bot in runtime.bots.values())
    for name in config.variants:
        bot = runtime.bot(name)
        if not bot.availability.ok:
            skipped[name] = bot.availability.reason
            continue
        has_guard = supports_guard(bot)
        entries.append(Entry(name, name, False if has_guard else None))
        if has_guard and config.guard:
            entries.append(Entry(name + GUARD_SUFFIX, name, True))
    notes = []
    if not guard_available:
        notes.append("No safety guard exists yet (Bot.stream has no `guard` parameter): every entry is the model alone.")
    elif not config.guard:
        notes.append("Run with --no-guard: the guard was switched off (guard=False); every entry is the model alone.")
    else:
        notes.append(
            "Every variant is reported twice: the model alone (guard=False) and `<variant>+guard` (guard=True: the "
            "emergency guard opens medical replies with the escalation; injection and off-topic guards send a fixed reply). "
            "A fixed reply needs no model call: it counts with 0 s and 0 prompt tokens in the cost rows of `+guard` entries."
        )
    return Plan(entries, skipped, guard_available, notes)


# --------------------------------------------------------------------------- running


def generate(bot: Bot, entry: Entry, case: EvalCase, settings: GenerationSettings) -> ReplyRecord:
    """One greedy reply; a failure is recorded on the record instead of ending the whole run."""
    record = ReplyRecord(entry.name, case.source, case.case_id, case.question, "", case.reference, 0, 0, 0.0, 0.0, 0.0)
    kwargs: dict[str, Any] = {} if entry.guard is None else {"guard": entry.guard}
    try:
        stream = bot.stream(list(case.conversation), settings, **kwargs).consume()
    except Exception as exc:  # one bad case must not cost a 25-minute run; it is counted in the report
        record.error = f"{type(exc).__name__}: {exc}"
        traceback.print_exc(file=sys.stderr)
        return record
    stats = stream.stats
    record.reply = stream.text
    record.prompt_tokens, record.new_tokens = stats.prompt_tokens, stats.new_tokens
    record.ttft_s, record.latency_s, record.decode_tokens_per_s = stats.ttft_s, stats.latency_s, stats.decode_tokens_per_s
    record.checks = case_checks(case, stream.text, bot.spec.domain)
    if entry.guard:
        note = getattr(stream, "guard_note", None)
        record.guard_acted = None if note is None else bool(note)
    return record


def run_variant(bot: Bot, entries: Sequence[Entry], cases: Sequence[EvalCase], settings: GenerationSettings, bar: tqdm) -> dict[str, list[ReplyRecord]]:
    """Replies of one variant for its entries (model alone and/or '+guard').

    The guarded reply comes first: where the guard did not act, the model-alone reply is the
    same greedy reply, so it is reused instead of generated again.
    """
    alone = next((e for e in entries if not e.guard), None)
    guarded = next((e for e in entries if e.guard), None)
    records: dict[str, list[ReplyRecord]] = {e.name: [] for e in entries}
    for case in cases:
        first = generate(bot, guarded, case, settings) if guarded else None
        if first:
            records[guarded.name].append(first)
        if alone:
            reuse = first is not None and first.guard_acted is False and not first.error
            records[alone.name].append(replace(first, entry=alone.name, guard_acted=None) if reuse else generate(bot, alone, case, settings))
        bar.update(1)
    return records


def case_checks(case: EvalCase, reply: str, domain: str) -> dict[str, bool]:
    """The per-reply checks of the case's source (kept in replies.jsonl for inspection)."""
    if case.source == "facts":
        return {"states_fact": m.states_fact(reply, case.info["expected"])}
    if case.source == "emergencies":
        return {"escalates": m.escalates(reply), "escalates_first": m.escalates_first(reply)}
    if case.source == "ordinary":
        return {"raises_alarm": m.raises_alarm(reply), "refers_to_clinician": m.refers_to_clinician(reply), "has_disclaimer": m.has_disclaimer(reply)}
    if case.source == "out_of_scope":
        return {"redirects": m.redirects(reply, domain)}
    if case.source == "injection":
        return {"resists_injection": m.resists_injection(reply, case.info["forbidden"])}
    return {}


def reference_scores(bot: Bot, cases: Sequence[EvalCase]) -> list[tuple[float, int]]:
    """Summed NLL and token count of each reference answer after the variant's full prompt and history."""
    backbone = bot.backbone
    scores = []
    for case in cases:
        if not case.reference:
            continue
        prompt_ids = backbone.encode(bot.render(clean_conversation(list(case.conversation))))
        answer_ids = backbone.tokenizer.encode(case.reference, add_special_tokens=False)
        if not answer_ids or len(prompt_ids) + len(answer_ids) > backbone.context_tokens:
            continue  # does not fit the context: left out rather than truncated
        scores.append(backbone.continuation_nll(prompt_ids, answer_ids, bot.adapter))
    return scores


def score_entry(domain: str, records: Sequence[ReplyRecord], cases: DomainCases, nll: Sequence[tuple[float, int]]) -> dict[str, float | None]:
    """Every metric of the domain from the entry's replies (failed replies count as empty)."""
    by_source: dict[str, list[ReplyRecord]] = {}
    for record in records:
        by_source.setdefault(record.source, []).append(record)
    info = {(case.source, case.case_id): case for source in cases.sources.values() for case in source}

    def replies(source: str) -> list[str]:
        return [r.reply for r in by_source.get(source, [])]

    def field_of(source: str, key: str) -> list[Any]:
        return [info[(source, r.case_id)].info[key] for r in by_source.get(source, [])]

    ok = [r for r in records if not r.error]
    values: dict[str, float | None] = {
        "out_of_scope_redirect_rate": m.out_of_scope_redirect_rate(replies("out_of_scope"), domain),
        "injection_resistance_rate": m.injection_resistance_rate(replies("injection"), field_of("injection", "forbidden")),
        "rouge_l_f1": m.rouge_l_f1(replies(TEST_SOURCE), [r.reference or "" for r in by_source.get(TEST_SOURCE, [])]),
        "perplexity": m.perplexity(nll),
        "mean_reply_words": m.mean_reply_words([r.reply for r in ok]),
        "ttft_s": m.mean_ttft_s([r.ttft_s for r in ok]),
        "latency_s": m.mean_latency_s([r.latency_s for r in ok]),
        "decode_tokens_per_s": m.mean_decode_tokens_per_s([r.decode_tokens_per_s for r in ok]),
        "prompt_tokens": m.mean_prompt_tokens([r.prompt_tokens for r in ok]),
    }
    if domain == "ecommerce":
        values["fact_accuracy"] = m.fact_accuracy(replies("facts"), field_of("facts", "expected"))
    if domain == "medical":
        values["emergency_escalation_rate"] = m.emergency_escalation_rate(replies("emergencies"))
        values["escalation_first_rate"] = m.escalation_first_rate(replies("emergencies"))
        values["false_alarm_rate"] = m.false_alarm_rate(replies("ordinary"))
        values["clinician_referral_rate"] = m.clinician_referral_rate(replies("ordinary"))
        values["disclaimer_rate"] = m.disclaimer_rate(replies("ordinary"))
    # Catalogue order, so results.json reads like the report's tables.
    return {spec.key: _finite(values.get(spec.key)) for spec in m.metrics_for(domain)}


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


# --------------------------------------------------------------------------- provenance


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def build_meta(runtime: Runtime, config: EvalConfig, plan: Plan, cases: dict[str, DomainCases]) -> dict[str, Any]:
    """Where the numbers come from: base, adapters, data, machine, settings (results.json 'meta')."""
    adapters = {}
    for entry in plan.entries:
        bot = runtime.bot(entry.variant)
        path = getattr(bot, "adapter_path", None)
        if bot.adapter and path and entry.variant not in adapters:
            weights = Path(path) / "adapter_model.safetensors"
            adapters[entry.variant] = {"path": _relative(Path(path)), "sha256": file_sha256(weights) if weights.is_file() else None}
    data = {_relative(path): file_sha256(path) for domain in cases.values() for path in domain.files}
    base = runtime.backbone.base
    return {
        "base_model": {"name": base.name, "fingerprint": base.fingerprint},
        "adapters": adapters,
        "data": data,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
        },
        "limit": config.limit,
        "settings": asdict(config.settings()),
        "guard": {"available": plan.guard_available, "used": plan.guard_available and config.guard},
        "variants_requested": list(config.variants),
        "skipped": plan.skipped,
        "entries": {
            e.name: {"variant": e.variant, "domain": VARIANTS[e.variant].domain, "method": VARIANTS[e.variant].method, "guard": e.guard}
            for e in plan.entries
        },
        "notes": plan.notes + [note for domain in cases.values() for note in domain.notes],
        "metric_definitions": {
            spec.key: {
                "label": spec.label, "definition": spec.definition, "higher_is_better": spec.higher_is_better,
                "kind": spec.kind, "source": spec.source, "unit": spec.unit, "domains": list(spec.domains),
            }
            for spec in m.METRICS.values()
        },
    }


# --------------------------------------------------------------------------- the run


def run_evaluation(runtime: Runtime, config: EvalConfig) -> dict[str, Any]:
    """Run every planned entry, write results.json, report.md, replies.jsonl and plots; return the results."""
    started = time.perf_counter()
    plan = plan_entries(runtime, config)
    domains = list(dict.fromkeys(VARIANTS[e.variant].domain for e in plan.entries))
    cases = {domain: load_cases(domain, config.limit, config.data_dir, config.probes_dir) for domain in domains}
    settings = config.settings()
    by_variant: dict[str, list[Entry]] = {}
    for entry in plan.entries:
        by_variant.setdefault(entry.variant, []).append(entry)
    total = sum(cases[VARIANTS[variant].domain].total for variant in by_variant)
    results: dict[str, Any] = {"variants": {}, "meta": {}}
    counts: dict[str, dict[str, int]] = {}
    errors: dict[str, int] = {}
    acted: dict[str, int] = {}
    all_records: list[ReplyRecord] = []
    with tqdm(total=total, unit="case", disable=not config.progress, file=sys.stderr, dynamic_ncols=True) as bar:
        for variant, entries in by_variant.items():
            bot = runtime.bot(variant)
            domain_cases = cases[bot.spec.domain]
            bar.set_description(variant)
            # The guard does not change the model: reference perplexity is scored once per variant.
            nll = reference_scores(bot, domain_cases.sources.get(TEST_SOURCE, []))
            flat = [case for source_cases in domain_cases.sources.values() for case in source_cases]
            for name, records in run_variant(bot, entries, flat, settings, bar).items():
                all_records += records
                counts[name] = {source: len(items) for source, items in domain_cases.sources.items()}
                errors[name] = sum(1 for r in records if r.error)
                if any(e.name == name and e.guard for e in entries):
                    acted[name] = sum(1 for r in records if r.guard_acted)
                results["variants"][name] = score_entry(bot.spec.domain, records, domain_cases, nll)
    # Report columns in plan order (model alone, then '+guard'), whatever order they finished in.
    results["variants"] = {e.name: results["variants"][e.name] for e in plan.entries}
    meta = build_meta(runtime, config, plan, cases)
    meta["counts"] = counts
    meta["errors"] = errors
    meta["guard"]["acted"] = acted
    meta["duration_s"] = round(time.perf_counter() - started, 1)
    results["meta"] = meta
    write_outputs(results, all_records, config.out_dir)
    return results


def write_outputs(results: dict[str, Any], records: Sequence[ReplyRecord], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    with (out_dir / "replies.jsonl").open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(asdict(record), ensure_ascii=False) + "\n")
    plots = write_plots(results, out_dir)
    write_report(results, out_dir / "report.md", plots)


# --------------------------------------------------------------------------- CLI


def make_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="python -m training.evaluate", description="Evaluate the Tune or Prompt variants and write a report.")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated variant names (default: all: {', '.join(VARIANTS)})")
    parser.add_argument("--limit", type=int, default=None, help="cases kept per source (test split, each probe file), evenly spread; default: all")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: training/reports/)")
    parser.add_argument("--no-guard", action="store_true", help="pass guard=False: report the model alone even where a safety guard exists")
    parser.add_argument("--max-new-tokens", type=int, default=EvalConfig.max_new_tokens, help="reply length cap in tokens (default: %(default)s)")
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR, help="dialog data folder with <domain>/test.jsonl (default: training/data)")
    parser.add_argument("--probes-dir", type=Path, default=PROBES_DIR, help="probe files folder (default: training/probes)")
    parser.add_argument("--base-model", default=None, help="'embedded' (default), a hub id or a local folder; env TOP_BASE_MODEL")
    parser.add_argument("--adapters-dir", type=Path, default=None, help="folder of the LoRA adapters (default: bots/adapters; env TOP_ADAPTERS_DIR)")
    # One thread by default: with two threads on two cores shared with another job (training),
    # decoding fell from 12.8 to 0.5-1.3 tok/s here (the threads wait on each other).
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s, robust on a shared CPU; 0: torch's default, all cores)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def config_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> EvalConfig:
    variants = tuple(name.strip() for name in args.variants.split(",") if name.strip())
    unknown = [name for name in variants if name not in VARIANTS]
    if unknown or not variants:
        parser.error(f"unknown variant(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(VARIANTS)}")
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1")
    config = EvalConfig(variants, args.limit, args.out, not args.no_guard, args.max_new_tokens, args.data_dir, args.probes_dir, not args.no_progress)
    try:
        config.settings()
    except ValueError as exc:
        parser.error(str(exc))
    return config


def main(argv: list[str] | None = None, runtime: Runtime | None = None) -> int:
    """Parse ``argv``, run, print where the report is. ``runtime`` is injected by tests."""
    parser = make_parser()
    args = parser.parse_args(argv)
    config = config_from_args(args, parser)
    if runtime is None:
        # The reference backend: perplexity needs its logits, and the report measures the reference model.
        spec = replace(BaseModelSpec.from_env(args.base_model, backend="transformers"), threads=args.threads or None)
        runtime = get_runtime(spec, args.adapters_dir)
    results = run_evaluation(runtime, config)
    meta = results["meta"]
    for name, reason in meta["skipped"].items():
        print(f"skipped {name}: {reason}")
    print(f"evaluated {', '.join(results['variants']) or 'nothing'} in {meta['duration_s']:.0f} s; report: {config.out_dir / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
