"""Executor ``orchestrator-local``: Snakemake's local executor, which does not resubmit a
job whose failure the state store records as permanent (see orchestrator_ext.executor)."""

from snakemake.executors.local import Executor as LocalExecutor
from snakemake.executors.local import common_settings

from orchestrator_ext.executor import PermanentFailureAware

__all__ = ["Executor", "common_settings"]


class Executor(PermanentFailureAware, LocalExecutor):
    """Local executor with category-aware resubmission."""
