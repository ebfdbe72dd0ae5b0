"""Compare two evaluation runs case by case: what a change (retrieval, adapter, guard) won or lost.

    python -m training.compare_runs training/reports/dev artifacts/eval_dev
    python -m training.compare_runs OLD NEW --entries medical-hybrid,medical-hybrid+guard --json diff.json

Each argument is a report folder of ``python -m training.evaluate`` (its ``replies.jsonl``) or a
replies file itself. Replies are paired by (entry, source, case id): only cases that both runs
answered count, so a run on a grown probe set still compares on the shared cases. For every
entry and binary check (``states_fact``, ``escalates_first``, ``raises_alarm``...) it prints
the paired number of cases, both rates, the cases lost (right before, wrong now) and gained,
and the two-sided exact McNemar p-value (training/stats.py). A check where a higher rate is
worse (``raises_alarm``) is marked, so "gained" there means more false alarms.

Exit status 0, or 2 on bad usage (a missing or unreadable file, an unknown entry).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from bots.cli_args import CommandParser
from training.stats import mcnemar_exact

LOWER_IS_BETTER = frozenset({"raises_alarm"})
"""Checks where True is the bad outcome (a false alarm on an ordinary question)."""

Key = tuple[str, str, str]  # (entry, source, case id)


@dataclass(frozen=True)
class CheckDiff:
    entry: str
    source: str
    check: str
    n: int
    rate_before: float
    rate_after: float
    lost: int
    """True before, False now."""
    gained: int
    """False before, True now."""
    p_value: float

    @property
    def lower_is_better(self) -> bool:
        return self.check in LOWER_IS_BETTER


def replies_path(path: Path) -> Path:
    """A report folder's replies.jsonl, or the file itself."""
    return path / "replies.jsonl" if path.is_dir() else path


def load_checks(path: Path) -> dict[Key, dict[str, bool]]:
    """The binary checks of every reply of a run, by (entry, source, case id)."""
    file = replies_path(path)
    if not file.is_file():
        raise FileNotFoundError(f"no replies at {file} (give a report folder of training.evaluate or its replies.jsonl)")
    checks: dict[Key, dict[str, bool]] = {}
    with file.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                key = (str(row["entry"]), str(row["source"]), str(row["case_id"]))
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(f"{file}:{number}: not a reply row of training.evaluate ({exc})") from exc
            checks[key] = {name: value for name, value in (row.get("checks") or {}).items() if isinstance(value, bool)}
    return checks


def compare(before: dict[Key, dict[str, bool]], after: dict[Key, dict[str, bool]], entries: Iterable[str] | None = None) -> list[CheckDiff]:
    """One CheckDiff per (entry, source, check) over the cases both runs answered with that check."""
    wanted = set(entries) if entries is not None else None
    pairs: dict[tuple[str, str, str], list[tuple[bool, bool]]] = {}
    for key in sorted(before.keys() & after.keys()):
        entry, source, _ = key
        if wanted is not None and entry not in wanted:
            continue
        for check in sorted(before[key].keys() & after[key].keys()):
            pairs.setdefault((entry, source, check), []).append((before[key][check], after[key][check]))
    diffs = []
    for (entry, source, check), outcomes in pairs.items():
        lost = sum(1 for old, new in outcomes if old and not new)
        gained = sum(1 for old, new in outcomes if new and not old)
        n = len(outcomes)
        diffs.append(
            CheckDiff(
                entry=entry,
                source=source,
                check=check,
                n=n,
                rate_before=sum(old for old, _ in outcomes) / n,
                rate_after=sum(new for _, new in outcomes) / n,
                lost=lost,
                gained=gained,
                p_value=mcnemar_exact(lost, gained),
            )
        )
    return diffs


def format_table(diffs: list[CheckDiff]) -> str:
    lines = [
        "| entry | source: check | n | before | after | lost / gained | p |",
        "|---|---|---|---|---|---|---|",
    ]
    for diff in diffs:
        mark = " (lower is better)" if diff.lower_is_better else ""
        p = f"**{diff.p_value:.3g}**" if diff.p_value < 0.05 else f"{diff.p_value:.3g}"
        lines.append(
            f"| {diff.entry} | {diff.source}: {diff.check}{mark} | {diff.n} | {diff.rate_before:.2f} | {diff.rate_after:.2f} | {diff.lost} / {diff.gained} | {p} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(prog="python -m training.compare_runs", description="Compare two evaluation runs case by case (exact McNemar per check).")
    parser.add_argument("before", type=Path, help="the earlier run: a report folder or its replies.jsonl")
    parser.add_argument("after", type=Path, help="the later run")
    parser.add_argument("--entries", default=None, help="comma-separated entries only (e.g. medical-hybrid,medical-hybrid+guard); default: all shared")
    parser.add_argument("--json", type=Path, default=None, help="also write the comparison to this file")
    args = parser.parse_args(argv)
    try:
        before, after = load_checks(args.before), load_checks(args.after)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    entries = [name.strip() for name in args.entries.split(",") if name.strip()] if args.entries else None
    if entries is not None:
        known = {entry for entry, _, _ in before.keys() & after.keys()}
        unknown = sorted(set(entries) - known)
        if unknown:
            print(f"error: not answered by both runs: {', '.join(unknown)} (shared: {', '.join(sorted(known)) or 'none'})", file=sys.stderr)
            return 2
    diffs = compare(before, after, entries)
    if not diffs:
        print("error: the two runs share no case with a binary check", file=sys.stderr)
        return 2
    print(format_table(diffs))
    if args.json:
        args.json.write_text(json.dumps([asdict(diff) for diff in diffs], indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
