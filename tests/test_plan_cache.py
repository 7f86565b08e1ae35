"""The plan cache behind ``get_plan()`` in rules/common.smk: read once, input checked once
and only by the coordinator, and for a run in S3 a stale local copy of plan.json raises the
``InputOpenException`` that makes Snakemake's job factory fetch it. Snakemake's own
exception, file and path classes; small fakes for the checkpoint and the storage object."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from snakemake.exceptions import IncompleteCheckpointException, InputOpenException
from snakemake.io import AnnotatedString, IOFile, _IOFile
from snakemake.pathvars import Pathvars

from orchestrator_ext import plan_cache
from orchestrator_ext.config import RunConfig, load_config
from orchestrator_ext.fingerprint import current_fingerprint
from orchestrator_ext.layout import RunLayout
from orchestrator_ext.plan_cache import PlanCache
from orchestrator_ext.workflow import PlanShape

REMOTE_RUN = "s3://bucket/prefix/t"


class FakeRule:
    """What ``IOFile`` needs of a rule: its name and (real) path variables."""

    name = "partition_items"
    pathvars = Pathvars.with_defaults()


class FakeCheckpointJob:
    """``checkpoints.partition_items.get()`` once the checkpoint has run."""

    def __init__(self, batches: Path) -> None:
        self.rule = FakeRule()
        self.output = type("Output", (), {"batches": str(batches)})()


class Checkpoint:
    """A checkpoint lookup that counts its calls; raises like Snakemake's until ``done``."""

    def __init__(self, batches: Path) -> None:
        self.batches = batches
        self.done = True
        self.calls = 0

    def __call__(self) -> FakeCheckpointJob:
        self.calls += 1
        if not self.done:
            raise IncompleteCheckpointException(FakeRule(), str(self.batches))
        return FakeCheckpointJob(self.batches)


class StoredPlan:
    """The storage plugin's object for plan.json in S3: only its mtime is asked for."""

    def __init__(self, mtime: float, failures: int = 0) -> None:
        self._mtime = mtime
        self.failures = failures  # transient errors before the answer
        self.calls = 0

    def mtime(self) -> float:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError("endpoint went away")
        return self._mtime


def storage_wrap(stored: StoredPlan) -> Callable[[str], AnnotatedString]:
    """Like Snakemake's ``storage.orchestrator_s3``: a path flagged with its object."""

    def wrap(path: str) -> AnnotatedString:
        target = AnnotatedString(path)
        target.flags["storage_object"] = stored
        return target

    return wrap


@pytest.fixture
def run(tmp_path: Path, make_config: Callable[..., dict[str, Any]]) -> RunConfig:
    (tmp_path / "items.parquet").write_bytes(b"items")
    return load_config(make_config())


def write_plan(batches: Path, run: RunConfig, *, input_sha256: str | None = None) -> Path:
    """plan.json with the fields ``PlanShape`` is read from (of ``run``'s input by default)."""
    batches.mkdir(parents=True, exist_ok=True)
    plan = {
        "n_batches": 7,
        "fan_in": 3,
        "input": {"listing_sha256": input_sha256 or current_fingerprint(run.input)},
    }
    path = batches / "plan.json"
    path.write_text(json.dumps(plan))
    return path


@pytest.fixture
def input_checks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The plan files the cache checked against the input (the real check still runs)."""
    seen: list[str] = []
    real = plan_cache.check_plan_input

    def spy(plan: PlanShape, run: RunConfig, plan_path: str) -> None:
        seen.append(plan_path)
        real(plan, run, plan_path)

    monkeypatch.setattr(plan_cache, "check_plan_input", spy)
    return seen


class TestLocalRun:
    def test_reads_the_plan_once(self, tmp_path: Path, run: RunConfig) -> None:
        write_plan(tmp_path / "batches", run)
        checkpoint = Checkpoint(tmp_path / "batches")
        cache = PlanCache(checkpoint, RunLayout(run.run_dir), run, is_main_process=False)

        plan = cache.get()

        assert plan == PlanShape(7, 3, current_fingerprint(run.input))
        (tmp_path / "batches" / "plan.json").unlink()  # a second read would stop the run
        assert cache.get() is plan
        assert checkpoint.calls == 1

    def test_main_process_checks_the_input_once(
        self, tmp_path: Path, run: RunConfig, input_checks: list[str]
    ) -> None:
        plan_file = write_plan(tmp_path / "batches", run)
        cache = PlanCache(
            Checkpoint(tmp_path / "batches"), RunLayout(run.run_dir), run, is_main_process=True
        )

        cache.get()
        cache.get()

        assert input_checks == [str(plan_file)]

    def test_a_job_process_does_not_check_the_input(
        self, tmp_path: Path, run: RunConfig, input_checks: list[str]
    ) -> None:
        write_plan(tmp_path / "batches", run, input_sha256="0" * 64)
        cache = PlanCache(
            Checkpoint(tmp_path / "batches"), RunLayout(run.run_dir), run, is_main_process=False
        )

        assert cache.get().input_sha256 == "0" * 64
        assert input_checks == []

    def test_plan_of_another_input_stops_the_coordinator(
        self, tmp_path: Path, run: RunConfig, capsys: pytest.CaptureFixture[str]
    ) -> None:
        write_plan(tmp_path / "batches", run, input_sha256="0" * 64)
        cache = PlanCache(
            Checkpoint(tmp_path / "batches"), RunLayout(run.run_dir), run, is_main_process=True
        )

        with pytest.raises(SystemExit):
            cache.get()
        err = capsys.readouterr().err
        assert "the input" in err and "changed since" in err

    def test_checkpoint_not_run_propagates_and_caches_nothing(
        self, tmp_path: Path, run: RunConfig
    ) -> None:
        checkpoint = Checkpoint(tmp_path / "batches")
        checkpoint.done = False
        cache = PlanCache(checkpoint, RunLayout(run.run_dir), run, is_main_process=True)

        with pytest.raises(IncompleteCheckpointException):
            cache.get()

        write_plan(tmp_path / "batches", run)
        checkpoint.done = True
        assert cache.get().n_batches == 7
        assert checkpoint.calls == 2


class TestRemoteRun:
    """``batches`` is the storage plugin's local copy of the run's batches folder."""

    def cache(
        self, tmp_path: Path, run: RunConfig, stored: StoredPlan
    ) -> tuple[PlanCache, RunLayout]:
        layout = RunLayout(REMOTE_RUN, wrap=storage_wrap(stored))
        checkpoint = Checkpoint(tmp_path / "batches")
        return PlanCache(checkpoint, layout, run, is_main_process=False), layout

    def assert_fetches_plan(self, cache: PlanCache, layout: RunLayout) -> None:
        with pytest.raises(InputOpenException) as raised:
            cache.get()
        iofile = raised.value.iofile
        # What the job factory retrieves (iofile.retrieve_from_storage()): the plan's
        # storage target, nothing else.
        assert isinstance(iofile, _IOFile)
        assert iofile == IOFile(layout.plan) == f"{REMOTE_RUN}/batches/plan.json"
        assert iofile.is_storage
        assert iofile.storage_object is IOFile(layout.plan).storage_object
        assert iofile.rule.name == "partition_items"

    def test_missing_local_copy_raises_input_open(self, tmp_path: Path, run: RunConfig) -> None:
        cache, layout = self.cache(tmp_path, run, StoredPlan(mtime=1_000.0))

        self.assert_fetches_plan(cache, layout)

    def test_older_local_copy_raises_input_open(self, tmp_path: Path, run: RunConfig) -> None:
        plan_file = write_plan(tmp_path / "batches", run)
        os.utime(plan_file, (999.0, 999.0))
        cache, layout = self.cache(tmp_path, run, StoredPlan(mtime=1_000.0))

        self.assert_fetches_plan(cache, layout)

    def test_fresh_local_copy_is_read(self, tmp_path: Path, run: RunConfig) -> None:
        plan_file = write_plan(tmp_path / "batches", run)
        os.utime(plan_file, (1_000.0, 1_000.0))
        stored = StoredPlan(mtime=1_000.0)
        cache, _ = self.cache(tmp_path, run, stored)

        assert cache.get().n_batches == 7
        assert cache.get().n_batches == 7
        assert stored.calls == 1  # S3 is asked once, not per call

    def test_fetched_copy_is_read_on_the_next_call(self, tmp_path: Path, run: RunConfig) -> None:
        """What the job factory does after the exception: retrieve, then call again."""
        cache, layout = self.cache(tmp_path, run, StoredPlan(mtime=1_000.0))
        self.assert_fetches_plan(cache, layout)

        plan_file = write_plan(tmp_path / "batches", run)  # the retrieved copy
        os.utime(plan_file, (1_000.5, 1_000.5))

        assert cache.get().fan_in == 3

    def test_transient_error_asking_s3_is_retried(self, tmp_path: Path, run: RunConfig) -> None:
        plan_file = write_plan(tmp_path / "batches", run)
        os.utime(plan_file, (1_000.0, 1_000.0))
        stored = StoredPlan(mtime=1_000.0, failures=1)
        cache, _ = self.cache(tmp_path, run, stored)

        assert cache.get().n_batches == 7
        assert stored.calls == 2

    def test_checkpoint_not_run_propagates(self, tmp_path: Path, run: RunConfig) -> None:
        stored = StoredPlan(mtime=1_000.0)
        layout = RunLayout(REMOTE_RUN, wrap=storage_wrap(stored))
        checkpoint = Checkpoint(tmp_path / "batches")
        checkpoint.done = False
        cache = PlanCache(checkpoint, layout, run, is_main_process=True)

        with pytest.raises(IncompleteCheckpointException):
            cache.get()
        assert stored.calls == 0
