"""Executor ``orchestrator-slurm``: the Slurm plugin's executor, which does not resubmit a
job whose failure the state store records as permanent, that records the failure of a job
killed before it could (out of memory, time limit, a signal), and that sees a job cancelled
with ``scancel`` as failed, and that makes the S3 storage provider forget what it knew about
a finished job's outputs (see orchestrator_ext.executor).
Options are the Slurm plugin's, prefixed ``orchestrator-slurm-`` instead of ``slurm-``.

More differences from the plugin (snakemake-executor-plugin-slurm 2.8), for submitting
fewer Slurm jobs (docs/benchmarks.md, "Slurm jobs"):

* A group job (``--groups`` / ``--group-components``, which ``profiles/slurm`` sets for
  ``process_batch``) runs its members in the batch script's own Snakemake process, one
  after another within the CPUs Slurm gave it (``group_cores``): one Snakemake start-up per
  group job. The plugin runs every member in a Slurm step of its own, through ``srun`` and
  a second Snakemake process each, which makes a group job as slow per member as one job
  per member (``GROUP_MEMBER_STEPS``).
* Job arrays (``--orchestrator-slurm-array-jobs``; not used by the profiles): a task is
  finished when it is, not when the array's first task is (``array_task_states``), its
  Slurm log is where Slurm writes it (``array_task_log``; the plugin names a path one folder
  deeper, so the lost-attempt records found no exit status and successful tasks' logs were
  never deleted), and a job's start is noted before ``sbatch`` (``note_submission``), as
  array tasks never pass through ``run_job``.
* A submission that raises is reported as a failed job (``Executor.run_job``): the
  plugin's own handler fails for a group job, and the run waited for it forever.
* Snakemake's grouping of ``--group-components`` is made stable across post-processings of
  the DAG (``stable_group_components``), without which a resumed run submitted a running
  group job again and again. Snakemake imports every executor plugin it finds, so this
  holds for any run in this environment, whatever its executor.
"""

from __future__ import annotations

import sys
import threading
from collections import defaultdict
from pathlib import Path
from typing import Any

import snakemake_executor_plugin_slurm
from snakemake_executor_plugin_slurm import Executor as SlurmExecutor
from snakemake_executor_plugin_slurm import ExecutorSettings, common_settings
from snakemake_interface_executor_plugins.executors.base import SubmittedJobInfo

from orchestrator_ext.configfile_errors import install as _name_bad_config_files
from orchestrator_ext.executor import (
    DropsStorageCache,
    EndsPromptly,
    PermanentFailureAware,
    RecordsLostAttempts,
    normalize_slurm_states,
)
from orchestrator_ext.lost_attempt import note_submission

__all__ = ["Executor", "ExecutorSettings", "common_settings"]

# Snakemake reads --configfile after importing plugins: name the file and line of a
# YAML syntax error (orchestrator_ext/configfile_errors.py).
_name_bad_config_files()


def array_task_states(plugin: Any) -> None:
    """Make the Slurm plugin module ``plugin`` ask ``sacct`` for array tasks by the names it
    tracks them by (``<array job id>_<index>``). Idempotent.

    snakemake-executor-plugin-slurm 2.8 queries ``--format=JobIdRaw,State``, under which
    every array task has a job id of its own; it finds none of its ``<id>_<index>`` names
    and falls back to the array's id, which is the raw id of the array's first task. Once
    that task finished, every other task of the array counted as finished, pending or
    running: Snakemake found their outputs missing, removed what they wrote and resubmitted
    them (17 of 100 in the first ten minutes of a 100-batch run). ``JobID`` names tasks
    ``<id>_<index>`` (pending ones ``<id>_[2-100]``: still active) and any other job by its
    id, as before.
    """
    original = plugin.query_job_status
    seen = original
    while seen is not None:
        if getattr(seen, "array_task_states", False):
            return
        seen = getattr(seen, "__wrapped__", None)

    async def query_job_status(command: str, logger: Any) -> Any:
        return await original(command.replace("--format=JobIdRaw,", "--format=JobID,"), logger)

    query_job_status.array_task_states = True  # type: ignore[attr-defined]
    query_job_status.__wrapped__ = original  # type: ignore[attr-defined]
    plugin.query_job_status = query_job_status


# Array tasks were seen as finished once the array's first task was (see above); then
# sacct's "CANCELLED by <uid>", which the plugin would wait for forever.
array_task_states(snakemake_executor_plugin_slurm)
normalize_slurm_states(snakemake_executor_plugin_slurm)


def _component_key(group: Any) -> str:
    """Where a connected component of a group sorts: by its first output (batches in order)."""
    return min((str(f) for job in group.jobs for f in job.output), default="")


def stable_group_components(dag_module: Any) -> None:
    """Make Snakemake's ``--group-components`` give the same groups every time the DAG is
    post-processed, and never change a group job once made. Idempotent.

    Snakemake 9.27 (``DAG._update_group_components``) merges each chunk of connected
    components into its first one in place (``GroupJob.merge``); ``GroupJobFactory`` hands
    that grown object out again the next time the DAG is post-processed, and a group job's
    hash is its set of members. A rerun post-processes twice (the partition checkpoint's
    dependencies are updated at start), so groups grew past their size and overlapped, and a
    submitted group job no longer matched itself in the scheduler's set of running jobs: it
    was submitted again and again (113 times in one rerun; snakemake issue 1628, Slurm
    plugin issue 253). Here every chunk is a group of its own from the factory (cached by
    its members, never mutated), and components are chunked in the order of their outputs:
    consecutive batches.
    """
    original = dag_module.DAG._update_group_components
    if getattr(original, "stable_group_components", False):
        return

    def _update_group_components(self: Any) -> None:
        by_id: dict[str, set[Any]] = defaultdict(set)
        for group in self._group.values():
            by_id[group.groupid].add(group)
        for groupid, components in by_id.items():
            lookup_id = self.workflow.parent_groupids.get(groupid, groupid)
            size = self.workflow.group_settings.group_components.get(lookup_id, 1)
            if size <= 1:
                continue
            ordered = sorted(components, key=_component_key)
            for start in range(0, len(ordered), size):
                chunk = ordered[start : start + size]
                if len(chunk) < 2:
                    continue
                members = [job for component in chunk for job in component.jobs]
                merged = self.group_job_factory.new(
                    groupid, members, self.workflow.global_resources
                )
                for job in merged.jobs:
                    self._group[job] = merged
        for group in self._group.values():
            group.finalize()

    _update_group_components.stable_group_components = True  # type: ignore[attr-defined]
    _update_group_components.__wrapped__ = original  # type: ignore[attr-defined]
    dag_module.DAG._update_group_components = _update_group_components


# Group jobs (profiles/slurm) on a rerun were submitted over and over (see above).
# Snakemake imports its executor plugins while importing snakemake.workflow, after
# snakemake.dag; importing snakemake.dag from here first would be a circular import.
if hasattr(sys.modules.get("snakemake.dag"), "DAG"):
    stable_group_components(sys.modules["snakemake.dag"])

#: Set to True to run a group job's members the plugin's way (a Slurm step and a Snakemake
#: process each; bench/slurm_jobs.py measures that way with the official executor).
GROUP_MEMBER_STEPS = False

_formatting = threading.local()


def group_cores(job: Any) -> int:
    """The ``--cores`` of a group job's Snakemake process: the CPUs Slurm allocates to it
    (``cpus_per_task``, else its threads, as the plugin's ``get_cpu_setting`` requests
    them), or more if a member has more threads (as a member's own job would get)."""
    allocated = job.resources.get("cpus_per_task") or job.threads
    try:
        cores = int(allocated)
    except (TypeError, ValueError):
        cores = 1
    members = [int(one.threads) for one in job.jobs]
    return max([cores, 1, *members])


def array_task_log(job_info: Any, slurm_logdir: Path) -> Path | None:
    """Where Slurm writes the log of array task ``<array job id>_<index>``: the plugin
    submits arrays with ``--output <logdir>/rule_<rule>/%A_%a.log``. None for a job that
    is no array task."""
    parent, _, index = str(job_info.external_jobid or "").partition("_")
    if not (parent.isdigit() and index.isdigit()):
        return None
    job = job_info.job
    folder = f"group_{job.name}" if job.is_group() else f"rule_{job.name}"
    return Path(slurm_logdir) / folder / f"{job_info.external_jobid}.log"


class Executor(
    EndsPromptly,
    DropsStorageCache,
    RecordsLostAttempts,  # before PermanentFailureAware: it records what that one reads
    PermanentFailureAware,
    SlurmExecutor,
):
    """Slurm executor with category-aware resubmission, lost attempts recorded, S3
    storage-cache upkeep, and group jobs run in one Snakemake process."""

    def run_job_pre(self, job: Any) -> None:
        note_submission(self, job)  # before sbatch; array tasks never reach run_job
        super().run_job_pre(job)

    def run_job(self, job: Any) -> None:
        """The plugin's ``run_job``, reporting a submission that raised as a failed job: the
        plugin's own handler names ``job.rule``, which a group job has not, and the error
        was lost in the submission thread, leaving the run waiting for the job forever."""
        try:
            super().run_job(job)
        except Exception as exc:
            self.logger.error(f"Submitting {job} to Slurm failed: {exc}")
            self._report_job_error_threadsafe(
                SubmittedJobInfo(job), f"Job submission failed with exception: {exc}"
            )

    def report_job_submission(self, job_info: Any) -> None:
        log = array_task_log(job_info, self.slurm_logdir)
        if log is not None and isinstance(getattr(job_info, "aux", None), dict):
            job_info.aux["slurm_logfile"] = log
        super().report_job_submission(job_info)

    def format_job_exec(self, job: Any) -> str:
        """The batch script's command. For a group job, without the plugin's ``--executor
        slurm-jobstep --jobs 1``: the batch script's Snakemake runs the members itself
        (Snakemake's local executor, as in any ``--mode remote`` process) on
        ``group_cores`` cores."""
        if GROUP_MEMBER_STEPS or not job.is_group():
            return super().format_job_exec(job)
        _formatting.group = job
        try:
            return super().format_job_exec(job)
        finally:
            _formatting.group = None

    @property
    def cores(self) -> Any:
        job = getattr(_formatting, "group", None)
        return group_cores(job) if job is not None else super().cores

    def additional_general_args(self) -> Any:
        if getattr(_formatting, "group", None) is not None:
            return ""
        return super().additional_general_args()
