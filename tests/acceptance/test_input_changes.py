"""Bug 2: a changed input (rewritten, added or removed file) is seen by the next run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import polars as pl
import pytest

from .conftest import (
    assert_frames_match,
    read_final,
    run_dir,
    run_orchestrator,
    run_snakemake,
    scores,
    sensor_readings,
    write_config,
)

pytestmark = pytest.mark.workflow


def scores_config(run_id: str, uri: str) -> dict:
    """Every reading scaled by 7 (batch mode), merged in a tree of fan-in 2."""
    return {
        "run_id": run_id,
        "output_root": "out",
        "input": {"uri": uri, "format": "csv"},
        "batching": {"max_items": 50},
        "job": {"function": "mylab_jobs:score", "params": {"factor": 7}},
        "merge": {"fan_in": 2},
    }


def write_station_files(lab: Path, names: dict[str, int]) -> None:
    """data/{name}.csv with ``n`` readings each, ids unique across files."""
    (lab / "data").mkdir(exist_ok=True)
    for seed, (name, n) in enumerate(names.items(), start=30):
        sensor_readings(n, seed, prefix=f"{name}-").write_csv(lab / "data" / f"{name}.csv")


def expected_over_data(lab: Path) -> pl.DataFrame:
    return scores(pl.read_csv(lab / "data" / "*.csv"), 7)


def test_input_rewritten_in_place_is_reprocessed(lab: Path) -> None:
    source = lab / "readings.csv"
    sensor_readings(200, seed=21).write_csv(source)
    write_config(lab, scores_config("rewrite", "readings.csv"))
    run_snakemake(lab)
    assert_frames_match(read_final(lab, "rewrite"), scores(pl.read_csv(source), 7), by="id")

    # Same file name, same ids and byte size, different readings.
    before = source.stat().st_size
    old = pl.read_csv(source)
    new = old.with_columns(reading=sensor_readings(200, seed=22)["reading"])
    new.write_csv(source)
    assert source.stat().st_size == before
    assert not new.equals(old)

    run_snakemake(lab)

    assert_frames_match(read_final(lab, "rewrite"), scores(pl.read_csv(source), 7), by="id")
    run_orchestrator(lab, "manifest", "verify", "--configfile", "my-run.yaml")


def test_glob_input_sees_an_added_file(lab: Path) -> None:
    write_station_files(lab, {"north": 90, "south": 70})
    write_config(lab, scores_config("grow", "data/*.csv"))
    run_snakemake(lab)
    assert_frames_match(read_final(lab, "grow"), expected_over_data(lab), by="id")

    sensor_readings(80, seed=40, prefix="west-").write_csv(lab / "data" / "west.csv")
    run_snakemake(lab)

    assert_frames_match(read_final(lab, "grow"), expected_over_data(lab), by="id")


def test_glob_input_sees_a_removed_file(lab: Path) -> None:
    write_station_files(lab, {"north": 90, "south": 70, "west": 80})
    write_config(lab, scores_config("shrink", "data/*.csv"))
    run_snakemake(lab)
    assert_frames_match(read_final(lab, "shrink"), expected_over_data(lab), by="id")

    (lab / "data" / "south.csv").unlink()
    run_snakemake(lab)

    assert_frames_match(read_final(lab, "shrink"), expected_over_data(lab), by="id")


def test_plan_lists_every_input_file_with_size_and_mtime(lab: Path) -> None:
    write_station_files(lab, {"north": 90, "south": 40, "west": 65})
    write_config(lab, scores_config("listed", "data/*.csv"))

    run_snakemake(lab)

    plan = json.loads((run_dir(lab, "listed") / "batches" / "plan.json").read_text())
    listed = plan["input"]["files"]
    on_disk = sorted((lab / "data").glob("*.csv"))
    assert len(listed) == len(on_disk), listed
    by_file = {os.path.realpath(lab / entry["path"]): entry for entry in listed}
    for path in on_disk:
        entry = by_file.get(os.path.realpath(path))
        assert entry is not None, f"{path} missing from plan.json: {listed}"
        stat = path.stat()
        assert entry["bytes"] == stat.st_size
        assert entry["mtime_ns"] == stat.st_mtime_ns
