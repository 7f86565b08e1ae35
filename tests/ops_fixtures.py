"""A small finished run for the operations tests (status, errors, audit, report, cost, redrive).

``make_finished_run`` drives a whole run in-process (no Snakemake) with a real SQLite state
store: 40 items in 8 batches of 5, a concat merge tree with fan-in 3 (levels 8, 3, 1), items
``bad_ids`` dead-lettered as permanent failures, and, with ``prefail``, a failed first attempt
of batch 1 (resource) and batch 2 (transient) recorded before the run, so both batches take
two attempts and the audit log holds two failures.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from orchestrator_ext.config import RunConfig, load_config
from orchestrator_ext.layout import RunLayout
from orchestrator_ext.state.sqlite import SqliteStateStore

try:
    import jobs_for_tests as jobs
except ModuleNotFoundError:  # tests/ imported as a package
    from tests import jobs_for_tests as jobs

N_ITEMS = 40
BAD_IDS = (3, 4, 17)


def make_finished_run(
    tmp_path: Path,
    make_config: Callable[..., dict[str, Any]],
    run_id: str = "r",
    bad_ids: Sequence[int] = BAD_IDS,
    prefail: bool = True,
) -> tuple[Path, RunConfig]:
    """Run the example to the end; return (config file, config)."""
    items = tmp_path / "items.parquet"
    if not items.exists():
        pl.DataFrame(
            {
                "id": list(range(N_ITEMS)),
                "value": [i * 10 for i in range(N_ITEMS)],
                "label": [f"item-{i}" for i in range(N_ITEMS)],
            }
        ).write_parquet(items)
    raw = make_config(
        run_id=run_id,
        batching={"max_items": 5},
        job={
            "function": jobs.module_ref("double_item"),
            "mode": "item",
            "combine": None,
            "finalize": None,
            "params": {"bad_ids": list(bad_ids)},
        },
        merge={"fan_in": 3, "mode": "concat"},
        tolerance={"max_dead_letter_fraction": 0.5},
    )
    config = load_config(raw)
    store = SqliteStateStore(RunLayout(config.run_dir).state_db, config.run_id)
    try:
        if prefail:
            lease = store.begin_attempt("batch-00001", host="node-a", slurm_job_id="1001")
            store.fail(lease, "resource", "MemoryError", "cannot allocate", retryable=True)
            lease = store.begin_attempt("batch-00002", host="node-b", slurm_job_id="1002")
            store.fail(lease, "transient", "TransientError", "throttled", retryable=True)
        jobs.run_in_process(config, store)
    finally:
        store.close()
    path = tmp_path / f"{run_id}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path, config


def open_store(config: RunConfig) -> SqliteStateStore:
    """The run's state store (must exist)."""
    return SqliteStateStore(RunLayout(config.run_dir).state_db, config.run_id, create=False)


def upload_run(run_dir: str, client: Any, bucket: str, prefix: str) -> str:
    """Copy a finished local run's data files and records to ``s3://bucket/prefix/{run_id}``
    (the layout a run in S3 has); return that run folder's URI."""
    run_id = Path(run_dir).name
    for path in Path(run_dir).rglob("*"):
        if path.is_file() and path.suffix in (".parquet", ".json"):
            client.upload_file(str(path), bucket, f"{prefix}/{run_id}/{path.relative_to(run_dir)}")
    return f"s3://{bucket}/{prefix}/{run_id}"
