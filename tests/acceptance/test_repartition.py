"""Bug 3: re-partitioning a run leaves no stale batch, dead-letter or merge files."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
import yaml

from .conftest import (
    assert_frames_match,
    files_under,
    item_outputs,
    read_final,
    run_dir,
    run_orchestrator,
    run_snakemake,
    sensor_readings,
    write_config,
)

pytestmark = pytest.mark.workflow

REJECT = ["s0017", "s0071"]  # bad sensors: per_item raises ValueError for them


def config(max_items: int) -> dict:
    return {
        "run_id": "recut",
        "output_root": "out",
        "input": {"uri": "readings.csv", "format": "csv"},
        "batching": {"max_items": max_items},
        "job": {"function": "mylab_jobs:per_item", "mode": "item", "params": {"reject": REJECT}},
        "merge": {"fan_in": 3},
        "tolerance": {"max_dead_letter_fraction": 0.5},
    }


def test_repartition_leaves_only_the_new_batches(lab: Path) -> None:
    sensor_readings(95, seed=3).write_csv(lab / "readings.csv")
    write_config(lab, config(max_items=10))
    run_snakemake(lab)
    run = run_dir(lab, "recut")
    assert len([f for f in files_under(run / "results") if f.endswith(".parquet")]) == 10

    write_config(lab, config(max_items=40))
    run_snakemake(lab)

    new_batches = [f"batch-{i:05d}" for i in range(3)]
    assert files_under(run / "results") == sorted(
        f"{b}.{ext}" for b in new_batches for ext in ("json", "parquet")
    )
    stale_dead = [f for f in files_under(run / "dead_letter") if f.split(".")[0] not in new_batches]
    assert stale_dead == [], f"dead letters of batches the new plan does not have: {stale_dead}"
    # 3 batches under fan_in 3: the root reads the batches directly, no inner merge node.
    assert files_under(run / "merge") == []

    expected = item_outputs(
        pl.read_csv(lab / "readings.csv").filter(~pl.col("id").is_in(REJECT)), {"reject": REJECT}
    )
    assert_frames_match(read_final(lab, "recut"), expected, by="id")

    report = run_orchestrator(lab, "errors", "--configfile", "my-run.yaml", "--json").json()
    dead_ids = [item["id"] for item in report["dead_letters"]["items"]]
    assert sorted(dead_ids) == REJECT
    assert report["dead_letters"]["total"] == 2

    run_orchestrator(lab, "redrive", "--configfile", "my-run.yaml", "--out", "redrive.yaml")

    redrive_config = yaml.safe_load((lab / "redrive.yaml").read_text())
    items_file = lab / redrive_config["input"]["uri"]
    assert sorted(pl.read_parquet(items_file)["id"].to_list()) == REJECT
