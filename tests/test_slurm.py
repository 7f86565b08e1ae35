"""End to end on the real local Slurm cluster (slurmctld, slurmd, slurmdbd) through the
official Slurm executor plugin, with every file of the run in S3 and task state in DynamoDB,
both on the local AWS endpoint."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml
from conftest import ORCHESTRATOR, REPO, SNAKEMAKE, run_snakemake, set_storage_env, write_config

from orchestrator_ext import s3, task
from orchestrator_ext.config import load_config
from orchestrator_ext.example_data import make_records
from orchestrator_ext.layout import RunLayout
from orchestrator_ext.state.dynamodb import DynamoStateStore, create_table, make_client

pytestmark = pytest.mark.workflow

TEST_PROFILE = REPO / "tests" / "profiles" / "slurm"
PROFILE = REPO / "profiles" / "slurm"
#: The keys of profiles/slurm that send batches to Slurm in group jobs.
GROUP_KEYS = ("groups", "group-components", "set-resources", "resources", "set-resource-scopes")


def profile_group_args(**sizes: int) -> list[str]:
    """profiles/slurm's group settings as command-line options, for runs with the test
    profile (which keeps one Slurm job per batch); ``sizes`` overrides group sizes."""
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    args: list[str] = []
    for key in GROUP_KEYS:
        values = list(profile[key])
        if key == "group-components" and sizes:
            values = [f"{name}={size}" for name, size in sizes.items()]
        args += [f"--{key}", *values]
    return args


def group_size() -> int:
    """How many batches profiles/slurm puts in one group job."""
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    return int(profile["group-components"][0].split("=", 1)[1])


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


def _sacct_steps(job_id: str) -> list[str]:
    """The steps of a Slurm job (``<id>.batch``, ``<id>.0`` for a first srun step, ...)."""
    out = subprocess.run(
        ["sacct", "-n", "-P", "-o", "JobID", "-j", job_id],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    return [line for line in out.split() if line != job_id]


def _sacct_field(job_id: str, field: str) -> str:
    out = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-o", field, "-j", job_id],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    return out.strip()


def aborting_run(
    tmp_path: Path, make_config: Any, monkeypatch: pytest.MonkeyPatch, run_id: str, n_items: int
) -> tuple[dict[str, Any], Path]:
    """A run of batches of 50 items whose job aborts (SIGABRT) before it can record anything
    (``jobs_for_tests:abort_batch``): its config and config file."""
    monkeypatch.setenv("PYTHONPATH", str(REPO / "tests"))  # sbatch exports it
    make_records(n_items, seed=3).write_parquet(tmp_path / "items.parquet")
    config = make_config(
        run_id=run_id,
        batching={"max_items": 50},
        job={"function": "jobs_for_tests:abort_batch", "mode": "batch", "combine": None,
             "finalize": None},
        merge={"mode": "concat"},
    )  # fmt: skip
    return config, write_config(tmp_path / f"{run_id}.yaml", config)


def batch_records(config: dict[str, Any], n_batches: int) -> list[Any]:
    """The state store's records of a run's first ``n_batches`` batches (None: no record)."""
    from orchestrator_ext.state.sqlite import SqliteStateStore

    run_id = config["run_id"]
    store = SqliteStateStore(RunLayout(f"{config['output_root']}/{run_id}").state_db, run_id)
    records = [store.get(f"batch-{i:05d}") for i in range(n_batches)]
    store.close()
    return records


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
    # Also with profiles/slurm's group jobs: the four batches in one Slurm job, their
    # files moved to S3 by that job's own Snakemake process.
    @pytest.mark.parametrize("grouped", [False, True], ids=["per-batch", "grouped"])
    def test_example_runs_on_slurm_with_s3_files_and_dynamodb_state(
        self, tmp_path, make_config, s3_env, slurm_cluster, grouped
    ):
        grouping = profile_group_args() if grouped else []
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
        run_on_slurm(tmp_path, configfile, *grouping)

        store = DynamoStateStore.from_config(load_config(config))
        tasks = {t.task_id: t for t in store.tasks()}
        assert len([t for t in tasks.values() if t.kind == "batch"]) == 4
        assert {str(t.status) for t in tasks.values()} == {"SUCCEEDED"}
        # Every task records the Slurm job it ran in, but the manifest: a local rule.
        job_ids = [t.slurm_job_id for t in tasks.values() if t.task_id != task.MANIFEST]
        assert all(job_ids) and len(job_ids) == len(tasks) - 1
        assert tasks[task.MANIFEST].slurm_job_id is None
        assert set(_sacct_states(job_ids).values()) == {"COMPLETED"}
        batch_jobs = {t.slurm_job_id for t in tasks.values() if t.kind == "batch"}
        assert len(batch_jobs) == (1 if grouped else 4), batch_jobs
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
        again = run_on_slurm(tmp_path, configfile, *grouping)
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
        [batch] = batch_records(config, 1)
        assert batch is not None and batch.attempt == 1 and str(batch.status) == "DEAD"
        assert batch.slurm_job_id == new_jobs[1]

    def test_a_crashed_batch_is_recorded_dead_and_submitted_once(
        self, tmp_path, make_config, slurm_cluster, monkeypatch
    ):
        # The batch's process aborts (SIGABRT) before it can record anything: the executor
        # records the attempt from Slurm's state and the error in the Slurm log.
        config, configfile = aborting_run(tmp_path, make_config, monkeypatch, "crash", 50)
        result = run_on_slurm(tmp_path, configfile, check=False)

        assert result.returncode != 0
        assert "not resubmitting" in result.stdout + result.stderr
        new_jobs = sorted(_all_slurm_jobs(tmp_path), key=int)
        assert len(new_jobs) == 2, new_jobs  # the partition, and the batch once
        [batch] = batch_records(config, 1)
        assert batch is not None and (batch.attempt, str(batch.status)) == (1, "DEAD")
        assert (batch.error_category, batch.slurm_job_id) == ("permanent", new_jobs[1])
        assert "killed by SIGABRT" in batch.error_message
        assert "(Slurm state FAILED)" in batch.error_message


def _expected_stats(items: pl.DataFrame) -> pl.DataFrame:
    """The example's grouped statistics, straight from the input with one polars query."""
    v = pl.col("value").cast(pl.Int64)
    return (
        items.group_by("group")
        .agg(
            pl.len().cast(pl.Int64).alias("count"),
            v.sum().alias("sum"),
            v.min().alias("min"),
            v.max().alias("max"),
        )
        .sort("group")
    )


class TestSlurmGroupJobs:
    """profiles/slurm sends batches to Slurm in group jobs (``groups``, ``group-components``),
    which orchestrator-slurm runs in one Snakemake process each."""

    def test_batches_run_in_fewer_slurm_jobs_with_the_right_result(
        self, tmp_path, make_config, slurm_cluster
    ):
        size = group_size()
        n_batches = size + 2  # one full group job and one of two batches
        items = make_records(n_batches * 50, seed=5)
        items.write_parquet(tmp_path / "items.parquet")
        config = make_config(
            run_id="grouped", batching={"max_items": 50}, merge={"fan_in": 8, "mode": "reduce"}
        )
        configfile = write_config(tmp_path / "grouped.yaml", config)
        result = run_on_slurm(tmp_path, configfile, *profile_group_args())

        # Every batch is right: the final table is the polars query over the input.
        layout = RunLayout(f"{config['output_root']}/grouped")
        final = pl.read_parquet(layout.final).select("group", "count", "sum", "min", "max")
        assert final.sort("group").equals(_expected_stats(items))
        verify = subprocess.run(
            [ORCHESTRATOR, "manifest", "verify", "--configfile", str(configfile)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert verify.returncode == 0, verify.stdout + verify.stderr

        # Fewer Slurm jobs than batches: two group jobs hold the twelve batches.
        jobs = sorted(_all_slurm_jobs(tmp_path), key=int)
        assert len(jobs) < n_batches, jobs
        from orchestrator_ext.state.sqlite import SqliteStateStore

        store = SqliteStateStore(layout.state_db, "grouped")
        batches = [t for t in store.tasks() if t.kind == "batch"]
        store.close()
        assert len(batches) == n_batches
        assert {str(t.status) for t in batches} == {"SUCCEEDED"}
        assert all(t.attempt == 1 for t in batches)
        per_job: dict[str, int] = {}
        for t in batches:
            per_job[str(t.slurm_job_id)] = per_job.get(str(t.slurm_job_id), 0) + 1
        assert sorted(per_job.values()) == [2, size], per_job
        assert "group_batches_process_batch" in result.stdout + result.stderr
        for job in per_job:
            # One CPU, and the batches ran in the batch script's own Snakemake process:
            # no srun step per batch.
            assert _sacct_field(job, "AllocCPUS") == "1"
            assert _sacct_steps(job) == [f"{job}.batch"], _sacct_steps(job)

    def test_a_crashed_batch_in_a_group_job_is_recorded_dead_and_not_resubmitted(
        self, tmp_path, make_config, slurm_cluster, monkeypatch
    ):
        # Both batches abort (SIGABRT) in one group job: the first one to run takes the
        # group job down; the executor records its attempt as a permanent failure from the
        # Slurm state and the group's Slurm log, and does not resubmit the group.
        config, configfile = aborting_run(tmp_path, make_config, monkeypatch, "gcrash", 100)
        result = run_on_slurm(tmp_path, configfile, *profile_group_args(), check=False)

        assert result.returncode != 0
        assert "not resubmitting" in result.stdout + result.stderr
        jobs = sorted(_all_slurm_jobs(tmp_path), key=int)
        assert len(jobs) == 2, jobs  # the partition, and the group job once
        records = batch_records(config, 2)
        ran = [r for r in records if r is not None and r.attempt > 0]
        assert len(ran) == 1, records  # the other batch never began
        crashed = ran[0]
        assert (crashed.attempt, str(crashed.status)) == (1, "DEAD")
        assert (crashed.error_category, crashed.slurm_job_id) == ("permanent", jobs[1])
        assert "killed by SIGABRT" in crashed.error_message
        assert "(Slurm state FAILED)" in crashed.error_message


class TestSlurmArrayJobs:
    """Job arrays (--orchestrator-slurm-array-jobs; not in the profiles) keep failure
    handling: an array task's Slurm log is found where Slurm writes it."""

    def test_crashed_array_tasks_are_recorded_dead_and_submitted_once(
        self, tmp_path, make_config, slurm_cluster, monkeypatch
    ):
        config, configfile = aborting_run(tmp_path, make_config, monkeypatch, "acrash", 100)
        result = run_on_slurm(
            tmp_path, configfile, "--orchestrator-slurm-array-jobs", "process_batch", check=False
        )

        output = result.stdout + result.stderr
        assert result.returncode != 0
        assert "Submitted array job" in output
        assert "not resubmitting" in output
        jobs = sorted(_all_slurm_jobs(tmp_path))
        # The partition, and one array of two tasks, each run once.
        assert len(jobs) == 3 and sum("_" in j for j in jobs) == 2, jobs
        for record in batch_records(config, 2):
            assert record is not None and (record.attempt, str(record.status)) == (1, "DEAD")
            assert record.error_category == "permanent"
            # The exit status comes from the task's Slurm log, which must be found.
            assert "killed by SIGABRT" in record.error_message, record.error_message
            assert "/rule_process_batch/" in record.error_message


class TestArrayTaskLog:
    """Array tasks as the executor tracks them: their state, their Slurm log (no cluster)."""

    def test_sacct_is_asked_for_array_tasks_by_their_names(self):
        import asyncio
        import types

        from snakemake_executor_plugin_orchestrator_slurm import array_task_states

        asked = []

        async def query_job_status(command: str, logger: Any) -> Any:
            asked.append(command)
            return {"830_1": "COMPLETED", "830_[2-6]": "PENDING"}, 0.01

        plugin = types.SimpleNamespace(query_job_status=query_job_status)
        array_task_states(plugin)
        array_task_states(plugin)  # idempotent: wrapped once
        assert plugin.query_job_status.__wrapped__ is query_job_status
        command = "sacct -X --parsable2 --noheader --format=JobIdRaw,State --name x"
        asyncio.run(plugin.query_job_status(command, None))
        assert asked == ["sacct -X --parsable2 --noheader --format=JobID,State --name x"]

    def test_the_orchestrator_slurm_executor_installs_both_status_fixes(self):
        import snakemake_executor_plugin_slurm

        import snakemake_executor_plugin_orchestrator_slurm  # noqa: F401

        query = snakemake_executor_plugin_slurm.query_job_status
        assert query.normalizes_slurm_states  # outermost: CANCELLED by <uid>
        assert query.__wrapped__.array_task_states

    @staticmethod
    def _info(external: str, group: bool = False) -> Any:
        from types import SimpleNamespace

        job = SimpleNamespace(name="batches" if group else "process_batch", is_group=lambda: group)
        return SimpleNamespace(job=job, external_jobid=external, aux={})

    def test_array_task_log_is_where_slurm_writes_it(self, tmp_path):
        from snakemake_executor_plugin_orchestrator_slurm import array_task_log

        log = array_task_log(self._info("316_8"), tmp_path)
        assert log == tmp_path / "rule_process_batch" / "316_8.log"
        assert array_task_log(self._info("316"), tmp_path) is None
        assert array_task_log(self._info(""), tmp_path) is None

    def test_a_submission_is_noted_before_sbatch_for_every_member(self):
        from types import SimpleNamespace

        from orchestrator_ext.lost_attempt import JobEnd, job_notes, note_submission

        class Member:  # hashable, as Snakemake's jobs are
            pass

        executor = SimpleNamespace()
        members = [Member() for _ in range(3)]
        group = SimpleNamespace(jobs=members)
        job_notes(executor).ends[members[0]] = JobEnd(exit_code=1)  # a previous attempt's
        note_submission(executor, group)
        notes = job_notes(executor)
        assert set(notes.since) == set(members) and not notes.ends
        first = notes.since[members[1]]
        note_submission(executor, members[1])  # a resubmission notes the new start
        assert notes.since[members[1]] >= first

    def test_group_cores_is_the_allocation_or_a_member_s_threads(self):
        from types import SimpleNamespace

        from snakemake_executor_plugin_orchestrator_slurm import group_cores

        def group(cpus: Any, *threads: int) -> Any:
            members = [SimpleNamespace(threads=t) for t in threads]
            resources = {"cpus_per_task": cpus} if cpus is not None else {}
            return SimpleNamespace(resources=resources, threads=sum(threads), jobs=members)

        assert group_cores(group(1, 1, 1, 1)) == 1
        assert group_cores(group(1, 4, 1)) == 4
        assert group_cores(group(None, 1, 1)) == 2
        assert group_cores(group(2, 1)) == 2


GROUPED_SNAKEFILE = """\
rule all:
    input:
        lambda wc: expand(
            "done/d{i}.txt",
            i=sorted(glob_wildcards(checkpoints.make.get().output[0] + "/p{i}.txt").i),
        ),
    output:
        "all.txt",
    shell:
        "cat {input} > {output}"


checkpoint make:
    output:
        directory("parts"),
    shell:
        "mkdir -p parts; for i in 0 1 2 3 4 5 6 7 8 9; do echo $i > parts/p$i.txt; done"


rule work:
    input:
        "parts/p{i}.txt",
    output:
        "done/d{i}.txt",
    shell:
        "cp {input} {output}"
"""


class TestStableGroupComponents:
    """Snakemake 9.27 grew and overlapped ``--group-components`` groups when a run resumed
    after a checkpoint (the DAG is post-processed twice), and then submitted a running group
    job again and again; the orchestrator-slurm plugin module makes every post-processing
    give the same disjoint groups (``stable_group_components``). Local, no cluster."""

    def test_a_resumed_run_puts_every_job_in_one_group_of_at_most_n(self, tmp_path):
        (tmp_path / "Snakefile").write_text(GROUPED_SNAKEFILE)
        grouping = ["--groups", "work=g", "--group-components", "g=3"]
        cmd = [SNAKEMAKE, "--cores", "1", "--directory", str(tmp_path), *grouping]
        first = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert first.returncode == 0, first.stderr[-3000:]
        for i in range(6):  # six of the ten jobs must run again, after the checkpoint
            (tmp_path / "done" / f"d{i}.txt").unlink()
        (tmp_path / "all.txt").unlink()

        dry = subprocess.run(
            [*cmd, "--dry-run"], cwd=tmp_path, capture_output=True, text=True, timeout=300
        )
        assert dry.returncode == 0, dry.stderr[-3000:]
        groups: list[list[str]] = []
        for line in (dry.stdout + dry.stderr).splitlines():
            if "Group job" in line:
                groups.append([])
            elif "wildcards: i=" in line and groups:
                groups[-1].append(line.split("i=", 1)[1].strip())
        assert sorted(sorted(g) for g in groups) == [["0", "1", "2"], ["3", "4", "5"]], groups

    def test_snakemake_installs_the_patch_once_with_its_plugins(self):
        # As the snakemake command does: importing snakemake.workflow loads snakemake.dag,
        # then every executor plugin (the registry in snakemake.scheduling.job_scheduler).
        probe = (
            "import snakemake.cli, snakemake.dag as d\n"
            "import snakemake_executor_plugin_orchestrator_slurm as p\n"
            "patched = d.DAG._update_group_components\n"
            "p.stable_group_components(d)\n"
            "print(patched.stable_group_components, d.DAG._update_group_components is patched)\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120
        )
        assert out.stdout.split() == ["True", "True"], out.stderr[-3000:]
