"""Task state: one interface, two backends (SQLite embedded, DynamoDB on a cluster).

The state store is the source of truth for *what happened* (attempts, hosts, timings, error
categories); Snakemake's file targets are the source of truth for *what is done*.

One row per task of a run (``partition``, ``batch-NNNNN``, ``merge-L{l}-part-NNNNN``,
``final``, ``manifest``). Every write is conditional on the row's ``version`` and bumps it,
so a stale writer gets ``StateConflict`` instead of overwriting. An attempt is fenced: only
the attempt that currently holds a task (the latest ``begin_attempt``) may commit it, so two
racing attempts of one batch can never both commit. Every status change is also appended to
an audit log of transitions, which is never updated in place.

Besides the tasks, a run has *facts*: named values recorded once (``claim_fact``: the first
writer wins, later ones read its value), e.g. the run's output schema. A re-partition
forgets them (``start_plan``).

The records themselves (row, transition, attempt, write) are in ``state.records``, re-exported
here; a task's kind comes from ``orchestrator_ext.task``.
"""

from __future__ import annotations

import abc
import contextlib
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from orchestrator_ext import task
from orchestrator_ext.state.records import (
    Attempt,
    RowUpdate,
    TaskRecord,
    TaskStatus,
    Transition,
    current_host,
    now_iso,
)

if TYPE_CHECKING:
    from orchestrator_ext.config import RunConfig

__all__ = [
    "FACT_OUTPUT_SCHEMA",
    "PLAN_FACTS",
    "Attempt",
    "RowUpdate",
    "StateStore",
    "TaskRecord",
    "TaskStatus",
    "Transition",
    "current_host",
    "now_iso",
    "open_state_store",
]


#: Fact holding the run's output schema (canonical JSON of [name, dtype] pairs), recorded
#: by the first batch to commit unless ``job.output_schema`` declares it (``process``).
FACT_OUTPUT_SCHEMA = "output_schema"
#: Facts of one plan: ``start_plan`` forgets them (the new plan may run another job).
PLAN_FACTS = (FACT_OUTPUT_SCHEMA,)


class StateStore(abc.ABC):
    """Task state of one run. Backends implement the abstract methods; all are idempotent
    where the docstring says so, and conditional on the row version everywhere else."""

    run_id: str
    #: Called with every attempt ``attempt_scope`` begins, before its block runs: a job step
    #: gives its log that attempt's name (``attempt_log``, set by ``jobstep.run_step``).
    on_attempt: Callable[[Attempt], None] | None = None

    @abc.abstractmethod
    def ensure_tasks(self, task_ids: list[str], items: dict[str, int] | None = None) -> None:
        """Create PENDING rows for tasks that have none yet (idempotent)."""

    @abc.abstractmethod
    def get(self, task_id: str) -> TaskRecord | None:
        """The task's row, or None."""

    @abc.abstractmethod
    def all_tasks(self) -> list[TaskRecord]:
        """Every row of the run, superseded ones included, ordered by task id."""

    def tasks(self) -> list[TaskRecord]:
        """The rows of the run's current plan (not SUPERSEDED), ordered by task id."""
        return [r for r in self.all_tasks() if r.status is not TaskStatus.SUPERSEDED]

    @abc.abstractmethod
    def transitions(self, task_id: str | None = None) -> list[Transition]:
        """The audit log, oldest first, optionally for one task."""

    def _update(
        self,
        task_id: str,
        expected_version: int,
        changes: dict[str, Any],
        transition: Transition | None,
    ) -> None:
        """Write ``changes`` (and ``updated_at``) if the row still has ``expected_version``;
        bump the version and append ``transition`` in the same atomic write.

        Raises:
            StateConflict: the version moved (someone else wrote first).
        """
        changes = {**changes, "updated_at": now_iso()}
        self._write(RowUpdate(task_id, expected_version, changes, transition))

    @abc.abstractmethod
    def _write(self, update: RowUpdate) -> None:
        """Send one conditional write (see ``RowUpdate``) as it is.

        Raises:
            StateConflict: the row is missing or its version moved.
        """

    @abc.abstractmethod
    def _insert_if_absent(self, record: TaskRecord, transition: Transition) -> bool:
        """Insert a row (as it is, ``updated_at`` included) unless one exists; return True
        if it was inserted."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    # -- run-level facts: write-once values the run's tasks agree on ----------------------

    @abc.abstractmethod
    def claim_fact(self, name: str, value: str) -> str:
        """Record ``value`` as the run's fact ``name`` unless one is recorded already (one
        conditional write); return the recorded value: ``value`` if this call was first,
        else the earlier one. Never overwrites."""

    @abc.abstractmethod
    def get_fact(self, name: str) -> str | None:
        """The run's fact ``name``, or None if none is recorded."""

    @abc.abstractmethod
    def forget_fact(self, name: str) -> None:
        """Forget the run's fact ``name`` (idempotent); the next ``claim_fact`` records anew."""

    # -- events: each is one conditional write ------------------------------------------

    def begin_attempt(
        self, task_id: str, host: str | None = None, slurm_job_id: str | None = None
    ) -> Attempt:
        """Take the task for a new attempt (attempt = previous + 1, status RUNNING).

        A later attempt always wins the task; an earlier one still running finds out when
        it tries to commit. Returns the ``Attempt`` to pass to ``succeed``/``fail``.
        """
        from orchestrator_ext.errors import StateConflict

        host = host or current_host()
        for _ in range(20):
            record = self.get(task_id)
            if record is None:
                at = now_iso()
                fresh = TaskRecord(
                    task_id=task_id, status=TaskStatus.PENDING, kind=task.kind(task_id),
                    updated_at=at,
                )  # fmt: skip
                self._insert_if_absent(fresh, Transition(task_id, None, "PENDING", 0, at))
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
            # A RUNNING row means its attempt never recorded an end: its process was lost
            # (a killed coordinator or node), or it still runs and can no longer commit.
            superseded = (
                f"attempt {record.attempt} was still RUNNING and is superseded: its process "
                "was lost, or it can no longer commit"
                if record.status == TaskStatus.RUNNING
                else None
            )
            transition = Transition(
                task_id, str(record.status), "RUNNING", attempt, at, host, slurm_job_id,
                superseded,
            )  # fmt: skip
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

        attempt = self.begin_attempt(task_id, host, os.environ.get("SLURM_JOB_ID"))
        try:
            if self.on_attempt is not None:
                self.on_attempt(attempt)
            yield attempt
        except StateConflict:
            raise
        except BaseException as exc:
            category = classify(exc)
            with contextlib.suppress(StateConflict):
                self.fail(
                    attempt, str(category), type(exc).__name__, describe(exc),
                    retryable=category is not Category.PERMANENT,
                )  # fmt: skip
            raise

    def _held(self, attempt: Attempt, action: str) -> TaskRecord:
        """The row, if ``attempt`` still holds it; else StateConflict naming the winner."""
        from orchestrator_ext.errors import StateConflict

        record = self.get(attempt.task_id)
        if record is None:
            raise StateConflict(f"task {attempt.task_id}: no state row; cannot {action}")
        if record.attempt != attempt.attempt or record.status != TaskStatus.RUNNING:
            raise StateConflict(
                f"task {attempt.task_id}: attempt {attempt.attempt} lost the race and cannot "
                f"{action}; attempt {record.attempt} holds it with status {record.status}"
            )
        return record

    def record_progress(self, attempt: Attempt, items_done: int, detail: str | None = None) -> None:
        """Record how many items the holding attempt has finished (sub-batch chunks).

        With ``detail``, the same write also appends a RUNNING -> RUNNING transition saying
        it (e.g. where a resumed attempt picked up); without, the audit log is left as it is.

        Raises:
            StateConflict: another attempt holds the task.
        """
        record = self._held(attempt, "record progress" if detail is None else "record its resume")
        transition = None
        if detail is not None:
            transition = Transition(
                attempt.task_id, "RUNNING", "RUNNING", attempt.attempt, now_iso(),
                record.host, record.slurm_job_id, detail,
            )  # fmt: skip
        self._update(attempt.task_id, record.version, {"items_done": items_done}, transition)

    def succeed(
        self,
        attempt: Attempt,
        output_sha256: str | None,
        items: int | None = None,
        items_done: int | None = None,
        items_dead: int | None = None,
    ) -> None:
        """Commit the task as SUCCEEDED; only the attempt holding the task can.

        Raises:
            StateConflict: another attempt holds the task (this one lost the race).
        """
        record = self._held(attempt, "commit")
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
            attempt.task_id,
            "RUNNING",
            "SUCCEEDED",
            attempt.attempt,
            at,
            record.host,
            record.slurm_job_id,
        )
        self._update(attempt.task_id, record.version, changes, transition)

    def fail(
        self,
        attempt: Attempt,
        category: str,
        error_type: str,
        message: str,
        retryable: bool,
    ) -> None:
        """Record a failed attempt: FAILED if it may be retried, DEAD if not.

        Raises:
            StateConflict: another attempt holds the task.
        """
        record = self._held(attempt, "record its failure")
        status = TaskStatus.FAILED if retryable else TaskStatus.DEAD
        self._record_failure(record, status, category, error_type, message)

    def _record_failure(
        self, record: TaskRecord, status: TaskStatus, category: str, error_type: str, message: str
    ) -> None:
        """End the running attempt ``record`` shows as ``status`` (FAILED or DEAD), with the
        error, in one conditional write; the transition's detail is ``"<category>: <message>"``.
        """
        at = now_iso()
        changes = {
            "status": str(status),
            "finished_at": at,
            "error_category": category,
            "error_type": error_type,
            "error_message": message[:2000],
        }
        transition = Transition(
            record.task_id, "RUNNING", str(status), record.attempt, at, record.host,
            record.slurm_job_id, f"{category}: {message[:500]}",
        )  # fmt: skip
        self._update(record.task_id, record.version, changes, transition)

    def record_lost_attempt(
        self,
        task_id: str,
        attempt: int,
        category: str,
        reason: str,
        error_type: str = "LostAttempt",
    ) -> bool:
        """Record the failure of an attempt whose process died without recording it.

        The executor calls this when a job failed and the task is still RUNNING at the
        attempt that job ran: the process was killed (a signal, OOM, a time limit) before
        ``attempt_scope`` could call ``fail``. Written as FAILED, or DEAD for a permanent
        ``category``, like ``fail``; the transition's detail is ``"<category>: <reason>"``.
        Nothing is written unless the row is RUNNING at ``attempt``: a failure the job
        recorded itself, or a row a newer attempt holds, is left as it is.

        Returns:
            Whether the failure was recorded.
        """
        from orchestrator_ext.errors import Category, StateConflict

        status = TaskStatus.DEAD if category == str(Category.PERMANENT) else TaskStatus.FAILED
        for _ in range(5):  # only a write between our read and ours (progress) retries
            record = self.get(task_id)
            if record is None or record.attempt != attempt:
                return False
            if record.status != TaskStatus.RUNNING:
                return False
            try:
                self._record_failure(record, status, category, error_type, reason)
            except StateConflict:
                continue
            return True
        return False

    def start_plan(self, task_ids: list[str], items: dict[str, int], keep: str) -> int:
        """Make the store hold exactly a new plan's tasks (a partition, first or again).

        Tasks of the plan that already have a row (from an earlier plan) start over as
        PENDING with the new item count; rows the plan does not name become SUPERSEDED;
        new tasks get PENDING rows. Attempt numbers are kept, so an attempt of the old plan
        still running can never commit (its attempt no longer holds the task). Every change is one
        conditional write with a transition in the audit log. The facts of the old plan
        (``PLAN_FACTS``: the recorded output schema) are forgotten last.

        Args:
            task_ids: every task of the new plan.
            items: item count per batch task.
            keep: the task doing this (the partition), left as it is.

        Returns:
            How many existing rows were reset or superseded.
        """
        wanted = set(task_ids)
        changed = 0
        for record in self.all_tasks():
            if record.task_id == keep:
                continue
            if record.task_id in wanted:
                fresh = record.status is TaskStatus.PENDING and record.items == items.get(
                    record.task_id
                )
                if fresh:
                    continue
                status, detail = TaskStatus.PENDING, "re-partitioned: starts over"
            elif record.status is TaskStatus.SUPERSEDED:
                continue
            else:
                status, detail = TaskStatus.SUPERSEDED, "re-partitioned: not in the new plan"
            changes: dict[str, Any] = {
                "status": str(status),
                "items": items.get(record.task_id),
                "items_done": None,
                "items_dead": None,
                "output_sha256": None,
                "started_at": None,
                "finished_at": None,
                "error_category": None,
                "error_type": None,
                "error_message": None,
            }
            transition = Transition(
                record.task_id, str(record.status), str(status), record.attempt, now_iso(),
                detail=detail,
            )  # fmt: skip
            self._update(record.task_id, record.version, changes, transition)
            changed += 1
        self.ensure_tasks(task_ids, items)
        # Last: an attempt of the old plan that records a fact after this is fenced anyway.
        for name in PLAN_FACTS:
            self.forget_fact(name)
        return changed

    def counts(self) -> dict[str, int]:
        """Number of current tasks in each status (every status present, zero included)."""
        counts = {str(s): 0 for s in TaskStatus if s is not TaskStatus.SUPERSEDED}
        for record in self.tasks():
            counts[str(record.status)] += 1
        return counts


def open_state_store(config: RunConfig) -> StateStore:
    """Open the run's state store as ``state.backend`` says: ``state.sqlite`` in the run
    folder, or the DynamoDB table ``state.table``."""
    if config.state.backend == "sqlite":
        from orchestrator_ext.state.sqlite import SqliteStateStore

        return SqliteStateStore(f"{config.run_dir}/state.sqlite", config.run_id)
    from orchestrator_ext.state.dynamodb import DynamoStateStore

    return DynamoStateStore.from_config(config)
