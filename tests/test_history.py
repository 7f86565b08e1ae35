"""Unit tests for orchestrator_ext.history: ``orchestrator errors`` and ``orchestrator audit``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from ops_fixtures import BAD_IDS, make_finished_run, open_store, upload_run

from orchestrator_ext.cli import EXIT_USER_ERROR, main
from orchestrator_ext.history import (
    DeadLetter,
    DeadLetters,
    TaskFailure,
    UnknownTask,
    attempt_spans,
    batch_task,
    category_of_detail,
    failed_attempts_by_category,
    list_failures,
    log_path,
    read_dead_letters,
    resolve_task,
)
from orchestrator_ext.history_view import render_audit, render_dead_letters, render_failures
from orchestrator_ext.layout import RunLayout
from orchestrator_ext.state.sqlite import SqliteStateStore


@pytest.fixture
def finished(tmp_path: Path, make_config: Callable[..., dict[str, Any]]):
    return make_finished_run(tmp_path, make_config)


@pytest.fixture
def failing_store(tmp_path: Path) -> SqliteStateStore:
    """A store where batch 0 is DEAD (permanent), batch 1 FAILED (resource), batch 2 ran."""
    store = SqliteStateStore(tmp_path / "state.sqlite", "x")
    store.ensure_tasks(["batch-00000", "batch-00001", "batch-00002", "final"])
    lease = store.begin_attempt("batch-00000", host="n1", slurm_job_id="11")
    store.fail(lease, "permanent", "BatchFailed", "3 of 5 items failed", retryable=False)
    lease = store.begin_attempt("batch-00001", host="n2", slurm_job_id="12")
    store.fail(lease, "resource", "MemoryError", "oom", retryable=True)
    store.succeed(store.begin_attempt("batch-00002", host="n3"), "0" * 64)
    return store


class TestLogPath:
    @pytest.mark.parametrize(
        ("task", "log"),
        [
            ("batch-00003", "run/logs/process_batch/00003.log"),
            ("merge-L2-part-00001", "run/logs/merge_level/L2-00001.log"),
            ("final", "run/logs/merge_final/final.log"),
            ("partition", "run/logs/partition_items/partition.log"),
            ("manifest", "run/logs/write_manifest/manifest.log"),
            ("something-else", None),
        ],
    )
    def test_follows_the_rules_log_directives(self, task: str, log: str | None) -> None:
        assert log_path(RunLayout("run"), task) == log

    def test_run_in_s3_logs_locally(self) -> None:
        layout = RunLayout("s3://bucket/prefix/r")
        assert log_path(layout, "batch-00001") == "logs/r/process_batch/00001.log"


class TestAttemptSpans:
    def test_every_attempt_with_outcome_and_category(self, failing_store) -> None:
        spans = attempt_spans(failing_store.transitions())
        assert [(s.task_id, s.attempt, s.outcome, s.category) for s in spans] == [
            ("batch-00000", 1, "DEAD", "permanent"),
            ("batch-00001", 1, "FAILED", "resource"),
            ("batch-00002", 1, "SUCCEEDED", None),
        ]
        assert all(s.duration_s is not None and s.duration_s >= 0 for s in spans)
        assert spans[0].slurm_job_id == "11"

    def test_open_attempt_has_no_end(self, failing_store) -> None:
        failing_store.begin_attempt("batch-00001")
        spans = attempt_spans(failing_store.transitions("batch-00001"))
        assert [(s.attempt, s.outcome) for s in spans] == [(1, "FAILED"), (2, None)]
        assert spans[-1].duration_s is None

    def test_failed_attempts_by_category(self, failing_store) -> None:
        counts = failed_attempts_by_category(attempt_spans(failing_store.transitions()))
        assert counts == {"transient": 0, "resource": 1, "permanent": 1}

    @pytest.mark.parametrize(
        ("detail", "category"),
        [("resource: MemoryError: x", "resource"), ("odd: thing", "unknown"), (None, "unknown")],
    )
    def test_category_of_detail(self, detail: str | None, category: str) -> None:
        assert category_of_detail(detail) == category


class TestListFailures:
    def test_failed_and_dead_tasks_with_log(self, failing_store) -> None:
        failures = list_failures(failing_store.tasks(), RunLayout("run"))
        assert [(f.task_id, f.status, f.category, f.attempt) for f in failures] == [
            ("batch-00000", "DEAD", "permanent", 1),
            ("batch-00001", "FAILED", "resource", 1),
        ]
        assert failures[0].log == "run/logs/process_batch/00000.log"
        assert failures[0].slurm_job_id == "11" and failures[0].error_type == "BatchFailed"

    def test_filters(self, failing_store) -> None:
        tasks = failing_store.tasks()
        layout = RunLayout("run")
        assert [f.task_id for f in list_failures(tasks, layout, category="resource")] == [
            "batch-00001"
        ]
        assert list_failures(tasks, layout, task_id="batch-00002") == []


class TestDeadLetters:
    def test_reads_every_file(self, finished) -> None:
        _, config = finished
        dead = read_dead_letters(config.run_dir)
        # Only the two batches with dead letters have a file.
        assert dead.total == len(BAD_IDS) and dead.files == 2
        assert sorted(item.id for item in dead.items) == sorted(BAD_IDS)
        assert dead.by_category == {"permanent": 3}
        assert dead.by_batch == {"00000": 2, "00003": 1}

    def test_filters_and_limit(self, finished) -> None:
        _, config = finished
        one = read_dead_letters(config.run_dir, batch="batch-00003")
        assert [item.id for item in one.items] == [17]
        limited = read_dead_letters(config.run_dir, limit=1)
        assert len(limited.items) == 1 and limited.total == 3
        assert read_dead_letters(config.run_dir, category="transient").total == 0

    def test_run_in_s3(self, finished, aws_env: str) -> None:
        """The same answers for the run's folder in S3 (the local S3 server) as on disk."""
        import uuid

        import polars as pl

        from orchestrator_ext.s3 import make_s3_client

        _, config = finished
        client = make_s3_client()
        bucket = f"history-{uuid.uuid4().hex[:10]}"
        client.create_bucket(Bucket=bucket)
        run_dir = upload_run(config.run_dir, client, bucket, "p")
        dead = read_dead_letters(run_dir)
        expected = pl.read_parquet(f"{config.run_dir}/dead_letter/*.parquet")
        assert dead.files == 2 and dead.total == expected.height == len(BAD_IDS)
        assert sorted(item.id for item in dead.items) == sorted(expected["id"].to_list())
        assert dead.by_batch == {"00000": 2, "00003": 1}
        assert [d.id for d in read_dead_letters(run_dir, batch="batch-00003").items] == [17]


class TestResolveTask:
    def test_exact_and_bare_batch_number(self) -> None:
        known = ["batch-00003", "final"]
        assert resolve_task("final", known) == "final"
        assert resolve_task("3", known) == "batch-00003"
        assert batch_task("00003") == batch_task(3) == batch_task("batch-00003")

    def test_unknown_task(self) -> None:
        with pytest.raises(UnknownTask, match="no task 'nope' in this run"):
            resolve_task("nope", ["batch-00000"])


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("orchestrator: error: "), err
    return err[0]


class TestErrorsCommand:
    def test_json_lists_failures_and_dead_letters(self, finished, capsys) -> None:
        configfile, config = finished
        store = open_store(config)
        lease = store.begin_attempt("manifest", host="n9", slurm_job_id="99")
        store.fail(lease, "permanent", "ConservationError", "items not conserved", False)
        store.close()
        assert main(["errors", "--json", "--configfile", str(configfile)]) == 0
        data = json.loads(capsys.readouterr().out)
        assert [t["task_id"] for t in data["failed_tasks"]] == ["manifest"]
        task = data["failed_tasks"][0]
        assert task["slurm_job_id"] == "99" and task["log"].endswith(
            "logs/write_manifest/manifest.log"
        )
        assert data["dead_letters"]["total"] == 3
        assert {item["id"] for item in data["dead_letters"]["items"]} == set(BAD_IDS)

    def test_batch_filter_and_table(self, finished, capsys) -> None:
        configfile, _ = finished
        assert main(["errors", "--batch", "3", "--configfile", str(configfile)]) == 0
        out = capsys.readouterr().out
        assert "no failed tasks" in out
        assert "showing 1 of 1" in out and "PermanentError: item 17" in out

    def test_unknown_batch_is_one_line(self, finished, capsys) -> None:
        configfile, _ = finished
        code = main(["errors", "--batch", "99", "--configfile", str(configfile)])
        assert code == EXIT_USER_ERROR
        assert "the run has no task batch-00099" in _one_error_line(capsys)

    def test_not_a_batch_number(self, finished, capsys) -> None:
        configfile, _ = finished
        assert main(["errors", "--batch", "x1", "--configfile", str(configfile)]) == 2
        assert "--batch expects a batch number" in _one_error_line(capsys)


class TestAuditCommand:
    def test_one_task_in_order(self, finished, capsys) -> None:
        configfile, _ = finished
        assert main(["audit", "--json", "--task", "1", "--configfile", str(configfile)]) == 0
        data = json.loads(capsys.readouterr().out)
        assert data["task"] == "batch-00001"
        steps = [(r["from"], r["to"], r["attempt"]) for r in data["transitions"]]
        assert steps == [
            (None, "PENDING", 0),
            ("PENDING", "RUNNING", 1),
            ("RUNNING", "FAILED", 1),
            # The fixture fails the batch before partitioning; the plan starts it over.
            ("FAILED", "PENDING", 1),
            ("PENDING", "RUNNING", 2),
            ("RUNNING", "SUCCEEDED", 2),
        ]
        assert data["transitions"][1]["host"] == "node-a"
        assert data["transitions"][1]["slurm_job_id"] == "1001"
        assert data["transitions"][2]["detail"].startswith("resource: ")

    def test_whole_run_lines(self, finished, capsys) -> None:
        configfile, config = finished
        assert main(["audit", "--configfile", str(configfile)]) == 0
        lines = capsys.readouterr().out.splitlines()
        store = open_store(config)
        n = len(store.transitions())
        store.close()
        assert lines[0] == f"run r: {n} transitions" and len(lines) == n + 1
        assert any("batch-00002" in line and "RUNNING -> FAILED" in line for line in lines)

    def test_unknown_task(self, finished, capsys) -> None:
        configfile, _ = finished
        assert main(["audit", "--task", "nope", "--configfile", str(configfile)]) == 2
        assert "no task 'nope'" in _one_error_line(capsys)


def _text(renderable: Any) -> str:
    """What the console prints for ``renderable``, wide enough for one line per row."""
    import io

    from rich.console import Console

    out = io.StringIO()
    Console(file=out, width=300).print(renderable)
    return out.getvalue()


def _failure(message: str = "oom", **fields: Any) -> TaskFailure:
    values: dict[str, Any] = {
        "task_id": "batch-00001", "kind": "batch", "status": "FAILED",
        "category": "resource", "error_type": "MemoryError", "message": message,
        "attempt": 2, "host": "n1", "slurm_job_id": None, "finished_at": None,
        "log": "run/logs/process_batch/00001.log", **fields,
    }  # fmt: skip
    return TaskFailure(**values)


class TestRenderFailures:
    def test_none(self) -> None:
        assert render_failures([]) == "no failed tasks"

    def test_one_row_per_task_with_its_log(self) -> None:
        text = _text(render_failures([_failure(), _failure(task_id="final", log=None)]))
        assert text.startswith("failed tasks (2)")
        row = next(line for line in text.splitlines() if "batch-00001" in line)
        for cell in ("FAILED", "resource", "MemoryError: oom", "2", "00001.log"):
            assert cell in row
        final = next(line for line in text.splitlines() if "final" in line)
        assert final.count(" - ") == 2  # no Slurm job id, no log

    def test_markup_in_data_is_printed_as_is(self) -> None:
        text = _text(render_failures([_failure("bad [/bold] [red]x[/red]", host="[i]n")]))
        assert "MemoryError: bad [/bold] [red]x[/red]" in text


class TestRenderDeadLetters:
    ITEMS = [DeadLetter("00003", "[i]17", "permanent", "PermanentError", "PermanentError: x", 1)]

    def test_shown_of_total(self) -> None:
        dead = DeadLetters(self.ITEMS, total=4, by_category={}, by_batch={}, files=1)
        text = _text(render_dead_letters(dead))
        assert text.startswith("dead-lettered items: showing 1 of 4")
        assert "[i]17" in text and "PermanentError: x" in text

    def test_none(self) -> None:
        empty = DeadLetters([], total=0, by_category={}, by_batch={}, files=0)
        assert render_dead_letters(empty) == "no dead-lettered items"


class TestRenderAudit:
    def test_heading_then_one_aligned_line_per_transition(self) -> None:
        rows = [
            {"task_id": "batch-00000", "from": None, "to": "PENDING", "attempt": 0,
             "host": None, "slurm_job_id": None, "at": "T0", "detail": None},
            {"task_id": "batch-00000", "from": "RUNNING", "to": "FAILED", "attempt": 1,
             "host": "n1", "slurm_job_id": "7", "at": "T1", "detail": "resource: oom"},
        ]  # fmt: skip
        assert render_audit("r", rows) == [
            "run r: 2 transitions",
            "T0  batch-00000                    - -> PENDING   attempt 0  host -  slurm -",
            "T1  batch-00000              RUNNING -> FAILED    attempt 1  host n1  slurm 7"
            "  resource: oom",
        ]
