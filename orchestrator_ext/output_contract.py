"""The run's output contract: every batch's result has the run's one schema, and with
``job.rows: per_item`` exactly one row per processed item, with the item's id.

The run's schema is the one ``job.output_schema`` declares, or else the one the first batch
to commit recorded in the state store (``StateStore.claim_fact``). A batch that breaks the
contract fails permanently and publishes nothing; nothing is ever cast.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import polars as pl

from orchestrator_ext.config import RunConfig
from orchestrator_ext.dtypes import polars_dtype
from orchestrator_ext.errors import RowsMismatch, SchemaMismatch
from orchestrator_ext.output_schema import (
    dtype_name,
    exactly_as,
    listed,
    same_kind,
    schema_differences,
    schema_json,
    schema_of,
)
from orchestrator_ext.state import FACT_OUTPUT_SCHEMA, StateStore

if TYPE_CHECKING:
    from orchestrator_ext.runner import BatchOutcome

DECLARED = "declared in job.output_schema"
RECORDED = "recorded from the first committed batch"


def run_output_schema(config: RunConfig, store: StateStore) -> tuple[dict[str, str] | None, str]:
    """The run's output schema and where it comes from: ``job.output_schema``, else the
    one recorded in the state store (None while no batch has committed)."""
    if config.job.output_schema is not None:
        return dict(config.job.output_schema), DECLARED
    recorded = store.get_fact(FACT_OUTPUT_SCHEMA)
    if recorded is None:
        return None, RECORDED
    return {name: dtype for name, dtype in json.loads(recorded)}, RECORDED


def _typed_as(frame: pl.DataFrame, schema: dict[str, str], where: str) -> pl.DataFrame:
    """An item-mode result (its dtypes inferred from Python values) typed as the run's
    schema where that changes no value: a Null column (only None) takes the schema's
    type, an inferred Int64 one the schema's Int32 if every value fits (``exactly_as``).
    Anything else is left as inferred, for the schema check to name."""
    columns = []
    for name, inferred in frame.schema.items():
        if name not in schema or dtype_name(inferred) == schema[name]:
            continue
        try:
            target = polars_dtype(schema[name])
        except ValueError:
            continue
        values = frame.get_column(name)
        if inferred == pl.Null:
            columns.append(values.cast(target))
        elif same_kind(inferred, target):
            with contextlib.suppress(ValueError):
                columns.append(exactly_as(values, target, where))
    return frame.with_columns(columns) if columns else frame


def _empty_as(schema: dict[str, str]) -> pl.DataFrame | None:
    """An empty frame of ``schema`` (None if a dtype has no name ``polars_dtype`` knows)."""
    try:
        return pl.DataFrame(schema={n: polars_dtype(t) for n, t in schema.items()})
    except ValueError:
        return None


def check_output_contract(
    config: RunConfig, store: StateStore, batch: str, items: pl.DataFrame, outcome: BatchOutcome
) -> pl.DataFrame:
    """Hold a batch's result to the run's output contract; return the result to publish.

    1. Its schema must equal the run's (``run_output_schema``); while none is known, it
       becomes the run's (``StateStore.claim_fact``: of batches racing, the first wins and
       the others are judged by it). Column order does not count; nothing is cast.
    2. A result without columns (no rows): with ``job.rows: per_item`` and items
       processed it fails; one the framework made (item mode, or every item
       dead-lettered) gets the run's columns; one the job returned fails when the run's
       schema has columns. It claims no schema.
    3. ``job.rows: per_item``: ``check_rows_per_item``.

    Raises:
        SchemaMismatch, RowsMismatch: one line naming what differs (permanent).
    """
    where = f"batch {batch}"
    result, n_dead = outcome.result, len(outcome.dead)
    per_item = config.job.rows == "per_item"
    schema, source = run_output_schema(config, store)
    if result.width == 0:
        if per_item and items.height > n_dead:
            check_rows_per_item(batch, items, result, outcome.dead, config.input.id_column)
        if not schema:
            return result
        made_here = config.job.mode == "item" or n_dead == items.height
        typed = _empty_as(schema) if made_here else None
        if typed is None and made_here:
            return result  # no rows, and a dtype polars_dtype cannot build: nothing to type
        if typed is None:
            columns = ", ".join(f"{n} ({t})" for n, t in schema.items())
            raise SchemaMismatch(
                f"{where}: result has no columns, but the run's output schema ({source}) has "
                f"{len(schema)}: {columns}; return an empty frame with these columns for no rows"
            )
        result = typed
    if config.job.mode == "item" and schema:
        result = _typed_as(result, schema, f"{where}: result")
    actual = schema_of(result)
    if schema is None:
        recorded = store.claim_fact(FACT_OUTPUT_SCHEMA, schema_json(actual))
        schema = {name: dtype for name, dtype in json.loads(recorded)}
        if config.job.mode == "item" and schema != actual:  # another batch was first
            result = _typed_as(result, schema, f"{where}: result")
            actual = schema_of(result)
    diffs = schema_differences(actual, schema)
    if diffs:
        raise SchemaMismatch(
            f"{where}: result does not match the run's output schema ({source}): "
            f"{listed(diffs)}; every batch must return exactly these columns and types, "
            "and merges never cast"
        )
    if per_item:
        check_rows_per_item(batch, items, result, outcome.dead, config.input.id_column)
    return result


def _sample(values: pl.Series, most: int = 3) -> str:
    shown = ", ".join(repr(v) for v in values.head(most).to_list())
    return shown + (", ..." if len(values) > most else "")


def check_rows_per_item(
    batch: str,
    items: pl.DataFrame,
    result: pl.DataFrame,
    dead: Sequence[dict[str, Any]],
    id_column: str,
) -> None:
    """``job.rows: per_item``: exactly one row per item not dead-lettered, with its id.

    Raises:
        RowsMismatch: e.g. ``batch 00003: 500 rows for 1000 items (job.rows: per_item)``,
            or naming a few missing, extra or repeated ids.
    """
    rule = "(job.rows: per_item)"
    ids_in = items.get_column(id_column)
    if dead:
        gone = pl.Series([d["id"] for d in dead], dtype=ids_in.dtype)
        ids_in = ids_in.filter(~ids_in.is_in(gone.implode()))
    of_items = f"{ids_in.len()} items"
    if dead:
        of_items += f" ({items.height} in the batch, {len(dead)} dead-lettered)"
    head = f"batch {batch}: {result.height} rows for {of_items}"
    if result.height != ids_in.len():
        raise RowsMismatch(f"{head} {rule}")
    if id_column not in result.columns:
        raise RowsMismatch(
            f"{head}, but the result has no id column {id_column!r} {rule}: every row "
            "carries its item's id"
        )
    ids_out = result.get_column(id_column)
    if ids_out.dtype != ids_in.dtype:
        raise RowsMismatch(
            f"{head}, but its ids are {dtype_name(ids_out.dtype)} and the items' "
            f"{dtype_name(ids_in.dtype)} {rule}"
        )
    problems = []
    if ids_out.null_count():
        problems.append(f"{ids_out.null_count()} rows have no id")
    repeated = ids_out.filter(ids_out.is_duplicated()).unique(maintain_order=True)
    if len(repeated):
        problems.append(f"{len(repeated)} ids repeated ({_sample(repeated)})")
    present = ids_out.drop_nulls()
    missing = ids_in.filter(~ids_in.is_in(present.implode()))
    if len(missing):
        problems.append(f"{len(missing)} items without a row ({_sample(missing)})")
    extra = present.filter(~present.is_in(ids_in.implode()))
    if len(extra):
        problems.append(f"{len(extra)} ids not of the batch's items ({_sample(extra)})")
    if problems:
        raise RowsMismatch(f"{head}, but {'; '.join(problems)} {rule}")
