"""Process one batch: run the user's job over it, dead-letter what fails, publish the result.

What happens to a failure depends on its category (see ``errors``):

- transient errors are retried in place with exponential backoff and full jitter (``retry``);
- resource errors (MemoryError) fail the attempt as retryable, so Snakemake resubmits it
  with escalated resources;
- permanent errors dead-letter the item (``item_mode``), or, in batch mode, make the
  framework bisect the batch until the failing items are isolated and dead-lettered while
  the rest is kept (``batch_mode``).

A batch whose dead-lettered fraction exceeds ``tolerance.max_dead_letter_fraction`` fails
permanently (``dead_letter``). Before the commit the result is held to the run's output
contract (``output_contract``). The outputs (result, dead letters, record) are written under
temporary names and published only after the state store accepted the commit, so an
attempt that lost the task to a newer one never publishes anything.

With ``chunks:`` configured the batch is worked through in chunks that are persisted as
they finish, and a retried attempt resumes after the last intact one (see ``chunks``).
With ``faults.enabled`` the seeded faults of ``faults`` are injected around the job calls.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import polars as pl

from orchestrator_ext import row_ranges
from orchestrator_ext.batch_mode import run_batch_mode
from orchestrator_ext.chunks import (
    ChunkStore,
    batch_slice_size,
    chunks_key,
    enabled,
    note_resume,
)
from orchestrator_ext.config import RunConfig
from orchestrator_ext.dead_letter import (
    check_tolerance,
    count_by_category,
    dead_letter_frame,
    publish_dead_letters,
)
from orchestrator_ext.errors import InputError, StateConflict
from orchestrator_ext.faults import injector_for
from orchestrator_ext.item_mode import run_item_mode
from orchestrator_ext.job import job_context, load_callable
from orchestrator_ext.layout import RunLayout
from orchestrator_ext.output_contract import check_output_contract
from orchestrator_ext.output_schema import (
    concat_item_frames,
    concat_strict,
    schema_of,
    schema_pairs,
)
from orchestrator_ext.runner import BatchOutcome, JobCall
from orchestrator_ext.state import Attempt, StateStore, current_host
from orchestrator_ext.storage import atomic_path, file_facts, read_json, verify_checksum, write_json
from orchestrator_ext.task import batch_id
from orchestrator_ext.workers import ItemCalls

logger = logging.getLogger(__name__)


def process_batch(
    config: RunConfig,
    store: StateStore,
    batch: str,
    batch_file: str | None,
    plan_file: str,
    result_file: str,
    dead_letter_uri: str,
    record_file: str,
    uris: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run the job over one batch and publish its result, dead letters (if any) and record.

    Args:
        config: the run config.
        store: the run's state store.
        batch: zero-padded batch number.
        batch_file: the batch's items (Parquet); None when the plan names them as row
            ranges of the input (``batching.row_ranges``).
        plan_file: the run's ``plan.json``; the batch file is refused if its sha256 is not
            the one the plan recorded for the batch (``read_batch``).
        result_file, record_file: where to publish (Snakemake outputs: local paths).
        dead_letter_uri: where the dead letters go if there are any: a path, or an
            ``s3://`` URI this job uploads to (``publish_dead_letters``).
        uris: logical locations to record (e.g. ``s3://``) instead of the local paths.

    Returns:
        The batch record.

    Raises:
        BatchFailed: too many items were dead-lettered (permanent).
        SchemaMismatch, RowsMismatch: the result breaks the output contract (permanent;
            ``check_output_contract``); nothing was published.
        StateConflict: another attempt holds the batch; nothing was published.
    """
    uris = uris or {}
    host = current_host()
    with store.attempt_scope(batch_id(int(batch)), host) as attempt:
        started = time.monotonic()
        items, batch_sha256 = read_batch(config, plan_file, batch, batch_file)
        chunks = _open_chunks(config, store, attempt, batch, items, batch_sha256)
        outcome = _run_job(config, store, attempt, batch, items, chunks)
        n_items, n_dead = items.height, len(outcome.dead)
        check_tolerance(batch, n_items, outcome.dead, config.max_dead_letter_fraction)
        result = check_output_contract(config, store, batch, items, outcome)
        dead = dead_letter_frame(outcome.dead, items.schema[config.input.id_column])
        # Context managers exit in reverse, so the record is renamed into place last.
        with (
            atomic_path(record_file) as tmp_record,
            publish_dead_letters(dead, dead_letter_uri, attempt.attempt > 1) as dead_facts,
            atomic_path(result_file) as tmp_result,
        ):
            result.write_parquet(tmp_result, compression="zstd", statistics=True)
            facts = file_facts(tmp_result)
            record = {
                "batch_id": batch,
                "items": n_items,
                "items_processed": n_items - n_dead,
                "items_dead_lettered": n_dead,
                "dead_letter_by_category": count_by_category(outcome.dead),
                "uri": uris.get("result", result_file),
                "rows": result.height,
                "rows_out": result.height,
                "schema": schema_pairs(schema_of(result)),
                **facts,
                "dead_letter": dead_facts,
                "attempts": attempt.attempt,
                "duration_s": round(time.monotonic() - started, 3),
                "host": host,
                "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            }
            if chunks is not None:
                record["chunks"] = {
                    "count": len(chunks.chunks),
                    "items_by_attempt": chunks.items_by_attempt(),
                }
            write_json(tmp_record, record)
            # Commit before publishing: a lost race raises here and the temporaries vanish.
            try:
                store.succeed(
                    attempt, facts["sha256"], items=n_items, items_done=n_items, items_dead=n_dead
                )
            except StateConflict as exc:
                logger.warning(
                    "batch %s: attempt %d lost the race, publishing nothing: %s",
                    batch, attempt.attempt, exc,
                )  # fmt: skip
                raise
    if chunks is not None:
        # The batch committed: its chunks are no longer needed. An older attempt still
        # running may write one into the folder meanwhile ("Directory not empty"): the
        # commit stands, and a leftover chunk holds the same items under the same key.
        try:
            chunks.clear()
        except OSError as exc:
            logger.warning("batch %s: its chunks were not all removed: %s", batch, exc)
    logger.info("batch %s: %d items, %d dead, %d rows", batch, n_items, n_dead, record["rows"])
    return record


def read_batch(
    config: RunConfig, plan_file: str, batch: str, batch_file: str | None
) -> tuple[pl.DataFrame, str]:
    """The batch's items and the checksum they are known by: its copy, refused unless its
    sha256 is the plan's, or its row ranges of the input (``row_ranges.read``).

    Raises:
        ChecksumMismatch, MissingOutput: the copy changed or is gone. InputError: an
            input file of the ranges changed, or the plan has no copy for ``batch_file``.
    """
    plan = read_json(plan_file)
    entry = plan["batches"][int(batch)]
    if "ranges" in entry:
        return row_ranges.read(config.input, plan, entry), entry["sha256"]
    if not batch_file:
        raise InputError(
            f"batch {batch}: the plan {plan_file} has a batch file for it, and none was "
            "given; the plan was made without batching.row_ranges: run again to partition anew"
        )
    verify_checksum(batch_file, entry["sha256"], f"batch {batch} input")
    return pl.read_parquet(batch_file), entry["sha256"]


def _run_job(
    config: RunConfig,
    store: StateStore,
    attempt: Attempt,
    batch: str,
    items: pl.DataFrame,
    chunks: ChunkStore | None,
) -> BatchOutcome:
    """The job's outcome over the batch: in chunks when they are configured, else whole."""
    fn = load_callable(config.job.function)
    faults = injector_for(config.faults, batch, attempt.attempt)
    job = config.job
    with (
        job_context(config.run_id, batch, attempt.attempt, job.params, job.workers) as ctx,
        ItemCalls(fn, ctx, config.input.id_column, faults, job.workers, job.pool) as items_on,
    ):
        call = JobCall(fn, ctx, config.input.id_column, config.retry, faults, items_on)
        if chunks is not None:
            return _run_in_chunks(config, store, attempt, items, call, chunks)
        if job.mode == "item":
            return run_item_mode(items, call, max_dead_fraction=config.max_dead_letter_fraction)
        return run_batch_mode(items, call, max_dead_fraction=config.max_dead_letter_fraction)


def _open_chunks(
    config: RunConfig,
    store: StateStore,
    attempt: Attempt,
    batch: str,
    items: pl.DataFrame,
    batch_sha256: str,
) -> ChunkStore | None:
    """The batch's chunks (resumed if intact), or None when chunks are not configured."""
    if not enabled(config.chunks):
        return None
    key = chunks_key(config, batch_sha256)
    chunks = ChunkStore(RunLayout(config.run_dir).chunks(batch), key, batch)
    if chunks.resume():
        note_resume(store, attempt, chunks, items.height)
    return chunks


def _run_in_chunks(
    config: RunConfig,
    store: StateStore,
    attempt: Attempt,
    items: pl.DataFrame,
    call: JobCall,
    chunks: ChunkStore,
) -> BatchOutcome:
    """Work through the batch from the last persisted chunk on, persisting each chunk and
    recording progress; the outcome is assembled from all chunks (see ``chunks``)."""
    spec, batch = config.chunks, call.ctx.batch_id
    id_dtype = items.schema[call.id_column]
    position = chunks.items_done
    # The dead letters of chunks persisted by earlier attempts count against the tolerance
    # that stops the batch early (bisection, or items), as they do in the final check.
    dead_so_far = chunks.dead_letters()
    while position < items.height:
        started = time.monotonic()
        if config.job.mode == "item":
            deadline = started + spec.every_seconds if spec.every_seconds is not None else None
            part = run_item_mode(
                items.slice(position, spec.every_items or items.height), call,
                start=position, deadline=deadline,
                max_dead_fraction=config.max_dead_letter_fraction,
                batch_items=items.height, dead_before=dead_so_far,
            )  # fmt: skip
            results, dead, end = [part.result], part.dead, position + (part.items_done or 0)
        else:
            size, results, dead, end = batch_slice_size(spec), [], [], position
            while end < items.height:
                part = run_batch_mode(
                    items.slice(end, size), call, start=end,
                    max_dead_fraction=config.max_dead_letter_fraction,
                    batch_items=items.height, dead_before=[*dead_so_far, *dead],
                )  # fmt: skip
                results.append(part.result)
                dead += part.dead
                end = min(end + size, items.height)
                if spec.every_items or time.monotonic() - started >= (spec.every_seconds or 0):
                    break
        result = _concat_chunk_results(config, results, batch)
        chunks.save(position, end, result, dead_letter_frame(dead, id_dtype), attempt.attempt)
        store.record_progress(attempt, end)
        dead_so_far += dead
        position = end
    result = _concat_chunk_results(config, chunks.results(), batch).rechunk()
    return BatchOutcome(result, chunks.dead_letters(), items.height)


def _concat_chunk_results(config: RunConfig, parts: list[pl.DataFrame], batch: str) -> pl.DataFrame:
    """The chunks' results as one frame: item mode as if built from all rows at once (a key
    missing or only None in a chunk is null there), batch mode strictly; never cast."""
    if not parts:
        return pl.DataFrame()
    if config.job.mode == "item":
        return concat_item_frames(parts, f"batch {batch}: result")
    return concat_strict(parts, f"batch {batch}: the job's results")
