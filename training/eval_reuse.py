"""Replies of an earlier evaluation run that a new run may take instead of generating them again.

    python -m training.evaluate --split test --reuse training/reports    # only what changed is generated

A full report takes hours on 2 cores, and most of it does not change when one variant does
(a new adapter, an edited prompt). With ``--reuse DIR`` the run reads the replies of an
earlier run (``DIR/replies.jsonl``, and ``DIR/dev/replies.jsonl`` of a ``--split all`` run)
and takes a reply instead of generating it only when all of this holds:

- the run serves the same way: the base model's fingerprint, the backend, the llama.cpp
  version and the generation settings are the same (``serving_fingerprint``); otherwise
  nothing is taken, and the run says why;
- the reply's own fingerprint is the same (``reply_fingerprint``): the entry, the case's
  question, the exact messages the bot would send for it (system prompt, retrieved facts
  and examples, conversation), the adapter's weights and, for a ``+guard`` entry only, the
  safety rules and the detector weights (a new detector leaves the model-alone replies valid).

Everything taken is scored again with today's checks, so an edited probe pattern counts. A run
in progress appends each case's replies, as soon as they exist, to ``partial_replies.jsonl`` in
its ``--out`` folder, so a run that was stopped resumes with ``--reuse`` on that folder.
What the fingerprints cannot see is a change to the generation code itself: after one, run
without ``--reuse``. No command of its own; ``training.evaluate`` uses it.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bots.base_source import file_sha256
from bots.bot import Bot
from bots.detector import DETECTOR_FILE
from bots.safety import RULES_FILE

DEV_FOLDER = "dev"
PARTIAL_META = "partial.json"
PARTIAL_REPLIES = "partial_replies.jsonl"
"""A run in progress writes each case's replies here as soon as it has them, so that an
interrupted run can be resumed with ``--reuse`` on its own folder; a finished run removes them."""


def _llama_version() -> str | None:
    try:
        import llama_cpp
    except ImportError:
        return None
    return str(getattr(llama_cpp, "__version__", "unknown"))


def serving_fingerprint(base_fingerprint: str, backend: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """What every reply of a run depends on, apart from its variant and case."""
    return {
        "base": base_fingerprint,
        "backend": backend,
        "llama_cpp": _llama_version() if backend == "llamacpp" else None,
        "settings": dict(settings),
    }


def guard_fingerprint() -> dict[str, str | None]:
    """What a guarded reply depends on besides the model: the safety rules and the detector weights."""
    detector_stamp = DETECTOR_FILE.stat().st_mtime_ns if DETECTOR_FILE.is_file() else None
    return dict(_guard_files(RULES_FILE.stat().st_mtime_ns, detector_stamp))


@functools.lru_cache(maxsize=4)
def _guard_files(rules_stamp: int, detector_stamp: int | None) -> tuple[tuple[str, str | None], ...]:
    # Hashed once per file version (the stamps are the key), not once per reply.
    return (("safety_rules", file_sha256(RULES_FILE)), ("detector", file_sha256(DETECTOR_FILE) if detector_stamp is not None else None))


def reply_fingerprint(bot: Bot, entry: str, conversation: list[dict[str, str]], adapter_sha: str | None, guarded: bool = False) -> str:
    """The entry, the exact messages the bot sends for this conversation, its adapter's weights,
    and for a guarded entry the guard's files."""
    messages = bot.render(list(conversation))
    content: dict[str, Any] = {"entry": entry, "messages": messages, "adapter": adapter_sha}
    if guarded:
        content["guard"] = guard_fingerprint()
    payload = json.dumps(content, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:24]


@dataclass
class Previous:
    """An earlier run's replies, by (entry, source, case id), when it served as this run does.

    One case may have several: a ``--split all`` folder holds a dev and a test report that can
    share a case, each generated its own way (merged or run-time adapters, another detector)."""

    folder: Path
    date: str = ""
    records: dict[tuple[str, str, str], list[dict[str, Any]]] = field(default_factory=dict)
    refused: str = ""
    """Why nothing can be taken (empty when the run is compatible)."""
    partial_taken: bool = False
    """Whether an interrupted run's partial file was read (it served as this run does)."""

    def take(self, entry: str, source: str, case_id: str, fingerprint: str) -> dict[str, Any] | None:
        """The earlier reply to this case by this entry whose fingerprint is the same, the newest
        first (a failed one is tried again)."""
        rows = self.records.get((entry, source, case_id), [])
        return next((row for row in reversed(rows) if row.get("fingerprint") == fingerprint and not row.get("error")), None)


def has_run(folder: Path) -> bool:
    """Whether the folder holds a finished run (results.json) or an interrupted one (partial.json)."""
    return (folder / "results.json").is_file() or (folder / PARTIAL_META).is_file()


def load_previous(folder: Path, serving: Mapping[str, Any]) -> Previous:
    """Read an earlier run's report folder, finished or interrupted; ``refused`` says why none of it may be taken."""
    if not has_run(folder):
        raise FileNotFoundError(f"--reuse {folder}: no results.json or {PARTIAL_META} there (a report folder of training.evaluate)")
    previous = Previous(folder)
    runs = []  # (its meta, its reply files, interrupted?), the finished run first: an interrupted one is newer
    if (folder / "results.json").is_file():
        runs.append((json.loads((folder / "results.json").read_text(encoding="utf-8")).get("meta", {}), [folder / "replies.jsonl", folder / DEV_FOLDER / "replies.jsonl"], False))
    if (folder / PARTIAL_META).is_file():
        runs.append((json.loads((folder / PARTIAL_META).read_text(encoding="utf-8")), [folder / PARTIAL_REPLIES], True))
    refusals = []
    for meta, paths, interrupted in runs:
        theirs = meta.get("serving")
        if theirs != dict(serving):
            differs = sorted(k for k in serving if not isinstance(theirs, dict) or theirs.get(k) != serving[k])
            refusals.append(f"the run in {folder} of {meta.get('date', '?')} served differently ({', '.join(differs) or 'no serving fingerprint'})")
            continue
        previous.date = str(meta.get("date", ""))
        previous.partial_taken = previous.partial_taken or interrupted
        for path in paths:
            if path.is_file():
                for row in _rows(path, interrupted):
                    previous.records.setdefault((row["entry"], row["source"], row["case_id"]), []).append(row)
    if not previous.records and refusals:
        previous.refused = "; ".join(refusals) + ": nothing is reused"
    return previous


class ReuseError(ValueError):
    """An earlier run's folder cannot be read; the message says where."""


def _rows(path: Path, interrupted: bool) -> list[dict[str, Any]]:
    """The rows of a replies file. An interrupted run may have been stopped halfway through
    writing its last line: that line is dropped (its case is run again); anything else broken is an error."""
    # errors="replace": a stop inside a multi-byte character leaves bytes that are not UTF-8.
    lines = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if interrupted and number == len(lines):
                break
            raise ReuseError(f"--reuse: {path} line {number} is not JSON ({exc.msg}): the folder is damaged") from exc
    return rows


def start_partial(folder: Path, serving: Mapping[str, Any], date: str, keep: bool = False) -> None:
    """A run begins: its replies will be appended to the folder's partial file as they come.

    ``keep``: a run that resumes this folder's own compatible partial file appends to it, so
    that a second stop loses nothing the first run had kept."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / PARTIAL_META).write_text(json.dumps({"serving": dict(serving), "date": date}, indent=2) + "\n", encoding="utf-8")
    partial = folder / PARTIAL_REPLIES
    if not keep or not partial.is_file():
        partial.write_text("", encoding="utf-8")
        return
    data = partial.read_bytes()
    if data and not data.endswith(b"\n"):  # stopped while writing a line: cut it, so new rows start on a line of their own
        partial.write_bytes(data[: data.rfind(b"\n") + 1])


def append_partial(folder: Path, rows: list[dict[str, Any]]) -> None:
    with (folder / PARTIAL_REPLIES).open("a", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def end_partial(folder: Path) -> None:
    """The run finished and wrote its replies: the partial files are no longer needed."""
    for name in (PARTIAL_META, PARTIAL_REPLIES):
        (folder / name).unlink(missing_ok=True)
