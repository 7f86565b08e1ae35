"""The ``orchestrator`` command: watch and operate a run.

Every subcommand reads the run's config (``--configfile``, default ``config/config.yaml``,
with ``--config KEY=VALUE`` overrides like Snakemake's) and prints for people by default or
JSON with ``--json``. The package's own errors print one line and exit 2; nothing here
prints a traceback for a user error.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

import yaml

from orchestrator_ext import __version__
from orchestrator_ext.config import RunConfig, load_config, read_config_file
from orchestrator_ext.errors import OrchestratorError

EXIT_USER_ERROR = 2
EXIT_VERIFY_FAILED = 1


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for key in keys[:-1]:
        data = data.setdefault(key, {})
    data[keys[-1]] = value


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``["a.b=1", "run_id=x"]`` -> ``{"a": {"b": 1}, "run_id": "x"}`` (values parsed as YAML)."""
    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise OrchestratorError(f"--config expects KEY=VALUE, got {pair!r}")
        _set_dotted(overrides, key, yaml.safe_load(value))
    return overrides


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def load_cli_config(args: argparse.Namespace) -> RunConfig:
    """The run config named on the command line, with overrides applied."""
    raw = read_config_file(args.configfile)
    return load_config(_merge(raw, parse_overrides(args.config or [])))


def _open_store(config: RunConfig):  # type: ignore[no-untyped-def]
    from orchestrator_ext.state import open_state_store
    from orchestrator_ext.state.sqlite import SqliteStateStore

    if config.state.backend == "sqlite":
        return SqliteStateStore(f"{config.run_dir}/state.sqlite", config.run_id, create=False)
    return open_state_store(config)


def cmd_status(args: argparse.Namespace) -> int:
    """Counts of tasks by status."""
    config = load_cli_config(args)
    store = _open_store(config)
    try:
        tasks = store.tasks()
        counts = store.counts()
    finally:
        store.close()
    by_kind: dict[str, dict[str, int]] = {}
    for task in tasks:
        kind = by_kind.setdefault(task.kind, {})
        kind[str(task.status)] = kind.get(str(task.status), 0) + 1
    summary = {
        "run_id": config.run_id,
        "tasks": len(tasks),
        "by_status": counts,
        "by_kind": by_kind,
    }
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"run {config.run_id}: {len(tasks)} tasks")
    table.add_column("status")
    table.add_column("tasks", justify="right")
    for status, n in counts.items():
        table.add_row(status, str(n))
    Console().print(table)
    return 0


def cmd_manifest_verify(args: argparse.Namespace) -> int:
    """Re-hash every file the manifest lists."""
    from orchestrator_ext.layout import RunLayout
    from orchestrator_ext.manifest import verify_manifest_at

    config = load_cli_config(args)
    # For a run in S3 this is an s3:// URI: the objects are hashed as they stream from S3.
    manifest_path = RunLayout(config.run_dir).manifest
    problems = verify_manifest_at(manifest_path)
    if args.json:
        print(json.dumps({"manifest": manifest_path, "ok": not problems, "problems": problems}))
    elif problems:
        for problem in problems:
            print(problem, file=sys.stderr)
    else:
        print(f"ok: every file listed in {manifest_path} matches its sha256")
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
            "--configfile", default="config/config.yaml",
            help="the run's config file (default: config/config.yaml)",
        )  # fmt: skip
        p.add_argument(
            "--config", nargs="*", metavar="KEY=VALUE",
            help="override config keys, dotted for nesting (e.g. run_id=x batching.max_items=5)",
        )  # fmt: skip
        p.add_argument("--json", action="store_true", help="print JSON instead of a table")
        return p

    status = with_config(sub.add_parser("status", help="counts of the run's tasks by status"))
    status.set_defaults(func=cmd_status)

    init = with_config(
        sub.add_parser(
            "init",
            help="create the run's DynamoDB state table (on-demand) if it is absent and check "
            "that the output bucket is reachable and encrypted by default",
        )
    )
    init.set_defaults(func=cmd_init)

    manifest = sub.add_parser("manifest", help="work with the run's manifest")
    manifest_sub = manifest.add_subparsers(dest="manifest_command", required=True)
    verify = with_config(
        manifest_sub.add_parser(
            "verify",
            help="re-hash every file the manifest lists; exit 1 naming any mismatch or "
            "missing file",
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
