"""``python -m bots.safety_eval [--file F]``: recall, precision, confusion counts and errors of detect_emergency."""

from __future__ import annotations

import sys
from pathlib import Path

from bots.cli_args import CommandParser
from bots.safety_eval import LABELLED_SET, EvalResult, evaluate, load_labelled


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
    parser = CommandParser(prog="python -m bots.safety_eval", description=__doc__)
    parser.add_argument("--file", type=Path, default=LABELLED_SET, help="JSONL of {text, label, red_flag?}")
    args = parser.parse_args(argv)
    print(report(evaluate(load_labelled(args.file))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
