"""Merge one node of the tree: verify the children's checksums, then concat or reduce them.

- ``concat`` streams record batches from each child into one Parquet writer, so memory is
  bounded by one record batch, not by the size of the children. Children with no rows are
  skipped (an item-mode batch whose items all failed before the run's schema was known has
  no columns at all).
- ``reduce`` concatenates the children's partial aggregates and applies the job's
  associative ``combine``; on the root it then applies ``finalize`` once, if configured.

Every child is hashed and compared with its record before a single row is read. Merges
never cast: every child with columns must have the first's columns and types (their order
may differ), or the merge fails naming the child, the column and both types; ``combine``
must return its input's schema. Each batch was held to the run's output schema already
(``output_contract.check_output_contract``); this is the last line behind it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import polars as pl

from orchestrator_ext.config import RunConfig
from orchestrator_ext.errors import SchemaMismatch
from orchestrator_ext.job import JobContext, job_context, load_callable
from orchestrator_ext.state import StateStore, current_host
from orchestrator_ext.storage import atomic_path, file_facts, read_json, verify_checksum, write_json

if TYPE_CHECKING:
    import pyarrow as pa

logger = logging.getLogger(__name__)

_STREAM_BATCH_ROWS = 64 * 1024


__all__ = ["SchemaMismatch", "concat_stream", "merge_node", "reduce_frames", "verify_children"]


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

    schema = _checked_schema(inputs)
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


def _checked_schema(inputs: list[str]) -> pa.Schema:
    """The schema of the first child with columns (of the first child if none has any),
    once every child with columns was found to have it (from the files' footers).

    Raises:
        SchemaMismatch: a child's columns or types differ (``_refuse_differing``).
    """
    import pyarrow.parquet as pq

    schemas = [(path, pq.read_schema(path)) for path in inputs]
    with_columns = [(path, schema) for path, schema in schemas if schema.names]
    if not with_columns:
        return schemas[0][1]
    first_path, first = with_columns[0]
    want = {field.name: field.type for field in first}
    for path, schema in with_columns[1:]:
        have = {field.name: field.type for field in schema}
        _refuse_differing("concat", path, have, first_path, want, _type_name)
    return first


def _refuse_differing(
    what: str,
    path: str,
    have: dict[str, Any],
    first_path: str,
    want: dict[str, Any],
    name_of: Callable[[Any], str] = str,
) -> None:
    """Raise SchemaMismatch unless ``have`` (the types of ``path``'s columns) is ``want``
    (those of ``first_path``), up to column order; ``name_of`` names a type."""
    if set(have) != set(want):
        raise SchemaMismatch(
            f"cannot {what} {path}: its columns {list(have)} differ from {list(want)} "
            f"of {first_path}; the job must return the same columns for every batch"
        )
    for column, dtype in want.items():
        if have[column] != dtype:
            raise SchemaMismatch(
                f"cannot {what} {path}: column types differ: {column!r} is "
                f"{name_of(have[column])} there but {name_of(dtype)} in {first_path}; "
                "merges never cast: every batch must return the run's output schema"
            )


def _type_name(arrow_type: pa.DataType) -> str:
    """An arrow type as polars names it (``Int64``, ``String``: ``output_schema.dtype_name``),
    with arrow's name too where polars reads two arrow types as one (``string``)."""
    import pyarrow as pa

    from orchestrator_ext.output_schema import dtype_name

    try:
        series = pl.from_arrow(pa.array([], type=arrow_type))
        assert isinstance(series, pl.Series)
        name = dtype_name(series.dtype)
        return name if series.to_arrow().type == arrow_type else f"{name} ({arrow_type})"
    except Exception:  # noqa: BLE001 - a name for a message, whatever the type
        return str(arrow_type)


def _conform(table: pa.Table, schema: pa.Schema, path: str) -> pa.Table:
    """``table`` with its columns in ``schema``'s order; never cast (the types were
    checked against ``schema`` before: ``_checked_schema``)."""
    if table.schema.names != schema.names:
        table = table.select(schema.names)
    if not table.schema.equals(schema):
        have = {field.name: field.type for field in table.schema}
        want = {field.name: field.type for field in schema}
        _refuse_differing("concat", path, have, "the first child", want, _type_name)
        raise SchemaMismatch(f"cannot concat {path}: its schema differs; merges never cast")
    return table


def reduce_frames(
    config: RunConfig, inputs: list[str], ctx: JobContext, is_root: bool
) -> pl.DataFrame:
    """Concatenate the children's partials and apply ``combine`` (and ``finalize`` on the root)."""
    # Imported here: a concat merge (most merges) starts faster without process's imports.
    from orchestrator_ext.output_schema import schema_differences, schema_of

    frames = [(path, pl.read_parquet(path)) for path in inputs]
    kept = [(path, f) for path, f in frames if f.width] or frames[:1]
    first_path, first = kept[0]
    for path, frame in kept[1:]:
        _refuse_differing("reduce", path, schema_of(frame), first_path, schema_of(first))
    partials = pl.concat([f.select(first.columns) for _, f in kept], how="vertical")
    combine = load_callable(config.job.combine or "", "job.combine")
    merged = combine(partials, ctx)
    if first.width and dict(merged.schema) != dict(partials.schema):
        diffs = "; ".join(schema_differences(schema_of(merged), schema_of(partials), "its input"))
        raise SchemaMismatch(
            f"merge {ctx.batch_id}: job.combine returned another schema than its input "
            f"({diffs}); combine must keep the partials' columns and types, merges never cast"
        )
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
    with store.attempt_scope(task_id) as attempt:
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
                with job_context(config.run_id, task_id, attempt.attempt, config.job.params) as ctx:
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
                "attempts": attempt.attempt,
                "duration_s": round(time.monotonic() - started, 3),
                "host": current_host(),
            }
            write_json(tmp_record, record)
            store.succeed(attempt, facts["sha256"])
    logger.info("merged %s: %d children, %d rows", task_id, len(children), rows)
    return record
