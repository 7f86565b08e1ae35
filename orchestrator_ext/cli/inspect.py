"""Commands that read a run: ``status``, ``errors``, ``audit``, ``report``, ``cost`` and
``plan``.

Each resolves the run (``run_config``), asks the package for the data and hands it to the
renderer beside that data; ``--json`` prints the data instead. None of them writes to the
run, so all are safe while Snakemake runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from orchestrator_ext.cli.run_config import load_cli_config, open_run_store
from orchestrator_ext.config import RunConfig
from orchestrator_ext.errors import OrchestratorError
from orchestrator_ext.location import is_remote

if TYPE_CHECKING:
    import polars as pl

    from orchestrator_ext.cost import Workload
    from orchestrator_ext.sizing import PlanPreview


def cmd_status(args: argparse.Namespace) -> int:
    """Progress, throughput, ETA, failures by category, the slowest running batches."""
    from rich.console import Console

    from orchestrator_ext.coordinator import live_holder
    from orchestrator_ext.status import (
        RunStatus,
        build_status,
        render_status,
        watch_status,
        with_coordinator,
    )

    config = load_cli_config(args)
    store = open_run_store(config)

    def snapshot(source: Any) -> RunStatus:
        # The lease before the tasks: a run that finishes in between shows as finished,
        # not as stopped.
        held = live_holder(config)
        status = build_status(
            config.run_id, source.tasks(), resources=config.resources, slowest=args.slowest
        )
        return with_coordinator(status, held)

    try:
        if args.watch:
            status = watch_status(store, snapshot, Console(), args.interval, args.count, args.json)
            return 1 if status.stopped else 0
        status = snapshot(store)
    finally:
        store.close()
    if args.json:
        print(json.dumps(status.to_dict(), indent=2, sort_keys=True))
        return 0
    Console().print(render_status(status))
    return 0


def cmd_errors(args: argparse.Namespace) -> int:
    """Failed and dead tasks from the state store, and dead-lettered items."""
    from orchestrator_ext.history import UnknownTask, batch_task, list_failures, read_dead_letters
    from orchestrator_ext.layout import RunLayout

    config = load_cli_config(args)
    store = open_run_store(config)
    try:
        tasks = store.tasks()
    finally:
        store.close()
    task_id = batch_task(args.batch) if args.batch is not None else None
    if task_id is not None and task_id not in {t.task_id for t in tasks}:
        raise UnknownTask(f"--batch {args.batch}: the run has no task {task_id}")
    failures = list_failures(tasks, RunLayout(config.run_dir), args.category, task_id)
    dead = read_dead_letters(config.run_dir, args.category, task_id, args.limit or None)
    if args.json:
        report = {
            "run_id": config.run_id,
            "filters": {"category": args.category, "batch": task_id},
            "failed_tasks": [f.to_dict() for f in failures],
            "dead_letters": dead.to_dict(),
        }
        print(json.dumps(report, indent=2, sort_keys=True, default=str))
        return 0
    from rich.console import Console

    from orchestrator_ext.history_view import render_dead_letters, render_failures

    console = Console()
    console.print(render_failures(failures))
    console.print(render_dead_letters(dead))
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    """Every state transition of the run (or of one task), oldest first."""
    from orchestrator_ext.history import audit_rows, resolve_task
    from orchestrator_ext.layout import RunLayout

    config = load_cli_config(args)
    store = open_run_store(config)
    try:
        task_id = resolve_task(args.task, [t.task_id for t in store.tasks()]) if args.task else None
        rows = audit_rows(store.transitions(task_id), RunLayout(config.run_dir))
    finally:
        store.close()
    if args.json:
        print(json.dumps({"run_id": config.run_id, "task": task_id, "transitions": rows},
                         indent=2))  # fmt: skip
        return 0
    from orchestrator_ext.history_view import render_audit

    for line in render_audit(config.run_id, rows):
        print(line)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Write the run's HTML dashboard."""
    from orchestrator_ext.report import PLOT_IDS, write_report_html
    from orchestrator_ext.report.write import render_report_written

    config = load_cli_config(args)
    output = args.output or (
        f"{config.run_id}-report.html"
        if is_remote(config.run_dir)
        else f"{config.run_dir}/report.html"
    )
    store = open_run_store(config)
    try:
        path = write_report_html(config, output, store=store)
    finally:
        store.close()
    size = os.path.getsize(path)
    if args.json:
        print(json.dumps({"report": str(path), "bytes": size, "plots": list(PLOT_IDS)}))
    else:
        print(render_report_written(str(path), size))
    return 0


def cmd_cost(args: argparse.Namespace) -> int:
    """Estimated S3 requests, DynamoDB units, core-hours and their cost."""
    from orchestrator_ext import cost

    config = load_cli_config(args)
    prices = cost.load_prices(args.prices)
    workload, notes = _cost_workload(config, args)
    estimate = cost.estimate_cost(config, workload, prices, args.cpus_per_job)
    estimate.notes.extend(notes)
    if args.json:
        print(json.dumps(estimate.to_dict(), indent=2, sort_keys=True))
        return 0
    from rich.console import Console

    Console().print(cost.render_cost(estimate))
    return 0


def _cost_workload(config: RunConfig, args: argparse.Namespace) -> tuple[Workload, list[str]]:
    """The workload ``--source`` names (``auto``: the store, else the plan, else the config),
    and why a better source was passed over."""
    from orchestrator_ext import cost
    from orchestrator_ext.layout import RunLayout
    from orchestrator_ext.report import read_json_at

    plan_path = RunLayout(config.run_dir).plan
    workload, reasons = None, []
    if args.source in ("auto", "store"):
        try:
            store = open_run_store(config)
            try:
                tasks, transitions = store.tasks(), store.transitions()
            finally:
                store.close()
            plan = read_json_at(plan_path)
            workload = cost.build_workload_from_store(config, tasks, transitions, plan)
        except OrchestratorError as exc:
            if args.source == "store":
                raise
            reasons.append(f"no state store figures ({exc})")
    if workload is None and args.source in ("auto", "plan"):
        plan = read_json_at(plan_path)
        if plan is not None:
            workload = cost.build_workload_from_plan(config, plan, args.batch_seconds)
        elif args.source == "plan":
            raise cost.CostError(f"no plan at {plan_path}: run the partition step")
    if workload is None:
        workload = cost.build_workload_from_config(config, args.items, args.batch_seconds)
    return workload, reasons


def cmd_plan(args: argparse.Namespace) -> int:
    """Before a run: items, batch size, batches, merge levels, time and overhead per batch."""
    from orchestrator_ext import sizing

    config = load_cli_config(args)
    if args.overhead_seconds is not None:
        overhead = (args.overhead_seconds, "--overhead-seconds")
    else:
        overhead = (sizing.OVERHEAD_SECONDS[args.executor],
                    f"{args.executor} executor (docs/benchmarks.md)")  # fmt: skip
    preview = _plan_preview(config, args, overhead)
    if args.json:
        print(json.dumps(preview.to_dict(), indent=2, sort_keys=True))
        return 0
    from rich.console import Console

    Console().print(sizing.render_plan_preview(preview))
    return 0


def _plan_preview(
    config: RunConfig, args: argparse.Namespace, overhead: tuple[float, str]
) -> PlanPreview:
    """The preview from the run's ``plan.json`` if it was made from this config, else from
    the config, the input's count and head, and the job timed on it."""
    from orchestrator_ext.layout import RunLayout
    from orchestrator_ext.report import read_json_at

    plan_path = RunLayout(config.run_dir).plan
    plan = read_json_at(plan_path)
    notes: list[str] = []
    if plan is not None and plan.get("config_sha256") != config.sha256:
        notes.append(f"{plan_path} was made from another config: estimated from this one")
        plan = None
    if plan is not None:
        return _preview_from_plan(config, args, overhead, plan, plan_path, notes)
    return _preview_from_config(config, args, overhead, notes)


def _preview_from_plan(
    config: RunConfig,
    args: argparse.Namespace,
    overhead: tuple[float, str],
    plan: dict[str, Any],
    plan_path: str,
    notes: list[str],
) -> PlanPreview:
    """What ``plan.json`` recorded; the job is timed only if the plan has no time per item
    (sized by ``max_items``) and ``--batch-seconds`` is not given.

    Raises:
        CorruptFile: the plan has no item or batch count.
    """
    from orchestrator_ext import sizing
    from orchestrator_ext.errors import CorruptFile

    try:
        items, batches = int(plan["items"]), int(plan["n_batches"])
    except (KeyError, TypeError, ValueError):
        raise CorruptFile(
            f"{plan_path} is not a plan the partition wrote (no items or n_batches); "
            "delete it and rerun to regenerate it"
        ) from None
    batching = plan.get("batching")
    batching = batching if isinstance(batching, dict) else {}
    target = batching.get("target_seconds")
    size_basis = f"timed (target {target:g} s)" if target else "batching.max_items"
    seconds_per_item = batching.get("seconds_per_item")
    if args.batch_seconds:
        seconds_basis = "--batch-seconds"
    elif seconds_per_item is not None:
        seconds_basis = f"timed on {batching.get('sampled_items', 0):,} items"
    else:
        seconds_per_item, seconds_basis = _timed_seconds_per_item(config, notes)
    return sizing.preview_plan(
        config, source="plan.json", items=items, items_basis="plan.json",
        max_items=batching.get("max_items"), size_basis=f"{size_basis}, plan.json",
        batches=batches, seconds_per_item=seconds_per_item, seconds_basis=seconds_basis,
        batch_seconds=args.batch_seconds, overhead_seconds=overhead[0],
        overhead_basis=overhead[1], notes=notes,
    )  # fmt: skip


def _preview_from_config(
    config: RunConfig, args: argparse.Namespace, overhead: tuple[float, str], notes: list[str]
) -> PlanPreview:
    """The estimate before the partition: the input counted (or ``--items``), the batch
    size from ``max_items`` or timed for ``target_seconds``, the job timed unless
    ``--batch-seconds`` is given."""
    from orchestrator_ext import sizing

    if args.items is not None:
        items, items_basis = args.items, "--items"
    else:
        items, items_basis = _count_items(config)
    target = config.batching.target_seconds
    max_items: int | None = config.batching.max_items
    size_basis = "batching.max_items"
    seconds_per_item: float | None = None
    seconds_basis = "--batch-seconds"
    if target is not None:
        sample = _read_sample(config)
        if sample is None:
            max_items, size_basis = None, f"timed at the partition (target {target:g} s)"
            notes.append("the input is in S3: the job is not timed here")
            seconds_basis = seconds_basis if args.batch_seconds else "not timed"
        else:
            with _stdout_to_stderr():
                result = sizing.size_by_time(config, sample)
            max_items, seconds_per_item = result.max_items, result.seconds_per_item
            size_basis = f"timed (target {target:g} s)"
            if not args.batch_seconds:
                seconds_basis = f"timed on {result.timing.sampled_items:,} items"
            notes.append("the partition times the job again: its batch size may differ a little")
    elif not args.batch_seconds:
        seconds_per_item, seconds_basis = _timed_seconds_per_item(config, notes)
    return sizing.preview_plan(
        config, source="config", items=items, items_basis=items_basis, max_items=max_items,
        size_basis=size_basis, seconds_per_item=seconds_per_item, seconds_basis=seconds_basis,
        batch_seconds=args.batch_seconds, overhead_seconds=overhead[0],
        overhead_basis=overhead[1], notes=notes,
    )  # fmt: skip


def _timed_seconds_per_item(config: RunConfig, notes: list[str]) -> tuple[float | None, str]:
    """The job's seconds per item, timed on the head of the first input file; (None, why)
    for an input in S3."""
    from orchestrator_ext import sizing

    sample = _read_sample(config)
    if sample is None:
        notes.append("the input is in S3: the job is not timed here (pass --batch-seconds S)")
        return None, "not timed"
    with _stdout_to_stderr():
        timing = sizing.time_sample(config, sample)
    return timing.seconds_per_item, f"timed on {timing.sampled_items:,} items"


def _count_items(config: RunConfig) -> tuple[int | None, str]:
    """(items, how they were counted) of a local input, without reading its rows: Parquet
    row counts from the file footers, CSV and JSONL by a lazy scan (quoted line breaks
    counted right). (None, why) for an input in S3.

    Raises:
        InputError: no file matches, or one cannot be read as its format.
    """
    import polars as pl

    from orchestrator_ext.errors import InputError
    from orchestrator_ext.items import list_input_files

    spec = config.input
    if is_remote(spec.uri):
        return None, "not counted: the input is in S3 (pass --items N)"
    files = list_input_files(spec.uri)
    items = 0
    for path in files:
        try:
            if spec.format == "parquet":
                import pyarrow.parquet as pq

                items += pq.read_metadata(path).num_rows
            else:
                items += int(
                    _scan(spec.format, path, spec.id_column).select(pl.len()).collect().item()
                )
        except (pl.exceptions.PolarsError, OSError, ValueError) as exc:
            detail = " ".join(str(exc).split())[:300]
            raise InputError(
                f"cannot count the items of {path} as {spec.format}: {detail}"
            ) from None
    noun = "file" if len(files) == 1 else "files"
    return items, f"counted in {len(files):,} {spec.format} {noun}"


def _read_sample(config: RunConfig) -> pl.DataFrame | None:
    """The head of the first input file (``sizing.SAMPLE_ITEMS`` rows), ids typed as the
    partition types them; None for an input in S3.

    Raises:
        InputError: no file matches, or the file cannot be read as its format.
    """
    import polars as pl

    from orchestrator_ext.errors import InputError
    from orchestrator_ext.items import apply_id_type, list_input_files
    from orchestrator_ext.sizing import SAMPLE_ITEMS

    spec = config.input
    if is_remote(spec.uri):
        return None
    first = list_input_files(spec.uri)[0]
    try:
        frame = _scan(spec.format, first, spec.id_column).head(SAMPLE_ITEMS).collect()
    except (pl.exceptions.PolarsError, OSError, ValueError) as exc:
        detail = " ".join(str(exc).split())[:300]
        raise InputError(f"cannot read {first} as {spec.format}: {detail}") from None
    return apply_id_type(frame, spec.id_column, spec.id_type, first)


def _scan(fmt: str, path: str, id_column: str) -> pl.LazyFrame:
    """A lazy frame of one local input file; CSV ids as text, as the partition reads them."""
    import polars as pl

    if fmt == "parquet":
        return pl.scan_parquet(path)
    if fmt == "csv":
        return pl.scan_csv(path, schema_overrides={id_column: pl.String})
    return pl.scan_ndjson(path)


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """What the job prints while it is timed goes to stderr: stdout holds the report (and
    its JSON)."""
    with contextlib.redirect_stdout(sys.stderr):
        yield
