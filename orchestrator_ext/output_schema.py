"""The types of a job's output: dtype names, schema comparison, concatenation that never
casts, and the input's dtypes given back, exactly, to frames built from Python values.

A schema here is column name -> canonical dtype name (``dtype_name``), the spelling
``job.output_schema`` takes (``dtypes.canonical_dtype``). The run's output contract that
holds every batch to one schema is ``output_contract``.
"""

from __future__ import annotations

import json

import polars as pl
from polars.datatypes import DataTypeClass

from orchestrator_ext.errors import SchemaMismatch


def dtype_name(dtype: pl.DataType | DataTypeClass) -> str:
    """A polars dtype's canonical name, as ``dtypes.canonical_dtype`` spells the names that
    ``job.output_schema`` takes (``Int64``, ``List(String)``, ``Datetime(ns, UTC)``); other
    dtypes by polars' own repr."""
    if isinstance(dtype, pl.List):
        return f"List({dtype_name(dtype.inner)})"
    if isinstance(dtype, pl.Datetime):
        unit, zone = dtype.time_unit or "us", dtype.time_zone
        if zone is not None:
            return f"Datetime({unit}, {zone})"
        return "Datetime" if unit == "us" else f"Datetime({unit})"
    if isinstance(dtype, pl.Duration):
        unit = dtype.time_unit or "us"
        return "Duration" if unit == "us" else f"Duration({unit})"
    if isinstance(dtype, pl.Decimal):
        return f"Decimal({dtype.precision}, {dtype.scale})"
    if isinstance(dtype, pl.Struct):
        fields = ", ".join(f"{f.name}: {dtype_name(f.dtype)}" for f in dtype.fields)
        return f"Struct({fields})"
    return str(dtype)


def schema_of(frame: pl.DataFrame) -> dict[str, str]:
    """Column name -> canonical dtype name, in the frame's column order."""
    return {name: dtype_name(dtype) for name, dtype in frame.schema.items()}


def schema_pairs(schema: dict[str, str]) -> list[list[str]]:
    """The canonical form of a schema: [name, dtype] pairs sorted by name (column order
    is not part of the contract: the merge puts every child's columns in one order)."""
    return [[name, schema[name]] for name in sorted(schema)]


def schema_json(schema: dict[str, str]) -> str:
    """What the state store records as the run's output schema."""
    return json.dumps(schema_pairs(schema), separators=(",", ":"))


def schema_differences(
    actual: dict[str, str], expected: dict[str, str], other: str = "the schema"
) -> list[str]:
    """How ``actual`` differs from ``expected`` (``other``), one phrase per column (sorted
    by name)."""
    out = []
    for name in sorted(actual.keys() | expected.keys()):
        have, want = actual.get(name), expected.get(name)
        if have == want:
            continue
        if have is None:
            out.append(f"column {name!r} ({want}) is missing")
        elif want is None:
            out.append(f"column {name!r} ({have}) is not in {other}")
        else:
            null = " (a column of only nulls is Null: cast it)" if "Null" in (have, want) else ""
            out.append(f"column {name!r} is {have}, {other} has {want}{null}")
    return out


def listed(diffs: list[str], most: int = 3) -> str:
    """The first ``most`` differences, joined into one phrase, and how many more."""
    more = f"; and {len(diffs) - most} more" if len(diffs) > most else ""
    return "; ".join(diffs[:most]) + more


def concat_strict(frames: list[pl.DataFrame], where: str) -> pl.DataFrame:
    """Concatenate frames of one schema (columns in the first's order); never casts.

    Frames without columns (and so without rows) are left out.

    Raises:
        SchemaMismatch: a frame's columns or types differ, naming the column and both types.
    """
    kept = [f for f in frames if f.width] or frames[:1]
    if len(kept) <= 1:
        return kept[0] if kept else pl.DataFrame()
    first = schema_of(kept[0])
    for index, frame in enumerate(kept[1:], start=1):
        diffs = schema_differences(schema_of(frame), first, "part 0")
        if diffs:
            raise SchemaMismatch(
                f"{where} differ: in part {index}, {listed(diffs)}; every call of the job "
                "must return the same columns and types"
            )
    columns = list(first)
    return pl.concat([f.select(columns) for f in kept], how="vertical")


def concat_item_frames(frames: list[pl.DataFrame], where: str) -> pl.DataFrame:
    """Item-mode frames (built from rows) as one, as if built from all their rows at once:
    a column a frame lacks, or holds only nulls of (Null), is null there; other types must
    agree. Never casts a value.

    Raises:
        SchemaMismatch: a column has one type in one frame and another in a second.
    """
    kept = [f for f in frames if f.width]
    if not kept:
        return frames[0] if frames else pl.DataFrame()
    types: dict[str, pl.DataType] = {}
    for frame in kept:
        for name, dtype in frame.schema.items():
            seen = types.setdefault(name, dtype)
            if seen == pl.Null:
                types[name] = dtype
            elif dtype != pl.Null and dtype != seen:
                raise SchemaMismatch(
                    f"{where} column {name!r} is {dtype_name(seen)} in one part of the batch "
                    f"and {dtype_name(dtype)} in another; return one type per key in every row"
                )
    nulls_typed = [
        f.with_columns(
            pl.col(n).cast(types[n]) for n, t in f.schema.items() if t == pl.Null and t != types[n]
        )
        for f in kept
    ]
    return pl.concat(nulls_typed, how="diagonal")


def with_input_dtypes(
    frame: pl.DataFrame, input_schema: dict[str, pl.DataType], id_column: str, where: str
) -> pl.DataFrame:
    """``frame`` (built from a job's Python values) with every column that is also an input
    column cast back to the input's dtype, exactly.

    ``schema_overrides`` would not do: it coerces (1.5 into an Int64 column is 1, 5 into a
    String one is "5"). A column holding another kind of value than its input namesake
    (text for a number), or values its dtype cannot hold, is the job's own and left as
    inferred, except the id column.
    ``where`` starts the error messages (``"batch 00042: result"``).

    Raises:
        TypeError: the id column holds another kind of value than the input's ids.
        ValueError: an id does not fit the input's id dtype.
    """
    columns = []
    for name, inferred in frame.schema.items():
        target = input_schema.get(name)
        if target is None or inferred == target:
            continue
        values = frame.get_column(name)
        if not same_kind(inferred, target):
            if name != id_column:
                continue
            sample = ", ".join(repr(v) for v in values.drop_nulls().head(3).to_list())
            raise TypeError(
                f"{where} column {name!r} holds {inferred} values (e.g. {sample}), but the "
                f"input's ids are {target}; return each item's id as the item holds it"
            )
        try:
            columns.append(exactly_as(values, target, where))
        except ValueError:
            # New values under an input column's name (a rescaled Float32, say) are the
            # job's own; only the ids must come back exactly as the input holds them.
            if name == id_column:
                raise
    return frame.with_columns(columns) if columns else frame


def same_kind(inferred: pl.DataType, target: pl.DataType) -> bool:
    """Whether ``inferred`` is what polars infers from Python values of dtype ``target``."""
    if inferred == pl.Null:
        return True
    if target.is_integer():
        return inferred.is_integer()
    if target.is_float():
        return inferred.is_float()
    if target == pl.String or target in (pl.Categorical, pl.Enum):
        return inferred == pl.String
    if target in (pl.Boolean, pl.Binary) or target.is_temporal() or target.is_decimal():
        return inferred.base_type() == target.base_type()
    return False


def exactly_as(values: pl.Series, target: pl.DataType, where: str) -> pl.Series:
    """``values`` cast to ``target``; a value the cast would change is an error, not coerced.

    Raises:
        ValueError: naming the column, a few values that do not fit and ``target``.
    """
    try:
        cast = values.cast(target, strict=False)
        back = cast.cast(values.dtype, strict=False)
    except pl.exceptions.PolarsError as exc:
        detail = " ".join(str(exc).split())[:200]
        raise ValueError(
            f"{where} column {values.name!r} cannot be given the input's type {target} "
            f"({detail}); return the input's values unchanged, or use another column name"
        ) from None
    # A non-strict cast turns a value that does not fit into null (or rounds it): the round
    # trip finds both.
    bad = values.filter(~back.eq_missing(values))
    if len(bad):
        sample = ", ".join(repr(v) for v in bad.head(3).to_list())
        raise ValueError(
            f"{where} column {values.name!r} has {len(bad)} values that do not fit the "
            f"input column's type {target} (e.g. {sample}); return the input's values "
            "unchanged, or the new values under another column name"
        )
    return cast
