"""Failure-category-aware executors: Snakemake's own, minus pointless resubmissions.

Core Snakemake resubmits any failed job while ``job.restart_times > job.attempt - 1``
(``snakemake/scheduling/job_scheduler.py``, ``_handle_error``), right after calling the
executor's ``handle_job_error(job)``. It has no notion of error categories. The job itself
records its failure category in the state store before it exits (``attempt_scope``), so
``handle_job_error`` reads that record and, for a permanent failure (status DEAD), uses up
the job's remaining attempts: Snakemake then reports the failure instead of resubmitting,
and Slurm sees exactly one job for the batch. Resource and transient failures keep
Snakemake's resubmission, with resources escalated per attempt by the rules. A job killed
before it could record anything is recorded by the executor (below), and then handled the
same way by its category.

Two executors use this: ``orchestrator-slurm`` (the Slurm plugin's executor) and
``orchestrator-local`` (Snakemake's local executor), each a thin plugin module. Both also
make the ``orchestrator-s3`` storage provider forget what it knew about a job's outputs
when the job finishes (``DropsStorageCache``): the job may have written them, so those
answers go before Snakemake learns of the completion (``orchestrator_ext.storage_cache``).
And both end the run as soon as the scheduler is done (``EndsPromptly``).

Every attempt ends in the state store (``RecordsLostAttempts``, both executors): a job
process killed before it could record its failure (a signal, the OOM killer, a time limit)
leaves its task RUNNING; when Snakemake reports the job failed, the executor finds the
attempt that job ran and, if it is still RUNNING, records it FAILED or DEAD with a category
taken from how the process ended (``describe_lost_attempt``). A permanent crash is then not
resubmitted, like any permanent failure. On the local executor the exit status comes from
the job's ``CalledProcessError``; on Slurm from the Slurm state the plugin reports and from
the error the job's Snakemake wrote to the Slurm log. The local executor also stops a job
past its ``resources.runtime`` (``EnforcesRuntime``), as Slurm does.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from typing import Any

from orchestrator_ext import attempt_log, storage_cache, task
from orchestrator_ext.errors import type_and_message
from orchestrator_ext.lost_attempt import (
    exit_code_in_text,
    job_notes,
    job_runtime,
    job_store,
    log_tail,
    note_job_end,
    note_submission,
    record_lost_attempt,
    single_jobs,
    slurm_state_in_message,
)

logger = logging.getLogger(__name__)

PARTITION_RULE = task.STAGES[task.PARTITION].rule


def recorded_state(raw_config: dict[str, Any], rule: str, wildcards: dict[str, str]) -> Any:
    """The state store's row of the task a job works on (a ``TaskRecord``), or None.

    Never raises: if state cannot be read, the answer is None and Snakemake's ordinary
    retry policy applies.
    """
    task_id = task.for_job(rule, wildcards)
    if task_id is None:
        return None
    try:
        with job_store(raw_config) as store:
            return store.get(task_id)
    except Exception as exc:  # monitoring must never break the run
        logger.debug("cannot read state of %s: %s", task_id, exc)
        return None


def is_permanent_failure(raw_config: dict[str, Any], rule: str, wildcards: dict[str, str]) -> bool:
    """Whether the state store says the task's last attempt failed permanently (DEAD)."""
    from orchestrator_ext.state import TaskStatus

    record = recorded_state(raw_config, rule, wildcards)
    return record is not None and record.status == TaskStatus.DEAD


def failure_line(record: Any, log: str | None) -> str | None:
    """One line saying why a task's attempt failed, from its state row (None if the row
    records no failure): what the coordinator prints instead of the job's whole log."""
    from orchestrator_ext.state import TaskStatus

    if record is None or record.status not in (TaskStatus.FAILED, TaskStatus.DEAD):
        return None
    again = "not retried" if record.status == TaskStatus.DEAD else "may be retried"
    where = f"; log: {attempt_log.of_attempt(log, record.attempt)}" if log else ""
    what = type_and_message(record.error_type, record.error_message)
    return (
        f"error: {record.task_id} attempt {record.attempt} failed ({record.error_category}, "
        f"{again}): {what}{where}"
    )


def logged_error_line(job: Any, log: str | None) -> str | None:
    """The job's own one-line error (the last ``error: ...`` line ``run_step`` wrote to its
    log), for a failure the state store could not record (e.g. the store is unreachable)."""
    if not log:
        return None
    try:
        with open(log, errors="replace") as handle:
            errors = [line.strip() for line in handle if line.startswith("error: ")]
    except OSError:
        return None
    if not errors:
        return None
    return f"error: {job.rule.name} {dict(job.wildcards)}: {errors[-1][7:]}; log: {log}"


class PermanentFailureAware:
    """Mixin for an executor: no resubmission of jobs whose failure was permanent, and one
    line per failed job naming the recorded cause and the log (the profiles do not print
    failed jobs' logs: a traceback belongs in the log, not in the run's output)."""

    workflow: Any
    logger: Any

    def handle_job_error(self, job: Any) -> None:
        super().handle_job_error(job)  # type: ignore[misc]
        from orchestrator_ext.state import TaskStatus

        jobs = job.jobs if hasattr(job, "jobs") else [job]  # group jobs hold several
        for one in jobs:
            record = recorded_state(self.workflow.config, one.rule.name, dict(one.wildcards))
            logs = [str(f) for f in getattr(one, "log", None) or []]
            log = logs[0] if logs else None
            line = failure_line(record, log) or logged_error_line(one, log)
            if line:
                self.logger.error(line)
            if record is not None and record.status == TaskStatus.DEAD:
                if job.restart_times > job.attempt - 1:
                    self.logger.info(
                        f"{one.rule.name} {dict(one.wildcards)}: permanent failure (see "
                        "`orchestrator errors`); not resubmitting"
                    )
                job.attempt = job.restart_times + 1


class RecordsLostAttempts:
    """Mixin for an executor: when a job fails and its attempt is still RUNNING in the state
    store, record it FAILED/DEAD (``record_lost_attempt``), before ``PermanentFailureAware``
    (which must come after it in the bases) reads the state. Both executors."""

    workflow: Any
    logger: Any

    def run_job(self, job: Any) -> None:
        note_submission(self, job)
        super().run_job(job)  # type: ignore[misc]

    def report_job_submission(self, job_info: Any) -> None:
        now = datetime.now(UTC)
        notes = job_notes(self)
        external = getattr(job_info, "external_jobid", None)
        with notes.lock:
            for one in single_jobs(job_info.job):
                notes.since.setdefault(one, now)  # array jobs skip run_job
                if external:
                    notes.slurm_ids[one] = str(external)
        super().report_job_submission(job_info)  # type: ignore[misc]

    def report_job_error(self, job_info: Any, msg: Any = None, **kwargs: Any) -> None:
        state = slurm_state_in_message(msg if isinstance(msg, str) else None)
        if state is not None:  # the Slurm plugin; its log holds the job's own error
            logs = [log for log in kwargs.get("aux_logs") or [] if log]
            slurm_log = logs[0] if logs else None
            code = exit_code_in_text(log_tail(slurm_log))
            for one in single_jobs(job_info.job):
                note_job_end(self, one, slurm_state=state, exit_code=code, slurm_log=slurm_log)
        super().report_job_error(job_info, msg, **kwargs)  # type: ignore[misc]

    def report_job_success(self, job_info: Any) -> None:
        for one in single_jobs(job_info.job):
            job_notes(self).forget(one)
        super().report_job_success(job_info)  # type: ignore[misc]

    def handle_job_error(self, job: Any) -> None:
        for one in single_jobs(job):
            since, slurm_id, end = job_notes(self).forget(one)
            if since is None:
                continue
            logs = [str(f) for f in getattr(one, "log", None) or []]
            recorded = record_lost_attempt(
                self.workflow.config, one.rule.name, dict(one.wildcards), end, since, slurm_id,
                job_runtime(one), logs[0] if logs else None,
            )  # fmt: skip
            if recorded is not None:
                category, reason = recorded
                self.logger.info(
                    f"{one.rule.name} {dict(one.wildcards)}: {reason}; recorded as a "
                    f"{category} failure"
                )
        super().handle_job_error(job)  # type: ignore[misc]


class DropsStorageCache:
    """Mixin for an executor: forget what the storage caches of this process know about a
    job's outputs when it finishes (successfully or not), before Snakemake is told; see
    ``orchestrator_ext.storage_cache``. Caches keep answers only once such an executor
    exists (``storage_cache.enable``).
    """

    def __post_init__(self, *args: Any, **kwargs: Any) -> None:
        storage_cache.enable()
        super().__post_init__(*args, **kwargs)  # type: ignore[misc]

    def report_job_success(self, job_info: Any) -> None:
        _drop_outputs(job_info)
        super().report_job_success(job_info)  # type: ignore[misc]

    def report_job_error(self, job_info: Any, msg: Any = None, **kwargs: Any) -> None:
        _drop_outputs(job_info)
        super().report_job_error(job_info, msg, **kwargs)  # type: ignore[misc]


def _drop_outputs(job_info: Any) -> None:
    """Drop the cached answers about a finished job's (or group job's) storage outputs;
    everything, if they cannot be named."""
    try:
        job = job_info.job
        jobs = list(job.jobs) if job.is_group() else [job]
        if any(single.rule.name == PARTITION_RULE for single in jobs):
            # A new plan removes every file of the old one (partition.remove_derived).
            storage_cache.drop_all()
            return
        keys = []
        for single in jobs:
            for output in single.output:
                if not output.is_storage:
                    continue
                stored = output.storage_object
                keys.append((stored.bucket, stored.key, output.is_directory))
    except AttributeError:  # a storage object without bucket/key, or an unusual job
        storage_cache.drop_all()
        return
    storage_cache.drop_keys(keys)


class EndsPromptly:
    """Mixin for an executor: when the scheduler shuts it down at the end of a run, cancel
    the scheduler's pending wake-up timers (``cancel_scheduler_wakeups``)."""

    def shutdown(self) -> None:
        super().shutdown()  # type: ignore[misc]
        cancel_scheduler_wakeups()


def cancel_scheduler_wakeups() -> int:
    """Cancel the wake-up timers Snakemake's job scheduler left behind; return how many.

    Under ``--max-jobs-per-timespan`` (default ``100/1s``) every scheduling round starts a
    ``threading.Timer`` (not a daemon) that wakes the scheduler one timespan later. Once the
    scheduler has finished and shut its executor down nothing listens, but the interpreter
    still waits for the last timer before it exits: up to a second at the end of every run
    (measured on the CPU benchmark, docs/benchmarks.md). Only those timers are cancelled.
    """
    cancelled = 0
    for thread in threading.enumerate():
        function = getattr(thread, "function", None)
        if (
            isinstance(thread, threading.Timer)
            and "_schedule_reevalutation" in getattr(function, "__qualname__", "")
            and not thread.finished.is_set()  # not fired or cancelled already
        ):
            thread.cancel()
            cancelled += 1
    return cancelled


def slurm_state(status: str) -> str:
    """A Slurm job state without its qualifier: ``sacct`` reports a cancelled job as
    ``CANCELLED by <uid>``, ``squeue`` as ``CANCELLED``."""
    return status.split(" ", 1)[0]


def normalize_slurm_states(plugin: Any) -> None:
    """Make the Slurm plugin module ``plugin`` see ``CANCELLED by <uid>`` as ``CANCELLED``.

    snakemake-executor-plugin-slurm 2.8 compares ``sacct``'s state with a fixed list
    (``fail_stati`` in ``Executor.check_active_jobs``) and treats anything else as still
    running, so a job cancelled with ``scancel`` was waited for forever. Its status query
    (``query_job_status``, a module function) is wrapped to drop the qualifier; the failed
    job is then reported and resubmitted like any job killed mid-way. Idempotent.
    """
    original = plugin.query_job_status
    if getattr(original, "normalizes_slurm_states", False):
        return

    async def query_job_status(command: str, logger: Any) -> Any:
        states, duration = await original(command, logger)
        if states is not None:
            states = {job: slurm_state(state) for job, state in states.items()}
        return states, duration

    query_job_status.normalizes_slurm_states = True  # type: ignore[attr-defined]
    query_job_status.__wrapped__ = original  # type: ignore[attr-defined]
    plugin.query_job_status = query_job_status
