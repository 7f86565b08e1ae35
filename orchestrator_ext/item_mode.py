"""Item mode (``job.mode: item``): the job is called once per item and returns its rows.

A permanent failure dead-letters the item and the batch goes on; a resource error
(MemoryError) aborts the batch, so that it is resubmitted with more memory. A transient
failure does not hold the batch up: the item is set aside and the pass goes on; the items
set aside are retried together in rounds after the pass, one full-jitter backoff per round
(the ``retry`` schedule: round ``k`` waits up to ``initial_delay_s * 2**(k-1)``, at most
``max_delay_s``), until each succeeds, fails otherwise, or has had ``retry.max_attempts``
calls; then it is dead-lettered with its last error. Calls run on ``job.workers`` workers
(``workers.ItemCalls``); results and dead letters are assembled in input order, so the
outcome does not depend on the workers or on the order retries succeed in.

The rows are built into one frame whose input columns get the input's dtypes back, exactly
(``output_schema.with_input_dtypes``), so every batch has one schema.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterator, Sequence
from typing import Any, overload

import polars as pl

from orchestrator_ext.dead_letter import allowed_dead, check_tolerance, dead_letter
from orchestrator_ext.errors import Category, SchemaMismatch, classify, describe
from orchestrator_ext.output_schema import with_input_dtypes
from orchestrator_ext.runner import BatchOutcome, JobCall, kind_of, short_repr
from orchestrator_ext.workers import Called, ItemCalls, failed_for_good

logger = logging.getLogger(__name__)


def run_item_mode(
    items: pl.DataFrame,
    call: JobCall,
    start: int = 0,
    deadline: float | None = None,
    max_dead_fraction: float | None = None,
    batch_items: int | None = None,
    dead_before: Sequence[dict[str, Any]] = (),
) -> BatchOutcome:
    """Call the job per item; collect returned rows and dead-letter permanent failures.

    Args:
        items: the items (the batch, or a slice of it).
        call: the job and how to call it (``call.items``: its workers; one if None).
        start: position of ``items``' first row in the batch (for ``call.faults``).
        deadline: ``time.monotonic()`` value after which to stop starting items (at
            least one is done); ``items_done`` of the outcome says how far it got. The
            items started are finished, their retries included.
        max_dead_fraction: the batch's tolerance. Once more items failed permanently than
            it allows (``dead_before`` counted), no more are started and the batch fails:
            a job that fails on every item stops after a few, not after the whole batch.
            None: work through every item.
        batch_items: the whole batch's size (``items`` may be a slice of it); default
            ``items.height``.
        dead_before: the batch's dead letters from earlier slices (chunks).

    A return other than a dict (one row), a list of dicts or None (no row) dead-letters
    the item as a permanent ``TypeError``.

    Raises:
        MemoryError: a resource error aborts the batch (it is retried with more memory).
        SchemaMismatch: two items returned values of different types under one key.
        BatchFailed: the tolerance was exceeded before the last item (permanent).
    """
    calls = call.items or ItemCalls(call.fn, call.ctx, call.id_column, call.faults)
    batch = FrameRows(items)
    faults = call.faults
    before = (lambda position: faults.before_step(start + position)) if faults else None
    n_batch = batch_items if batch_items is not None else items.height
    max_failures = None
    if max_dead_fraction is not None:
        max_failures = allowed_dead(n_batch, max_dead_fraction) - len(dead_before)
    outcomes = _checked(calls.map(batch, deadline, before, max_failures))
    ids = items.get_column(call.id_column).head(len(outcomes)).to_list()
    if max_dead_fraction is not None:
        failed = [
            (i, o) for i, o in zip(ids, outcomes, strict=True)
            if o.error is not None and failed_for_good(o)
        ]  # fmt: skip
        if len(failed) > (max_failures or 0):
            # Past the tolerance: the batch fails whatever the rest and retries would give.
            dead = [dead_letter(i, o.error, call.ctx.attempt) for i, o in failed if o.error]
            check_tolerance(
                call.ctx.batch_id, n_batch, [*dead_before, *dead], max_dead_fraction,
                stopped_after=start + len(outcomes),
            )  # fmt: skip
    _retry_transient(batch, outcomes, calls, call)
    return _assemble(ids, outcomes, call, items.schema)


class FrameRows(Sequence[dict[str, Any]]):
    """A frame's rows as dicts, made when asked for: by one when iterated, by the slice
    when sliced. Not all at once: a batch's items held as dicts for its whole run make
    Python's garbage collector walk them over and over (twice the cost of a cheap item)."""

    def __init__(self, frame: pl.DataFrame) -> None:
        self.frame = frame

    def __len__(self) -> int:
        return self.frame.height

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self.frame.iter_rows(named=True)

    @overload
    def __getitem__(self, index: int) -> dict[str, Any]: ...
    @overload
    def __getitem__(self, index: slice) -> list[dict[str, Any]]: ...
    def __getitem__(self, index: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        if isinstance(index, slice):
            start, stop, step = index.indices(self.frame.height)
            if step != 1:
                raise ValueError("FrameRows slices have step 1")
            return self.frame.slice(start, stop - start).rows(named=True)
        return self.frame.row(index, named=True)


def _checked(results: list[Called]) -> list[Called]:
    """``results``, after raising the first resource error among them (it aborts the batch)."""
    for error in _errors(results):
        if classify(error) is Category.RESOURCE:
            raise error
    return results


def _errors(results: list[Called]) -> list[BaseException]:
    # Most calls succeed: one comprehension, no call per item.
    return [r.error for r in results if r.error is not None]


def _is_transient(result: Called) -> bool:
    return result.error is not None and classify(result.error) is Category.TRANSIENT


def _retry_transient(
    batch: Sequence[dict[str, Any]], outcomes: list[Called], calls: ItemCalls, call: JobCall
) -> None:
    """Retry the transiently failed items of ``outcomes`` in rounds, in place."""
    spec = call.retry
    failed = [i for i, result in enumerate(outcomes) if result.error is not None]
    pending = [i for i in failed if _is_transient(outcomes[i])]
    tries = 1
    while pending and tries < spec.max_attempts:
        # One full-jitter wait for the whole round, as the tries of one item would wait.
        delay = random.uniform(0, min(spec.initial_delay_s * 2 ** (tries - 1), spec.max_delay_s))
        example = outcomes[pending[0]].error or Exception()
        logger.info(
            "batch %s: %d items failed transiently (e.g. %s); retry round %d in %.2f s",
            call.ctx.batch_id, len(pending), describe(example), tries, delay,
        )  # fmt: skip
        time.sleep(delay)
        for i, result in zip(
            pending, _checked(calls.map([batch[i] for i in pending])), strict=True
        ):
            outcomes[i] = result
        tries += 1
        pending = [i for i in pending if _is_transient(outcomes[i])]


def _assemble(
    ids: list[Any], outcomes: list[Called], call: JobCall, schema: pl.Schema
) -> BatchOutcome:
    """The rows and dead letters of the items worked through (``ids``), in input order."""
    ctx, id_column = call.ctx, call.id_column
    rows: list[dict[str, Any]] = []
    dead: list[dict[str, Any]] = []
    # key -> (Python type, item id, value) of its first non-None value: polars would make
    # a String column of ints and strs, so a second type is the batch's error instead.
    kinds: dict[str, tuple[type, Any, Any]] = {}
    for item_id, called in zip(ids, outcomes, strict=True):
        if called.error is not None:
            dead.append(dead_letter(item_id, called.error, ctx.attempt))
            continue
        try:
            produced_rows = item_rows(called.value)
        except TypeError as exc:
            # The job's code is wrong for this item, whatever the config's error rules say
            # about TypeError: retrying returns the same, so it is permanent.
            letter = dead_letter(item_id, exc, ctx.attempt)
            dead.append({**letter, "category": str(Category.PERMANENT)})
            continue
        _check_kinds(produced_rows, kinds, item_id, ctx.batch_id)
        rows.extend(produced_rows)
    result = pl.DataFrame(rows, infer_schema_length=None) if rows else pl.DataFrame()
    # polars infers a dtype from the Python values of this batch alone (a UInt64 id comes
    # back Int64, or Int128 when above 2**63-1, which pyarrow cannot read at the merge):
    # a returned input column gets the input's dtype back, so every batch has one schema.
    result = with_input_dtypes(result, schema, id_column, f"batch {ctx.batch_id}: result")
    return BatchOutcome(result, dead, len(ids))


def _check_kinds(
    rows: list[dict[str, Any]], kinds: dict[str, tuple[type, Any, Any]], item_id: Any, batch: str
) -> None:
    """Note the Python type of every key's values; a second type for a key is an error.

    Raises:
        SchemaMismatch: naming the key, both types and the items (permanent).
    """
    for row in rows:
        for key, value in row.items():
            if value is None:
                continue
            seen = kinds.get(key)
            if seen is None:
                kinds[key] = (type(value), item_id, value)
            elif seen[0] is not type(value):
                raise SchemaMismatch(
                    f"batch {batch}: result key {key!r} is {kind_of(seen[2])} for item "
                    f"{seen[1]!r} ({short_repr(seen[2])}) but {kind_of(value)} for item "
                    f"{item_id!r} ({short_repr(value)}); return one type per key in every "
                    "row (it is not converted)"
                )


def item_rows(produced: Any) -> list[dict[str, Any]]:
    """The rows an item-mode job returned: a dict is one row, a list of dicts several, None none.

    Raises:
        TypeError: anything else, naming what was returned (a value polars would make a
            ``column_0`` of, or a frame, which belongs to batch mode).
    """
    if produced is None:
        return []
    if isinstance(produced, dict):
        return [produced]
    expected = "expected a dict (one row), a list of dicts or None (no row)"
    if isinstance(produced, list):
        for position, row in enumerate(produced):
            if not isinstance(row, dict):
                raise TypeError(
                    f"job returned a list holding {kind_of(row)} at position {position} "
                    f"({short_repr(row)}), {expected}; return each row as a dict"
                )
        return produced
    if hasattr(produced, "to_dicts") or hasattr(produced, "to_dict"):
        hint = (
            "return its rows as dicts (polars .to_dicts(), pandas .to_dict('records')), "
            "or use job.mode: batch"
        )
    else:
        hint = "return the item's row as a dict"
    raise TypeError(
        f"job returned {kind_of(produced)} ({short_repr(produced)}), {expected}; {hint}"
    )
