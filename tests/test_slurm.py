"""End to end on the real local Slurm cluster (slurmctld, slurmd, slurmdbd) through the
official Slurm executor plugin, with every file of the run in S3 and task state in DynamoDB,
both on the local AWS endpoint."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from conftest import ORCHESTRATOR, REPO, SNAKEMAKE, run_snakemake, set_storage_env, write_config

from orchestrator_ext import s3, task
from orchestrator_ext.config import load_config
from orchestrator_ext.example_data import make_records
from orchestrator_ext.layout import RunLayout
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


def _all_slurm_jobs(workdir: Path | None = None) -> set[str]:
    """Slurm job ids of the last day; with ``workdir``, only jobs submitted from it (other
    jobs on the cluster, e.g. the service script's smoke test, are not counted)."""
    out = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-o", "JobID,WorkDir", "-S", "now-1days"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    rows = [line.split("|", 1) for line in out.splitlines() if "|" in line]
    return {job for job, cwd in rows if workdir is None or Path(cwd) == workdir}


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


@pytest.fixture
def s3_env(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """AWS settings as a cluster user sets them: environment variables that sbatch exports
    to every job (storage options on the command line would not reach the jobs)."""
    set_storage_env(monkeypatch, moto_endpoint, moto_endpoint)
    return moto_endpoint


class TestSlurmRun:
    def test_example_runs_on_slurm_with_s3_files_and_dynamodb_state(
        self, tmp_path, make_config, s3_env, slurm_cluster
    ):
        items = make_records(2000, seed=11)
        items.write_parquet(tmp_path / "items.parquet")
        client = s3.make_s3_client()
        bucket = f"orchestrator-slurm-{uuid.uuid4().hex[:10]}"
        client.create_bucket(Bucket=bucket)
        client.upload_file(str(tmp_path / "items.parquet"), bucket, "input/items.parquet")
        table = f"orchestrator-state-{uuid.uuid4().hex[:10]}"
        create_table(make_client(), table)
        config: dict[str, Any] = make_config(
            run_id="slurm",
            output_root=f"s3://{bucket}/runs",
            input={"uri": f"s3://{bucket}/input/*.parquet", "format": "parquet"},
            batching={"max_items": 500},
            merge={"fan_in": 2, "mode": "reduce"},
            state={"backend": "dynamodb", "table": table},
        )
        configfile = write_config(tmp_path / "slurm.yaml", config)
        run_on_slurm(tmp_path, configfile)

        store = DynamoStateStore.from_config(load_config(config))
        tasks = {t.task_id: t for t in store.tasks()}
        assert len([t for t in tasks.values() if t.kind == "batch"]) == 4
        assert {str(t.status) for t in tasks.values()} == {"SUCCEEDED"}
        # Every task records the Slurm job it ran in, but the manifest: a local rule.
        job_ids = [t.slurm_job_id for t in tasks.values() if t.task_id != task.MANIFEST]
        assert all(job_ids) and len(job_ids) == len(tasks) - 1
        assert tasks[task.MANIFEST].slurm_job_id is None
        assert set(_sacct_states(job_ids).values()) == {"COMPLETED"}
        verify = subprocess.run(
            [ORCHESTRATOR, "manifest", "verify", "--configfile", str(configfile)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert verify.returncode == 0, verify.stderr
        final_uri = RunLayout(f"s3://{bucket}/runs/slurm").final
        manifest = json.loads(
            s3.read_bytes(client, RunLayout(f"s3://{bucket}/runs/slurm").manifest)
        )
        assert manifest["final"]["uri"] == final_uri

        # The same config run locally (local files, SQLite state) gives the same result.
        local = {
            **config,
            "run_id": "local",
            "output_root": str(tmp_path / "out"),
            "input": {"uri": str(tmp_path / "items.parquet"), "format": "parquet"},
            "state": {"backend": "sqlite"},
        }
        run_snakemake(tmp_path, write_config(tmp_path / "local.yaml", local))
        local_final = Path(RunLayout(str(tmp_path / "out" / "local")).final).read_bytes()
        cluster_final = s3.read_bytes(client, final_uri)
        assert hashlib.sha256(cluster_final).hexdigest() == manifest["final"]["sha256"]
        assert hashlib.sha256(cluster_final).hexdigest() == hashlib.sha256(local_final).hexdigest()
        assert pl.read_parquet(io.BytesIO(cluster_final)).equals(
            pl.read_parquet(io.BytesIO(local_final))
        )

        # A second invocation has nothing to do and submits nothing to Slurm.
        before = _all_slurm_jobs(tmp_path)
        again = run_on_slurm(tmp_path, configfile)
        assert "Nothing to be done" in again.stdout + again.stderr
        assert _all_slurm_jobs(tmp_path) == before


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
        result = run_on_slurm(tmp_path, configfile, check=False)

        assert result.returncode != 0
        assert "not resubmitting" in result.stdout + result.stderr
        new_jobs = sorted(_all_slurm_jobs(tmp_path), key=int)
        # One partition job and exactly one submission of the failing batch.
        assert len(new_jobs) == 2, new_jobs
        states = _sacct_states(new_jobs)
        assert states[new_jobs[0]] == "COMPLETED" and states[new_jobs[1]] == "FAILED"
        from orchestrator_ext.state.sqlite import SqliteStateStore

        store = SqliteStateStore(RunLayout(f"{config['output_root']}/perm").state_db, "perm")
        batch = store.get("batch-00000")
        assert batch is not None and batch.attempt == 1 and str(batch.status) == "DEAD"
        assert batch.slurm_job_id == new_jobs[1]

    def test_a_crashed_batch_is_recorded_dead_and_submitted_once(
        self, tmp_path, make_config, slurm_cluster, monkeypatch
    ):
        # The batch's process aborts (SIGABRT) before it can record anything: the executor
        # records the attempt from Slurm's state and the error in the Slurm log.
        monkeypatch.setenv("PYTHONPATH", str(REPO / "tests"))  # sbatch exports it
        make_records(50, seed=3).write_parquet(tmp_path / "items.parquet")
        config = make_config(
            run_id="crash",
            job={"function": "jobs_for_tests:abort_batch", "mode": "batch", "combine": None,
                 "finalize": None},
            merge={"mode": "concat"},
        )  # fmt: skip
        configfile = write_config(tmp_path / "crash.yaml", config)
        result = run_on_slurm(tmp_path, configfile, check=False)

        assert result.returncode != 0
        assert "not resubmitting" in result.stdout + result.stderr
        new_jobs = sorted(_all_slurm_jobs(tmp_path), key=int)
        assert len(new_jobs) == 2, new_jobs  # the partition, and the batch once
        from orchestrator_ext.state.sqlite import SqliteStateStore

        store = SqliteStateStore(RunLayout(f"{config['output_root']}/crash").state_db, "crash")
        batch = store.get("batch-00000")
        store.close()
        assert batch is not None and (batch.attempt, str(batch.status)) == (1, "DEAD")
        assert (batch.error_category, batch.slurm_job_id) == ("permanent", new_jobs[1])
        assert "killed by SIGABRT" in batch.error_message
        assert "(Slurm state FAILED)" in batch.error_message
