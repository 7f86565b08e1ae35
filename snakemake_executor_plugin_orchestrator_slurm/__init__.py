"""Executor ``orchestrator-slurm``: the Slurm plugin's executor, which does not resubmit a
job whose failure the state store records as permanent (see orchestrator_ext.executor).
Options are the Slurm plugin's, prefixed ``orchestrator-slurm-`` instead of ``slurm-``."""

from snakemake_executor_plugin_slurm import Executor as SlurmExecutor
from snakemake_executor_plugin_slurm import ExecutorSettings, common_settings

from orchestrator_ext.executor import PermanentFailureAware

__all__ = ["Executor", "ExecutorSettings", "common_settings"]


class Executor(PermanentFailureAware, SlurmExecutor):
    """Slurm executor with category-aware resubmission."""
