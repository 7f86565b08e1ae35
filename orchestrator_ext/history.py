"""What happened in a run, read back from the state store: failures and the audit trail.

Backs ``orchestrator errors`` and ``orchestrator audit``, and gives ``report`` and ``cost``
the per-attempt view they need. Nothing here writes: every function takes rows already read
from a ``StateStore`` (``tasks()``, ``transitions()``) or reads dead-letter files.

Shapes:

- ``AttemptSpan``: one attempt of one task, rebuilt from the append-only log: it starts at
  the transition *to* ``RUNNING`` and ends at the next transition of the same task (to
  ``SUCCEEDED``, ``FAILED`` or ``DEAD``), or is still open. A failed attempt's category is
  the prefix of the transition's ``detail`` (``"resource: MemoryError: ..."``, as written by
  ``StateStore.fail``).
- ``TaskFailure``: a task whose current status is FAILED or DEAD, with where its log is.
- ``DeadLetter``: one dead-lettered item (a row of ``dead_letter/batch-NNNNN.parquet``).

Log paths follow the workflow's rules (``logs/<rule>/<wildcards>.log`` in the run folder,
see ``layout.RunLayout.log``): ``batch-00003`` -> ``process_batch/00003``,
``merge-L1-part-00002`` -> ``merge_level/L1-00002``, ``final`` -> ``merge_final/final``,
``partition`` -> ``partition_items/partition``, ``manifest`` -> ``write_manifest/manifest``.
A failed attempt's log is its own (``process_batch/00003.attempt-2.log``, ``attempt_log``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from orchestrator_ext import attempt_log, task
from orchestrator_ext.errors import Category, OrchestratorError
from orchestrator_ext.layout import RunLayout
from orchestrator_ext.location import Location, location_of
from orchestrator_ext.state import TaskRecord, TaskStatus, Transition

#: Statuses that end an attempt.
_ENDS = frozenset({str(TaskStatus.SUCCEEDED), str(TaskStatus.FAILED), str(TaskStatus.DEAD)})
_FAILED = frozenset({TaskStatus.FAILED, TaskStatus.DEAD})
#: Category shown for a failure whose record names none (e.g. written by an older version).
UNKNOWN_CATEGORY = "unknown"


class UnknownTask(OrchestratorError):
    """Raised when ``--task`` or ``--batch`` names a task the run does not have."""


def parse_time(value: str | None) -> datetime | None:
    """An ISO 8601 timestamp from the store as an aware datetime, or None."""
    return datetime.fromisoformat(value) if value else None


def seconds_between(start: str | None, end: str | None) -> float | None:
    """Seconds from ``start`` to ``end`` (ISO strings), or None if either is missing."""
    a, b = parse_time(start), parse_time(end)
    return (b - a).total_seconds() if a and b else None


def category_of_detail(detail: str | None) -> str:
    """The category a failure transition's ``detail`` starts with, or ``unknown``."""
    prefix = (detail or "").split(":", 1)[0].strip()
    return prefix if prefix in {str(c) for c in Category} else UNKNOWN_CATEGORY


def batch_task(batch: int | str) -> str:
    """Task id of a batch given as ``3``, ``"3"``, ``"00003"`` or ``"batch-00003"``.

    Raises:
        UnknownTask: not a batch number.
    """
    text = str(batch).removeprefix("batch-")
    if not text.isdigit():
        raise UnknownTask(f"--batch expects a batch number such as 3 or 00003, got {batch!r}")
    return task.batch_id(int(text))


def log_path(layout: RunLayout, task_id: str, attempt: int | None = None) -> str | None:
    """The job log of a task (see the module docstring), or None for an unknown task id;
    with ``attempt``, that attempt's own log where it has one (``attempt_log``)."""
    parsed = task.parse(task_id)
    if parsed is None:
        return None
    log = layout.log(parsed.stage.rule, parsed.log_name)
    return attempt_log.of_attempt(log, attempt) if attempt else log


# -- attempts ------------------------------------------------------------------------------


@dataclass
class AttemptSpan:
    """One attempt of one task, from the audit log."""

    task_id: str
    attempt: int
    started_at: str
    ended_at: str | None
    outcome: str | None
    host: str | None = None
    slurm_job_id: str | None = None
    category: str | None = None

    @property
    def duration_s(self) -> float | None:
        """Seconds the attempt ran, or None while it is still open."""
        return seconds_between(self.started_at, self.ended_at)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "duration_s": self.duration_s}


def attempt_spans(transitions: list[Transition]) -> list[AttemptSpan]:
    """Every attempt the log records, in the order the attempts started.

    An attempt with no end yet (still running, or killed before it could record anything)
    has ``ended_at`` None; a newer attempt of the same task closes nothing: it just starts.
    """
    open_spans: dict[str, AttemptSpan] = {}
    spans: list[AttemptSpan] = []
    for entry in transitions:
        if entry.to_status == str(TaskStatus.RUNNING):
            span = AttemptSpan(
                entry.task_id, entry.attempt, entry.at, None, None, entry.host,
                entry.slurm_job_id,
            )  # fmt: skip
            open_spans[entry.task_id] = span
            spans.append(span)
        elif entry.to_status in _ENDS:
            closing = open_spans.pop(entry.task_id, None)
            if closing is None or closing.attempt != entry.attempt:
                continue  # an end without its start (log written by another tool): skip it
            closing.ended_at, closing.outcome = entry.at, entry.to_status
            if entry.to_status != str(TaskStatus.SUCCEEDED):
                closing.category = category_of_detail(entry.detail)
    return sorted(spans, key=lambda s: s.started_at)


def failed_attempts_by_category(spans: list[AttemptSpan]) -> dict[str, int]:
    """Number of failed attempts (FAILED or DEAD) per category, all three always present."""
    counts = {str(c): 0 for c in Category}
    for span in spans:
        if span.outcome is not None and span.outcome != str(TaskStatus.SUCCEEDED):
            key = span.category or UNKNOWN_CATEGORY
            counts[key] = counts.get(key, 0) + 1
    return counts


# -- failures ------------------------------------------------------------------------------


@dataclass
class TaskFailure:
    """A task whose latest attempt failed."""

    task_id: str
    kind: str
    status: str
    category: str
    error_type: str | None
    message: str | None
    attempt: int
    host: str | None
    slurm_job_id: str | None
    finished_at: str | None
    log: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def list_failures(
    tasks: list[TaskRecord],
    layout: RunLayout,
    category: str | None = None,
    task_id: str | None = None,
) -> list[TaskFailure]:
    """Tasks whose status is FAILED or DEAD, optionally of one category or one task."""
    failures = []
    for row in tasks:
        if row.status not in _FAILED or (task_id is not None and row.task_id != task_id):
            continue
        task_category = row.error_category or UNKNOWN_CATEGORY
        if category is not None and task_category != category:
            continue
        failures.append(
            TaskFailure(
                task_id=row.task_id,
                kind=row.kind,
                status=str(row.status),
                category=task_category,
                error_type=row.error_type,
                message=row.error_message,
                attempt=row.attempt,
                host=row.host,
                slurm_job_id=row.slurm_job_id,
                finished_at=row.finished_at,
                log=log_path(layout, row.task_id, row.attempt),
            )
        )
    return failures


# -- dead letters --------------------------------------------------------------------------


@dataclass
class DeadLetter:
    """One dead-lettered item."""

    batch_id: str
    id: Any
    category: str
    error_type: str
    message: str
    attempt: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DeadLetters:
    """Dead-lettered items of a run (or the part a filter kept), with totals."""

    items: list[DeadLetter]
    total: int
    by_category: dict[str, int]
    by_batch: dict[str, int]
    files: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "by_category": self.by_category,
            "by_batch": self.by_batch,
            "files": self.files,
            "shown": len(self.items),
            "items": [item.to_dict() for item in self.items],
        }


def dead_letter_files(run_dir: str, files: Location | None = None) -> list[str]:
    """The run's dead-letter files, locally or in S3, in batch order."""
    files = files or location_of(run_dir)
    found = files.list(RunLayout(run_dir).dead_letters_dir, ".parquet")
    return [uri for uri in found if uri.rsplit("/", 1)[-1].startswith("batch-")]


def read_dead_letters(
    run_dir: str,
    category: str | None = None,
    batch: str | None = None,
    limit: int | None = None,
) -> DeadLetters:
    """Read the run's dead-letter files (local or in S3), filtered by category and batch.

    Args:
        run_dir: the run folder.
        category: keep only items of this category.
        batch: keep only this batch's items (a task id such as ``batch-00003``).
        limit: return at most this many items (totals always count every match);
            None for all.
    """
    import polars as pl

    items: list[DeadLetter] = []
    by_category: dict[str, int] = {}
    by_batch: dict[str, int] = {}
    location = location_of(run_dir)
    files = dead_letter_files(run_dir, location)
    for path in files:
        batch_id = path.rsplit("/", 1)[-1].removeprefix("batch-").removesuffix(".parquet")
        if batch is not None and f"batch-{batch_id}" != batch:
            continue
        frame = location.read_parquet(path)
        if category is not None:
            frame = frame.filter(pl.col("category") == category)
        if frame.height == 0:
            continue
        by_batch[batch_id] = frame.height
        for name, n in frame.group_by("category").len().iter_rows():
            by_category[name] = by_category.get(name, 0) + n
        shown = frame if limit is None else frame.head(max(0, limit - len(items)))
        for row in shown.iter_rows(named=True):
            items.append(
                DeadLetter(
                    batch_id=batch_id,
                    id=row["id"],
                    category=row["category"],
                    error_type=row["error_type"],
                    message=row["message"],
                    attempt=int(row["attempt"]),
                )
            )
    return DeadLetters(
        items=items,
        total=sum(by_batch.values()),
        by_category=dict(sorted(by_category.items())),
        by_batch=by_batch,
        files=len(files),
    )


# -- audit ---------------------------------------------------------------------------------


def audit_rows(
    transitions: list[Transition], layout: RunLayout | None = None
) -> list[dict[str, Any]]:
    """The audit log as plain rows: task, from, to, attempt, host, slurm job id, time, detail,
    and, with ``layout``, the log of every failed attempt (its own, ``log_path``), which
    stays findable after a later attempt succeeded."""
    failed = {str(status) for status in _FAILED}
    return [
        {
            "task_id": t.task_id,
            "from": t.from_status,
            "to": t.to_status,
            "attempt": t.attempt,
            "host": t.host,
            "slurm_job_id": t.slurm_job_id,
            "at": t.at,
            "detail": t.detail,
            "log": (
                log_path(layout, t.task_id, t.attempt)
                if layout is not None and t.to_status in failed
                else None
            ),
        }
        for t in transitions
    ]


def resolve_task(name: str, known: list[str]) -> str:
    """The task id ``name`` names: an exact id, or a bare batch number (``3``, ``00003``).

    Raises:
        UnknownTask: no such task in the run; the message lists a few that exist.
    """
    candidate = batch_task(name) if name.isdigit() else name
    if candidate in known:
        return candidate
    sample = ", ".join(known[:3]) + (", ..." if len(known) > 3 else "")
    raise UnknownTask(f"no task {name!r} in this run (tasks are e.g. {sample or 'none yet'})")
