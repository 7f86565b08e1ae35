"""Small job functions the unit tests name in config (``jobs_for_tests:<callable>``).

They are real job-API callables: each reads its behaviour from ``ctx.params`` so a test can
steer it through the config alone, as a user would. ``run_in_process`` drives a whole small
run without Snakemake, for tests that need real records and outputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from orchestrator_ext import task
from orchestrator_ext.config import RunConfig
from orchestrator_ext.errors import PermanentError, TransientError
from orchestrator_ext.job import JobContext
from orchestrator_ext.layout import RunLayout, children, level_sizes
from orchestrator_ext.manifest import write_run_manifest
from orchestrator_ext.merge import merge_node
from orchestrator_ext.partition import partition_items
from orchestrator_ext.process import process_batch
from orchestrator_ext.state import StateStore
from orchestrator_ext.state.sqlite import SqliteStateStore


def module_ref(name: str) -> str:
    """``module:callable`` for a function of this module, however pytest imported it."""
    return f"{__name__}:{name}"


def double_batch(batch: pl.DataFrame, ctx: JobContext) -> pl.DataFrame:
    """Batch mode: ``id`` and ``value * 2``; raises PermanentError if a bad id is present."""
    bad = set(ctx.params.get("bad_ids", []))
    present = sorted(bad & set(batch.get_column("id").to_list()))
    if present:
        raise PermanentError(f"bad ids in batch: {present}")
    return batch.select(pl.col("id"), (pl.col("value") * 2).alias("doubled"))


def double_batch_value_error(batch: pl.DataFrame, ctx: JobContext) -> pl.DataFrame:
    """Like ``double_batch`` but fails with a plain ValueError (a bug-like permanent error)."""
    bad = set(ctx.params.get("bad_ids", []))
    if bad & set(batch.get_column("id").to_list()):
        raise ValueError("cannot handle this item")
    return batch.select(pl.col("id"), (pl.col("value") * 2).alias("doubled"))


def double_item(item: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Item mode: ``{id, doubled}``; raises PermanentError for ids in ``params.bad_ids``."""
    if item["id"] in set(ctx.params.get("bad_ids", [])):
        raise PermanentError(f"item {item['id']} is bad")
    return {"id": item["id"], "doubled": item["value"] * 2}


def flaky_batch(batch: pl.DataFrame, ctx: JobContext) -> pl.DataFrame:
    """Raises TransientError on the first ``params.fail_times`` calls, then succeeds.

    Calls are counted in the file ``params.counter`` so the count survives across calls.
    """
    counter = Path(ctx.params["counter"])
    calls = int(counter.read_text()) + 1 if counter.exists() else 1
    counter.write_text(str(calls))
    if calls <= int(ctx.params["fail_times"]):
        raise TransientError(f"service throttled (call {calls})")
    return batch.select(pl.col("id"), (pl.col("value") * 2).alias("doubled"))


def out_of_memory(batch: pl.DataFrame, ctx: JobContext) -> pl.DataFrame:
    """Always raises MemoryError (a resource failure)."""
    raise MemoryError("cannot allocate 64 GiB")


def stolen_lease(batch: pl.DataFrame, ctx: JobContext) -> pl.DataFrame:
    """Succeeds, but first lets a newer attempt take this batch's lease in the state store.

    Simulates a resubmitted attempt that started while this one was still running.
    """
    store = SqliteStateStore(ctx.params["state_path"], ctx.run_id)
    try:
        store.begin_attempt(f"batch-{ctx.batch_id}", host="other-node")
    finally:
        store.close()
    return batch.select(pl.col("id"), (pl.col("value") * 2).alias("doubled"))


def flaky_item(item: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Item mode: the first ``params.fail_times`` calls (over all items) raise TransientError."""
    counter = Path(ctx.params["counter"])
    calls = int(counter.read_text()) + 1 if counter.exists() else 1
    counter.write_text(str(calls))
    if calls <= int(ctx.params["fail_times"]):
        raise TransientError(f"connection reset (call {calls})")
    return {"id": item["id"], "doubled": item["value"] * 2}


def transient_item(item: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Item mode, counting each item's calls in ``params.calls/<id>`` (any process):
    ``params.always`` ids fail transiently on every call, every other id on its first
    ``params.first`` calls (default 0)."""
    calls_file = Path(ctx.params["calls"]) / str(item["id"])
    with open(calls_file, "a") as handle:
        handle.write("x")
    calls = len(calls_file.read_text())
    if item["id"] in ctx.params.get("always", []) or calls <= ctx.params.get("first", 0):
        raise TransientError(f"connection reset (item {item['id']}, call {calls})")
    return {"id": item["id"], "doubled": item["value"] * 2}


def fan_out_item(item: dict[str, Any], ctx: JobContext) -> list[dict[str, Any]] | None:
    """Item mode: no row for even ids, two rows for odd ids."""
    if item["id"] % 2 == 0:
        return None
    return [{"id": item["id"], "copy": 0}, {"id": item["id"], "copy": 1}]


def abort_batch(batch: pl.DataFrame, ctx: JobContext) -> pl.DataFrame:
    """Crashes the job process with SIGABRT (``os.abort()``), as a bug in native code does:
    nothing can record the failure from inside."""
    import os

    os.abort()


def sleep_forever(batch: pl.DataFrame, ctx: JobContext) -> pl.DataFrame:
    """Never returns (a hung job): only a runtime limit stops it."""
    import time

    while True:
        time.sleep(3600)


#: What ``chatty_batch`` writes, per channel, so a test can look for each.
CHATTY_MARKERS = {
    "print": "chatty-print-stdout",
    "fd": "chatty-fd-1-stdout",
    "child": "chatty-child-stdout",
    "stderr": "chatty-print-stderr",
}


def chatty_batch(batch: pl.DataFrame, ctx: JobContext) -> pl.DataFrame:
    """Doubles like ``double_batch`` after writing 1 MB to stdout with ``print``, plus one
    line each straight to file descriptor 1 (as C code does), from a child process, and to
    stderr (``CHATTY_MARKERS``)."""
    import os
    import subprocess
    import sys

    line = CHATTY_MARKERS["print"] + " " + "x" * 1000
    for _ in range(1024):
        print(line)
    os.write(1, (CHATTY_MARKERS["fd"] + "\n").encode())
    subprocess.run([sys.executable, "-c", f"print({CHATTY_MARKERS['child']!r})"], check=True)
    print(CHATTY_MARKERS["stderr"], file=sys.stderr)
    return batch.select(pl.col("id"), (pl.col("value") * 2).alias("doubled"))


def typed_batch(batch: pl.DataFrame, ctx: JobContext) -> pl.DataFrame:
    """Batch mode: ``id`` and ``v`` (``value``) of dtype ``params.dtypes[batch id]``, else
    ``params.dtype`` (default ``Int64``): a job whose schema drifts between batches."""
    from orchestrator_ext.dtypes import polars_dtype

    name = ctx.params.get("dtypes", {}).get(ctx.batch_id, ctx.params.get("dtype", "Int64"))
    return batch.select("id", pl.col("value").cast(polars_dtype(name)).alias("v"))


def rows_batch(batch: pl.DataFrame, ctx: JobContext) -> pl.DataFrame:
    """Batch mode: ``id`` and ``doubled``, with the rows broken as ``params.rows`` says:
    ``drop_half``, ``duplicate``, ``empty`` (no columns), ``no_rows`` (the columns, no
    rows), ``extra_id`` (the last id replaced), or anything else: one row per item."""
    out = batch.select(pl.col("id"), (pl.col("value") * 2).alias("doubled"))
    how = ctx.params.get("rows")
    if how == "drop_half":
        return out.head(out.height // 2)
    if how == "duplicate":
        return pl.concat([out, out])
    if how == "empty":
        return pl.DataFrame()
    if how == "no_rows":
        return out.clear()
    if how == "extra_id":
        return out.with_columns(
            pl.when(pl.int_range(pl.len()) == pl.len() - 1)
            .then(pl.col("id") + 100_000)
            .otherwise(pl.col("id"))
            .alias("id")
        )
    return out


def mixed_item(item: dict[str, Any], ctx: JobContext) -> dict[str, Any] | None:
    """Item mode: ``v`` is the id (an int) for odd ids and its text for even ones; with
    ``params.none`` every item returns no row."""
    if ctx.params.get("none"):
        return None
    return {"id": item["id"], "v": item["id"] if item["id"] % 2 else str(item["id"])}


def run_in_process(config: RunConfig, store: StateStore) -> dict[str, Any]:
    """Drive a whole run stage by stage in this process, as the workflow's rules do.

    Returns the manifest. Unit tests use it to get real records and outputs without
    starting Snakemake.
    """
    layout = RunLayout(config.run_dir)
    plan = partition_items(config, store, layout.batches_dir)
    n, fan_in = plan["n_batches"], plan["fan_in"]
    for i, batch in enumerate(plan["batches"]):
        process_batch(
            config, store, batch["batch_id"], layout.batch(i), layout.plan,
            layout.result(i), layout.dead_letter(i), layout.result_record(i),
        )  # fmt: skip
    sizes = level_sizes(n, fan_in)
    top = len(sizes) - 1
    for level in range(1, top + 1):
        for index in range(sizes[level]):
            kids = [layout.node(level - 1, c, n, fan_in) for c in children(level, index, n, fan_in)]
            data, record = layout.node(level, index, n, fan_in)
            task_id = task.node_id(level, index, top)
            merge_node(config, store, task_id, level, index, kids, data, record, level == top)
    merge_records = [
        layout.merge_record(level, index)
        for level in range(1, top)
        for index in range(sizes[level])
    ]
    return write_run_manifest(
        config, store, layout.plan, [layout.result_record(i) for i in range(n)],
        merge_records, layout.final_record, layout.manifest,
    )  # fmt: skip


class Unpicklable(Exception):
    """An exception whose constructor takes two arguments: it does not unpickle."""

    def __init__(self, a: str, b: str) -> None:
        super().__init__(f"{a}/{b}")


def raise_unpicklable(item: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Item mode: raises an exception that a process pool cannot send back as itself."""
    raise Unpicklable("a", "b")


def return_lambda(item: dict[str, Any], ctx: JobContext) -> Any:
    """Item mode: returns what pickle cannot carry back from a process worker."""
    return lambda: item


def exit_worker(item: dict[str, Any], ctx: JobContext) -> Any:
    """Item mode: ends the process it runs in at once, as the OOM killer would."""
    import os

    os._exit(137)


def workers_batch(batch: pl.DataFrame, ctx: JobContext) -> pl.DataFrame:
    """Batch mode: each row with the ``ctx.workers`` and polars thread-pool size it ran with."""
    return batch.select("id").with_columns(
        pl.lit(ctx.workers).alias("workers"), pl.lit(pl.thread_pool_size()).alias("polars")
    )
