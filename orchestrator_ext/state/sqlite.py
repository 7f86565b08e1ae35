"""SQLite state backend: one file per run (``state.sqlite`` in the run folder).

Many local jobs write at once, so the database runs in WAL mode with a generous busy
timeout, and every write is one short transaction.
"""

from __future__ import annotations

import sqlite3
from dataclasses import asdict
from pathlib import Path
from typing import Any

from orchestrator_ext import task
from orchestrator_ext.errors import StateConflict, StateStoreError
from orchestrator_ext.state import StateStore
from orchestrator_ext.state.records import RowUpdate, TaskRecord, TaskStatus, Transition, now_iso

_COLUMNS = [
    "task_id", "kind", "status", "attempt", "version", "host", "slurm_job_id", "started_at",
    "finished_at", "updated_at", "items", "items_done", "items_dead", "output_sha256",
    "error_category", "error_type", "error_message",
]  # fmt: skip

#: How long a connection waits for another's lock (and a new file's WAL switch is retried).
BUSY_TIMEOUT_S = 60

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    run_id TEXT NOT NULL,
    task_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0,
    version INTEGER NOT NULL DEFAULT 0,
    host TEXT, slurm_job_id TEXT,
    started_at TEXT, finished_at TEXT, updated_at TEXT,
    items INTEGER, items_done INTEGER, items_dead INTEGER,
    output_sha256 TEXT, error_category TEXT, error_type TEXT, error_message TEXT,
    PRIMARY KEY (run_id, task_id)
);
CREATE TABLE IF NOT EXISTS transitions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL, task_id TEXT NOT NULL,
    from_status TEXT, to_status TEXT NOT NULL, attempt INTEGER NOT NULL,
    at TEXT NOT NULL, host TEXT, slurm_job_id TEXT, detail TEXT
);
CREATE INDEX IF NOT EXISTS transitions_task ON transitions (run_id, task_id);
-- The audit log is append-only: refuse edits and deletions at the database level.
CREATE TRIGGER IF NOT EXISTS transitions_no_update BEFORE UPDATE ON transitions
BEGIN SELECT RAISE(ABORT, 'transitions are append-only'); END;
CREATE TRIGGER IF NOT EXISTS transitions_no_delete BEFORE DELETE ON transitions
BEGIN SELECT RAISE(ABORT, 'transitions are append-only'); END;
-- Run-level facts (StateStore.claim_fact); IF NOT EXISTS also adds it to older files.
CREATE TABLE IF NOT EXISTS facts (
    run_id TEXT NOT NULL, name TEXT NOT NULL, value TEXT NOT NULL, recorded_at TEXT NOT NULL,
    PRIMARY KEY (run_id, name)
);
"""


def _locked(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)


def _set_wal(db: sqlite3.Connection) -> None:
    """Put the file in WAL mode. Switching a new file's mode while other connections open
    it (the batch jobs of a run starting at once) is refused at once with "database is
    locked", without the busy timeout's wait (4% of trials of 8 racing opens here), so it
    is retried for as long as that timeout."""
    from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_random_exponential

    for attempt in Retrying(
        retry=retry_if_exception(_locked), stop=stop_after_delay(BUSY_TIMEOUT_S),
        wait=wait_random_exponential(multiplier=0.01, max=1), reraise=True,
    ):  # fmt: skip
        with attempt:
            db.execute("PRAGMA journal_mode=WAL")


class SqliteStateStore(StateStore):
    """State of one run in a SQLite file."""

    def __init__(self, path: str | Path, run_id: str, create: bool = True) -> None:
        self.path = Path(path)
        self.run_id = run_id
        if not create and not self.path.exists():
            raise StateStoreError(
                f"no state store at {self.path}: the run has not started (or ran elsewhere)"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            _set_wal(self._db)
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StateStoreError(f"cannot open state store {self.path}: {exc}") from None
        self._db.row_factory = sqlite3.Row

    def close(self) -> None:
        self._db.close()

    def _append(self, transition: Transition) -> None:
        row = asdict(transition)
        self._db.execute(
            "INSERT INTO transitions (run_id, task_id, from_status, to_status, attempt, at, "
            "host, slurm_job_id, detail) VALUES (?,?,?,?,?,?,?,?,?)",
            (self.run_id, *(row[k] for k in (
                "task_id", "from_status", "to_status", "attempt", "at", "host",
                "slurm_job_id", "detail",
            ))),
        )  # fmt: skip

    def ensure_tasks(self, task_ids: list[str], items: dict[str, int] | None = None) -> None:
        items = items or {}
        at = now_iso()
        existing = {r["task_id"] for r in self._db.execute(
            "SELECT task_id FROM tasks WHERE run_id = ?", (self.run_id,)
        )}  # fmt: skip
        new = [t for t in dict.fromkeys(task_ids) if t not in existing]
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany(
                "INSERT OR IGNORE INTO tasks (run_id, task_id, kind, status, items, updated_at) "
                "VALUES (?,?,?,?,?,?)",
                [(self.run_id, t, task.kind(t), str(TaskStatus.PENDING), items.get(t), at)
                 for t in new],
            )  # fmt: skip
            self._db.executemany(
                "INSERT INTO transitions (run_id, task_id, from_status, to_status, attempt, at) "
                "VALUES (?,?,NULL,'PENDING',0,?)",
                [(self.run_id, t, at) for t in new],
            )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def _insert_if_absent(self, record: TaskRecord, transition: Transition) -> bool:
        row = record.to_dict()
        self._db.execute("BEGIN IMMEDIATE")
        try:
            cursor = self._db.execute(
                f"INSERT OR IGNORE INTO tasks (run_id, {', '.join(_COLUMNS)}) "
                f"VALUES (?, {', '.join('?' * len(_COLUMNS))})",
                (self.run_id, *(row[c] for c in _COLUMNS)),
            )
            inserted = cursor.rowcount == 1
            if inserted:
                self._append(transition)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return inserted

    def claim_fact(self, name: str, value: str) -> str:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute(
                "INSERT OR IGNORE INTO facts (run_id, name, value, recorded_at) VALUES (?,?,?,?)",
                (self.run_id, name, value, now_iso()),
            )
            row = self._db.execute(
                "SELECT value FROM facts WHERE run_id = ? AND name = ?", (self.run_id, name)
            ).fetchone()
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return str(row["value"])

    def get_fact(self, name: str) -> str | None:
        row = self._db.execute(
            "SELECT value FROM facts WHERE run_id = ? AND name = ?", (self.run_id, name)
        ).fetchone()
        return str(row["value"]) if row else None

    def forget_fact(self, name: str) -> None:
        self._db.execute("DELETE FROM facts WHERE run_id = ? AND name = ?", (self.run_id, name))

    def get(self, task_id: str) -> TaskRecord | None:
        row = self._db.execute(
            "SELECT * FROM tasks WHERE run_id = ? AND task_id = ?", (self.run_id, task_id)
        ).fetchone()
        return TaskRecord.from_record(dict(row)) if row else None

    def all_tasks(self) -> list[TaskRecord]:
        rows = self._db.execute(
            "SELECT * FROM tasks WHERE run_id = ? ORDER BY task_id", (self.run_id,)
        ).fetchall()
        return [TaskRecord.from_record(dict(r)) for r in rows]

    def transitions(self, task_id: str | None = None) -> list[Transition]:
        query = "SELECT * FROM transitions WHERE run_id = ?"
        args: tuple[Any, ...] = (self.run_id,)
        if task_id is not None:
            query += " AND task_id = ?"
            args += (task_id,)
        rows = self._db.execute(query + " ORDER BY seq", args).fetchall()
        fields = Transition.__dataclass_fields__
        return [Transition(**{k: r[k] for k in fields}) for r in rows]

    def _write(self, update: RowUpdate) -> None:
        assignments = ", ".join(f"{k} = ?" for k in update.changes)
        self._db.execute("BEGIN IMMEDIATE")
        try:
            cursor = self._db.execute(
                f"UPDATE tasks SET {assignments}, version = version + 1 "
                "WHERE run_id = ? AND task_id = ? AND version = ?",
                (*update.changes.values(), self.run_id, update.task_id, update.expected_version),
            )
            if cursor.rowcount != 1:
                raise StateConflict(
                    f"task {update.task_id}: state changed underneath this writer (expected "
                    f"version {update.expected_version}); re-read before writing"
                )
            if update.transition is not None:
                self._append(update.transition)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
