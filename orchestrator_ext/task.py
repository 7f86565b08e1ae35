"""Task identity: what a task of a run is called, what kind it is, which rule runs it, where
its log is and where it sits in the merge tree. Pure functions, no I/O.

Every unit of work of a run is a task with a stable id, the key of its row in the state
store::

    partition                 the partition (rule partition_items)
    batch-00042               batch 42 (rule process_batch)
    merge-L1-part-00003       node 3 of merge level 1 (rule merge_level)
    final                     the root of the merge tree (rule merge_final)
    manifest                  the manifest (rule write_manifest)

Rules, executors, the state store, history, report and manifest derive ids, kinds, rules
and log names from this module only: adding a stage means adding one ``Stage`` here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

BATCH_DIGITS = 5

PARTITION = "partition"
FINAL = "final"
MANIFEST = "manifest"


@dataclass(frozen=True)
class Stage:
    """One kind of task: its Snakemake rule and its log's name (a pattern over the rule's
    wildcards), as ``RunLayout.log(stage.rule, stage.log_name)`` expects."""

    kind: str
    rule: str
    log_name: str


BATCH = Stage("batch", "process_batch", "{batch}")
MERGE = Stage("merge", "merge_level", "L{level}-{part}")
STAGES: dict[str, Stage] = {
    stage.kind: stage
    for stage in (
        Stage(PARTITION, "partition_items", "partition"),
        BATCH,
        MERGE,
        Stage(FINAL, "merge_final", "final"),
        Stage(MANIFEST, "write_manifest", "manifest"),
    )
}
#: The dashboard is a job with a log but no task (it is not tracked in the state store).
DASHBOARD = Stage("dashboard", "report_dashboard", "dashboard")
_BY_RULE = {stage.rule: stage for stage in [*STAGES.values(), DASHBOARD]}

_BATCH_ID = re.compile(r"^batch-(\d+)$")
_MERGE_ID = re.compile(r"^merge-L(\d+)-part-(\d+)$")


def batch_name(batch: int) -> str:
    """``batch-00042`` for batch 42: its task id and the stem of its files."""
    return f"batch-{batch:0{BATCH_DIGITS}d}"


def part_name(index: int) -> str:
    """``part-00003`` for merge node 3 of a level: the stem of its files."""
    return f"part-{index:0{BATCH_DIGITS}d}"


def batch_id(batch: int) -> str:
    """Task id of batch ``batch``."""
    return batch_name(batch)


def merge_id(level: int, index: int) -> str:
    """Task id of inner merge node ``index`` of ``level``."""
    return f"merge-L{level}-{part_name(index)}"


def node_id(level: int, index: int, root_level: int) -> str:
    """Task id of a node of the merge tree: level 0 are the batches, ``root_level`` the
    final result, the levels between merge nodes."""
    if level == 0:
        return batch_id(index)
    return FINAL if level == root_level else merge_id(level, index)


@dataclass(frozen=True)
class Task:
    """A parsed task id: its stage and, for batches and merge nodes, its tree position
    (``level`` 0 for batches; ``index`` within the level)."""

    id: str
    stage: Stage
    level: int | None = None
    index: int | None = None

    @property
    def kind(self) -> str:
        """``partition``, ``batch``, ``merge``, ``final`` or ``manifest``."""
        return self.stage.kind

    @property
    def log_name(self) -> str:
        """The log's file name (without ``.log``) under the rule's log folder."""
        if self.stage is BATCH:
            return f"{self.index:0{BATCH_DIGITS}d}"
        if self.stage is MERGE:
            return f"L{self.level}-{self.index:0{BATCH_DIGITS}d}"
        return self.stage.log_name


def parse(task_id: str) -> Task | None:
    """The task an id names, or None if no stage has such ids."""
    if match := _BATCH_ID.match(task_id):
        return Task(task_id, BATCH, 0, int(match.group(1)))
    if match := _MERGE_ID.match(task_id):
        return Task(task_id, MERGE, int(match.group(1)), int(match.group(2)))
    stage = STAGES.get(task_id)
    return Task(task_id, stage) if stage is not None and stage not in (BATCH, MERGE) else None


def kind(task_id: str) -> str:
    """``batch``, ``merge``, or the task id itself for singletons (and unknown ids)."""
    task = parse(task_id)
    return task.kind if task is not None else task_id


def stage_of_rule(rule: str) -> Stage:
    """The stage Snakemake rule ``rule`` runs.

    Raises:
        KeyError: no stage is run by that rule.
    """
    try:
        return _BY_RULE[rule]
    except KeyError:
        raise KeyError(f"no stage is run by rule {rule!r} (known: {sorted(_BY_RULE)})") from None


def for_job(rule: str, wildcards: dict[str, str]) -> str | None:
    """The task a Snakemake job of ``rule`` works on, or None for rules without one."""
    stage = _BY_RULE.get(rule)
    if stage is BATCH:
        return batch_id(int(wildcards["batch"]))
    if stage is MERGE:
        return merge_id(int(wildcards["level"]), int(wildcards["part"]))
    return stage.kind if stage is not None and stage in STAGES.values() else None


def all_ids(level_sizes: list[int]) -> list[str]:
    """Every task of a planned run but the partition: batches, inner merge nodes, final,
    manifest. ``level_sizes`` as ``layout.level_sizes`` gives them (batches first)."""
    ids = [batch_id(b) for b in range(level_sizes[0])]
    ids += [
        merge_id(lv, i) for lv in range(1, len(level_sizes) - 1) for i in range(level_sizes[lv])
    ]
    return [*ids, FINAL, MANIFEST]
