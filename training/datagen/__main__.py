"""Regenerate the dialog datasets and their dataset cards.

    python -m training.datagen                  # both domains into training/data/
    python -m training.datagen --out /tmp/data  # somewhere else (tests use this)
    python -m training.datagen --domain medical

Every domain pack is generated from its phrase bank and its settings file (both named by
``domains/<name>/pack.yaml``). Output is seeded and byte-identical on every run. Fails (non-zero exit) if a validation or
test dialog is a near-duplicate of a training one, or a dialog does not validate.
"""

from __future__ import annotations

import sys
from pathlib import Path

import domains
from bots.cli_args import CommandParser
from training.datagen.card import dataset_card
from training.datagen.common import SPLITS, find_near_duplicates, write_jsonl
from training.datagen.domain_settings import DatagenSettings, SettingsError, load_settings
from training.datagen.engine import generate_domain, load_bank
from training.dialogs import DATA_DIR, validate_dialog


def build_domain(settings: DatagenSettings, out_dir: Path) -> dict[str, list[dict]]:
    """Generate, check and write one domain's three splits and its README."""
    records = generate_domain(settings.config, load_bank(settings.domain, settings.phrase_bank))
    for rows in records.values():
        for row in rows:
            problems = validate_dialog(row)
            if problems:
                raise SystemExit(f"{row['id']}: {'; '.join(problems)}")
    for split in ("validation", "test"):
        twins = find_near_duplicates(records[split], records["train"])
        if twins:
            raise SystemExit(f"{settings.domain}/{split}: near-duplicates of train: {twins[:5]}")
    folder = out_dir / settings.domain
    for split in SPLITS:
        write_jsonl(folder / f"{split}.jsonl", records[split])
    (folder / "README.md").write_text(dataset_card(settings, records), encoding="utf-8", newline="\n")
    return records


def main(argv: list[str] | None = None) -> int:
    parser = CommandParser(prog="python -m training.datagen", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DATA_DIR, help="output folder (default: training/data)")
    parser.add_argument("--domain", choices=domains.names(), action="append", help="only this domain (repeatable)")
    args = parser.parse_args(argv)
    for name in args.domain or domains.names():
        try:
            settings = load_settings(name)
        except SettingsError as exc:
            parser.error(str(exc))  # one line, exit code 2, like every other bad input
        records = build_domain(settings, args.out)
        sizes = ", ".join(f"{split} {len(rows)}" for split, rows in records.items())
        print(f"{name}: {sizes} -> {args.out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
