"""attempt_log: each attempt's log outlives the next attempt's removal of the rule's log."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from orchestrator_ext import attempt_log
from orchestrator_ext.history import audit_rows, log_path
from orchestrator_ext.history_view import render_audit
from orchestrator_ext.layout import RunLayout
from orchestrator_ext.state.sqlite import SqliteStateStore


def test_path_sits_beside_the_rules_log() -> None:
    assert attempt_log.path("run/logs/process_batch/00003.log", 2) == (
        "run/logs/process_batch/00003.attempt-2.log"
    )


def test_a_kept_log_survives_the_next_attempts_removal(tmp_path: Path) -> None:
    log = tmp_path / "00003.log"
    with open(log, "a") as first:
        first.write("attempt 1 starts\n")
        first.flush()
        attempt_log.keep(str(log), 1)
        first.write("attempt 1 fails\n")  # written after the link: under both names
    os.remove(log)  # what Snakemake does before the next attempt
    log.write_text("attempt 2\n")
    attempt_log.keep(str(log), 2)
    assert Path(attempt_log.path(str(log), 1)).read_text() == "attempt 1 starts\nattempt 1 fails\n"
    assert Path(attempt_log.path(str(log), 2)).read_text() == "attempt 2\n"


def test_a_name_left_by_an_earlier_plan_is_replaced(tmp_path: Path) -> None:
    log = tmp_path / "00003.log"
    Path(attempt_log.path(str(log), 1)).write_text("an earlier plan's attempt 1\n")
    log.write_text("this plan's attempt 1\n")
    attempt_log.keep(str(log), 1)
    assert Path(attempt_log.path(str(log), 1)).read_text() == "this plan's attempt 1\n"


def test_a_log_that_cannot_be_linked_is_a_warning_not_a_failure(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        attempt_log.keep(str(tmp_path / "absent.log"), 1)
    assert "could not keep this attempt's log" in caplog.text
    assert not Path(attempt_log.path(str(tmp_path / "absent.log"), 1)).exists()


def test_of_attempt_falls_back_to_the_rules_log(tmp_path: Path) -> None:
    log = str(tmp_path / "00003.log")
    assert attempt_log.of_attempt(log, 1) == log  # killed before its job step began
    Path(attempt_log.path(log, 1)).write_text("")
    assert attempt_log.of_attempt(log, 1) == attempt_log.path(log, 1)


def test_history_names_an_attempts_own_log(tmp_path: Path) -> None:
    layout = RunLayout(str(tmp_path / "run"))
    plain = log_path(layout, "batch-00003")
    assert plain is not None and log_path(layout, "batch-00003", 2) == plain
    Path(plain).parent.mkdir(parents=True)
    Path(attempt_log.path(plain, 2)).write_text("")
    assert log_path(layout, "batch-00003", 2) == attempt_log.path(plain, 2)


def test_attempt_scope_tells_its_listener_the_attempt_before_the_block(tmp_path: Path) -> None:
    store = SqliteStateStore(tmp_path / "state.db", "r")
    seen: list[int] = []
    store.on_attempt = lambda attempt: seen.append(attempt.attempt)
    store.ensure_tasks(["batch-00000"])
    for expected in (1, 2):
        with store.attempt_scope("batch-00000") as attempt:
            assert seen[-1] == attempt.attempt == expected
    store.close()


def test_the_audit_names_a_failed_attempts_log_after_a_retry_succeeded(tmp_path: Path) -> None:
    layout = RunLayout(str(tmp_path / "run"))
    log = log_path(layout, "batch-00000")
    assert log is not None
    Path(log).parent.mkdir(parents=True)
    store = SqliteStateStore(tmp_path / "state.db", "r")
    store.ensure_tasks(["batch-00000"])
    with pytest.raises(MemoryError), store.attempt_scope("batch-00000"):
        Path(attempt_log.path(log, 1)).write_text("attempt 1's traceback\n")
        raise MemoryError("out of memory")
    with store.attempt_scope("batch-00000") as attempt:
        store.succeed(attempt, "sha")
    rows = audit_rows(store.transitions("batch-00000"), layout)
    store.close()
    logs = {(row["to"], row["attempt"]): row["log"] for row in rows}
    assert logs[("FAILED", 1)] == attempt_log.path(log, 1)
    assert logs[("SUCCEEDED", 2)] is None
    assert f"log: {attempt_log.path(log, 1)}" in "\n".join(render_audit("r", rows))
