"""Evaluate every variant (LoRA, prompt template, bare-base control) on its domain's cases; write a report.

    python -m training.evaluate                                   # every variant, test split, fast backend
    python -m training.evaluate --variants ecommerce-prompt,medical-prompt --limit 3 --out /tmp/evaltest
    python -m training.evaluate --backend transformers --split all --limit 12 --no-guard
    python -m training.evaluate --split all --reuse training/reports  # generate only what changed

Each selected variant answers greedily (reproducible) every case of its domain: the test split
of the dialogs (the dialog's last assistant turn is the reference, earlier turns are the
history) and the probe sets in ``training/probes/`` (``--split``: the probes' ``test`` split by
default, ``dev`` or ``all``). ``--limit N`` keeps N evenly spread cases per source. A LoRA
variant whose adapter is missing is skipped with the reason in the report. Where the bots have
safety guards (``Bot.stream(..., guard=)``), every variant is reported twice: the model alone
(``guard=False``) and ``<variant>+guard``; ``--no-guard`` keeps only the model alone. A guard that
does not act leaves the reply unchanged (greedy decoding), so such a reply is generated once and
counted for both. ``--reuse DIR`` takes the replies of an earlier run where nothing they depend
on changed (``training.eval_reuse``), so a new adapter or prompt costs only its own replies.

Backends: the fast one by default (llama.cpp when installed, as ``auto`` chooses), with
``--parallel`` replies in flight (default: as many as the backend runs together); ``--backend transformers`` is the
reference, one reply at a time. Reference perplexity comes from the backend's own logits
(teacher-forced: llama.cpp's, or the reference's); a backend that cannot score tokens leaves it
out and the report says so.

Statistics (``training.stats``): both variants of a comparison answer the same cases, and every
reply is kept with its per-case outcome, so the comparisons are paired by case id: an exact
McNemar test for rates, a paired bootstrap for the continuous metrics. Every value carries a 95%
interval (Wilson for rates, bootstrap otherwise).

Writes into ``--out`` (default ``training/reports/``): ``results.json``, ``report.md``,
``replies.jsonl`` (every reply with its checks and per-case scores) and PNG plots. The metrics
are defined in ``training.metrics``; the report in ``training.eval_report``; the plots in
``training.eval_plots``.
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
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

import domains
from bots.backends import BACKEND_NAMES, choose_backend
from bots.base_model import BaseModelSpec, file_sha256
from bots.base_source import DEFAULT_LANES, DEFAULT_RUNNING, BaseModelError
from bots.bot import Bot
from bots.cli_args import CommandParser
from bots.conversation import clean_conversation
from bots.generation import GenerationSettings
from bots.registry import METHODS, VARIANTS, Runtime, get_runtime
from training import metrics as m
from training import stats
from training.config import repo_path
from training.dialogs import DATA_DIR
from training.eval_data import PROBE_SOURCES, PROBES_DIR, SPLITS, TEST_SOURCE, DomainCases, EvalCase, load_cases
from training.eval_plots import write_plots
from training.eval_report import METHOD_ORDER, write_report
from training.eval_reuse import (
    DEV_FOLDER,
    Previous,
    ReuseError,
    append_partial,
    end_partial,
    has_run,
    load_previous,
    reply_fingerprint,
    serving_fingerprint,
    start_partial,
)

DEFAULT_OUT = Path(__file__).resolve().parent / "reports"
GUARD_SUFFIX = "+guard"
SPLIT_CHOICES = (*SPLITS, "all")
CONTROL_METHOD = "base"

RATE_CHECKS: dict[str, tuple[str, str]] = {spec.key: (spec.source, spec.check) for spec in m.METRICS.values() if spec.kind == "rate"}
"""Each rate metric's source and the per-reply check (in ``ReplyRecord.checks``) it is the share of."""


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
    split: str = "test"
    """Which cases: 'dev' (dev probes, validation dialogs), 'test' (the reported comparison: test probes, test dialogs) or 'all'."""
    parallel: int = 0
    """Replies in flight at once; 0: as many as the backend generates together."""
    resamples: int = stats.DEFAULT_RESAMPLES
    """Bootstrap resamples for intervals and paired tests (seeded)."""
    sources: tuple[str, ...] | None = None
    """Only these sources (e.g. 'facts', 'support'): quick design iterations on the dev split; None: all."""
    reuse: Path | None = None
    """An earlier run's report folder whose replies are taken where nothing they depend on changed (training/eval_reuse.py)."""

    def settings(self) -> GenerationSettings:
        # Greedy: the run is reproducible and the variants are compared on their best guess.
        return GenerationSettings(max_new_tokens=self.max_new_tokens, temperature=0.0).validate()

    def probe_split(self) -> str | None:
        return None if self.split == "all" else self.split


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
    """One generated reply, its timings, the per-reply checks of its source and its per-case scores."""

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
    triage: dict[str, Any] | None = None
    """The emergency guard's decision (medical variants, guards on): tier, by (rules / detector), score."""
    error: str = ""
    rouge_l: float | None = None
    """ROUGE-L F1 against the reference (held-out dialogs)."""
    reference_nll: float | None = None
    """Summed NLL of the reference answer under the variant (held-out dialogs; the guard does not change it)."""
    reference_tokens: int | None = None
    fingerprint: str = ""
    """What the reply depends on besides the run's serving (training/eval_reuse.reply_fingerprint)."""
    reused: bool = False
    """Taken from an earlier run (--reuse) instead of generated in this one."""

    @property
    def key(self) -> str:
        """The pairing key: the same case of the same source, whatever the entry."""
        return f"{self.source}/{self.case_id}"


def supports_guard(bot: Bot) -> bool:
    """Whether this code base's Bot.stream takes a ``guard`` argument (the safety guard exists)."""
    return "guard" in inspect.signature(bot.stream).parameters


def method_rank(method: str) -> int:
    return METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)


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
    """One greedy reply; a failure is recorded on the record (scored as an empty reply) instead of ending the run."""
    record = ReplyRecord(entry.name, case.source, case.case_id, case.question, "", case.reference, 0, 0, 0.0, 0.0, 0.0)
    kwargs: dict[str, Any] = {} if entry.guard is None else {"guard": entry.guard}
    try:
        stream = bot.stream(list(case.conversation), settings, **kwargs).consume()
    except Exception as exc:  # one bad case must not cost a long run; it is counted in the report
        record.error = f"{type(exc).__name__}: {exc}"
        traceback.print_exc(file=sys.stderr)
        score_reply(record, case, bot.spec.domain)
        return record
    stats_ = stream.stats
    record.reply = stream.text
    record.prompt_tokens, record.new_tokens = stats_.prompt_tokens, stats_.new_tokens
    record.ttft_s, record.latency_s, record.decode_tokens_per_s = stats_.ttft_s, stats_.latency_s, stats_.decode_tokens_per_s
    score_reply(record, case, bot.spec.domain)
    if entry.guard:
        note = getattr(stream, "guard_note", None)
        record.guard_acted = None if note is None else bool(note)
        triage = getattr(stream, "triage", None)
        record.triage = triage.record() if triage else None
    return record


def score_reply(record: ReplyRecord, case: EvalCase, domain: str) -> None:
    """The per-case outcomes of one reply: its source's checks, and ROUGE-L where there is a reference."""
    record.checks = case_checks(case, record.reply, domain)
    if case.reference is not None:
        record.rouge_l = m.rouge_l(record.reply, case.reference)


def case_checks(case: EvalCase, reply: str, domain: str) -> dict[str, bool]:
    """The per-reply checks of the case's source, as its domain pack names them (kept in
    replies.jsonl; the rates are their shares). The held-out dialogs have none."""
    if case.source == TEST_SOURCE:
        return {}
    return {name: m.CHECKS[name](reply, case.info, domain) for name in domains.pack(domain).probe(case.source).checks}


class Progress:
    """A thread-safe tqdm bar over every step of the run (replies and reference scorings), with an ETA."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.bar = tqdm(total=total, unit="case", disable=not enabled, file=sys.stderr, dynamic_ncols=True, smoothing=0.1)
        self._lock = threading.Lock()

    def step(self, description: str | None = None) -> None:
        with self._lock:
            if description is not None:
                self.bar.set_description(description, refresh=False)
            self.bar.update(1)

    def advance(self, steps: int) -> None:
        """Count steps done without work (replies taken from an earlier run)."""
        if steps > 0:
            with self._lock:
                self.bar.update(steps)

    def describe(self, description: str) -> None:
        with self._lock:
            self.bar.set_description(description)

    def close(self) -> None:
        self.bar.close()


RECORD_FIELDS = frozenset(ReplyRecord.__dataclass_fields__)


def taken_record(row: dict[str, Any], case: EvalCase, domain: str) -> ReplyRecord:
    """An earlier run's reply as this run's record, scored again with today's checks."""
    record = ReplyRecord(**{k: v for k, v in row.items() if k in RECORD_FIELDS})
    record.reused = True
    score_reply(record, case, domain)
    return record


def run_variant(
    bot: Bot,
    entries: Sequence[Entry],
    cases: Sequence[EvalCase],
    settings: GenerationSettings,
    progress: Progress,
    parallel: int = 1,
    previous: Previous | None = None,
    adapter_sha: str | None = None,
    on_case: Callable[[list[ReplyRecord]], None] | None = None,
) -> dict[str, list[ReplyRecord]]:
    """Replies of one variant for its entries (model alone and/or '+guard'), in case order.

    The guarded reply comes first: where the guard did not act, the model-alone reply is the
    same greedy reply, so it is reused instead of generated again. With ``parallel`` > 1 that
    many cases are in flight at once (the llama.cpp backend batches them; replies stay the same).
    With ``previous``, a reply whose fingerprint an earlier run shares is taken from it.
    ``on_case`` gets each case's replies as soon as they exist (the run's partial file).
    """
    alone = next((e for e in entries if not e.guard), None)
    guarded = next((e for e in entries if e.guard), None)
    domain = bot.spec.domain

    def reply(entry: Entry, case: EvalCase, same_as: ReplyRecord | None = None) -> ReplyRecord:
        """Taken from the earlier run (for a guarded entry, its model-alone reply where today's guard
        leaves it unchanged), else the guarded reply where the guard did not act, else generated."""
        fingerprint = reply_fingerprint(bot, entry.name, list(case.conversation), adapter_sha, bool(entry.guard))
        row = previous.take(entry.name, case.source, case.case_id, fingerprint) if previous else None
        kept = None if row is not None or not entry.guard else unchanged_by_guard(case)
        if kept is not None:
            return kept
        if row is not None:
            record = taken_record(row, case, domain)
        elif same_as is not None:
            record = replace(same_as, entry=entry.name, guard_acted=None, triage=None)
        else:
            record = generate(bot, entry, case, settings)
        record.fingerprint = fingerprint
        return record

    def unchanged_by_guard(case: EvalCase) -> ReplyRecord | None:
        """The guarded reply without generating it: the earlier run's model-alone reply, where today's
        guard leaves that reply as it is (only the guard changed since: a new rule or detector)."""
        if alone is None or previous is None:
            return None
        assert guarded is not None  # called for the guarded entry only
        alone_fingerprint = reply_fingerprint(bot, alone.name, list(case.conversation), adapter_sha, False)
        row = previous.take(alone.name, case.source, case.case_id, alone_fingerprint)
        if row is None:
            return None
        outcome = bot.guard_outcome(list(case.conversation))
        if outcome.changes_reply:
            return None
        record = replace(taken_record(row, case, domain), entry=guarded.name, guard_acted=False)
        record.triage = outcome.triage.record() if outcome.triage else None
        record.fingerprint = reply_fingerprint(bot, guarded.name, list(case.conversation), adapter_sha, True)
        return record

    def one(case: EvalCase) -> list[ReplyRecord]:
        out = []
        first = reply(guarded, case) if guarded else None
        if first:
            out.append(first)
        if alone:
            same = first is not None and first.guard_acted is False and not first.error and not first.reused
            out.append(reply(alone, case, first if same else None))
        if on_case is not None:
            on_case(out)
        progress.step()
        return out

    if parallel > 1:
        with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="evaluate") as pool:
            per_case = list(pool.map(one, cases))
    else:
        per_case = [one(case) for case in cases]
    records: dict[str, list[ReplyRecord]] = {e.name: [] for e in entries}
    for replies in per_case:
        for record in replies:
            records[record.entry].append(record)
    return records


def score_model_alone(
    bot: Bot, cases: DomainCases, keys: Sequence[str], settings: GenerationSettings, progress: Progress, parallel: int, resamples: int
) -> tuple[dict[str, Any], dict[str, Outcomes], list[ReplyRecord]]:
    """One bot, model alone, on ``cases``: each metric of ``keys`` with its interval, the per-case
    outcomes (for pairing) and the replies. Used by the data-efficiency curve and the prompt design search."""
    name = bot.spec.name
    records = run_variant(bot, [Entry(name, name, False)], [c for items in cases.sources.values() for c in items], settings, progress, parallel)[name]
    values = score_entry(bot.spec.domain, records)
    outcomes = {key: case_outcomes(key, records) for key in keys}
    figures = {key: interval(m.METRICS[key], outcomes[key], values.get(key), resamples) for key in keys}
    return figures, outcomes, records


def can_score(bot: Bot) -> bool:
    """Whether the backbone can score a given continuation (teacher-forced NLL)."""
    return callable(getattr(bot.backbone, "continuation_nll", None))


def reference_scores(bot: Bot, cases: Sequence[EvalCase], progress: Progress | None = None) -> dict[str, tuple[float, int]]:
    """Summed NLL and token count of each reference answer after the variant's full prompt and history, by case id."""
    backbone = bot.backbone
    scores: dict[str, tuple[float, int]] = {}
    for case in cases:
        if progress:
            progress.step()
        if not case.reference:
            continue
        prompt_ids = backbone.encode(bot.render(clean_conversation(list(case.conversation))))
        answer_ids = backbone.encode_text(case.reference)
        if not answer_ids or len(prompt_ids) + len(answer_ids) > backbone.context_tokens:
            continue  # does not fit the context: left out rather than truncated
        try:
            scores[case.case_id] = backbone.continuation_nll(prompt_ids, answer_ids, bot.adapter)
        except Exception:  # noqa: BLE001  a failed scoring leaves one case out of the perplexity, not the run
            traceback.print_exc(file=sys.stderr)
    return scores


def score_entry(domain: str, records: Sequence[ReplyRecord]) -> dict[str, float | None]:
    """Every metric of the domain from the entry's replies and their checks (failed replies count as empty)."""
    by_source: dict[str, list[ReplyRecord]] = {}
    for record in records:
        by_source.setdefault(record.source, []).append(record)

    def replies(source: str) -> list[str]:
        return [r.reply for r in by_source.get(source, [])]

    ok = [r for r in records if not r.error]
    nll = [(r.reference_nll, r.reference_tokens or 0) for r in by_source.get(TEST_SOURCE, []) if r.reference_nll is not None]
    # A rate is the share of its per-reply check over its source (the checks are in every record).
    values: dict[str, float | None] = {
        key: m.rate([bool(r.checks.get(check)) for r in by_source.get(source, [])]) for key, (source, check) in RATE_CHECKS.items()
    }
    values |= {
        "rouge_l_f1": m.rouge_l_f1(replies(TEST_SOURCE), [r.reference or "" for r in by_source.get(TEST_SOURCE, [])]),
        "perplexity": m.perplexity(nll),
        "mean_reply_words": m.mean_reply_words([r.reply for r in ok]),
        "ttft_s": m.mean_ttft_s([r.ttft_s for r in ok]),
        "latency_s": m.mean_latency_s([r.latency_s for r in ok]),
        "decode_tokens_per_s": m.mean_decode_tokens_per_s([r.decode_tokens_per_s for r in ok]),
        "prompt_tokens": m.mean_prompt_tokens([r.prompt_tokens for r in ok]),
    }
    # Catalogue order, so results.json reads like the report's tables.
    return {spec.key: _finite(values.get(spec.key)) for spec in m.metrics_for(domain)}


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


# --------------------------------------------------------------------------- per-case outcomes and statistics

Outcomes = dict[str, Any]
"""Per-case values of one metric for one entry, keyed by ``ReplyRecord.key``: bool (rates), float, or (nll, tokens)."""

_CONTINUOUS: dict[str, Callable[[ReplyRecord], Any]] = {
    "mean_reply_words": lambda r: float(len(m.words(r.reply))),
    "ttft_s": lambda r: r.ttft_s,
    "latency_s": lambda r: r.latency_s,
    "decode_tokens_per_s": lambda r: r.decode_tokens_per_s if r.decode_tokens_per_s > 0 else None,
    "prompt_tokens": lambda r: float(r.prompt_tokens),
}


def case_outcomes(key: str, records: Sequence[ReplyRecord]) -> Outcomes:
    """The per-case values behind one metric of one entry; their aggregate is the reported value."""
    if key in RATE_CHECKS:
        source, check = RATE_CHECKS[key]
        return {r.key: bool(r.checks.get(check, False)) for r in records if r.source == source}
    if key == "rouge_l_f1":
        return {r.key: r.rouge_l for r in records if r.source == TEST_SOURCE and r.rouge_l is not None}
    if key == "perplexity":
        return {r.key: (r.reference_nll, r.reference_tokens) for r in records if r.source == TEST_SOURCE and r.reference_nll is not None}
    if key in _CONTINUOUS:
        values = {r.key: _CONTINUOUS[key](r) for r in records if not r.error}
        return {case: value for case, value in values.items() if value is not None}
    return {}


def statistic_of(key: str) -> stats.Statistic:
    return stats.ratio_perplexity if key == "perplexity" else stats.mean_statistic


def interval(spec: m.MetricSpec, outcomes: Outcomes, value: float | None, resamples: int) -> dict[str, Any] | None:
    """The reported value with its 95% interval and the number of cases behind it; None when there are none."""
    if not outcomes or value is None:
        return None
    values = list(outcomes.values())
    if spec.key in RATE_CHECKS:
        low, high = stats.wilson_interval(sum(bool(v) for v in values), len(values))
        method = "wilson"
    else:
        low, high = stats.bootstrap_interval(np.asarray(values, dtype=np.float64), statistic_of(spec.key), resamples)
        method = "bootstrap"
    # The point estimate always lies inside (a percentile bound can miss it by rounding only).
    return {"value": value, "ci_low": min(low, value), "ci_high": max(high, value), "n": len(values), "method": method}


def compare_entries(spec: m.MetricSpec, a: str, b: str, first: Outcomes, second: Outcomes, resamples: int) -> dict[str, Any] | None:
    """A against B on one metric, over the cases both answered (paired by case id)."""
    cases = sorted(set(first) & set(second))
    if not cases:
        return None
    if spec.key in RATE_CHECKS:
        x, y = [bool(first[c]) for c in cases], [bool(second[c]) for c in cases]
        result = stats.paired_binary(x, y, resamples=resamples)
        a_value, b_value = sum(x) / len(x), sum(y) / len(y)
    else:
        x_arr = np.asarray([first[c] for c in cases], dtype=np.float64)
        y_arr = np.asarray([second[c] for c in cases], dtype=np.float64)
        statistic = statistic_of(spec.key)
        result = stats.paired_bootstrap(x_arr, y_arr, statistic, resamples=resamples)
        a_value, b_value = float(statistic(x_arr[None])[0]), float(statistic(y_arr[None])[0])
    better = None
    if result.significant and spec.higher_is_better is not None and result.difference != 0:
        better = a if (result.difference > 0) == spec.higher_is_better else b
    return {
        "a": a, "b": b, "metric": spec.key, "a_value": a_value, "b_value": b_value,
        "difference": result.difference, "ci_low": result.ci_low, "ci_high": result.ci_high,
        "p_value": result.p_value, "significant": result.significant, "test": result.test, "n": result.n, "better": better,
    }  # fmt: skip


def comparison_pairs(entries: Sequence[Entry]) -> list[tuple[Entry, Entry]]:
    """The pairs compared in a domain: the methods among themselves and against the control (model alone;
    with the guards), and each variant with its guard against itself alone."""

    def order(entry: Entry) -> tuple[int, str]:
        return method_rank(VARIANTS[entry.variant].method), entry.name

    alone = sorted((e for e in entries if not e.guard), key=order)
    guarded = sorted((e for e in entries if e.guard), key=order)
    pairs = list(combinations(alone, 2)) + list(combinations(guarded, 2))
    pairs += [(g, a) for a in alone for g in guarded if g.variant == a.variant]
    return pairs


def statistics(
    plan: Plan, records: dict[str, list[ReplyRecord]], values: dict[str, dict[str, float | None]], resamples: int
) -> tuple[dict[str, dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """Per entry and metric the value with its interval; per domain the paired comparisons."""
    intervals: dict[str, dict[str, Any]] = {}
    outcomes: dict[str, dict[str, Outcomes]] = {}
    by_domain: dict[str, list[Entry]] = {}
    for entry in plan.entries:
        domain = VARIANTS[entry.variant].domain
        by_domain.setdefault(domain, []).append(entry)
        outcomes[entry.name] = {spec.key: case_outcomes(spec.key, records.get(entry.name, [])) for spec in m.metrics_for(domain)}
        intervals[entry.name] = {
            spec.key: interval(spec, outcomes[entry.name][spec.key], values[entry.name].get(spec.key), resamples) for spec in m.metrics_for(domain)
        }
    comparisons: dict[str, list[dict[str, Any]]] = {}
    for domain, entries in by_domain.items():
        rows = []
        for first, second in comparison_pairs(entries):
            for spec in m.metrics_for(domain):
                if spec.higher_is_better is None:
                    continue  # descriptive (reply length): no side wins
                row = compare_entries(spec, first.name, second.name, outcomes[first.name][spec.key], outcomes[second.name][spec.key], resamples)
                if row:
                    rows.append(row)
        comparisons[domain] = rows
    return intervals, comparisons


# --------------------------------------------------------------------------- provenance


def perplexity_source(runtime: Runtime, scored: bool) -> dict[str, Any]:
    """Where the perplexity came from (results.json meta 'perplexity')."""
    backend = runtime.backbone.backend
    if not scored:
        return {"backend": None, "note": f"n/a on {backend or 'this backend'} (it cannot score tokens): run --backend transformers"}
    if backend == "transformers":
        return {"backend": backend, "note": "teacher-forced logits of the transformers reference (fp32)"}
    return {
        "backend": backend,
        "note": f"teacher-forced logits of {backend} (8-bit activations against the fp32 reference: close, not equal; "
        "--backend transformers gives the reference's)",
    }


def adapters_of(runtime: Runtime, plan: Plan) -> dict[str, dict[str, Any]]:
    """The adapter folder and weights hash of every planned variant that has one."""
    adapters: dict[str, dict[str, Any]] = {}
    for entry in plan.entries:
        bot = runtime.bot(entry.variant)
        path = getattr(bot, "adapter_path", None)
        if bot.adapter and path and entry.variant not in adapters:
            weights = Path(path) / "adapter_model.safetensors"
            adapters[entry.variant] = {"path": repo_path(Path(path)), "sha256": file_sha256(weights) if weights.is_file() else None}
            served = runtime.backbone.adapter_serving(bot.adapter)
            if served:
                adapters[entry.variant]["served"] = served
    return adapters


def build_meta(runtime: Runtime, config: EvalConfig, plan: Plan, cases: dict[str, DomainCases]) -> dict[str, Any]:
    """Where the numbers come from: base, adapters, data, machine, settings (results.json 'meta')."""
    adapters = adapters_of(runtime, plan)
    data = {repo_path(path): file_sha256(path) for domain in cases.values() for path in domain.files}
    base = runtime.backbone.base
    split_note = (
        f"Probes of the {config.split} split" if config.split != "all" else "Probes of both splits (dev and test)"
    ) + "; the held-out dialogs of the same split (ROUGE-L, perplexity: validation.jsonl on dev, test.jsonl on test)."
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
        "backend": runtime.backbone.backend,
        "split": config.split,
        "methods": list(METHODS),
        "limit": config.limit,
        "sources": list(config.sources) if config.sources else None,
        "settings": asdict(config.settings()),
        "guard": {"available": plan.guard_available, "used": plan.guard_available and config.guard},
        "variants_requested": list(config.variants),
        "skipped": plan.skipped,
        "entries": {
            e.name: {"variant": e.variant, "domain": VARIANTS[e.variant].domain, "method": VARIANTS[e.variant].method, "guard": e.guard}
            for e in plan.entries
        },
        "control": {domain: f"{domain}-{CONTROL_METHOD}" for domain in dict.fromkeys(VARIANTS[e.variant].domain for e in plan.entries)
                    if f"{domain}-{CONTROL_METHOD}" in {e.name for e in plan.entries}},
        "statistics": {
            "rate_interval": "95% Wilson score interval",
            "continuous_interval": f"95% percentile bootstrap over cases ({config.resamples} resamples, seed {stats.DEFAULT_SEED})",
            "rate_test": "exact McNemar test (two-sided binomial on the discordant cases)",
            "continuous_test": f"paired bootstrap over cases ({config.resamples} resamples, seed {stats.DEFAULT_SEED}; "
            "difference interval from the same resamples)",
            "alpha": stats.ALPHA,
            "pairing": "by case id: both entries answered the same cases",
        },
        "notes": plan.notes + [split_note] + [note for domain in cases.values() for note in domain.notes],
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
    planned_domains = list(dict.fromkeys(VARIANTS[e.variant].domain for e in plan.entries))
    cases = {domain: load_cases(domain, config.limit, config.data_dir, config.probes_dir, config.probe_split()) for domain in planned_domains}
    if config.sources is not None:
        for domain_cases in cases.values():
            domain_cases.sources = {name: items for name, items in domain_cases.sources.items() if name in config.sources}
    settings = config.settings()
    parallel = config.parallel or max(1, runtime.backbone.parallel_replies)
    by_variant: dict[str, list[Entry]] = {}
    for entry in plan.entries:
        by_variant.setdefault(entry.variant, []).append(entry)
    scoring = {variant: can_score(runtime.bot(variant)) for variant in by_variant}
    total = sum(
        cases[VARIANTS[variant].domain].total + (len(cases[VARIANTS[variant].domain].sources.get(TEST_SOURCE, [])) if scoring[variant] else 0)
        for variant in by_variant
    )
    serving = serving_fingerprint(runtime.backbone.base.fingerprint, runtime.backbone.backend, asdict(settings))
    previous = load_previous(config.reuse, serving) if config.reuse else None
    if previous and previous.refused:
        print(f"--reuse: {previous.refused}", file=sys.stderr)
    # How an adapter is served is part of its replies' fingerprint (absent: applied at run time).
    adapter_shas = {name: f"{row['sha256']}+{row['served']}" if row.get("served") else row["sha256"] for name, row in adapters_of(runtime, plan).items()}
    resumes_own = previous is not None and previous.partial_taken and Path(previous.folder).resolve() == Path(config.out_dir).resolve()
    start_partial(config.out_dir, serving, dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), keep=resumes_own)
    records: dict[str, list[ReplyRecord]] = {}
    progress = Progress(total, config.progress)
    partial_lock = threading.Lock()

    def keep_case(rows: list[ReplyRecord]) -> None:
        # Each case as soon as it is done, so a stopped run loses at most the cases in flight;
        # the perplexity pass appends its rows again afterwards, and the later row counts.
        with partial_lock:
            append_partial(config.out_dir, [asdict(r) for r in rows])

    try:
        for variant, entries in by_variant.items():
            bot = runtime.bot(variant)
            domain_cases = cases[bot.spec.domain]
            progress.describe(variant)
            flat = [case for source_cases in domain_cases.sources.values() for case in source_cases]
            variant_records = run_variant(bot, entries, flat, settings, progress, parallel, previous, adapter_shas.get(variant), keep_case)
            # The guard does not change the model: reference perplexity is scored once per variant,
            # for the dialogs whose model-alone reply was generated here (a taken one keeps its own).
            if scoring[variant]:
                alone = next((e.name for e in entries if not e.guard), entries[0].name)
                # A reply kept before its variant finished has no perplexity yet: it is scored here.
                taken = {r.case_id: (r.reference_nll, r.reference_tokens) for r in variant_records[alone] if r.reused and r.source == TEST_SOURCE and r.reference_nll is not None}
                progress.describe(f"{variant}: perplexity")
                todo = [c for c in domain_cases.sources.get(TEST_SOURCE, []) if c.case_id not in taken]
                progress.advance(len(domain_cases.sources.get(TEST_SOURCE, [])) - len(todo))
                nll = {**taken, **reference_scores(bot, todo, progress)}  # taken holds scored replies only
                rescored = []
                for entry_records in variant_records.values():
                    for record in entry_records:
                        if record.source == TEST_SOURCE and record.case_id in nll:
                            record.reference_nll, record.reference_tokens = nll[record.case_id]
                            rescored.append(record)
                append_partial(config.out_dir, [asdict(r) for r in rescored])  # kept again, now with perplexity
            records.update(variant_records)
    finally:
        progress.close()
    duration = round(time.perf_counter() - started, 1)
    reused = {name: sum(1 for r in entry_records if r.reused) for name, entry_records in records.items()}
    common: dict[str, Any] = {"parallel": parallel, "perplexity": perplexity_source(runtime, any(scoring.values())), "serving": serving}
    if previous:
        common["reuse"] = {"from": repo_path(previous.folder), "date": previous.date, "refused": previous.refused or None, "replies": reused}
        taken, made = sum(reused.values()), sum(len(r) for r in records.values())
        plan.notes.append(
            f"--reuse: {taken} of {made} replies were taken from the run of {previous.date or 'unknown date'} in `{repo_path(previous.folder)}`, "
            "where nothing they depend on had changed (their timings are that run's)." if not previous.refused else f"--reuse: {previous.refused}."
        )
    if config.split != "all":
        results = finish(runtime, config, plan, cases, records, config.split, config.out_dir, {**common, "duration_s": duration})
        end_partial(config.out_dir)
        return results
    # One run, two reports: the test split (reported) in out_dir, the dev split (for choosing) in out_dir/dev.
    shared = {**common, "duration_s": duration}
    dev_note = f"One run answered both splits ({duration / 60:.1f} min in all); this is its **dev** split, used for choosing. The test split's report is `../report.md`."
    test_note = f"One run answered both splits ({duration / 60:.1f} min in all); this is its **test** split. The dev split's report, used for choosing, is `{DEV_FOLDER}/report.md`."
    finish(runtime, config, plan, cases, records, "dev", config.out_dir / DEV_FOLDER, {**shared, "companion": dev_note})
    results = finish(runtime, config, plan, cases, records, "test", config.out_dir, {**shared, "companion": test_note})
    end_partial(config.out_dir)
    return results


# DEV_FOLDER (training/eval_reuse.py): where a ``--split all`` run writes its dev-split report (the test split's goes to ``--out``).


def split_of(case: EvalCase) -> str:
    """A case's own split: a probe's ``split``, a dialog's file (validation: dev, test: test)."""
    return str(case.info.get("split", "test"))


def finish(
    runtime: Runtime,
    config: EvalConfig,
    plan: Plan,
    cases: dict[str, DomainCases],
    records: dict[str, list[ReplyRecord]],
    split: str,
    out_dir: Path,
    extra_meta: dict[str, Any],
) -> dict[str, Any]:
    """Score, compare and write one report from the replies: every case, or those of ``split``."""
    keep_all = split == config.split
    kept_cases = {}
    for domain, domain_cases in cases.items():
        sources = {name: [c for c in items if keep_all or split_of(c) == split] for name, items in domain_cases.sources.items()}
        kept_cases[domain] = replace(domain_cases, sources={name: items for name, items in sources.items() if items})
    wanted = {domain: {(c.source, c.case_id) for items in dc.sources.values() for c in items} for domain, dc in kept_cases.items()}
    kept: dict[str, list[ReplyRecord]] = {}
    values: dict[str, dict[str, float | None]] = {}
    counts: dict[str, dict[str, int]] = {}
    errors: dict[str, int] = {}
    acted: dict[str, int] = {}
    for entry in plan.entries:
        domain = VARIANTS[entry.variant].domain
        kept[entry.name] = [r for r in records[entry.name] if (r.source, r.case_id) in wanted[domain]]
        counts[entry.name] = {source: len(items) for source, items in kept_cases[domain].sources.items()}
        errors[entry.name] = sum(1 for r in kept[entry.name] if r.error)
        if entry.guard:
            acted[entry.name] = sum(1 for r in kept[entry.name] if r.guard_acted)
        values[entry.name] = score_entry(domain, kept[entry.name])
    # Report columns in plan order (model alone, then '+guard'), whatever order they finished in.
    results: dict[str, Any] = {"variants": {e.name: values[e.name] for e in plan.entries}}
    results["intervals"], results["comparisons"] = statistics(plan, kept, values, config.resamples)
    meta = build_meta(runtime, replace(config, split=split), plan, kept_cases)
    meta.update(extra_meta)
    meta["counts"] = counts
    meta["errors"] = errors
    meta["guard"]["acted"] = acted
    results["meta"] = meta
    write_outputs(results, [r for e in plan.entries for r in kept[e.name]], out_dir)
    return results


def write_outputs(results: dict[str, Any], records: Sequence[ReplyRecord], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    with (out_dir / "replies.jsonl").open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(asdict(record), ensure_ascii=False) + "\n")
    plots = write_plots(results, out_dir)
    # The methods table and the data-efficiency curve come from their own commands' files, when present.
    from training.report_sections import extra_sections

    write_report(results, out_dir / "report.md", plots, extra_sections(out_dir))


# --------------------------------------------------------------------------- CLI


def make_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="python -m training.evaluate", description="Evaluate the Tune or Prompt variants and write a report.")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated variant names (default: all: {', '.join(VARIANTS)})")
    parser.add_argument("--split", choices=SPLIT_CHOICES, default="test", help="which probes: dev (for tuning), test (reported; default) or all")
    parser.add_argument("--limit", type=int, default=None, help="cases kept per source (test split, each probe file), evenly spread; default: all")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: training/reports/)")
    parser.add_argument("--no-guard", action="store_true", help="pass guard=False: report the model alone even where a safety guard exists")
    parser.add_argument("--max-new-tokens", type=int, default=EvalConfig.max_new_tokens, help="reply length cap in tokens (default: %(default)s)")
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR, help="dialog data folder with <domain>/test.jsonl (default: training/data)")
    parser.add_argument("--probes-dir", type=Path, default=PROBES_DIR, help="probe files folder (default: training/probes)")
    parser.add_argument("--base-model", default=None, help="'embedded' (default), a hub id or a local folder; env TOP_BASE_MODEL")
    parser.add_argument("--adapters-dir", type=Path, default=None, help="folder of the LoRA adapters (default: bots/adapters; env TOP_ADAPTERS_DIR)")
    parser.add_argument(
        "--backend", choices=BACKEND_NAMES, default=None,
        help="auto (default: llama.cpp when installed, else transformers), llamacpp, transformers (the reference) or openai; env TOP_BACKEND",
    )  # fmt: skip
    parser.add_argument("--parallel", type=int, default=0, help=f"replies in flight at once (default 0: what the backend runs together; {DEFAULT_RUNNING} on llama.cpp, 1 on transformers)")
    # One torch thread by default: with two threads on two cores shared with another job (training),
    # decoding fell from 12.8 to 0.5-1.3 tok/s here (the threads wait on each other).
    parser.add_argument("--threads", type=int, default=None, help="compute threads (default: 1 for transformers, robust on a shared CPU; all cores for llama.cpp; 0: the backend's default)")
    parser.add_argument("--sources", default=None, help="comma-separated sources only (test, facts, support, emergencies, ordinary, out_of_scope, injection); default: all")
    parser.add_argument("--resamples", type=int, default=stats.DEFAULT_RESAMPLES, help="bootstrap resamples (default: %(default)s)")
    parser.add_argument("--reuse", type=Path, default=None, help="an earlier run's report folder: take its replies where nothing they depend on changed (training/eval_reuse.py)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def config_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> EvalConfig:
    variants = tuple(name.strip() for name in args.variants.split(",") if name.strip())
    unknown = [name for name in variants if name not in VARIANTS]
    if unknown or not variants:
        parser.error(f"unknown variant(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(VARIANTS)}")
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1")
    if args.parallel < 0:
        parser.error("--parallel must be 0 (the backend's lanes) or more")
    if args.resamples < 100:
        parser.error("--resamples must be at least 100")
    sources = tuple(name.strip() for name in args.sources.split(",") if name.strip()) if args.sources else None
    known = {TEST_SOURCE, *(probe.name for probe in PROBE_SOURCES)}
    if sources is not None and (not sources or set(sources) - known):
        parser.error(f"unknown source(s) {', '.join(sorted(set(sources) - known)) or '(none given)'}; choose from {', '.join(sorted(known))}")
    config = EvalConfig(
        variants, args.limit, args.out, not args.no_guard, args.max_new_tokens, args.data_dir, args.probes_dir, not args.no_progress,
        args.split, args.parallel, args.resamples, sources, args.reuse,
    )  # fmt: skip
    if args.reuse is not None and not has_run(args.reuse):
        parser.error(f"--reuse {args.reuse}: no finished or interrupted run there (results.json or partial.json of training.evaluate)")
    try:
        config.settings()
    except ValueError as exc:
        parser.error(str(exc))
    return config


def runtime_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Runtime:
    """The runtime on the chosen backend; the prompt variants' fixed prefix warmed as a server does."""
    spec = BaseModelSpec.from_env(args.base_model, backend=args.backend)
    try:
        backend = choose_backend(spec).name
    except BaseModelError as exc:
        parser.error(str(exc))
    threads = args.threads if args.threads is not None else (1 if backend == "transformers" else 0)
    parallel = getattr(args, "parallel", 0)
    if parallel:  # --parallel N: N llama.cpp replies really run together, in lanes enough to keep prefixes
        lanes = max(spec.lanes or DEFAULT_LANES, parallel + parallel // 2)
        spec = replace(spec, running=parallel, lanes=lanes)
    runtime = get_runtime(replace(spec, backend=backend, threads=threads or None), args.adapters_dir, warm_prompts=True)
    runtime.backbone.wait_idle(300)
    return runtime


def main(argv: list[str] | None = None, runtime: Runtime | None = None) -> int:
    """Parse ``argv``, run, print where the report is. ``runtime`` is injected by tests."""
    parser = make_parser()
    args = parser.parse_args(argv)
    config = config_from_args(args, parser)
    if runtime is None:
        runtime = runtime_from_args(args, parser)
    try:
        results = run_evaluation(runtime, config)
    except ReuseError as exc:
        parser.error(str(exc))
    meta = results["meta"]
    for name, reason in meta["skipped"].items():
        print(f"skipped {name}: {reason}")
    print(
        f"evaluated {', '.join(results['variants']) or 'nothing'} on the {meta['split']} split with {meta['backend']} "
        f"in {meta['duration_s']:.0f} s; report: {config.out_dir / 'report.md'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
