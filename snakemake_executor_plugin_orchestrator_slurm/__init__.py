"""Executor ``orchestrator-slurm``: the Slurm plugin's executor, which does not resubmit a
job whose failure the state store records as permanent, that records the failure of a job
killed before it could (out of memory, time limit, a signal), and that sees a job cancelled
with ``scancel`` as failed, and that makes the S3 storage provider forget what it knew about
a finished job's outputs (see orchestrator_ext.executor).
Options are the Slurm plugin's, prefixed ``orchestrator-slurm-`` instead of ``slurm-``."""

import snakemake_executor_plugin_slurm
from snakemake_executor_plugin_slurm import Executor as SlurmExecutor
from snakemake_executor_plugin_slurm import ExecutorSettings, common_settings

from orchestrator_ext.configfile_errors import install as _name_bad_config_files
from orchestrator_ext.executor import (
    DropsStorageCache,
    EndsPromptly,
    PermanentFailureAware,
    RecordsLostAttempts,
    normalize_slurm_states,
)

__all__ = ["Executor", "ExecutorSettings", "common_settings"]

# Snakemake reads --configfile after importing plugins: name the file and line of a
# YAML syntax error (orchestrator_ext/configfile_errors.py).
_name_bad_config_files()

# sacct reports "CANCELLED by <uid>", which the plugin would wait for forever.
normalize_slurm_states(snakemake_executor_plugin_slurm)


class Executor(
    EndsPromptly,
    DropsStorageCache,
    RecordsLostAttempts,  # before PermanentFailureAware: it records what that one reads
    PermanentFailureAware,
    SlurmExecutor,
):
    """Slurm executor with category-aware resubmission, lost attempts recorded, and S3
    storage-cache upkeep."""
