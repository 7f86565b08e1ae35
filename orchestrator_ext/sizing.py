"""Batches sized by time (``batching.target_seconds``), and the overhead a batch pays.

With ``target_seconds`` set, the partition times the job on the input's first items
(``time_sample``) and cuts batches of about ``target_seconds`` of work
(``choose_max_items``), at most ``max_items`` when that is set; ``max_bytes`` still applies.
The size and what it came from are recorded under ``batching`` in ``plan.json``
(``plan_fields``), and a partition run again over the same config and input takes the
recorded size instead of timing again (``recorded_batching``), so it cuts the same batches.
``batching_for`` is the one call the partition makes.

How the job is timed:

- It is called as a batch job calls it: the callable ``job.resolve_job`` loads, a
  ``JobContext`` with the run's ``params`` and ``workers`` (task ``partition``, attempt 1);
  item mode ``fn(item, ctx)`` per item, batch mode ``fn(frame, ctx)``. Unlike a batch:
  no retries, no injected faults, no state-store writes, no outputs (results are dropped).
  A job with side effects beyond its return value has them for these items once more.
- Item mode: one item after another. Batch mode: slices of 1, 2, 4, ... items; the largest
  call that succeeded gives the time per item (a call's fixed cost spread over the most
  items).
- Calls go on until ``TIMING_SECONDS`` of work or the sample is used up; none is started
  once ``MAX_TIMING_SECONDS`` are spent (one that has started is not interrupted).
- Item mode on ``job.workers`` workers calls that many items at once: a batch takes the
  time per item divided by the workers. Batch mode is timed as it runs (``ctx.workers``).
- A call that raises is counted and left out of the time per item (what a failing item
  costs in a run, dead-lettered at once, retried or bisected, the sample cannot tell);
  the partition log says how many failed, with the first error. If every call failed,
  ``SizingError`` names the job. A resource error (``MemoryError``) is raised as it is.

The ``batching`` section of the plan (``plan_fields``)::

    max_items, max_bytes, weight_column   the batching the items were cut by
    target_seconds                        as configured; null: sized by max_items, and
                                          none of the keys below is present
    max_items_limit                       the configured max_items bounding the time-
                                          derived size (null: none)
    seconds_per_item                      wall seconds one item adds to a batch
    sampled_items, failed_items           items the job was called on; of those, failed

Overhead: every batch job also pays a fixed cost, measured in ``docs/benchmarks.md``
(``LOCAL_OVERHEAD_SECONDS``, ``SLURM_OVERHEAD_SECONDS``); ``overhead_warning`` says when it
is more than ``OVERHEAD_WARNING_FRACTION`` of a batch's expected time. ``PlanPreview`` and
``render_plan_preview`` are what ``orchestrator plan`` shows before a run.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from orchestrator_ext.config import MAX_ITEMS_LIMIT, BatchingSpec, RunConfig
from orchestrator_ext.errors import Category, OrchestratorError, classify, describe

if TYPE_CHECKING:
    import polars as pl
    from rich.console import RenderableType

    from orchestrator_ext.job import JobContext

# The job's machinery (job, workers) is imported where the job is timed: the ``orchestrator``
# command imports this module for its overhead figures on every start.

logger = logging.getLogger(__name__)

#: Rows of the input's head the partition hands over to be timed (at most).
SAMPLE_ITEMS = 10_000
#: Seconds of the job's work the timing aims at: enough to average out a call's noise.
TIMING_SECONDS = 1.5
#: No call is started after this many seconds of timing.
MAX_TIMING_SECONDS = 5.0

#: Fixed cost of one batch job, in seconds, beyond its own work. Locally (executor
#: orchestrator-local, batch jobs started warm): a whole run of trivial batches took
#: 0.45-0.6 s of wall per batch and worker at 200 to 1,000 batches, most of it Snakemake's
#: scheduling (docs/benchmarks.md, summary row 10 and "Batch size we recommend").
LOCAL_OVERHEAD_SECONDS = 0.5
#: On Slurm (orchestrator-slurm): a process_batch Slurm job took 5.0 s end to end for about
#: 1 s of work, besides about 5 s until its end is noticed by the status polling
#: (docs/benchmarks.md, "Slurm", "Where the time goes").
SLURM_OVERHEAD_SECONDS = 5.0
#: ``--executor`` of ``orchestrator plan`` -> its overhead per batch job.
OVERHEAD_SECONDS = {"local": LOCAL_OVERHEAD_SECONDS, "slurm": SLURM_OVERHEAD_SECONDS}
#: Overhead above this fraction of a batch's expected time is warned about.
OVERHEAD_WARNING_FRACTION = 0.10

Clock = Callable[[], float]


class SizingError(OrchestratorError):
    """Raised when batches are to be sized by time but the job cannot be timed: the sample
    has no items, or the job failed on every item it was called on."""


@dataclass(frozen=True)
class SampleTiming:
    """What calling the job on the sample measured.

    Attributes:
        sampled_items: items the job was called on.
        failed_items: of those, items whose call raised.
        seconds: wall seconds of the calls that succeeded.
        seconds_per_item: wall seconds one item adds to a batch (item mode: divided by
            ``job.workers``).
    """

    sampled_items: int
    failed_items: int
    seconds: float
    seconds_per_item: float


@dataclass(frozen=True)
class SizingResult:
    """A batch size chosen by time.

    Attributes:
        target_seconds: ``batching.target_seconds``.
        max_items: the chosen size: about ``target_seconds / seconds_per_item``, at least
            1, at most the configured ``max_items``.
        timing: what it was derived from.
    """

    target_seconds: float
    max_items: int
    timing: SampleTiming

    @property
    def items_timed(self) -> int:
        """Items whose call succeeded and was timed."""
        return self.timing.sampled_items - self.timing.failed_items

    @property
    def seconds_per_item(self) -> float:
        """Wall seconds one item adds to a batch."""
        return self.timing.seconds_per_item


def time_sample(
    config: RunConfig,
    sample: pl.DataFrame,
    *,
    budget_seconds: float = TIMING_SECONDS,
    max_seconds: float = MAX_TIMING_SECONDS,
    clock: Clock = time.perf_counter,
) -> SampleTiming:
    """Time the run's job on the first items of ``sample`` (see the module docstring).

    Args:
        config: the run config (its ``job``).
        sample: items as a batch holds them (the input's first rows).
        budget_seconds: seconds of work after which no further call is made.
        max_seconds: no call is started once this many seconds are spent.
        clock: seconds, monotonic (tests pass a fake one).

    Raises:
        SizingError: ``sample`` has no rows, or every call raised.
        JobLoadError: the job cannot be imported.
        MemoryError: (or any resource error) raised by a call, as it is.
    """
    from orchestrator_ext import task
    from orchestrator_ext.job import job_context, resolve_job

    if sample.height == 0:
        raise SizingError("batching.target_seconds: the input has no items to time the job on")
    spec = config.job
    fn = resolve_job(spec).function
    with job_context(config.run_id, task.PARTITION, 1, spec.params, spec.workers) as ctx:
        if spec.mode == "item":
            timing = _time_items(fn, sample, ctx, config.input.id_column, budget_seconds, clock)
            timing = replace(timing, seconds_per_item=timing.seconds_per_item / spec.workers)
        else:
            timing = _time_batches(fn, sample, ctx, budget_seconds, max_seconds, clock)
    return timing


@dataclass
class _Failures:
    """Calls that raised during the timing: how many items, and the first error."""

    items: int = 0
    first: str = ""

    def add(self, items: int, where: str, error: Exception) -> None:
        if classify(error) is Category.RESOURCE:
            raise error
        if not self.items:
            self.first = f"{where}: {describe(error)}"
        self.items += items


def _time_items(
    fn: Callable[..., Any],
    sample: pl.DataFrame,
    ctx: JobContext,
    id_column: str,
    budget_seconds: float,
    clock: Clock,
) -> SampleTiming:
    """Item mode: each item called and timed in turn, until the budget is spent."""
    from orchestrator_ext.workers import call_one

    seconds, calls, failures = 0.0, 0, _Failures()
    started = clock()
    for item in sample.iter_rows(named=True):
        before = clock()
        called = call_one(fn, item, ctx)
        after = clock()
        calls += 1
        if called.error is None:
            seconds += after - before
        elif isinstance(called.error, Exception):
            failures.add(1, f"item {item.get(id_column)!r}", called.error)
        if after - started >= budget_seconds:
            break
    timed = calls - failures.items
    return _timing(calls, failures, seconds, seconds / timed if timed else 0.0)


def _time_batches(
    fn: Callable[..., Any],
    sample: pl.DataFrame,
    ctx: JobContext,
    budget_seconds: float,
    max_seconds: float,
    clock: Clock,
) -> SampleTiming:
    """Batch mode: slices of 1, 2, 4, ... items; the largest successful call is the rate."""
    position, size, spent, ok_seconds = 0, 1, 0.0, 0.0
    best_items, best_seconds, failures = 0, 0.0, _Failures()
    while position < sample.height:
        chunk = sample.slice(position, size)
        before = clock()
        try:
            fn(chunk, ctx)
            error = None
        except Exception as exc:
            error = exc
        elapsed = clock() - before
        spent += elapsed
        position += chunk.height
        if error is not None:
            failures.add(chunk.height, f"a call on {chunk.height} items", error)
            size = 0  # start small again after the failing slice: 1 item next
        else:
            ok_seconds += elapsed
            if chunk.height >= best_items:
                best_items, best_seconds = chunk.height, elapsed
        if spent >= budget_seconds:
            break
        size = max(1, 2 * size)
        if best_items and best_seconds > 0:
            # The next call must fit in what is left of max_seconds.
            room = max_seconds - spent
            if room <= 0:
                break
            size = max(1, min(size, int(room / (best_seconds / best_items))))
    per_item = best_seconds / best_items if best_items else 0.0
    return _timing(position, failures, ok_seconds, per_item)


def _timing(calls: int, failures: _Failures, seconds: float, per_item: float) -> SampleTiming:
    """The timing of ``calls`` items, after checking that some succeeded."""
    if failures.items:
        if failures.items == calls:
            raise SizingError(
                f"batching.target_seconds: the job failed on every item it was timed on "
                f"({calls} of the input's first items; first, {failures.first}); fix the "
                "job, or size batches with batching.max_items instead"
            )
        logger.warning(
            "timing the job for batching.target_seconds: %d of %d items failed (first, %s); "
            "they are left out of the time per item, and a run dead-letters them: check "
            "the job on them", failures.items, calls, failures.first,
        )  # fmt: skip
    return SampleTiming(calls, failures.items, seconds, per_item)


def choose_max_items(seconds_per_item: float, target_seconds: float, limit: int) -> int:
    """Items in a batch of about ``target_seconds``: at least 1, at most ``limit``.

    >>> choose_max_items(0.001, 300, 10**9)
    300000
    >>> choose_max_items(0.001, 300, 5000)
    5000
    """
    if seconds_per_item <= 0:
        return limit
    return max(1, min(limit, math.floor(target_seconds / seconds_per_item)))


def size_by_time(config: RunConfig, sample: pl.DataFrame, **timing: Any) -> SizingResult:
    """Time the job on ``sample`` and choose the batch size for
    ``config.batching.target_seconds`` (``timing``: ``time_sample``'s keyword arguments).

    Raises:
        SizingError: the config does not size by time, or ``time_sample``'s errors.
    """
    target = config.batching.target_seconds
    if target is None:
        raise SizingError("batching.target_seconds is not set: batches are sized by max_items")
    measured = time_sample(config, sample, **timing)
    chosen = choose_max_items(measured.seconds_per_item, target, config.batching.max_items)
    return SizingResult(target_seconds=target, max_items=chosen, timing=measured)


def plan_fields(batching: BatchingSpec, result: SizingResult | None = None) -> dict[str, Any]:
    """The ``batching`` section of ``plan.json`` for batches cut by ``batching``.

    Args:
        batching: the config's batching (``result`` given: before sizing).
        result: the size chosen by time, if the config sizes by time.
    """
    fields: dict[str, Any] = {
        "max_items": batching.max_items,
        "max_bytes": batching.max_bytes,
        "weight_column": batching.weight_column,
    }
    if batching.target_seconds is None:  # the plan as before target_seconds existed
        return fields
    fields["target_seconds"] = batching.target_seconds
    if result is None:
        return fields
    limit = batching.max_items if batching.max_items < MAX_ITEMS_LIMIT else None
    return fields | {
        "max_items": result.max_items,
        "max_items_limit": limit,
        "seconds_per_item": result.seconds_per_item,
        "sampled_items": result.timing.sampled_items,
        "failed_items": result.timing.failed_items,
    }


def recorded_batching(
    plan: dict[str, Any] | None, config: RunConfig, listing_sha256: str
) -> tuple[BatchingSpec, dict[str, Any]] | None:
    """The time-derived batching an earlier plan recorded, if it applies now: its
    ``config_sha256`` is the config's and its ``input.listing_sha256`` the input's.

    Args:
        plan: an earlier ``plan.json`` (or ``sizing_record``), or None.
        config: the run config now.
        listing_sha256: the input's fingerprint now (``fingerprint.listing_sha256``).

    Returns:
        The batching to cut by and the plan's ``batching`` section, as recorded; None when
        there is no such plan or it was made for another config or input.
    """
    if not isinstance(plan, dict) or plan.get("config_sha256") != config.sha256:
        return None
    source, batching = plan.get("input"), plan.get("batching")
    if not isinstance(source, dict) or source.get("listing_sha256") != listing_sha256:
        return None
    if not isinstance(batching, dict) or "seconds_per_item" not in batching:
        return None
    size = batching.get("max_items")
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        return None
    if batching.get("target_seconds") != config.batching.target_seconds:
        return None
    return replace(config.batching, max_items=size), dict(batching)


def sizing_record(plan: dict[str, Any]) -> dict[str, Any]:
    """What ``recorded_batching`` reads of a plan: to keep beside the batch folder, which
    Snakemake removes (with its ``plan.json``) before it runs the partition again."""
    return {
        "config_sha256": plan["config_sha256"],
        "input": {"listing_sha256": plan["input"]["listing_sha256"]},
        "batching": dict(plan["batching"]),
    }


def batching_for(
    config: RunConfig,
    sample: pl.DataFrame,
    *,
    listing_sha256: str,
    previous_plan: dict[str, Any] | None = None,
) -> tuple[BatchingSpec, dict[str, Any]]:
    """The batching the partition cuts by, and the ``batching`` section of its plan.

    Without ``target_seconds``: the config's, untimed. With it: the size ``previous_plan``
    recorded, if it was made for this config and input (``recorded_batching``); else the
    job is timed on ``sample`` (``size_by_time``).

    Args:
        config: the run config.
        sample: the input's items, first rows first (the whole frame will do: at most
            ``SAMPLE_ITEMS`` rows are used).
        listing_sha256: the input's fingerprint (``fingerprint.listing_sha256``).
        previous_plan: the run's earlier plan (or its ``sizing_record``), if any.

    Raises:
        SizingError: the job failed on every item of the sample.
        JobLoadError: the job cannot be imported.
    """
    spec = config.batching
    if spec.target_seconds is None:
        return spec, plan_fields(spec)
    recorded = recorded_batching(previous_plan, config, listing_sha256)
    if recorded is not None:
        logger.info(
            "batches of %d items, as the earlier plan of this config and input recorded "
            "(target %g s)", recorded[0].max_items, spec.target_seconds,
        )  # fmt: skip
        return recorded
    result = size_by_time(config, sample.head(SAMPLE_ITEMS))
    sized = replace(spec, max_items=result.max_items)
    seconds = result.max_items * result.seconds_per_item
    logger.info(
        "batches of %d items: the job took %.3g s per item on %d of the input's first items "
        "(target %g s a batch, expected %.3g s)",
        result.max_items, result.seconds_per_item, result.items_timed,
        spec.target_seconds, seconds,
    )  # fmt: skip
    warning = overhead_warning(seconds, overhead_here())
    if warning:
        logger.warning(warning)
    return sized, plan_fields(spec, result)


def overhead_here() -> float:
    """The overhead per batch job where this process runs: Slurm's inside a Slurm job."""
    return SLURM_OVERHEAD_SECONDS if os.environ.get("SLURM_JOB_ID") else LOCAL_OVERHEAD_SECONDS


def overhead_warning(seconds_per_batch: float, overhead_seconds: float) -> str | None:
    """A warning line when a batch's fixed overhead is more than
    ``OVERHEAD_WARNING_FRACTION`` of its expected time, else None.

    >>> overhead_warning(600, 5) is None
    True
    >>> overhead_warning(2, 0.5).startswith("overhead per batch (0.5 s) is 25%")
    True
    """
    if overhead_seconds <= OVERHEAD_WARNING_FRACTION * seconds_per_batch:
        return None
    share = (
        share_of_batch(overhead_seconds / seconds_per_batch)
        if seconds_per_batch > 0
        else "more than"
    )
    enough = math.ceil(overhead_seconds / OVERHEAD_WARNING_FRACTION)
    return (
        f"overhead per batch ({overhead_seconds:g} s) is {share} a batch's expected "
        f"{seconds_per_batch:.3g} s of work (more than {OVERHEAD_WARNING_FRACTION:.0%}): make "
        f"batches of at least {enough} s, with batching.target_seconds or a larger "
        "batching.max_items (docs/benchmarks.md recommends a minute locally, ten on Slurm)"
    )


def share_of_batch(fraction: float) -> str:
    """``25% of`` (a batch), or ``361x`` for an overhead that dwarfs it.

    >>> share_of_batch(0.254), share_of_batch(361.02)
    ('25% of', '361x')
    """
    return f"{fraction:.0%} of" if fraction < 10 else f"{fraction:.3g}x"


def expected_batch_seconds(plan: dict[str, Any]) -> float | None:
    """A plan's expected seconds per batch (its items spread evenly over its batches), if it
    recorded a time per item (sized by time); None otherwise."""
    per_item = plan.get("batching", {}).get("seconds_per_item")
    if not isinstance(per_item, int | float) or not plan.get("n_batches"):
        return None
    return float(per_item) * int(plan["items"]) / int(plan["n_batches"])


@dataclass(frozen=True)
class PlanPreview:
    """What ``orchestrator plan`` shows: the batches a run will have and their overhead.

    Attributes:
        run_id: the run.
        source: ``config`` (estimated before the partition) or ``plan.json`` (recorded).
        items: items in the input; None: not counted.
        items_basis: where ``items`` came from, or why it is missing.
        max_items: items per batch; None: unknown (sized by time, not timed here).
        size_basis: where ``max_items`` came from.
        batches: batches; None without ``items`` or ``max_items``.
        levels: nodes per level of the merge tree (batches first, the root last).
        fan_in: ``merge.fan_in``.
        seconds_per_batch: expected seconds of work per batch; None: unknown.
        seconds_basis: where ``seconds_per_batch`` came from, or why it is missing.
        overhead_seconds: fixed cost per batch job.
        overhead_basis: where ``overhead_seconds`` came from.
        warning: ``overhead_warning``'s line, if any.
        notes: what else to know about the figures.
    """

    run_id: str
    source: str
    items: int | None
    items_basis: str
    max_items: int | None
    size_basis: str
    batches: int | None
    levels: list[int] | None
    fan_in: int
    seconds_per_batch: float | None
    seconds_basis: str
    overhead_seconds: float
    overhead_basis: str
    warning: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def overhead_fraction(self) -> float | None:
        """Overhead / expected seconds per batch; None if those are unknown or zero."""
        if not self.seconds_per_batch:
            return None
        return self.overhead_seconds / self.seconds_per_batch

    def to_dict(self) -> dict[str, Any]:
        """The preview as JSON-ready data (``--json``)."""
        return asdict(self) | {"overhead_fraction": self.overhead_fraction}


def preview_plan(
    config: RunConfig,
    *,
    source: str,
    items: int | None,
    items_basis: str,
    max_items: int | None,
    size_basis: str,
    seconds_per_item: float | None,
    seconds_basis: str,
    overhead_seconds: float,
    overhead_basis: str,
    batches: int | None = None,
    batch_seconds: float | None = None,
    notes: list[str] | None = None,
) -> PlanPreview:
    """The preview of a run's batches from what is known of them (pure).

    Args:
        config: the run config (``merge.fan_in``, ``run_id``).
        source: ``config`` or ``plan.json``.
        items: items in the input (None: not counted), with ``items_basis``.
        max_items: items per batch (None: unknown), with ``size_basis``.
        seconds_per_item: wall seconds one item adds to a batch (None: unknown).
        seconds_basis: where ``seconds_per_item`` (or ``batch_seconds``) came from.
        overhead_seconds: fixed cost per batch job, with ``overhead_basis``.
        batches: the plan's batch count; default ``ceil(items / max_items)``.
        batch_seconds: expected seconds per batch, given (``--batch-seconds``); default
            ``seconds_per_item`` times the mean items per batch.
        notes: extra notes.
    """
    notes = list(notes or [])
    if batches is None and items is not None and max_items is not None:
        batches = max(1, math.ceil(items / max_items))
        if config.batching.max_bytes is not None:
            notes.append("batching.max_bytes may cut more batches than max_items alone")
    levels = None
    if batches is not None:
        from orchestrator_ext.layout import level_sizes

        levels = level_sizes(batches, config.merge.fan_in)
    seconds = batch_seconds
    if seconds is None and seconds_per_item is not None:
        if items is not None and batches:
            seconds = seconds_per_item * items / batches
        elif max_items is not None:
            seconds = seconds_per_item * max_items
    warning = overhead_warning(seconds, overhead_seconds) if seconds is not None else None
    return PlanPreview(
        run_id=config.run_id, source=source, items=items, items_basis=items_basis,
        max_items=max_items, size_basis=size_basis, batches=batches, levels=levels,
        fan_in=config.merge.fan_in, seconds_per_batch=seconds, seconds_basis=seconds_basis,
        overhead_seconds=overhead_seconds, overhead_basis=overhead_basis, warning=warning,
        notes=notes,
    )  # fmt: skip


def render_plan_preview(preview: PlanPreview) -> RenderableType:
    """A Rich table of the preview, then its warning and notes."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    def counted(value: int | None) -> str:
        return "?" if value is None else f"{value:,}"

    table = Table(
        # The run id is data: as Text, never read as Rich markup.
        title=Text(f"run {preview.run_id}: batches (from the {preview.source})",
                   style="table.title"),
        title_justify="left",
    )  # fmt: skip
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_column("from")
    seconds = preview.seconds_per_batch
    fraction = preview.overhead_fraction
    share = f" ({share_of_batch(fraction)} a batch)" if fraction is not None else ""
    levels = " / ".join(f"{n:,}" for n in preview.levels) if preview.levels else "?"
    rows = [
        ("items", counted(preview.items), preview.items_basis),
        ("items per batch", counted(preview.max_items), preview.size_basis),
        ("batches", counted(preview.batches), ""),
        ("merge levels", levels, f"fan-in {preview.fan_in}"),
        ("seconds per batch", "?" if seconds is None else f"{seconds:.3g}", preview.seconds_basis),
        ("overhead per batch", f"{preview.overhead_seconds:g} s{share}", preview.overhead_basis),
    ]
    for what, value, basis in rows:
        table.add_row(what, Text(value), Text(basis, style="dim"))
    lines: list[RenderableType] = [table]
    if preview.warning:
        lines.append(Text(f"warning: {preview.warning}", style="bold yellow"))
    lines += [Text(note, style="dim") for note in preview.notes]
    return Group(*lines)
