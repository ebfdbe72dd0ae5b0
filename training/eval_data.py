"""What the evaluation asks: held-out dialogs and probe sets, as uniform ``EvalCase`` records.

A domain's evaluation *sources* are its held-out dialogs (source ``test``: the dialog data's
validation split, ``training/data/<domain>/validation.jsonl``, on the dev split, and its test
split, ``test.jsonl``, on the test split) and its probe files (``training/probes/*.jsonl``,
described in ``training/probes/README.md``; which files, fields and checks a domain has is its
pack's ``probes:``, domains/<name>/pack.yaml). ``load_cases`` reads them, checks the fields each
file needs and, with a limit, keeps an evenly spread subset so that a small run still covers
every topic and red flag. Every probe carries a ``split`` (``dev`` for looking at while tuning
prompts and data, ``test`` for the reported comparison) and the ``spec_row`` it tests;
``load_cases(..., split="dev")`` keeps one split, of the probes and of the dialogs alike, so
nothing chosen on dev has seen a test dialog. Used by ``training.evaluate``; no command of its own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import domains
from training.dialogs import DATA_DIR, DialogFileError, read_jsonl_dialogs

PROBES_DIR = Path(__file__).resolve().parent / "probes"
T = TypeVar("T")
Message = dict[str, str]


class ProbeFileError(ValueError):
    """A probe file is missing or malformed; the message names the file and line."""


@dataclass(frozen=True)
class ProbeSource:
    """One probe file, the domain(s) it serves and the fields each of its lines must have."""

    name: str
    file: str
    domains: tuple[str, ...]
    fields: tuple[str, ...]
    group: str = ""
    """The field that groups the file's probes (topic, intent, red flag, kind): each group has probes in both splits."""

    def group_of(self, row: dict[str, Any]) -> str:
        """The probe's group, per domain where the file serves both (``ecommerce/leak``); a null look-alike is ``none``."""
        value = str(row.get(self.group) or "none")
        return f"{row['domain']}/{value}" if "domain" in row else value


def probe_sources() -> tuple[ProbeSource, ...]:
    """Every probe source of every domain pack (``probes:``); a file two domains share is one source
    serving both, and the packs must describe it alike."""
    merged: dict[str, ProbeSource] = {}
    checks: dict[str, tuple[str, ...]] = {}
    for name in domains.names():
        for spec in domains.pack(name).probes:
            known = merged.get(spec.source)
            if known is None:
                merged[spec.source] = ProbeSource(spec.source, spec.file, (name,), spec.fields, spec.group)
                checks[spec.source] = spec.checks
            elif (known.file, known.fields, known.group, checks[spec.source]) != (spec.file, spec.fields, spec.group, spec.checks):
                raise ProbeFileError(f"domain packs disagree on the probe source '{spec.source}' ({', '.join(known.domains)} vs {name})")
            else:
                merged[spec.source] = ProbeSource(known.name, known.file, (*known.domains, name), known.fields, known.group)
    return tuple(merged.values())


PROBE_SOURCES: tuple[ProbeSource, ...] = probe_sources()
TEST_SOURCE = "test"
"""The source of the held-out dialogs (the name is older than the dev split's use of validation.jsonl)."""
SPLITS = ("dev", "test")
"""The probe splits: ``dev`` (about 40% of every group) to look at while tuning, ``test`` (the rest) to report."""
DIALOG_FILES = {"dev": "validation.jsonl", "test": "test.jsonl"}
"""The dialog data's file that each evaluation split holds out (the training run reads the third, train.jsonl)."""


@dataclass(frozen=True)
class EvalCase:
    """One request to a bot: the conversation up to the user's last message, and what to check."""

    source: str
    case_id: str
    conversation: tuple[Message, ...]
    reference: str | None = None
    """The dialog's assistant answer (test split only): for ROUGE-L and perplexity."""
    info: dict[str, Any] = field(default_factory=dict)
    """The probe's own fields (topic, expected, forbidden, red_flag, ...)."""

    @property
    def question(self) -> str:
        return self.conversation[-1]["content"]


@dataclass
class DomainCases:
    """Every source of one domain, with notes on what could not be loaded."""

    domain: str
    sources: dict[str, list[EvalCase]]
    files: list[Path]
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(len(cases) for cases in self.sources.values())


def spread(items: list[T], limit: int | None) -> list[T]:
    """At most ``limit`` items, evenly spaced over the list (files are grouped by topic)."""
    if limit is None or limit >= len(items):
        return list(items)
    if limit <= 0:
        return []
    step = len(items) / limit
    return [items[int(index * step)] for index in range(limit)]


def read_probe_file(path: Path, fields: tuple[str, ...]) -> list[dict[str, Any]]:
    """Read a probe jsonl file; every line must be an object with ``fields`` (patterns as lists of strings)."""
    if not path.is_file():
        raise ProbeFileError(f"{path}: probe file not found")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ProbeFileError(f"{path}:{number}: bad JSON: {exc.msg}") from exc
        missing = [name for name in fields if not isinstance(row, dict) or name not in row]
        if missing:
            raise ProbeFileError(f"{path}:{number}: missing field(s) {', '.join(missing)}")
        for key in ("expected", "forbidden"):
            if key in row and (not isinstance(row[key], list) or not row[key] or not all(isinstance(p, str) for p in row[key])):
                raise ProbeFileError(f"{path}:{number}: '{key}' must be a non-empty list of regular expressions")
        if "split" in row and row["split"] not in SPLITS:
            raise ProbeFileError(f"{path}:{number}: 'split' must be one of {', '.join(SPLITS)}, not {row['split']!r}")
        if "spec_row" in row and (not isinstance(row["spec_row"], str) or not row["spec_row"].strip()):
            raise ProbeFileError(f"{path}:{number}: 'spec_row' must name the spec row or rule the probe tests")
        rows.append(row)
    return rows


def dialog_to_case(dialog: dict[str, Any], split: str = "test") -> EvalCase:
    """The dialog's last assistant turn is the reference; everything before it (system message dropped) is the conversation.
    ``split``: the evaluation split the dialog belongs to (its file, DIALOG_FILES)."""
    turns = [m for m in dialog["messages"] if m["role"] != "system"]
    info = {key: dialog[key] for key in ("topic", "kind", "emergency", "red_flag") if dialog.get(key) is not None}
    info["split"] = split
    return EvalCase(TEST_SOURCE, str(dialog.get("id", "")), tuple(turns[:-1]), turns[-1]["content"], info)


def probe_to_case(source: str, row: dict[str, Any]) -> EvalCase:
    info = {key: value for key, value in row.items() if key not in ("id", "question")}
    return EvalCase(source, str(row["id"]), ({"role": "user", "content": row["question"]},), None, info)


def load_cases(
    domain: str, limit: int | None = None, data_dir: Path | None = None, probes_dir: Path | None = None, split: str | None = None
) -> DomainCases:
    """The held-out dialogs and probe sets of ``domain``, each capped at ``limit`` cases; ``split``
    keeps only that split's dialogs (DIALOG_FILES) and probes (None: both)."""
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)} or None, not {split!r}")
    data_dir = data_dir or DATA_DIR
    probes_dir = probes_dir or PROBES_DIR
    result = DomainCases(domain, {}, [])
    dialog_cases: list[EvalCase] = []
    for name in [split] if split else SPLITS:
        dialog_file = data_dir / domain / DIALOG_FILES[name]
        try:
            dialog_cases += spread([dialog_to_case(d, name) for d in read_jsonl_dialogs(dialog_file)], limit)
            result.files.append(dialog_file)
        except DialogFileError as exc:
            # The data may still be being generated: probes alone are still worth reporting.
            result.notes.append(f"{domain}: {DIALOG_FILES[name]} not evaluated ({exc}); ROUGE-L and perplexity miss its dialogs")
    if dialog_cases:
        result.sources[TEST_SOURCE] = dialog_cases
    by_name = {probe.name: probe for probe in PROBE_SOURCES}
    for probe in (by_name[spec.source] for spec in domains.pack(domain).probes):  # the pack's order
        path = probes_dir / probe.file
        rows = [
            row
            for row in read_probe_file(path, probe.fields)
            if row.get("domain", domain) == domain and (split is None or row["split"] == split)
        ]
        result.sources[probe.name] = spread([probe_to_case(probe.name, row) for row in rows], limit)
        result.files.append(path)
    return result
