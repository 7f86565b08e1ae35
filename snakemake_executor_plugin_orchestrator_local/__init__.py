"""Executor ``orchestrator-local``: Snakemake's local executor, which does not resubmit a
job whose failure the state store records as permanent, which records the failure of a job
killed before it could (a signal, past its runtime), which stops a job past its
``resources.runtime``, which starts batch jobs as forks of a warm process instead of a
fresh interpreter (orchestrator_ext/warm_jobs.py), and which makes the S3 storage provider
forget what it knew about a finished job's outputs (see orchestrator_ext.executor)."""

from snakemake.executors.local import Executor as LocalExecutor
from snakemake.executors.local import common_settings

from orchestrator_ext.configfile_errors import install as _name_bad_config_files
from orchestrator_ext.executor import (
    DropsStorageCache,
    EndsPromptly,
    PermanentFailureAware,
    RecordsLostAttempts,
)
from orchestrator_ext.runtime_limit import EnforcesRuntime
from orchestrator_ext.warm_jobs import StartsJobsWarm

# Snakemake reads --configfile after importing plugins: name the file and line of a
# YAML syntax error (orchestrator_ext/configfile_errors.py).
_name_bad_config_files()

__all__ = ["Executor", "common_settings"]


class Executor(
    EndsPromptly,
    DropsStorageCache,
    RecordsLostAttempts,  # before PermanentFailureAware: it records what that one reads
    EnforcesRuntime,
    PermanentFailureAware,
    StartsJobsWarm,
    LocalExecutor,
):
    """Local executor with category-aware resubmission, lost attempts recorded, runtime
    enforced, batch jobs started warm, and S3 storage-cache upkeep."""
