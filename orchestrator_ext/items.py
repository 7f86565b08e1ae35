"""The items of a run's input: local files or S3 objects, read file by file, ids checked.

``input.uri`` names local files (a path or a glob) or S3 objects (``s3_input`` lists them;
each is downloaded, one at a time, into a scratch folder and read from there);
``input.format`` is parquet, csv, jsonl or ``s3-keys`` (one item per object). Every file is
read the same way: scanned lazily (``scan_frame``; CSV ids as text), its ids typed as
``input.id_type`` asks (``id_dtype``, ``apply_id_type``), the files combined without casting
their ids (``combine_schemas``, ``concat_items``), and the ids refused if null, duplicated
or not carried unchanged by every stage (``check_ids``).

Two ways in:

- ``open_items`` gives an ``ItemSource`` that never holds the input: its schema comes from
  the files' schemas, ``ItemSource.read_columns`` reads a few columns of every row (and
  checks the ids holding 8 bytes per item: string ids as 64-bit hashes), and
  ``ItemSource.frames`` reads the rows in order, a row group or chunk at a time. The
  partition uses it.
- ``read_items`` reads the whole input into one frame (``s3-keys``, small inputs, tests).

Runs inside the partition job, and in batch jobs of row ranges (``scan_listed``,
``row_ranges``) and redrive.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import polars as pl

from orchestrator_ext import s3_input
from orchestrator_ext.config import InputSpec
from orchestrator_ext.errors import InputError, MissingOutput
from orchestrator_ext.location import is_remote
from orchestrator_ext.s3 import MAX_PAGE_SIZE, download, make_s3_client

logger = logging.getLogger(__name__)

_FORMATS = ("parquet", "csv", "jsonl")
#: Rows per frame when reading CSV and JSONL (and Parquet with very large row groups).
_CHUNK_ROWS = 1 << 16
#: A Parquet file with a row group larger than this (uncompressed) is read in chunks of
#: ``_CHUNK_ROWS`` rows instead of a row group at a time.
_MAX_ROW_GROUP_BYTES = 256 * 2**20
_KEY = "__orchestrator_id_key"

Frame = TypeVar("Frame", pl.DataFrame, pl.LazyFrame)


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


@contextlib.contextmanager
def reading(name: str, fmt: str) -> Iterator[None]:
    """Report a failure to read input file ``name`` as ``fmt`` as one InputError naming it."""
    try:
        yield
    except (pl.exceptions.PolarsError, OSError, ValueError) as exc:
        detail = " ".join(str(exc).split())[:300]
        raise InputError(f"cannot read {name} as {fmt}: {detail}") from None


def scan_frame(path: str, fmt: str, name: str, id_column: str | None = None) -> pl.LazyFrame:
    """One input file as a lazy frame: nothing is read until it is collected.

    With ``id_column``, a CSV id column is read as text, so that ``00123`` stays ``00123``
    (every other CSV column is still inferred).

    Raises:
        InputError: the format is unknown, or the file cannot be opened as ``fmt``
            (named as ``name``).
    """
    if fmt not in _FORMATS:
        raise InputError(f"unknown input format {fmt!r}; expected parquet, csv, jsonl or s3-keys")
    with reading(name, fmt):
        if fmt == "parquet":
            return pl.scan_parquet(path)
        if fmt == "csv":
            # Inferring the ids would turn "00123" into 123 and "001", "01" into duplicates
            # of "1"; read as text they keep their written form (id_type integer parses them).
            overrides = {id_column: pl.String} if id_column else None
            return pl.scan_csv(path, schema_overrides=overrides)
        return pl.scan_ndjson(path)


def read_frame(
    path: str, fmt: str, name: str, id_column: str | None = None, id_type: str | None = None
) -> pl.DataFrame:
    """Read one whole input file in format ``fmt`` (``scan_frame``), its ids typed as
    ``id_type`` says (``apply_id_type``) when ``id_column`` is given.

    Raises:
        InputError: the file cannot be read as ``fmt`` (named as ``name``), the format
            is unknown, or its ids do not fit ``id_type``.
    """
    lazy = scan_frame(path, fmt, name, id_column)
    with reading(name, fmt):
        frame = lazy.collect()
    return apply_id_type(frame, id_column, id_type, name) if id_column else frame


def id_dtype(dtype: pl.DataType, id_column: str, id_type: str | None, name: str) -> pl.DataType:
    """The dtype ``input.id_type`` turns an id column of ``dtype`` (in file ``name``) into.

    ``None`` keeps it; ``"string"`` turns integer ids into text; ``"integer"`` makes them
    Int64 (text is parsed: ``apply_id_type`` names the ids that do not parse).

    Raises:
        InputError: the ids cannot be turned into that type, or ``id_type`` is unknown.
    """
    if id_type is None:
        return dtype
    if id_type == "string":
        if dtype == pl.String or dtype.is_integer() or dtype in (pl.Categorical, pl.Enum, pl.Null):
            return pl.String()
        raise InputError(
            f"input.id_type is string, but id column {id_column!r} in {name} holds {dtype} "
            "values; only integer ids are turned into text: write the ids as strings or "
            "integers in the input"
        )
    if id_type != "integer":
        raise InputError(f"unknown input.id_type {id_type!r}; expected string, integer or null")
    if not (dtype == pl.String or dtype.is_integer() or dtype == pl.Null):
        raise InputError(
            f"input.id_type is integer, but id column {id_column!r} in {name} holds {dtype} "
            "values; write the ids as integers (or strings) in the input"
        )
    return pl.Int64()


def apply_id_type(
    frame: pl.DataFrame, id_column: str, id_type: str | None, name: str
) -> pl.DataFrame:
    """``frame`` with its id column typed as ``input.id_type`` asks (``id_dtype``).

    A frame without the id column is returned as is (``check_ids`` reports it).

    Raises:
        InputError: naming the column, the file and a few ids that do not convert.
    """
    if id_type is None or id_column not in frame.columns:
        return frame
    ids = frame.get_column(id_column)
    dtype = id_dtype(ids.dtype, id_column, id_type, name)
    if dtype == ids.dtype:
        return frame
    if dtype == pl.String:
        return frame.with_columns(ids.cast(pl.String))
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


def combine_schemas(
    schemas: Sequence[pl.Schema],
    names: Sequence[str],
    id_column: str,
    what: str,
    height: Callable[[int], int],
) -> pl.Schema:
    """The schema of several input files' items concatenated (``names``, in this order).

    Their id columns must have one dtype: a relaxed concat would silently cast them to a
    common type (1 and "1" become the same id, an int id becomes a float). Other columns
    are combined as ``pl.concat(how="diagonal_relaxed")`` does.

    Args:
        height: the number of rows of file ``i``; asked only of a file without the id
            column (an empty one adds nothing).

    Raises:
        InputError: a file without the id column, id columns of different dtypes (naming
            both files), or other columns that cannot be combined.
    """
    if len(schemas) == 1:
        return schemas[0]
    first: tuple[str, pl.DataType] | None = None
    for index, (schema, name) in enumerate(zip(schemas, names, strict=True)):
        dtype = schema.get(id_column)
        if dtype is None:
            if height(index):
                shown = ", ".join(list(schema)[:10]) or "none"
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
    empty = [pl.DataFrame(schema=schema) for schema in schemas]
    with _combining(what):
        return pl.concat(empty, how="diagonal_relaxed").schema


@contextlib.contextmanager
def _combining(what: str) -> Iterator[None]:
    try:
        yield
    except pl.exceptions.PolarsError as exc:
        raise InputError(f"input {what} do not share compatible columns: {exc}") from None


def concat_items(
    frames: list[pl.DataFrame], names: list[str], id_column: str, what: str = "files"
) -> pl.DataFrame:
    """The items of several input files (``names``, read in this order) as one frame, under
    ``combine_schemas``' rules.

    Raises:
        InputError: as ``combine_schemas``.
    """
    if len(frames) == 1:
        return frames[0]
    schemas = [frame.schema for frame in frames]
    combine_schemas(schemas, names, id_column, what, lambda index: frames[index].height)
    with _combining(what):
        return pl.concat(frames, how="diagonal_relaxed")


@dataclass(frozen=True)
class InputFile:
    """One data file of the input, as read."""

    #: How messages name it: its path or S3 URI.
    name: str
    #: The local file read: the path itself, or the S3 object's downloaded copy.
    path: str
    #: Its listing entry: ``path`` and ``bytes`` (and an S3 object's ``etag``).
    listing: dict[str, Any]


@contextlib.contextmanager
def input_files(
    spec: InputSpec,
    s3_client: Any = None,
    scratch_dir: str | os.PathLike[str] | None = None,
    page_size: int = MAX_PAGE_SIZE,
) -> Iterator[list[InputFile]]:
    """The data files of a source (not ``s3-keys``), in read order (S3: key order).

    S3 objects are downloaded one at a time into a temporary folder in ``scratch_dir``
    (the system's temporary folder if None), where they stay until the block ends: every
    pass of the partition reads them, so it needs the input's size of free disk there.

    Raises:
        InputError: nothing matches, or an object vanished since it was listed.
            S3Error: missing bucket, unreachable endpoint, no credentials.
    """
    if not is_remote(spec.uri):
        yield [
            InputFile(path, path, {"path": path, "bytes": os.path.getsize(path)})
            for path in list_input_files(spec.uri)
        ]
        return
    client = s3_client or make_s3_client()
    objects = s3_input.match_objects(client, spec.uri, page_size=page_size)
    if scratch_dir is not None:
        Path(scratch_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".input-", dir=scratch_dir) as folder:
        files = []
        for index, obj in enumerate(objects):
            path = os.path.join(folder, f"{index:06d}")
            try:
                download(client, obj.uri, path)
            except MissingOutput:
                raise InputError(f"S3 object vanished while reading the input: {obj.uri}") from None
            listing = {"path": obj.uri, "bytes": obj.size, "etag": obj.etag}
            files.append(InputFile(obj.uri, path, listing))
        yield files


@dataclass(frozen=True)
class ItemSource:
    """A source of data files opened by ``open_items``: its files in read order, each one's
    schema as read and with its ids typed, and the schema their items combine to."""

    spec: InputSpec
    files: list[InputFile]
    #: Each file's schema as read.
    raw_schemas: list[pl.Schema]
    #: Each file's schema with its ids typed (``id_dtype``).
    schemas: list[pl.Schema]
    #: The schema of all files' items concatenated (``combine_schemas``).
    schema: pl.Schema
    #: ``_layout`` of the files read so far.
    _chunk_rows: dict[int, list[int]] = field(default_factory=dict, repr=False, compare=False)

    @property
    def what(self) -> str:
        """``objects`` or ``files``, for messages."""
        return _what(self.spec)

    def scan(self, index: int) -> pl.LazyFrame:
        """File ``index``'s items, lazily: ids typed, columns cast and completed to the
        combined schema as concatenating every file would.

        An id ``input.id_type: integer`` cannot parse is null here; ``read_columns``
        refuses it by name.
        """
        file, spec = self.files[index], self.spec
        frame = scan_frame(file.path, spec.format, file.name, spec.id_column)
        raw, typed = self.raw_schemas[index], self.schemas[index]
        if raw != typed:
            frame = frame.with_columns(
                pl.col(spec.id_column).cast(typed[spec.id_column], strict=False)
            )
        return frame if typed == self.schema else _aligned(frame, self.schema)

    def select(
        self,
        index: int,
        columns: Sequence[pl.Expr],
        engine: Literal["streaming", "in-memory"] = "streaming",
    ) -> pl.DataFrame:
        """``columns`` (expressions over the combined schema) of every row of file
        ``index``. The streaming engine holds only what the expressions give, not the
        columns they read.

        Raises:
            InputError: the file cannot be read, naming it.
        """
        file = self.files[index]
        with reading(file.name, self.spec.format):
            return self.scan(index).select(columns).collect(engine=engine)

    def frames(self) -> Iterator[pl.DataFrame]:
        """Every item, in input order, as consecutive frames chunked as reading each file
        whole chunks it (so a batch sliced from them is the same file as one sliced from
        the whole input: how a frame is chunked changes the Parquet file polars writes).

        A frame is a Parquet row group (or ``_CHUNK_ROWS`` rows of one larger than
        ``_MAX_ROW_GROUP_BYTES``), or one of the chunks the CSV or JSONL reader cuts a
        file into (``_layout``); its ids typed, its columns as in the combined schema.

        Raises:
            InputError: a file cannot be read, naming it; it changed since it was read.
        """
        spec = self.spec
        for index, file in enumerate(self.files):
            chunk_rows: int | None = _CHUNK_ROWS
            if spec.format == "parquet" and _largest_row_group(file) <= _MAX_ROW_GROUP_BYTES:
                chunk_rows = None
            # The ids are typed and the columns aligned frame by frame: in the lazy query
            # the streaming engine would split the row groups.
            lazy = scan_frame(file.path, spec.format, file.name, spec.id_column)
            with reading(file.name, spec.format):
                chunks: Iterator[pl.DataFrame] = lazy.collect_batches(chunk_size=chunk_rows)
                if spec.format != "parquet":
                    layout = self._layout(index)
                    chunks = (pl.concat(run).rechunk() for run in runs(chunks, layout))
                for frame in chunks:
                    frame = apply_id_type(frame, spec.id_column, spec.id_type, file.name)
                    if self.schemas[index] != self.schema:
                        frame = _aligned(frame, self.schema)
                    yield frame

    def _layout(self, index: int) -> list[int]:
        """The rows of each chunk the CSV or JSONL reader cuts file ``index`` into when it
        reads it whole: set by the file's bytes alone, and the same for any query of it
        (``read_columns`` notes them; otherwise one column of it is read)."""
        if index not in self._chunk_rows:
            flags = self.select(index, [pl.first().is_null()]).to_series()
            self._chunk_rows[index] = flags.chunk_lengths()
        return self._chunk_rows[index]

    def read_columns(self, columns: dict[str, pl.Expr]) -> pl.DataFrame:
        """``columns`` of every item, file by file, with the ids checked as ``check_ids``
        checks them but without holding them: the partition plans from this.

        Holds 8 bytes per item for the ids (integer ids themselves, string ids as 64-bit
        hashes; on a repeated hash only the ids of that hash are read again) and what
        ``columns`` give.

        Returns:
            The columns, one row per item in input order.

        Raises:
            InputError: as ``read_items``.
        """
        id_column, uri = self.spec.id_column, self.spec.uri
        _check_id_column(self.schema, id_column, uri)
        key = _id_key(id_column, self.schema[id_column]).alias(_KEY)
        exprs = [key, *(expr.alias(name) for name, expr in columns.items())]
        parts = [self.select(index, exprs) for index in range(len(self.files))]
        heights = [part.height for part in parts]
        for index, part in enumerate(parts):
            self._chunk_rows[index] = part.get_column(_KEY).chunk_lengths()
        rows = pl.concat(parts)
        del parts
        self._check_keys(rows.get_column(_KEY), heights)
        logger.info(
            "read the ids of %d items from %d %s matching %s",
            rows.height, len(self.files), self.what, uri,
        )  # fmt: skip
        return rows.drop(_KEY)

    def _check_keys(self, keys: pl.Series, heights: list[int]) -> None:
        id_column, uri = self.spec.id_column, self.spec.uri
        if keys.null_count():
            # Ids that id_type integer could not parse are null here: name them first,
            # as reading the file whole would have.
            self._check_parsed_ids(keys, heights)
            _check_no_nulls(keys, id_column, uri)
        if self.schema[id_column] != pl.String:
            check_ids(keys.alias(id_column).to_frame(), id_column, uri)
            return
        if keys.n_unique() == keys.len():
            return
        # A repeated hash: read the ids of those hashes only (in input order) and check them.
        ordered = keys.sort()
        repeated = ordered.filter(ordered == ordered.shift(1)).unique()
        del ordered
        key = _id_key(id_column, pl.String())
        of_repeated = pl.col(id_column).filter(key.is_in(repeated.implode()))
        ids = pl.concat([self.select(i, [of_repeated]) for i in range(len(self.files))])
        check_ids(ids, id_column, uri)

    def _check_parsed_ids(self, keys: pl.Series, heights: list[int]) -> None:
        id_column, offset = self.spec.id_column, 0
        for index, height in enumerate(heights):
            file, raw = self.files[index], self.raw_schemas[index]
            nulls = keys.slice(offset, height).null_count()
            offset += height
            if not nulls or raw.get(id_column) == self.schemas[index].get(id_column):
                continue
            lazy = scan_frame(file.path, self.spec.format, file.name, id_column)
            ids = pl.col(id_column)
            unparsed = ids.is_not_null() & ids.cast(pl.Int64, strict=False).is_null()
            with reading(file.name, self.spec.format):
                bad = lazy.select(ids.filter(unparsed)).collect(engine="streaming")
            apply_id_type(bad, id_column, self.spec.id_type, file.name)


def runs(frames: Iterable[pl.DataFrame], sizes: Iterable[int]) -> Iterator[list[pl.DataFrame]]:
    """The rows of ``frames`` cut into consecutive runs of ``sizes`` rows, each run as its
    pieces (slices, not copies); frames are read only as far as the runs need.

    Raises:
        InputError: the frames hold more or fewer rows than the sizes add up to (the
            input changed since it was planned).
    """
    planned = iter(sizes)
    need = next(planned, None)
    pieces: list[pl.DataFrame] = []
    for frame in frames:
        while frame.height:
            if need is None:
                raise changed_error("more items than were planned")
            take = min(need, frame.height)
            pieces.append(frame.slice(0, take))
            frame, need = frame.slice(take), need - take
            if need == 0:
                yield pieces
                pieces, need = [], next(planned, None)
    if need is not None:
        raise changed_error("fewer items than were planned")


def changed_error(what: str) -> InputError:
    """The error for an input that changed while it was read, ``what`` saying how."""
    return InputError(
        f"the input changed while it was being read ({what}); run again once it is complete"
    )


def _aligned(frame: Frame, schema: pl.Schema) -> Frame:
    """``frame`` cast and completed to ``schema`` (a combined schema it is part of) as
    concatenating it with the other files does: an empty frame of ``schema`` first."""
    return pl.concat([type(frame)(schema=schema), frame], how="diagonal_relaxed")


def _largest_row_group(file: InputFile) -> int:
    """The uncompressed bytes of the largest row group of a Parquet file."""
    import pyarrow.parquet as pq

    with reading(file.name, "parquet"):
        metadata = pq.read_metadata(file.path)
    groups = range(metadata.num_row_groups)
    return max((metadata.row_group(i).total_byte_size for i in groups), default=0)


def _what(spec: InputSpec) -> str:
    return "objects" if is_remote(spec.uri) else "files"


def _id_key(id_column: str, dtype: pl.DataType) -> pl.Expr:
    """What ``read_columns`` holds of an id: string ids hashed to 8 bytes (null stays null),
    every other id as itself (at most 8 bytes, or refused by ``check_id_dtype``)."""
    ids = pl.col(id_column)
    if dtype == pl.String:
        return pl.when(ids.is_not_null()).then(ids.hash())
    return ids


def _file_schemas(
    spec: InputSpec, files: Sequence[InputFile]
) -> tuple[list[pl.Schema], list[pl.Schema]]:
    """Each file's schema as read, and with its ids typed (``id_dtype``).

    Raises:
        InputError: a file cannot be opened, or its ids do not fit ``input.id_type``.
    """
    raw_schemas, schemas = [], []
    for file in files:
        lazy = scan_frame(file.path, spec.format, file.name, spec.id_column)
        with reading(file.name, spec.format):
            raw = lazy.collect_schema()
        typed = pl.Schema(raw)
        if spec.id_column in raw:
            typed[spec.id_column] = id_dtype(
                raw[spec.id_column], spec.id_column, spec.id_type, file.name
            )
        raw_schemas.append(raw)
        schemas.append(typed)
    return raw_schemas, schemas


@contextlib.contextmanager
def open_items(
    spec: InputSpec,
    s3_client: Any = None,
    scratch_dir: str | os.PathLike[str] | None = None,
    page_size: int = MAX_PAGE_SIZE,
) -> Iterator[ItemSource]:
    """The data files of a source (not ``s3-keys``) opened for reading file by file
    (``input_files``), each file's schema read, its ids typed, and the files' schemas
    combined (``combine_schemas``). No rows are read yet.

    Raises:
        InputError: missing or unreadable files, a format or ``input.id_type`` that does
            not fit, files that do not combine. S3Error: as ``input_files``.
    """
    with input_files(spec, s3_client, scratch_dir, page_size) as files:
        raw_schemas, schemas = _file_schemas(spec, files)

        def height(index: int) -> int:
            file = files[index]
            lazy = scan_frame(file.path, spec.format, file.name, spec.id_column)
            with reading(file.name, spec.format):
                return int(lazy.select(pl.len()).collect().item())

        names = [file.name for file in files]
        schema = combine_schemas(schemas, names, spec.id_column, _what(spec), height)
        yield ItemSource(spec, files, raw_schemas, schemas, schema)


def scan_listed(spec: InputSpec, paths: Sequence[str], schema: pl.Schema) -> list[pl.LazyFrame]:
    """Local files ``paths`` of ``spec``'s source, each scanned as ``ItemSource.scan`` scans
    it in a source whose files combine to ``schema`` (as the partition recorded it), without
    opening the source's other files.

    Raises:
        InputError: a file cannot be opened, or its ids do not fit ``input.id_type``.
    """
    files = [InputFile(path, path, {"path": path}) for path in paths]
    raw_schemas, schemas = _file_schemas(spec, files)
    source = ItemSource(spec, files, raw_schemas, schemas, schema)
    return [source.scan(index) for index in range(len(files))]


def read_items(
    spec: InputSpec, s3_client: Any = None, page_size: int = MAX_PAGE_SIZE
) -> tuple[pl.DataFrame, list[dict[str, Any]]]:
    """Read every item of the source, local files or S3 objects, into one frame and check
    the id column.

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
    what = _what(spec)
    with input_files(spec, s3_client, page_size=page_size) as files:
        frames = [
            read_frame(f.path, spec.format, f.name, spec.id_column, spec.id_type) for f in files
        ]
    items = concat_items(frames, [f.name for f in files], spec.id_column, what)
    check_ids(items, spec.id_column, spec.uri)
    logger.info("read %d items from %d %s matching %s", items.height, len(files), what, spec.uri)
    return items, [f.listing for f in files]


def check_ids(items: pl.DataFrame, id_column: str, source: str) -> None:
    """Refuse a source without the id column, with null or duplicate ids, or with ids that
    not every stage can carry (``check_id_dtype``).

    Raises:
        InputError: naming the column and (for bad or duplicate ids) a few offending ids.
    """
    _check_id_column(items.schema, id_column, source)
    ids = items.get_column(id_column)
    _check_no_nulls(ids, id_column, source)
    check_id_dtype(ids, id_column, source)
    if ids.is_sorted():
        # Sorted ids (a usual input) are unique unless two neighbours are equal: found
        # without a hash table of them all.
        if not (ids.slice(1) == ids.head(-1)).any():
            return
    elif ids.n_unique() == ids.len():  # the usual case, and several times faster to establish
        return
    duplicated = ids.filter(ids.is_duplicated()).unique(maintain_order=True)
    if len(duplicated):
        sample = ", ".join(str(v) for v in duplicated.head(5).to_list())
        raise InputError(
            f"id column {id_column!r} in {source} has {len(duplicated)} duplicate ids "
            f"(e.g. {sample}); every item needs a unique id"
        )


def _check_id_column(schema: pl.Schema, id_column: str, source: str) -> None:
    if id_column not in schema:
        shown = ", ".join(list(schema)[:10]) or "none"
        raise InputError(
            f"id column {id_column!r} not found in {source} (columns: {shown}); set input.id_column"
        )


def _check_no_nulls(ids: pl.Series, id_column: str, source: str) -> None:
    if ids.null_count():
        raise InputError(f"id column {id_column!r} in {source} has {ids.null_count()} null ids")


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
