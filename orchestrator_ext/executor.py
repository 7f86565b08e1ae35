"""Failure-category-aware executors: Snakemake's own, minus pointless resubmissions.

Core Snakemake resubmits any failed job while ``job.restart_times > job.attempt - 1``
(``snakemake/scheduling/job_scheduler.py``, ``_handle_error``), right after calling the
executor's ``handle_job_error(job)``. It has no notion of error categories. The job itself
records its failure category in the state store before it exits (``attempt_scope``), so
``handle_job_error`` reads that record and, for a permanent failure (status DEAD), uses up
the job's remaining attempts: Snakemake then reports the failure instead of resubmitting,
and Slurm sees exactly one job for the batch. Resource and transient failures, and jobs
killed before they could record anything, keep Snakemake's resubmission, with resources
escalated per attempt by the rules.

Two executors use this: ``orchestrator-slurm`` (the Slurm plugin's executor) and
``orchestrator-local`` (Snakemake's local executor), each a thin plugin module. Both also
make the ``orchestrator-s3`` storage provider forget what it knew about a job's outputs
when the job finishes (``DropsStorageCache``): the job may have written them, so those
answers go before Snakemake learns of the completion (``orchestrator_ext.storage_cache``).
And both end the run as soon as the scheduler is done (``EndsPromptly``).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from orchestrator_ext import storage_cache

logger = logging.getLogger(__name__)


def task_id_for_job(rule: str, wildcards: dict[str, str]) -> str | None:
    """The state-store task a Snakemake job works on, or None for rules without one."""
    from orchestrator_ext.layout import (
        TASK_FINAL,
        TASK_MANIFEST,
        TASK_PARTITION,
        task_id_for_batch,
        task_id_for_merge,
    )

    if rule == "process_batch":
        return task_id_for_batch(int(wildcards["batch"]))
    if rule == "merge_level":
        return task_id_for_merge(int(wildcards["level"]), int(wildcards["part"]))
    return {
        "merge_final": TASK_FINAL,
        "write_manifest": TASK_MANIFEST,
        "partition_items": TASK_PARTITION,
    }.get(rule)


def is_permanent_failure(raw_config: dict[str, Any], rule: str, wildcards: dict[str, str]) -> bool:
    """Whether the state store says the task's last attempt failed permanently (DEAD).

    Never raises: if state cannot be read, the answer is False and Snakemake's ordinary
    retry policy applies.
    """
    from orchestrator_ext.config import load_config
    from orchestrator_ext.state import TaskStatus, open_state_store

    task_id = task_id_for_job(rule, wildcards)
    if task_id is None:
        return False
    try:
        store = open_state_store(load_config(raw_config))
        try:
            record = store.get(task_id)
        finally:
            store.close()
    except Exception as exc:  # monitoring must never break the run
        logger.debug("cannot read state of %s: %s", task_id, exc)
        return False
    return record is not None and record.status == TaskStatus.DEAD


class PermanentFailureAware:
    """Mixin for an executor: no resubmission of jobs whose failure was permanent."""

    workflow: Any
    logger: Any

    def handle_job_error(self, job: Any) -> None:
        super().handle_job_error(job)  # type: ignore[misc]
        jobs = job.jobs if hasattr(job, "jobs") else [job]  # group jobs hold several
        for one in jobs:
            if is_permanent_failure(self.workflow.config, one.rule.name, dict(one.wildcards)):
                if job.restart_times > job.attempt - 1:
                    self.logger.info(
                        f"{one.rule.name} {dict(one.wildcards)}: permanent failure (see "
                        "`orchestrator errors`); not resubmitting"
                    )
                job.attempt = job.restart_times + 1


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
