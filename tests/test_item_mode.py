"""Unit tests for orchestrator_ext.item_mode: the job called once per item."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import pytest

from orchestrator_ext.config import RetrySpec
from orchestrator_ext.dead_letter import (
    allowed_dead,
    check_tolerance,
    dead_letter,
    dead_letter_frame,
)
from orchestrator_ext.errors import BatchFailed, PermanentError, SchemaMismatch, TransientError
from orchestrator_ext.item_mode import item_rows, run_item_mode
from orchestrator_ext.job import JobContext
from orchestrator_ext.runner import JobCall
from orchestrator_ext.workers import ItemCalls


def _echo_or_fail(item: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Item job: returns the id; item 2 is bad data."""
    if item["id"] == 2:
        raise PermanentError("item 2 is bad")
    return {"id": item["id"], "n": item["n"] + 1}


class TestRunItemMode:
    def test_uint64_ids_give_one_result_schema_in_every_batch(self, tmp_path: Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        ctx = JobContext(run_id="r", batch_id="00000", attempt=1)
        schema = {"id": pl.UInt64, "n": pl.Int32}
        batches = [
            pl.DataFrame({"id": [1, 2, 3], "n": [1, 2, 3]}, schema=schema),
            pl.DataFrame({"id": [2**63, 2**64 - 1], "n": [4, 5]}, schema=schema),
        ]
        outcomes = [
            run_item_mode(b, JobCall(_echo_or_fail, ctx, "id", RetrySpec())) for b in batches
        ]
        results = [o.result for o in outcomes]
        # Inferred from Python ints, batch 0 was Int64 and batch 1 Int128 (unreadable by
        # pyarrow: the merge failed with ArrowNotImplementedError).
        assert results[0].schema == results[1].schema == pl.Schema(schema)
        assert dead_letter_frame(outcomes[0].dead, pl.UInt64).schema["id"] == pl.UInt64
        paths = [tmp_path / f"r{i}.parquet" for i in range(2)]
        for result, path in zip(results, paths, strict=True):
            result.write_parquet(path)
        merged = pa.concat_tables([pq.read_table(path) for path in paths])
        assert merged.column("id").to_pylist() == [1, 3, 2**63, 2**64 - 1]

    def test_string_ids_stay_strings(self) -> None:
        ctx = JobContext(run_id="r", batch_id="00000", attempt=1)
        items = pl.DataFrame({"id": ["001", "1"], "n": [1, 2]})
        result = run_item_mode(items, JobCall(_echo_or_fail, ctx, "id", RetrySpec())).result
        assert result.get_column("id").to_list() == ["001", "1"]

    def test_id_of_another_kind_is_an_error_not_coerced(self) -> None:
        ctx = JobContext(run_id="r", batch_id="00007", attempt=1)
        items = pl.DataFrame({"id": ["5"], "n": [1]})

        def as_int(item: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
            return {"id": int(item["id"])}

        with pytest.raises(
            TypeError,
            match=r"batch 00007: result column 'id' holds Int64 values \(e\.g\. 5\), but the "
            r"input's ids are String",
        ):
            run_item_mode(items, JobCall(as_int, ctx, "id", RetrySpec()))

    def test_an_id_that_does_not_fit_the_input_dtype_is_an_error(self) -> None:
        ctx = JobContext(run_id="r", batch_id="00003", attempt=1)
        items = pl.DataFrame({"id": [7]}, schema={"id": pl.Int32})

        def overflow(item: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
            return {"id": item["id"] * 2**40}

        with pytest.raises(
            ValueError,
            match=r"batch 00003: result column 'id' has 1 values that do not fit the input "
            r"column's type Int32 \(e\.g\. 7696581394432\)",
        ):
            run_item_mode(items, JobCall(overflow, ctx, "id", RetrySpec()))

    def test_new_values_under_an_input_column_name_are_the_jobs_own(self) -> None:
        ctx = JobContext(run_id="r", batch_id="00003", attempt=1)
        items = pl.DataFrame({"id": [1], "n": [7]}, schema={"id": pl.Int64, "n": pl.Int32})

        def overflow(item: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
            return {"id": item["id"], "n": item["n"] * 2**40}

        result = run_item_mode(items, JobCall(overflow, ctx, "id", RetrySpec())).result
        assert result.schema == {"id": pl.Int64, "n": pl.Int64}
        assert result["n"].to_list() == [7 * 2**40]

    def test_deadline_stops_after_at_least_one_item(self) -> None:
        ctx = JobContext(run_id="r", batch_id="00000", attempt=1)
        items = pl.DataFrame({"id": [1, 3, 4], "n": [1, 2, 3]})
        outcome = run_item_mode(items, JobCall(_echo_or_fail, ctx, "id", RetrySpec()), deadline=0)
        assert outcome.items_done == 1 and outcome.result["id"].to_list() == [1]

    def test_transient_errors_are_retried_in_place(self) -> None:
        ctx = JobContext(run_id="r", batch_id="00000", attempt=1)
        failures = iter([TransientError("slow down")])

        def flaky(item: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
            error = next(failures, None)
            if error is not None:
                raise error
            return {"id": item["id"]}

        call = JobCall(flaky, ctx, "id", RetrySpec(3, 0.001, 0.001))
        outcome = run_item_mode(pl.DataFrame({"id": [1, 3]}), call)
        assert outcome.dead == [] and outcome.result["id"].to_list() == [1, 3]

    def test_a_resource_error_aborts_the_batch(self) -> None:
        def oom(item: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
            raise MemoryError

        ctx = JobContext(run_id="r", batch_id="00000", attempt=1)
        with pytest.raises(MemoryError):
            run_item_mode(pl.DataFrame({"id": [1]}), JobCall(oom, ctx, "id", RetrySpec()))

    def test_a_job_failing_on_every_item_stops_once_past_the_tolerance(self) -> None:
        # Before: the job was called on all 1,000 items (hours of a broken job on a real
        # batch) and the batch failed only at the end.
        calls: list[int] = []

        def broken(item: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
            calls.append(item["id"])
            raise PermanentError(f"bad code for {item['id']}")

        ctx = JobContext(run_id="r", batch_id="00004", attempt=1)
        call = JobCall(broken, ctx, "id", RetrySpec())
        items = pl.DataFrame({"id": list(range(1000))})
        with pytest.raises(
            BatchFailed,
            match=r"^batch 00004: 101 of 1000 items failed \(10\.1% > tolerance 10\.0%\); "
            r"stopped after 101 of 1000 items, the rest not run; first: id 0: ",
        ):
            run_item_mode(items, call, max_dead_fraction=0.1)
        assert calls == list(range(101))

    def test_a_chunk_counts_the_dead_letters_of_earlier_chunks(self) -> None:
        calls: list[int] = []

        def broken(item: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
            calls.append(item["id"])
            raise PermanentError("bad")

        ctx = JobContext(run_id="r", batch_id="00001", attempt=1)
        earlier = [dead_letter(i, PermanentError("bad"), 1) for i in range(3)]
        items = pl.DataFrame({"id": list(range(10, 20))})
        with pytest.raises(BatchFailed, match=r"4 of 20 items failed .* stopped after 11 of 20"):
            run_item_mode(
                items, JobCall(broken, ctx, "id", RetrySpec()), start=10,
                max_dead_fraction=0.15, batch_items=20, dead_before=earlier,
            )  # fmt: skip
        assert calls == [10]  # 3 earlier + 1 = 4 > 3 allowed (15% of 20)

    @pytest.mark.parametrize("fraction", [0.29, 0.07, 0.5, 1.0])
    def test_within_the_tolerance_every_item_runs_and_nothing_fails(self, fraction) -> None:
        # Exactly as many failures as the tolerance allows (0.29 of 100: 29, which a
        # floor(0.29 * 100) = 28 would refuse): the batch completes with its dead letters.
        n_bad = allowed_dead(100, fraction)
        assert n_bad == round(fraction * 100)
        ctx = JobContext(run_id="r", batch_id="00000", attempt=1)

        def some_bad(item: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
            if item["id"] < n_bad:
                raise PermanentError("bad")
            return {"id": item["id"]}

        outcome = run_item_mode(
            pl.DataFrame({"id": list(range(100))}),
            JobCall(some_bad, ctx, "id", RetrySpec()),
            max_dead_fraction=fraction,
        )
        assert len(outcome.dead) == n_bad and outcome.result.height == 100 - n_bad
        check_tolerance("00000", 100, outcome.dead, fraction)  # the final check agrees

    def test_on_a_thread_pool_the_batch_stops_within_the_slices_in_flight(self) -> None:
        calls: list[int] = []

        def broken(item: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
            calls.append(item["id"])
            raise PermanentError("bad")

        ctx = JobContext(run_id="r", batch_id="00000", attempt=1, workers=4)
        items = pl.DataFrame({"id": list(range(20_000))})
        with ItemCalls(broken, ctx, "id", workers=4, pool="thread") as on_threads:
            call = JobCall(broken, ctx, "id", RetrySpec(), items=on_threads)
            with pytest.raises(BatchFailed, match=r"stopped after \d+ of 20000 items"):
                run_item_mode(items, call, max_dead_fraction=0.01)
        assert 201 <= len(calls) < 20_000 / 2, len(calls)

    def test_a_key_of_two_types_is_a_schema_mismatch(self) -> None:
        ctx = JobContext(run_id="r", batch_id="00002", attempt=1)
        call = JobCall(
            lambda item, ctx: {"v": "a" if item["id"] == 1 else 2}, ctx, "id", RetrySpec()
        )
        with pytest.raises(
            SchemaMismatch, match=r"^batch 00002: result key 'v' is str for item 1 \('a'\) but int"
        ):
            run_item_mode(pl.DataFrame({"id": [1, 2]}), call)


class TestItemRows:
    def test_a_dict_is_one_row_a_list_several_none_none(self) -> None:
        assert item_rows({"a": 1}) == [{"a": 1}]
        assert item_rows([{"a": 1}, {"a": 2}]) == [{"a": 1}, {"a": 2}]
        assert item_rows(None) == []

    def test_anything_else_is_a_type_error(self) -> None:
        with pytest.raises(TypeError, match=r"^job returned int \(42\), expected a dict"):
            item_rows(42)


class TestFrameRows:
    def test_rows_as_the_frame_has_them(self) -> None:
        from orchestrator_ext.item_mode import FrameRows

        frame = pl.DataFrame({"id": ["a", "b", "c", "d"], "n": [1, 2, 3, 4]})
        rows = FrameRows(frame)
        assert len(rows) == 4 and list(rows) == frame.rows(named=True)
        assert rows[2] == {"id": "c", "n": 3}
        assert rows[1:3] == frame.rows(named=True)[1:3] and rows[3:9] == [{"id": "d", "n": 4}]
