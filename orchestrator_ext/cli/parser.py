"""The argument parser of ``orchestrator``: every subcommand, its options and help texts.

Every subcommand but ``manifest`` (a group) and ``example-data`` names a run, with the same
four arguments (``RUN_DIR``, ``--configfile``, ``--config``, ``--json``; see ``run_config``)
added by ``_run_command``. Each subcommand's ``func`` default is its command body in
``inspect`` (reading a run) or ``operate`` (acting on one).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from orchestrator_ext import __version__
from orchestrator_ext.cli import inspect, operate
from orchestrator_ext.cli.run_config import EXAMPLE_CONFIG
from orchestrator_ext.errors import Category
from orchestrator_ext.sizing import OVERHEAD_SECONDS

_CATEGORIES = [str(c) for c in Category]

Command = Callable[[argparse.Namespace], int]


# argparse names the function in its message ("invalid _positive_int value: 'x'"), so these
# stay four plain functions.
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


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``orchestrator``; ``args.func(args)`` runs the command."""
    parser = argparse.ArgumentParser(
        prog="orchestrator",
        description="Watch and operate a batch-orchestration run (see README.md).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_inspect_commands(sub)
    _add_operate_commands(sub)
    return parser


#: What each subcommand is: its line in ``orchestrator --help`` and, for those with options
#: of their own, the description ``orchestrator CMD --help`` starts with (line breaks kept).
_ABOUT: dict[str, tuple[str, str | None]] = {
    "status": (
        "progress, throughput, ETA, failures by category, slowest running batches",
        "Where the run stands, from its state store (SQLite or DynamoDB); safe to run from\n"
        "another terminal while Snakemake runs. Progress counts batches; throughput is\n"
        "measured over the last 10 minutes (or the whole run); ETA = batches left /\n"
        "throughput. A running batch past its wall time is flagged OVERDUE (probably\n"
        "killed). A run that is not finished and that no coordinator runs is stopped\n"
        "(it failed or was killed). JSON keeps run_id, tasks, by_status and by_kind and\n"
        "adds the rest.",
    ),
    "errors": (
        "failed tasks and dead-lettered items, with category and log path",
        "Tasks whose status is FAILED (may be retried) or DEAD (will not be), with category,\n"
        "error type, message, attempt, Slurm job id and log file; then the dead-lettered\n"
        "items read from dead_letter/batch-*.parquet (local runs).",
    ),
    "audit": (
        "every state transition of the run (append-only log)",
        "The state store's append-only log: task, from, to, attempt, host, Slurm job id,\n"
        "time and detail of every status change, oldest first.",
    ),
    "report": (
        "write a self-contained HTML dashboard with plots",
        "One HTML file (plotly.js inline, no network needed) with batch durations,\n"
        "throughput over time, attempts per batch, failures by category, dead letters,\n"
        "the merge tree by status, failing tasks and the manifest summary.",
    ),
    "cost": (
        "estimated S3 requests, DynamoDB units, core-hours and cost",
        "Before a run: from the config (item count / batching.max_items) or, once\n"
        "partitioned, from the plan. During and after: from the state store's audit log\n"
        "(every attempt, measured run times). Prices: public list prices (us-east-1)\n"
        "unless --prices names a YAML file, e.g.\n"
        "  currency: EUR\n"
        "  s3: {put_per_1000: 0.005, get_per_1000: 0.0004, storage_gb_month: 0.023}\n"
        "  dynamodb: {write_per_million: 0.625, read_per_million: 0.125}\n"
        "  compute: {core_hour: 0.03}",
    ),
    "plan": (
        "before a run: items, batch size, batches, merge levels, time and overhead per batch",
        "Counts the input's items (Parquet: file footers; CSV, JSONL: a scan; an input in S3\n"
        "only with --items), takes the batch size from batching.max_items or, with\n"
        "batching.target_seconds, from timing the job on the head of the first input file\n"
        "(about 1.5 s of calls, as the partition does; results are dropped), and shows the\n"
        "batches, the merge levels, the expected seconds of work per batch and the fixed\n"
        "overhead of a batch job (measured in docs/benchmarks.md), warning when the\n"
        "overhead is more than 10% of a batch. Once partitioned: what plan.json recorded.",
    ),
    "iam-policy": (
        "a least-privilege IAM policy JSON for this run",
        "S3 object actions only under {output_root}/{run_id}/, listing only with that\n"
        "prefix, the input read-only, DynamoDB item actions only on the state table and\n"
        "only for items whose partition key is the run id (dynamodb:LeadingKeys). No\n"
        "statement has a '*' resource. See docs/threat-model.md.",
    ),
    "redrive": (
        "write a new run config over this run's dead-lettered items",
        "Joins the ids in dead_letter/batch-*.parquet with the run's batch files and\n"
        "writes their original rows as the new run's input (Parquet), a config that is\n"
        "this one with run_id and input replaced, and redrive.json in both run folders.\n"
        "The run must have finished (manifest.json present).",
    ),
    "init": (
        "create the run's DynamoDB state table (on-demand) if it is absent and check "
        "that the output bucket is reachable and encrypted by default",
        None,
    ),
    "unlock": (
        "remove the run's coordinator lease; only for a coordinator that died on "
        "another host (a dead one on this host is detected and replaced automatically)",
        None,
    ),
    "verify": (
        "re-hash every file the manifest lists, check the checksums and item counts "
        "against the state store and conservation against the plan and batch records; "
        "exit 1 naming any mismatch or missing file",
        None,
    ),
}


def _run_command(sub: Any, name: str, func: Command) -> argparse.ArgumentParser:
    """Add subcommand ``name`` (texts from ``_ABOUT``) that runs ``func`` on the run its
    arguments name."""
    help_text, description = _ABOUT[name]
    p = sub.add_parser(
        name, help=help_text, description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("run", nargs="?", metavar="RUN_DIR",
                   help="the run's folder ({output_root}/{run_id}, or s3://bucket/prefix/"
                   "{run_id}): reads the config the run used from its config.json")  # fmt: skip
    p.add_argument("--configfile", nargs="+", default=None,
                   help="the run's config file(s), later ones overriding earlier ones, as with "
                   f"snakemake (default, without RUN_DIR: {EXAMPLE_CONFIG})")  # fmt: skip
    p.add_argument("--config", nargs="*", metavar="KEY=VALUE",
                   help="override config keys as snakemake --config does (e.g. run_id=x "
                   "'batching={max_items: 5}')")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=func)
    return p


def _add_inspect_commands(sub: Any) -> None:
    """Register status, errors, audit, report, cost and plan (``inspect``)."""
    status = _run_command(sub, "status", inspect.cmd_status)
    status.add_argument("--watch", action="store_true",
                        help="refresh in place until the run finished or stopped, or "
                        "Ctrl-C (with --json: one JSON object per line); exit status 1 if "
                        "it stopped unfinished")  # fmt: skip
    status.add_argument("--interval", type=_positive_float, default=5.0, metavar="SECONDS",
                        help="seconds between refreshes with --watch (default 5); each refresh "
                        "reads every task row once")  # fmt: skip
    status.add_argument("--count", type=_positive_int, default=None, metavar="N",
                        help="stop --watch after N refreshes (default: no limit)")  # fmt: skip
    status.add_argument("--slowest", type=_non_negative_int, default=5, metavar="N",
                        help="running batches to list, longest first (default 5)")  # fmt: skip

    errors = _run_command(sub, "errors", inspect.cmd_errors)
    errors.add_argument("--category", choices=[*_CATEGORIES, "unknown"],
                        help="only failures of this category")  # fmt: skip
    errors.add_argument("--batch", metavar="N", help="only batch N (e.g. 3 or 00003)")
    errors.add_argument("--limit", type=_non_negative_int, default=100, metavar="N",
                        help="dead-lettered items to list (default 100; 0 = all); totals "
                        "always count all")  # fmt: skip

    _run_command(sub, "audit", inspect.cmd_audit).add_argument(
        "--task", metavar="T",
        help="only task T (e.g. batch-00003, merge-L1-part-00000, final; "
        "a bare number means that batch)",
    )  # fmt: skip
    _run_command(sub, "report", inspect.cmd_report).add_argument(
        "-o", "--output", metavar="FILE",
        help="where to write it (default: {run_dir}/report.html; "
        "{run_id}-report.html for a run in S3)",
    )  # fmt: skip

    cost = _run_command(sub, "cost", inspect.cmd_cost)
    cost.add_argument("--source", choices=["auto", "config", "plan", "store"],
                      default="auto", help="what to estimate from (default auto: "
                      "the state store if it has batches, else the plan, else the "
                      "config)")  # fmt: skip
    cost.add_argument("--items", type=_positive_int, metavar="N",
                      help="item count when estimating from the config (default: "
                      "counted from local input files)")  # fmt: skip
    cost.add_argument("--batch-seconds", type=_positive_float, metavar="S",
                      help="expected seconds per job before a run (default: "
                      "resources.runtime, an upper bound)")  # fmt: skip
    cost.add_argument("--cpus-per-job", type=_positive_int, default=1, metavar="N",
                      help="cores each job holds (default 1)")  # fmt: skip
    cost.add_argument("--prices", metavar="FILE", help="YAML file of unit prices")

    plan = _run_command(sub, "plan", inspect.cmd_plan)
    plan.add_argument("--items", type=_positive_int, metavar="N",
                      help="item count (default: counted from local input files; an input "
                      "in S3 is not counted)")  # fmt: skip
    plan.add_argument("--batch-seconds", type=_positive_float, metavar="S",
                      help="expected seconds of work per batch, instead of timing the job "
                      "(the batch size of batching.target_seconds is still timed)")  # fmt: skip
    plan.add_argument("--executor", choices=sorted(OVERHEAD_SECONDS), default="local",
                      help="where batches run, for their overhead per job (default local: "
                      f"{OVERHEAD_SECONDS['local']:g} s; slurm: "
                      f"{OVERHEAD_SECONDS['slurm']:g} s)")  # fmt: skip
    plan.add_argument("--overhead-seconds", type=_non_negative_float, metavar="S",
                      help="overhead per batch job, instead of --executor's")  # fmt: skip


def _add_operate_commands(sub: Any) -> None:
    """Register iam-policy, redrive, init, unlock, manifest verify and example-data
    (``operate``), in the order ``--help`` lists them."""
    iam = _run_command(sub, "iam-policy", operate.cmd_iam_policy)
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

    redrive = _run_command(sub, "redrive", operate.cmd_redrive)
    redrive.add_argument("--out", required=True, metavar="NEW_CONFIG",
                         help="the new run's config file to write")  # fmt: skip
    redrive.add_argument("--run-id", metavar="NEW",
                         help="the new run's id (default: {run_id}-redrive-N)")  # fmt: skip
    redrive.add_argument("--items-out", metavar="FILE",
                         help="the new input file (default: {NEW}-items.parquet beside "
                         "NEW_CONFIG)")  # fmt: skip
    redrive.add_argument("--category", choices=_CATEGORIES,
                         help="only items dead-lettered with this category")  # fmt: skip

    _run_command(sub, "init", operate.cmd_init)
    _run_command(sub, "unlock", operate.cmd_unlock)
    manifest = sub.add_parser("manifest", help="work with the run's manifest")
    manifest_sub = manifest.add_subparsers(dest="manifest_command", required=True)
    _run_command(manifest_sub, "verify", operate.cmd_manifest_verify)

    example = sub.add_parser("example-data", help="write synthetic example records")
    example.add_argument("--out", default="data/records.parquet", help="output file")
    example.add_argument("--items", type=int, default=200_000, help="number of records")
    example.add_argument("--seed", type=int, default=0, help="random seed")
    example.set_defaults(func=operate.cmd_example_data)
