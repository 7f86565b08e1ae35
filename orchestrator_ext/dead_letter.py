"""Dead letters: the items of a batch that failed for good, one row each, and the batch's
tolerance for them.

A dead letter holds the item's id (in the input's id type), the error's category, type and
message, and the attempt. A batch whose dead-lettered fraction exceeds
``tolerance.max_dead_letter_fraction`` fails permanently (``check_tolerance``). The dead
letters are published only when there are some (most batches have none), and not as a
Snakemake output: the batch job writes them itself, to the run folder or to S3, and the
batch record names them (``"dead_letter": null`` when none). In S3 that saves three requests
per batch (an upload and two existence checks).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import traceback
from collections.abc import Iterator
from typing import Any

import polars as pl

from orchestrator_ext.errors import BatchFailed, classify, describe
from orchestrator_ext.location import is_remote, location_of
from orchestrator_ext.output_schema import with_input_dtypes

logger = logging.getLogger(__name__)

#: Dead letters of one process whose traceback goes to its log: the first few say where
#: the job's code failed; a batch bad throughout would otherwise log one per item.
TRACEBACKS_LOGGED = 3
_tracebacks_left = TRACEBACKS_LOGGED


def dead_letter(item_id: Any, exc: BaseException, attempt: int) -> dict[str, Any]:
    """The dead letter of item ``item_id``, which failed with ``exc`` in ``attempt``; the
    first ``TRACEBACKS_LOGGED`` of the process log their traceback (the dead letter keeps
    only ``Type: message``)."""
    global _tracebacks_left
    if _tracebacks_left > 0:
        _tracebacks_left -= 1
        logger.warning(
            "item %r dead-lettered (%s); its traceback:\n%s", item_id, describe(exc),
            "".join(traceback.format_exception(exc)).rstrip(),
        )  # fmt: skip
    # A transient error that outlived its retries is dead-lettered as such: a redrive may fix it.
    return {
        "id": item_id,
        "category": str(classify(exc)),
        "error_type": type(exc).__name__,
        "message": describe(exc)[:1000],
        "attempt": attempt,
    }


def allowed_dead(n_items: int, max_fraction: float) -> int:
    """The most dead letters a batch of ``n_items`` may have within ``max_fraction``: the
    count ``check_tolerance`` accepts, found with its own comparison (``k / n``, not
    ``floor(f * n)``, which rounds 0.29 * 100 down to 28)."""
    if not n_items:
        return 0
    allowed = int(max_fraction * n_items)
    while allowed < n_items and (allowed + 1) / n_items <= max_fraction:
        allowed += 1
    while allowed > 0 and allowed / n_items > max_fraction:
        allowed -= 1
    return allowed


def check_tolerance(
    batch: str,
    n_items: int,
    dead: list[dict[str, Any]],
    max_fraction: float,
    stopped_after: int | None = None,
) -> None:
    """Fail the batch when its dead-lettered fraction exceeds the tolerance.

    ``stopped_after``: the items worked through when the job stopped early because the
    tolerance was already exceeded (the count is then a lower bound).

    Raises:
        BatchFailed: naming the counts, the tolerance and the first failure.
    """
    if len(dead) <= allowed_dead(n_items, max_fraction):
        return
    first = dead[0]
    stopped = (
        f"; stopped after {stopped_after} of {n_items} items, the rest not run"
        if stopped_after is not None and stopped_after < n_items
        else ""
    )
    raise BatchFailed(
        f"batch {batch}: {len(dead)} of {n_items} items failed "
        f"({len(dead) / n_items:.1%} > tolerance {max_fraction:.1%}){stopped}; "
        f"first: id {first['id']}: {first['message']}"
    )


def count_by_category(dead: list[dict[str, Any]]) -> dict[str, int]:
    """How many dead letters each error category has, by category name."""
    counts: dict[str, int] = {}
    for row in dead:
        counts[row["category"]] = counts.get(row["category"], 0) + 1
    return dict(sorted(counts.items()))


def dead_letter_frame(dead: list[dict[str, Any]], id_dtype: pl.DataType) -> pl.DataFrame:
    """The dead-letter table: id (the input's id type), category, error type, message, attempt.

    The ids get the input's dtype exactly as the item-mode result's ids do, so the two agree;
    an id that does not fit it raises (``ValueError``, ``TypeError``), never coerced.
    """
    schema: dict[str, Any] = {
        "id": id_dtype,
        "category": pl.String,
        "error_type": pl.String,
        "message": pl.String,
        "attempt": pl.Int64,
    }
    if not dead:
        return pl.DataFrame(schema=schema)
    # schema= would coerce the ids (5 into a String column becomes "5"): infer, then cast exactly.
    rest = {name: dtype for name, dtype in schema.items() if name != "id"}
    frame = pl.DataFrame(dead, schema_overrides=rest, infer_schema_length=None).select(list(schema))
    return with_input_dtypes(frame, {"id": id_dtype}, "id", "dead-letter")


@contextlib.contextmanager
def publish_dead_letters(
    dead: pl.DataFrame, uri: str, retried: bool = True
) -> Iterator[dict[str, Any] | None]:
    """Write a batch's dead letters, to be published at ``uri`` when the block succeeds.

    Yields their record entry (uri, sha256, bytes), or None when there are none: then
    nothing is written, and a file an earlier attempt left at ``uri`` is removed, so the
    folder agrees with the record (``orchestrator errors`` and ``redrive`` read the folder).
    An ``s3://`` URI is uploaded by this process (with server-side encryption) once the
    block is through. In S3 the removal costs requests, so it is made only when
    ``retried`` (the batch's first attempt cannot have left anything: a re-partition
    removes the old plan's files).
    """
    files = location_of(uri)
    if dead.is_empty():
        yield None
        if retried or not is_remote(uri):
            files.remove(uri)
        return
    buffer = io.BytesIO()
    dead.write_parquet(buffer, compression="zstd", statistics=True)
    data = buffer.getvalue()
    yield {"uri": uri, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    files.write_bytes(uri, data)
