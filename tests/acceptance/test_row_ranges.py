"""Batches as row ranges of the input (``batching.row_ranges: true``), run as a researcher
would: Parquet files of their own, a config from scratch, results against one polars query."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from .conftest import (
    assert_frames_match,
    batch_files,
    read_final,
    run_dir,
    run_orchestrator,
    run_snakemake,
    scores,
    sensor_readings,
    station_totals,
    write_config,
)

pytestmark = pytest.mark.workflow

# Files of uneven sizes and small row groups: batches start and end inside row groups and
# span files.
FILES = {"east": 130, "north": 45, "west": 101}

# A job that rewrites the input under the run: every batch touches the file it was given.
TOUCHING_JOB = """\
import os

import polars as pl


def score_and_touch(batch: pl.DataFrame, ctx) -> pl.DataFrame:
    path = ctx.params["touch"]
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    return batch.select("id", "station", (pl.col("reading") * 7).alias("score"))
"""


def assert_line(result, text: str) -> str:
    """The line of the output holding ``text``."""
    lines = [line for line in result.output.splitlines() if text in line]
    assert lines, result.describe()
    return lines[0]


def write_readings(lab: Path) -> pl.DataFrame:
    """data/{name}.parquet for each of FILES, ids unique across files; all rows in order."""
    (lab / "data").mkdir()
    frames = []
    for seed, (name, n) in enumerate(FILES.items(), start=70):
        frame = sensor_readings(n, seed, prefix=f"{name}-")
        frame.write_parquet(lab / "data" / f"{name}.parquet", row_group_size=16)
        frames.append(frame)
    return pl.concat(frames)


def ranges_config(run_id: str, job: dict) -> dict:
    return {
        "run_id": run_id,
        "output_root": "out",
        "input": {"uri": "data/*.parquet", "format": "parquet"},
        "batching": {"max_items": 40, "row_ranges": True},
        "job": job,
        "merge": {"fan_in": 3},
    }


def test_row_range_batches_give_the_polars_result_without_copies(lab: Path) -> None:
    readings = write_readings(lab)
    write_config(lab, ranges_config("ranges", {"function": "mylab_jobs:score",
                                               "params": {"factor": 3}}))  # fmt: skip
    run_snakemake(lab)

    assert_frames_match(read_final(lab, "ranges"), scores(readings, 3), by="id")
    # No copy of the input: the batch folder holds the plan (and Snakemake's timestamp).
    assert [f for f in batch_files(lab, "ranges") if f.endswith(".parquet")] == []
    assert "plan.json" in batch_files(lab, "ranges")
    plan = json.loads((run_dir(lab, "ranges") / "batches" / "plan.json").read_text())
    assert [b["items"] for b in plan["batches"]] == [40] * 6 + [36]
    spanning = [b for b in plan["batches"] if len({r["file"] for r in b["ranges"]}) > 1]
    assert spanning, plan["batches"]
    run_orchestrator(lab, "manifest", "verify", "--configfile", "my-run.yaml")


def test_a_reduce_over_row_ranges_equals_the_polars_query(lab: Path) -> None:
    readings = write_readings(lab)
    job = {"function": "mylab_jobs:partial", "combine": "mylab_jobs:combine"}
    write_config(lab, {**ranges_config("totals", job), "merge": {"mode": "reduce", "fan_in": 2}})
    run_snakemake(lab)

    assert_frames_match(read_final(lab, "totals"), station_totals(readings), by="station")


def test_dead_letters_of_row_ranges_are_redriven_with_their_rows(lab: Path) -> None:
    readings = write_readings(lab)
    reject = ["north-0003", "west-0077"]
    job = {"function": "mylab_jobs:per_item", "mode": "item", "params": {"reject": reject}}
    config = ranges_config("bad", job)
    config["tolerance"] = {"max_dead_letter_fraction": 0.5}
    write_config(lab, config)
    run_snakemake(lab)

    run_orchestrator(lab, "redrive", "--configfile", "my-run.yaml", "--out", "again.yaml",
                     "--items-out", "again.parquet")  # fmt: skip
    redriven = pl.read_parquet(lab / "again.parquet")
    assert_frames_match(redriven, readings.filter(pl.col("id").is_in(reject)), by="id")


def test_an_input_rewritten_during_the_run_fails_its_batches_by_name(lab: Path) -> None:
    write_readings(lab)
    (lab / "touching_jobs.py").write_text(TOUCHING_JOB)
    touched = lab / "data" / "east.parquet"
    job = {"function": "touching_jobs:score_and_touch", "params": {"touch": str(touched)}}
    write_config(lab, ranges_config("moving", job))

    result = run_snakemake(lab, check=False)

    assert result.returncode != 0, result.describe()
    # Named as the config names it (input.uri is relative), and not retried.
    line = assert_line(result, "input file data/east.parquet changed since it was partitioned")
    assert "permanent, not retried" in line, line
    assert not (run_dir(lab, "moving") / "final").exists()
    # Put right (the job no longer touches it), the next run partitions anew and finishes.
    write_config(lab, ranges_config("moving", {"function": "mylab_jobs:score",
                                               "params": {"factor": 7}}))  # fmt: skip
    run_snakemake(lab)
    readings = pl.concat(pl.read_parquet(lab / "data" / f"{n}.parquet") for n in FILES)
    assert_frames_match(read_final(lab, "moving"), scores(readings, 7), by="id")


def test_row_ranges_over_csv_is_refused_in_one_line(lab: Path) -> None:
    sensor_readings(30, seed=80).write_csv(lab / "readings.csv")
    config = ranges_config("csv", {"function": "mylab_jobs:score"})
    config["input"] = {"uri": "readings.csv", "format": "csv"}
    write_config(lab, config)

    result = run_snakemake(lab, check=False)

    assert result.returncode != 0
    assert "Traceback" not in result.output, result.describe()
    assert "batching.row_ranges needs a local Parquet input" in result.output, result.describe()
