"""Where a run stands: progress, throughput, ETA, failures, the slowest running batches.

``build_status`` turns the task rows of a state store (one ``tasks()`` call: a single Query
on DynamoDB, a single SELECT on SQLite) into a ``RunStatus``; ``render_status`` makes a Rich
renderable of it and ``watch_status`` refreshes that in place. Nothing reads the audit log,
so polling stays one read per refresh however long the run has been going.

Definitions (all over *batch* tasks; merges and the manifest are quick by comparison):

- progress: SUCCEEDED batches of all batches the partition registered;
- throughput: batches (and items) finished per minute over the last ``window_s`` seconds
  when at least two finished in it, else over the whole run so far;
- elapsed: from the first batch's start to now, or, once the run finished (the manifest
  SUCCEEDED: ``is_finished``), to its last finish; a finished run's throughput is that of
  the whole run;
- ETA: batches still to finish (neither SUCCEEDED nor DEAD) divided by the throughput;
- overdue: a RUNNING attempt older than the wall time its attempt was given
  (``resources.runtime`` escalated per attempt): probably killed without a record;
- stopped: not finished, and no coordinator holds the run's lease (``with_coordinator``;
  ``coordinator.live_holder``): the run failed or was killed, and nothing will change
  until it is run again. Task rows alone cannot say so: a killed run's rows stay RUNNING.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from orchestrator_ext.history import UNKNOWN_CATEGORY, parse_time
from orchestrator_ext.state import TaskRecord, TaskStatus

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

    from orchestrator_ext.config import ResourceSpec
    from orchestrator_ext.state import StateStore

#: Seconds of recent history the throughput is measured over.
DEFAULT_WINDOW_S = 600.0
#: Running batches listed as the slowest.
DEFAULT_SLOWEST = 5


@dataclass
class RunningTask:
    """A RUNNING task and how long its attempt has been going."""

    task_id: str
    attempt: int
    host: str | None
    slurm_job_id: str | None
    started_at: str | None
    elapsed_s: float
    items_done: int | None
    overdue: bool = False


@dataclass
class RunStatus:
    """A snapshot of a run, built from its task rows."""

    run_id: str
    as_of: str
    tasks: int
    by_status: dict[str, int]
    by_kind: dict[str, dict[str, int]]
    batches_total: int = 0
    batches_done: int = 0
    batches_dead: int = 0
    items_total: int = 0
    items_done: int = 0
    items_dead_lettered: int = 0
    retried_tasks: int = 0
    elapsed_s: float | None = None
    batches_per_minute: float | None = None
    items_per_second: float | None = None
    throughput_basis: str | None = None
    eta_s: float | None = None
    eta_at: str | None = None
    failures_by_category: dict[str, int] = field(default_factory=dict)
    slowest_running: list[RunningTask] = field(default_factory=list)
    finished: bool = False
    #: Not finished, and no coordinator is running it (``with_coordinator``).
    stopped: bool = False
    #: The coordinator holding the run's lease (``coordinator.describe_holder``), if any.
    coordinator: str | None = None

    @property
    def state(self) -> str:
        """``finished``, ``stopped`` or ``in progress``."""
        return "finished" if self.finished else "stopped" if self.stopped else "in progress"

    @property
    def fraction_done(self) -> float:
        """Share of batches that succeeded (0 before partitioning)."""
        return self.batches_done / self.batches_total if self.batches_total else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: the original keys (run_id, tasks, by_status, by_kind) plus the rest."""
        data = asdict(self)
        data["fraction_done"] = round(self.fraction_done, 6)
        data["state"] = self.state
        return data


def with_coordinator(status: RunStatus, held: dict[str, Any] | None) -> RunStatus:
    """``status`` with its coordinator: ``held`` is the lease of one that may be running
    the run (``coordinator.live_holder``), or None, which makes an unfinished run that has
    tasks stopped."""
    from orchestrator_ext.coordinator import describe_holder

    status.coordinator = describe_holder(held) if held and not held.get("unreadable") else None
    # A run with no task yet has not started (its coordinator is still building the DAG).
    status.stopped = not status.finished and held is None and status.tasks > 0
    return status


def is_finished(tasks: Iterable[TaskRecord]) -> bool:
    """Whether a run has finished: its manifest, the last task of every run, SUCCEEDED.

    ``build_status`` and the cost estimate (``cost.workload``) both measure a finished run
    to its end rather than to now.
    """
    return any(t.task_id == "manifest" and t.status == TaskStatus.SUCCEEDED for t in tasks)


def build_status(
    run_id: str,
    tasks: list[TaskRecord],
    now: datetime | None = None,
    resources: ResourceSpec | None = None,
    window_s: float = DEFAULT_WINDOW_S,
    slowest: int = DEFAULT_SLOWEST,
) -> RunStatus:
    """Summarise a run's task rows.

    Args:
        run_id: the run.
        tasks: every task row (``StateStore.tasks()``).
        now: the time to measure against (default: now, UTC).
        resources: the run's resources, to flag RUNNING attempts past their wall time.
        window_s: seconds of recent history for the throughput.
        slowest: how many running batches to list.

    Returns:
        The snapshot; see the module docstring for the definitions.
    """
    now = now or datetime.now(UTC)
    counts = {str(s): 0 for s in TaskStatus if s is not TaskStatus.SUPERSEDED}
    by_kind: dict[str, dict[str, int]] = {}
    for task in tasks:
        counts[str(task.status)] += 1
        kind = by_kind.setdefault(task.kind, {})
        kind[str(task.status)] = kind.get(str(task.status), 0) + 1
    status = RunStatus(
        run_id=run_id,
        as_of=now.isoformat(timespec="seconds"),
        tasks=len(tasks),
        by_status=counts,
        by_kind=by_kind,
    )
    batches = [t for t in tasks if t.kind == "batch"]
    done = [t for t in batches if t.status == TaskStatus.SUCCEEDED]
    status.batches_total = len(batches)
    status.batches_done = len(done)
    status.batches_dead = sum(t.status == TaskStatus.DEAD for t in batches)
    status.items_total = sum(t.items or 0 for t in batches)
    status.items_done = sum(t.items_done or 0 for t in batches)
    status.items_dead_lettered = sum(t.items_dead or 0 for t in done)
    status.retried_tasks = sum(t.attempt > 1 for t in tasks)
    for task in tasks:
        if task.status in (TaskStatus.FAILED, TaskStatus.DEAD):
            key = task.error_category or UNKNOWN_CATEGORY
            status.failures_by_category[key] = status.failures_by_category.get(key, 0) + 1
    status.finished = is_finished(tasks)
    # A finished run is measured to its last finish, not to now: looked at an hour later,
    # it still took what it took.
    ends = [e for e in (parse_time(t.finished_at) for t in tasks) if e is not None]
    run_end = max(ends) if status.finished and ends else None
    _add_throughput(status, batches, done, now, window_s, run_end)
    status.slowest_running = _slowest_running(batches, now, resources, slowest)
    return status


def _add_throughput(
    status: RunStatus,
    batches: list[TaskRecord],
    done: list[TaskRecord],
    now: datetime,
    window_s: float,
    run_end: datetime | None = None,
) -> None:
    """Elapsed, throughput and ETA; to ``run_end`` (a finished run's last finish) if given,
    else to ``now``, and then over the whole run, not the last ``window_s``."""
    starts = [s for s in (parse_time(t.started_at) for t in batches) if s is not None]
    if not starts:
        return
    first = min(starts)
    status.elapsed_s = round(((run_end or now) - first).total_seconds(), 3)
    finished = sorted(
        (end, (t.items or 0)) for t in done if (end := parse_time(t.finished_at)) is not None
    )
    recent = [(end, n) for end, n in finished if (now - end).total_seconds() <= window_s]
    if run_end is None and len(recent) >= 2 and status.elapsed_s > window_s:
        span, sample, status.throughput_basis = window_s, recent, f"last {window_s:.0f} s"
    else:
        span, sample, status.throughput_basis = status.elapsed_s, finished, "whole run"
    if not sample or span <= 0:
        return
    status.batches_per_minute = round(len(sample) / span * 60, 3)
    status.items_per_second = round(sum(n for _, n in sample) / span, 3)
    remaining = status.batches_total - status.batches_done - status.batches_dead
    if remaining > 0 and status.batches_per_minute > 0:
        status.eta_s = round(remaining / status.batches_per_minute * 60, 1)
        status.eta_at = (now + timedelta(seconds=status.eta_s)).isoformat(timespec="seconds")
    elif remaining == 0:
        status.eta_s = 0.0


def _slowest_running(
    batches: list[TaskRecord], now: datetime, resources: ResourceSpec | None, n: int
) -> list[RunningTask]:
    running = []
    for task in batches:
        started = parse_time(task.started_at)
        if task.status != TaskStatus.RUNNING or started is None:
            continue
        elapsed = (now - started).total_seconds()
        limit_s = resources.for_attempt(task.attempt)[1] * 60 if resources else None
        running.append(
            RunningTask(
                task_id=task.task_id,
                attempt=task.attempt,
                host=task.host,
                slurm_job_id=task.slurm_job_id,
                started_at=task.started_at,
                elapsed_s=round(elapsed, 1),
                items_done=task.items_done,
                overdue=limit_s is not None and elapsed > limit_s,
            )
        )
    return sorted(running, key=lambda r: -r.elapsed_s)[:n]


# -- rendering -----------------------------------------------------------------------------


def format_duration(seconds: float | None) -> str:
    """``3h02m``, ``4m05s``, ``12s``; ``-`` for None."""
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def render_status(status: RunStatus) -> RenderableType:
    """A Rich renderable: headline, progress bar, counts, failures, slowest running."""
    from rich.console import Group
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    parts: list[RenderableType] = []
    parts.append(
        Text(f"run {status.run_id}: {status.tasks} tasks, {status.state} (as of {status.as_of})",
             style="bold")
    )  # fmt: skip
    if status.stopped:
        parts.append(
            Text("no coordinator is running it: it failed or was killed; run the same "
                 "snakemake command again to resume", style="yellow")
        )  # fmt: skip
    elif status.coordinator and not status.finished:
        parts.append(Text(f"coordinated by {status.coordinator}", style="dim"))
    if status.batches_total:
        bar = Table.grid(padding=(0, 1))
        bar.add_row(
            ProgressBar(total=status.batches_total, completed=status.batches_done, width=40),
            Text(
                f"{status.batches_done}/{status.batches_total} batches "
                f"({status.fraction_done:.1%}), {status.items_done:,}/{status.items_total:,} "
                f"items, {status.items_dead_lettered:,} dead-lettered"
            ),
        )
        parts.append(bar)
        rate = (
            f"{status.batches_per_minute:.2f} batches/min ({status.items_per_second:,.1f} items/s,"
            f" {status.throughput_basis})"
            if status.batches_per_minute is not None
            else "no batch finished yet"
        )
        eta = format_duration(status.eta_s) + (f" ({status.eta_at})" if status.eta_at else "")
        parts.append(
            Text(f"throughput {rate}; elapsed {format_duration(status.elapsed_s)}; ETA {eta}")
        )
    else:
        parts.append(Text("no batches yet: the partition step has not finished"))

    # Everything that comes from the state store (kinds, categories, task ids, hosts) goes
    # in as Text: a str cell is read as Rich markup, and "[/bold]" in it raises MarkupError.
    counts = Table()
    kinds = sorted(status.by_kind)
    counts.add_column("status")
    for kind in kinds:
        counts.add_column(Text(kind), justify="right")
    counts.add_column("total", justify="right")
    for name, n in status.by_status.items():
        counts.add_row(Text(name), *(str(status.by_kind[k].get(name, 0)) for k in kinds), str(n))
    parts += [Text("tasks by status", style="bold"), counts]

    if status.failures_by_category:
        failures = Table()
        failures.add_column("category")
        failures.add_column("tasks", justify="right")
        for category, n in sorted(status.failures_by_category.items()):
            failures.add_row(Text(category), str(n))
        parts += [Text("failed tasks by category", style="bold"), failures]
        parts.append(Text("details: orchestrator errors", style="dim"))

    if status.slowest_running:
        slow = Table()
        for column in ("task", "attempt", "running for", "items done", "host", "slurm job"):
            slow.add_column(column)
        for task in status.slowest_running:
            flag = " OVERDUE" if task.overdue else ""
            slow.add_row(
                Text(task.task_id), str(task.attempt), format_duration(task.elapsed_s) + flag,
                "-" if task.items_done is None else f"{task.items_done:,}",
                Text(task.host or "-"), Text(task.slurm_job_id or "-"),
            )  # fmt: skip
        # A stopped run's RUNNING rows are what it left: nothing waits for those attempts.
        heading = (
            "batches left RUNNING by the stopped run (no coordinator waits for them; the "
            "next run starts them again)"
            if status.stopped
            else "slowest running batches"
        )
        parts += [Text(heading, style="bold"), slow]
    return Group(*parts)


def watch_status(
    store: StateStore,
    snapshot: Callable[[StateStore], RunStatus],
    console: Console,
    interval_s: float,
    count: int | None = None,
    as_json: bool = False,
) -> RunStatus:
    """Refresh the status every ``interval_s`` seconds until the run finished or stopped,
    ``count`` refreshes were shown, or Ctrl-C.

    With ``as_json`` it prints one JSON object per line instead of a live view.
    """
    import json

    from rich.live import Live

    shown = 0
    status = snapshot(store)
    try:
        if as_json:
            while True:
                print(json.dumps(status.to_dict(), sort_keys=True), file=console.file, flush=True)
                shown += 1
                if status.finished or status.stopped or (count is not None and shown >= count):
                    return status
                time.sleep(interval_s)
                status = snapshot(store)
        with Live(render_status(status), console=console, auto_refresh=False) as live:
            while True:
                shown += 1
                if status.finished or status.stopped or (count is not None and shown >= count):
                    return status
                time.sleep(interval_s)
                status = snapshot(store)
                live.update(render_status(status), refresh=True)
    except KeyboardInterrupt:
        return status
