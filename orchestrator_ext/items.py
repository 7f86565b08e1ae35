"""The items of a run's input: local files or S3 objects read as one frame, ids checked.

``input.uri`` names local files (a path or a glob) or S3 objects (``s3_input`` lists and
fetches them); ``input.format`` is parquet, csv, jsonl or ``s3-keys`` (one item per object).
Every source is read the same way: each file parsed (``read_frame``; CSV ids as text), its
ids typed as ``input.id_type`` asks (``apply_id_type``), the files combined without casting
their ids (``concat_items``), and the ids refused if null, duplicated or not carried
unchanged by every stage (``check_ids``). Runs inside the partition job only.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Iterable
from typing import IO, Any

import polars as pl

from orchestrator_ext import s3_input
from orchestrator_ext.config import InputSpec
from orchestrator_ext.errors import InputError
from orchestrator_ext.location import is_remote
from orchestrator_ext.s3 import MAX_PAGE_SIZE, make_s3_client

logger = logging.getLogger(__name__)


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


def read_items(
    spec: InputSpec, s3_client: Any = None, page_size: int = MAX_PAGE_SIZE
) -> tuple[pl.DataFrame, list[dict[str, Any]]]:
    """Read every item of the source, local files or S3 objects, and check the id column.

    Returns:
        The items in input order (S3: key order), and a listing of what was read
        (``path``, ``bytes``; S3 objects also ``etag``; one summary row for ``s3-keys``).

    Raises:
        InputError: missing files, unreadable files, no id column, ids that do not fit
            ``input.id_type`` or cannot be carried through the run (``check_ids``), id
            columns of different types in different files, null or duplicate ids.
            S3Error: missing bucket, unreachable endpoint, no credentials.
    """
    if spec.format == "s3-keys":
        client = s3_client or make_s3_client()
        objects = s3_input.match_objects(client, spec.uri, folder=True, page_size=page_size)
        items = apply_id_type(s3_input.keys_frame(objects), spec.id_column, spec.id_type, spec.uri)
        check_ids(items, spec.id_column, spec.uri)
        logger.info("listed %d objects under %s", len(objects), spec.uri)
        return items, s3_input.keys_listing(spec.uri, objects)
    if is_remote(spec.uri):
        client = s3_client or make_s3_client()
        objects = s3_input.match_objects(client, spec.uri, page_size=page_size)
        names = [o.uri for o in objects]
        # One object in memory at a time: each is parsed as soon as it is read.
        sources: Iterable[str | IO[bytes]] = (s3_input.object_bytes(client, o) for o in objects)
        listing = [{"path": o.uri, "bytes": o.size, "etag": o.etag} for o in objects]
        what = "objects"
    else:
        names = list_input_files(spec.uri)
        sources = names
        listing = [{"path": path, "bytes": os.path.getsize(path)} for path in names]
        what = "files"
    frames = [
        read_frame(source, spec.format, name, spec.id_column, spec.id_type)
        for source, name in zip(sources, names, strict=True)
    ]
    items = concat_items(frames, names, spec.id_column, what)
    check_ids(items, spec.id_column, spec.uri)
    logger.info("read %d items from %d %s matching %s", items.height, len(names), what, spec.uri)
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
