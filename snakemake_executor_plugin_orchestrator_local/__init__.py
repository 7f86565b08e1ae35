"""Executor ``orchestrator-local``: Snakemake's local executor, which does not resubmit a
job whose failure the state store records as permanent, and which makes the S3 storage
provider forget what it knew about a finished job's outputs (see orchestrator_ext.executor)."""

from snakemake.executors.local import Executor as LocalExecutor
from snakemake.executors.local import common_settings

from orchestrator_ext.executor import DropsStorageCache, EndsPromptly, PermanentFailureAware

__all__ = ["Executor", "common_settings"]


class Executor(EndsPromptly, DropsStorageCache, PermanentFailureAware, LocalExecutor):
    """Local executor with category-aware resubmission and S3 storage-cache upkeep."""
