"""Partition: read the item source, cut it into batches, write batch files and ``plan.json``.

Three ways to cut, all deterministic (the same input and config give byte-identical batch
files, so a rerun reuses them):

- by count: consecutive runs of at most ``max_items`` items;
- by bytes: consecutive runs whose estimated size stays under ``max_bytes`` (and
  ``max_items``);
- by weight: ``ceil(items / max_items)`` batches filled greedily, heaviest item first, into
  the lightest batch that still has room (LPT scheduling), so a skewed input still gives
  batches of about equal total weight. Items keep their input order inside a batch.

The batch folder is built under a temporary name and renamed into place, so a failed
partition leaves nothing behind that a later run would trust.
"""

from __future__ import annotations

import heapq
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl

from orchestrator_ext import task
from orchestrator_ext.config import BatchingSpec, RunConfig
from orchestrator_ext.errors import InputError
from orchestrator_ext.fingerprint import input_listing, listing_sha256
from orchestrator_ext.items import read_items
from orchestrator_ext.job import resolve_job
from orchestrator_ext.layout import RunLayout, level_sizes
from orchestrator_ext.location import is_remote, location_of
from orchestrator_ext.state import StateStore
from orchestrator_ext.storage import file_facts

logger = logging.getLogger(__name__)

PLAN_VERSION = 1
_BATCH_COLUMN = "__orchestrator_batch"
_ROW_COLUMN = "__orchestrator_row"


def estimate_row_bytes(items: pl.DataFrame) -> list[int]:
    """Estimated in-memory bytes of every row: string/binary lengths plus fixed widths."""
    sizes = pl.Series("bytes", [0] * items.height, dtype=pl.Int64)
    other_columns = []
    for name, dtype in items.schema.items():
        column = items.get_column(name)
        if dtype == pl.String:
            sizes = sizes + column.str.len_bytes().fill_null(0).cast(pl.Int64)
        elif dtype == pl.Binary:
            sizes = sizes + column.bin.size().fill_null(0).cast(pl.Int64)
        elif dtype.is_numeric() or dtype == pl.Boolean or dtype.is_temporal():
            sizes = sizes + 8
        else:
            other_columns.append(name)
    if other_columns and items.height:
        # Nested columns: spread their estimated size evenly over the rows.
        sizes = sizes + items.select(other_columns).estimated_size() // items.height
    return sizes.to_list()


def assign_batches(items: pl.DataFrame, batching: BatchingSpec) -> list[int]:
    """Batch number of every item, in input order. Pure and deterministic.

    Raises:
        InputError: the weight column is missing, not numeric, null or negative.
    """
    n = items.height
    if batching.weight_column:
        return _assign_by_weight(items, batching.weight_column, batching.max_items)
    if batching.max_bytes is None:
        return [i // batching.max_items for i in range(n)]
    assignment, batch, count, size = [], 0, 0, 0
    for row_bytes in estimate_row_bytes(items):
        if count and (count >= batching.max_items or size + row_bytes > batching.max_bytes):
            batch, count, size = batch + 1, 0, 0
        assignment.append(batch)
        count += 1
        size += row_bytes
    return assignment


def batch_numbers(items: pl.DataFrame, batching: BatchingSpec) -> pl.Series:
    """``assign_batches`` as an Int64 Series; computed without Python loops for batching
    by count (the default), which matters at millions of items."""
    if batching.weight_column is None and batching.max_bytes is None:
        numbers = pl.int_range(0, items.height, dtype=pl.Int64, eager=True)
        return (numbers // batching.max_items).alias(_BATCH_COLUMN)
    return pl.Series(_BATCH_COLUMN, assign_batches(items, batching), dtype=pl.Int64)


def _assign_by_weight(items: pl.DataFrame, column: str, max_items: int) -> list[int]:
    if column not in items.columns:
        raise InputError(f"batching.weight_column {column!r} is not a column of the input")
    weights = items.get_column(column)
    if not weights.dtype.is_numeric():
        raise InputError(f"batching.weight_column {column!r} must be numeric, got {weights.dtype}")
    if weights.null_count() or (weights < 0).any():
        raise InputError(f"batching.weight_column {column!r} must be non-negative and not null")
    n = items.height
    n_batches = max(1, -(-n // max_items))
    # Heaviest first; ties by input position, so the result never depends on sort stability.
    weight_list = weights.to_list()
    order = sorted(range(n), key=lambda i: (-weight_list[i], i))
    heap = [(0.0, b) for b in range(n_batches)]
    counts = [0] * n_batches
    assignment = [0] * n
    for i in order:
        total, b = heapq.heappop(heap)
        assignment[i] = b
        counts[b] += 1
        if counts[b] < max_items:
            heapq.heappush(heap, (total + weight_list[i], b))
    return assignment


def write_batches(
    items: pl.DataFrame, assignment: list[int] | pl.Series, out_dir: Path
) -> list[dict[str, Any]]:
    """Write one Parquet file per batch into ``out_dir``; return facts about each."""
    numbers = pl.Series(_BATCH_COLUMN, assignment, dtype=pl.Int64)
    batches = []
    for batch, frame in _batch_frames(items, numbers):
        path = out_dir / f"{task.batch_name(batch)}.parquet"
        frame.write_parquet(path, compression="zstd", statistics=True)
        batches.append({"batch_id": f"{batch:05d}", "items": frame.height, **file_facts(path)})
    return batches


def _batch_frames(items: pl.DataFrame, numbers: pl.Series) -> Iterator[tuple[int, pl.DataFrame]]:
    """Each batch's rows in input order, by batch number. Contiguous batches (by count or
    bytes) are zero-copy slices; only weight batching needs a partitioned copy."""
    if numbers.is_sorted():
        offset = 0
        for run in numbers.rle().to_list():
            yield run["value"], items.slice(offset, run["len"])
            offset += run["len"]
        return
    tagged = items.with_columns(numbers)
    groups = tagged.partition_by(_BATCH_COLUMN, maintain_order=True, as_dict=True)
    for (batch,), frame in sorted(groups.items()):
        yield batch, frame.drop(_BATCH_COLUMN)


def build_plan(
    config: RunConfig, listing: list[dict[str, Any]], n_items: int, batches: list[dict[str, Any]]
) -> dict[str, Any]:
    """The content of ``plan.json`` (no timestamps: the same input gives the same plan).

    ``listing`` is the input's fingerprint (``fingerprint.input_listing``); its sha256 is
    what the Snakefile compares with the input as it is now."""
    return {
        "plan_version": PLAN_VERSION,
        "run_id": config.run_id,
        "config_sha256": config.sha256,
        "input": {
            "uri": config.input.uri,
            "format": config.input.format,
            "id_column": config.input.id_column,
            "files": listing,
            "listing_sha256": listing_sha256(listing),
        },
        "items": n_items,
        "batching": {
            "max_items": config.batching.max_items,
            "max_bytes": config.batching.max_bytes,
            "weight_column": config.batching.weight_column,
        },
        "n_batches": len(batches),
        "fan_in": config.merge.fan_in,
        "levels": level_sizes(len(batches), config.merge.fan_in),
        "batches": batches,
    }


def check_output_bucket(config: RunConfig) -> None:
    """For a run in S3, stop with one line if its bucket is missing or unreachable.

    The storage plugin would silently create a missing bucket (without the site's
    encryption and policies); a run must instead be set up with ``orchestrator init``.
    """
    if not is_remote(config.output_root):
        return
    from orchestrator_ext.s3 import check_bucket, split_s3_uri

    check_bucket(_s3_client(config), split_s3_uri(config.output_root)[0])


def _s3_client(config: RunConfig) -> Any:
    """This package's S3 client for a run that touches S3 (None otherwise); the run's
    ``faults.s3_throttle_rate`` applies to it."""
    if not (is_remote(config.output_root) or is_remote(config.input.uri)):
        return None
    from orchestrator_ext.s3 import make_s3_client

    return make_s3_client(faults=config.faults)


def partition_items(
    config: RunConfig, store: StateStore, batches_dir: str | os.PathLike[str]
) -> dict[str, Any]:
    """Read the items, cut them into batches, and publish ``batches_dir`` atomically.

    Before anything is written, the job's code is imported (``job.resolve_job``). A new
    plan supersedes whatever an earlier plan produced: every derived file of the run
    (results, dead letters, merge nodes, final, manifest) is removed before the new batch
    folder is published, and the state store is set to exactly the new plan's tasks, all
    PENDING (``StateStore.start_plan``), so progress is known from the start.

    Args:
        config: the run config.
        store: the run's state store.
        batches_dir: the folder to create (``{run}/batches``); it holds ``plan.json`` and
            ``batch-NNNNN.parquet`` files once this returns.

    Returns:
        The plan (also written to ``plan.json``).

    Raises:
        InputError: the source is missing, unreadable, has bad ids, or changed while it
            was read; JobLoadError: the job's code cannot be imported. Nothing is written.
    """
    with store.attempt_scope(task.PARTITION) as attempt:
        resolve_job(config.job)
        check_output_bucket(config)
        client = _s3_client(config)
        listing = input_listing(config.input, client)
        items, _ = read_items(config.input, client)
        if items.height == 0:
            raise InputError(f"input {config.input.uri} has no items")
        if input_listing(config.input, client) != listing:
            raise InputError(
                f"input {config.input.uri} changed while it was being read (a file was "
                "written, added or removed); run again once it is complete"
            )
        assignment = batch_numbers(items, config.batching)
        final = Path(batches_dir)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        try:
            batches = write_batches(items, assignment, tmp)
            plan = build_plan(config, listing, items.height, batches)
            (tmp / "plan.json").write_text(json.dumps(plan, indent=2, sort_keys=True) + "\n")
            removed = remove_derived(config, client)
            reset = store.start_plan(
                task.all_ids(level_sizes(len(batches), config.merge.fan_in)),
                {task.batch_id(i): b["items"] for i, b in enumerate(batches)},
                keep=task.PARTITION,
            )
            if removed or reset:
                logger.info(
                    "a new plan supersedes the old one: removed %d files of it, %d tasks "
                    "start over or are superseded", removed, reset,
                )  # fmt: skip
            store.succeed(attempt, plan["input"]["listing_sha256"], items=items.height)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("partitioned %d items into %d batches", items.height, len(batches))
    return plan


def remove_derived(config: RunConfig, client: Any = None) -> int:
    """Remove every file an earlier plan of the run gave rise to (``RunLayout.derived``),
    locally or in S3; return how many files went."""
    files = location_of(config.run_dir, client)
    return sum(files.remove(uri) for uri in RunLayout(config.run_dir).derived)


def read_plan(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read ``plan.json``."""
    return json.loads(Path(path).read_text())
