"""The partition plan as the workflow's input functions see it: read once per process, and
for a run in S3 fetched whenever the local copy is missing or older than the stored one.

Input functions and params ask for the plan at least once per job (10,000s of calls). Once
the ``partition_items`` checkpoint is done in a process it stays done (Snakemake only ever
adds to its created outputs), so ``plan.json`` is final: the checkpoint is looked up and
the plan read once. The coordinator also checks, once, that the plan is of the input as it
is now (``check_plan_input``).

For a run in S3, input functions see the storage plugin's local copy of ``plan.json``. A
copy that is missing or older than the object in S3 raises Snakemake's
``InputOpenException`` for the plan's file target: Snakemake's job factory then retrieves
that one file from storage and calls the input function again (``snakemake.jobs``,
``JobFactory.new``), so only ``plan.json`` is fetched, not the batch files beside it.
``rules/common.smk`` holds the one instance, behind its ``get_plan()``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from snakemake.exceptions import InputOpenException
from snakemake.io import IOFile

from orchestrator_ext.config import RunConfig
from orchestrator_ext.layout import RunLayout
from orchestrator_ext.workflow import (
    PlanShape,
    check_plan_input,
    read_plan_shape,
    retry_transient,
)

__all__ = ["PlanCache"]


class PlanCache:
    """The run's ``PlanShape``, read on first use and kept for the life of the process.

    Args:
        checkpoint: returns the finished ``partition_items`` checkpoint job (Snakemake's
            ``checkpoints.partition_items.get``), whose ``output.batches`` is the local
            folder holding ``plan.json``; raises Snakemake's
            ``IncompleteCheckpointException`` until the checkpoint has run.
        layout: the run's file targets (wrapped for the storage plugin if in S3).
        run: the run's config, for the input check.
        is_main_process: whether this is the coordinator (``workflow.is_main_process``);
            only the coordinator checks the plan against the input.
    """

    def __init__(
        self,
        checkpoint: Callable[[], Any],
        layout: RunLayout,
        run: RunConfig,
        is_main_process: bool,
    ) -> None:
        self._checkpoint = checkpoint
        self._layout = layout
        self._run = run
        self._is_main_process = is_main_process
        self._plan: PlanShape | None = None

    def get(self) -> PlanShape:
        """The plan's shape; only callable once the checkpoint has run (until then the
        checkpoint's exception propagates, and nothing is cached)."""
        if self._plan is None:
            plan_file = self.local_plan_file()
            plan = read_plan_shape(plan_file)
            if self._is_main_process:
                check_plan_input(plan, self._run, plan_file)
            self._plan = plan
        return self._plan

    def local_plan_file(self) -> str:
        """``plan.json`` in the checkpoint's output folder: for a run in S3, the storage
        plugin's local copy of it, after checking that copy is at least as new as the
        object in S3 (else ``InputOpenException``, see the module docstring)."""
        partitioned = self._checkpoint()
        plan_file = os.path.join(partitioned.output.batches, "plan.json")
        if self._layout.is_remote:
            # A storage target: Snakemake's AnnotatedString, flagged with its object.
            plan: Any = self._layout.plan
            stored = plan.flags["storage_object"]
            fresh = os.path.exists(plan_file) and (
                os.path.getmtime(plan_file) >= retry_transient(stored.mtime)
            )
            if not fresh:
                raise InputOpenException(IOFile(plan, rule=partitioned.rule))
        return plan_file
