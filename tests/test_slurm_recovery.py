"""Recovery on the real local Slurm cluster: a batch that runs out of memory is resubmitted
by Snakemake with escalated memory, and a batch cancelled with ``scancel`` while it runs is
resubmitted and resumed from its persisted chunks. Both runs end with a final result
byte-identical (sha256) to an undisturbed local run, with every item accounted for.

The runs keep their files in tmp_path and their state in SQLite (single node, shared
filesystem): the Slurm side is what is under test here; S3 and DynamoDB on Slurm are covered
by test_slurm.py. Recovery times are printed and recorded as junit properties.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from conftest import REPO, SNAKEMAKE, base_config, run_snakemake, write_config
from slow_jobs import slow_double_job
from test_slurm import TEST_PROFILE, run_on_slurm, slurm_cluster  # noqa: F401 - a fixture

from orchestrator_ext.executor import normalize_slurm_states, slurm_state
from orchestrator_ext.layout import RunLayout
from orchestrator_ext.state.sqlite import SqliteStateStore
from orchestrator_ext.storage import read_json, sha256_file
from orchestrator_ext.verify import verify_manifest

pytestmark = pytest.mark.workflow
on_slurm = pytest.mark.usefixtures("slurm_cluster")

TESTS = Path(__file__).resolve().parent
N_ITEMS = 200
BATCH_SIZE = 100
#: Memory (MB) and wall time (min) of a first attempt; doubled on each resubmission.
RESOURCES = {"mem_mb": 400, "runtime": 5, "escalation_factor": 2}


def report(record_property: Callable[[str, Any], None], name: str, seconds: float) -> None:
    print(f"\n[recovery] {name}: {seconds:.2f} s")
    record_property(name, round(seconds, 3))


def _config(root: Path, run_id: str, sleep_s: float = 0, **overrides: Any) -> dict[str, Any]:
    return base_config(
        root,
        run_id=run_id,
        batching={"max_items": BATCH_SIZE},
        job=slow_double_job(sleep_s),
        merge={"fan_in": 2, "mode": "concat"},
        resources=RESOURCES,
        **overrides,
    )


def _layout(config: dict[str, Any]) -> RunLayout:
    return RunLayout(f"{config['output_root']}/{config['run_id']}")


def _store(config: dict[str, Any]) -> SqliteStateStore:
    return SqliteStateStore(_layout(config).state_db, config["run_id"], create=False)


def _assert_conserved(config: dict[str, Any]) -> dict[str, Any]:
    manifest = read_json(_layout(config).manifest)
    assert manifest["items_in"] == N_ITEMS
    assert (manifest["items_processed"], manifest["items_dead_lettered"]) == (N_ITEMS, 0)
    assert verify_manifest(_layout(config).manifest) == []
    final = pl.read_parquet(_layout(config).final)
    assert sorted(final["id"].to_list()) == list(range(N_ITEMS))
    return manifest


def _slurm_jobs(workdir: Path) -> list[dict[str, str]]:
    """This run's Slurm jobs (pending, running, or finished less than MinJobAge ago), in
    submission order: id, comment (``rule_<rule>_wildcards_<values>``) and state. Other
    sessions' jobs on the same cluster are told apart by the working directory."""
    out = subprocess.run(
        ["squeue", "--states=all", "-h", "-o", "%i|%k|%T|%Z"],
        check=True, capture_output=True, text=True, timeout=30,
    ).stdout  # fmt: skip
    jobs = []
    for line in out.splitlines():
        job_id, comment, state, cwd = line.split("|", 3)
        if Path(cwd) == workdir:
            jobs.append({"id": job_id, "comment": comment, "state": state})
    return sorted(jobs, key=lambda j: int(j["id"]))


def _batch_jobs(workdir: Path, batch: int) -> list[dict[str, str]]:
    tag = f"rule_process_batch_wildcards_{batch:05d}"
    return [j for j in _slurm_jobs(workdir) if j["comment"] == tag]


def _slurm_cmd(workdir: Path, configfile: Path) -> list[str]:
    """The command ``run_on_slurm`` runs, for a run the test interrupts."""
    return [
        SNAKEMAKE,
        "--snakefile", str(REPO / "workflow" / "Snakefile"),
        "--directory", str(workdir),
        "--profile", str(TEST_PROFILE),
        "--configfile", str(configfile),
    ]  # fmt: skip


def _sacct(job_id: str, *fields: str) -> list[str]:
    out = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-j", job_id, "-o", ",".join(fields)],
        check=True, capture_output=True, text=True, timeout=30,
    ).stdout.strip()  # fmt: skip
    return out.split("|")


def _seconds_between(start: str, end: str) -> float:
    from datetime import datetime

    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


@pytest.fixture(scope="module")
def undisturbed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The same items and job run locally (no faults, no delay): the reference result."""
    root = tmp_path_factory.mktemp("undisturbed")
    _items().write_parquet(root / "items.parquet")
    config = _config(root, "calm")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", str(TESTS))
        started = time.monotonic()
        run_snakemake(root, write_config(root / "calm.yaml", config))
    return {"sha256": sha256_file(_layout(config).final), "seconds": time.monotonic() - started}


def _items() -> pl.DataFrame:
    return pl.DataFrame({"id": list(range(N_ITEMS)), "value": [i * 10 for i in range(N_ITEMS)]})


@pytest.fixture
def slow_jobs_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """``slow_jobs`` importable in the jobs: sbatch exports the environment (--export=ALL)."""
    monkeypatch.setenv("PYTHONPATH", str(TESTS))


@on_slurm
class TestResourceEscalation:
    def test_oom_batch_is_resubmitted_once_with_more_memory(
        self,
        tmp_path: Path,
        undisturbed,
        slow_jobs_on_path,
        record_property,
    ) -> None:
        _items().write_parquet(tmp_path / "items.parquet")
        config = _config(tmp_path, "oom", faults={"enabled": True, "oom_batches": [1]})
        configfile = write_config(tmp_path / "oom.yaml", config)

        started = time.monotonic()
        run_on_slurm(tmp_path, configfile)
        report(record_property, "slurm oom: whole run", time.monotonic() - started)

        assert sha256_file(_layout(config).final) == undisturbed["sha256"]
        _assert_conserved(config)

        # Slurm saw batch 1 twice (failed, then completed) and every other job once.
        jobs = _slurm_jobs(tmp_path)
        batch1 = _batch_jobs(tmp_path, 1)
        assert [j["state"] for j in batch1] == ["FAILED", "COMPLETED"], jobs
        assert len(_batch_jobs(tmp_path, 0)) == 1
        assert len(jobs) == len({j["comment"] for j in jobs}) + 1, jobs
        # ... with the memory and wall time escalated by the configured factor.
        first, second = (_sacct(j["id"], "ReqMem", "Timelimit") for j in batch1)
        assert (first, second) == (["400M", "00:05:00"], ["800M", "00:10:00"])
        assert all(_sacct(j["id"], "ReqMem")[0] == "400M" for j in _batch_jobs(tmp_path, 0))

        # The state store agrees: resource failure on attempt 1, success on attempt 2, each
        # attempt in the Slurm job sacct knows.
        store = _store(config)
        log = store.transitions("batch-00001")
        record = store.get("batch-00001")
        store.close()
        assert [(t.to_status, t.attempt) for t in log][1:] == [
            ("RUNNING", 1), ("FAILED", 1), ("RUNNING", 2), ("SUCCEEDED", 2),
        ]  # fmt: skip
        assert (log[2].detail or "").startswith("resource: MemoryError")
        assert [t.slurm_job_id for t in log if t.to_status == "RUNNING"] == [
            j["id"] for j in batch1
        ]
        assert record is not None
        assert record.attempt == 2 and record.slurm_job_id == batch1[1]["id"]
        assert read_json(_layout(config).result_record(1))["attempts"] == 2
        failed_at = next(t.at for t in log if t.to_status == "FAILED")
        done_at = next(t.at for t in log if t.to_status == "SUCCEEDED")
        report(record_property, "slurm oom: failure to commit of attempt 2",
               _seconds_between(failed_at, done_at))  # fmt: skip


@on_slurm
class TestScancel:
    def test_cancelled_batch_is_resubmitted_and_resumed(
        self,
        tmp_path: Path,
        undisturbed,
        slow_jobs_on_path,
        record_property,
    ) -> None:
        _items().write_parquet(tmp_path / "items.parquet")
        # 100 items at 0.15 s: a batch runs for about 15 s; chunks every 20 items.
        config = _config(tmp_path, "cancel", sleep_s=0.15, chunks={"every_items": 20})
        configfile = write_config(tmp_path / "cancel.yaml", config)
        index = Path(_layout(config).run_dir, "chunks", "batch-00001", "index.json")

        log = tmp_path / "snakemake.log"
        started = time.monotonic()
        with open(log, "w") as out:
            run = subprocess.Popen(
                _slurm_cmd(tmp_path, configfile), cwd=tmp_path, stdout=out,
                stderr=subprocess.STDOUT, env=os.environ.copy(), start_new_session=True,
            )  # fmt: skip
            try:
                # Wait until batch 1 runs in Slurm and has persisted at least one chunk.
                while not (index.exists() and read_json(index)["chunks"]):
                    assert run.poll() is None, log.read_text()[-4000:]
                    assert time.monotonic() - started < 150, "batch 1 never made progress"
                    time.sleep(0.2)
                jobs = _batch_jobs(tmp_path, 1)
                assert [j["state"] for j in jobs] == ["RUNNING"], jobs
                subprocess.run(["scancel", jobs[0]["id"]], check=True, timeout=30)
                cancelled_at = time.monotonic()
                returncode = run.wait(timeout=200)
            finally:
                if run.poll() is None:  # only on failure: stop our snakemake and its jobs
                    os.killpg(run.pid, signal.SIGTERM)
                    try:
                        run.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        os.killpg(run.pid, signal.SIGKILL)
                        run.wait(timeout=30)
                    for job in _slurm_jobs(tmp_path):
                        if job["state"] in ("PENDING", "RUNNING"):
                            subprocess.run(["scancel", job["id"]], timeout=30)
        recovery = time.monotonic() - cancelled_at
        output = log.read_text()
        assert returncode == 0, output[-6000:]
        # sacct says "CANCELLED by 0"; the executor reports it as a failure (see below).
        assert "SLURM status is: 'CANCELLED'" in output

        assert sha256_file(_layout(config).final) == undisturbed["sha256"]
        _assert_conserved(config)
        batch1 = _batch_jobs(tmp_path, 1)
        assert [j["state"] for j in batch1] == ["CANCELLED", "COMPLETED"], batch1
        assert _sacct(batch1[0]["id"], "State")[0].startswith("CANCELLED")
        assert len(_batch_jobs(tmp_path, 0)) == 1

        record = read_json(_layout(config).result_record(1))
        assert record["attempts"] == 2
        by_attempt = record["chunks"]["items_by_attempt"]
        assert sum(by_attempt.values()) == BATCH_SIZE and 0 < by_attempt["1"] < BATCH_SIZE
        store = _store(config)
        transitions = store.transitions("batch-00001")
        store.close()
        assert [t.slurm_job_id for t in transitions if t.to_status == "RUNNING"][:1] == [
            batch1[0]["id"]
        ]
        assert transitions[-1].to_status == "SUCCEEDED"
        assert transitions[-1].slurm_job_id == batch1[1]["id"]
        report(record_property, "slurm scancel: scancel to run completion", recovery)
        report(record_property, "slurm scancel: whole run", time.monotonic() - started)
        print(f"[recovery] slurm scancel: items by attempt {by_attempt}")


class TestCancelledStateIsAFailure:
    """snakemake-executor-plugin-slurm 2.8 waits forever for a job ``sacct`` reports as
    ``CANCELLED by <uid>``; the orchestrator-slurm executor strips the qualifier."""

    def test_qualifier_is_dropped(self) -> None:
        assert slurm_state("CANCELLED by 0") == "CANCELLED"
        assert slurm_state("COMPLETED") == "COMPLETED"

    def test_status_query_of_the_plugin_is_normalized(self) -> None:
        async def query_job_status(command: str, logger: Any) -> Any:
            return {"7": "CANCELLED by 1000", "8": "RUNNING"}, 0.01

        plugin = types.SimpleNamespace(query_job_status=query_job_status)
        normalize_slurm_states(plugin)
        normalize_slurm_states(plugin)  # idempotent: wrapped once
        states, _ = asyncio.run(plugin.query_job_status("sacct ...", None))
        assert states == {"7": "CANCELLED", "8": "RUNNING"}
        assert plugin.query_job_status.__wrapped__ is query_job_status

    def test_the_orchestrator_slurm_executor_installs_it(self) -> None:
        import snakemake_executor_plugin_slurm

        import snakemake_executor_plugin_orchestrator_slurm  # noqa: F401

        assert snakemake_executor_plugin_slurm.query_job_status.normalizes_slurm_states


@on_slurm
class TestKilledCoordinatorWithGroupJobs:
    """profiles/slurm's group jobs (several batches in one Slurm job) keep recovery intact:
    a SIGKILLed coordinator whose group jobs are cancelled mid-way is run again, every
    batch committed before the kill is kept, the others are computed once, nothing is lost."""

    def test_killed_coordinator_and_cancelled_group_jobs_recover(
        self,
        tmp_path: Path,
        slow_jobs_on_path,
        record_property,
    ) -> None:
        from test_slurm import profile_group_args

        _items().write_parquet(tmp_path / "items.parquet")
        # 10 batches of 20 items at 0.1 s: two group jobs of five batches, about 2 s a batch.
        config = base_config(
            tmp_path,
            run_id="gkill",
            batching={"max_items": 20},
            job=slow_double_job(0.1),
            merge={"fan_in": 4, "mode": "concat"},
            resources=RESOURCES,
        )
        configfile = write_config(tmp_path / "gkill.yaml", config)
        results = Path(_layout(config).run_dir, "results")
        group_args = profile_group_args(batches=5)

        log = tmp_path / "snakemake.log"
        started = time.monotonic()
        with open(log, "w") as out:
            run = subprocess.Popen(
                [*_slurm_cmd(tmp_path, configfile), *group_args], cwd=tmp_path, stdout=out,
                stderr=subprocess.STDOUT, env=os.environ.copy(), start_new_session=True,
            )  # fmt: skip
            try:
                while len(list(results.glob("batch-*.json"))) < 2:
                    assert run.poll() is None, log.read_text()[-4000:]
                    assert time.monotonic() - started < 200, "no batch committed"
                    time.sleep(0.2)
                time.sleep(1.5)  # midway: a few batches committed, both group jobs running
                os.kill(run.pid, signal.SIGKILL)  # the coordinator only; its jobs go on
                killed = time.time()
                run.wait(timeout=30)
            finally:
                if run.poll() is None:
                    os.killpg(run.pid, signal.SIGKILL)
                    run.wait(timeout=30)
            jobs = _slurm_jobs(tmp_path)
            groups = [j for j in jobs if j["comment"].startswith("rule_batches")]
            assert groups and all(j["state"] in ("RUNNING", "PENDING") for j in groups), jobs
            subprocess.run(["scancel", *(j["id"] for j in groups)], check=True, timeout=30)
            while any(j["state"] in ("RUNNING", "PENDING") for j in _slurm_jobs(tmp_path)):
                time.sleep(0.5)
        # Batches whose record was published well before the kill (a batch commits, then
        # its job's Snakemake marks it complete a moment later).
        kept = {p.stem for p in results.glob("batch-*.json") if p.stat().st_mtime < killed - 1}
        assert 0 < len(kept) < 10, kept

        rerun_started = time.monotonic()
        again = run_on_slurm(tmp_path, configfile, *group_args)
        report(record_property, "slurm group kill: rerun", time.monotonic() - rerun_started)

        _assert_conserved(config)
        final = pl.read_parquet(_layout(config).final).sort("id")
        assert final["doubled"].to_list() == [i * 20 for i in range(N_ITEMS)]
        store = _store(config)
        batches = [t for t in store.tasks() if t.kind == "batch"]
        commits = {
            t.task_id: sum(x.to_status == "SUCCEEDED" for x in store.transitions(t.task_id))
            for t in batches
        }
        attempts = {t.task_id: t.attempt for t in batches}
        store.close()
        assert len(batches) == 10 and all(n >= 1 for n in commits.values()), commits
        assert all(commits[b] == 1 and attempts[b] == 1 for b in kept), (kept, commits)
        # The rerun computed only what was missing, in group jobs again.
        assert "group_batches_process_batch" in again.stdout + again.stderr
        assert sum(n == 1 for n in commits.values()) >= len(kept)
