"""orchestrator_ext.workers and item mode on workers: the same outcome on any pool, in input
order, with transient failures retried in rounds after the pass."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from orchestrator_ext import item_mode
from orchestrator_ext.config import FaultSpec, RetrySpec
from orchestrator_ext.errors import PermanentError, TransientError
from orchestrator_ext.faults import FaultInjector
from orchestrator_ext.item_mode import run_item_mode
from orchestrator_ext.job import JobContext
from orchestrator_ext.runner import JobCall
from orchestrator_ext.workers import ItemCalls, WorkerError

try:
    import jobs_for_tests as jobs
except ModuleNotFoundError:  # tests/ imported as a package
    from tests import jobs_for_tests as jobs

CTX = JobContext(run_id="r", batch_id="00000", attempt=1)
FAST = RetrySpec(max_attempts=3, initial_delay_s=0.001, max_delay_s=0.002)


def _slow_reverse(item: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    # Later items finish first: the order of results must still be the input's.
    time.sleep(0.002 * (20 - item["id"]))
    return {"id": item["id"], "thread": threading.get_ident()}


def _items(n: int) -> list[dict[str, Any]]:
    return [{"id": i, "value": i * 10} for i in range(n)]


class TestItemCalls:
    def test_threads_keep_the_input_order_and_run_at_once(self) -> None:
        with ItemCalls(_slow_reverse, CTX, "id", workers=4, pool="thread") as calls:
            called = calls.map(_items(20))
        assert [c.value["id"] for c in called] == list(range(20))
        assert len({c.value["thread"] for c in called}) > 1

    def test_processes_run_the_job_by_name_and_send_errors_back(self, tmp_path: Path) -> None:
        params = {"bad_ids": [3]}
        ctx = JobContext(run_id="r", batch_id="00000", attempt=1, params=params)
        with ItemCalls(jobs.double_item, ctx, "id", workers=2, pool="process") as calls:
            called = calls.map(_items(8))
        assert [c.value for c in called if c.error is None] == [
            {"id": i, "doubled": i * 20} for i in range(8) if i != 3
        ]
        assert isinstance(called[3].error, PermanentError)
        assert str(called[3].error) == "item 3 is bad"

    def test_an_exception_that_cannot_come_back_is_named(self) -> None:
        with ItemCalls(jobs.raise_unpicklable, CTX, "id", workers=2, pool="process") as calls:
            called = calls.map(_items(4))
        assert all(isinstance(c.error, WorkerError) for c in called)
        assert "cannot be unpickled" in str(called[0].error) and "Unpicklable" in str(
            called[0].error
        )

    def test_injected_faults_are_decided_in_the_batch_process(self) -> None:
        faults = FaultInjector(FaultSpec(enabled=True, permanent_ids=[2]), "00000", 1)
        with ItemCalls(jobs.double_item, CTX, "id", faults, workers=2) as calls:
            called = calls.map(_items(4))
        assert [type(c.error).__name__ for c in called] == [
            "NoneType", "NoneType", "PermanentError", "NoneType",
        ]  # fmt: skip


def _outcome(items: pl.DataFrame, fn: Any, workers: int, pool: str, **ctx: Any) -> Any:
    context = JobContext(run_id="r", batch_id="00000", attempt=1, **ctx)
    with ItemCalls(fn, context, "id", workers=workers, pool=pool) as calls:
        return run_item_mode(items, JobCall(fn, context, "id", FAST, items=calls))


class TestItemModeOnWorkers:
    @pytest.mark.parametrize(("workers", "pool"), [(2, "process"), (3, "thread")])
    def test_same_outcome_as_one_worker(self, tmp_path: Path, workers: int, pool: str) -> None:
        items = pl.DataFrame({"id": list(range(40)), "value": list(range(0, 400, 10))})
        calls = tmp_path / "calls"
        params = {"calls": str(calls), "always": [5, 17], "first": 1}
        one_dir, many_dir = calls / "one", calls / "many"
        one_dir.mkdir(parents=True), many_dir.mkdir()
        one = _outcome(
            items, jobs.transient_item, 1, pool, params={**params, "calls": str(one_dir)}
        )
        many = _outcome(
            items, jobs.transient_item, workers, pool, params={**params, "calls": str(many_dir)}
        )
        assert many.result.equals(one.result)
        assert [d["id"] for d in many.dead] == [d["id"] for d in one.dead] == [5, 17]
        assert {d["category"] for d in many.dead} == {"transient"}
        # Independent of our code: every item was called, the two bad ones three times.
        counts = {p.name: len(p.read_text()) for p in many_dir.iterdir()}
        assert counts == {str(i): 3 if i in (5, 17) else 2 for i in range(40)}
        assert many.result["id"].to_list() == [i for i in range(40) if i not in (5, 17)]


class TestTransientRetriesOverlap:
    def test_one_backoff_per_round_not_per_item(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Every item fails its first call: the batch sleeps once (one round), not 30 times."""
        slept: list[float] = []
        monkeypatch.setattr(item_mode.time, "sleep", slept.append)
        items = pl.DataFrame({"id": list(range(30)), "value": list(range(30))})
        (tmp_path / "c").mkdir()
        spec = RetrySpec(max_attempts=4, initial_delay_s=0.5, max_delay_s=20.0)
        ctx = JobContext(run_id="r", batch_id="00000", attempt=1,
                         params={"calls": str(tmp_path / "c"), "first": 1})  # fmt: skip
        outcome = run_item_mode(items, JobCall(jobs.transient_item, ctx, "id", spec))
        assert outcome.dead == [] and outcome.result.height == 30
        assert len(slept) == 1 and 0 <= slept[0] <= 0.5

    def test_rounds_follow_the_full_jitter_schedule_to_the_attempt_limit(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        slept: list[float] = []
        monkeypatch.setattr(item_mode.time, "sleep", slept.append)
        items = pl.DataFrame({"id": [1, 2], "value": [1, 2]})
        (tmp_path / "c").mkdir()
        spec = RetrySpec(max_attempts=4, initial_delay_s=0.5, max_delay_s=1.5)
        ctx = JobContext(run_id="r", batch_id="00000", attempt=1,
                         params={"calls": str(tmp_path / "c"), "always": [1]})  # fmt: skip
        outcome = run_item_mode(items, JobCall(jobs.transient_item, ctx, "id", spec))
        assert [d["id"] for d in outcome.dead] == [1]
        assert len(slept) == 3  # calls 2, 3 and 4 of item 1
        assert [high >= s >= 0 for s, high in zip(slept, [0.5, 1.0, 1.5], strict=True)] == [
            True, True, True,
        ]  # fmt: skip

    def test_a_resource_error_still_aborts_the_batch(self) -> None:
        def oom(item: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
            if item["id"] == 1:
                raise MemoryError("no room")
            raise TransientError("later")

        items = pl.DataFrame({"id": [0, 1, 2], "value": [0, 1, 2]})
        with pytest.raises(MemoryError):
            run_item_mode(items, JobCall(oom, CTX, "id", FAST))


class TestWhatCannotComeBack:
    def test_a_return_value_that_cannot_be_pickled_is_that_items_error(self) -> None:
        with ItemCalls(jobs.return_lambda, CTX, "id", workers=2, pool="process") as calls:
            called = calls.map(_items(3))
        assert [type(c.error).__name__ for c in called] == ["WorkerError"] * 3
        assert "return value cannot be pickled" in str(called[0].error)

    def test_a_dead_worker_is_a_resource_failure(self) -> None:
        from orchestrator_ext.errors import Category, classify
        from orchestrator_ext.workers import WorkerLost

        with (
            ItemCalls(jobs.exit_worker, CTX, "id", workers=2, pool="process") as calls,
            pytest.raises(WorkerLost, match="a worker process of job.pool died") as raised,
        ):
            calls.map(_items(3))
        assert classify(raised.value) is Category.RESOURCE


def _wait_5ms(item: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    time.sleep(0.005)
    return {"id": item["id"]}


class TestDeadlineAndErrorsOnWorkers:
    def test_a_deadline_gives_a_prefix_of_the_items(self) -> None:
        items = pl.DataFrame({"id": list(range(400))})
        with ItemCalls(_wait_5ms, CTX, "id", workers=4, pool="thread") as calls:
            deadline = time.monotonic() + 0.1
            outcome = run_item_mode(items, JobCall(_wait_5ms, CTX, "id", FAST, items=calls),
                                    deadline=deadline)  # fmt: skip
        assert outcome.items_done is not None and 0 < outcome.items_done < 400
        assert outcome.result["id"].to_list() == list(range(outcome.items_done))

    def test_a_resource_error_on_a_worker_aborts_the_batch(self) -> None:
        def oom(item: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
            if item["id"] == 7:
                raise MemoryError("no room")
            return {"id": item["id"]}

        items = pl.DataFrame({"id": list(range(20))})
        with (
            ItemCalls(oom, CTX, "id", workers=3, pool="thread") as calls,
            pytest.raises(MemoryError, match="no room"),
        ):
            run_item_mode(items, JobCall(oom, CTX, "id", FAST, items=calls))


class TestTracebacksOfDeadLetters:
    """A dead letter keeps ``Type: message``; the batch's log has where the job failed
    (the line of the job's code), also from a process worker, whose traceback does not
    pickle. Before, the log held one error line and no traceback anywhere."""

    @pytest.mark.parametrize(("workers", "pool"), [(1, "process"), (2, "process"), (2, "thread")])
    def test_the_first_dead_letters_log_their_traceback(
        self, workers: int, pool: str, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:  # fmt: skip
        from orchestrator_ext import dead_letter

        monkeypatch.setattr(dead_letter, "_tracebacks_left", dead_letter.TRACEBACKS_LOGGED)
        items = pl.DataFrame({"id": list(range(8)), "value": list(range(8))})
        with caplog.at_level("WARNING", logger="orchestrator_ext.dead_letter"):
            outcome = _outcome(
                items, jobs.double_item, workers, pool, params={"bad_ids": [1, 3, 5, 7]}
            )
        assert [d["id"] for d in outcome.dead] == [1, 3, 5, 7]
        logged = [r.getMessage() for r in caplog.records]
        assert len(logged) == dead_letter.TRACEBACKS_LOGGED
        assert logged[0].startswith("item 1 dead-lettered (PermanentError: item 1 is bad)")
        assert "jobs_for_tests.py" in logged[0] and "in double_item" in logged[0], logged[0]
        assert "raise PermanentError(f\"item {item['id']} is bad\")" in logged[0], logged[0]
