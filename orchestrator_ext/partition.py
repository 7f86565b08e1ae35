"""Partition: read the item source, cut it into batches, write batch files and ``plan.json``.

Three ways to cut, all deterministic (the same input and config give byte-identical batch
files, so a rerun reuses them):

- by count: consecutive runs of at most ``max_items`` items;
- by bytes: consecutive runs whose estimated size stays under ``max_bytes`` (and
  ``max_items``);
- by weight: ``ceil(items / max_items)`` batches filled greedily, heaviest item first, into
  the lightest batch that still has room (LPT scheduling), so a skewed input still gives
  batches of about equal total weight. Items keep their input order inside a batch.

The input is never held whole (``items.open_items``). The plan is made from what the
batching needs of each item (its id, checked; its weight, or its estimated bytes), then
the rows are read again in order and each batch is written once its rows have come by, so
by count or bytes one batch and one row group (or chunk) of the input are in memory; by
weight, batches are gathered a group at a time, one pass over the input per group
(``_write_scattered``). Each batch is chunked as a slice of the whole input would be, so
its file is the one the partition wrote when it read the input whole.

With ``batching.row_ranges`` nothing is copied: each batch is a list of row ranges of the
input's files in ``plan.json`` (``row_ranges``), which the batch job reads.

The batch folder is built under a temporary name and renamed into place, so a failed
partition leaves nothing behind that a later run would trust.
"""

from __future__ import annotations

import heapq
import io
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from orchestrator_ext import row_ranges, sizing, task
from orchestrator_ext.config import BatchingSpec, RunConfig
from orchestrator_ext.errors import InputError, OrchestratorError
from orchestrator_ext.fingerprint import input_listing, listing_sha256
from orchestrator_ext.items import ItemSource, changed_error, open_items, read_items, runs
from orchestrator_ext.job import resolve_job
from orchestrator_ext.layout import RunLayout, level_sizes
from orchestrator_ext.location import is_remote, location_of
from orchestrator_ext.state import StateStore
from orchestrator_ext.storage import file_facts

logger = logging.getLogger(__name__)

PLAN_VERSION = 1
_BATCH_COLUMN = "__orchestrator_batch"
#: The column of ``plan_columns`` holding each row's estimated bytes (batching by bytes).
ROW_BYTES = "__orchestrator_bytes"
#: About how many bytes of rows weight batching holds at once (``_write_scattered``).
_PASS_BYTES = 256 * 2**20


def row_bytes(schema: pl.Schema) -> pl.Expr:
    """Each row's estimated in-memory bytes: string/binary lengths plus 8 for every fixed-width
    value. Other columns (nested, categorical, null) are not in it: ``spread_columns``."""
    size = pl.lit(0, dtype=pl.Int64)
    for name, dtype in schema.items():
        if dtype == pl.String:
            size = size + pl.col(name).str.len_bytes().fill_null(0).cast(pl.Int64)
        elif dtype == pl.Binary:
            size = size + pl.col(name).bin.size().fill_null(0).cast(pl.Int64)
        elif dtype.is_numeric() or dtype == pl.Boolean or dtype.is_temporal():
            size = size + 8
    return size


def spread_columns(schema: pl.Schema) -> list[str]:
    """The columns ``row_bytes`` leaves out: their estimated size is spread evenly over the
    rows (``_Items.batch_numbers``)."""
    fixed = (pl.String, pl.Binary, pl.Boolean)
    return [
        name
        for name, dtype in schema.items()
        if not (dtype in fixed or dtype.is_numeric() or dtype.is_temporal())
    ]


def plan_columns(schema: pl.Schema, batching: BatchingSpec) -> dict[str, pl.Expr]:
    """What ``batch_numbers`` needs of every row of items of ``schema``: nothing (by count),
    the weight column, or ``ROW_BYTES`` (by bytes, without the spread columns' share).

    Raises:
        InputError: the weight column is missing or not numeric.
    """
    column = batching.weight_column
    if column:
        if column not in schema:
            raise InputError(f"batching.weight_column {column!r} is not a column of the input")
        if not schema[column].is_numeric():
            raise InputError(
                f"batching.weight_column {column!r} must be numeric, got {schema[column]}"
            )
        return {column: pl.col(column)}
    if batching.max_bytes is None:
        return {}
    return {ROW_BYTES: row_bytes(schema)}


def batch_numbers(rows: pl.DataFrame, batching: BatchingSpec) -> pl.Series:
    """Batch number of every item, in input order, as an Int64 Series. Pure and
    deterministic, and without a Python loop per item except for weight batching.

    Args:
        rows: one row per item holding its ``plan_columns`` (with the spread columns'
            share added to ``ROW_BYTES``).

    Raises:
        InputError: the weight column is not numeric, null, NaN or negative.
    """
    if batching.weight_column:
        weights = rows.get_column(batching.weight_column)
        return _assign_by_weight(weights, batching.weight_column, batching.max_items)
    numbers = pl.int_range(0, rows.height, dtype=pl.Int64, eager=True)
    if batching.max_bytes is None:
        return (numbers // batching.max_items).alias(_BATCH_COLUMN)
    return _cut_by_bytes(rows.get_column(ROW_BYTES), batching.max_items, batching.max_bytes)


def _cut_by_bytes(sizes: pl.Series, max_items: int, max_bytes: int) -> pl.Series:
    """Consecutive runs, each closed before the row that would take it past ``max_bytes``
    (or ``max_items``); an oversized row gets a batch of its own."""
    # before[i]: the bytes of the rows before row i. Sizes are never negative, so a run
    # from ``start`` ends at the last row whose end stays within start's budget.
    before = np.concatenate(([0], np.cumsum(sizes.to_numpy(), dtype=np.int64)))
    numbers = np.empty(len(sizes), dtype=np.int64)
    start, batch = 0, 0
    while start < len(sizes):
        end = int(np.searchsorted(before, before[start] + max_bytes, side="right")) - 1
        end = min(max(end, start + 1), start + max_items)
        numbers[start:end] = batch
        start, batch = end, batch + 1
    return pl.Series(_BATCH_COLUMN, numbers, dtype=pl.Int64)


def _assign_by_weight(weights: pl.Series, column: str, max_items: int) -> pl.Series:
    if not weights.dtype.is_numeric():
        raise InputError(f"batching.weight_column {column!r} must be numeric, got {weights.dtype}")
    if weights.null_count() or (weights < 0).any():
        raise InputError(f"batching.weight_column {column!r} must be non-negative and not null")
    if weights.dtype.is_float() and weights.is_nan().any():
        # NaN compares false with everything: heaviest-first would have no order.
        raise InputError(f"batching.weight_column {column!r} has NaN weights; give them a number")
    n = len(weights)
    n_batches = max(1, -(-n // max_items))
    # Heaviest first; ties by input position (a stable sort), as the loop over sorted keys
    # (-weight, position) this replaced: the same batches.
    by_weight = pl.arg_sort_by(weights.name, descending=True, maintain_order=True)
    order = weights.to_frame().select(by_weight).to_series()
    # Totals are floats whatever the weights' type (the heap starts at 0.0).
    as_float = weights.cast(pl.Float64)
    heap = [(0.0, b) for b in range(n_batches)]
    counts = [0] * n_batches
    assignment = np.empty(n, dtype=np.int64)
    step = 1 << 16  # made Python objects a slice at a time, not 20 million at once
    for start in range(0, n, step):
        items = order.slice(start, step)
        batches = []
        for weight in as_float.gather(items).to_list():
            total, b = heapq.heappop(heap)
            batches.append(b)
            counts[b] += 1
            if counts[b] < max_items:
                heapq.heappush(heap, (total + weight, b))
        assignment[items.to_numpy()] = batches
    return pl.Series(_BATCH_COLUMN, assignment, dtype=pl.Int64)


@dataclass(frozen=True)
class _Items:
    """What the partition reads of its items, streamed (``ItemSource``) or from a frame."""

    schema: pl.Schema
    #: The given ``plan_columns`` of every item, in input order, the ids checked.
    columns: Callable[[dict[str, pl.Expr]], pl.DataFrame]
    #: The estimated in-memory size of the given columns over every item.
    spread_bytes: Callable[[list[str]], int]
    #: Every item, in input order, as consecutive frames chunked as the whole input
    #: (``ItemSource.frames``); each call reads them again.
    frames: Callable[[], Iterator[pl.DataFrame]]

    @classmethod
    def of_source(cls, source: ItemSource) -> _Items:
        def spread_bytes(columns: list[str]) -> int:
            # One file's spread columns at a time, read as a whole file is (their size
            # depends on how they are chunked).
            exprs = [pl.col(c) for c in columns]
            files = range(len(source.files))
            return sum(
                int(source.select(i, exprs, engine="in-memory").estimated_size()) for i in files
            )

        return cls(source.schema, source.read_columns, spread_bytes, source.frames)

    @classmethod
    def of_frame(cls, items: pl.DataFrame) -> _Items:
        return cls(
            items.schema,
            lambda exprs: items.with_columns(**exprs),
            lambda columns: int(items.select(columns).estimated_size()),
            lambda: iter([items]),
        )

    def batch_numbers(self, batching: BatchingSpec) -> pl.Series:
        """``batch_numbers`` from what the batching needs of every item, and no more."""
        rows = self.columns(plan_columns(self.schema, batching))
        spread = spread_columns(self.schema)
        if ROW_BYTES in rows.columns and spread and rows.height:
            rows = rows.with_columns(pl.col(ROW_BYTES) + self.spread_bytes(spread) // rows.height)
        return batch_numbers(rows, batching)


def write_batches(
    frames: Callable[[], Iterator[pl.DataFrame]], numbers: pl.Series, out_dir: Path
) -> list[dict[str, Any]]:
    """Write one Parquet file per batch into ``out_dir``; return facts about each.

    Args:
        frames: gives every item, in input order, as consecutive frames chunked as the
            whole input is (``ItemSource.frames``); each call reads the input again.
        numbers: the batch number of every item (``batch_numbers``).
        out_dir: where the ``batch-NNNNN.parquet`` files go.

    Raises:
        InputError: the input gave other items than were planned (it changed), or as
            ``frames``.
    """
    if not numbers.is_sorted():
        return _write_scattered(frames, numbers, out_dir)
    # By count or bytes: each batch cut from the stream as it comes, so one batch and one
    # frame of the input are held. Its pieces keep the input's chunks, as a slice would.
    sizes = [run["len"] for run in numbers.rle().to_list()]
    return [
        _write_batch(pl.concat(pieces), batch, out_dir)
        for batch, pieces in enumerate(runs(frames(), sizes))
    ]


def _write_scattered(
    frames: Callable[[], Iterator[pl.DataFrame]], numbers: pl.Series, out_dir: Path
) -> list[dict[str, Any]]:
    """Weight batching: each batch's items lie anywhere in the input. The batches are written
    in groups of consecutive numbers, one pass over the input per group, keeping only that
    group's rows (copied out of each frame, ``_compact``); a group holds about
    ``_PASS_BYTES`` of rows (at least one batch), so memory is bounded by that, one frame
    of the input and the batch numbers (8 bytes an item)."""
    per_batch = np.bincount(numbers.to_numpy())
    rows_per_pass = max(1, int(_PASS_BYTES / _bytes_per_row(frames())))
    batches: list[dict[str, Any]] = []
    while len(batches) < len(per_batch):
        first = last = len(batches)
        group_rows = per_batch[first]
        while last + 1 < len(per_batch) and group_rows + per_batch[last + 1] <= rows_per_pass:
            last += 1
            group_rows += per_batch[last]
        pieces: dict[int, list[pl.DataFrame]] = {b: [] for b in range(first, last + 1)}
        offset = 0
        for frame in frames():
            if offset + frame.height > len(numbers):
                raise changed_error("more items than were planned")
            mine = numbers.slice(offset, frame.height).alias(_BATCH_COLUMN)
            offset += frame.height
            keep = mine.is_between(first, last)
            if not keep.any():
                continue
            tagged = _compact(frame.filter(keep).with_columns(mine.filter(keep)))
            parts = tagged.partition_by(_BATCH_COLUMN, maintain_order=True, as_dict=True)
            for (batch,), part in parts.items():
                pieces[int(batch)].append(part.drop(_BATCH_COLUMN))
        if offset != len(numbers):
            raise changed_error("fewer items than were planned")
        for batch in range(first, last + 1):
            # One chunk, as partitioning the whole input gives.
            frame = pl.concat(pieces.pop(batch)).rechunk()
            batches.append(_write_batch(frame, batch, out_dir))
    return batches


def _compact(frame: pl.DataFrame) -> pl.DataFrame:
    """A copy of ``frame`` holding its own bytes only. The strings of a filtered frame still
    point into the buffers of the whole one (polars' string views), so a pass keeping a few
    rows of every frame would keep every frame; an IPC round trip keeps values and dtypes."""
    buffer = io.BytesIO()
    frame.write_ipc(buffer)
    buffer.seek(0)
    return pl.read_ipc(buffer)


def _bytes_per_row(frames: Iterator[pl.DataFrame]) -> float:
    """The in-memory bytes of a row of the first non-empty frame (1 if there is none)."""
    for frame in frames:
        if frame.height:
            return max(1.0, frame.estimated_size() / frame.height)
    return 1.0


def _write_batch(frame: pl.DataFrame, batch: int, out_dir: Path) -> dict[str, Any]:
    path = out_dir / f"{task.batch_name(batch)}.parquet"
    frame.write_parquet(path, compression="zstd", statistics=True)
    return {"batch_id": f"{batch:05d}", "items": frame.height, **file_facts(path)}


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
        sizing_uri = RunLayout(config.run_dir).sizing
        files = location_of(config.run_dir, client)
        final = Path(batches_dir)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        try:
            try:
                n_items, batches, batching, input_facts = _cut_items(
                    config, client, tmp, final.parent, listing, _read_sizing(files, sizing_uri)
                )
            except InputError:
                # A file rewritten while it was read explains a failure to read it best.
                _check_unchanged(config, client, listing)
                raise
            _check_unchanged(config, client, listing)
            plan = build_plan(config, listing, n_items, batches)
            plan["batching"] = batching
            plan["input"].update(input_facts)
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
            store.succeed(attempt, plan["input"]["listing_sha256"], items=n_items)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            if config.batching.target_seconds is not None:
                files.write_json(sizing_uri, sizing.sizing_record(plan))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("partitioned %d items into %d batches", n_items, len(batches))
    return plan


def _cut_items(
    config: RunConfig,
    client: Any,
    out_dir: Path,
    scratch_dir: Path,
    listing: list[dict[str, Any]],
    previous: dict[str, Any] | None,
) -> tuple[int, list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """Size the batches (``sizing.batching_for``: by the config, or by time on the first
    items unless ``previous`` recorded a size for this config and input), plan them from
    what the batching needs of the items, then write them into ``out_dir`` streaming the
    input; return the number of items, the batches' facts, the plan's ``batching`` and what
    its ``input`` holds beyond the listing (row ranges: the combined schema; ``row_ranges``).

    An ``s3-keys`` source is read whole: its items are a few short strings per object."""
    if config.input.format == "s3-keys":
        frame, _ = read_items(config.input, client)
        return *_cut(_Items.of_frame(frame), config, out_dir, listing, previous), {}
    with open_items(config.input, client, scratch_dir) as source:
        if not config.batching.row_ranges:
            return *_cut(_Items.of_source(source), config, out_dir, listing, previous), {}
        write = row_ranges.writer(source, listing)
        cut = _cut(_Items.of_source(source), config, out_dir, listing, previous, write)
        return *cut, {"schema_ipc": row_ranges.schema_text(source.schema)}


def _cut(
    items: _Items,
    config: RunConfig,
    out_dir: Path,
    listing: list[dict[str, Any]],
    previous: dict[str, Any] | None,
    write: Callable[..., list[dict[str, Any]]] | None = None,
) -> tuple[int, list[dict[str, Any]], dict[str, Any]]:
    batching, fields = sizing.batching_for(
        config, _head(items, sizing.SAMPLE_ITEMS), listing_sha256=listing_sha256(listing),
        previous_plan=previous,
    )  # fmt: skip
    numbers = items.batch_numbers(batching)
    if numbers.is_empty():
        raise InputError(f"input {config.input.uri} has no items")
    return len(numbers), (write or write_batches)(items.frames, numbers, out_dir), fields


def _head(items: _Items, n: int) -> pl.DataFrame:
    """The first ``n`` items (fewer if there are fewer), read only as far as needed."""
    taken: list[pl.DataFrame] = []
    count = 0
    for frame in items.frames():
        taken.append(frame.head(n - count))
        count += taken[-1].height
        if count >= n:
            break
    return pl.concat(taken, how="diagonal_relaxed") if taken else pl.DataFrame()


def _read_sizing(files: Any, uri: str) -> dict[str, Any] | None:
    """The sizing an earlier partition of the run recorded (``sizing.json``), or None."""
    try:
        return files.read_json(uri)
    except OrchestratorError:  # absent, or unreadable: timed again
        return None


def _check_unchanged(config: RunConfig, client: Any, listing: list[dict[str, Any]]) -> None:
    if input_listing(config.input, client) != listing:
        raise InputError(
            f"input {config.input.uri} changed while it was being read (a file was "
            "written, added or removed); run again once it is complete"
        )


def remove_derived(config: RunConfig, client: Any = None) -> int:
    """Remove every file an earlier plan of the run gave rise to (``RunLayout.derived``),
    locally or in S3; return how many files went."""
    files = location_of(config.run_dir, client)
    return sum(files.remove(uri) for uri in RunLayout(config.run_dir).derived)


def read_plan(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read ``plan.json``."""
    return json.loads(Path(path).read_text())
