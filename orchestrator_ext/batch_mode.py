"""Batch mode (``job.mode: batch``): the job is called on a whole frame of items and
returns a polars DataFrame.

A permanent error makes the framework bisect the frame until the failing items are isolated
and dead-lettered while the rest is kept; a transient one is retried in place (``retry``),
and one that outlives its retries, like a resource error, fails the attempt so that it is
retried whole.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import polars as pl

from orchestrator_ext.dead_letter import check_tolerance, dead_letter
from orchestrator_ext.errors import Category, WrongReturnType, classify, describe
from orchestrator_ext.output_schema import concat_strict
from orchestrator_ext.retry import RetryingCall
from orchestrator_ext.runner import BatchOutcome, JobCall, kind_of

logger = logging.getLogger(__name__)


def run_batch_mode(
    items: pl.DataFrame,
    call: JobCall,
    start: int = 0,
    max_dead_fraction: float | None = None,
    batch_items: int | None = None,
    dead_before: Sequence[dict[str, Any]] = (),
) -> BatchOutcome:
    """Call the job on the whole of ``items``; on a permanent error, bisect to isolate bad
    items.

    Args:
        items: the items (the batch, or a slice of it).
        call: the job and how to call it; its ``faults`` (if enabled) are injected around
            every call.
        start: the position of ``items``' first row in the batch.
        max_dead_fraction: the batch's tolerance; bisection stops as soon as the batch's
            dead letters (``dead_before`` and this call's) exceed it. None: isolate all.
        batch_items: the whole batch's size (``items`` may be a slice of it); default
            ``items.height``.
        dead_before: the batch's dead letters from earlier slices (chunks).

    Raises:
        BatchFailed: the tolerance is exceeded (``check_tolerance``'s error, permanent).
        WrongReturnType: the job returned something other than a polars DataFrame.
    """
    ctx, faults = call.ctx, call.faults
    n_batch = batch_items if batch_items is not None else items.height
    policy = RetryingCall(call.retry)
    fn = call.fn
    if faults:
        faults.before_step(start, items.height)
        fn = faults.wrap_batch(fn, call.id_column)
    parts: list[pl.DataFrame] = []
    dead: list[dict[str, Any]] = []
    pending = [items]
    while pending:
        chunk = pending.pop()
        try:
            out = policy(fn, chunk, ctx)
        except Exception as exc:
            # Only a permanent error points at bad items; a transient one that outlived its
            # retries (or a resource error) fails the attempt so that it is retried whole.
            if classify(exc) is not Category.PERMANENT:
                raise
            if chunk.height == 1:
                dead.append(dead_letter(chunk.item(0, call.id_column), exc, ctx.attempt))
                # Past the tolerance the batch fails whatever the rest holds: isolating
                # more bad items would only cost calls (a batch bad throughout: 2n - 1).
                n_dead = len(dead_before) + len(dead)
                if max_dead_fraction is not None and n_dead / n_batch > max_dead_fraction:
                    check_tolerance(ctx.batch_id, n_batch, [*dead_before, *dead],
                                    max_dead_fraction)  # fmt: skip
                continue
            logger.info("bisecting %d items after %s", chunk.height, describe(exc))
            half = chunk.height // 2
            # Pushed in reverse so the first half is processed first: output stays in order.
            pending += [chunk.slice(half), chunk.slice(0, half)]
            continue
        if not isinstance(out, pl.DataFrame):
            if out is None:
                hint = "return an empty one for no rows"
            elif kind_of(out).startswith("pandas."):
                hint = "convert it with polars.from_pandas()"
            else:
                hint = "convert it with polars.DataFrame()"
            raise WrongReturnType(
                f"job returned {kind_of(out)}, expected a polars DataFrame; {hint}"
            )
        parts.append(out)
    result = concat_strict(parts, f"batch {ctx.batch_id}: the job's results")
    return BatchOutcome(result, dead, items.height)
