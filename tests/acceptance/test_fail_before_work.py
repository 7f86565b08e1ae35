"""Bug 5: a job that cannot be loaded stops the run before any work is done."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import (
    assert_refused,
    batch_files,
    run_dir,
    run_snakemake,
    sensor_readings,
    write_config,
)

pytestmark = pytest.mark.workflow


def write_readings(lab: Path) -> None:
    sensor_readings(120, seed=50).write_csv(lab / "readings.csv")


def test_missing_job_module_fails_before_partitioning(lab: Path) -> None:
    write_readings(lab)
    write_config(
        lab,
        {
            "run_id": "nomodule",
            "output_root": "out",
            "input": {"uri": "readings.csv", "format": "csv"},
            "batching": {"max_items": 30},
            "job": {"function": "mylab_missing:score"},
        },
    )

    result = run_snakemake(lab, check=False)

    assert_refused(result, r"job\.function")
    assert not (run_dir(lab, "nomodule") / "batches").exists(), batch_files(lab, "nomodule")
    assert not (run_dir(lab, "nomodule") / "results").exists()


def test_missing_combine_fails_before_any_batch_runs(lab: Path) -> None:
    write_readings(lab)
    write_config(
        lab,
        {
            "run_id": "nocombine",
            "output_root": "out",
            "input": {"uri": "readings.csv", "format": "csv"},
            "batching": {"max_items": 30},
            "job": {"function": "mylab_jobs:partial", "combine": "mylab_jobs:no_such_combine"},
            "merge": {"mode": "reduce"},
        },
    )

    result = run_snakemake(lab, check=False)

    assert_refused(result, r"job\.combine")
    assert not (run_dir(lab, "nocombine") / "results").exists()
