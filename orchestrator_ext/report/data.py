"""What the dashboard shows, read once from a run: task rows and the audit log of the state
store, ``plan.json``, ``manifest.json`` and the dead-letter files, shaped into a
``ReportData``; and the merge tree's nodes with their plot positions.

Nothing here raises on a run that is unreadable in part: what could not be read becomes a
line of ``ReportData.notes``, which the page lists.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from orchestrator_ext import task
from orchestrator_ext.errors import OrchestratorError
from orchestrator_ext.history import AttemptSpan, attempt_spans, read_dead_letters
from orchestrator_ext.layout import RunLayout, level_sizes
from orchestrator_ext.state import TaskRecord
from orchestrator_ext.status import RunStatus, build_status

if TYPE_CHECKING:
    from collections.abc import Mapping

    from orchestrator_ext.config import RunConfig
    from orchestrator_ext.state import StateStore


@dataclass
class ReportData:
    """Everything the dashboard shows, read once."""

    run_id: str
    run_dir: str
    backend: str
    generated_at: str
    tasks: list[TaskRecord] = field(default_factory=list)
    spans: list[AttemptSpan] = field(default_factory=list)
    status: RunStatus | None = None
    plan: dict[str, Any] | None = None
    manifest: dict[str, Any] | None = None
    dead_by_category: dict[str, int] = field(default_factory=dict)
    dead_by_batch: dict[str, int] = field(default_factory=dict)
    dead_source: str = "none"
    notes: list[str] = field(default_factory=list)


def read_json_at(uri: str) -> dict[str, Any] | None:
    """A JSON record on disk or in S3, or None when it does not exist.

    Raises:
        CorruptFile: the file is not valid JSON or not a JSON object (names ``uri``).
    """
    from orchestrator_ext.errors import MissingOutput
    from orchestrator_ext.location import location_of

    try:
        return location_of(uri).read_json(uri)
    except MissingOutput:
        return None


def collect_report_data(config: RunConfig, store: StateStore | None) -> ReportData:
    """Read the run's state, plan, manifest and dead letters; what fails goes to ``notes``.

    Args:
        config: the run's validated config.
        store: an open state store, or None when none could be opened (the task-level
            sections then stay empty).

    Returns:
        What the dashboard shows; never raises for a run that is unreadable in part.
    """
    layout = RunLayout(config.run_dir)
    data = ReportData(
        run_id=config.run_id,
        run_dir=config.run_dir,
        backend=config.state.backend,
        generated_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    if store is None:
        data.notes.append("no state store could be opened: task-level sections are empty")
    else:
        try:
            data.tasks = store.tasks()
            data.spans = attempt_spans(store.transitions())
            data.status = build_status(config.run_id, data.tasks, resources=config.resources)
        except Exception as exc:  # reporting must never break the run
            data.notes.append(f"state store not readable: {exc}")
    for name, uri in (("plan", layout.plan), ("manifest", layout.manifest)):
        try:
            setattr(data, name, read_json_at(uri))
        except (OrchestratorError, OSError, ValueError) as exc:
            data.notes.append(f"{name} not readable ({uri}): {exc}")
        if getattr(data, name) is None:
            data.notes.append(f"no {name} yet ({uri})")
    _add_dead_letters(data, config)
    return data


def _add_dead_letters(data: ReportData, config: RunConfig) -> None:
    # The best source there is: the files name categories and batches, the manifest too
    # (but exists only at the end), task rows count items per batch only.
    try:
        dead = read_dead_letters(config.run_dir, limit=0)
    except (OSError, ValueError) as exc:
        data.notes.append(f"dead-letter files not readable: {exc}")
        dead = None
    if dead is not None and dead.files:
        data.dead_by_category, data.dead_by_batch = dead.by_category, dead.by_batch
        data.dead_source = f"{dead.files} dead-letter files"
    elif data.manifest is not None:
        data.dead_by_category = dict(data.manifest["dead_letter"]["by_category"])
        data.dead_by_batch = {
            b["batch_id"]: b["items_dead_lettered"]
            for b in data.manifest["batches"]
            if b["items_dead_lettered"]
        }
        data.dead_source = "manifest"
    elif data.tasks:
        data.dead_by_batch = {
            _batch_label(t.task_id): t.items_dead
            for t in data.tasks
            if t.kind == task.BATCH.kind and t.items_dead
        }
        data.dead_source = "state store (no categories)"


def _batch_label(task_id: str) -> str:
    """``00042`` for ``batch-00042``: how dead-letter files and the manifest name a batch."""
    parsed = task.parse(task_id)
    if parsed is None or parsed.index is None:
        return task_id
    return f"{parsed.index:0{task.BATCH_DIGITS}d}"


def merge_tree_nodes(
    n_batches: int, fan_in: int, statuses: Mapping[str, str]
) -> list[dict[str, Any]]:
    """Nodes of the merge tree with their plot position and status.

    Level 0 node ``i`` sits at x = i; a node of a higher level sits at the mean x of its
    children.

    Args:
        n_batches: batches of the run (the tree's leaves).
        fan_in: children per merge node.
        statuses: task id -> status; a task without one is ``PENDING``.

    Returns:
        One dict per node, leaves first: level, index, task_id, x, status, parent (its
        index in level + 1, None for the root).
    """
    sizes = level_sizes(n_batches, fan_in)
    top = len(sizes) - 1
    nodes: list[dict[str, Any]] = []
    xs: list[float] = [float(i) for i in range(n_batches)]
    for level, size in enumerate(sizes):
        if level > 0:
            xs = [
                sum(xs[c] for c in kids) / len(kids)
                for kids in (range(i * fan_in, min((i + 1) * fan_in, sizes[level - 1]))
                             for i in range(size))
            ]  # fmt: skip
        for i in range(size):
            task_id = task.node_id(level, i, top)
            nodes.append(
                {
                    "level": level, "index": i, "task_id": task_id, "x": xs[i],
                    "status": statuses.get(task_id, "PENDING"),
                    "parent": i // fan_in if level < top else None,
                }
            )  # fmt: skip
    return nodes
