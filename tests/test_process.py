"""Unit tests for orchestrator_ext.process (one batch through the job, no workflow runs) and
the runners it calls (item_mode, batch_mode)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from orchestrator_ext.batch_mode import run_batch_mode
from orchestrator_ext.config import RetrySpec, load_config
from orchestrator_ext.errors import (
    BatchFailed,
    ChecksumMismatch,
    PermanentError,
    RowsMismatch,
    SchemaMismatch,
    StateConflict,
)
from orchestrator_ext.item_mode import run_item_mode
from orchestrator_ext.job import JobContext
from orchestrator_ext.output_contract import check_rows_per_item
from orchestrator_ext.process import process_batch
from orchestrator_ext.runner import JobCall
from orchestrator_ext.state import TaskStatus
from orchestrator_ext.state.sqlite import SqliteStateStore
from orchestrator_ext.storage import read_json, sha256_file, write_json

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
            str(write_plan(paths["batch_file"])),
            str(paths["result_file"]),
            str(paths["dead_letter_file"]),
            str(paths["record_file"]),
        )
        return record, paths

    run.paths = paths  # type: ignore[attr-defined]
    return run


def write_plan(batch_file: Path) -> Path:
    """``plan.json`` beside ``batch_file`` naming its sha256, as ``partition_items`` writes
    it (other batches already there are kept); ``process_batch`` checks the batch by it."""
    plan = batch_file.parent / "plan.json"
    number = int(batch_file.stem.removeprefix("batch-"))
    data = read_json(plan) if plan.exists() else {"batches": []}
    data["batches"] += [{}] * (number + 1 - len(data["batches"]))
    data["batches"][number] = {"batch_id": f"{number:05d}", "sha256": sha256_file(batch_file)}
    write_json(plan, data)
    return plan


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
        plan = write_plan(paths["batch_file"])  # the plan names the batch as partitioned
        pl.DataFrame({"id": [0], "value": [99]}).write_parquet(paths["batch_file"])
        with pytest.raises(ChecksumMismatch, match="batch 00000 input"):
            process_batch(
                config,
                store,
                "00000",
                str(paths["batch_file"]),
                str(plan),
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
        calls = tmp_path / "calls"
        calls.mkdir()
        record, paths = run_batch(
            4,
            {
                "function": jobs.module_ref("transient_item"),
                "mode": "item",
                "params": {"calls": str(calls), "always": [0], "first": 1},
            },
            retry={"max_attempts": 3, "initial_delay_s": 0.001, "max_delay_s": 0.005},
            tolerance={"max_dead_letter_fraction": 0.25},
        )
        # Item 0 used up its three calls; items 1-3 failed once and succeeded on retry.
        assert {p.name: len(p.read_text()) for p in calls.iterdir()} == {
            "0": 3, "1": 2, "2": 2, "3": 2,
        }  # fmt: skip
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


# -- what a job returns --------------------------------------------------------------------


def _returns_param(item: dict[str, Any], ctx: JobContext) -> Any:
    """Item job: returns ``params.value`` for odd ids, a row for even ones."""
    if item["id"] % 2:
        return ctx.params["value"]
    return {"id": item["id"], "doubled": item["value"] * 2}


def _batch_returns_param(batch: pl.DataFrame, ctx: JobContext) -> Any:
    """Batch job: returns ``params.value`` (``"pandas"``: the batch as a pandas frame)."""
    value = ctx.params["value"]
    return batch.to_pandas() if value == "pandas" else value


def _returned(kind: str) -> Any:
    import pandas as pd

    frames = {
        "pandas": pd.DataFrame({"id": [1], "doubled": [2]}),
        "polars": pl.DataFrame({"id": [1], "doubled": [2]}),
    }
    return frames[kind]


class TestItemModeReturns:
    CTX = JobContext(run_id="r", batch_id="00000", attempt=1)
    ITEMS = pl.DataFrame({"id": [1, 3], "value": [10, 30]})

    @pytest.mark.parametrize(
        ("value", "message"),
        [
            (42, r"job returned int \(42\), expected a dict \(one row\), a list of dicts or "
                 r"None \(no row\); return the item's row as a dict"),
            ("text", r"job returned str \('text'\), expected a dict"),
            ([{"id": 1}, 2], r"job returned a list holding int at position 1 \(2\), expected a "
                             r"dict \(one row\), a list of dicts or None \(no row\); return each "
                             r"row as a dict"),
            ("pandas", r"job returned pandas\.DataFrame \(shape \(1, 2\)\), expected a dict .*; "
                       r"return its rows as dicts \(polars \.to_dicts\(\), pandas "
                       r"\.to_dict\('records'\)\), or use job\.mode: batch"),
            ("polars", r"job returned polars\.DataFrame \(shape \(1, 2\)\), expected a dict"),
        ],
    )  # fmt: skip
    def test_anything_else_is_the_items_permanent_error(self, value: Any, message: str) -> None:
        value = _returned(value) if value in ("pandas", "polars") else value
        outcome = run_item_mode(
            self.ITEMS, JobCall(lambda item, ctx: value, self.CTX, "id", RetrySpec())
        )
        assert outcome.result.height == 0 and "column_0" not in outcome.result.columns
        assert [d["id"] for d in outcome.dead] == [1, 3]
        for dead in outcome.dead:
            assert (dead["category"], dead["error_type"]) == ("permanent", "TypeError")
            assert re.fullmatch(r"TypeError: " + message + ".*", dead["message"]), dead["message"]
            assert "\n" not in dead["message"]

    def test_permanent_even_when_the_config_calls_type_errors_transient(self) -> None:
        from orchestrator_ext.errors import configure_error_rules

        configure_error_rules(transient=["TypeError"])
        try:
            outcome = run_item_mode(
                self.ITEMS, JobCall(lambda item, ctx: 42, self.CTX, "id", RetrySpec())
            )
        finally:
            configure_error_rules()
        assert {d["category"] for d in outcome.dead} == {"permanent"}

    def test_dead_lettered_by_process_batch(self, run_batch) -> None:
        job = {"function": f"{__name__}:_returns_param", "mode": "item", "params": {"value": 42}}
        record, paths = run_batch(6, job, tolerance={"max_dead_letter_fraction": 0.5})
        result = pl.read_parquet(paths["result_file"])
        assert result.columns == ["id", "doubled"] and result["id"].to_list() == [0, 2, 4]
        dead = pl.read_parquet(paths["dead_letter_file"])
        assert dead["id"].to_list() == [1, 3, 5]
        assert set(dead["error_type"]) == {"TypeError"}
        assert record["dead_letter_by_category"] == {"permanent": 3}


class TestBatchModeReturns:
    @pytest.mark.parametrize(
        ("value", "message"),
        [
            (None, "job returned None, expected a polars DataFrame; return an empty one for "
                   "no rows"),
            ([1, 2], "job returned list, expected a polars DataFrame; convert it with "
                     "polars.DataFrame()"),
            ("pandas", "job returned pandas.DataFrame, expected a polars DataFrame; convert it "
                       "with polars.from_pandas()"),
        ],
    )  # fmt: skip
    def test_anything_but_a_polars_frame_fails_the_batch_permanently(
        self, run_batch, store, value: Any, message: str
    ) -> None:
        job = {"function": f"{__name__}:_batch_returns_param", "params": {"value": value}}
        with pytest.raises(TypeError, match=f"^{re.escape(message)}$"):
            run_batch(4, job)
        state = store.get("batch-00000")
        assert state.status is TaskStatus.DEAD
        # A package error (one line in the job's log, no traceback), and a TypeError.
        assert (state.error_category, state.error_type) == ("permanent", "WrongReturnType")
        assert state.error_message == f"WrongReturnType: {message}"
        _nothing_published(run_batch.paths)


# -- bisection stops at the tolerance ------------------------------------------------------

#: Ids of every call of ``_recording_batch``, in call order.
CALLS: list[list[int]] = []


def _recording_batch(batch: pl.DataFrame, ctx: JobContext) -> pl.DataFrame:
    """``double_batch`` that records the ids of each call; ``params.bad_ids: all`` fails all."""
    CALLS.append(batch.get_column("id").to_list())
    if ctx.params.get("bad_ids") == "all":
        raise PermanentError("nothing in this batch is good")
    return jobs.double_batch(batch, ctx)


class TestBisectionStopsAtTheTolerance:
    @pytest.fixture(autouse=True)
    def _calls(self) -> None:
        CALLS.clear()

    JOB = {"function": f"{__name__}:_recording_batch", "params": {"bad_ids": "all"}}

    def test_zero_tolerance_stops_at_the_first_dead_item(self, run_batch, store) -> None:
        with pytest.raises(
            BatchFailed,
            match=r"^batch 00000: 1 of 100 items failed \(1\.0% > tolerance 0\.0%\); first: id 0: "
            r"PermanentError: nothing in this batch is good$",
        ):
            run_batch(100, self.JOB, tolerance={"max_dead_letter_fraction": 0})
        # Straight down to item 0 (100, 50, 25, 12, 6, 3, 1), not all 199 calls.
        assert [len(ids) for ids in CALLS] == [100, 50, 25, 12, 6, 3, 1]
        assert len(CALLS) <= math.log2(100) + 2
        state = store.get("batch-00000")
        assert (state.status, state.error_type) == (TaskStatus.DEAD, "BatchFailed")
        _nothing_published(run_batch.paths)

    def test_stops_once_the_dead_exceed_the_tolerance(self, run_batch) -> None:
        with pytest.raises(BatchFailed, match=r"^batch 00000: 6 of 100 items failed \(6\.0% > "):
            run_batch(100, self.JOB, tolerance={"max_dead_letter_fraction": 0.05})
        # Items 0-5 isolated one by one; what is left of the batch is never called.
        assert [ids for ids in CALLS if len(ids) == 1] == [[0], [1], [2], [3], [4], [5]]
        assert len(CALLS) == 15, [len(ids) for ids in CALLS]  # of 199 to isolate all 100

    def test_under_the_tolerance_every_bad_item_is_isolated_as_before(self) -> None:
        ctx = JobContext(run_id="r", batch_id="00000", attempt=1, params={"bad_ids": [3, 11]})
        items = pl.DataFrame({"id": list(range(16)), "value": list(range(16))})
        unlimited = run_batch_mode(items, JobCall(_recording_batch, ctx, "id", RetrySpec()))
        calls, CALLS[:] = list(CALLS), []
        call = JobCall(_recording_batch, ctx, "id", RetrySpec())
        limited = run_batch_mode(items, call, max_dead_fraction=2 / 16)
        assert calls == CALLS
        assert limited.result.equals(unlimited.result)
        assert [d["id"] for d in limited.dead] == [d["id"] for d in unlimited.dead] == [3, 11]

    def test_with_chunks_earlier_chunks_count(self, run_batch, store) -> None:
        job = {"function": f"{__name__}:_recording_batch",
               "params": {"bad_ids": [3, 4, 5, 23, 24, 25]}}  # fmt: skip
        options = {
            "tolerance": {"max_dead_letter_fraction": 0.05},
            "chunks": {"every_items": 20},
        }
        with pytest.raises(BatchFailed, match=r"^batch 00000: 6 of 100 items failed"):
            run_batch(100, job, **options)
        assert max(max(ids) for ids in CALLS) < 40, "chunks after the 6th dead item are not run"
        # A retry resumes after chunk 0 (3 dead, persisted): those count, so it stops in
        # chunk 1 again instead of running the batch to the end.
        CALLS.clear()
        with pytest.raises(BatchFailed, match=r"^batch 00000: 6 of 100 items failed"):
            run_batch(100, job, **options)
        assert min(min(ids) for ids in CALLS) == 20 and max(max(ids) for ids in CALLS) < 40


# -- the output contract -------------------------------------------------------------------


@pytest.fixture
def run_batches(tmp_path: Path, store, make_config: Callable[..., dict[str, Any]]):
    """``run_batches(job, batch, n_items=10, **overrides)`` -> record: processes batch
    ``batch`` (ids ``batch * 1000 + i``) of one run in ``store``; ``.paths(batch)``."""

    def paths(batch: str) -> dict[str, Path]:
        return {
            "batch_file": tmp_path / "batches" / f"batch-{batch}.parquet",
            "result_file": tmp_path / "run" / "results" / f"batch-{batch}.parquet",
            "dead_letter_file": tmp_path / "run" / "dead_letter" / f"batch-{batch}.parquet",
            "record_file": tmp_path / "run" / "results" / f"batch-{batch}.json",
        }

    def run(job: dict[str, Any], batch: str = "00000", n_items: int = 10, **overrides: Any):
        where = paths(batch)
        where["batch_file"].parent.mkdir(parents=True, exist_ok=True)
        ids = [int(batch) * 1000 + i for i in range(n_items)]
        pl.DataFrame({"id": ids, "value": [i * 10 for i in ids]}).write_parquet(where["batch_file"])
        overrides.setdefault("retry", FAST_RETRY)
        raw = make_config(
            run_id="r", job={"combine": None, "finalize": None, **job}, merge={"mode": "concat"},
            **overrides,
        )  # fmt: skip
        return process_batch(
            load_config(raw), store, batch, str(where["batch_file"]),
            str(write_plan(where["batch_file"])), str(where["result_file"]),
            str(where["dead_letter_file"]), str(where["record_file"]),
        )  # fmt: skip

    run.paths = paths  # type: ignore[attr-defined]
    return run


def _refused(store, run_batches, batch: str, error_type: str) -> None:
    """The batch failed permanently (DEAD, not resubmitted) and published nothing."""
    state = store.get(f"batch-{batch}")
    assert (state.status, state.error_category, state.error_type) == (
        TaskStatus.DEAD, "permanent", error_type,
    )  # fmt: skip
    _nothing_published(run_batches.paths(batch))


TYPED = {"function": jobs.module_ref("typed_batch")}


class TestOutputSchema:
    def test_the_first_committed_batch_records_the_schema(self, run_batches, store) -> None:
        record = run_batches(TYPED)
        assert store.get_fact("output_schema") == '[["id","Int64"],["v","Int64"]]'
        assert record["schema"] == [["id", "Int64"], ["v", "Int64"]]
        assert record["rows_out"] == record["rows"] == 10
        assert run_batches(TYPED, "00001")["rows_out"] == 10  # the same schema passes

    @pytest.mark.parametrize("other", ["String", "Float64"])
    def test_a_batch_differing_from_the_first_committed_fails(
        self, run_batches, store, other: str
    ) -> None:
        # Bug 1: a String (or Float64) batch was cast to batch 0's Int64 by the merge.
        run_batches(TYPED)
        job = {**TYPED, "params": {"dtype": other}}
        with pytest.raises(SchemaMismatch) as info:
            run_batches(job, "00001")
        assert str(info.value).startswith(
            "batch 00001: result does not match the run's output schema (recorded from the "
            f"first committed batch): column 'v' is {other}, the schema has Int64; "
        )
        _refused(store, run_batches, "00001", "SchemaMismatch")
        assert store.get("batch-00000").status is TaskStatus.SUCCEEDED

    def test_a_batch_differing_from_the_declared_schema_fails(self, run_batches, store) -> None:
        job = {**TYPED, "output_schema": {"id": "Int64", "v": "Int32"}}
        with pytest.raises(
            SchemaMismatch,
            match=r"^batch 00000: result does not match the run's output schema \(declared "
            r"in job\.output_schema\): column 'v' is Int64, the schema has Int32; ",
        ):
            run_batches(job)
        _refused(store, run_batches, "00000", "SchemaMismatch")
        assert store.get_fact("output_schema") is None, "a declared schema is not recorded"

    def test_missing_and_extra_columns_are_named(self, run_batches) -> None:
        job = {**TYPED, "output_schema": {"id": "Int64", "w": "String"}}
        with pytest.raises(
            SchemaMismatch,
            match=r"column 'v' \(Int64\) is not in the schema; column 'w' \(String\) is missing",
        ):
            run_batches(job)

    def test_the_declared_schema_passes_whatever_the_column_order(self, run_batches) -> None:
        job = {**TYPED, "output_schema": {"v": "Int64", "id": "Int64"}}
        assert run_batches(job)["schema"] == [["id", "Int64"], ["v", "Int64"]]

    def test_a_result_without_columns_fails_against_a_schema_with_columns(
        self, run_batches, store
    ) -> None:
        job = {
            "function": jobs.module_ref("rows_batch"),
            "params": {"rows": "empty"},
            "output_schema": {"id": "Int64", "doubled": "Int64"},
        }
        with pytest.raises(
            SchemaMismatch,
            match=r"^batch 00000: result has no columns, but the run's output schema \(declared "
            r"in job\.output_schema\) has 2: id \(Int64\), doubled \(Int64\); return an empty "
            r"frame with these columns for no rows$",
        ):
            run_batches(job)
        _refused(store, run_batches, "00000", "SchemaMismatch")

    def test_an_empty_frame_with_the_columns_is_fine(self, run_batches) -> None:
        run_batches({"function": jobs.module_ref("rows_batch")})
        record = run_batches({"function": jobs.module_ref("rows_batch"),
                              "params": {"rows": "no_rows"}}, "00001")  # fmt: skip
        assert (record["rows_out"], record["items_processed"]) == (0, 10)

    def test_a_result_without_columns_records_no_schema(self, run_batches, store) -> None:
        record = run_batches({"function": jobs.module_ref("rows_batch"),
                              "params": {"rows": "empty"}})  # fmt: skip
        assert record["schema"] == [] and store.get_fact("output_schema") is None
        run_batches({"function": jobs.module_ref("rows_batch")}, "00001")
        assert store.get_fact("output_schema") == '[["doubled","Int64"],["id","Int64"]]'

    def test_bisected_parts_of_other_types_are_refused(self) -> None:
        def halves_differ(batch: pl.DataFrame, ctx: JobContext) -> pl.DataFrame:
            if 3 in batch["id"]:
                raise PermanentError("bad item")
            kind = pl.Int64 if batch["id"][0] < 3 else pl.String
            return batch.select("id", pl.col("value").cast(kind))

        ctx = JobContext(run_id="r", batch_id="00004", attempt=1)
        items = pl.DataFrame({"id": list(range(8)), "value": list(range(8))})
        with pytest.raises(
            SchemaMismatch,
            match=r"^batch 00004: the job's results differ: in part 2, column 'value' is "
            r"String, part 0 has Int64; every call of the job must return the same columns",
        ):
            run_batch_mode(items, JobCall(halves_differ, ctx, "id", RetrySpec()))


class TestItemModeStrictRows:
    def test_a_key_of_two_types_fails_the_batch(self, run_batches, store) -> None:
        # Bug 1: polars made a String column of 1 and "2".
        with pytest.raises(
            SchemaMismatch,
            match=r"^batch 00000: result key 'v' is str for item 0 \('0'\) but int for item 1 "
            r"\(1\); return one type per key",
        ):
            run_batches({"function": jobs.module_ref("mixed_item"), "mode": "item"})
        _refused(store, run_batches, "00000", "SchemaMismatch")

    def test_across_chunks_too(self, run_batches, store) -> None:
        job = {"function": f"{__name__}:_int_then_str", "mode": "item"}
        with pytest.raises(
            SchemaMismatch,
            match=r"^batch 00000: result column 'v' is Int64 in one part of the batch and "
            r"String in another",
        ):
            run_batches(job, chunks={"every_items": 5})
        _refused(store, run_batches, "00000", "SchemaMismatch")

    def test_chunks_are_joined_as_one_frame_of_their_rows(self, run_batches) -> None:
        # A key only None in one chunk (Null there) or missing takes the others' type.
        job = {"function": f"{__name__}:_note_late", "mode": "item"}
        record = run_batches(job, chunks={"every_items": 5})
        assert record["schema"] == [["id", "Int64"], ["note", "String"], ["v", "Int64"]]
        result = pl.read_parquet(run_batches.paths("00000")["result_file"])
        assert result["note"].to_list() == [None] * 5 + ["x"] * 5

    def test_no_rows_get_the_recorded_schema(self, run_batches, store) -> None:
        run_batches({"function": jobs.module_ref("double_item"), "mode": "item"})
        record = run_batches({"function": jobs.module_ref("mixed_item"), "mode": "item",
                              "params": {"none": True}}, "00001")  # fmt: skip
        assert record["schema"] == [["doubled", "Int64"], ["id", "Int64"]]
        result = pl.read_parquet(run_batches.paths("00001")["result_file"])
        assert dict(result.schema) == {"id": pl.Int64, "doubled": pl.Int64}

    def test_a_null_column_takes_the_declared_type(self, run_batches) -> None:
        job = {"function": f"{__name__}:_no_note", "mode": "item",
               "output_schema": {"id": "Int64", "note": "String"}}  # fmt: skip
        record = run_batches(job)
        assert record["schema"] == [["id", "Int64"], ["note", "String"]]


def _no_note(item: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    return {"id": item["id"], "note": None}


def _int_then_str(item: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    return {"id": item["id"], "v": item["id"] if item["id"] < 5 else str(item["id"])}


def _note_late(item: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    if item["id"] < 3:
        return {"id": item["id"], "note": None}
    if item["id"] < 5:
        return {"id": item["id"]}
    return {"id": item["id"], "note": "x", "v": 1}


ROWS = {"function": jobs.module_ref("rows_batch"), "rows": "per_item"}


class TestRowsPerItem:
    def test_one_row_per_item_passes(self, run_batches) -> None:
        record = run_batches(ROWS)
        assert record["rows_out"] == record["items_processed"] == 10

    @pytest.mark.parametrize(
        ("rows", "message"),
        [
            ("drop_half", "batch 00000: 5 rows for 10 items (job.rows: per_item)"),
            ("duplicate", "batch 00000: 20 rows for 10 items (job.rows: per_item)"),
            ("empty", "batch 00000: 0 rows for 10 items (job.rows: per_item)"),
            ("no_rows", "batch 00000: 0 rows for 10 items (job.rows: per_item)"),
            ("extra_id", "batch 00000: 10 rows for 10 items, but 1 items without a row (9); "
                         "1 ids not of the batch's items (100009) (job.rows: per_item)"),
        ],
    )  # fmt: skip
    def test_a_batch_breaking_it_fails(self, run_batches, store, rows: str, message: str) -> None:
        # Bug 2: the manifest said 1000 = 1000 + 0 whatever the job returned.
        with pytest.raises(RowsMismatch) as info:
            run_batches({**ROWS, "params": {"rows": rows}})
        assert str(info.value) == message
        _refused(store, run_batches, "00000", "RowsMismatch")

    def test_repeated_ids_are_named(self, run_batches) -> None:
        def repeat_first(batch: pl.DataFrame, ctx: JobContext) -> pl.DataFrame:
            ids = batch["id"].to_list()
            return pl.DataFrame({"id": [ids[0], *ids[:-1]]})

        with pytest.raises(
            RowsMismatch,
            match=r"^batch 00000: 4 rows for 4 items, but 1 ids repeated \(0\); 1 items "
            r"without a row \(3\) \(job\.rows: per_item\)$",
        ):
            run_batch_and_check(repeat_first, 4)

    def test_dead_lettered_items_need_no_row(self, run_batches) -> None:
        job = {"function": jobs.module_ref("double_batch"), "rows": "per_item",
               "params": {"bad_ids": [3]}}  # fmt: skip
        record = run_batches(job, tolerance={"max_dead_letter_fraction": 0.2})
        assert (record["rows_out"], record["items_processed"]) == (9, 9)

    def test_the_count_says_what_was_dead_lettered(self, run_batches) -> None:
        job = {"function": f"{__name__}:_drop_last_after_bad", "rows": "per_item",
               "params": {"bad_ids": [3]}}  # fmt: skip
        with pytest.raises(
            RowsMismatch,
            match=r"^batch 00000: 8 rows for 9 items \(10 in the batch, 1 dead-lettered\)",
        ):
            run_batches(job, tolerance={"max_dead_letter_fraction": 0.2})


def _drop_last_after_bad(batch: pl.DataFrame, ctx: JobContext) -> pl.DataFrame:
    out = jobs.double_batch(batch, ctx)
    return out.head(out.height - 1) if 9 in out["id"] else out


def run_batch_and_check(fn: Callable[..., Any], n_items: int) -> None:
    """Run ``fn`` on ``n_items`` items and check ``job.rows: per_item``."""
    ctx = JobContext(run_id="r", batch_id="00000", attempt=1)
    items = pl.DataFrame({"id": list(range(n_items))})
    outcome = run_batch_mode(items, JobCall(fn, ctx, "id", RetrySpec()))
    check_rows_per_item("00000", items, outcome.result, outcome.dead, "id")


class TestWorkers:
    """job.workers / job.pool through process_batch: the record and result of one worker."""

    @pytest.mark.parametrize("pool", ["process", "thread"])
    def test_item_mode_on_workers_with_chunks(self, run_batch, tmp_path: Path, pool) -> None:
        job = {"function": jobs.module_ref("double_item"), "mode": "item",
               "params": {"bad_ids": [3, 41]}}  # fmt: skip
        tolerance = {"max_dead_letter_fraction": 0.1}
        one, paths = run_batch(60, job, tolerance=tolerance)
        one_result = pl.read_parquet(paths["result_file"])
        many, paths = run_batch(
            60, {**job, "workers": 2, "pool": pool}, tolerance=tolerance,
            chunks={"every_items": 25},
        )  # fmt: skip
        assert pl.read_parquet(paths["result_file"]).equals(one_result)
        assert many["sha256"] == one["sha256"]
        assert many["items_dead_lettered"] == 2 and many["chunks"]["count"] == 3
        expected = pl.DataFrame({"id": list(range(60))}).filter(~pl.col("id").is_in([3, 41]))
        assert one_result["id"].to_list() == expected["id"].to_list()

    def test_batch_mode_gets_ctx_workers(self, run_batch) -> None:
        record, paths = run_batch(
            5, {"function": jobs.module_ref("workers_batch"), "mode": "batch", "workers": 3}
        )
        result = pl.read_parquet(paths["result_file"])
        assert result["workers"].unique().to_list() == [3]
