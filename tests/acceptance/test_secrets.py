"""Issue 12 (5): a secret in job.params stays out of command lines, metadata and output."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from .conftest import run_dir, run_snakemake, sensor_readings, write_config

pytestmark = pytest.mark.workflow

SECRET = "tok-3f9a1c-do-not-leak"

# The job checks the command lines of its own process and of its parent (Snakemake's shell)
# while it runs, and fails one batch on purpose so Snakemake prints a failed job.
LEAKY_JOBS = f'''
import os


def cmdline(pid):
    with open(f"/proc/{{pid}}/cmdline", "rb") as handle:
        return handle.read().decode(errors="replace")


def check(batch, ctx):
    assert ctx.params["token"] == "{SECRET}"
    seen = cmdline(os.getpid()) + cmdline(os.getppid())
    if "{SECRET}" in seen:
        raise RuntimeError("the token is on a command line")
    if ctx.batch_id == "00002":
        raise ValueError("batch 2 fails on purpose")
    return batch.select("id")
'''


def test_a_secret_in_params_never_leaks(lab: Path) -> None:
    (lab / "leaky_jobs.py").write_text(LEAKY_JOBS)
    sensor_readings(60, seed=5).write_csv(lab / "readings.csv")
    config = {
        "run_id": "secretive",
        "output_root": "out",
        "input": {"uri": "readings.csv", "format": "csv"},
        "batching": {"max_items": 20},
        "job": {"function": "leaky_jobs:check", "params": {"token": SECRET}},
    }
    configfile = write_config(lab, config)
    result = run_snakemake(lab, configfile, check=False)
    # Batch 2 fails (its items are dead-lettered, over the tolerance of 0): Snakemake
    # prints the failed job, its command and its log. Batches 0 and 1 ran the check.
    assert result.returncode != 0
    assert "Error in rule process_batch" in result.output
    assert SECRET not in result.output
    results = run_dir(lab, "secretive") / "results"
    assert sorted(p.name for p in results.glob("*.parquet")) == [
        "batch-00000.parquet", "batch-00001.parquet",
    ]  # fmt: skip
    logs = _all_text(run_dir(lab, "secretive"))
    assert "batch 2 fails on purpose" in logs
    assert "the token is on a command line" not in logs
    for folder in (lab / ".snakemake" / "metadata", lab / ".snakemake" / "log"):
        assert folder.exists()
        for path in folder.rglob("*"):
            if path.is_file():
                assert SECRET not in path.read_text(errors="replace"), path
    # The two files that do hold it are readable by their owner only.
    holders = [run_dir(lab, "secretive") / "config.json"]
    holders += list((lab / ".snakemake" / "orchestrator" / "secretive").glob("config-*.json"))
    assert len(holders) == 2
    for path in holders:
        assert SECRET in path.read_text()
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path


def _all_text(folder: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in folder.rglob("*.log") if p.is_file())
