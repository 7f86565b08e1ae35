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

Before the commit the result is held to the run's output contract (``check_output_contract``):
its schema must equal the run's, the one ``job.output_schema`` declares or else the one the
first batch to commit recorded in the state store (``StateStore.claim_fact``), and with
``job.rows: per_item`` it must hold exactly one row per processed item, with the item's id.
A batch that breaks it fails permanently and publishes nothing; nothing is ever cast.

With ``checkpoint:`` configured the batch is worked through in chunks that are persisted as
they finish, and a retried attempt resumes after the last intact one (see ``checkpoint``).
With ``faults.enabled`` the seeded faults of ``faults`` are injected around the job calls.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
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
from orchestrator_ext.config import RetrySpec, RunConfig, polars_dtype
from orchestrator_ext.errors import (
    BatchFailed,
    Category,
    RowsMismatch,
    SchemaMismatch,
    StateConflict,
    WrongReturnType,
    classify,
    describe,
)
from orchestrator_ext.faults import FaultInjector, injector_for
from orchestrator_ext.job import JobContext, job_context, load_callable
from orchestrator_ext.layout import task_id_for_batch
from orchestrator_ext.state import FACT_OUTPUT_SCHEMA, Attempt, StateStore, current_host
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

    A return other than a dict (one row), a list of dicts or None (no row) dead-letters
    the item as a permanent ``TypeError``.

    Raises:
        MemoryError: a resource error aborts the batch (it is retried with more memory).
    """
    rows: list[dict[str, Any]] = []
    dead: list[dict[str, Any]] = []
    policy = RetryingCall(retry)
    call = faults.wrap_item(fn, id_column) if faults else fn
    done = 0
    # key -> (Python type, item id, value) of its first non-None value: polars would make
    # a String column of ints and strs, so a second type is the batch's error instead.
    kinds: dict[str, tuple[type, Any, Any]] = {}
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
        try:
            produced_rows = _item_rows(produced)
        except TypeError as exc:
            # The job's code is wrong for this item, whatever the config's error rules say
            # about TypeError: retrying returns the same, so it is permanent.
            letter = _dead_letter(item[id_column], exc, ctx.attempt)
            dead.append({**letter, "category": str(Category.PERMANENT)})
            continue
        _check_kinds(produced_rows, kinds, item[id_column], ctx.batch_id)
        rows.extend(produced_rows)
    result = pl.DataFrame(rows, infer_schema_length=None) if rows else pl.DataFrame()
    # polars infers a dtype from the Python values of this batch alone (a UInt64 id comes
    # back Int64, or Int128 when above 2**63-1, which pyarrow cannot read at the merge):
    # a returned input column gets the input's dtype back, so every batch has one schema.
    result = _with_input_dtypes(result, items.schema, id_column, f"batch {ctx.batch_id}: result")
    return BatchOutcome(result, dead, done)


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
                    f"batch {batch}: result key {key!r} is {_kind_of(seen[2])} for item "
                    f"{seen[1]!r} ({_short_repr(seen[2])}) but {_kind_of(value)} for item "
                    f"{item_id!r} ({_short_repr(value)}); return one type per key in every "
                    "row (it is not converted)"
                )


def _kind_of(value: Any) -> str:
    """``int``, ``str``, ``pandas.DataFrame``: a value's type, with the package if not builtin."""
    if value is None:
        return "None"
    kind = type(value)
    package = kind.__module__.split(".")[0]
    return kind.__qualname__ if package == "builtins" else f"{package}.{kind.__qualname__}"


def _item_rows(produced: Any) -> list[dict[str, Any]]:
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
                    f"job returned a list holding {_kind_of(row)} at position {position} "
                    f"({_short_repr(row)}), {expected}; return each row as a dict"
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
        f"job returned {_kind_of(produced)} ({_short_repr(produced)}), {expected}; {hint}"
    )


def _short_repr(value: Any) -> str:
    """A one-line repr of at most 60 characters; a frame or array by its shape."""
    shape = getattr(value, "shape", None)
    if isinstance(shape, tuple):
        return f"shape {shape}"
    text = " ".join(repr(value).split())
    return text if len(text) <= 60 else text[:57] + "..."


def _with_input_dtypes(
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
        if not _same_kind(inferred, target):
            if name != id_column:
                continue
            sample = ", ".join(repr(v) for v in values.drop_nulls().head(3).to_list())
            raise TypeError(
                f"{where} column {name!r} holds {inferred} values (e.g. {sample}), but the "
                f"input's ids are {target}; return each item's id as the item holds it"
            )
        try:
            columns.append(_exactly_as(values, target, where))
        except ValueError:
            # New values under an input column's name (a rescaled Float32, say) are the
            # job's own; only the ids must come back exactly as the input holds them.
            if name == id_column:
                raise
    return frame.with_columns(columns) if columns else frame


def _same_kind(inferred: pl.DataType, target: pl.DataType) -> bool:
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


def _exactly_as(values: pl.Series, target: pl.DataType, where: str) -> pl.Series:
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


def run_batch_mode(
    items: pl.DataFrame,
    fn: Callable[..., Any],
    ctx: JobContext,
    id_column: str,
    retry: RetrySpec,
    faults: FaultInjector | None = None,
    start: int = 0,
    max_dead_fraction: float | None = None,
    batch_items: int | None = None,
    dead_before: Sequence[dict[str, Any]] = (),
) -> BatchOutcome:
    """Call ``fn`` on the whole batch; on a permanent error, bisect to isolate bad items.

    ``faults`` (if enabled) are injected around every call; ``start`` is the position of
    ``items``' first row in the batch.

    Args:
        max_dead_fraction: the batch's tolerance; bisection stops as soon as the batch's
            dead letters (``dead_before`` and this call's) exceed it. None: isolate all.
        batch_items: the whole batch's size (``items`` may be a slice of it); default
            ``items.height``.
        dead_before: the batch's dead letters from earlier slices (checkpoint chunks).

    Raises:
        BatchFailed: the tolerance is exceeded (``check_tolerance``'s error, permanent).
        TypeError: the job returned something other than a polars DataFrame.
    """
    n_batch = batch_items if batch_items is not None else items.height
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
            elif _kind_of(out).startswith("pandas."):
                hint = "convert it with polars.from_pandas()"
            else:
                hint = "convert it with polars.DataFrame()"
            raise WrongReturnType(
                f"job returned {_kind_of(out)}, expected a polars DataFrame; {hint}"
            )
        parts.append(out)
    result = concat_strict(parts, f"batch {ctx.batch_id}: the job's results")
    return BatchOutcome(result, dead, items.height)


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
    return _with_input_dtypes(frame, {"id": id_dtype}, "id", "dead-letter")


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
        SchemaMismatch, RowsMismatch: the result breaks the output contract (permanent;
            ``check_output_contract``); nothing was published.
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
        result = check_output_contract(config, store, batch, items, outcome)
        dead = dead_letter_frame(outcome.dead, items.schema[config.input.id_column])
        # Context managers exit in reverse, so the record is renamed into place last.
        with (
            atomic_path(record_file) as tmp_record,
            publish_dead_letters(dead, dead_letter_uri) as dead_facts,
            atomic_path(result_file) as tmp_result,
        ):
            result.write_parquet(tmp_result, compression="zstd", statistics=True)
            facts = file_facts(tmp_result)
            record = {
                "batch_id": batch,
                "items": n_items,
                "items_processed": n_items - n_dead,
                "items_dead_lettered": n_dead,
                "dead_letter_by_category": _count_by(outcome.dead, "category"),
                "uri": uris.get("result", result_file),
                "rows": result.height,
                "rows_out": result.height,
                "schema": schema_pairs(schema_of(result)),
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
        if config.job.mode == "item":
            return run_item_mode(items, fn, ctx, config.input.id_column, config.retry, faults)
        return run_batch_mode(
            items, fn, ctx, config.input.id_column, config.retry, faults,
            max_dead_fraction=config.max_dead_letter_fraction,
        )  # fmt: skip


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
    # The dead letters of chunks persisted by earlier attempts count against the tolerance
    # that stops bisection early (batch mode), as they do in process_batch's final check.
    dead_so_far = _persisted_dead(chunks)
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
                    items.slice(end, size), fn, ctx, id_column, config.retry, faults, start=end,
                    max_dead_fraction=config.max_dead_letter_fraction,
                    batch_items=items.height, dead_before=[*dead_so_far, *dead],
                )  # fmt: skip
                results.append(part.result)
                dead += part.dead
                end = min(end + size, items.height)
                if spec.every_items or time.monotonic() - started >= (spec.every_seconds or 0):
                    break
        result = _concat_chunk_results(config, results, ctx.batch_id)
        chunks.save(position, end, result, dead_letter_frame(dead, id_dtype), lease.attempt)
        store.record_progress(lease, end)
        dead_so_far += dead
        position = end
    # Not chunks.combined(): it concatenates "relaxed", casting chunks of other types.
    parts = [pl.read_parquet(io.BytesIO(c.result_bytes)) for c in chunks.chunks]
    result = _concat_chunk_results(config, parts, ctx.batch_id).rechunk()
    return BatchOutcome(result, _persisted_dead(chunks), items.height)


def _concat_chunk_results(config: RunConfig, parts: list[pl.DataFrame], batch: str) -> pl.DataFrame:
    """The chunks' results as one frame: item mode as if built from all rows at once (a key
    missing or only None in a chunk is null there), batch mode strictly; never cast."""
    if not parts:
        return pl.DataFrame()
    if config.job.mode == "item":
        return _concat_item_frames(parts, f"batch {batch}: result")
    return concat_strict(parts, f"batch {batch}: the job's results")


def _persisted_dead(chunks: checkpoint.ChunkStore) -> list[dict[str, Any]]:
    """The dead letters of the chunks held, read from their Parquet bytes."""
    return [
        row
        for chunk in chunks.chunks
        if chunk.dead
        for row in pl.read_parquet(io.BytesIO(chunk.dead_bytes)).to_dicts()
    ]


# -- the output contract ----------------------------------------------------------------

DECLARED = "declared in job.output_schema"
RECORDED = "recorded from the first committed batch"


def dtype_name(dtype: pl.DataType) -> str:
    """A polars dtype's canonical name, as ``config.canonical_dtype`` spells the names that
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


def _listed(diffs: list[str], most: int = 3) -> str:
    more = f"; and {len(diffs) - most} more" if len(diffs) > most else ""
    return "; ".join(diffs[:most]) + more


def run_output_schema(config: RunConfig, store: StateStore) -> tuple[dict[str, str] | None, str]:
    """The run's output schema and where it comes from: ``job.output_schema``, else the
    one recorded in the state store (None while no batch has committed)."""
    if config.job.output_schema is not None:
        return dict(config.job.output_schema), DECLARED
    recorded = store.get_fact(FACT_OUTPUT_SCHEMA)
    if recorded is None:
        return None, RECORDED
    return {name: dtype for name, dtype in json.loads(recorded)}, RECORDED


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
                f"{where} differ: in part {index}, {_listed(diffs)}; every call of the job "
                "must return the same columns and types"
            )
    columns = list(first)
    return pl.concat([f.select(columns) for f in kept], how="vertical")


def _concat_item_frames(frames: list[pl.DataFrame], where: str) -> pl.DataFrame:
    """Item-mode frames (built from rows) as one, as if built from all their rows at once:
    a column a frame lacks, or holds only nulls of (Null), is null there; other types must
    agree. Never casts a value."""
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


def _typed_as(frame: pl.DataFrame, schema: dict[str, str], where: str) -> pl.DataFrame:
    """An item-mode result (its dtypes inferred from Python values) typed as the run's
    schema where that changes no value: a Null column (only None) takes the schema's
    type, an inferred Int64 one the schema's Int32 if every value fits (``_exactly_as``).
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
        elif _same_kind(inferred, target):
            with contextlib.suppress(ValueError):
                columns.append(_exactly_as(values, target, where))
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
            f"{_listed(diffs)}; every batch must return exactly these columns and types, "
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
