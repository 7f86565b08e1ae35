"""job.workers: a researcher's batch job uses the cores it asks for, and the result is the
one a single worker gives."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from .conftest import (
    assert_frames_match,
    item_outputs,
    read_final,
    run_snakemake,
    sensor_readings,
    write_config,
)

pytestmark = pytest.mark.workflow

CORES_JOB = '''\
import polars as pl


def cores(batch: pl.DataFrame, ctx) -> pl.DataFrame:
    """Batch mode: every row with the workers and polars threads the job was given."""
    return batch.select("id").with_columns(
        pl.lit(ctx.workers).alias("workers"), pl.lit(pl.thread_pool_size()).alias("threads")
    )
'''


@pytest.mark.parametrize("pool", ["process", "thread"])
def test_item_job_on_two_workers_gives_every_items_row(lab: Path, pool: str) -> None:
    readings = sensor_readings(240, seed=31, prefix="w")
    readings.write_parquet(lab / "readings.parquet")
    write_config(
        lab,
        {
            "run_id": f"two-{pool}",
            "output_root": "out",
            "input": {"uri": "readings.parquet", "format": "parquet"},
            "batching": {"max_items": 100},
            "job": {"function": "mylab_jobs:per_item", "mode": "item", "workers": 2, "pool": pool},
        },  # fmt: skip
    )

    run_snakemake(lab)

    assert_frames_match(read_final(lab, f"two-{pool}"), item_outputs(readings), by="id")


def test_batch_job_gets_the_cores_it_asks_for(lab: Path) -> None:
    (lab / "mylab_cores.py").write_text(CORES_JOB)
    readings = sensor_readings(50, seed=32, prefix="c")
    readings.write_parquet(lab / "readings.parquet")
    write_config(
        lab,
        {
            "run_id": "cores",
            "output_root": "out",
            "input": {"uri": "readings.parquet", "format": "parquet"},
            "job": {"function": "mylab_cores:cores", "workers": 2},
        },
    )

    result = run_snakemake(lab)

    final = read_final(lab, "cores")
    assert sorted(final["id"].to_list()) == sorted(readings["id"].to_list())
    # snakemake runs with --cores 2: the job's threads, ctx.workers and polars' pool are 2.
    assert final.select(pl.col("workers").unique(), pl.col("threads").unique()).rows() == [(2, 2)]
    assert "threads: 2" in result.output, result.output[-2000:]
