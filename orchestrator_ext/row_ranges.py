"""Row-range batches (``batching.row_ranges: true``): a batch is a list of row ranges of the
input's Parquet files, named in ``plan.json``, instead of a copy of its rows.

The partition then reads only what the plan needs (the ids, checked; the sizes) and writes
no batch files; each batch job reads its own rows from the input, a row group at a time
(polars pushes the slice into the Parquet reader). A plan entry::

    {"batch_id": "00003", "items": 1000,
     "ranges": [{"file": 0, "offset": 3000, "rows": 500}, {"file": 1, "offset": 0, "rows": 500}],
     "sha256": <sha256 of the ranges and of their files' listing entries>}

``file`` indexes the plan's input listing, whose size and mtime (``fingerprint``) a batch job
checks before it reads: rows read from a file rewritten since the partition would not be the
planned ones, so that is an error naming the file, never a silent result. The entry's sha256
stands where a copy's checksum stands (chunks resume under it). The combined schema of the
files is kept in the plan (``input.schema_ipc``), so that a batch is typed and aligned as the
partition read it without opening every file of the input.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from orchestrator_ext.config import InputSpec
from orchestrator_ext.errors import InputError
from orchestrator_ext.fingerprint import local_entry
from orchestrator_ext.items import ItemSource, reading, scan_listed


def cut(heights: Sequence[int], sizes: Sequence[int]) -> list[list[dict[str, int]]]:
    """Consecutive batches of ``sizes`` rows over files of ``heights`` rows, in order, as
    each batch's ranges (``file``, ``offset``, ``rows``); a batch may span files.

    Raises:
        InputError: the sizes do not add up to the files' rows (the input changed).
    """
    if sum(sizes) != sum(heights):
        raise InputError(
            f"the input changed while it was being read: it holds {sum(heights)} rows, "
            f"{sum(sizes)} were planned; run again once it is complete"
        )
    batches: list[list[dict[str, int]]] = []
    file, offset = 0, 0
    for size in sizes:
        ranges, need = [], size
        while need:
            while offset == heights[file]:
                file, offset = file + 1, 0
            take = min(need, heights[file] - offset)
            ranges.append({"file": file, "offset": offset, "rows": take})
            offset, need = offset + take, need - take
        batches.append(ranges)
    return batches


def entries(
    listing: list[dict[str, Any]], heights: Sequence[int], sizes: Sequence[int]
) -> list[dict[str, Any]]:
    """The plan's batch entries of consecutive batches of ``sizes`` rows (``cut``)."""
    out = []
    for number, ranges in enumerate(cut(heights, sizes)):
        basis = {"ranges": ranges, "files": [listing[r["file"]] for r in ranges]}
        text = json.dumps(basis, sort_keys=True, separators=(",", ":"))
        out.append({
            "batch_id": f"{number:05d}",
            "items": sum(r["rows"] for r in ranges),
            "ranges": ranges,
            "sha256": hashlib.sha256(text.encode()).hexdigest(),
        })  # fmt: skip
    return out


def writer(
    source: ItemSource, listing: list[dict[str, Any]]
) -> Callable[[Callable[[], Iterator[pl.DataFrame]], pl.Series, Path], list[dict[str, Any]]]:
    """A stand-in for ``partition.write_batches`` that writes nothing: the batch entries of
    ``numbers`` (sorted batch numbers of every item) as row ranges of ``source``'s files."""

    def write(
        frames: Callable[[], Iterator[pl.DataFrame]], numbers: pl.Series, out_dir: Path
    ) -> list[dict[str, Any]]:
        del frames, out_dir  # nothing is copied
        sizes = [run["len"] for run in numbers.rle().to_list()]
        return entries(listing, file_heights(source), sizes)

    return write


def file_heights(source: ItemSource) -> list[int]:
    """The rows of each of ``source``'s Parquet files, from their footers."""
    import pyarrow.parquet as pq

    heights = []
    for file in source.files:
        with reading(file.name, "parquet"):
            heights.append(pq.read_metadata(file.path).num_rows)
    return heights


def schema_text(schema: pl.Schema) -> str:
    """``schema`` as text for ``plan.json``: an empty Arrow IPC file in base64, which keeps
    every dtype exactly (``schema_of_text`` reads it)."""
    buffer = io.BytesIO()
    pl.DataFrame(schema=schema).write_ipc(buffer)
    return base64.b64encode(buffer.getvalue()).decode()


def schema_of_text(text: str) -> pl.Schema:
    """The schema ``schema_text`` wrote."""
    return pl.read_ipc(io.BytesIO(base64.b64decode(text))).schema


def read(spec: InputSpec, plan: dict[str, Any], entry: dict[str, Any]) -> pl.DataFrame:
    """The rows of batch ``entry`` of ``plan``, read from the input, as the partition read
    them (ids typed, columns aligned to the combined schema).

    Raises:
        InputError: a file of the batch is gone or changed since the partition (size or
            mtime), or gave other rows than were planned.
    """
    listing = plan["input"]["files"]
    used = sorted({r["file"] for r in entry["ranges"]})
    for index in used:
        check_unchanged(listing[index])
    schema = schema_of_text(plan["input"]["schema_ipc"])
    scanned = scan_listed(spec, [listing[i]["path"] for i in used], schema)
    scans = dict(zip(used, scanned, strict=True))
    parts = [scans[r["file"]].slice(r["offset"], r["rows"]) for r in entry["ranges"]]
    names = ", ".join(listing[i]["path"] for i in used)
    with reading(names, "parquet"):
        # The streaming engine reads slices of a file about 1.7x faster than in-memory.
        items = pl.concat(parts).collect(engine="streaming")
    if items.height != entry["items"]:
        raise InputError(
            f"batch {entry['batch_id']}: read {items.height} rows from {names}, the plan has "
            f"{entry['items']}: the input changed since it was partitioned; run again to "
            "partition it anew"
        )
    return items


def check_unchanged(listed: dict[str, Any]) -> None:
    """Refuse a local input file whose size or mtime differ from its listing entry."""
    path = listed["path"]
    try:
        now = local_entry(path)
    except OSError as exc:
        raise InputError(
            f"input file {path} of the plan cannot be read ({exc.strerror}); with "
            "batching.row_ranges the input must stay in place until the run is done"
        ) from None
    was = {"path": path, "bytes": listed["bytes"], "mtime_ns": listed["mtime_ns"]}
    if now != was:
        raise InputError(
            f"input file {path} changed since it was partitioned ({was['bytes']} bytes, "
            f"mtime_ns {was['mtime_ns']} then; {now['bytes']} bytes, mtime_ns "
            f"{now['mtime_ns']} now): with batching.row_ranges a batch reads its rows from "
            "the input, which must stay unchanged until the run is done; run again to "
            "partition it anew"
        )
