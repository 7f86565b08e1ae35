"""Executor ``orchestrator-slurm``: the Slurm plugin's executor, which does not resubmit a
job whose failure the state store records as permanent, and that sees a job cancelled with
``scancel`` as failed, and that makes the S3 storage provider forget what it knew about a
finished job's outputs (see orchestrator_ext.executor).
Options are the Slurm plugin's, prefixed ``orchestrator-slurm-`` instead of ``slurm-``."""

import snakemake_executor_plugin_slurm
from snakemake_executor_plugin_slurm import Executor as SlurmExecutor
from snakemake_executor_plugin_slurm import ExecutorSettings, common_settings

from orchestrator_ext.executor import (
    DropsStorageCache,
    EndsPromptly,
    PermanentFailureAware,
    normalize_slurm_states,
)

__all__ = ["Executor", "ExecutorSettings", "common_settings"]

# sacct reports "CANCELLED by <uid>", which the plugin would wait for forever.
normalize_slurm_states(snakemake_executor_plugin_slurm)


class Executor(EndsPromptly, DropsStorageCache, PermanentFailureAware, SlurmExecutor):
    """Slurm executor with category-aware resubmission and S3 storage-cache upkeep."""
