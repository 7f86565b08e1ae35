"""Process one batch: run the user's job over it, dead-letter what fails, publish the result.

What happens to a failure depends on its category (see ``errors``):

- transient errors are retried in place with exponential backoff and full jitter;
- resource errors (MemoryError) fail the attempt as retryable, so Snakemake resubmits it
  with escalated resources;
- permanent errors dead-letter the item (item mode), or, in batch mode, make the framework
  bisect the batch until the failing items are isolated and dead-lettered while the rest is
  kept.

A batch whose dead-lettered fraction exceeds ``tolerance.max_dead_letter_fraction`` fails
permanently. The outputs (result, dead letters, record) are written under temporary names
and published only after the state store accepted the commit, so an attempt that lost the
lease to a newer one never publishes anything. Dead letters are published only when there
are some (most batches have none), and not as a Snakemake output: the job writes them itself,
to the run folder or to S3, and the record names them (``"dead_letter": null`` when none).
In S3 that saves three requests per batch (an upload and two existence checks).

With ``checkpoint:`` configured the batch is worked through in chunks that are persisted as
they finish, and a retried attempt resumes after the last intact one (see ``checkpoint``).
With ``faults.enabled`` the seeded faults of ``faults`` are injected around the job calls.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from orchestrator_ext import checkpoint, s3
from orchestrator_ext.config import RetrySpec, RunConfig
from orchestrator_ext.errors import BatchFailed, Category, StateConflict, classify, describe
from orchestrator_ext.faults import FaultInjector, injector_for
from orchestrator_ext.job import JobContext, job_context, load_callable
from orchestrator_ext.layout import task_id_for_batch
from orchestrator_ext.state import Attempt, StateStore, current_host
from orchestrator_ext.storage import (
    atomic_path,
    file_facts,
    read_json,
    sha256_file,
    verify_checksum,
    write_json,
)

logger = logging.getLogger(__name__)

DEAD_LETTER_COLUMNS = ["category", "error_type", "message", "attempt"]


@dataclass
class BatchOutcome:
    """What the job made of one batch."""

    result: pl.DataFrame
    dead: list[dict[str, Any]] = field(default_factory=list)
    #: Items worked through (item mode may stop early at a checkpoint ``deadline``).
    items_done: int | None = None


def transient_retrying(spec: RetrySpec, tried: int = 0) -> Retrying:
    """A tenacity policy retrying transient errors only, with full-jitter backoff.

    ``tried``: attempts already made before this policy takes over; it makes the rest, up to
    ``spec.max_attempts`` in all, on the same backoff schedule.
    """

    def _log(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        logger.info("transient error, retry %d: %s", tried + state.attempt_number, describe(exc))

    return Retrying(
        retry=retry_if_exception(lambda exc: classify(exc) is Category.TRANSIENT),
        stop=stop_after_attempt(max(1, spec.max_attempts - tried)),
        wait=wait_random_exponential(
            multiplier=spec.initial_delay_s * 2**tried, max=spec.max_delay_s
        ),
        before_sleep=_log,
        reraise=True,
    )


class RetryingCall:
    """Calls a job function, retrying transient errors as ``transient_retrying`` does.

    The first attempt calls the function directly; tenacity takes over after a transient
    failure. Entering tenacity for every call costs about 9 us, which is several percent of
    a short item job (docs/benchmarks.md).
    """

    def __init__(self, spec: RetrySpec) -> None:
        self.spec = spec
        self.rest = transient_retrying(spec, tried=1)

    def __call__(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as exc:
            if classify(exc) is not Category.TRANSIENT or self.spec.max_attempts <= 1:
                raise
            # Attempt 1's full-jitter wait, as tenacity would have slept it.
            delay = random.uniform(0, min(self.spec.initial_delay_s, self.spec.max_delay_s))
            logger.info("transient error, retry 1: %s", describe(exc))
            time.sleep(delay)
        return self.rest(fn, *args)


def _dead_letter(item_id: Any, exc: BaseException, attempt: int) -> dict[str, Any]:
    # A transient error that outlived its retries is dead-lettered as such: a redrive may fix it.
    return {
        "id": item_id,
        "category": str(classify(exc)),
        "error_type": type(exc).__name__,
        "message": describe(exc)[:1000],
        "attempt": attempt,
    }


def run_item_mode(
    items: pl.DataFrame,
    fn: Callable[..., Any],
    ctx: JobContext,
    id_column: str,
    retry: RetrySpec,
    faults: FaultInjector | None = None,
    start: int = 0,
    deadline: float | None = None,
) -> BatchOutcome:
    """Call ``fn`` per item; collect returned rows and dead-letter permanent failures.

    Args:
        faults: injected faults, if enabled.
        start: position of ``items``' first row in the batch (for ``faults``).
        deadline: ``time.monotonic()`` value after which to stop (at least one item is
            done); ``items_done`` of the outcome says how far it got.

    Raises:
        MemoryError: a resource error aborts the batch (it is retried with more memory).
    """
    rows: list[dict[str, Any]] = []
    dead: list[dict[str, Any]] = []
    policy = RetryingCall(retry)
    call = faults.wrap_item(fn, id_column) if faults else fn
    done = 0
    for item in items.iter_rows(named=True):
        if done and deadline is not None and time.monotonic() >= deadline:
            break
        if faults:
            faults.before_step(start + done)
        done += 1
        try:
            produced = policy(call, item, ctx)
        except Exception as exc:
            if classify(exc) is Category.RESOURCE:
                raise
            dead.append(_dead_letter(item[id_column], exc, ctx.attempt))
            continue
        if produced is None:
            continue
        rows.extend(produced if isinstance(produced, list) else [produced])
    result = pl.DataFrame(rows, infer_schema_length=None) if rows else pl.DataFrame()
    return BatchOutcome(result, dead, done)


def run_batch_mode(
    items: pl.DataFrame,
    fn: Callable[..., Any],
    ctx: JobContext,
    id_column: str,
    retry: RetrySpec,
    faults: FaultInjector | None = None,
    start: int = 0,
) -> BatchOutcome:
    """Call ``fn`` on the whole batch; on a permanent error, bisect to isolate bad items.

    ``faults`` (if enabled) are injected around every call; ``start`` is the position of
    ``items``' first row in the batch.
    """
    policy = RetryingCall(retry)
    if faults:
        faults.before_step(start, items.height)
        fn = faults.wrap_batch(fn, id_column)
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
                dead.append(_dead_letter(chunk.item(0, id_column), exc, ctx.attempt))
                continue
            logger.info("bisecting %d items after %s", chunk.height, describe(exc))
            half = chunk.height // 2
            # Pushed in reverse so the first half is processed first: output stays in order.
            pending += [chunk.slice(half), chunk.slice(0, half)]
            continue
        if not isinstance(out, pl.DataFrame):
            raise TypeError(f"job returned {type(out).__name__}, expected a polars DataFrame")
        parts.append(out)
    result = pl.concat(parts, how="diagonal_relaxed") if parts else pl.DataFrame()
    return BatchOutcome(result, dead, items.height)


def dead_letter_frame(dead: list[dict[str, Any]], id_dtype: pl.DataType) -> pl.DataFrame:
    """The dead-letter table: id (the input's id type), category, error type, message, attempt."""
    schema = {
        "id": id_dtype,
        "category": pl.String,
        "error_type": pl.String,
        "message": pl.String,
        "attempt": pl.Int64,
    }
    return pl.DataFrame(dead, schema=schema)


@contextlib.contextmanager
def publish_dead_letters(dead: pl.DataFrame, uri: str) -> Iterator[dict[str, Any] | None]:
    """Write a batch's dead letters, to be published at ``uri`` when the block succeeds.

    Yields their record entry (uri, sha256, bytes), or None when there are none: then
    nothing is written, and a local file an earlier attempt left at ``uri`` is removed, so
    the folder agrees with the record. An ``s3://`` URI is uploaded by this process (with
    server-side encryption) once the block is through; there the record, not the prefix,
    says which object counts.
    """
    if dead.is_empty():
        yield None
        if not s3.is_s3_uri(uri):
            Path(uri).unlink(missing_ok=True)
        return
    if s3.is_s3_uri(uri):
        with tempfile.TemporaryDirectory(prefix="dead-letter-") as folder:
            tmp = Path(folder) / "dead_letter.parquet"
            dead.write_parquet(tmp, compression="zstd", statistics=True)
            yield {"uri": uri, **file_facts(tmp)}
            s3.upload_file(s3.make_s3_client(), tmp, uri)
        return
    with atomic_path(uri) as tmp:
        dead.write_parquet(tmp, compression="zstd", statistics=True)
        yield {"uri": uri, **file_facts(tmp)}


def process_batch(
    config: RunConfig,
    store: StateStore,
    batch: str,
    batch_file: str,
    batch_sha256: str | None,
    result_file: str,
    dead_letter_uri: str,
    record_file: str,
    uris: dict[str, str] | None = None,
    plan_file: str | None = None,
) -> dict[str, Any]:
    """Run the job over one batch and publish its result, dead letters (if any) and record.

    Args:
        config: the run config.
        store: the run's state store.
        batch: zero-padded batch number.
        batch_file: the batch's items (Parquet).
        batch_sha256: checksum from the plan; the batch file is refused if it differs.
        plan_file: ``plan.json`` to take ``batch_sha256`` from when it is not given.
        result_file, record_file: where to publish (Snakemake outputs: local paths).
        dead_letter_uri: where the dead letters go if there are any: a path, or an
            ``s3://`` URI this job uploads to (``publish_dead_letters``).
        uris: logical locations to record (e.g. ``s3://``) instead of the local paths.

    Returns:
        The batch record.

    Raises:
        BatchFailed: too many items were dead-lettered (permanent).
        StateConflict: another attempt holds the batch; nothing was published.
    """
    uris = uris or {}
    host = current_host()
    with store.attempt_scope(task_id_for_batch(int(batch)), host) as lease:
        started = time.monotonic()
        if batch_sha256 is None and plan_file is not None:
            batch_sha256 = read_json(plan_file)["batches"][int(batch)]["sha256"]
        if batch_sha256:
            verify_checksum(batch_file, batch_sha256, f"batch {batch} input")
        items = pl.read_parquet(batch_file)
        chunks = _open_chunks(
            config, store, lease, batch, items, batch_file, batch_sha256, result_file
        )
        outcome = _run_job(config, items, batch, lease.attempt, store, lease, chunks)
        n_items, n_dead = items.height, len(outcome.dead)
        check_tolerance(batch, n_items, outcome.dead, config.max_dead_letter_fraction)
        dead = dead_letter_frame(outcome.dead, items.schema[config.input.id_column])
        # Context managers exit in reverse, so the record is renamed into place last.
        with (
            atomic_path(record_file) as tmp_record,
            publish_dead_letters(dead, dead_letter_uri) as dead_facts,
            atomic_path(result_file) as tmp_result,
        ):
            outcome.result.write_parquet(tmp_result, compression="zstd", statistics=True)
            facts = file_facts(tmp_result)
            record = {
                "batch_id": batch,
                "items": n_items,
                "items_processed": n_items - n_dead,
                "items_dead_lettered": n_dead,
                "dead_letter_by_category": _count_by(outcome.dead, "category"),
                "uri": uris.get("result", result_file),
                "rows": outcome.result.height,
                **facts,
                "dead_letter": dead_facts,
                "attempts": lease.attempt,
                "duration_s": round(time.monotonic() - started, 3),
                "host": host,
                "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            }
            if chunks is not None:
                record["checkpoint"] = {
                    "chunks": len(chunks.chunks),
                    "items_by_attempt": chunks.items_by_attempt(),
                }
            write_json(tmp_record, record)
            # Commit before publishing: a lost race raises here and the temporaries vanish.
            try:
                store.succeed(
                    lease, facts["sha256"], items=n_items, items_done=n_items, items_dead=n_dead
                )
            except StateConflict as exc:
                logger.warning(
                    "batch %s: attempt %d lost the race, publishing nothing: %s",
                    batch, lease.attempt, exc,
                )  # fmt: skip
                raise
    if chunks is not None:
        chunks.clear()  # the batch committed: its chunks are no longer needed
    logger.info("batch %s: %d items, %d dead, %d rows", batch, n_items, n_dead, record["rows"])
    return record


def _run_job(
    config: RunConfig,
    items: pl.DataFrame,
    batch: str,
    attempt: int,
    store: StateStore | None = None,
    lease: Attempt | None = None,
    chunks: checkpoint.ChunkStore | None = None,
) -> BatchOutcome:
    fn = load_callable(config.job.function)
    faults = injector_for(config.faults, batch, attempt)
    with job_context(config.run_id, batch, attempt, config.job.params) as ctx:
        if chunks is not None and store is not None and lease is not None:
            return _run_in_chunks(config, items, fn, ctx, faults, chunks, store, lease)
        runner = run_item_mode if config.job.mode == "item" else run_batch_mode
        return runner(items, fn, ctx, config.input.id_column, config.retry, faults)


def _open_chunks(
    config: RunConfig,
    store: StateStore,
    lease: Attempt,
    batch: str,
    items: pl.DataFrame,
    batch_file: str,
    batch_sha256: str | None,
    result_file: str,
) -> checkpoint.ChunkStore | None:
    """The batch's checkpoint chunks (resumed if intact), or None without checkpoints."""
    if not checkpoint.enabled(config.checkpoint):
        return None
    key = checkpoint.checkpoint_key(config, batch_sha256 or sha256_file(batch_file))
    chunks = checkpoint.ChunkStore(checkpoint.checkpoint_dir(result_file, batch), key, batch)
    if chunks.resume():
        checkpoint.note_resume(store, lease, chunks, items.height)
    return chunks


def _run_in_chunks(
    config: RunConfig,
    items: pl.DataFrame,
    fn: Callable[..., Any],
    ctx: JobContext,
    faults: FaultInjector | None,
    chunks: checkpoint.ChunkStore,
    store: StateStore,
    lease: Attempt,
) -> BatchOutcome:
    """Work through the batch from the last persisted chunk on, persisting each chunk and
    recording progress; the outcome is assembled from all chunks (see ``checkpoint``)."""
    spec, id_column = config.checkpoint, config.input.id_column
    id_dtype = items.schema[id_column]
    position = chunks.items_done
    while position < items.height:
        started = time.monotonic()
        if config.job.mode == "item":
            deadline = started + spec.every_seconds if spec.every_seconds is not None else None
            part = run_item_mode(
                items.slice(position, spec.every_items or items.height), fn, ctx, id_column,
                config.retry, faults, start=position, deadline=deadline,
            )  # fmt: skip
            results, dead, end = [part.result], part.dead, position + (part.items_done or 0)
        else:
            size, results, dead, end = checkpoint.batch_slice_size(spec), [], [], position
            while end < items.height:
                part = run_batch_mode(
                    items.slice(end, size), fn, ctx, id_column, config.retry, faults, start=end
                )
                results.append(part.result)
                dead += part.dead
                end = min(end + size, items.height)
                if spec.every_items or time.monotonic() - started >= (spec.every_seconds or 0):
                    break
        result = pl.concat(results, how="diagonal_relaxed")
        chunks.save(position, end, result, dead_letter_frame(dead, id_dtype), lease.attempt)
        store.record_progress(lease, end)
        position = end
    result, dead_rows = chunks.combined()
    return BatchOutcome(result, dead_rows, items.height)


def check_tolerance(
    batch: str, n_items: int, dead: list[dict[str, Any]], max_fraction: float
) -> None:
    """Fail the batch when its dead-lettered fraction exceeds the tolerance.

    Raises:
        BatchFailed: naming the counts, the tolerance and the first failure.
    """
    if not n_items or len(dead) / n_items <= max_fraction:
        return
    first = dead[0]
    raise BatchFailed(
        f"batch {batch}: {len(dead)} of {n_items} items failed "
        f"({len(dead) / n_items:.1%} > tolerance {max_fraction:.1%}); "
        f"first: id {first['id']}: {first['message']}"
    )


def _count_by(rows: list[dict[str, Any]], key: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row[key]] = counts.get(row[key], 0) + 1
    return dict(sorted(counts.items()))
