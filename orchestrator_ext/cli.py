"""The ``orchestrator`` command: watch and operate a run.

Every subcommand reads the run's config: from the run's folder (``orchestrator status
results/my-run``: the ``config.json`` the run wrote), or from ``--configfile`` files with
``--config KEY=VALUE`` overrides resolved as Snakemake resolves them (default
``config/config.yaml``, the shipped example) and prints for people by default or
JSON with ``--json``. The package's own errors print one line and exit 2; nothing here
prints a traceback for a user error.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

import yaml

from orchestrator_ext import __version__
from orchestrator_ext.config import RunConfig, load_config, read_config_file
from orchestrator_ext.errors import OrchestratorError

EXIT_USER_ERROR = 2
EXIT_VERIFY_FAILED = 1
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports


# Snakemake's --config grammar (snakemake.cli.parse_config), restated because importing
# snakemake.cli costs 1.5 s; tests/test_cli.py checks both agree on every form.
_CONFIG_KEY = re.compile(r"[a-zA-Z_][\w-]*\w$")


def _parse_value(text: str) -> Any:
    if text == "":
        return None
    for parse in (int, float, _parse_bool, _parse_yaml):
        try:
            value = parse(text)
        except Exception:  # noqa: S112 - each parser is tried in turn, as Snakemake does
            continue
        if not callable(value):
            return value
    return text


def _parse_bool(text: str) -> bool:
    if text in ("True", "False"):
        return text == "True"
    raise ValueError(text)


def _parse_yaml(text: str) -> Any:
    # BaseLoader, as Snakemake: nested scalars stay strings ({n: 5} gives {"n": "5"}).
    return yaml.load(text, Loader=yaml.BaseLoader)  # noqa: S506 - no object construction


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``--config`` entries, parsed exactly as ``snakemake --config`` parses them.

    ``["run_id=x", "batching={max_items: 5}"]`` -> ``{"run_id": "x", "batching":
    {"max_items": "5"}}``. Keys are top-level names; nested keys are given as a YAML
    mapping value. Later entries update earlier ones recursively.

    Raises:
        OrchestratorError: an entry is not ``KEY=VALUE`` or its key is not a name.
    """
    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise OrchestratorError(f"--config expects KEY=VALUE, got {pair!r}")
        if not _CONFIG_KEY.match(key):
            raise OrchestratorError(
                f"--config {pair!r}: the key must be a name (nested keys go in a YAML value, "
                "e.g. 'batching={max_items: 500}'), as with snakemake"
            )
        _merge(overrides, {key: _parse_value(value.strip("'\""))})
    return overrides


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


EXAMPLE_CONFIG = "config/config.yaml"


def load_cli_config(args: argparse.Namespace) -> RunConfig:
    """The run named on the command line, as Snakemake resolves it.

    A run folder (``RUN_DIR``, local or ``s3://``) is read from its ``config.json``, the
    config its coordinator used. Otherwise the ``--configfile`` files are layered in order
    and ``--config`` over them; with neither, the shipped example (as for ``snakemake``).
    """
    overrides = parse_overrides(args.config or [])
    if getattr(args, "run", None):
        if args.configfile:
            raise OrchestratorError("name the run either by its folder or by --configfile")
        from orchestrator_ext.config import read_resolved_config

        run = read_resolved_config(args.run)
        return load_config(_merge(run.raw, overrides)) if overrides else run
    raw: dict[str, Any] = {}
    for path in args.configfile or [EXAMPLE_CONFIG]:
        _merge(raw, read_config_file(path))
    return load_config(_merge(raw, overrides))


def _open_store(config: RunConfig):  # type: ignore[no-untyped-def]
    from orchestrator_ext.state import open_state_store
    from orchestrator_ext.state.sqlite import SqliteStateStore

    if config.state.backend == "sqlite":
        return SqliteStateStore(f"{config.run_dir}/state.sqlite", config.run_id, create=False)
    return open_state_store(config)


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def cmd_status(args: argparse.Namespace) -> int:
    """Progress, throughput, ETA, failures by category, the slowest running batches."""
    from rich.console import Console

    from orchestrator_ext.status import RunStatus, build_status, render_status, watch_status

    config = load_cli_config(args)
    store = _open_store(config)

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


def _plain(value: Any) -> Any:
    """A Rich ``Text`` of ``value``, shown as is (never read as markup); None is blank."""
    from rich.text import Text  # here, not at the top: rich is slow to import

    return Text("" if value is None else str(value))


def cmd_errors(args: argparse.Namespace) -> int:
    """Failed and dead tasks from the state store, and dead-lettered items."""
    from rich.console import Console
    from rich.table import Table

    from orchestrator_ext.history import (
        UnknownTask,
        batch_task,
        list_failures,
        read_dead_letters,
    )
    from orchestrator_ext.layout import RunLayout

    config = load_cli_config(args)
    store = _open_store(config)
    try:
        tasks = store.tasks()
    finally:
        store.close()
    task_id = batch_task(args.batch) if args.batch is not None else None
    if task_id is not None and task_id not in {t.task_id for t in tasks}:
        raise UnknownTask(f"--batch {args.batch}: the run has no task {task_id}")
    failures = list_failures(tasks, RunLayout(config.run_dir), args.category, task_id)
    remote = config.run_dir.startswith("s3://")
    dead = read_dead_letters(config.run_dir, args.category, task_id, args.limit or None)
    report = {
        "run_id": config.run_id,
        "filters": {"category": args.category, "batch": task_id},
        "failed_tasks": [f.to_dict() for f in failures],
        "dead_letters": dead.to_dict(),
        "dead_letters_read": not remote,
    }
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True, default=str))
        return 0
    console = Console()
    if failures:
        table = Table(title=f"failed tasks ({len(failures)})", title_justify="left")
        for column in ("task", "status", "category", "error", "attempt", "slurm job", "log"):
            table.add_column(column, overflow="fold")
        for f in failures:
            # Text, not str: a message holding "[/bold]" is data, not Rich markup (which
            # would raise MarkupError or restyle the table).
            cells = (
                f.task_id, f.status, f.category, f"{f.error_type or ''}: {f.message or ''}",
                str(f.attempt), f.slurm_job_id or "-", f.log or "-",
            )  # fmt: skip
            table.add_row(*(_plain(cell) for cell in cells))
        console.print(table)
    else:
        console.print("no failed tasks")
    if remote:
        console.print("dead-lettered items: the run is in S3; their counts are in the manifest")
    elif dead.total:
        table = Table(
            title=f"dead-lettered items: showing {len(dead.items)} of {dead.total}",
            title_justify="left",
        )
        for column in ("batch", "id", "category", "attempt", "message"):
            table.add_column(column, overflow="fold")
        for item in dead.items:  # the message starts with the error type
            row = (item.batch_id, item.id, item.category, item.attempt, item.message)
            table.add_row(*(_plain(cell) for cell in row))
        console.print(table)
    else:
        console.print("no dead-lettered items")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    """Every state transition of the run (or of one task), oldest first."""
    from orchestrator_ext.history import audit_rows, resolve_task

    config = load_cli_config(args)
    store = _open_store(config)
    try:
        task_id = resolve_task(args.task, [t.task_id for t in store.tasks()]) if args.task else None
        rows = audit_rows(store.transitions(task_id))
    finally:
        store.close()
    if args.json:
        print(json.dumps({"run_id": config.run_id, "task": task_id, "transitions": rows},
                         indent=2))  # fmt: skip
        return 0
    # One line per transition (not a table): easy to grep, never wrapped.
    print(f"run {config.run_id}: {len(rows)} transitions")
    for row in rows:
        detail = f"  {row['detail']}" if row["detail"] else ""
        print(
            f"{row['at']}  {row['task_id']:<22} {row['from'] or '-':>9} -> {row['to']:<9} "
            f"attempt {row['attempt']}  host {row['host'] or '-'}  "
            f"slurm {row['slurm_job_id'] or '-'}{detail}"
        )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Write the run's HTML dashboard."""
    import os

    from orchestrator_ext.report import PLOT_IDS, write_report_html

    config = load_cli_config(args)
    output = args.output or (
        f"{config.run_id}-report.html"
        if config.run_dir.startswith("s3://")
        else f"{config.run_dir}/report.html"
    )
    store = _open_store(config)
    try:
        path = write_report_html(config, output, store=store)
    finally:
        store.close()
    size = os.path.getsize(path)
    if args.json:
        print(json.dumps({"report": str(path), "bytes": size, "plots": list(PLOT_IDS)}))
    else:
        print(f"wrote {path} ({size / 1e6:.1f} MB): open it in a browser; it needs no network")
    return 0


def cmd_cost(args: argparse.Namespace) -> int:
    """Estimated S3 requests, DynamoDB units, core-hours and their cost."""
    from orchestrator_ext import cost
    from orchestrator_ext.layout import RunLayout
    from orchestrator_ext.report import read_json_at

    config = load_cli_config(args)
    prices = cost.load_prices(args.prices)
    workload, reasons = None, []
    if args.source in ("auto", "store"):
        try:
            store = _open_store(config)
            try:
                tasks, transitions = store.tasks(), store.transitions()
            finally:
                store.close()
            plan = read_json_at(RunLayout(config.run_dir).plan)
            workload = cost.build_workload_from_store(config, tasks, transitions, plan)
        except OrchestratorError as exc:
            if args.source == "store":
                raise
            reasons.append(f"no state store figures ({exc})")
    if workload is None and args.source in ("auto", "plan"):
        plan = read_json_at(RunLayout(config.run_dir).plan)
        if plan is not None:
            workload = cost.build_workload_from_plan(config, plan, args.batch_seconds)
        elif args.source == "plan":
            raise cost.CostError(
                f"no plan at {RunLayout(config.run_dir).plan}: run the partition step"
            )
    if workload is None:
        workload = cost.build_workload_from_config(config, args.items, args.batch_seconds)
    estimate = cost.estimate_cost(config, workload, prices, args.cpus_per_job)
    estimate.notes.extend(reasons)
    if args.json:
        print(json.dumps(estimate.to_dict(), indent=2, sort_keys=True))
        return 0
    from rich.console import Console

    Console().print(cost.render_cost(estimate))
    return 0


def cmd_iam_policy(args: argparse.Namespace) -> int:
    """Print a least-privilege IAM policy for the run."""
    from orchestrator_ext.iam import build_policy, placeholders

    config = load_cli_config(args)
    policy = build_policy(
        config, account=args.account, region=args.region, partition=args.partition,
        kms_key_arn=args.kms_key_arn, strict_list=args.strict_list,
    )  # fmt: skip
    print(json.dumps(policy, indent=2))
    left = placeholders(policy)
    if left and not args.json:
        print(f"replace {' and '.join(left)} before use (--account, --region)", file=sys.stderr)
    return 0


def cmd_redrive(args: argparse.Namespace) -> int:
    """Write a new run config over the dead-lettered items of a finished run."""
    from orchestrator_ext.redrive import redrive

    config = load_cli_config(args)
    plan = redrive(config, args.out, args.run_id, args.items_out, args.category)
    if args.json:
        print(json.dumps(plan.to_dict(), indent=2, sort_keys=True))
        return 0
    categories = ", ".join(f"{n} {c}" for c, n in plan.by_category.items())
    print(
        f"wrote {plan.config} for run {plan.run_id}: {plan.items} items ({categories}) in "
        f"{plan.items_file}\nfix the cause, then: snakemake --profile profiles/local "
        f"--configfile {plan.config}"
    )
    return 0


_CATEGORIES = ["transient", "resource", "permanent"]


def _add_operation_commands(sub: Any, with_config: Any) -> None:
    """Register status, errors, audit, report, cost, iam-policy and redrive."""
    raw = argparse.RawDescriptionHelpFormatter

    def add(name: str, help_text: str, description: str) -> argparse.ArgumentParser:
        return with_config(  # type: ignore[no-any-return]
            sub.add_parser(name, help=help_text, description=description, formatter_class=raw)
        )

    status = add(
        "status", "progress, throughput, ETA, failures by category, slowest running batches",
        "Where the run stands, from its state store (SQLite or DynamoDB); safe to run from\n"
        "another terminal while Snakemake runs. Progress counts batches; throughput is\n"
        "measured over the last 10 minutes (or the whole run); ETA = batches left /\n"
        "throughput. A running batch past its wall time is flagged OVERDUE (probably\n"
        "killed). JSON keeps run_id, tasks, by_status and by_kind and adds the rest.",
    )  # fmt: skip
    status.add_argument("--watch", action="store_true",
                        help="refresh in place until the run finished or Ctrl-C "
                        "(with --json: one JSON object per line)")  # fmt: skip
    status.add_argument("--interval", type=_positive_float, default=5.0, metavar="SECONDS",
                        help="seconds between refreshes with --watch (default 5); each refresh "
                        "reads every task row once")  # fmt: skip
    status.add_argument("--count", type=_positive_int, default=None, metavar="N",
                        help="stop --watch after N refreshes (default: no limit)")  # fmt: skip
    status.add_argument("--slowest", type=_non_negative_int, default=5, metavar="N",
                        help="running batches to list, longest first (default 5)")  # fmt: skip
    status.set_defaults(func=cmd_status)

    errors = add(
        "errors", "failed tasks and dead-lettered items, with category and log path",
        "Tasks whose status is FAILED (may be retried) or DEAD (will not be), with category,\n"
        "error type, message, attempt, Slurm job id and log file; then the dead-lettered\n"
        "items read from dead_letter/batch-*.parquet (local runs).",
    )  # fmt: skip
    errors.add_argument("--category", choices=[*_CATEGORIES, "unknown"],
                        help="only failures of this category")  # fmt: skip
    errors.add_argument("--batch", metavar="N", help="only batch N (e.g. 3 or 00003)")
    errors.add_argument("--limit", type=_non_negative_int, default=100, metavar="N",
                        help="dead-lettered items to list (default 100; 0 = all); totals "
                        "always count all")  # fmt: skip
    errors.set_defaults(func=cmd_errors)

    audit = add(
        "audit", "every state transition of the run (append-only log)",
        "The state store's append-only log: task, from, to, attempt, host, Slurm job id,\n"
        "time and detail of every status change, oldest first.",
    )  # fmt: skip
    audit.add_argument("--task", metavar="T",
                       help="only task T (e.g. batch-00003, merge-L1-part-00000, final; "
                       "a bare number means that batch)")  # fmt: skip
    audit.set_defaults(func=cmd_audit)

    report = add(
        "report", "write a self-contained HTML dashboard with plots",
        "One HTML file (plotly.js inline, no network needed) with batch durations,\n"
        "throughput over time, attempts per batch, failures by category, dead letters,\n"
        "the merge tree by status, failing tasks and the manifest summary.",
    )  # fmt: skip
    report.add_argument("-o", "--output", metavar="FILE",
                        help="where to write it (default: {run_dir}/report.html; "
                        "{run_id}-report.html for a run in S3)")  # fmt: skip
    report.set_defaults(func=cmd_report)

    cost_cmd = add(
        "cost", "estimated S3 requests, DynamoDB units, core-hours and cost",
        "Before a run: from the config (item count / batching.max_items) or, once\n"
        "partitioned, from the plan. During and after: from the state store's audit log\n"
        "(every attempt, measured run times). Prices: public list prices (us-east-1)\n"
        "unless --prices names a YAML file, e.g.\n"
        "  currency: EUR\n"
        "  s3: {put_per_1000: 0.005, get_per_1000: 0.0004, storage_gb_month: 0.023}\n"
        "  dynamodb: {write_per_million: 0.625, read_per_million: 0.125}\n"
        "  compute: {core_hour: 0.03}",
    )  # fmt: skip
    cost_cmd.add_argument("--source", choices=["auto", "config", "plan", "store"],
                          default="auto", help="what to estimate from (default auto: "
                          "the state store if it has batches, else the plan, else the "
                          "config)")  # fmt: skip
    cost_cmd.add_argument("--items", type=_positive_int, metavar="N",
                          help="item count when estimating from the config (default: "
                          "counted from local input files)")  # fmt: skip
    cost_cmd.add_argument("--batch-seconds", type=_positive_float, metavar="S",
                          help="expected seconds per job before a run (default: "
                          "resources.runtime, an upper bound)")  # fmt: skip
    cost_cmd.add_argument("--cpus-per-job", type=_positive_int, default=1, metavar="N",
                          help="cores each job holds (default 1)")  # fmt: skip
    cost_cmd.add_argument("--prices", metavar="FILE", help="YAML file of unit prices")
    cost_cmd.set_defaults(func=cmd_cost)

    iam = add(
        "iam-policy", "a least-privilege IAM policy JSON for this run",
        "S3 object actions only under {output_root}/{run_id}/, listing only with that\n"
        "prefix, the input read-only, DynamoDB item actions only on the state table and\n"
        "only for items whose partition key is the run id (dynamodb:LeadingKeys). No\n"
        "statement has a '*' resource. See docs/threat-model.md.",
    )  # fmt: skip
    iam.add_argument("--account", default="ACCOUNT_ID",
                     help="AWS account id of the table (default: placeholder "
                     "ACCOUNT_ID)")  # fmt: skip
    iam.add_argument("--region", help="region of the table (default: state.region, else "
                     "placeholder REGION)")  # fmt: skip
    iam.add_argument("--partition", default="aws", choices=["aws", "aws-cn", "aws-us-gov"],
                     help="AWS partition (default aws)")  # fmt: skip
    iam.add_argument("--kms-key-arn", help="the bucket's KMS key, if it uses SSE-KMS")
    iam.add_argument("--strict-list", action="store_true",
                     help="leave out the prefix-less s3:ListBucket the S3 storage plugin needs "
                     "for HeadBucket (see docs/threat-model.md)")  # fmt: skip
    iam.set_defaults(func=cmd_iam_policy)

    redrive_cmd = add(
        "redrive", "write a new run config over this run's dead-lettered items",
        "Joins the ids in dead_letter/batch-*.parquet with the run's batch files and\n"
        "writes their original rows as the new run's input (Parquet), a config that is\n"
        "this one with run_id and input replaced, and redrive.json in both run folders.\n"
        "The run must have finished (manifest.json present).",
    )  # fmt: skip
    redrive_cmd.add_argument("--out", required=True, metavar="NEW_CONFIG",
                             help="the new run's config file to write")  # fmt: skip
    redrive_cmd.add_argument("--run-id", metavar="NEW",
                             help="the new run's id (default: {run_id}-redrive-N)")  # fmt: skip
    redrive_cmd.add_argument("--items-out", metavar="FILE",
                             help="the new input file (default: {NEW}-items.parquet beside "
                             "NEW_CONFIG)")  # fmt: skip
    redrive_cmd.add_argument("--category", choices=_CATEGORIES,
                             help="only items dead-lettered with this category")  # fmt: skip
    redrive_cmd.set_defaults(func=cmd_redrive)


def cmd_manifest_verify(args: argparse.Namespace) -> int:
    """Re-hash every file the manifest lists; cross-check it against the state store and
    recompute item conservation from the plan and the batch records (``verify_run``)."""
    from orchestrator_ext.layout import RunLayout
    from orchestrator_ext.manifest import verify_run

    config = load_cli_config(args)
    # For a run in S3 this is an s3:// URI: the objects are hashed as they stream from S3.
    manifest_path = RunLayout(config.run_dir).manifest
    problems = verify_run(config, lambda: _open_store(config))
    if args.json:
        print(json.dumps({"manifest": manifest_path, "ok": not problems, "problems": problems}))
    elif problems:
        for problem in problems:
            print(problem, file=sys.stderr)
    else:
        print(
            f"ok: every file listed in {manifest_path} matches its sha256 and the state store, "
            "and the plan's items are conserved"
        )
    return EXIT_VERIFY_FAILED if problems else 0


def cmd_init(args: argparse.Namespace) -> int:
    """Create the DynamoDB state table if absent and check the run's bucket is reachable."""
    config = load_cli_config(args)
    report: dict[str, Any] = {"run_id": config.run_id}
    if config.state.backend == "dynamodb":
        from orchestrator_ext.state.dynamodb import create_table, make_client

        client = make_client(config.state.region, config.state.endpoint_url)
        created = create_table(client, config.state.table or "")
        report["table"] = {"name": config.state.table, "created": created}
    else:
        report["state"] = "sqlite (created by the run in its folder; nothing to set up)"
    if config.output_root.startswith("s3://"):
        from orchestrator_ext.s3 import (
            bucket_default_encryption,
            check_bucket,
            make_s3_client,
            split_s3_uri,
        )

        bucket, _ = split_s3_uri(config.output_root)
        s3 = make_s3_client()
        check_bucket(s3, bucket)
        encryption = bucket_default_encryption(s3, bucket)
        report["bucket"] = {"name": bucket, "reachable": True, "default_encryption": encryption}
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
        return 0
    if "table" in report:
        verb = "created" if report["table"]["created"] else "exists"
        print(f"state table {config.state.table}: {verb} (on-demand capacity)")
    if "bucket" in report:
        encryption = report["bucket"]["default_encryption"]
        print(
            f"bucket {report['bucket']['name']}: reachable; default encryption: "
            f"{encryption or 'NONE -- enable SSE-S3 or SSE-KMS default encryption'}"
        )
    if "state" in report:
        print(f"state: {report['state']}")
    return 0


def cmd_unlock(args: argparse.Namespace) -> int:
    """Break the run's coordinator lease (after its coordinator died on another host),
    where it lives: the run folder's ``.coordinator.json``, or the state table's row."""
    from orchestrator_ext.coordinator import break_lease, describe_holder

    config = load_cli_config(args)
    held = break_lease(config)
    if args.json:
        print(json.dumps({"run_id": config.run_id, "removed": held}))
    elif held:
        print(f"removed the lease of {describe_holder(held)}")
    else:
        print(f"run {config.run_id} has no coordinator lease")
    return 0


def cmd_example_data(args: argparse.Namespace) -> int:
    """Write synthetic example records."""
    from orchestrator_ext.example_data import write_records

    path = write_records(args.out, args.items, args.seed)
    print(f"wrote {args.items} records to {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``orchestrator``."""
    parser = argparse.ArgumentParser(
        prog="orchestrator",
        description="Watch and operate a batch-orchestration run (see README.md).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument(
            "run", nargs="?", metavar="RUN_DIR",
            help="the run's folder ({output_root}/{run_id}, or s3://bucket/prefix/{run_id}): "
            "reads the config the run used from its config.json",
        )  # fmt: skip
        p.add_argument(
            "--configfile", nargs="+", default=None,
            help="the run's config file(s), later ones overriding earlier ones, as with "
            f"snakemake (default, without RUN_DIR: {EXAMPLE_CONFIG})",
        )  # fmt: skip
        p.add_argument(
            "--config", nargs="*", metavar="KEY=VALUE",
            help="override config keys as snakemake --config does (e.g. run_id=x "
            "'batching={max_items: 5}')",
        )  # fmt: skip
        p.add_argument("--json", action="store_true", help="print JSON instead of a table")
        return p

    _add_operation_commands(sub, with_config)

    init = with_config(
        sub.add_parser(
            "init",
            help="create the run's DynamoDB state table (on-demand) if it is absent and check "
            "that the output bucket is reachable and encrypted by default",
        )
    )
    init.set_defaults(func=cmd_init)

    unlock = with_config(
        sub.add_parser(
            "unlock",
            help="remove the run's coordinator lease; only for a coordinator that died on "
            "another host (a dead one on this host is detected and replaced automatically)",
        )
    )
    unlock.set_defaults(func=cmd_unlock)

    manifest = sub.add_parser("manifest", help="work with the run's manifest")
    manifest_sub = manifest.add_subparsers(dest="manifest_command", required=True)
    verify = with_config(
        manifest_sub.add_parser(
            "verify",
            help="re-hash every file the manifest lists, check the checksums and item counts "
            "against the state store and conservation against the plan and batch records; "
            "exit 1 naming any mismatch or missing file",
        )
    )
    verify.set_defaults(func=cmd_manifest_verify)

    example = sub.add_parser("example-data", help="write synthetic example records")
    example.add_argument("--out", default="data/records.parquet", help="output file")
    example.add_argument("--items", type=int, default=200_000, help="number of records")
    example.add_argument("--seed", type=int, default=0, help="random seed")
    example.set_defaults(func=cmd_example_data)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``orchestrator`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except OrchestratorError as exc:
        print(f"orchestrator: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except BrokenPipeError:
        # The reader went away (`orchestrator audit | head`): stop quietly, as Unix tools
        # do, and keep Python from reporting the pipe again when it flushes at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
