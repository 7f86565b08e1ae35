"""Unit tests for orchestrator_ext.partition (no workflow runs)."""

from __future__ import annotations

import hashlib
import heapq
import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from orchestrator_ext import partition, sizing, task
from orchestrator_ext.config import BatchingSpec, InputSpec, load_config
from orchestrator_ext.errors import InputError
from orchestrator_ext.items import ItemSource, read_items
from orchestrator_ext.layout import RunLayout, level_sizes
from orchestrator_ext.partition import (
    ROW_BYTES,
    batch_numbers,
    partition_items,
    plan_columns,
    read_plan,
    row_bytes,
)
from orchestrator_ext.state import TaskStatus
from orchestrator_ext.state.sqlite import SqliteStateStore
from orchestrator_ext.storage import sha256_file


@pytest.fixture
def store(tmp_path: Path):
    store = SqliteStateStore(tmp_path / "state.sqlite", "r")
    yield store
    store.close()


def _items(n: int, start: int = 0) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "id": np.arange(start, start + n, dtype=np.int64),
            "group": [f"g{i % 7}" for i in range(n)],
            "value": np.arange(n, dtype=np.int64) * 3,
        }
    )


def _skewed(n: int, seed: int = 7) -> pl.DataFrame:
    """Pareto weights, heaviest first: the input order clusters the expensive items."""
    rng = np.random.default_rng(seed)
    weights = np.round(np.sort(rng.pareto(1.5, n) + 1.0)[::-1], 3)
    return pl.DataFrame({"id": np.arange(n, dtype=np.int64), "w": weights})


def assign_batches(items: pl.DataFrame, batching: BatchingSpec) -> list[int]:
    """``batch_numbers`` of a frame of items, planned from its ``plan_columns``."""
    return batch_numbers(
        items.with_columns(**plan_columns(items.schema, batching)), batching
    ).to_list()


def _batch_weights(items: pl.DataFrame, assignment: list[int], column: str) -> pl.DataFrame:
    return (
        items.with_columns(pl.Series("b", assignment))
        .group_by("b")
        .agg(pl.col(column).sum().alias("weight"), pl.len().alias("n"))
        .sort("b")
    )


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
        items = self._texts([0, 5, 100])
        assert items.select(row_bytes(items.schema)).to_series().to_list() == [8, 13, 108]

    def test_respects_max_bytes(self) -> None:
        rng = np.random.default_rng(1)
        items = self._texts(rng.integers(1, 400, 300).tolist())
        spec = BatchingSpec(max_items=1000, max_bytes=1500)
        assignment = assign_batches(items, spec)
        assert assignment == sorted(assignment), "batches by bytes are contiguous"
        sizes = items.select(row_bytes(items.schema)).to_series().to_list()
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

    def test_nan(self) -> None:
        items = pl.DataFrame({"id": [1, 2, 3], "w": [1.0, float("nan"), 2.0]})
        with pytest.raises(InputError, match="'w' has NaN weights"):
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


def _sliced_whole(spec: InputSpec, batching: BatchingSpec) -> list[str]:
    """The sha256 of every batch file as cutting the input read whole into one frame writes
    them (slices, or partitions by weight): what streaming it must write."""
    items, _ = read_items(spec)
    numbers = batch_numbers(items.with_columns(**plan_columns(items.schema, batching)), batching)
    if numbers.is_sorted():
        starts = np.cumsum([0, *numbers.rle().struct.field("len")])
        frames = [items.slice(int(a), int(b - a)) for a, b in zip(starts, starts[1:], strict=False)]
    else:
        groups = items.with_columns(numbers).partition_by(numbers.name, as_dict=True)
        frames = [groups[key].drop(numbers.name) for key in sorted(groups)]
    digests = []
    for frame in frames:
        out = io.BytesIO()
        frame.write_parquet(out, compression="zstd", statistics=True)
        digests.append(hashlib.sha256(out.getvalue()).hexdigest())
    return digests


class TestStreamedBatches:
    """Batches written streaming the input are the files cutting it whole gives."""

    BATCHINGS = [
        {"max_items": 45},
        {"max_items": 90, "max_bytes": 900},
        {"max_items": 45, "weight_column": "value"},
    ]

    @pytest.fixture
    def source(self, tmp_path: Path) -> Callable[[str], str]:
        def build(fmt: str) -> str:
            frames = [
                _items(130),
                _items(7, 130).with_columns(pl.col("value").cast(pl.Int16)),
                _items(110, 137).drop("group").with_columns(extra=pl.lit(0.5)),
            ]
            for index, frame in enumerate(frames):
                path = tmp_path / "in" / f"part-{index}.{fmt}"
                path.parent.mkdir(exist_ok=True)
                if fmt == "parquet":
                    frame.write_parquet(path, row_group_size=30)
                else:
                    frame.write_csv(path) if fmt == "csv" else frame.write_ndjson(path)
            return str(tmp_path / "in" / f"part-*.{fmt}")

        return build

    @pytest.mark.parametrize("batching", BATCHINGS, ids=["count", "bytes", "weight"])
    @pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
    def test_same_files(
        self, tmp_path: Path, store, make_config, source, fmt: str, batching: dict[str, Any]
    ) -> None:
        uri = source(fmt)
        config = load_config(
            make_config(input={"uri": uri, "format": fmt, "id_type": "integer"}, batching=batching)
        )
        plan = partition_items(config, store, tmp_path / "batches")
        assert [b["sha256"] for b in plan["batches"]] == _sliced_whole(
            config.input, config.batching
        )

    def test_weight_batches_in_several_passes(
        self, tmp_path: Path, store, make_config, source, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        config = load_config(
            make_config(
                input={"uri": source("parquet"), "format": "parquet"}, batching=self.BATCHINGS[2]
            )
        )
        passes = 0
        frames = ItemSource.frames

        def counted(self: ItemSource) -> Any:
            nonlocal passes
            passes += 1
            return frames(self)

        monkeypatch.setattr(ItemSource, "frames", counted)
        monkeypatch.setattr(partition, "_PASS_BYTES", 3000)  # about 100 rows a pass
        plan = partition_items(config, store, tmp_path / "batches")
        assert plan["n_batches"] == 6
        assert passes > 3  # a look at the rows' size, then one pass per group of batches
        assert [b["sha256"] for b in plan["batches"]] == _sliced_whole(
            config.input, config.batching
        )

    def test_rows_kept_across_passes_are_copied_as_they_are(self) -> None:
        frame = pl.DataFrame({"id": [1, 2, 3], "text": ["a", None, "ccc" * 9]}).with_columns(
            cat=pl.col("text").cast(pl.Categorical),
            nested=pl.int_ranges(0, pl.col("id")),
            when=pl.datetime(2026, 1, 1) + pl.duration(days=pl.col("id")),
            money=pl.col("id").cast(pl.Decimal(10, 2)),
        )
        kept = partition._compact(frame.filter(pl.col("id") != 2))
        assert kept.equals(frame.filter(pl.col("id") != 2))
        assert kept.schema == frame.schema

    def test_a_bad_value_found_while_writing_leaves_nothing(
        self, tmp_path: Path, store, make_config
    ) -> None:
        lines = "".join(f"{i},{i}\n" for i in range(300))
        (tmp_path / "items.csv").write_text(f"id,v\n{lines}300,abc\n")
        config = load_config(
            make_config(input={"uri": str(tmp_path / "items.csv"), "format": "csv"})
        )
        out = tmp_path / "run" / "batches"
        with pytest.raises(InputError, match=r"cannot read .*items\.csv as csv: .*abc"):
            partition_items(config, store, out)
        assert not out.exists()
        assert _leftovers(out.parent) == []
        assert store.get("partition").status is TaskStatus.DEAD


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

    @pytest.mark.parametrize(
        ("owner", "name"),
        [(ItemSource, "read_columns"), (partition, "write_batches")],
        ids=["after-planning", "after-writing"],
    )
    def test_input_changing_while_read_is_refused(
        self, tmp_path: Path, store, partition_config, monkeypatch, owner, name
    ) -> None:
        config = partition_config(_items(10))
        step = getattr(owner, name)

        def step_then_rewrite(*args: Any, **kwargs: Any) -> Any:
            got = step(*args, **kwargs)
            (tmp_path / "items.parquet").write_bytes(b"half-written")
            return got

        monkeypatch.setattr(owner, name, step_then_rewrite)
        with pytest.raises(InputError, match="changed while it was being read"):
            partition_items(config, store, tmp_path / "batches")
        assert not (tmp_path / "batches").exists()
        assert _leftovers(tmp_path) == []

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


def _greedy_by_bytes(sizes: list[int], max_items: int, max_bytes: int) -> list[int]:
    """Batching by bytes as one loop over the items: what ``batch_numbers`` must equal."""
    assignment, batch, count, size = [], 0, 0, 0
    for row_bytes_ in sizes:
        if count and (count >= max_items or size + row_bytes_ > max_bytes):
            batch, count, size = batch + 1, 0, 0
        assignment.append(batch)
        count += 1
        size += row_bytes_
    return assignment


def _lpt(weights: list[float], max_items: int) -> list[int]:
    """Batching by weight as one loop over the items: what ``batch_numbers`` must equal."""
    n = len(weights)
    n_batches = max(1, -(-n // max_items))
    heap = [(0.0, b) for b in range(n_batches)]
    counts, assignment = [0] * n_batches, [0] * n
    for i in sorted(range(n), key=lambda i: (-weights[i], i)):
        total, b = heapq.heappop(heap)
        assignment[i] = b
        counts[b] += 1
        if counts[b] < max_items:
            heapq.heappush(heap, (total + weights[i], b))
    return assignment


class TestBatchNumbers:
    """The vectorized assignment agrees with the per-item loops it replaced."""

    @pytest.mark.parametrize(
        ("max_items", "max_bytes"), [(9, 60), (1000, 60), (3, 10**9), (50, 1), (7, 200)]
    )
    def test_by_bytes(self, max_items: int, max_bytes: int) -> None:
        rng = np.random.default_rng(3)
        sizes = [int(k) for k in rng.integers(0, 80, 501)]
        rows = pl.DataFrame({ROW_BYTES: sizes}, schema={ROW_BYTES: pl.Int64})
        numbers = batch_numbers(rows, BatchingSpec(max_items=max_items, max_bytes=max_bytes))
        assert numbers.dtype == pl.Int64
        assert numbers.to_list() == _greedy_by_bytes(sizes, max_items, max_bytes)

    @pytest.mark.parametrize("dtype", [pl.Int64, pl.UInt8, pl.Float64])
    @pytest.mark.parametrize("max_items", [6, 40, 1000])
    def test_by_weight(self, dtype: pl.DataType, max_items: int) -> None:
        rng = np.random.default_rng(4)
        weights = pl.Series("w", rng.integers(0, 50, 70_001)).cast(dtype)  # many ties
        if dtype == pl.Float64:
            weights = weights / 7
        numbers = batch_numbers(weights.to_frame(), BatchingSpec(max_items, weight_column="w"))
        assert numbers.to_list() == _lpt(weights.to_list(), max_items)

    def test_by_count(self) -> None:
        numbers = batch_numbers(pl.DataFrame({"id": list(range(23))}), BatchingSpec(max_items=5))
        assert numbers.to_list() == [i // 5 for i in range(23)]


class TestSizedByTime:
    """``batching.target_seconds`` through the partition: the job timed on the first items,
    the size in the plan, and the same size again once the batch folder is gone."""

    def _config(self, partition_config: Any) -> Any:
        return partition_config(
            _items(400),
            batching={"target_seconds": 0.2},
            job={"function": "orchestrator_ext.jobs.wait:wait_item", "mode": "item",
                 "params": {"wait_s": 0.01}},
        )  # fmt: skip

    def test_batches_hold_about_target_seconds_of_work(
        self, tmp_path: Path, store, partition_config
    ) -> None:
        config = self._config(partition_config)
        plan = partition_items(config, store, tmp_path / "batches")
        recorded = plan["batching"]
        # 10 ms an item (plus the call's own cost) against a 0.2 s target: about 20 items.
        assert 0.01 <= recorded["seconds_per_item"] < 0.02
        assert 10 <= recorded["max_items"] <= 20
        assert plan["n_batches"] == -(-400 // recorded["max_items"])
        assert recorded["target_seconds"] == 0.2 and recorded["sampled_items"] > 0
        assert json.loads(Path(RunLayout(config.run_dir).sizing).read_text())["batching"] == (
            recorded
        )

    def test_a_rerun_reuses_the_recorded_size(
        self, tmp_path: Path, store, partition_config, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        config = self._config(partition_config)
        first = partition_items(config, store, tmp_path / "batches")
        shutil.rmtree(tmp_path / "batches")  # as Snakemake does before the partition reruns

        def no_timing(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError("the job was timed again")

        monkeypatch.setattr(sizing, "size_by_time", no_timing)
        again = partition_items(config, store, tmp_path / "batches")
        assert again["batching"] == first["batching"]
        assert again["batches"] == first["batches"]  # byte-identical batch files

    def test_without_target_seconds_the_plan_is_as_before(
        self, tmp_path: Path, store, partition_config
    ) -> None:
        config = partition_config(_items(10))
        plan = partition_items(config, store, tmp_path / "batches")
        assert plan["batching"] == {"max_items": 100, "max_bytes": None, "weight_column": None}
        assert not Path(RunLayout(config.run_dir).sizing).exists()
