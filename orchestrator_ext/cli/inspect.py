"""Commands that read a run: ``status``, ``errors``, ``audit``, ``report`` and ``cost``.

Each resolves the run (``run_config``), asks the package for the data and hands it to the
renderer beside that data; ``--json`` prints the data instead. None of them writes to the
run, so all are safe while Snakemake runs.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import TYPE_CHECKING, Any

from orchestrator_ext.cli.run_config import load_cli_config, open_run_store
from orchestrator_ext.config import RunConfig
from orchestrator_ext.errors import OrchestratorError
from orchestrator_ext.location import is_remote

if TYPE_CHECKING:
    from orchestrator_ext.cost import Workload


def cmd_status(args: argparse.Namespace) -> int:
    """Progress, throughput, ETA, failures by category, the slowest running batches."""
    from rich.console import Console

    from orchestrator_ext.status import RunStatus, build_status, render_status, watch_status

    config = load_cli_config(args)
    store = open_run_store(config)

    def snapshot(source: Any) -> RunStatus:
        return build_status(
            config.run_id, source.tasks(), resources=config.resources, slowest=args.slowest
        )

    try:
        if args.watch:
            watch_status(store, snapshot, Console(), args.interval, args.count, args.json)
            return 0
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

    config = load_cli_config(args)
    store = open_run_store(config)
    try:
        task_id = resolve_task(args.task, [t.task_id for t in store.tasks()]) if args.task else None
        rows = audit_rows(store.transitions(task_id))
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
