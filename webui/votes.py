"""Arena votes in an embedded SQLite file: versioned schema, WAL, atomic writes, CSV/JSONL export.

The file lives at ``$TOP_VOTES_DB`` or, by default, ``$XDG_DATA_HOME/tune-or-prompt/votes.sqlite3``
(``~/.local/share/...``). Every vote is one row written in its own transaction, so a process
killed mid-write leaves the file readable with every vote committed before it. Payment-card-like
numbers (13 to 19 digits) and CVVs are masked before anything is stored (bots.safety.mask_card_numbers).

    python -m webui.votes                  # where the file is, and the vote count per domain
    python -m webui.votes --csv out.csv    # export every vote (also --jsonl out.jsonl)
"""

from __future__ import annotations

import csv
import json
import os
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from bots.cli_args import CommandParser
from bots.safety import mask_card_numbers

ENV_VOTES_DB = "TOP_VOTES_DB"
APP_DIR = "tune-or-prompt"
Outcome = Literal["a", "b", "tie", "both_bad"]
OUTCOMES: dict[str, str] = {"a": "A is better", "b": "B is better", "tie": "Tie", "both_bad": "Both are bad"}

# Each migration takes the schema from version i to i + 1; append, never edit a shipped one.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE votes (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        created_at TEXT NOT NULL,
        domain TEXT NOT NULL,
        message TEXT NOT NULL,
        variant_a TEXT NOT NULL,
        variant_b TEXT NOT NULL,
        reply_a TEXT NOT NULL,
        reply_b TEXT NOT NULL,
        outcome TEXT NOT NULL CHECK (outcome IN ('a', 'b', 'tie', 'both_bad')),
        settings_json TEXT NOT NULL,
        round_seed INTEGER NOT NULL
    );
    CREATE INDEX votes_by_domain ON votes (domain, id);
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


class VoteStoreError(RuntimeError):
    """The votes file cannot be used (for example it was written by a newer version)."""


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Vote:
    """One arena verdict: a message, two anonymous replies and which one the user preferred."""

    domain: str
    message: str
    variant_a: str
    variant_b: str
    reply_a: str
    reply_b: str
    outcome: Outcome
    settings: dict[str, Any] = field(default_factory=dict)
    round_seed: int = 0
    created_at: str = field(default_factory=utc_now)
    """UTC, ISO 8601 with a 'Z'."""
    id: int | None = None

    def masked(self) -> Vote:
        return replace(self, message=mask_card_numbers(self.message), reply_a=mask_card_numbers(self.reply_a), reply_b=mask_card_numbers(self.reply_b))

    def record(self) -> dict[str, Any]:
        """A flat dict for export (settings stay a dict; CSV writes them as JSON)."""
        return asdict(self)


EXPORT_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Vote))


@dataclass(frozen=True)
class VoteStoreConfig:
    """Where the votes file lives and how hard it syncs."""

    path: Path
    synchronous: str = "FULL"
    """FULL: a committed vote survives a power cut too, not only a killed process."""
    busy_timeout_ms: int = 5000

    @classmethod
    def from_env(cls) -> VoteStoreConfig:
        return cls(default_db_path())


def default_db_path() -> Path:
    env = os.environ.get(ENV_VOTES_DB)
    if env:
        return Path(env).expanduser()
    data_home = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return data_home / APP_DIR / "votes.sqlite3"


class VoteStore:
    """Open (creating or migrating) the votes file; one short-lived connection per call.

    Gradio runs handlers on worker threads, and sqlite3 connections belong to one thread,
    so no connection is kept between calls (opening one costs well under a millisecond).
    """

    def __init__(self, config: VoteStoreConfig) -> None:
        self.config = config
        self.path = config.path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as conn:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise VoteStoreError(f"{self.path}: could not switch to WAL mode (got {mode})")
            self._migrate(conn)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a transaction is exactly one block.
        with closing(sqlite3.connect(self.path, isolation_level=None, timeout=self.config.busy_timeout_ms / 1000)) as conn:
            conn.execute(f"PRAGMA synchronous={self.config.synchronous}")
            conn.row_factory = sqlite3.Row
            yield conn

    @contextmanager
    def _transaction(self, conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        conn.execute("BEGIN IMMEDIATE")  # take the write lock now, not half-way through
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _migrate(self, conn: sqlite3.Connection) -> None:
        with self._transaction(conn):
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = conn.execute("SELECT version FROM schema_version").fetchone()
            current = row[0] if row else 0
            if current > SCHEMA_VERSION:
                raise VoteStoreError(f"{self.path} has schema version {current}; this code knows up to {SCHEMA_VERSION}")
            for script in MIGRATIONS[current:]:
                for statement in _statements(script):
                    conn.execute(statement)  # not executescript(): it would COMMIT our transaction
            if row is None:
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
            else:
                conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))

    def schema_version(self) -> int:
        with self._connect() as conn:
            return int(conn.execute("SELECT version FROM schema_version").fetchone()[0])

    def journal_mode(self) -> str:
        with self._connect() as conn:
            return str(conn.execute("PRAGMA journal_mode").fetchone()[0])

    def add(self, vote: Vote) -> int:
        """Store a vote (card-like numbers masked) in one transaction; returns its id."""
        if vote.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {', '.join(OUTCOMES)}, not {vote.outcome!r}")
        vote = vote.masked()
        with self._connect() as conn, self._transaction(conn):
            cursor = conn.execute(
                "INSERT INTO votes (created_at, domain, message, variant_a, variant_b, reply_a, reply_b, outcome, settings_json, round_seed)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (vote.created_at, vote.domain, vote.message, vote.variant_a, vote.variant_b, vote.reply_a, vote.reply_b, vote.outcome,
                 json.dumps(vote.settings, sort_keys=True), vote.round_seed),
            )
            return int(cursor.lastrowid)

    def votes(self, domain: str | None = None) -> list[Vote]:
        """Every vote, oldest first (only one domain's when given)."""
        query = "SELECT * FROM votes" + (" WHERE domain = ?" if domain else "") + " ORDER BY id"
        with self._connect() as conn:
            rows = conn.execute(query, (domain,) if domain else ()).fetchall()
        return [_vote_from_row(row) for row in rows]

    def count(self) -> dict[str, int]:
        with self._connect() as conn:
            return {row[0]: row[1] for row in conn.execute("SELECT domain, COUNT(*) FROM votes GROUP BY domain ORDER BY domain")}


def _statements(script: str) -> list[str]:
    return [part.strip() for part in script.split(";") if part.strip()]


def _vote_from_row(row: sqlite3.Row) -> Vote:
    return Vote(
        domain=row["domain"], message=row["message"], variant_a=row["variant_a"], variant_b=row["variant_b"],
        reply_a=row["reply_a"], reply_b=row["reply_b"], outcome=row["outcome"], settings=json.loads(row["settings_json"]),
        round_seed=row["round_seed"], created_at=row["created_at"], id=row["id"],
    )


def export_csv(votes: Iterable[Vote], path: Path) -> Path:
    """One row per vote; the settings column holds JSON."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=EXPORT_FIELDS)
        writer.writeheader()
        for vote in votes:
            record = vote.record()
            record["settings"] = json.dumps(record["settings"], sort_keys=True)
            writer.writerow(record)
    return path


def export_jsonl(votes: Iterable[Vote], path: Path) -> Path:
    """One JSON object per line per vote."""
    with path.open("w", encoding="utf-8") as handle:
        for vote in votes:
            handle.write(json.dumps(vote.record(), ensure_ascii=False, sort_keys=True) + "\n")
    return path


@lru_cache(maxsize=8)
def _store_at(path: Path) -> VoteStore:
    return VoteStore(VoteStoreConfig(path))


def default_store() -> VoteStore:
    """The store at the configured path, opened (and migrated) once per path per process.

    Read at call time, so tests and deployments can point TOP_VOTES_DB elsewhere after import.
    """
    return _store_at(default_db_path())


def main(argv: list[str] | None = None) -> None:
    parser = CommandParser(prog="python -m webui.votes", description="Inspect or export the arena votes.")
    parser.add_argument("--csv", type=Path, help="write every vote to this CSV file")
    parser.add_argument("--jsonl", type=Path, help="write every vote to this JSONL file")
    args = parser.parse_args(argv)
    store = default_store()
    print(f"votes file: {store.path} (schema version {store.schema_version()})")
    for domain, count in store.count().items():
        print(f"  {domain}: {count} votes")
    if args.csv:
        print(f"wrote {export_csv(store.votes(), args.csv)}")
    if args.jsonl:
        print(f"wrote {export_jsonl(store.votes(), args.jsonl)}")


if __name__ == "__main__":
    main()
