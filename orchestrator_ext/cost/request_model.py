"""The request model: the S3 requests, DynamoDB request units and stored bytes of a workload.

Per task attempt (see docs/capacity.md for the reasoning):

- S3 (only for the parts of a run that live in S3): a job GETs each input it retrieves and
  HEADs it; each output it publishes is one PUT (a multipart upload above 8 MiB: one PUT
  per 8 MiB part plus two) after a HeadBucket, and Snakemake HEADs it afterwards. The
  scheduler lists each run folder once per invocation (1,000 keys per LIST page). A failed
  attempt retrieves its inputs and publishes nothing.
- DynamoDB: rows up to 1 KB, transitions up to 1 KB. Registering a task is one
  BatchWriteItem put of its row and of its first transition (1 WRU each); every attempt
  makes two state changes (RUNNING, then SUCCEEDED/FAILED/DEAD), each one strongly
  consistent GetItem (1 RRU) and one two-item TransactWriteItems (2 WRU per item).
  ``orchestrator status`` reads every task row once per call (strongly consistent Query).

Every function here is pure: counts in, counts out; ``pricing`` puts money on them.
"""

from __future__ import annotations

import math
from typing import Any

from orchestrator_ext.cost.workload import Workload

#: boto3's multipart threshold and part size (``TransferConfig`` defaults).
MULTIPART_BYTES = 8 * 1024 * 1024
#: Keys per ListObjectsV2 page.
LIST_PAGE = 1000
#: Estimated stored size of a task row and of a transition (attributes + key), bytes.
ROW_BYTES = 500
TRANSITION_BYTES = 300
#: DynamoDB bills this much storage overhead per item.
ITEM_OVERHEAD_BYTES = 100
#: DynamoDB read unit size (strongly consistent).
READ_UNIT_BYTES = 4096


def put_requests(n_bytes: int) -> int:
    """PUT-class requests to upload one object of ``n_bytes`` (multipart above 8 MiB)."""
    if n_bytes <= MULTIPART_BYTES:
        return 1
    return math.ceil(n_bytes / MULTIPART_BYTES) + 2  # create + parts + complete


def _pages(n_keys: int) -> int:
    return max(1, math.ceil(n_keys / LIST_PAGE))


def s3_requests(workload: Workload, output_in_s3: bool, input_in_s3: bool) -> dict[str, Any]:
    """S3 requests by type (PUT, GET, HEAD, LIST) and by stage, per the module's model."""
    stages: dict[str, dict[str, int]] = {}
    n, levels = workload.batches, workload.levels
    retries = max(0, workload.batch_attempts - n)
    if input_in_s3:
        stages["input"] = {
            "LIST": _pages(workload.input_files),
            "GET": workload.input_files,
            "HEAD": 0,
            "PUT": 0,
        }
    if output_in_s3:
        sizes = workload.batch_bytes or [0] * n
        stages["partition"] = {
            "PUT": sum(put_requests(b) for b in sizes) + 1, "HEAD": 1, "LIST": 1, "GET": 0,
        }  # fmt: skip
        # every attempt retrieves batch + plan; a success publishes result, dead letters, record
        stages["process"] = {
            "GET": 2 * (n + retries),
            "HEAD": 2 * (n + retries) + 6 * n,
            "PUT": sum(put_requests(b) for b in sizes) + 2 * n,
            "LIST": 0,
        }
        children = sum(levels[:-1])  # every node below the root is read once by its parent
        merge_retries = max(0, workload.merge_attempts - workload.merge_nodes)
        stages["merge"] = {
            "GET": 2 * children + 2 * merge_retries * workload.fan_in,
            "HEAD": 2 * children + 4 * workload.merge_nodes,
            "PUT": 2 * workload.merge_nodes,
            "LIST": 0,
        }
        inner = sum(levels[1:-1])
        records = 1 + n + inner + 1
        stages["manifest"] = {
            "GET": records,
            "HEAD": records + 2 * n + inner + 1 + 2,
            "PUT": 1,
            "LIST": 0,
        }
        objects = (n + 1) + 3 * n + 2 * inner + 2 + 1
        dirs = [n + 1, 2 * n, n, *(2 * size for size in levels[1:-1]), 2]
        stages["scheduler"] = {
            "LIST": _pages(objects) + sum(_pages(d) for d in dirs),
            "GET": 0,
            "HEAD": 0,
            "PUT": 0,
        }
    totals = {
        kind: sum(s[kind] for s in stages.values()) for kind in ("PUT", "GET", "HEAD", "LIST")
    }
    return {"requests": totals, "by_stage": stages}


def dynamodb_units(workload: Workload) -> dict[str, Any]:
    """Read and write request units of the run's state writes, and of one status read."""
    changes = workload.transitions - workload.tasks  # every transition after the creation
    wru = 2 * workload.tasks + 4 * changes
    rru = changes + workload.failed_attempts + _pages(workload.tasks)
    items = workload.tasks + workload.transitions
    stored = (
        workload.tasks * ROW_BYTES + workload.transitions * TRANSITION_BYTES
        + items * ITEM_OVERHEAD_BYTES
    )  # fmt: skip
    return {
        "write_units": wru,
        "read_units": rru,
        "items": items,
        "storage_bytes": stored,
        "read_units_per_status_call": max(
            1, math.ceil(workload.tasks * ROW_BYTES / READ_UNIT_BYTES)
        ),
    }


def stored_bytes(workload: Workload, merge_mode: str) -> int:
    """Bytes a finished run keeps in its folder (batches, results, merge tree), estimated
    with results as large as their batches; a reduce tree's nodes count as negligible."""
    batch_bytes = sum(workload.batch_bytes)
    tree_copies = len(workload.levels) - 1 if merge_mode == "concat" else 0
    return batch_bytes * (2 + tree_copies)
