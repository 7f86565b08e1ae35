"""What a run did, or will do: the counts a cost estimate is made of.

Three sources, most precise first:

- ``state store``: after (or during) a run, from the audit log: every attempt of every task,
  how long it ran, how many state writes it made (``build_workload_from_store``);
- ``plan``: after partitioning, from ``batches/plan.json``: exact batch count and sizes,
  one attempt per task (``build_workload_from_plan``);
- ``config``: before anything ran: the item count (``--items``, or counted from local input
  files) divided by ``batching.max_items``; a lower bound on batches when ``max_bytes`` or a
  weight column cuts batches smaller (``build_workload_from_config``).

All but ``count_input_items`` (which reads the local input's footers or lines) are pure.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from orchestrator_ext.cost.errors import CostError
from orchestrator_ext.layout import level_sizes
from orchestrator_ext.location import is_remote

if TYPE_CHECKING:
    from orchestrator_ext.config import RunConfig
    from orchestrator_ext.state import TaskRecord, Transition


@dataclass
class Workload:
    """The counts a cost estimate is made of."""

    source: str
    items: int
    batches: int
    fan_in: int
    input_files: int = 1
    batch_bytes: list[int] = field(default_factory=list)
    batch_attempts: int = 0
    merge_attempts: int = 0
    other_attempts: int = 0
    failed_attempts: int = 0
    tasks: int = 0
    transitions: int = 0
    core_seconds: float = 0.0
    core_seconds_basis: str = ""

    @property
    def levels(self) -> list[int]:
        """Nodes per level of the merge tree (level 0 = batches)."""
        return level_sizes(self.batches, self.fan_in)

    @property
    def merge_nodes(self) -> int:
        """Inner merge nodes and the root."""
        return sum(self.levels[1:])


def _task_count(batches: int, fan_in: int) -> int:
    # batches, inner merges + root (final), manifest, partition
    return batches + sum(level_sizes(batches, fan_in)[1:]) + 2


def count_input_items(config: RunConfig) -> tuple[int, int, int]:
    """(items, files, bytes) of a local input, without loading it into memory.

    Parquet row counts come from the file footers; CSV and JSONL are counted by lines.

    Raises:
        CostError: the input is in S3 (pass ``--items``) or cannot be read.
    """
    from orchestrator_ext.items import list_input_files

    if is_remote(config.input.uri):
        raise CostError(
            f"input {config.input.uri} is in S3: pass --items N, or run the partition step "
            "first so that the plan has the exact count"
        )
    files = list_input_files(config.input.uri)
    items = 0
    for path in files:
        if config.input.format == "parquet":
            import pyarrow.parquet as pq

            items += pq.read_metadata(path).num_rows
        else:
            with open(path, "rb") as handle:
                lines = sum(1 for line in handle if line.strip())
            items += lines - 1 if config.input.format == "csv" else lines
    return items, len(files), sum(os.path.getsize(p) for p in files)


def build_workload_from_config(
    config: RunConfig, items: int | None = None, batch_seconds: float | None = None
) -> Workload:
    """Counts before partitioning: ``items`` (or the local input's count) / max_items.

    ``batch_seconds`` is the expected run time of one job; default: the wall time a first
    attempt asks for (``resources.runtime``), an upper bound.

    Raises:
        CostError: the input has no items, is in S3 without ``items``, or cannot be read.
    """
    n_files, n_bytes = 1, 0
    if items is None:
        items, n_files, n_bytes = count_input_items(config)
    if items < 1:
        raise CostError("the input has no items: nothing to estimate")
    batches = math.ceil(items / config.batching.max_items)
    per_batch = n_bytes // batches if n_bytes else 0
    workload = Workload(
        source="config", items=items, batches=batches, fan_in=config.merge.fan_in,
        input_files=n_files, batch_bytes=[per_batch] * batches,
    )  # fmt: skip
    return _one_attempt_each(workload, config, batch_seconds)


def build_workload_from_plan(
    config: RunConfig, plan: dict[str, Any], batch_seconds: float | None = None
) -> Workload:
    """Counts after partitioning: the plan's batches, one attempt per task."""
    workload = Workload(
        source="plan",
        items=int(plan["items"]),
        batches=int(plan["n_batches"]),
        fan_in=int(plan["fan_in"]),
        input_files=max(1, len(plan.get("input", {}).get("files", []))),
        batch_bytes=[int(b.get("bytes", 0)) for b in plan["batches"]],
    )
    return _one_attempt_each(workload, config, batch_seconds)


def _one_attempt_each(
    workload: Workload, config: RunConfig, batch_seconds: float | None
) -> Workload:
    workload.batch_attempts = workload.batches
    workload.merge_attempts = workload.merge_nodes
    workload.other_attempts = 2  # partition, manifest
    workload.tasks = _task_count(workload.batches, workload.fan_in)
    workload.transitions = workload.tasks + 2 * (
        workload.batch_attempts + workload.merge_attempts + workload.other_attempts
    )
    if batch_seconds is None:
        seconds, basis = config.resources.runtime * 60.0, "upper bound: resources.runtime per job"
    else:
        seconds, basis = float(batch_seconds), f"{batch_seconds:g} s per job (--batch-seconds)"
    jobs = workload.batch_attempts + workload.merge_attempts + workload.other_attempts
    workload.core_seconds, workload.core_seconds_basis = jobs * seconds, basis
    return workload


def build_workload_from_store(
    config: RunConfig,
    tasks: list[TaskRecord],
    transitions: list[Transition],
    plan: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> Workload:
    """Counts from what happened: every attempt in the audit log; open attempts up to now,
    or, once the run finished, up to its last transition.

    Raises:
        CostError: the store has no batches yet (the partition step has not run).
    """
    from orchestrator_ext.history import attempt_spans
    from orchestrator_ext.status import is_finished

    batches = [t for t in tasks if t.kind == "batch"]
    if not batches:
        raise CostError("the state store has no batches yet: estimate from the config instead")
    now = now or datetime.now(UTC)
    # An attempt that never recorded its end (killed) of a finished run ended by the run's
    # end at the latest: measured to now, the estimate of a finished run would keep growing.
    if transitions and is_finished(tasks):
        now = min(now, max(datetime.fromisoformat(t.at) for t in transitions))
    spans = attempt_spans(transitions)
    seconds = 0.0
    for span in spans:
        end = datetime.fromisoformat(span.ended_at) if span.ended_at else now
        seconds += max(0.0, (end - datetime.fromisoformat(span.started_at)).total_seconds())
    kinds = {t.task_id: t.kind for t in tasks}
    return Workload(
        source="state store",
        items=sum(t.items or 0 for t in batches),
        batches=len(batches),
        fan_in=int(plan["fan_in"]) if plan else config.merge.fan_in,
        input_files=max(1, len(plan["input"]["files"])) if plan else 1,
        batch_bytes=[int(b.get("bytes", 0)) for b in plan["batches"]] if plan else [],
        batch_attempts=sum(kinds.get(s.task_id) == "batch" for s in spans),
        merge_attempts=sum(kinds.get(s.task_id) in ("merge", "final") for s in spans),
        other_attempts=sum(kinds.get(s.task_id) in ("partition", "manifest") for s in spans),
        failed_attempts=sum(s.outcome not in (None, "SUCCEEDED") for s in spans),
        tasks=len(tasks),
        transitions=len(transitions),
        core_seconds=seconds,
        core_seconds_basis="measured: every attempt in the audit log",
    )
