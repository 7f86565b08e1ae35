"""End to end on the real local Slurm cluster (slurmctld, slurmd, slurmdbd) with task state in
DynamoDB on the local AWS endpoint, through the official Slurm executor plugin."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from conftest import REPO, SNAKEMAKE, run_snakemake, write_config

from orchestrator_ext.config import load_config
from orchestrator_ext.example_data import make_records
from orchestrator_ext.layout import RunLayout
from orchestrator_ext.manifest import verify_manifest
from orchestrator_ext.state.dynamodb import DynamoStateStore, create_table, make_client

pytestmark = pytest.mark.workflow

TEST_PROFILE = REPO / "tests" / "profiles" / "slurm"


@pytest.fixture(scope="session")
def slurm_cluster() -> None:
    """The local single-node cluster, started (or found running) by the service script."""
    subprocess.run(
        ["bash", str(REPO / "tests" / "services" / "setup.sh"), "slurm"],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _sacct_states(job_ids: list[str]) -> dict[str, str]:
    out = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(job_ids)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return dict(line.split("|", 1) for line in out.split())


def _all_slurm_jobs() -> set[str]:
    out = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-o", "JobID", "-S", "now-1days"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return set(out.split())


def run_on_slurm(
    workdir: Path, configfile: Path, *extra: str, check: bool = True
) -> subprocess.CompletedProcess:
    """Run the workflow through the Slurm executor with the test profile."""
    cmd = [
        SNAKEMAKE,
        "--snakefile", str(REPO / "workflow" / "Snakefile"),
        "--directory", str(workdir),
        "--profile", str(TEST_PROFILE),
        "--configfile", str(configfile),
        *extra,
    ]  # fmt: skip
    result = subprocess.run(
        cmd, capture_output=True, text=True, timeout=900, cwd=workdir, env=os.environ.copy()
    )
    if check:
        assert result.returncode == 0, f"{result.stdout[-4000:]}\n{result.stderr[-8000:]}"
    return result


def _sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class TestSlurmRun:
    def test_example_runs_on_slurm_with_dynamodb_state(
        self, tmp_path, make_config, aws_env, slurm_cluster
    ):
        make_records(2000, seed=11).write_parquet(tmp_path / "items.parquet")
        table = f"orchestrator-state-{tmp_path.name}"[:200]
        create_table(make_client(), table)
        config: dict[str, Any] = make_config(
            run_id="slurm",
            batching={"max_items": 500},
            merge={"fan_in": 2, "mode": "reduce"},
            state={"backend": "dynamodb", "table": table},
        )
        configfile = write_config(tmp_path / "slurm.yaml", config)

        run_on_slurm(tmp_path, configfile)

        layout = RunLayout(f"{config['output_root']}/slurm")
        store = DynamoStateStore.from_config(load_config(config))
        tasks = {t.task_id: t for t in store.tasks()}
        batches = [t for t in tasks.values() if t.kind == "batch"]
        assert len(batches) == 4
        assert {str(t.status) for t in tasks.values()} == {"SUCCEEDED"}
        job_ids = [t.slurm_job_id for t in tasks.values()]
        assert all(job_ids), "every task records the Slurm job id it ran in"
        assert set(_sacct_states(job_ids).values()) == {"COMPLETED"}
        assert verify_manifest(layout.manifest) == []

        # The same config run locally (SQLite state) gives the identical final result.
        local = {**config, "run_id": "local", "state": {"backend": "sqlite"}}
        run_snakemake(tmp_path, write_config(tmp_path / "local.yaml", local))
        local_final = RunLayout(f"{config['output_root']}/local").final
        assert _sha256(layout.final) == _sha256(local_final)
        assert pl.read_parquet(layout.final).equals(pl.read_parquet(local_final))

        # A second invocation has nothing to do and submits nothing to Slurm.
        before = _all_slurm_jobs()
        again = run_on_slurm(tmp_path, configfile)
        assert "Nothing to be done" in again.stdout + again.stderr
        assert _all_slurm_jobs() == before


class TestSlurmFailures:
    def test_permanent_failure_is_submitted_once(self, tmp_path, make_config, slurm_cluster):
        # Two items whose files do not exist: the batch dead-letters both, exceeds the
        # tolerance and fails permanently. The profile allows 2 retries; none may happen.
        pl.DataFrame({"id": [1, 2], "path": ["/nonexistent/a", "/nonexistent/b"]}).write_csv(
            tmp_path / "files.csv"
        )
        config = make_config(
            run_id="perm",
            input={"uri": str(tmp_path / "files.csv"), "format": "csv"},
            job={
                "function": "orchestrator_ext.jobs.checksum:checksum_file",
                "mode": "item",
                "combine": None,
                "finalize": None,
            },
            merge={"mode": "concat"},
        )
        configfile = write_config(tmp_path / "perm.yaml", config)
        before = _all_slurm_jobs()

        result = run_on_slurm(tmp_path, configfile, check=False)

        assert result.returncode != 0
        assert "not resubmitting" in result.stdout + result.stderr
        new_jobs = sorted(_all_slurm_jobs() - before, key=int)
        # One partition job and exactly one submission of the failing batch.
        assert len(new_jobs) == 2, new_jobs
        states = _sacct_states(new_jobs)
        assert states[new_jobs[0]] == "COMPLETED" and states[new_jobs[1]] == "FAILED"
        from orchestrator_ext.state.sqlite import SqliteStateStore

        store = SqliteStateStore(RunLayout(f"{config['output_root']}/perm").state_db, "perm")
        batch = store.get("batch-00000")
        assert batch is not None and batch.attempt == 1 and str(batch.status) == "DEAD"
        assert batch.slurm_job_id == new_jobs[1]
