"""Unit tests for orchestrator_ext.status and ``orchestrator status`` (SQLite state store)."""

from __future__ import annotations

import io
import json
import socket
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.console import Console

from orchestrator_ext.cli import main
from orchestrator_ext.config import ResourceSpec, load_config
from orchestrator_ext.layout import RunLayout
from orchestrator_ext.state import TaskRecord, TaskStatus
from orchestrator_ext.state.sqlite import SqliteStateStore
from orchestrator_ext.status import build_status, format_duration, is_finished, render_status

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


def _at(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat()


def _batch(i: int, status: TaskStatus, **fields: Any) -> TaskRecord:
    return TaskRecord(task_id=f"batch-{i:05d}", status=status, kind="batch", items=100, **fields)


@pytest.fixture
def run_tasks() -> list[TaskRecord]:
    """10 batches: 4 done (one per minute from t=60 s), 2 running, 1 dead, 1 failed, 2 pending."""
    tasks = [
        _batch(i, TaskStatus.SUCCEEDED, attempt=1, started_at=_at(0), finished_at=_at(60 * (i + 1)),
               items_done=100, items_dead=i)
        for i in range(4)
    ]  # fmt: skip
    tasks += [
        _batch(4, TaskStatus.RUNNING, attempt=1, started_at=_at(200), host="n1", items_done=40),
        _batch(5, TaskStatus.RUNNING, attempt=2, started_at=_at(100), host="n2",
               slurm_job_id="77"),
        _batch(6, TaskStatus.DEAD, attempt=1, started_at=_at(10), finished_at=_at(20),
               error_category="permanent"),
        _batch(7, TaskStatus.FAILED, attempt=1, started_at=_at(10), finished_at=_at(30),
               error_category="resource"),
        _batch(8, TaskStatus.PENDING),
        _batch(9, TaskStatus.PENDING),
        TaskRecord(task_id="final", status=TaskStatus.PENDING, kind="final"),
        TaskRecord(task_id="manifest", status=TaskStatus.PENDING, kind="manifest"),
    ]  # fmt: skip
    return tasks


class TestBuildStatus:
    def test_counts_progress_items_and_failures(self, run_tasks: list[TaskRecord]) -> None:
        status = build_status("r", run_tasks, now=T0 + timedelta(seconds=240))
        assert status.tasks == 12
        assert status.by_status["SUCCEEDED"] == 4 and status.by_status["PENDING"] == 4
        assert status.by_kind["batch"] == {
            "SUCCEEDED": 4, "RUNNING": 2, "DEAD": 1, "FAILED": 1, "PENDING": 2,
        }  # fmt: skip
        assert (status.batches_total, status.batches_done, status.batches_dead) == (10, 4, 1)
        assert status.fraction_done == pytest.approx(0.4)
        assert status.items_total == 1000
        assert status.items_done == 440
        assert status.items_dead_lettered == 0 + 1 + 2 + 3
        assert status.failures_by_category == {"permanent": 1, "resource": 1}
        assert status.retried_tasks == 1
        assert not status.finished

    def test_throughput_and_eta_over_the_whole_run(self, run_tasks: list[TaskRecord]) -> None:
        status = build_status("r", run_tasks, now=T0 + timedelta(seconds=240))
        # 4 batches in 240 s since the first start: 1 per minute; 10 - 4 done - 1 dead = 5 left
        assert status.throughput_basis == "whole run"
        assert status.batches_per_minute == pytest.approx(1.0)
        assert status.items_per_second == pytest.approx(400 / 240, rel=1e-3)
        assert status.eta_s == pytest.approx(300)
        assert status.eta_at == "2030-01-01T12:09:00+00:00"

    def test_throughput_over_the_recent_window(self, run_tasks: list[TaskRecord]) -> None:
        # 100 s window at t=240: batches finished at 180 and 240 -> 2 per 100 s
        status = build_status("r", run_tasks, now=T0 + timedelta(seconds=240), window_s=100)
        assert status.throughput_basis == "last 100 s"
        assert status.batches_per_minute == pytest.approx(1.2)

    def test_slowest_running_longest_first_and_overdue(self, run_tasks: list[TaskRecord]) -> None:
        # runtime 2 min, doubled per attempt: attempt 1 may run 120 s, attempt 2 240 s
        resources = ResourceSpec(runtime=2, escalation_factor=2)
        status = build_status("r", run_tasks, now=T0 + timedelta(seconds=330),
                              resources=resources)  # fmt: skip
        running = [(r.task_id, r.elapsed_s, r.overdue) for r in status.slowest_running]
        assert running == [("batch-00005", 230.0, False), ("batch-00004", 130.0, True)]
        assert status.slowest_running[0].slurm_job_id == "77"

    def test_before_partitioning(self) -> None:
        status = build_status("r", [])
        assert status.batches_total == 0 and status.eta_s is None
        text = _render(status)
        assert "no batches yet" in text

    def test_finished_when_the_manifest_succeeded(self, run_tasks: list[TaskRecord]) -> None:
        run_tasks[-1].status = TaskStatus.SUCCEEDED
        assert build_status("r", run_tasks, now=T0).finished

    def test_to_dict_keeps_the_original_keys(self, run_tasks: list[TaskRecord]) -> None:
        data = build_status("r", run_tasks, now=T0).to_dict()
        assert {"run_id", "tasks", "by_status", "by_kind"} <= set(data)
        assert {"eta_s", "batches_per_minute", "failures_by_category", "slowest_running"} <= set(
            data
        )
        json.dumps(data)


def _render(status: Any) -> str:
    console = Console(file=io.StringIO(), width=120)
    console.print(render_status(status))
    return console.file.getvalue()  # type: ignore[attr-defined]


class TestRenderStatus:
    def test_shows_progress_rate_failures_and_slowest(self, run_tasks: list[TaskRecord]) -> None:
        text = _render(build_status("r", run_tasks, now=T0 + timedelta(seconds=240)))
        assert "4/10 batches (40.0%)" in text
        assert "1.00 batches/min" in text and "ETA 5m00s" in text
        assert "failed tasks by category" in text and "resource" in text
        assert "slowest running batches" in text and "batch-00005" in text

    @pytest.mark.parametrize(
        ("seconds", "text"), [(None, "-"), (12.4, "12s"), (245, "4m05s"), (10920, "3h02m")]
    )
    def test_format_duration(self, seconds: float | None, text: str) -> None:
        assert format_duration(seconds) == text


@pytest.fixture
def configfile(tmp_path: Path, make_config: Callable[..., dict[str, Any]]) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(make_config(run_id="r")))
    return path


@pytest.fixture
def store(configfile: Path):
    config = load_config(yaml.safe_load(configfile.read_text()))
    store = SqliteStateStore(RunLayout(config.run_dir).state_db, config.run_id)
    store.ensure_tasks([f"batch-{i:05d}" for i in range(4)] + ["final", "manifest"],
                       items={f"batch-{i:05d}": 10 for i in range(4)})  # fmt: skip
    for task in ("batch-00000", "batch-00001"):
        store.succeed(store.begin_attempt(task, host="n1"), "0" * 64, items=10, items_dead=1)
    lease = store.begin_attempt("batch-00002", host="n2")
    store.fail(lease, "resource", "MemoryError", "out of memory", retryable=True)
    store.begin_attempt("batch-00003", host="n2", slurm_job_id="4242")
    yield store
    store.close()


def write_lease(configfile: Path, **lease: Any) -> None:
    """A coordinator lease in the run folder, as ``coordinator.acquire`` writes it."""
    from orchestrator_ext.coordinator import lease_path

    config = load_config(yaml.safe_load(configfile.read_text()))
    held = {"run_id": "r", "host": "node7", "pid": 4321, "workdir": "/w",
            "started_at": "2026-12-02T00:00:00+00:00", "token": "t", **lease}  # fmt: skip
    lease_path(config.run_dir).write_text(json.dumps(held))


@pytest.fixture
def coordinated(configfile: Path, store) -> None:
    """The run is coordinated from another host (a lease this host cannot check)."""
    write_lease(configfile)


class TestStatusCommand:
    def test_json(self, configfile: Path, store, capsys) -> None:
        assert main(["status", "--json", "--configfile", str(configfile)]) == 0
        data = json.loads(capsys.readouterr().out)
        assert data["run_id"] == "r" and data["tasks"] == 6
        assert data["by_kind"]["batch"] == {"SUCCEEDED": 2, "FAILED": 1, "RUNNING": 1}
        assert data["batches_done"] == 2 and data["items_dead_lettered"] == 2
        assert data["failures_by_category"] == {"resource": 1}
        assert [r["task_id"] for r in data["slowest_running"]] == ["batch-00003"]
        assert data["slowest_running"][0]["slurm_job_id"] == "4242"

    def test_table(self, configfile: Path, coordinated, capsys) -> None:
        assert main(["status", "--configfile", str(configfile)]) == 0
        out = capsys.readouterr().out
        assert "run r: 6 tasks, in progress" in out
        assert "coordinated by snakemake pid 4321 on host node7" in out
        assert "2/4 batches" in out and "batch-00003" in out

    @pytest.mark.parametrize("lease", [None, {"host": socket.gethostname(), "pid": 2**22 + 7}])
    def test_a_run_no_coordinator_runs_is_stopped_not_in_progress(
        self, configfile: Path, store, capsys, lease: dict[str, Any] | None
    ) -> None:
        """A failed or SIGKILLed run's rows stay as they were (a RUNNING batch here): the
        status said "in progress" and --watch never ended. No lease, or one whose process
        on this host is gone, is a stopped run."""
        if lease is not None:
            write_lease(configfile, **lease)
        assert main(["status", "--configfile", str(configfile)]) == 0
        out = capsys.readouterr().out
        assert "run r: 6 tasks, stopped" in out and "no coordinator is running it" in out
        # The RUNNING batch is not said to be running: the stopped run left it so.
        assert "slowest running batches" not in out
        assert "batches left RUNNING by the stopped run" in " ".join(out.split())
        assert main(["status", "--json", "--configfile", str(configfile)]) == 0
        data = json.loads(capsys.readouterr().out)
        assert (data["state"], data["stopped"], data["coordinator"]) == ("stopped", True, None)

    def test_watch_ends_when_the_run_stopped_with_status_1(self, configfile, store, capsys) -> None:
        args = ["status", "--watch", "--json", "--interval", "0.01"]
        assert main([*args, "--configfile", str(configfile)]) == 1
        lines = capsys.readouterr().out.strip().splitlines()
        assert len(lines) == 1 and json.loads(lines[0])["state"] == "stopped"

    def test_a_run_not_started_yet_is_not_stopped(self, configfile: Path, capsys) -> None:
        config = load_config(yaml.safe_load(configfile.read_text()))
        SqliteStateStore(RunLayout(config.run_dir).state_db, config.run_id).close()
        assert main(["status", "--json", "--configfile", str(configfile)]) == 0
        data = json.loads(capsys.readouterr().out)
        assert (data["tasks"], data["state"]) == (0, "in progress")

    def test_watch_json_prints_one_object_per_refresh(
        self, configfile, coordinated, capsys
    ) -> None:
        args = ["status", "--watch", "--json", "--count", "2", "--interval", "0.01"]
        assert main([*args, "--configfile", str(configfile)]) == 0
        lines = capsys.readouterr().out.strip().splitlines()
        assert len(lines) == 2
        assert all(json.loads(line)["batches_total"] == 4 for line in lines)

    def test_watch_live_stops_after_count(self, configfile, coordinated, capsys) -> None:
        args = ["status", "--watch", "--count", "2", "--interval", "0.01"]
        assert main([*args, "--configfile", str(configfile)]) == 0
        assert "2/4 batches" in capsys.readouterr().out

    def test_watch_sees_new_commits(self, configfile: Path, store) -> None:
        from orchestrator_ext.status import watch_status

        seen = []

        def snapshot(source: SqliteStateStore):
            status = build_status("r", source.tasks())
            seen.append(status.batches_done)
            if len(seen) == 1:  # another process commits between two refreshes
                other = SqliteStateStore(store.path, "r")
                lease = other.begin_attempt("batch-00002")
                other.succeed(lease, "0" * 64)
                other.close()
            return status

        reader = SqliteStateStore(store.path, "r", create=False)
        try:
            watch_status(reader, snapshot, Console(file=io.StringIO()), 0.01, count=2)
        finally:
            reader.close()
        assert seen == [2, 3]

    def test_bad_interval_is_a_usage_error(self, configfile: Path, capsys) -> None:
        with pytest.raises(SystemExit) as exc:
            main(["status", "--watch", "--interval", "0", "--configfile", str(configfile)])
        assert exc.value.code == 2
        assert "must be positive" in capsys.readouterr().err


class TestFinishedRun:
    """A finished run is measured from its first start to its last finish, not to now."""

    @pytest.fixture
    def past_run(self, configfile: Path, monkeypatch: pytest.MonkeyPatch):
        """The run's store, written by a clock set 35m30s back: 2 batches of 10 items, the
        last finish (the manifest) 11 s after the first start. ``step(name)`` takes the run
        to that step: "batches" (both done, merges pending) or "manifest" (finished)."""
        import orchestrator_ext.state as state_module

        start = datetime.now(UTC) - timedelta(minutes=35, seconds=30)
        clock = {"t": start}
        monkeypatch.setattr(
            state_module, "now_iso", lambda: clock["t"].isoformat(timespec="microseconds")
        )
        config = load_config(yaml.safe_load(configfile.read_text()))
        store = SqliteStateStore(RunLayout(config.run_dir).state_db, config.run_id)
        store.ensure_tasks(["batch-00000", "batch-00001", "final", "manifest"],
                           items={"batch-00000": 10, "batch-00001": 10})  # fmt: skip

        def run(task: str, begin: float, end: float) -> None:
            clock["t"] = start + timedelta(seconds=begin)
            lease = store.begin_attempt(task, host="n1")
            clock["t"] = start + timedelta(seconds=end)
            store.succeed(lease, "0" * 64, items=store.get(task).items, items_dead=0)

        def step(name: str) -> None:
            if name == "batches":
                run("batch-00000", 0, 5)
                run("batch-00001", 1, 9)
            else:
                run("final", 9, 10)
                run("manifest", 10, 11)

        yield store, start, step
        store.close()

    def test_status_command_measures_to_the_last_finish(self, configfile, past_run, capsys) -> None:
        _, _, step = past_run
        step("batches")
        step("manifest")
        assert main(["status", "--json", "--configfile", str(configfile)]) == 0
        data = json.loads(capsys.readouterr().out)
        assert data["finished"] and data["elapsed_s"] == pytest.approx(11.0)
        assert data["throughput_basis"] == "whole run"
        assert data["items_per_second"] == pytest.approx(20 / 11, abs=1e-3)
        assert data["batches_per_minute"] == pytest.approx(2 / 11 * 60, abs=1e-3)
        assert main(["status", "--configfile", str(configfile)]) == 0
        out = capsys.readouterr().out
        assert "elapsed 11s" in out and "(1.8 items/s, whole run)" in out

    def test_the_recent_window_does_not_apply_to_a_finished_run(self, past_run) -> None:
        store, start, step = past_run
        step("batches")
        step("manifest")
        # Looked at 1 s after the end, both batches fall in a 10 s window, but a finished
        # run's throughput is that of the whole run.
        status = build_status("r", store.tasks(), now=start + timedelta(seconds=12), window_s=10)
        assert status.elapsed_s == pytest.approx(11.0)
        assert status.throughput_basis == "whole run"
        assert status.items_per_second == pytest.approx(20 / 11, abs=1e-3)

    def test_a_running_run_still_measures_to_now(self, past_run) -> None:
        store, start, step = past_run
        step("batches")  # merges and manifest still to do: the run is not finished
        status = build_status("r", store.tasks(), now=start + timedelta(seconds=100))
        assert not status.finished and status.elapsed_s == pytest.approx(100.0)
        assert status.items_per_second == pytest.approx(20 / 100, abs=1e-3)


class TestIsFinished:
    def test_only_a_succeeded_manifest_finishes_a_run(self) -> None:
        batch = TaskRecord("batch-00000", TaskStatus.SUCCEEDED, 1, kind="batch")
        assert not is_finished([batch])
        for status in (TaskStatus.PENDING, TaskStatus.RUNNING, TaskStatus.FAILED):
            assert not is_finished([batch, TaskRecord("manifest", status, 1, kind="manifest")])
        assert is_finished(
            [batch, TaskRecord("manifest", TaskStatus.SUCCEEDED, 1, kind="manifest")]
        )
