"""Unit tests for orchestrator_ext.partition (no workflow runs)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from orchestrator_ext import partition, task
from orchestrator_ext.config import BatchingSpec, InputSpec, load_config
from orchestrator_ext.errors import InputError
from orchestrator_ext.items import check_ids, concat_items, list_input_files, read_items
from orchestrator_ext.layout import level_sizes
from orchestrator_ext.partition import (
    assign_batches,
    batch_numbers,
    estimate_row_bytes,
    partition_items,
    read_plan,
)
from orchestrator_ext.state import TaskStatus
from orchestrator_ext.state.sqlite import SqliteStateStore
from orchestrator_ext.storage import sha256_file


@pytest.fixture
def store(tmp_path: Path):
    store = SqliteStateStore(tmp_path / "state.sqlite", "r")
    yield store
    store.close()


def _items(n: int) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "id": np.arange(n, dtype=np.int64),
            "group": [f"g{i % 7}" for i in range(n)],
            "value": np.arange(n, dtype=np.int64) * 3,
        }
    )


def _skewed(n: int, seed: int = 7) -> pl.DataFrame:
    """Pareto weights, heaviest first: the input order clusters the expensive items."""
    rng = np.random.default_rng(seed)
    weights = np.round(np.sort(rng.pareto(1.5, n) + 1.0)[::-1], 3)
    return pl.DataFrame({"id": np.arange(n, dtype=np.int64), "w": weights})


def _batch_weights(items: pl.DataFrame, assignment: list[int], column: str) -> pl.DataFrame:
    return (
        items.with_columns(pl.Series("b", assignment))
        .group_by("b")
        .agg(pl.col(column).sum().alias("weight"), pl.len().alias("n"))
        .sort("b")
    )


class TestListInputFiles:
    def test_single_file(self, tmp_path: Path) -> None:
        path = tmp_path / "a.parquet"
        path.write_bytes(b"x")
        assert list_input_files(str(path)) == [str(path)]

    def test_glob_is_sorted_and_skips_directories(self, tmp_path: Path) -> None:
        for name in ["c.csv", "a.csv", "b.csv"]:
            (tmp_path / name).write_text("id\n1\n")
        (tmp_path / "d.csv").mkdir()
        assert list_input_files(str(tmp_path / "*.csv")) == [
            str(tmp_path / n) for n in ["a.csv", "b.csv", "c.csv"]
        ]

    def test_missing_file(self, tmp_path: Path) -> None:
        with pytest.raises(InputError, match="input file not found: .*missing.parquet"):
            list_input_files(str(tmp_path / "missing.parquet"))

    def test_glob_without_match(self, tmp_path: Path) -> None:
        with pytest.raises(InputError, match=r"matches no file: .*\*\.jsonl"):
            list_input_files(str(tmp_path / "*.jsonl"))


class TestReadItems:
    @pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
    def test_formats_give_the_same_items(self, tmp_path: Path, fmt: str) -> None:
        frame = _items(25)
        path = tmp_path / f"items.{fmt}"
        {"parquet": frame.write_parquet, "csv": frame.write_csv, "jsonl": frame.write_ndjson}[fmt](
            path
        )
        # CSV ids are read as text unless id_type says integer (TestReadItemsIdType).
        items, listing = read_items(InputSpec(uri=str(path), format=fmt, id_type="integer"))
        assert items.equals(frame)
        assert listing == [{"path": str(path), "bytes": path.stat().st_size}]

    def test_glob_concatenates_in_name_order(self, tmp_path: Path) -> None:
        frame = _items(30)
        frame.slice(20).write_parquet(tmp_path / "part-2.parquet")
        frame.slice(0, 10).write_parquet(tmp_path / "part-0.parquet")
        frame.slice(10, 10).write_parquet(tmp_path / "part-1.parquet")
        items, listing = read_items(
            InputSpec(uri=str(tmp_path / "part-*.parquet"), format="parquet")
        )
        assert items.equals(frame)
        assert [Path(f["path"]).name for f in listing] == [f"part-{i}.parquet" for i in range(3)]

    def test_other_id_column(self, tmp_path: Path) -> None:
        path = tmp_path / "items.csv"
        path.write_text("key,v\na,1\nb,2\n")
        items, _ = read_items(InputSpec(uri=str(path), format="csv", id_column="key"))
        assert items.get_column("key").to_list() == ["a", "b"]

    def test_unreadable_file(self, tmp_path: Path) -> None:
        path = tmp_path / "items.parquet"
        path.write_text("this is not parquet")
        with pytest.raises(InputError, match="cannot read .*items.parquet as parquet"):
            read_items(InputSpec(uri=str(path), format="parquet"))

    def test_unknown_format(self, tmp_path: Path) -> None:
        path = tmp_path / "items.xml"
        path.write_text("<items/>")
        with pytest.raises(InputError, match="unknown input format 'xml'"):
            read_items(InputSpec(uri=str(path), format="xml"))

    def test_duplicates_across_files(self, tmp_path: Path) -> None:
        _items(5).write_parquet(tmp_path / "a.parquet")
        _items(5).write_parquet(tmp_path / "b.parquet")
        with pytest.raises(InputError, match="5 duplicate ids"):
            read_items(InputSpec(uri=str(tmp_path / "*.parquet"), format="parquet"))


class TestReadItemsIdType:
    def test_csv_ids_keep_their_leading_zeros(self, tmp_path: Path) -> None:
        path = tmp_path / "items.csv"
        path.write_text("id,v\n00123,1\n0456,2\n")
        items, _ = read_items(InputSpec(uri=str(path), format="csv"))
        assert items.get_column("id").to_list() == ["00123", "0456"]
        assert items.schema == pl.Schema({"id": pl.String, "v": pl.Int64}), "others inferred"

    def test_csv_ids_differing_in_leading_zeros_are_distinct(self, tmp_path: Path) -> None:
        path = tmp_path / "items.csv"
        path.write_text("id,v\n001,1\n01,2\n1,3\n")
        items, _ = read_items(InputSpec(uri=str(path), format="csv"))
        assert items.get_column("id").to_list() == ["001", "01", "1"]

    def test_integer_id_type_on_csv(self, tmp_path: Path) -> None:
        path = tmp_path / "items.csv"
        path.write_text("id,v\n7,1\n-8,2\n9223372036854775807,3\n")
        items, _ = read_items(InputSpec(uri=str(path), format="csv", id_type="integer"))
        assert items.schema["id"] == pl.Int64
        assert items.get_column("id").to_list() == [7, -8, 2**63 - 1]

    def test_integer_id_type_names_ids_that_are_not_integers(self, tmp_path: Path) -> None:
        path = tmp_path / "items.csv"
        path.write_text("id,v\n7,1\nx9,2\n1.5,3\n9223372036854775808,4\n")
        with pytest.raises(
            InputError,
            match=r"id_type is integer, but id column 'id' in .*items.csv has 3 ids that are "
            r"not integers .*\(e\.g\. 'x9', '1\.5', '9223372036854775808'\)",
        ):
            read_items(InputSpec(uri=str(path), format="csv", id_type="integer"))

    def test_integer_id_type_makes_leading_zero_ids_duplicates(self, tmp_path: Path) -> None:
        path = tmp_path / "items.csv"
        path.write_text("id,v\n001,1\n1,2\n")
        with pytest.raises(InputError, match=r"1 duplicate ids \(e\.g\. 1\)"):
            read_items(InputSpec(uri=str(path), format="csv", id_type="integer"))

    def test_string_id_type_on_parquet_ints(self, tmp_path: Path) -> None:
        path = tmp_path / "items.parquet"
        ids = pl.Series("id", [5, 2**63, 2**64 - 1], dtype=pl.UInt64)
        pl.DataFrame([ids, pl.Series("v", [1, 2, 3])]).write_parquet(path)
        items, _ = read_items(InputSpec(uri=str(path), format="parquet", id_type="string"))
        assert items.schema == pl.Schema({"id": pl.String, "v": pl.Int64})
        assert items.get_column("id").to_list() == ["5", str(2**63), str(2**64 - 1)]

    def test_parquet_ids_keep_their_stored_type(self, tmp_path: Path) -> None:
        path = tmp_path / "items.parquet"
        pl.DataFrame({"id": [3, 1]}, schema={"id": pl.UInt32}).write_parquet(path)
        items, _ = read_items(InputSpec(uri=str(path), format="parquet"))
        assert items.schema["id"] == pl.UInt32

    def test_float_ids_are_refused_even_with_string_id_type(self, tmp_path: Path) -> None:
        path = tmp_path / "items.parquet"
        pl.DataFrame({"id": [1.0, 2.0]}).write_parquet(path)
        with pytest.raises(InputError, match=r"id_type is string, but .* holds Float64 values"):
            read_items(InputSpec(uri=str(path), format="parquet", id_type="string"))

    def test_mismatched_id_dtypes_across_files_are_refused(self, tmp_path: Path) -> None:
        pl.DataFrame({"id": [1, 2]}).write_parquet(tmp_path / "a.parquet")
        pl.DataFrame({"id": ["3", "4"]}).write_parquet(tmp_path / "b.parquet")
        with pytest.raises(
            InputError,
            match=r"id column 'id' is Int64 in .*a\.parquet but String in .*b\.parquet; .*"
            r"set input\.id_type",
        ):
            read_items(InputSpec(uri=str(tmp_path / "*.parquet"), format="parquet"))

    def test_mismatched_id_dtypes_read_as_one_type_with_id_type(self, tmp_path: Path) -> None:
        pl.DataFrame({"id": [1, 2]}).write_parquet(tmp_path / "a.parquet")
        pl.DataFrame({"id": ["3", "4"]}).write_parquet(tmp_path / "b.parquet")
        uri = str(tmp_path / "*.parquet")
        items, _ = read_items(InputSpec(uri=uri, format="parquet", id_type="string"))
        assert items.get_column("id").to_list() == ["1", "2", "3", "4"]
        items, _ = read_items(InputSpec(uri=uri, format="parquet", id_type="integer"))
        assert items.get_column("id").to_list() == [1, 2, 3, 4]

    def test_file_without_the_id_column_is_named(self, tmp_path: Path) -> None:
        pl.DataFrame({"id": [1, 2]}).write_parquet(tmp_path / "a.parquet")
        pl.DataFrame({"key": [3, 4]}).write_parquet(tmp_path / "b.parquet")
        with pytest.raises(InputError, match=r"id column 'id' not found in .*b\.parquet"):
            read_items(InputSpec(uri=str(tmp_path / "*.parquet"), format="parquet"))


class TestConcatItems:
    def test_mismatched_id_dtypes_name_both_objects(self) -> None:
        frames = [pl.DataFrame({"id": ["a"]}), pl.DataFrame({"id": [1]}, schema={"id": pl.Int32})]
        names = ["s3://b/in/p0.jsonl", "s3://b/in/p1.jsonl"]
        with pytest.raises(
            InputError,
            match=r"'id' is String in s3://b/in/p0\.jsonl but Int32 in s3://b/in/p1\.jsonl",
        ):
            concat_items(frames, names, "id", "objects")

    def test_other_columns_are_still_relaxed(self) -> None:
        frames = [pl.DataFrame({"id": [1], "v": [1]}), pl.DataFrame({"id": [2], "v": [0.5]})]
        items = concat_items(frames, ["a", "b"], "id")
        assert items.schema == pl.Schema({"id": pl.Int64, "v": pl.Float64})


class TestCheckIds:
    def test_valid(self) -> None:
        check_ids(_items(10), "id", "src")

    @pytest.mark.parametrize(
        "ids", [[0.5, 1.5, float("nan")], [1.0, 2.0]], ids=["with-nan", "whole-numbers"]
    )
    def test_float_ids_are_refused(self, ids: list[float]) -> None:
        frame = pl.DataFrame({"sensor": ids})
        with pytest.raises(
            InputError,
            match=r"id column 'sensor' in src holds floating-point ids \(Float64, e\.g\. .*\); "
            r"ids must be integers or strings",
        ):
            check_ids(frame, "sensor", "src")

    def test_nan_id_is_counted(self) -> None:
        frame = pl.DataFrame({"id": [0.5, float("nan")]})
        with pytest.raises(InputError, match="1 of them NaN"):
            check_ids(frame, "id", "src")

    def test_uint64_above_int64_is_refused(self) -> None:
        frame = pl.DataFrame({"id": [1, 2**63, 2**64 - 1]}, schema={"id": pl.UInt64})
        with pytest.raises(
            InputError,
            match=r"2 UInt64 ids above 2\*\*63-1 \(e\.g\. 9223372036854775808, "
            r"18446744073709551615\).*set input\.id_type: string",
        ):
            check_ids(frame, "id", "src")

    def test_uint64_within_int64_is_accepted(self) -> None:
        check_ids(pl.DataFrame({"id": [0, 2**63 - 1]}, schema={"id": pl.UInt64}), "id", "src")

    @pytest.mark.parametrize(
        ("series", "hint"),
        [
            (pl.Series("id", [1, 2], dtype=pl.Int128), "set input.id_type: string"),
            (pl.Series("id", [True, False]), "write them as strings or integers"),
        ],
        ids=["int128", "boolean"],
    )
    def test_other_dtypes_are_refused(self, series: pl.Series, hint: str) -> None:
        with pytest.raises(InputError, match=rf"has ids of type {series.dtype} .*{hint}"):
            check_ids(series.to_frame(), "id", "src")

    def test_missing_column_names_it_and_the_columns(self) -> None:
        with pytest.raises(InputError, match=r"id column 'key' not found in src \(columns: id, "):
            check_ids(_items(3), "key", "src")

    def test_null_ids(self) -> None:
        frame = pl.DataFrame({"id": [1, None, 3, None]})
        with pytest.raises(InputError, match="has 2 null ids"):
            check_ids(frame, "id", "src")

    def test_duplicates_name_examples(self) -> None:
        frame = pl.DataFrame({"id": ["a", "b", "x", "c", "x", "b", "b"]})
        with pytest.raises(InputError, match=r"2 duplicate ids \(e\.g\. b, x\)"):
            check_ids(frame, "id", "src")


class TestAssignBatchesByCount:
    @pytest.mark.parametrize(("n", "max_items", "n_batches"), [(10, 3, 4), (9, 3, 3), (1, 5, 1)])
    def test_consecutive_runs(self, n: int, max_items: int, n_batches: int) -> None:
        assignment = assign_batches(_items(n), BatchingSpec(max_items=max_items))
        assert assignment == [i // max_items for i in range(n)]
        assert max(assignment) + 1 == n_batches


class TestAssignBatchesByBytes:
    def _texts(self, lengths: list[int]) -> pl.DataFrame:
        return pl.DataFrame(
            {"id": list(range(len(lengths))), "text": ["x" * k for k in lengths]},
            schema={"id": pl.Int64, "text": pl.String},
        )

    def test_estimate(self) -> None:
        assert estimate_row_bytes(self._texts([0, 5, 100])) == [8, 13, 108]

    def test_respects_max_bytes(self) -> None:
        rng = np.random.default_rng(1)
        items = self._texts(rng.integers(1, 400, 300).tolist())
        spec = BatchingSpec(max_items=1000, max_bytes=1500)
        assignment = assign_batches(items, spec)
        assert assignment == sorted(assignment), "batches by bytes are contiguous"
        sizes = estimate_row_bytes(items)
        totals: dict[int, int] = {}
        for batch, size in zip(assignment, sizes, strict=True):
            totals[batch] = totals.get(batch, 0) + size
        assert max(totals.values()) <= 1500
        # Greedy: no batch could have taken the next batch's first row.
        starts = [assignment.index(b) for b in range(1, max(assignment) + 1)]
        for batch, start in enumerate(starts):
            assert totals[batch] + sizes[start] > 1500

    def test_respects_max_items_too(self) -> None:
        items = self._texts([1] * 50)
        assignment = assign_batches(items, BatchingSpec(max_items=8, max_bytes=10**9))
        assert assignment == [i // 8 for i in range(50)]

    def test_oversized_item_gets_its_own_batch(self) -> None:
        items = self._texts([10, 10, 5000, 10])
        assignment = assign_batches(items, BatchingSpec(max_items=100, max_bytes=100))
        assert assignment == [0, 0, 1, 2]


class TestAssignBatchesByWeight:
    def test_skewed_input_gets_balanced_batches(self) -> None:
        items = _skewed(1950)
        by_weight = assign_batches(items, BatchingSpec(max_items=100, weight_column="w"))
        by_count = assign_batches(items, BatchingSpec(max_items=100))
        balanced = _batch_weights(items, by_weight, "w")
        contiguous = _batch_weights(items, by_count, "w")
        assert balanced.height == contiguous.height == 20
        balanced_ratio = balanced["weight"].max() / balanced["weight"].mean()
        contiguous_ratio = contiguous["weight"].max() / contiguous["weight"].mean()
        assert balanced_ratio < 1.1
        assert contiguous_ratio > 3
        assert balanced["n"].max() <= 100
        assert balanced["n"].sum() == 1950

    def test_no_batch_exceeds_max_items(self) -> None:
        # One huge item and many light ones: without the cap the light ones would pile up.
        items = pl.DataFrame({"id": list(range(100)), "w": [1000.0] + [1.0] * 99})
        assignment = assign_batches(items, BatchingSpec(max_items=10, weight_column="w"))
        counts = np.bincount(assignment)
        assert len(counts) == 10
        assert counts.max() <= 10
        assert counts.sum() == 100

    def test_deterministic_with_ties(self) -> None:
        items = pl.DataFrame({"id": list(range(40)), "w": [1] * 40})
        spec = BatchingSpec(max_items=7, weight_column="w")
        assert assign_batches(items, spec) == assign_batches(items, spec)

    def test_missing_column(self) -> None:
        with pytest.raises(InputError, match="weight_column 'cost' is not a column"):
            assign_batches(_items(5), BatchingSpec(max_items=2, weight_column="cost"))

    def test_non_numeric(self) -> None:
        with pytest.raises(InputError, match="weight_column 'group' must be numeric"):
            assign_batches(_items(5), BatchingSpec(max_items=2, weight_column="group"))

    def test_negative(self) -> None:
        items = pl.DataFrame({"id": [1, 2, 3], "w": [1.0, -0.5, 2.0]})
        with pytest.raises(InputError, match="must be non-negative and not null"):
            assign_batches(items, BatchingSpec(max_items=2, weight_column="w"))

    def test_null(self) -> None:
        items = pl.DataFrame({"id": [1, 2, 3], "w": [1.0, None, 2.0]})
        with pytest.raises(InputError, match="must be non-negative and not null"):
            assign_batches(items, BatchingSpec(max_items=2, weight_column="w"))


@pytest.fixture
def partition_config(tmp_path: Path, make_config: Callable[..., dict[str, Any]]):
    def build(frame: pl.DataFrame, **overrides: Any):
        frame.write_parquet(tmp_path / "items.parquet")
        return load_config(make_config(**overrides))

    return build


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


class TestPartitionItems:
    def test_writes_batches_and_plan(self, tmp_path: Path, store, partition_config) -> None:
        config = partition_config(_items(250))  # max_items 100, fan_in 3
        out = tmp_path / "run" / "batches"
        plan = partition_items(config, store, out)
        assert sorted(p.name for p in out.iterdir()) == [
            "batch-00000.parquet",
            "batch-00001.parquet",
            "batch-00002.parquet",
            "plan.json",
        ]
        assert read_plan(out / "plan.json") == plan
        assert plan["items"] == 250
        assert plan["n_batches"] == 3
        assert plan["levels"] == [3, 1]
        assert plan["config_sha256"] == config.sha256
        assert [b["items"] for b in plan["batches"]] == [100, 100, 50]
        for batch in plan["batches"]:
            path = out / f"batch-{batch['batch_id']}.parquet"
            assert batch["sha256"] == sha256_file(path)
            assert batch["bytes"] == path.stat().st_size
        rebuilt = pl.concat([pl.read_parquet(out / f"batch-{i:05d}.parquet") for i in range(3)])
        assert rebuilt.equals(_items(250))
        assert _leftovers(out.parent) == []

    def test_registers_every_task(self, tmp_path: Path, store, partition_config) -> None:
        config = partition_config(_items(1000), batching={"max_items": 50})  # 20 batches
        partition_items(config, store, tmp_path / "batches")
        rows = {t.task_id: t for t in store.tasks()}
        expected = set(task.all_ids(level_sizes(20, 3))) | {"partition"}
        assert set(rows) == expected
        assert "merge-L1-part-00006" in rows and "merge-L2-part-00002" in rows
        assert rows["partition"].status is TaskStatus.SUCCEEDED
        assert rows["partition"].items == 1000
        assert all(rows[f"batch-{i:05d}"].items == 50 for i in range(20))
        assert all(r.status is TaskStatus.PENDING for tid, r in rows.items() if tid != "partition")

    def test_weight_partition_keeps_input_order_within_batches(
        self, tmp_path: Path, store, partition_config
    ) -> None:
        config = partition_config(_skewed(300), batching={"max_items": 30, "weight_column": "w"})
        out = tmp_path / "batches"
        plan = partition_items(config, store, out)
        assert plan["n_batches"] == 10
        seen: list[int] = []
        for i in range(10):
            ids = pl.read_parquet(out / f"batch-{i:05d}.parquet").get_column("id").to_list()
            assert ids == sorted(ids)
            seen += ids
        assert sorted(seen) == list(range(300))

    @pytest.mark.parametrize(
        "batching",
        [{"max_items": 40}, {"max_items": 40, "weight_column": "w"}, {"max_bytes": 500}],
    )
    def test_deterministic(self, tmp_path: Path, store, partition_config, batching) -> None:
        config = partition_config(_skewed(333), batching=batching)
        first, second = tmp_path / "one" / "batches", tmp_path / "two" / "batches"
        plan_1 = partition_items(config, store, first)
        plan_2 = partition_items(config, store, second)
        assert plan_1 == plan_2
        names = sorted(p.name for p in first.iterdir())
        assert names == sorted(p.name for p in second.iterdir())
        assert len(names) == plan_1["n_batches"] + 1
        for name in names:
            assert (first / name).read_bytes() == (second / name).read_bytes(), name

    def test_rerun_replaces_the_folder(self, tmp_path: Path, store, partition_config) -> None:
        out = tmp_path / "batches"
        partition_items(partition_config(_items(250)), store, out)
        plan = partition_items(partition_config(_items(120)), store, out)
        assert plan["n_batches"] == 2
        assert sorted(p.name for p in out.iterdir()) == [
            "batch-00000.parquet",
            "batch-00001.parquet",
            "plan.json",
        ]

    def test_duplicate_ids_leave_nothing_behind(
        self, tmp_path: Path, store, partition_config
    ) -> None:
        frame = pl.concat([_items(20), _items(3)])
        config = partition_config(frame)
        out = tmp_path / "run" / "batches"
        with pytest.raises(InputError, match=r"3 duplicate ids \(e\.g\. 0, 1, 2\)"):
            partition_items(config, store, out)
        assert not out.exists()
        assert not out.parent.exists() or _leftovers(out.parent) == []
        record = store.get("partition")
        assert record.status is TaskStatus.DEAD
        assert record.error_category == "permanent"
        assert record.error_type == "InputError"
        assert [t.task_id for t in store.tasks()] == ["partition"]

    def test_failure_after_writing_batches_cleans_up(
        self, tmp_path: Path, store, partition_config, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        config = partition_config(_items(250))
        out = tmp_path / "run" / "batches"

        def crash(*args: Any, **kwargs: Any) -> None:
            raise OSError("disk full")

        monkeypatch.setattr(partition, "build_plan", crash)
        with pytest.raises(OSError, match="disk full"):
            partition_items(config, store, out)
        assert not out.exists()
        assert _leftovers(out.parent) == []
        assert store.get("partition").status is TaskStatus.DEAD

    def test_empty_input(self, tmp_path: Path, store, partition_config) -> None:
        config = partition_config(_items(0))
        with pytest.raises(InputError, match="has no items"):
            partition_items(config, store, tmp_path / "batches")
        assert not (tmp_path / "batches").exists()

    def test_missing_input(self, tmp_path: Path, store, make_config) -> None:
        config = load_config(make_config())
        with pytest.raises(InputError, match="input file not found"):
            partition_items(config, store, tmp_path / "batches")
        assert not (tmp_path / "batches").exists()


class TestNewPlanSupersedesTheOld:
    """A re-partition removes every file of the old plan and resets the state (issue 11)."""

    def test_removes_every_derived_file_and_keeps_the_run_files(
        self, tmp_path: Path, store, partition_config
    ) -> None:
        config = partition_config(_items(250))
        run = Path(config.run_dir)
        stale = [
            "results/batch-00007.parquet", "results/batch-00007.json",
            "dead_letter/batch-00007.parquet", "merge/L1/part-00002.parquet",
            "final/result.parquet", "final/result.json", "manifest.json",
            "report/dashboard.html", "checkpoints/batch-00007/index.json",
        ]  # fmt: skip
        kept = ["config.json", "logs/process_batch/00007.log"]
        for rel in stale + kept:
            (run / rel).parent.mkdir(parents=True, exist_ok=True)
            (run / rel).write_text("old")
        partition_items(config, store, run / "batches")
        for rel in stale:
            assert not (run / rel).exists(), rel
        for rel in kept:
            assert (run / rel).read_text() == "old", rel
        assert not (run / "results").exists() and not (run / "merge").exists()

    def test_tasks_of_the_old_plan_are_superseded(
        self, tmp_path: Path, store, partition_config
    ) -> None:
        out = tmp_path / "batches"
        partition_items(partition_config(_items(250)), store, out)
        store.succeed(store.begin_attempt("batch-00002"), "a" * 64)
        store.succeed(store.begin_attempt("batch-00000"), "b" * 64)
        partition_items(partition_config(_items(120)), store, out)
        rows = {t.task_id: t for t in store.tasks()}
        assert set(rows) == set(task.all_ids(level_sizes(2, 3))) | {"partition"}
        assert rows["batch-00000"].status is TaskStatus.PENDING
        assert rows["batch-00000"].items == 100 and rows["batch-00001"].items == 20
        assert store.get("batch-00002").status is TaskStatus.SUPERSEDED

    def test_plan_fingerprints_every_input_file(
        self, tmp_path: Path, store, partition_config
    ) -> None:
        config = partition_config(_items(10))
        plan = partition_items(config, store, tmp_path / "batches")
        source = tmp_path / "items.parquet"
        stat = source.stat()
        assert plan["input"]["files"] == [
            {"path": str(source), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        ]
        assert len(plan["input"]["listing_sha256"]) == 64

    def test_input_changing_while_read_is_refused(
        self, tmp_path: Path, store, partition_config, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        config = partition_config(_items(10))
        read = partition.read_items

        def read_then_append(*args: Any, **kwargs: Any) -> Any:
            got = read(*args, **kwargs)
            (tmp_path / "items.parquet").write_bytes(b"half-written")
            return got

        monkeypatch.setattr(partition, "read_items", read_then_append)
        with pytest.raises(InputError, match="changed while it was being read"):
            partition_items(config, store, tmp_path / "batches")
        assert not (tmp_path / "batches").exists()

    @pytest.mark.parametrize(
        ("job", "named"),
        [
            ({"function": "no_such_module_here:fn"}, "job.function"),
            ({"combine": "orchestrator_ext.jobs.grouped_stats:no_such_combine"}, "job.combine"),
            ({"finalize": "orchestrator_ext.jobs.grouped_stats:nope"}, "job.finalize"),
        ],
    )
    def test_a_job_that_cannot_be_imported_writes_nothing(
        self, tmp_path: Path, store, partition_config, job, named
    ) -> None:
        from orchestrator_ext.errors import JobLoadError

        config = partition_config(_items(10), job=job)
        with pytest.raises(JobLoadError, match=named):
            partition_items(config, store, tmp_path / "batches")
        assert not (tmp_path / "batches").exists()
        assert store.get("partition").status is TaskStatus.DEAD


class TestPlanJson:
    def test_plan_is_stable_json(self, tmp_path: Path, store, partition_config) -> None:
        partition_items(partition_config(_items(10)), store, tmp_path / "b")
        text = (tmp_path / "b" / "plan.json").read_text()
        data = json.loads(text)
        assert text == json.dumps(data, indent=2, sort_keys=True) + "\n"
        assert len(data["input"]["listing_sha256"]) == 64


class TestBatchNumbers:
    """The vectorized assignment partition_items uses agrees with assign_batches."""

    @pytest.mark.parametrize(
        "spec",
        [
            BatchingSpec(max_items=7),
            BatchingSpec(max_items=1000),
            BatchingSpec(max_items=9, max_bytes=60),
            BatchingSpec(max_items=6, weight_column="w"),
        ],
    )
    def test_same_as_assign_batches(self, spec: BatchingSpec) -> None:
        rng = np.random.default_rng(3)
        items = pl.DataFrame(
            {"id": list(range(101)), "w": rng.integers(0, 50, 101).tolist(),
             "text": ["x" * k for k in rng.integers(0, 30, 101)]}
        )  # fmt: skip
        numbers = batch_numbers(items, spec)
        assert numbers.dtype == pl.Int64
        assert numbers.to_list() == assign_batches(items, spec)
