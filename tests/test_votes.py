"""The SQLite votes store: schema version, WAL, round trip, export, masking, crash safety."""

from __future__ import annotations

import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from webui import votes as votes_module
from webui.votes import SCHEMA_VERSION, Vote, VoteStore, VoteStoreConfig, VoteStoreError, export_csv, export_jsonl

REPO = Path(__file__).resolve().parent.parent


def _vote(n: int = 0, **changes: object) -> Vote:
    fields: dict[str, object] = {"domain": "ecommerce", "message": f"question {n}", "variant_a": "ecommerce-lora", "variant_b": "ecommerce-prompt",
                               "reply_a": f"reply a {n}", "reply_b": f"reply b {n}", "outcome": "a", "settings": {"max_new_tokens": 16, "temperature": 0.0}, "round_seed": n}
    fields.update(changes)
    return Vote(**fields)  # type: ignore[arg-type]


@pytest.fixture()
def store(tmp_path: Path) -> VoteStore:
    return VoteStore(VoteStoreConfig(tmp_path / "data" / "votes.sqlite3"))


def test_new_file_has_the_current_schema_version_and_wal(store: VoteStore) -> None:
    assert store.path.is_file()
    assert store.schema_version() == SCHEMA_VERSION == len(votes_module.MIGRATIONS)
    assert store.journal_mode() == "wal"
    # Opening again migrates nothing and keeps a single version row.
    again = VoteStore(store.config)
    with sqlite3.connect(again.path) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]


def test_an_older_file_is_migrated_and_a_newer_one_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "votes.sqlite3"
    VoteStore(VoteStoreConfig(path)).add(_vote(1))
    # A later version adds a column: the existing file is migrated in place, votes kept.
    monkeypatch.setattr(votes_module, "MIGRATIONS", (*votes_module.MIGRATIONS, "ALTER TABLE votes ADD COLUMN note TEXT"))
    monkeypatch.setattr(votes_module, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    migrated = VoteStore(VoteStoreConfig(path))
    assert migrated.schema_version() == SCHEMA_VERSION + 1 and len(migrated.votes()) == 1
    with sqlite3.connect(path) as conn:
        assert "note" in [row[1] for row in conn.execute("PRAGMA table_info(votes)")]
    monkeypatch.undo()
    with pytest.raises(VoteStoreError, match="schema version"):
        VoteStore(VoteStoreConfig(path))


def test_round_trip_keeps_every_field(store: VoteStore) -> None:
    written = [_vote(1), _vote(2, outcome="both_bad", domain="medical", variant_a="medical-prompt", variant_b="medical-lora"), _vote(3, outcome="tie")]
    ids = [store.add(vote) for vote in written]
    assert ids == sorted(ids)
    read = store.votes()
    assert [vote.id for vote in read] == ids
    for before, after in zip(written, read, strict=True):
        assert after == Vote(**{**before.record(), "id": after.id})
        assert after.created_at.endswith("Z")
    assert [v.round_seed for v in store.votes("medical")] == [2]
    assert store.count() == {"ecommerce": 2, "medical": 1}
    with pytest.raises(ValueError, match="outcome"):
        store.add(_vote(4, outcome="maybe"))
    assert len(store.votes()) == 3


def test_export_csv_and_jsonl(store: VoteStore, tmp_path: Path) -> None:
    for n in range(3):
        store.add(_vote(n, message=f'say "hi", {n}\nnew line'))
    votes = store.votes()
    with export_csv(votes, tmp_path / "votes.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["message"] for row in rows] == [v.message for v in votes]
    assert json.loads(rows[0]["settings"]) == {"max_new_tokens": 16, "temperature": 0.0}
    assert set(rows[0]) == set(votes_module.EXPORT_FIELDS)
    lines = export_jsonl(votes, tmp_path / "votes.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["reply_b"] for r in records] == [v.reply_b for v in votes]
    assert records[2]["settings"]["max_new_tokens"] == 16 and records[2]["variant_a"] == "ecommerce-lora"


@pytest.mark.parametrize(
    ("text", "card"),
    [
        ("my card is 4111111111111111, ok?", "4111111111111111"),
        ("4111 1111 1111 1111", "4111 1111 1111"),
        ("amex 3782-822463-10005", "3782-822463"),
    ],
)
def test_card_like_numbers_are_masked_in_every_text_field(store: VoteStore, text: str, card: str) -> None:
    store.add(_vote(1, message=text, reply_a=f"you said: {text}", reply_b=text.upper()))
    vote = store.votes()[-1]
    for stored in (vote.message, vote.reply_a, vote.reply_b):
        assert card not in stored and "****" in stored


def test_other_numbers_are_kept(store: VoteStore) -> None:
    text = "order 123456 on 2026-11-23, call 555-123-4567; twelve digits 123456789012"
    store.add(_vote(1, message=text))
    assert store.votes()[-1].message == text


def test_card_numbers_never_reach_the_file(store: VoteStore) -> None:
    store.add(_vote(1, message="charge 5500 0000 0000 0004 please", reply_a="Your card 5500000000000004 is noted", reply_b="no"))
    vote = store.votes()[0]
    assert "5500" not in vote.message + vote.reply_a and "****" in vote.reply_a
    assert b"5500000000000004" not in store.path.read_bytes()
    wal = store.path.with_name(store.path.name + "-wal")
    assert not wal.exists() or b"5500000000000004" not in wal.read_bytes()


WRITER = """
import sys, time
from pathlib import Path
from webui.votes import Vote, VoteStore, VoteStoreConfig
store = VoteStore(VoteStoreConfig(Path(sys.argv[1])))
n = 0
while True:
    store.add(Vote("ecommerce", "q" * 2000, "ecommerce-lora", "ecommerce-prompt", "a" * 5000, "b" * 5000, "tie", {"n": n}, n))
    n += 1
    print(n, flush=True)
"""


def test_a_writer_killed_mid_write_leaves_a_readable_file_with_every_committed_vote(tmp_path: Path) -> None:
    path = tmp_path / "votes.sqlite3"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], cwd=REPO, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    committed = 0
    deadline = time.monotonic() + 60
    try:
        while committed < 40 and time.monotonic() < deadline:
            line = writer.stdout.readline()
            if not line:
                break
            committed = int(line)
    finally:
        os.kill(writer.pid, signal.SIGKILL)  # mid-way through a later write
        writer.wait()
    # Votes it reported after the line we read before killing it are committed too.
    for line in writer.stdout:
        committed = int(line)
    writer.stdout.close()
    assert committed >= 40, "the writer did not get going"
    store = VoteStore(VoteStoreConfig(path))  # recovers the WAL
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    stored = store.votes()
    # Every vote the writer reported as written is there; at most the one in flight beyond it.
    assert committed <= len(stored) <= committed + 1
    assert [vote.settings["n"] for vote in stored] == list(range(len(stored)))
    assert all(vote.reply_a == "a" * 5000 for vote in stored)


def test_default_path_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOP_VOTES_DB", str(tmp_path / "elsewhere.sqlite3"))
    assert votes_module.default_db_path() == tmp_path / "elsewhere.sqlite3"
    assert votes_module.default_store().path == tmp_path / "elsewhere.sqlite3"
    monkeypatch.delenv("TOP_VOTES_DB")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert votes_module.default_db_path() == tmp_path / "xdg" / "tune-or-prompt" / "votes.sqlite3"
