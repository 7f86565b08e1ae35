"""Commands that act on a run or prepare one: ``redrive``, ``unlock``, ``init``,
``manifest verify``, ``iam-policy`` and ``example-data``.

Each resolves the run (``run_config``), calls the package and prints the result through
the renderer beside its data (or as JSON with ``--json``).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from orchestrator_ext.cli.exit_codes import EXIT_VERIFY_FAILED
from orchestrator_ext.cli.run_config import load_cli_config, open_run_store
from orchestrator_ext.config import RunConfig
from orchestrator_ext.location import is_remote


def cmd_redrive(args: argparse.Namespace) -> int:
    """Write a new run config over the dead-lettered items of a finished run."""
    from orchestrator_ext.redrive import redrive, render_redrive

    config = load_cli_config(args)
    plan = redrive(config, args.out, args.run_id, args.items_out, args.category)
    if args.json:
        print(json.dumps(plan.to_dict(), indent=2, sort_keys=True))
    else:
        print(render_redrive(plan))
    return 0


def cmd_unlock(args: argparse.Namespace) -> int:
    """Break the run's coordinator lease (after its coordinator died on another host),
    where it lives: the run folder's ``.coordinator.json``, or the state table's row."""
    from orchestrator_ext.coordinator import break_lease, render_unlock

    config = load_cli_config(args)
    held = break_lease(config)
    if args.json:
        print(json.dumps({"run_id": config.run_id, "removed": held}))
    else:
        print(render_unlock(config.run_id, held))
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    """Create the DynamoDB state table if absent and check the run's bucket is reachable."""
    config = load_cli_config(args)
    report = _set_up(config)
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        for line in render_init(report):
            print(line)
    return 0


def _set_up(config: RunConfig) -> dict[str, Any]:
    """Create what the run needs that is not created by the run itself; what ``init`` did."""
    report: dict[str, Any] = {"run_id": config.run_id}
    if config.state.backend == "dynamodb":
        from orchestrator_ext.state.dynamodb import create_table, make_client

        client = make_client(config.state.region, config.state.endpoint_url)
        created = create_table(client, config.state.table or "")
        report["table"] = {"name": config.state.table, "created": created}
    else:
        report["state"] = "sqlite (created by the run in its folder; nothing to set up)"
    if is_remote(config.output_root):
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
    return report


def cmd_manifest_verify(args: argparse.Namespace) -> int:
    """Re-hash every file the manifest lists; cross-check it against the state store and
    recompute item conservation from the plan and the batch records (``verify_run``)."""
    from orchestrator_ext.layout import RunLayout
    from orchestrator_ext.verify import render_verified, verify_run

    config = load_cli_config(args)
    # For a run in S3 this is an s3:// URI: the objects are hashed as they stream from S3.
    manifest_path = RunLayout(config.run_dir).manifest
    problems = verify_run(config, lambda: open_run_store(config))
    if args.json:
        print(json.dumps({"manifest": manifest_path, "ok": not problems, "problems": problems}))
    elif problems:
        for problem in problems:
            print(problem, file=sys.stderr)
    else:
        print(render_verified(manifest_path))
    return EXIT_VERIFY_FAILED if problems else 0


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


def cmd_example_data(args: argparse.Namespace) -> int:
    """Write synthetic example records."""
    from orchestrator_ext.example_data import write_records

    path = write_records(args.out, args.items, args.seed)
    print(f"wrote {args.items} records to {path}")
    return 0


def render_init(report: dict[str, Any]) -> list[str]:
    """Lines for what ``init`` set up: the state table, the bucket, or the SQLite note.

    Args:
        report: ``init``'s JSON report (keys ``table``, ``bucket`` and ``state``, each
            present only when it applies).
    """
    lines = []
    if "table" in report:
        verb = "created" if report["table"]["created"] else "exists"
        lines.append(f"state table {report['table']['name']}: {verb} (on-demand capacity)")
    if "bucket" in report:
        encryption = report["bucket"]["default_encryption"]
        lines.append(
            f"bucket {report['bucket']['name']}: reachable; default encryption: "
            f"{encryption or 'NONE -- enable SSE-S3 or SSE-KMS default encryption'}"
        )
    if "state" in report:
        lines.append(f"state: {report['state']}")
    return lines
