"""Unit tests for orchestrator_ext.process: one batch through the job, no workflow runs."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from orchestrator_ext import s3
from orchestrator_ext.config import RetrySpec, load_config
from orchestrator_ext.errors import (
    BatchFailed,
    ChecksumMismatch,
    PermanentError,
    StateConflict,
    TransientError,
)
from orchestrator_ext.job import JobContext
from orchestrator_ext.process import (
    RetryingCall,
    check_tolerance,
    dead_letter_frame,
    process_batch,
    publish_dead_letters,
    transient_retrying,
)
from orchestrator_ext.state import TaskStatus
from orchestrator_ext.state.sqlite import SqliteStateStore
from orchestrator_ext.storage import read_json, sha256_file

try:
    import jobs_for_tests as jobs
except ModuleNotFoundError:  # tests/ imported as a package
    from tests import jobs_for_tests as jobs

FAST_RETRY = {"max_attempts": 5, "initial_delay_s": 0.001, "max_delay_s": 0.005}


@pytest.fixture
def store(tmp_path: Path):
    store = SqliteStateStore(tmp_path / "state.sqlite", "r")
    yield store
    store.close()


@pytest.fixture
def run_batch(tmp_path: Path, store, make_config: Callable[..., dict[str, Any]]):
    """``run_batch(n_items, job=..., **overrides)`` -> (record, paths); processes batch 00000."""
    paths = {
        "batch_file": tmp_path / "batches" / "batch-00000.parquet",
        "result_file": tmp_path / "run" / "results" / "batch-00000.parquet",
        "dead_letter_file": tmp_path / "run" / "dead_letter" / "batch-00000.parquet",
        "record_file": tmp_path / "run" / "results" / "batch-00000.json",
    }

    def run(n_items: int, job: dict[str, Any], **overrides: Any) -> tuple[dict[str, Any], dict]:
        paths["batch_file"].parent.mkdir(parents=True, exist_ok=True)
        pl.DataFrame(
            {"id": list(range(n_items)), "value": [i * 10 for i in range(n_items)]}
        ).write_parquet(paths["batch_file"])
        overrides.setdefault("retry", FAST_RETRY)
        raw = make_config(
            run_id="r",
            job={"combine": None, "finalize": None, **job},
            merge={"mode": "concat"},
            **overrides,
        )
        config = load_config(raw)
        record = process_batch(
            config,
            store,
            "00000",
            str(paths["batch_file"]),
            sha256_file(paths["batch_file"]),
            str(paths["result_file"]),
            str(paths["dead_letter_file"]),
            str(paths["record_file"]),
        )
        return record, paths

    run.paths = paths  # type: ignore[attr-defined]
    return run


def _nothing_published(paths: dict[str, Path]) -> None:
    for key in ("result_file", "dead_letter_file", "record_file"):
        assert not paths[key].exists(), key
        folder = paths[key].parent
        if folder.exists():
            assert [p.name for p in folder.iterdir() if p.name.endswith(".tmp")] == []


class TestProcessBatchBatchMode:
    def test_success_publishes_result_record_and_state(self, run_batch, store) -> None:
        record, paths = run_batch(12, {"function": jobs.module_ref("double_batch")})
        result = pl.read_parquet(paths["result_file"])
        assert result.get_column("doubled").to_list() == [i * 20 for i in range(12)]
        assert not paths["dead_letter_file"].exists(), "no dead letters, no file"
        assert read_json(paths["record_file"]) == record
        assert record["items"] == 12
        assert record["items_processed"] == 12
        assert record["items_dead_lettered"] == 0
        assert record["rows"] == 12
        assert record["attempts"] == 1
        assert record["sha256"] == sha256_file(paths["result_file"])
        assert record["bytes"] == paths["result_file"].stat().st_size
        assert record["dead_letter"] is None
        state = store.get("batch-00000")
        assert state.status is TaskStatus.SUCCEEDED
        assert state.output_sha256 == record["sha256"]
        assert (state.items, state.items_done, state.items_dead) == (12, 12, 0)

    def test_second_run_is_attempt_two(self, run_batch, store) -> None:
        run_batch(3, {"function": jobs.module_ref("double_batch")})
        record, _ = run_batch(3, {"function": jobs.module_ref("double_batch")})
        assert record["attempts"] == 2
        assert store.get("batch-00000").attempt == 2

    @pytest.mark.parametrize(
        ("function", "error_type"),
        [("double_batch", "PermanentError"), ("double_batch_value_error", "ValueError")],
    )
    def test_bisection_isolates_bad_items(
        self, run_batch, store, function: str, error_type: str
    ) -> None:
        record, paths = run_batch(
            16,
            {"function": jobs.module_ref(function), "params": {"bad_ids": [3, 11]}},
            tolerance={"max_dead_letter_fraction": 0.2},
        )
        result = pl.read_parquet(paths["result_file"])
        kept = [i for i in range(16) if i not in (3, 11)]
        assert result.get_column("id").to_list() == kept, "bisection keeps input order"
        assert result.get_column("doubled").to_list() == [i * 20 for i in kept]
        dead = pl.read_parquet(paths["dead_letter_file"])
        assert dead.get_column("id").to_list() == [3, 11]
        assert set(dead.get_column("category")) == {"permanent"}
        assert set(dead.get_column("error_type")) == {error_type}
        assert dead.get_column("attempt").to_list() == [1, 1]
        assert all(m.startswith(f"{error_type}: ") for m in dead.get_column("message"))
        assert record["items_processed"] == 14
        assert record["items_dead_lettered"] == 2
        assert record["dead_letter_by_category"] == {"permanent": 2}
        assert store.get("batch-00000").items_dead == 2

    def test_transient_errors_are_retried(self, run_batch, tmp_path: Path) -> None:
        counter = tmp_path / "calls"
        record, paths = run_batch(
            5,
            {
                "function": jobs.module_ref("flaky_batch"),
                "params": {"counter": str(counter), "fail_times": 3},
            },
        )
        assert counter.read_text() == "4"
        assert record["items_dead_lettered"] == 0
        assert record["attempts"] == 1
        assert pl.read_parquet(paths["result_file"]).height == 5

    def test_memory_error_propagates_and_state_is_failed(self, run_batch, store) -> None:
        with pytest.raises(MemoryError, match="64 GiB"):
            run_batch(5, {"function": jobs.module_ref("out_of_memory")})
        state = store.get("batch-00000")
        assert state.status is TaskStatus.FAILED
        assert state.error_category == "resource"
        assert state.error_type == "MemoryError"
        _nothing_published(run_batch.paths)

    def test_tolerance_exceeded_fails_batch_and_publishes_nothing(self, run_batch, store) -> None:
        with pytest.raises(BatchFailed, match=r"batch 00000: 2 of 10 items failed \(20\.0% >"):
            run_batch(
                10,
                {"function": jobs.module_ref("double_batch"), "params": {"bad_ids": [1, 8]}},
                tolerance={"max_dead_letter_fraction": 0.1},
            )
        state = store.get("batch-00000")
        assert state.status is TaskStatus.DEAD
        assert state.error_type == "BatchFailed"
        _nothing_published(run_batch.paths)

    def test_lost_lease_publishes_nothing(self, run_batch, store, tmp_path: Path) -> None:
        job = {
            "function": jobs.module_ref("stolen_lease"),
            "params": {"state_path": str(tmp_path / "state.sqlite")},
        }
        with pytest.raises(StateConflict, match="attempt 1 lost the race"):
            run_batch(6, job)
        _nothing_published(run_batch.paths)
        state = store.get("batch-00000")
        assert state.attempt == 2
        assert state.status is TaskStatus.RUNNING
        assert state.host == "other-node"

    def test_tampered_batch_input_is_refused(self, run_batch, store) -> None:
        paths = run_batch.paths
        run_batch(4, {"function": jobs.module_ref("double_batch")})
        config = load_config(
            {
                "run_id": "r",
                "input": {"uri": "x", "format": "parquet"},
                "job": {"function": jobs.module_ref("double_batch")},
            }
        )
        recorded = sha256_file(paths["batch_file"])
        pl.DataFrame({"id": [0], "value": [99]}).write_parquet(paths["batch_file"])
        with pytest.raises(ChecksumMismatch, match="batch 00000 input"):
            process_batch(
                config,
                store,
                "00000",
                str(paths["batch_file"]),
                recorded,
                str(paths["result_file"]),
                str(paths["dead_letter_file"]),
                str(paths["record_file"]),
            )


class TestProcessBatchItemMode:
    def test_dead_letters_failing_items(self, run_batch, store) -> None:
        record, paths = run_batch(
            10,
            {
                "function": jobs.module_ref("double_item"),
                "mode": "item",
                "params": {"bad_ids": [2, 5]},
            },
            tolerance={"max_dead_letter_fraction": 0.25},
        )
        result = pl.read_parquet(paths["result_file"])
        assert result.get_column("id").to_list() == [0, 1, 3, 4, 6, 7, 8, 9]
        dead = pl.read_parquet(paths["dead_letter_file"])
        assert dead.schema["id"] == pl.Int64
        assert dead.to_dicts() == [
            {
                "id": 2,
                "category": "permanent",
                "error_type": "PermanentError",
                "message": "PermanentError: item 2 is bad",
                "attempt": 1,
            },
            {
                "id": 5,
                "category": "permanent",
                "error_type": "PermanentError",
                "message": "PermanentError: item 5 is bad",
                "attempt": 1,
            },
        ]
        assert (record["items_processed"], record["items_dead_lettered"]) == (8, 2)
        assert record["dead_letter"] == {
            "uri": str(paths["dead_letter_file"]),
            "sha256": sha256_file(paths["dead_letter_file"]),
            "bytes": paths["dead_letter_file"].stat().st_size,
        }
        assert store.get("batch-00000").status is TaskStatus.SUCCEEDED

    def test_rerun_without_dead_letters_removes_the_earlier_file(self, run_batch) -> None:
        # The folder must agree with the record: a later attempt that dead-letters nothing
        # leaves no file from the earlier one behind for `orchestrator errors` or redrive.
        job = {"function": jobs.module_ref("double_item"), "mode": "item"}
        _, paths = run_batch(10, {**job, "params": {"bad_ids": [2]}},
                             tolerance={"max_dead_letter_fraction": 0.25})  # fmt: skip
        assert paths["dead_letter_file"].exists()
        record, paths = run_batch(10, {**job, "params": {"bad_ids": []}})
        assert record["attempts"] == 2 and record["dead_letter"] is None
        assert not paths["dead_letter_file"].exists()

    def test_tolerance_exceeded(self, run_batch, store) -> None:
        with pytest.raises(BatchFailed, match="first: id 2: PermanentError: item 2 is bad"):
            run_batch(
                10,
                {
                    "function": jobs.module_ref("double_item"),
                    "mode": "item",
                    "params": {"bad_ids": [2, 5]},
                },
                tolerance={"max_dead_letter_fraction": 0.1},
            )
        assert store.get("batch-00000").status is TaskStatus.DEAD
        _nothing_published(run_batch.paths)

    def test_transient_retried_then_dead_lettered_as_transient(
        self, run_batch, tmp_path: Path
    ) -> None:
        counter = tmp_path / "calls"
        record, paths = run_batch(
            4,
            {
                "function": jobs.module_ref("flaky_item"),
                "mode": "item",
                "params": {"counter": str(counter), "fail_times": 3},
            },
            retry={"max_attempts": 3, "initial_delay_s": 0.001, "max_delay_s": 0.005},
            tolerance={"max_dead_letter_fraction": 0.25},
        )
        # Item 0 used up its three calls; items 1-3 succeed on calls 4-6.
        assert counter.read_text() == "6"
        dead = pl.read_parquet(paths["dead_letter_file"])
        assert dead.select("id", "category", "error_type").to_dicts() == [
            {"id": 0, "category": "transient", "error_type": "TransientError"}
        ]
        assert pl.read_parquet(paths["result_file"]).get_column("id").to_list() == [1, 2, 3]
        assert record["dead_letter_by_category"] == {"transient": 1}

    def test_none_and_list_returns(self, run_batch) -> None:
        record, paths = run_batch(6, {"function": jobs.module_ref("fan_out_item"), "mode": "item"})
        result = pl.read_parquet(paths["result_file"])
        assert result.rows() == [(1, 0), (1, 1), (3, 0), (3, 1), (5, 0), (5, 1)]
        assert record["rows"] == 6
        assert record["items_processed"] == 6

    def test_memory_error_is_not_dead_lettered(self, run_batch, store) -> None:
        with pytest.raises(MemoryError):
            run_batch(
                3,
                {"function": jobs.module_ref("out_of_memory"), "mode": "item"},
                tolerance={"max_dead_letter_fraction": 1.0},
            )
        assert store.get("batch-00000").error_category == "resource"
        _nothing_published(run_batch.paths)


class TestCheckTolerance:
    def _dead(self, n: int) -> list[dict[str, Any]]:
        return [{"id": i, "message": f"boom {i}"} for i in range(n)]

    def test_at_tolerance_passes(self) -> None:
        check_tolerance("00001", 10, self._dead(1), 0.1)

    def test_no_items(self) -> None:
        check_tolerance("00001", 0, [], 0.0)

    def test_above_tolerance(self) -> None:
        with pytest.raises(BatchFailed, match=r"batch 00001: 2 of 10 .* first: id 0: boom 0"):
            check_tolerance("00001", 10, self._dead(2), 0.1)

    def test_zero_tolerance_refuses_one(self) -> None:
        with pytest.raises(BatchFailed, match="1 of 1000 items failed"):
            check_tolerance("00002", 1000, self._dead(1), 0.0)


class TestPublishDeadLetters:
    """``publish_dead_letters`` with an ``s3://`` URI, against the moto server over HTTP."""

    @pytest.fixture
    def bucket(self, aws_env: str) -> str:
        name = f"dead-letters-{uuid.uuid4().hex[:10]}"
        s3.make_s3_client().create_bucket(Bucket=name)
        return name

    def _dead(self) -> pl.DataFrame:
        rows = [{"id": 7, "category": "permanent", "error_type": "E", "message": "m",
                 "attempt": 1}]  # fmt: skip
        return pl.DataFrame(rows, schema=dead_letter_frame([], pl.Int64).schema)

    def test_uploaded_encrypted_after_the_block(self, bucket: str) -> None:
        uri = f"s3://{bucket}/run/dead_letter/batch-00001.parquet"
        client = s3.make_s3_client()
        with publish_dead_letters(self._dead(), uri) as facts:
            assert facts is not None and facts["uri"] == uri
            assert client.list_objects_v2(Bucket=bucket).get("KeyCount") == 0
        head = client.head_object(Bucket=bucket, Key="run/dead_letter/batch-00001.parquet")
        assert head["ServerSideEncryption"] == "AES256"
        assert head["ContentLength"] == facts["bytes"]
        assert s3.sha256_object(client, uri) == facts["sha256"]

    def test_nothing_uploaded_when_the_block_fails_or_nothing_is_dead(self, bucket) -> None:
        uri = f"s3://{bucket}/run/dead_letter/batch-00002.parquet"
        with pytest.raises(StateConflict), publish_dead_letters(self._dead(), uri):
            raise StateConflict("lost the race")
        with publish_dead_letters(dead_letter_frame([], pl.Int64), uri) as facts:
            assert facts is None
        assert s3.make_s3_client().list_objects_v2(Bucket=bucket).get("KeyCount") == 0


class TestDeadLetterFrame:
    def test_empty_keeps_schema(self) -> None:
        frame = dead_letter_frame([], pl.String)
        assert frame.height == 0
        assert frame.schema == pl.Schema(
            {
                "id": pl.String,
                "category": pl.String,
                "error_type": pl.String,
                "message": pl.String,
                "attempt": pl.Int64,
            }
        )


class TestTransientRetrying:
    def _calls(self, exc: BaseException, times: int) -> tuple[Callable[[], str], list[int]]:
        calls: list[int] = []

        def fn() -> str:
            calls.append(1)
            if len(calls) <= times:
                raise exc
            return "ok"

        return fn, calls

    def test_retries_transient_until_success(self) -> None:
        fn, calls = self._calls(TransientError("slow down"), 2)
        assert transient_retrying(RetrySpec(5, 0.001, 0.001))(fn) == "ok"
        assert len(calls) == 3

    def test_gives_up_after_max_attempts(self) -> None:
        fn, calls = self._calls(ConnectionError("reset"), 10)
        with pytest.raises(ConnectionError, match="reset"):
            transient_retrying(RetrySpec(3, 0.001, 0.001))(fn)
        assert len(calls) == 3

    def test_does_not_retry_permanent(self) -> None:
        fn, calls = self._calls(PermanentError("bad row"), 10)
        with pytest.raises(PermanentError):
            transient_retrying(RetrySpec(5, 0.001, 0.001))(fn)
        assert len(calls) == 1

    def test_job_context_is_passed(self) -> None:
        ctx = JobContext(run_id="r", batch_id="00000", attempt=1)
        seen: list[JobContext] = []
        transient_retrying(RetrySpec())(lambda c: seen.append(c), ctx)
        assert seen == [ctx]


class TestRetryingCall:
    """The job-call path: a direct first call, tenacity only after a transient failure."""

    def _calls(self, exc: BaseException, times: int) -> tuple[Callable[[int], int], list[int]]:
        calls: list[int] = []

        def fn(value: int) -> int:
            calls.append(value)
            if len(calls) <= times:
                raise exc
            return value * 2

        return fn, calls

    @pytest.mark.parametrize("failures", [0, 1, 2, 4])
    def test_succeeds_within_max_attempts(self, failures: int) -> None:
        fn, calls = self._calls(TransientError("slow down"), failures)
        assert RetryingCall(RetrySpec(5, 0.001, 0.001))(fn, 21) == 42
        assert calls == [21] * (failures + 1)

    @pytest.mark.parametrize("max_attempts", [1, 2, 3])
    def test_makes_exactly_max_attempts(self, max_attempts: int) -> None:
        fn, calls = self._calls(ConnectionError("reset"), 10)
        with pytest.raises(ConnectionError, match="reset"):
            RetryingCall(RetrySpec(max_attempts, 0.001, 0.001))(fn, 1)
        assert len(calls) == max_attempts

    def test_does_not_retry_permanent(self) -> None:
        fn, calls = self._calls(PermanentError("bad row"), 10)
        with pytest.raises(PermanentError):
            RetryingCall(RetrySpec(5, 0.001, 0.001))(fn, 1)
        assert len(calls) == 1

    def test_backoff_grows_as_tenacity_would(self, monkeypatch: pytest.MonkeyPatch) -> None:
        # Full jitter: the n-th wait is drawn from [0, initial * 2**(n-1)], capped at max.
        bounds: list[float] = []
        monkeypatch.setattr("random.uniform", lambda low, high: bounds.append(high) or 0.0)
        fn, _ = self._calls(TransientError("slow down"), 4)
        RetryingCall(RetrySpec(5, 1.0, 5.0))(fn, 1)
        assert bounds == [1.0, 2.0, 4.0, 5.0]
