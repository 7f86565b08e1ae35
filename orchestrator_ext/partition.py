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

import glob
import heapq
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import polars as pl

from orchestrator_ext.config import BatchingSpec, InputSpec, RunConfig
from orchestrator_ext.errors import InputError
from orchestrator_ext.fingerprint import input_listing, listing_sha256
from orchestrator_ext.job import resolve_job
from orchestrator_ext.layout import (
    TASK_PARTITION,
    RunLayout,
    all_task_ids,
    batch_name,
    level_sizes,
    task_id_for_batch,
)
from orchestrator_ext.state import StateStore
from orchestrator_ext.storage import file_facts

logger = logging.getLogger(__name__)

PLAN_VERSION = 1
_BATCH_COLUMN = "__orchestrator_batch"
_ROW_COLUMN = "__orchestrator_row"


def list_input_files(uri: str) -> list[str]:
    """Local files named by ``uri`` (a path or a glob), sorted by name.

    Raises:
        InputError: nothing matches.
    """
    if glob.has_magic(uri):
        files = sorted(p for p in glob.glob(uri, recursive=True) if os.path.isfile(p))
        if not files:
            raise InputError(f"input.uri matches no file: {uri}")
        return files
    if not os.path.isfile(uri):
        raise InputError(f"input file not found: {uri}")
    return [uri]


def read_frame(
    source: str | IO[bytes],
    fmt: str,
    name: str,
    id_column: str | None = None,
    id_type: str | None = None,
) -> pl.DataFrame:
    """Read one input file (a path, or the bytes of an S3 object) in format ``fmt``.

    With ``id_column``, that column is typed as ``id_type`` says (``apply_id_type``); a CSV
    id column is read as text, so that ``00123`` stays ``00123`` (every other CSV column is
    still inferred).

    Raises:
        InputError: the file cannot be read as ``fmt`` (named as ``name``), the format
            is unknown, or its ids do not fit ``id_type``.
    """
    if fmt not in ("parquet", "csv", "jsonl"):
        raise InputError(f"unknown input format {fmt!r}; expected parquet, csv, jsonl or s3-keys")
    try:
        if fmt == "parquet":
            frame = pl.read_parquet(source)
        elif fmt == "csv":
            # Inferring the ids would turn "00123" into 123 and "001", "01" into duplicates
            # of "1"; read as text they keep their written form (id_type integer parses them).
            overrides = {id_column: pl.String} if id_column else None
            frame = pl.read_csv(source, schema_overrides=overrides)
        else:
            frame = pl.read_ndjson(source)
    except (pl.exceptions.PolarsError, OSError, ValueError) as exc:
        detail = " ".join(str(exc).split())[:300]
        raise InputError(f"cannot read {name} as {fmt}: {detail}") from None
    return apply_id_type(frame, id_column, id_type, name) if id_column else frame


def apply_id_type(
    frame: pl.DataFrame, id_column: str, id_type: str | None, name: str
) -> pl.DataFrame:
    """``frame`` with its id column typed as ``input.id_type`` asks.

    ``None`` leaves the ids as read; ``"string"`` turns integer ids into their decimal text;
    ``"integer"`` makes them Int64, parsing text strictly. A frame without the id column is
    returned as is (``check_ids`` reports it).

    Raises:
        InputError: naming the column, the file and a few ids that do not convert.
    """
    if id_type is None or id_column not in frame.columns:
        return frame
    ids = frame.get_column(id_column)
    dtype = ids.dtype
    if id_type == "string":
        if dtype == pl.String:
            return frame
        if dtype.is_integer() or dtype in (pl.Categorical, pl.Enum, pl.Null):
            return frame.with_columns(ids.cast(pl.String))
        raise InputError(
            f"input.id_type is string, but id column {id_column!r} in {name} holds {dtype} "
            "values; only integer ids are turned into text: write the ids as strings or "
            "integers in the input"
        )
    if id_type != "integer":
        raise InputError(f"unknown input.id_type {id_type!r}; expected string, integer or null")
    if dtype == pl.Int64:
        return frame
    if not (dtype == pl.String or dtype.is_integer() or dtype == pl.Null):
        raise InputError(
            f"input.id_type is integer, but id column {id_column!r} in {name} holds {dtype} "
            "values; write the ids as integers (or strings) in the input"
        )
    # Not strict, so a bad value becomes null; it is found below and named, never kept.
    parsed = ids.cast(pl.Int64, strict=False)
    bad = ids.filter(parsed.is_null() & ids.is_not_null())
    if len(bad):
        sample = ", ".join(repr(v) for v in bad.head(5).to_list())
        raise InputError(
            f"input.id_type is integer, but id column {id_column!r} in {name} has {len(bad)} "
            f"ids that are not integers in the int64 range (e.g. {sample}); fix them, or set "
            "input.id_type: string"
        )
    return frame.with_columns(parsed)


def concat_items(
    frames: list[pl.DataFrame], names: list[str], id_column: str, what: str = "files"
) -> pl.DataFrame:
    """The items of several input files (``names``, read in this order) as one frame.

    Their id columns must have one dtype: a relaxed concat would silently cast them to a
    common type (1 and "1" become the same id, an int id becomes a float). Other columns
    are combined as ``diagonal_relaxed`` does.

    Raises:
        InputError: a file without the id column, id columns of different dtypes (naming
            both files), or other columns that cannot be combined.
    """
    if len(frames) == 1:
        return frames[0]
    first: tuple[str, pl.DataType] | None = None
    for frame, name in zip(frames, names, strict=True):
        dtype = frame.schema.get(id_column)
        if dtype is None:
            if frame.height:  # an empty file without columns adds nothing
                shown = ", ".join(frame.columns[:10]) or "none"
                raise InputError(
                    f"id column {id_column!r} not found in {name} (columns: {shown}); every "
                    "input file needs it"
                )
            continue
        if dtype == pl.Null:  # no ids at all: check_ids refuses the nulls
            continue
        if first is None:
            first = (name, dtype)
        elif dtype != first[1]:
            raise InputError(
                f"id column {id_column!r} is {first[1]} in {first[0]} but {dtype} in {name}; "
                "every input file must store its ids the same way: rewrite one, or set "
                "input.id_type: string (or integer) to read them all as one type"
            )
    try:
        return pl.concat(frames, how="diagonal_relaxed")
    except pl.exceptions.PolarsError as exc:
        raise InputError(f"input {what} do not share compatible columns: {exc}") from None


def read_items(spec: InputSpec, s3_client: Any = None) -> tuple[pl.DataFrame, list[dict[str, Any]]]:
    """Read every item of the source and check the id column.

    Returns:
        The items in input order, and a listing of the files read (path, bytes).

    Raises:
        InputError: missing files, unreadable files, no id column, ids that do not fit
            ``input.id_type`` or cannot be carried through the run (``check_ids``), id
            columns of different types in different files, null or duplicate ids.
    """
    if spec.format == "s3-keys" or spec.uri.startswith("s3://"):
        from orchestrator_ext.s3_input import read_s3_items

        return read_s3_items(spec, client=s3_client)
    files = list_input_files(spec.uri)
    frames = [read_frame(path, spec.format, path, spec.id_column, spec.id_type) for path in files]
    items = concat_items(frames, files, spec.id_column)
    check_ids(items, spec.id_column, spec.uri)
    listing = [{"path": path, "bytes": os.path.getsize(path)} for path in files]
    return items, listing


def check_ids(items: pl.DataFrame, id_column: str, source: str) -> None:
    """Refuse a source without the id column, with null or duplicate ids, or with ids that
    not every stage can carry (``check_id_dtype``).

    Raises:
        InputError: naming the column and (for bad or duplicate ids) a few offending ids.
    """
    if id_column not in items.columns:
        shown = ", ".join(items.columns[:10]) or "none"
        raise InputError(
            f"id column {id_column!r} not found in {source} (columns: {shown}); set input.id_column"
        )
    ids = items.get_column(id_column)
    if ids.null_count():
        raise InputError(f"id column {id_column!r} in {source} has {ids.null_count()} null ids")
    check_id_dtype(ids, id_column, source)
    if ids.n_unique() == ids.len():  # the usual case, and several times faster to establish
        return
    duplicated = ids.filter(ids.is_duplicated()).unique(maintain_order=True)
    if len(duplicated):
        sample = ", ".join(str(v) for v in duplicated.head(5).to_list())
        raise InputError(
            f"id column {id_column!r} in {source} has {len(duplicated)} duplicate ids "
            f"(e.g. {sample}); every item needs a unique id"
        )


#: Id dtypes every stage carries unchanged: Python ints of these fit Int64, which is what
#: polars infers from them, and pyarrow reads and writes them (it has no wider integers).
_INT64_SAFE_DTYPES = (pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32)
_INT64_MAX = 2**63 - 1


def check_id_dtype(ids: pl.Series, id_column: str, source: str) -> None:
    """Refuse ids that cannot keep their identity through every stage of the run.

    Accepted: strings, and integers that fit int64 (UInt64 ids up to 2**63-1). Refused:
    floating-point ids (NaN is not an id, and 2**53 + 1 is not a float), UInt64 ids above
    2**63-1 and Int128 ids (a job's Python ints would come back as Int128, which pyarrow
    cannot read), and every other dtype. Vectorized: cheap on millions of ids.

    Raises:
        InputError: naming the column, the problem, a few offending ids and what to do.
    """
    dtype = ids.dtype
    if dtype == pl.String or dtype in _INT64_SAFE_DTYPES or (dtype == pl.Null and not len(ids)):
        return
    where = f"id column {id_column!r} in {source}"
    if dtype == pl.UInt64:
        too_big = ids.filter(ids > _INT64_MAX)
        if too_big.is_empty():
            return
        sample = ", ".join(str(v) for v in too_big.head(3).to_list())
        raise InputError(
            f"{where} has {len(too_big)} UInt64 ids above 2**63-1 (e.g. {sample}), which not "
            "every stage can carry; set input.id_type: string to read them as text"
        )
    sample = ", ".join(str(v) for v in ids.head(3).to_list())
    if dtype.is_float():
        nans = ids.is_nan().sum()
        nan_note = f"; {nans} of them NaN" if nans else ""
        raise InputError(
            f"{where} holds floating-point ids ({dtype}, e.g. {sample}{nan_note}); ids must be "
            "integers or strings: write them as such in the input"
        )
    if dtype.is_integer():
        hint = "set input.id_type: string (or integer, if they all fit int64)"
    elif dtype in (pl.Categorical, pl.Enum):
        hint = "set input.id_type: string"
    else:
        hint = "write them as strings or integers in the input"
    raise InputError(
        f"{where} has ids of type {dtype} (e.g. {sample}); ids must be strings or integers "
        f"that fit int64: {hint}"
    )


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
        path = out_dir / f"{batch_name(batch)}.parquet"
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
    if not config.output_root.startswith("s3://"):
        return
    from orchestrator_ext.s3 import check_bucket, split_s3_uri

    check_bucket(_s3_client(config), split_s3_uri(config.output_root)[0])


def _s3_client(config: RunConfig) -> Any:
    """This package's S3 client for a run that touches S3 (None otherwise); the run's
    ``faults.s3_throttle_rate`` applies to it."""
    if not (config.output_root.startswith("s3://") or config.input.uri.startswith("s3://")):
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
    with store.attempt_scope(TASK_PARTITION) as lease:
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
                all_task_ids(len(batches), config.merge.fan_in),
                {task_id_for_batch(i): b["items"] for i, b in enumerate(batches)},
                keep=TASK_PARTITION,
            )
            if removed or reset:
                logger.info(
                    "a new plan supersedes the old one: removed %d files of it, %d tasks "
                    "start over or are superseded", removed, reset,
                )  # fmt: skip
            store.succeed(lease, plan["input"]["listing_sha256"], items=items.height)
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
    removed = 0
    for location in RunLayout(config.run_dir).derived:
        if location.startswith("s3://"):
            from orchestrator_ext.s3 import delete_prefix

            removed += delete_prefix(client, location)
            continue
        path = Path(location)
        if path.is_dir():
            removed += sum(1 for p in path.rglob("*") if not p.is_dir())
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
            removed += 1
    return removed


def read_plan(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read ``plan.json``."""
    return json.loads(Path(path).read_text())
