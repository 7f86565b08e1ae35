"""Merge one node of the tree: verify the children's checksums, then concat or reduce them.

- ``concat`` streams record batches from each child into one Parquet writer, so memory is
  bounded by one record batch, not by the size of the children. Children with no rows are
  skipped (an item-mode batch whose items all failed has no columns at all).
- ``reduce`` concatenates the children's partial aggregates and applies the job's
  associative ``combine``; on the root it then applies ``finalize`` once, if configured.

Every child is hashed and compared with its record before a single row is read.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Any

import polars as pl

from orchestrator_ext.config import RunConfig
from orchestrator_ext.errors import OrchestratorError
from orchestrator_ext.job import JobContext, job_context, load_callable
from orchestrator_ext.state import StateStore, current_host
from orchestrator_ext.storage import atomic_path, file_facts, read_json, verify_checksum, write_json

if TYPE_CHECKING:
    import pyarrow as pa

logger = logging.getLogger(__name__)

_STREAM_BATCH_ROWS = 64 * 1024


class SchemaMismatch(OrchestratorError):
    """Raised when the children of a concat merge have incompatible columns."""


def verify_children(children: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """Check every child's data file against its record; return the records.

    Args:
        children: ``(data_file, record_file)`` pairs.

    Raises:
        ChecksumMismatch: a child's bytes differ from its record (names the child).
        MissingOutput: a child or its record is missing.
    """
    records = []
    for data_file, record_file in children:
        record = read_json(record_file)
        verify_checksum(data_file, record["sha256"], f"merge input {record.get('uri', data_file)}")
        records.append(record)
    return records


def concat_stream(inputs: list[str], output: str | os.PathLike[str]) -> int:
    """Concatenate Parquet files into ``output`` one record batch at a time; return rows.

    Children are opened one after another, without pre-buffering: pyarrow's default
    pre-buffering reads whole column chunks ahead, which held about twice the largest
    child in memory (bench/merge_memory.py). pyarrow is imported here, not at module
    level: a reduce merge job never needs it (0.1 s of start-up per job).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _first_schema(inputs)
    rows = 0
    with pq.ParquetWriter(output, schema, compression="zstd") as writer:
        for path in inputs:
            with pq.ParquetFile(path, pre_buffer=False) as parquet_file:
                if parquet_file.metadata.num_rows == 0:
                    continue
                for batch in parquet_file.iter_batches(batch_size=_STREAM_BATCH_ROWS):
                    writer.write_table(_conform(pa.Table.from_batches([batch]), schema, path))
                    rows += batch.num_rows
    return rows


def _first_schema(inputs: list[str]) -> pa.Schema:
    """The schema of the first child with rows (of the first child if none has rows)."""
    import pyarrow.parquet as pq

    for path in inputs:
        metadata = pq.read_metadata(path)
        if metadata.num_rows > 0:
            return metadata.schema.to_arrow_schema()
    return pq.read_schema(inputs[0])


def _conform(table: pa.Table, schema: pa.Schema, path: str) -> pa.Table:
    import pyarrow as pa

    if table.schema.equals(schema):
        return table
    if set(table.schema.names) != set(schema.names):
        raise SchemaMismatch(
            f"cannot concat {path}: its columns {table.schema.names} differ from "
            f"{schema.names}; the job must return the same columns for every batch"
        )
    try:
        return table.select(schema.names).cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise SchemaMismatch(f"cannot concat {path}: column types differ ({exc})") from None


def reduce_frames(
    config: RunConfig, inputs: list[str], ctx: JobContext, is_root: bool
) -> pl.DataFrame:
    """Concatenate the children's partials and apply ``combine`` (and ``finalize`` on the root)."""
    frames = [pl.read_parquet(path) for path in inputs]
    frames = [f for f in frames if f.width] or frames[:1]
    partials = pl.concat(frames, how="diagonal_relaxed")
    combine = load_callable(config.job.combine or "", "job.combine")
    merged = combine(partials, ctx)
    if is_root and config.job.finalize:
        merged = load_callable(config.job.finalize, "job.finalize")(merged, ctx)
    return merged


def merge_node(
    config: RunConfig,
    store: StateStore,
    task_id: str,
    level: int | None,
    index: int,
    children: list[tuple[str, str]],
    output_file: str,
    record_file: str,
    is_root: bool,
    uri: str | None = None,
) -> dict[str, Any]:
    """Merge the children of one tree node and publish the node and its record.

    Returns:
        The node's record (level, index, children, uri, sha256, rows, bytes, ...).

    Raises:
        ChecksumMismatch: a child changed after it was written; nothing is published.
    """
    with store.attempt_scope(task_id) as lease:
        started = time.monotonic()
        child_records = verify_children(children)
        if level is None:  # batch records carry no level: they are level 0
            level = max(r.get("level", 0) for r in child_records) + 1
        inputs = [data for data, _ in children]
        with (
            atomic_path(record_file) as tmp_record,
            atomic_path(output_file) as tmp_output,
        ):
            if config.merge.mode == "reduce":
                with job_context(config.run_id, task_id, lease.attempt, config.job.params) as ctx:
                    merged = reduce_frames(config, inputs, ctx, is_root)
                merged.write_parquet(tmp_output, compression="zstd", statistics=True)
                rows = merged.height
            else:
                rows = concat_stream(inputs, tmp_output)
            facts = file_facts(tmp_output)
            record = {
                "level": level,
                "index": index,
                "children": [r.get("uri") for r in child_records],
                "uri": uri or output_file,
                "rows": rows,
                **facts,
                "attempts": lease.attempt,
                "duration_s": round(time.monotonic() - started, 3),
                "host": current_host(),
            }
            write_json(tmp_record, record)
            store.succeed(lease, facts["sha256"])
    logger.info("merged %s: %d children, %d rows", task_id, len(children), rows)
    return record
