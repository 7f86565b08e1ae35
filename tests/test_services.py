"""The service script (tests/services/setup.sh) against the real local cluster."""

from __future__ import annotations

import os
import subprocess
import time
import uuid

import pytest
from conftest import REPO
from test_slurm import slurm_cluster  # noqa: F401 - a fixture

pytestmark = pytest.mark.workflow

SETUP = REPO / "tests" / "services" / "setup.sh"


def _run(*cmd: str, timeout: float = 30) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=timeout).stdout


def _state(job: str) -> str:
    return (
        _run("squeue", "-h", "-j", job, "-o", "%T").strip()
        or _run("sacct", "-n", "-X", "-P", "-o", "State", "-j", job).strip()
    )


def _wait_gone(name: str) -> None:
    """Wait until no process is called ``name``."""
    deadline = time.monotonic() + 20
    while subprocess.run(["pgrep", "-x", name], capture_output=True).returncode == 0:
        assert time.monotonic() < deadline, f"{name} did not stop"
        time.sleep(0.1)


def test_jobs_of_a_killed_cluster_are_cancelled_when_it_starts_again(slurm_cluster):  # noqa: F811
    # A machine image taken while a test ran (or a CI run killed mid-way) leaves jobs in
    # slurmctld's state directory. Started again, slurmctld recovered them as RUNNING, Slurm
    # kept them so until their time limit, and the smoke job pended behind them: CI failed.
    marker = f"{600 + uuid.uuid4().int % 1000}.{os.getpid() % 100:02d}"
    job = _run(
        "sbatch", "--parsable", "--exclusive", "-A", "orchestrator", "-t", "10",
        "-J", "stale-job", "-o", "/dev/null", "--wrap", f"exec sleep {marker}",
    ).strip()  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while _state(job) != "RUNNING":
            assert time.monotonic() < deadline, f"job {job}: {_state(job)}"
            time.sleep(0.3)
        # The controller saves its state as it stops (a kill could beat the job's save);
        # the node's daemons and the job's processes die as in a machine that stopped.
        _run("scontrol", "shutdown", "slurmctld")
        _wait_gone("slurmctld")
        for daemon in ("slurmd", "slurmstepd"):
            subprocess.run(["pkill", "-KILL", "-x", daemon], check=False)
            _wait_gone(daemon)
        subprocess.run(["pkill", "-KILL", "-f", f"sleep {marker}"], check=False)

        setup = subprocess.run(
            ["bash", str(SETUP), "slurm"], capture_output=True, text=True, timeout=300
        )
        assert setup.returncode == 0, setup.stdout + setup.stderr
        assert "left from the cluster's previous run" in setup.stdout
        assert job in setup.stdout.split("previous run:", 1)[1].split()
        assert "smoke job" in setup.stdout and "COMPLETED" in setup.stdout
        assert _state(job).startswith("CANCELLED"), _state(job)
    finally:
        subprocess.run(["scancel", job], check=False, timeout=30)
