"""Lost attempts: a job process that died without recording its failure, recorded for it.

A job killed before it could record its failure (a signal, the OOM killer, a time limit)
leaves its task RUNNING. When Snakemake reports the job failed, the executor
(``executor.RecordsLostAttempts``) finds the attempt that job ran (``attempt_of_job``) and,
if it is still RUNNING, records it FAILED or DEAD with a category taken from how the
process ended (``describe_lost_attempt``): the exit status of the job's
``CalledProcessError`` on the local executor, the Slurm state and the Slurm log on Slurm.
"""

from __future__ import annotations

import contextlib
import logging
import re
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from orchestrator_ext import attempt_log, task
from orchestrator_ext.errors import (
    Category,
    classify_exit_code,
    classify_slurm_state,
    describe_exit_code,
    exit_signal,
)

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def job_store(raw_config: dict[str, Any]) -> Iterator[Any]:
    """The run's state store, opened from the Snakefile's config (already validated by
    ``workflow.load_run_config``, so not validated again), closed afterwards."""
    from orchestrator_ext.config import run_config_from
    from orchestrator_ext.state import open_state_store

    store = open_state_store(run_config_from(raw_config))
    try:
        yield store
    finally:
        store.close()


@dataclass
class JobEnd:
    """How a failed job's process ended, as far as the executor knows."""

    #: Exit status: negative for a signal in Python's subprocess, 128 + N from a shell.
    exit_code: int | None = None
    #: The Slurm job state the plugin reported (``OUT_OF_MEMORY``, ``FAILED``, ...).
    slurm_state: str | None = None
    #: Set when the local executor stopped the job past its runtime (minutes).
    runtime_exceeded: float | None = None
    #: Whether stopping it took SIGKILL after the grace period.
    killed: bool = False
    #: Slurm's log of the job, if there is one.
    slurm_log: str | None = None


_SIGNAL_DEATH = re.compile(r"died with <Signals\.(SIG[A-Z0-9]+): (\d+)>")
_EXIT_STATUS = re.compile(r"returned non-zero exit status (-?\d+)")
_SLURM_STATUS = re.compile(r"SLURM status is: '([A-Z_]+)")


def exit_code_in_text(text: str) -> int | None:
    """The exit code of the last ``CalledProcessError`` message in ``text`` (what
    Snakemake prints for a failed ``shell:`` or ``script:`` job), or None."""
    found = [(m.start(), -int(m.group(2))) for m in _SIGNAL_DEATH.finditer(text)]
    found += [(m.start(), int(m.group(1))) for m in _EXIT_STATUS.finditer(text)]
    return max(found)[1] if found else None


def exit_code_of(exc: BaseException | None) -> int | None:
    """The exit code of the ``CalledProcessError`` behind a failed job's exception.

    Snakemake's local executor re-raises it as a ``RuleException`` (the original is its
    ``__context__``), or as ``SpawnedJobError``; failing that, its message is searched.
    """
    seen: set[int] = set()
    pending = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, subprocess.CalledProcessError):
            return current.returncode
        pending += [current.__cause__, current.__context__]
    return exit_code_in_text(str(exc)) if exc is not None else None


def slurm_state_in_message(msg: str | None) -> str | None:
    """The Slurm state named in the Slurm plugin's failure message, or None."""
    match = _SLURM_STATUS.search(msg or "")
    return match.group(1) if match else None


def log_tail(path: str | None, size: int = 256 * 1024) -> str:
    """The last ``size`` bytes of a text file, or "" if it cannot be read."""
    if not path:
        return ""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, 2)
            handle.seek(max(0, handle.tell() - size))
            return handle.read().decode(errors="replace")
    except OSError:
        return ""


def minutes(value: float) -> str:
    """Minutes as a message shows them (``90``, ``1.5``)."""
    return f"{value:g}"


#: What a Slurm state that names its cause says, in words.
_SLURM_REASONS = {
    "OUT_OF_MEMORY": "ran out of memory",
    "NODE_FAIL": "lost its node",
    "PREEMPTED": "was preempted",
    "BOOT_FAIL": "could not boot its node",
}


def describe_lost_attempt(
    end: JobEnd, runtime: float | None = None, log: str | None = None
) -> tuple[Category, str, str]:
    """(category, error type, reason) of an attempt that died without a record.

    In order: the local executor stopped it past its runtime (resource); Slurm names a
    cause (``OUT_OF_MEMORY``, ``TIMEOUT``, ``NODE_FAIL``, ...: resource); Slurm says
    ``CANCELLED`` (someone ran ``scancel``: transient, resubmitted); the process was killed by
    a signal, by ``errors.classify_exit_code`` (SIGKILL, SIGTERM: resource; SIGSEGV, SIGABRT
    and any other crash: permanent, see ``errors.SIGNAL_CATEGORIES``); coreutils
    ``timeout``'s 124 (resource). Anything else (an ordinary non-zero status, or nothing
    known) is transient: the job records every failure it sees, so one that exits without
    a record most likely could not reach the state store when it tried.
    """
    code, state = end.exit_code, end.slurm_state
    category: Category | None
    if end.runtime_exceeded is not None:
        how = "SIGTERM, then SIGKILL" if end.killed else "SIGTERM"
        category, error_type = Category.RESOURCE, "RuntimeExceeded"
        reason = f"exceeded its runtime of {minutes(end.runtime_exceeded)} min: stopped with {how}"
        if code is not None:
            reason += f" (exit {code})"
    elif state and (category := classify_slurm_state(state)) is not None:
        error_type = state
        if state in ("TIMEOUT", "DEADLINE"):
            limit = f" of {minutes(runtime)} min" if runtime else ""
            reason = f"exceeded its runtime{limit} (Slurm state {state})"
        else:
            reason = f"{_SLURM_REASONS.get(state, 'failed')} (Slurm state {state})"
    elif state == "CANCELLED":
        category, error_type = Category.TRANSIENT, state
        reason = "was cancelled (Slurm state CANCELLED)"
    elif code is not None and (category := classify_exit_code(code)) is not None:
        sig = exit_signal(code)
        error_type = sig.name if sig else "ExitStatus"
        reason = describe_exit_code(code)
        if sig is None and code == 124:
            reason = "was stopped by timeout (exit 124)"
        if state:
            reason += f" (Slurm state {state})"
    else:
        category, error_type = Category.TRANSIENT, "LostAttempt"
        reason = describe_exit_code(code) if code is not None else "ended"
        if state:
            reason += f" (Slurm state {state})"
    reason += " before it could record a failure"
    if log:
        reason += f"; log: {log}"
    if end.slurm_log:
        reason += f"; Slurm log: {end.slurm_log}"
    return category, error_type, reason


def attempt_of_job(
    transitions: list[Any], since: datetime, slurm_job_id: str | None = None
) -> int | None:
    """The attempt a job ran: the first one to start (transition to RUNNING) in the Slurm
    job ``slurm_job_id`` or after ``since``, when the job was submitted. None if it never
    began one (it failed before taking the task)."""
    for entry in transitions:
        if entry.to_status != "RUNNING":
            continue
        if slurm_job_id and entry.slurm_job_id == slurm_job_id:
            return int(entry.attempt)
        if datetime.fromisoformat(entry.at) >= since:
            return int(entry.attempt)
    return None


def record_lost_attempt(
    raw_config: dict[str, Any],
    rule: str,
    wildcards: dict[str, str],
    end: JobEnd,
    since: datetime,
    slurm_job_id: str | None = None,
    runtime: float | None = None,
    log: str | None = None,
) -> tuple[Category, str] | None:
    """Record the attempt a failed job ran as FAILED/DEAD if it is still RUNNING.

    Returns (category, reason) if a failure was recorded, else None: the job recorded its
    failure itself, never began an attempt, or a newer attempt holds the task. Never raises:
    if state cannot be read or written, Snakemake's ordinary retry policy applies.
    """
    from orchestrator_ext.state import TaskStatus

    task_id = task.for_job(rule, wildcards)
    if task_id is None:
        return None
    try:
        with job_store(raw_config) as store:
            row = store.get(task_id)
            if row is None or row.status != TaskStatus.RUNNING:
                return None  # recorded by the job itself (or never begun)
            attempt = attempt_of_job(store.transitions(task_id), since, slurm_job_id)
            if attempt is None:
                return None
            own_log = attempt_log.of_attempt(log, attempt) if log else None
            category, error_type, reason = describe_lost_attempt(end, runtime, own_log)
            if not store.record_lost_attempt(task_id, attempt, str(category), reason, error_type):
                return None
    except Exception as exc:  # monitoring must never break the run
        logger.debug("cannot record the lost attempt of %s: %s", task_id, exc)
        return None
    return category, reason


# -- what the executor noted about how a job ended ----------------------------------------


def single_jobs(job: Any) -> list[Any]:
    """The single jobs of a job (a group job's members, or the job itself)."""
    return list(job.jobs) if hasattr(job, "jobs") else [job]  # group jobs hold several


def job_runtime(job: Any) -> float | None:
    """A job's ``resources.runtime`` in minutes, or None if it has none."""
    try:
        value = float(job.resources.get("runtime"))
    except (AttributeError, TypeError, ValueError):
        return None
    return value if value > 0 else None


class _JobNotes:
    """What the executor learnt about its jobs between submission and failure."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.since: dict[Any, datetime] = {}
        self.slurm_ids: dict[Any, str] = {}
        self.ends: dict[Any, JobEnd] = {}

    def forget(self, job: Any) -> tuple[datetime | None, str | None, JobEnd]:
        with self.lock:
            return (
                self.since.pop(job, None),
                self.slurm_ids.pop(job, None),
                self.ends.pop(job, None) or JobEnd(),
            )


_notes_lock = threading.Lock()


def job_notes(executor: Any) -> _JobNotes:
    """The executor's ``_JobNotes``, made on first use (mixins have no common __init__)."""
    notes = getattr(executor, "_orchestrator_job_notes", None)
    if notes is None:
        with _notes_lock:
            notes = getattr(executor, "_orchestrator_job_notes", None)
            if notes is None:
                notes = _JobNotes()
                executor._orchestrator_job_notes = notes
    return notes


def note_job_end(executor: Any, job: Any, **fields: Any) -> None:
    """Remember how a job's process ended (fields of ``JobEnd``; None values are skipped)."""
    notes = job_notes(executor)
    with notes.lock:
        end = notes.ends.setdefault(job, JobEnd())
        for name, value in fields.items():
            if value is not None:
                setattr(end, name, value)


def note_submission(executor: Any, job: Any) -> None:
    """Note that ``job`` (each member of a group job) is about to be submitted: the attempt
    it runs starts after now. ``RecordsLostAttempts.run_job`` calls it for every job; the
    Slurm plugin submits array jobs without ``run_job``, and reports their tasks only once
    ``sbatch`` returned, which a task may outrun, so orchestrator-slurm calls it before.
    """
    now = datetime.now(UTC)
    notes = job_notes(executor)
    with notes.lock:
        for one in single_jobs(job):
            notes.since[one] = now
            notes.ends.pop(one, None)
