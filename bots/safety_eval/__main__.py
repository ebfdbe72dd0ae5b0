"""Measure the emergency guard: rules, learned detector and the two combined, side by side.

    python -m bots.safety_eval                          # the report sets + the medical probes (loads the base model)
    python -m bots.safety_eval --set tiers_dev           # another tiered set (any of detector_sets.yaml, or probes)
    python -m bots.safety_eval --rules-only              # no model: the rules alone
    python -m bots.safety_eval --file emergency_fresh2.jsonl   # the older binary sets, rules only

Every rate comes with its 95% Wilson interval. ``detector_sets.yaml`` says which sets train the
detector, which choose its thresholds (dev) and which are only reported: those were written
before the detector they measure, and the probes were never tuned on. The README records each
set's first look; the labelling policy is there too.
"""

from __future__ import annotations

import sys
from pathlib import Path

from bots.cli_args import CommandParser
from bots.detector import DETECTOR_FILE
from bots.guard import RULES_ONLY, EmergencyGuard
from bots.safety_eval import SAFETY_EVAL_DIR, EvalResult, TieredMessage, evaluate, load_labelled, load_tiered, set_roles
from bots.safety_eval.tiered import PARTS, GuardReport, Rate, evaluate_guard
from training.stats import wilson_interval  # a command, not the library: it may use the evaluation's statistics

PROBE_SET = "probes"
PROBES_DIR = SAFETY_EVAL_DIR.parent.parent / "training" / "probes"


def probe_messages() -> list[TieredMessage]:
    """The evaluation's medical probes as a tiered set: emergencies, and ordinary questions as routine."""
    import json

    messages = []
    for name, tier in (("medical_emergencies.jsonl", "emergency"), ("medical_ordinary.jsonl", "routine")):
        for line in (PROBES_DIR / name).read_text(encoding="utf-8").splitlines():
            if line.strip():
                probe = json.loads(line)
                kind = "lookalike" if probe.get("lookalike") else "ordinary"
                messages.append(TieredMessage(probe["id"], probe["question"], tier, probe.get("red_flag") if tier == "emergency" else None, kind))
    return messages


def load_set(name: str) -> list[TieredMessage]:
    return probe_messages() if name == PROBE_SET else load_tiered(SAFETY_EVAL_DIR / f"{name}.jsonl")


def shown(rate: Rate) -> str:
    if rate.n == 0:
        return "n/a"
    low, high = wilson_interval(rate.hits, rate.n)
    return f"{rate.value:.3f} [{low:.3f}, {high:.3f}] ({rate.hits}/{rate.n})"


def format_report(name: str, report: GuardReport) -> str:
    """The side-by-side table, per-red-flag recall and the combined guard's errors."""
    parts = [part for part in PARTS if part != "detector" or any(o.tiers["detector"] != "n/a" for o in report.outcomes)]
    rows = [
        ("emergency recall", lambda part: report.recall(part)),
        ("false alarms, routine", lambda part: report.false_alarms(part)),
        ("false alarms, hard negatives", lambda part: report.false_alarms(part, hard_only=True)),
        ("urgent -> same-day care or more", lambda part: report.rate(part, "urgent", ("urgent", "emergency"))),
        ("urgent -> emergency", lambda part: report.rate(part, "urgent", ("emergency",))),
        ("routine -> same-day care", lambda part: report.rate(part, "routine", ("urgent",))),
    ]
    lines = [f"## {name} ({len(report.outcomes)} messages; {report.detector_status})", "", "| | " + " | ".join(parts) + " |", "|---" * (len(parts) + 1) + "|"]
    lines += [f"| {label} | " + " | ".join(shown(rate(part)) for part in parts) + " |" for label, rate in rows]
    lines += ["", "Recall per red flag:", "", "| red flag | " + " | ".join(parts) + " |", "|---" * (len(parts) + 1) + "|"]
    flags = report.by_red_flag("combined")
    lines += [f"| {flag} | " + " | ".join(shown(report.by_red_flag(part)[flag]) for part in parts) + " |" for flag in flags]
    missed, alarms = report.missed(), report.alarms()
    lines += ["", f"Missed by the combined guard ({len(missed)}):"] + [f"- [{m.red_flag}] {m.text}" for m in missed]
    lines += ["", f"False alarms of the combined guard ({len(alarms)}):"] + [f"- ({m.kind}) {m.text}" for m in alarms]
    return "\n".join(lines)


def report(result: EvalResult) -> str:
    lines = [
        f"messages: {result.total}",
        f"recall:    {result.recall:.3f}  ({result.true_positives} of {result.true_positives + result.false_negatives} emergencies caught)",
        f"precision: {result.precision:.3f}  ({result.true_positives} of {result.true_positives + result.false_positives} alarms right)",
        "confusion (rows: label, columns: detector):",
        "                 emergency  ordinary",
        f"  emergency      {result.true_positives:9d}  {result.false_negatives:8d}",
        f"  ordinary       {result.false_positives:9d}  {result.true_negatives:8d}",
    ]
    lines.append(f"missed emergencies ({len(result.missed)}):")
    lines += [f"  [{e.red_flag}] {e.text}" for e in result.missed] or ["  none"]
    lines.append(f"false alarms ({len(result.false_alarms)}):")
    lines += [f"  {e.text}  <- {why}" for e, why in result.false_alarms] or ["  none"]
    lines.append(f"caught under another red flag ({len(result.other_flag)}):")
    lines += [f"  [{e.red_flag} -> {flag}] {e.text}" for e, flag in result.other_flag] or ["  none"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(prog="python -m bots.safety_eval", description="Measure the emergency guard (rules, detector, combined) with 95% intervals.")
    try:
        roles = set_roles()
    except (OSError, ValueError) as exc:
        parser.error(str(exc))
    default_sets = (*roles["report"], PROBE_SET)
    parser.add_argument("--set", dest="sets", action="append", choices=(*(name for names in roles.values() for name in names), PROBE_SET), help=f"tiered set(s) to measure (default: {', '.join(default_sets)})")
    parser.add_argument("--rules-only", action="store_true", help="do not load the model: the rules alone")
    parser.add_argument("--file", type=Path, default=None, help="an older binary set of {text, label, red_flag?} lines: rules only")
    parser.add_argument("--base-model", default=None, help="'embedded' (default), a hub id or a local folder; env TOP_BASE_MODEL")
    parser.add_argument("--backend", default=None, help="backend that computes the detector's features (default auto)")
    parser.add_argument("--detector", type=Path, default=DETECTOR_FILE, help="the detector file (default: the shipped bots/safety_detector.json)")
    args = parser.parse_args(argv)
    if not args.rules_only and not args.detector.is_file():
        parser.error(f"no such detector file: {args.detector}")
    if args.file is not None:
        path = args.file if args.file.is_file() else SAFETY_EVAL_DIR / args.file
        if not path.is_file():
            parser.error(f"no such file: {args.file}")
        print(report(evaluate(load_labelled(path))))
        return 0
    guard = RULES_ONLY
    if not args.rules_only:
        from bots.backends import build_backbone
        from bots.base_source import BaseModelSpec

        guard = EmergencyGuard.for_backbone(build_backbone(BaseModelSpec.from_env(args.base_model, backend=args.backend)), args.detector)
    for name in args.sets or default_sets:
        print(format_report(name, evaluate_guard(load_set(name), guard)))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
