"""Bug 4: item ids keep their identity from the input to the final result."""

from __future__ import annotations

import math
from pathlib import Path

import polars as pl
import pytest

from .conftest import (
    assert_frames_match,
    assert_nothing_written,
    assert_refused,
    item_outputs,
    read_final,
    run_snakemake,
    sensor_readings,
    write_config,
)

pytestmark = pytest.mark.workflow


def item_config(run_id: str, uri: str, fmt: str, **input_keys: str) -> dict:
    return {
        "run_id": run_id,
        "output_root": "out",
        "input": {"uri": uri, "format": fmt, **input_keys},
        "batching": {"max_items": 20},
        "job": {"function": "mylab_jobs:per_item", "mode": "item"},
    }


def test_csv_ids_keep_their_leading_zeros(lab: Path) -> None:
    tricky = ["00123", "0456", "001", "01", "1"]
    ids = tricky + [str(n) for n in range(2000, 2045)]
    sensor_readings(len(ids), seed=4, ids=ids).write_csv(lab / "readings.csv")
    write_config(lab, item_config("zeros", "readings.csv", "csv"))

    run_snakemake(lab)

    final = read_final(lab, "zeros")
    assert set(tricky) <= set(final["id"].to_list())
    expected = item_outputs(pl.read_csv(lab / "readings.csv", schema_overrides={"id": pl.String}))
    assert_frames_match(final, expected, by="id")


def test_integer_id_type_gives_integer_ids(lab: Path) -> None:
    ids = [str(n) for n in range(1, 121)]
    sensor_readings(len(ids), seed=5, ids=ids).write_csv(lab / "readings.csv")
    write_config(lab, item_config("numbered", "readings.csv", "csv", id_type="integer"))

    run_snakemake(lab)

    final = read_final(lab, "numbered")
    assert final["id"].dtype.is_integer(), final.schema
    expected = item_outputs(pl.read_csv(lab / "readings.csv", schema_overrides={"id": pl.Int64}))
    assert_frames_match(final.with_columns(pl.col("id").cast(pl.Int64)), expected, by="id")


@pytest.mark.parametrize(
    "ids",
    [
        pl.Series("sensor_id", [2**63 + i for i in range(60)], dtype=pl.UInt64),
        pl.Series("sensor_id", [i + 0.5 for i in range(59)] + [math.nan], dtype=pl.Float64),
    ],
    ids=["uint64-above-2**63", "float-with-nan"],
)
def test_unrepresentable_ids_are_refused_at_the_partition(lab: Path, ids: pl.Series) -> None:
    readings = sensor_readings(len(ids), seed=6).drop("id")
    readings.insert_column(0, ids).write_parquet(lab / "readings.parquet")
    config = item_config("oddids", "readings.parquet", "parquet", id_column="sensor_id")
    config["job"]["params"] = {"id_column": "sensor_id"}
    write_config(lab, config)

    result = run_snakemake(lab, check=False)

    # A line naming the column (not a dump of the config, which names it too).
    assert_refused(result, r'^(?!.*"id_column").*sensor_id')
    assert_nothing_written(lab, "oddids")
