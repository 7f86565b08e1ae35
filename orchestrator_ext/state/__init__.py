"""Task state: one interface, two backends (SQLite embedded, DynamoDB on a cluster).

The state store is the source of truth for *what happened* (attempts, hosts, timings, error
categories); Snakemake's file targets are the source of truth for *what is done*.

One row per task of a run (``partition``, ``batch-NNNNN``, ``merge-L{l}-part-NNNNN``,
``final``, ``manifest``). Every write is conditional on the row's ``version`` and bumps it,
so a stale writer gets ``StateConflict`` instead of overwriting. An attempt is fenced: only
the attempt that currently holds a task (the latest ``begin_attempt``) may commit it, so two
racing attempts of one batch can never both commit. Every status change is also appended to
an audit log of transitions, which is never updated in place.
"""

from __future__ import annotations

import abc
import contextlib
import enum
import os
import socket
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator_ext.config import RunConfig


class TaskStatus(enum.StrEnum):
    """Life cycle of a task. FAILED may be retried; DEAD will not be."""

    PENDING = "PENDING"
    SUBMITTED = "SUBMITTED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    DEAD = "DEAD"


@dataclass(frozen=True)
class Attempt:
    """The lease one attempt holds on a task; needed to commit or fail it."""

    task_id: str
    attempt: int


@dataclass
class TaskRecord:
    """One task's current state, as stored."""

    task_id: str
    status: TaskStatus
    attempt: int = 0
    version: int = 0
    kind: str = ""
    host: str | None = None
    slurm_job_id: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    updated_at: str | None = None
    items: int | None = None
    items_done: int | None = None
    items_dead: int | None = None
    output_sha256: str | None = None
    error_category: str | None = None
    error_type: str | None = None
    error_message: str | None = None

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> TaskRecord:
        """Build from a backend's row, ignoring unknown keys and coercing the status."""
        known = {k: record[k] for k in cls.__dataclass_fields__ if k in record}
        known["status"] = TaskStatus(known["status"])
        for key in ("attempt", "version", "items", "items_done", "items_dead"):
            if known.get(key) is not None:
                known[key] = int(known[key])
        return cls(**known)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (status as its string) for JSON output."""
        data = asdict(self)
        data["status"] = str(self.status)
        return data


@dataclass
class Transition:
    """One entry of the append-only audit log."""

    task_id: str
    from_status: str | None
    to_status: str
    attempt: int
    at: str
    host: str | None = None
    slurm_job_id: str | None = None
    detail: str | None = None


def now_iso() -> str:
    """Current UTC time, ISO 8601 with microseconds."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


def task_kind(task_id: str) -> str:
    """``batch``, ``merge``, or the task id itself for singletons."""
    if task_id.startswith("batch-"):
        return "batch"
    if task_id.startswith("merge-"):
        return "merge"
    return task_id


def current_host() -> str:
    """Short host name of this process's machine."""
    return socket.gethostname()


class StateStore(abc.ABC):
    """Task state of one run. Backends implement the abstract methods; all are idempotent
    where the docstring says so, and conditional on the row version everywhere else."""

    run_id: str

    @abc.abstractmethod
    def ensure_tasks(self, task_ids: list[str], items: dict[str, int] | None = None) -> None:
        """Create PENDING rows for tasks that have none yet (idempotent)."""

    @abc.abstractmethod
    def get(self, task_id: str) -> TaskRecord | None:
        """The task's row, or None."""

    @abc.abstractmethod
    def tasks(self) -> list[TaskRecord]:
        """All rows of the run, ordered by task id."""

    @abc.abstractmethod
    def transitions(self, task_id: str | None = None) -> list[Transition]:
        """The audit log, oldest first, optionally for one task."""

    @abc.abstractmethod
    def _update(
        self,
        task_id: str,
        expected_version: int,
        changes: dict[str, Any],
        transition: Transition | None,
    ) -> None:
        """Write ``changes`` if the row still has ``expected_version``; bump the version and
        append ``transition`` in the same atomic write.

        Raises:
            StateConflict: the version moved (someone else wrote first).
        """

    @abc.abstractmethod
    def _insert_if_absent(self, record: TaskRecord, transition: Transition) -> bool:
        """Insert a row unless one exists; return True if it was inserted."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    # -- events: each is one conditional write ------------------------------------------

    def begin_attempt(
        self, task_id: str, host: str | None = None, slurm_job_id: str | None = None
    ) -> Attempt:
        """Take the task for a new attempt (attempt = previous + 1, status RUNNING).

        A later attempt always wins the lease; an earlier one still running finds out when
        it tries to commit. Returns the lease to pass to ``succeed``/``fail``.
        """
        from orchestrator_ext.errors import StateConflict

        host = host or current_host()
        for _ in range(20):
            record = self.get(task_id)
            if record is None:
                fresh = TaskRecord(
                    task_id=task_id, status=TaskStatus.PENDING, kind=task_kind(task_id)
                )
                self._insert_if_absent(fresh, Transition(task_id, None, "PENDING", 0, now_iso()))
                continue
            attempt = record.attempt + 1
            at = now_iso()
            changes = {
                "status": str(TaskStatus.RUNNING),
                "attempt": attempt,
                "host": host,
                "slurm_job_id": slurm_job_id,
                "started_at": at,
                "finished_at": None,
                "items_done": 0,
                "error_category": None,
                "error_type": None,
                "error_message": None,
            }
            transition = Transition(
                task_id, str(record.status), "RUNNING", attempt, at, host, slurm_job_id
            )
            try:
                self._update(task_id, record.version, changes, transition)
            except StateConflict:
                continue  # someone moved the row between our read and write; read again
            return Attempt(task_id, attempt)
        raise StateConflict(f"task {task_id}: could not take it after 20 contended tries")

    @contextlib.contextmanager
    def attempt_scope(self, task_id: str, host: str | None = None) -> Iterator[Attempt]:
        """Begin an attempt; if the block raises, record the failure with its category.

        The block must call ``succeed`` itself once its outputs are ready. A failure is
        recorded as FAILED (transient or resource: may be retried) or DEAD (permanent).
        """
        from orchestrator_ext.errors import Category, StateConflict, classify, describe

        lease = self.begin_attempt(task_id, host, os.environ.get("SLURM_JOB_ID"))
        try:
            yield lease
        except StateConflict:
            raise
        except BaseException as exc:
            category = classify(exc)
            with contextlib.suppress(StateConflict):
                self.fail(
                    lease, str(category), type(exc).__name__, describe(exc),
                    retryable=category is not Category.PERMANENT,
                )  # fmt: skip
            raise

    def _held(self, lease: Attempt, action: str) -> TaskRecord:
        """The row, if ``lease`` still holds it; else StateConflict naming the winner."""
        from orchestrator_ext.errors import StateConflict

        record = self.get(lease.task_id)
        if record is None:
            raise StateConflict(f"task {lease.task_id}: no state row; cannot {action}")
        if record.attempt != lease.attempt or record.status != TaskStatus.RUNNING:
            raise StateConflict(
                f"task {lease.task_id}: attempt {lease.attempt} lost the race and cannot "
                f"{action}; attempt {record.attempt} holds it with status {record.status}"
            )
        return record

    def record_progress(self, lease: Attempt, items_done: int) -> None:
        """Record how many items the holding attempt has finished (sub-batch checkpoints)."""
        record = self._held(lease, "record progress")
        self._update(lease.task_id, record.version, {"items_done": items_done}, None)

    def succeed(
        self,
        lease: Attempt,
        output_sha256: str | None,
        items: int | None = None,
        items_done: int | None = None,
        items_dead: int | None = None,
    ) -> None:
        """Commit the task as SUCCEEDED; only the attempt holding the lease can.

        Raises:
            StateConflict: another attempt holds the task (this one lost the race).
        """
        record = self._held(lease, "commit")
        at = now_iso()
        changes = {
            "status": str(TaskStatus.SUCCEEDED),
            "finished_at": at,
            "output_sha256": output_sha256,
            "items": items if items is not None else record.items,
            "items_done": items_done,
            "items_dead": items_dead,
        }
        transition = Transition(
            lease.task_id,
            "RUNNING",
            "SUCCEEDED",
            lease.attempt,
            at,
            record.host,
            record.slurm_job_id,
        )
        self._update(lease.task_id, record.version, changes, transition)

    def fail(
        self,
        lease: Attempt,
        category: str,
        error_type: str,
        message: str,
        retryable: bool,
        items_done: int | None = None,
    ) -> None:
        """Record a failed attempt: FAILED if it may be retried, DEAD if not.

        Raises:
            StateConflict: another attempt holds the task.
        """
        record = self._held(lease, "record its failure")
        at = now_iso()
        status = TaskStatus.FAILED if retryable else TaskStatus.DEAD
        changes = {
            "status": str(status),
            "finished_at": at,
            "error_category": category,
            "error_type": error_type,
            "error_message": message[:2000],
            "items_done": items_done if items_done is not None else record.items_done,
        }
        transition = Transition(
            lease.task_id,
            "RUNNING",
            str(status),
            lease.attempt,
            at,
            record.host,
            record.slurm_job_id,
            f"{category}: {message[:500]}",
        )
        self._update(lease.task_id, record.version, changes, transition)

    def counts(self) -> dict[str, int]:
        """Number of tasks in each status (every status present, zero included)."""
        counts = {str(s): 0 for s in TaskStatus}
        for record in self.tasks():
            counts[str(record.status)] += 1
        return counts


def open_state_store(config: RunConfig, local_run_dir: str | None = None) -> StateStore:
    """Open the run's state store as configured.

    Args:
        config: the run config (``state.backend`` picks the backend).
        local_run_dir: folder holding ``state.sqlite`` for the sqlite backend; defaults to
            the run folder from the config.
    """
    if config.state.backend == "sqlite":
        from orchestrator_ext.state.sqlite import SqliteStateStore

        run_dir = local_run_dir or config.run_dir
        return SqliteStateStore(f"{run_dir}/state.sqlite", config.run_id)
    from orchestrator_ext.state.dynamodb import DynamoStateStore

    return DynamoStateStore.from_config(config)
