"""Unit tests for orchestrator_ext.merge: checksum checks, streaming concat, reduce nodes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq
import pytest
from polars.testing import assert_frame_equal

from orchestrator_ext import merge
from orchestrator_ext.config import load_config
from orchestrator_ext.errors import ChecksumMismatch, MissingOutput
from orchestrator_ext.example_data import make_records
from orchestrator_ext.job import JobContext
from orchestrator_ext.jobs import grouped_stats
from orchestrator_ext.merge import SchemaMismatch, concat_stream, merge_node, verify_children
from orchestrator_ext.state import TaskStatus
from orchestrator_ext.state.sqlite import SqliteStateStore
from orchestrator_ext.storage import read_json, sha256_file, write_json

CTX = JobContext(run_id="r", batch_id="test", attempt=1)


@pytest.fixture
def store(tmp_path: Path):
    store = SqliteStateStore(tmp_path / "state.sqlite", "r")
    yield store
    store.close()


def write_child(folder: Path, name: str, frame: pl.DataFrame) -> tuple[str, str]:
    """A child node as process/merge leave it: data file plus a record with its sha256."""
    folder.mkdir(parents=True, exist_ok=True)
    data, record = folder / f"{name}.parquet", folder / f"{name}.json"
    frame.write_parquet(data)
    write_json(
        record, {"uri": f"store://{name}", "sha256": sha256_file(data), "rows": frame.height}
    )
    return str(data), str(record)


class TestVerifyChildren:
    def test_returns_records_in_order(self, tmp_path: Path) -> None:
        kids = [write_child(tmp_path, f"c{i}", pl.DataFrame({"a": [i]})) for i in range(3)]
        records = verify_children(kids)
        assert [r["uri"] for r in records] == ["store://c0", "store://c1", "store://c2"]

    def test_tampered_child_is_refused(self, tmp_path: Path) -> None:
        kids = [write_child(tmp_path, f"c{i}", pl.DataFrame({"a": [i]})) for i in range(3)]
        pl.DataFrame({"a": [42]}).write_parquet(kids[1][0])
        with pytest.raises(ChecksumMismatch, match=r"merge input store://c1 \(.*c1\.parquet\)"):
            verify_children(kids)

    def test_missing_child(self, tmp_path: Path) -> None:
        data, record = write_child(tmp_path, "c0", pl.DataFrame({"a": [1]}))
        Path(data).unlink()
        with pytest.raises(MissingOutput, match="c0.parquet"):
            verify_children([(data, record)])

    def test_missing_record(self, tmp_path: Path) -> None:
        data, record = write_child(tmp_path, "c0", pl.DataFrame({"a": [1]}))
        Path(record).unlink()
        with pytest.raises(MissingOutput, match="c0.json"):
            verify_children([(data, record)])


class TestConcatStream:
    def test_concatenates_in_order(self, tmp_path: Path) -> None:
        frames = [
            pl.DataFrame({"id": list(range(i * 10, i * 10 + 10)), "s": [f"v{i}"] * 10})
            for i in range(4)
        ]
        paths = []
        for i, frame in enumerate(frames):
            paths.append(str(tmp_path / f"{i}.parquet"))
            frame.write_parquet(paths[-1])
        out = tmp_path / "out.parquet"
        assert concat_stream(paths, out) == 40
        assert_frame_equal(pl.read_parquet(out), pl.concat(frames))

    def test_streams_in_record_batches(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(merge, "_STREAM_BATCH_ROWS", 7)
        frame = pl.DataFrame({"id": list(range(100))})
        frame.write_parquet(tmp_path / "a.parquet", row_group_size=25)
        out = tmp_path / "out.parquet"
        assert concat_stream([str(tmp_path / "a.parquet")], out) == 100
        assert_frame_equal(pl.read_parquet(out), frame)
        # Each record batch is written as it comes: the output has many small row groups.
        assert pq.ParquetFile(out).metadata.num_row_groups > 4

    def test_skips_empty_children_without_columns(self, tmp_path: Path) -> None:
        pl.DataFrame().write_parquet(tmp_path / "0.parquet")
        pl.DataFrame({"id": [1, 2]}).write_parquet(tmp_path / "1.parquet")
        pl.DataFrame().write_parquet(tmp_path / "2.parquet")
        pl.DataFrame({"id": [3]}).write_parquet(tmp_path / "3.parquet")
        paths = [str(tmp_path / f"{i}.parquet") for i in range(4)]
        out = tmp_path / "out.parquet"
        assert concat_stream(paths, out) == 3
        assert pl.read_parquet(out).get_column("id").to_list() == [1, 2, 3]

    def test_reorders_columns_with_the_same_names(self, tmp_path: Path) -> None:
        pl.DataFrame({"a": [1], "b": ["x"]}).write_parquet(tmp_path / "0.parquet")
        pl.DataFrame({"b": ["y"], "a": [2]}).write_parquet(tmp_path / "1.parquet")
        out = tmp_path / "out.parquet"
        concat_stream([str(tmp_path / "0.parquet"), str(tmp_path / "1.parquet")], out)
        assert pl.read_parquet(out).rows() == [(1, "x"), (2, "y")]

    def test_different_columns(self, tmp_path: Path) -> None:
        pl.DataFrame({"a": [1]}).write_parquet(tmp_path / "0.parquet")
        pl.DataFrame({"z": [2]}).write_parquet(tmp_path / "1.parquet")
        with pytest.raises(
            SchemaMismatch, match=r"cannot concat .*1\.parquet: its columns \['z'\]"
        ):
            concat_stream(
                [str(tmp_path / "0.parquet"), str(tmp_path / "1.parquet")], tmp_path / "out.parquet"
            )

    @pytest.mark.parametrize(
        ("values", "name"), [(["5"], "String"), ([2.0], "Float64"), ([2], "Int32")]
    )
    def test_a_child_of_another_type_is_refused_not_cast(
        self, tmp_path: Path, values: list[Any], name: str
    ) -> None:
        # Bug 1: "5", 2.0 and Int32 2 were cast to the first child's Int64 without a word.
        pl.DataFrame({"a": [1]}).write_parquet(tmp_path / "0.parquet")
        dtype = pl.Int32 if name == "Int32" else None
        pl.DataFrame({"a": values}, schema={"a": dtype} if dtype else None).write_parquet(
            tmp_path / "1.parquet"
        )
        out = tmp_path / "out.parquet"
        with pytest.raises(SchemaMismatch) as info:
            concat_stream([str(tmp_path / "0.parquet"), str(tmp_path / "1.parquet")], out)
        assert str(info.value) == (
            f"cannot concat {tmp_path / '1.parquet'}: column types differ: 'a' is {name} "
            f"there but Int64 in {tmp_path / '0.parquet'}; merges never cast: every batch "
            "must return the run's output schema"
        )
        assert not out.exists() or pl.read_parquet(out).height == 0

    def test_an_empty_child_of_another_type_is_refused_too(self, tmp_path: Path) -> None:
        pl.DataFrame({"a": [1]}).write_parquet(tmp_path / "0.parquet")
        pl.DataFrame(schema={"a": pl.String}).write_parquet(tmp_path / "1.parquet")
        with pytest.raises(SchemaMismatch, match="'a' is String there but Int64"):
            concat_stream(
                [str(tmp_path / "0.parquet"), str(tmp_path / "1.parquet")], tmp_path / "out.parquet"
            )

    def test_incompatible_types(self, tmp_path: Path) -> None:
        pl.DataFrame({"a": [1]}).write_parquet(tmp_path / "0.parquet")
        pl.DataFrame({"a": ["not a number"]}).write_parquet(tmp_path / "1.parquet")
        with pytest.raises(SchemaMismatch, match="column types differ"):
            concat_stream(
                [str(tmp_path / "0.parquet"), str(tmp_path / "1.parquet")], tmp_path / "out.parquet"
            )


@pytest.fixture
def merge_config(make_config: Callable[..., dict[str, Any]]):
    def build(**overrides: Any):
        return load_config(make_config(run_id="r", **overrides))

    return build


class TestMergeNode:
    def test_concat_node_record_and_state(self, tmp_path: Path, store, merge_config) -> None:
        config = merge_config(job={"combine": None, "finalize": None}, merge={"mode": "concat"})
        kids = [
            write_child(tmp_path / "results", f"b{i}", pl.DataFrame({"id": [i, i + 10]}))
            for i in range(3)
        ]
        out, rec = tmp_path / "merge" / "L1" / "part-00000.parquet", tmp_path / "merge" / "p.json"
        record = merge_node(
            config, store, "merge-L1-part-00000", 1, 0, kids, str(out), str(rec), False
        )
        assert read_json(rec) == record
        assert record["level"] == 1
        assert record["index"] == 0
        assert record["children"] == ["store://b0", "store://b1", "store://b2"]
        assert record["uri"] == str(out)
        assert record["rows"] == 6
        assert record["sha256"] == sha256_file(out)
        assert record["bytes"] == out.stat().st_size
        assert record["attempts"] == 1
        assert pl.read_parquet(out).get_column("id").to_list() == [0, 10, 1, 11, 2, 12]
        state = store.get("merge-L1-part-00000")
        assert state.status is TaskStatus.SUCCEEDED
        assert state.output_sha256 == record["sha256"]

    def test_uri_is_recorded_when_given(self, tmp_path: Path, store, merge_config) -> None:
        config = merge_config(job={"combine": None}, merge={"mode": "concat"})
        kids = [write_child(tmp_path, "b0", pl.DataFrame({"id": [1]}))]
        record = merge_node(
            config, store, "final", 1, 0, kids, str(tmp_path / "f.parquet"),
            str(tmp_path / "f.json"), True, uri="s3://bucket/run/final/result.parquet",
        )  # fmt: skip
        assert record["uri"] == "s3://bucket/run/final/result.parquet"

    def test_tampered_child_publishes_nothing(self, tmp_path: Path, store, merge_config) -> None:
        config = merge_config(job={"combine": None}, merge={"mode": "concat"})
        kids = [write_child(tmp_path, f"b{i}", pl.DataFrame({"id": [i]})) for i in range(2)]
        Path(kids[0][0]).write_bytes(Path(kids[0][0]).read_bytes() + b"\0")
        out, rec = tmp_path / "m" / "out.parquet", tmp_path / "m" / "out.json"
        with pytest.raises(ChecksumMismatch, match="b0.parquet"):
            merge_node(config, store, "merge-L1-part-00000", 1, 0, kids, str(out), str(rec), False)
        assert not out.exists() and not rec.exists()
        assert store.get("merge-L1-part-00000").status is not TaskStatus.SUCCEEDED

    def test_reduce_tree_equals_single_pass(self, tmp_path: Path, store, merge_config) -> None:
        config = merge_config()  # grouped_stats with combine and finalize, fan-in 3
        records = make_records(3000, seed=3).select("id", "group", "value")
        bounds = [0, 100, 700, 701, 1500, 1501, 2300, 3000]  # 7 uneven batches
        batches = [
            write_child(
                tmp_path / "results",
                f"batch-{i:05d}",
                grouped_stats.partial(records.slice(lo, hi - lo), CTX),
            )
            for i, (lo, hi) in enumerate(zip(bounds, bounds[1:], strict=False))
        ]
        level_1 = []
        for index, lo in enumerate(range(0, 7, 3)):
            out = tmp_path / "merge" / "L1" / f"part-{index:05d}.parquet"
            rec = out.with_suffix(".json")
            merge_node(
                config, store, f"merge-L1-part-{index:05d}", 1, index, batches[lo : lo + 3],
                str(out), str(rec), False,
            )  # fmt: skip
            level_1.append((str(out), str(rec)))
        final = tmp_path / "final" / "result.parquet"
        record = merge_node(
            config, store, "final", 2, 0, level_1, str(final), str(final.with_suffix(".json")), True
        )
        expected = grouped_stats.finalize(
            grouped_stats.combine(grouped_stats.partial(records, CTX), CTX), CTX
        )
        result = pl.read_parquet(final)
        assert_frame_equal(result, expected, check_exact=True)
        assert "mean" in result.columns and "std" in result.columns
        assert record["rows"] == expected.height
        assert result.get_column("count").sum() == 3000

    def test_reduce_inner_node_does_not_finalize(self, tmp_path: Path, store, merge_config) -> None:
        config = merge_config()
        frame = make_records(50, seed=1).select("id", "group", "value")
        kids = [write_child(tmp_path, "b0", grouped_stats.partial(frame, CTX))]
        out = tmp_path / "inner.parquet"
        merge_node(config, store, "merge-L1-part-00000", 1, 0, kids, str(out),
                   str(tmp_path / "inner.json"), False)  # fmt: skip
        assert "mean" not in pl.read_parquet(out).columns

    def test_reduce_skips_empty_children(self, tmp_path: Path, store, merge_config) -> None:
        config = merge_config()
        frame = make_records(50, seed=1).select("id", "group", "value")
        kids = [
            write_child(tmp_path, "b0", pl.DataFrame()),
            write_child(tmp_path, "b1", grouped_stats.partial(frame, CTX)),
        ]
        out = tmp_path / "inner.parquet"
        merge_node(config, store, "merge-L1-part-00000", 1, 0, kids, str(out),
                   str(tmp_path / "inner.json"), False)  # fmt: skip
        assert pl.read_parquet(out).get_column("count").sum() == 50

    def test_reduce_children_of_other_types_are_refused(
        self, tmp_path: Path, store, merge_config
    ) -> None:
        # Bug 1: diagonal_relaxed made a String (or Float64) column of the children's types.
        config = merge_config()
        frame = make_records(50, seed=1).select("id", "group", "value")
        partial = grouped_stats.partial(frame, CTX)
        kids = [
            write_child(tmp_path, "b0", partial),
            write_child(tmp_path, "b1", partial.with_columns(pl.col("sum").cast(pl.Float64))),
        ]
        out = tmp_path / "inner.parquet"
        with pytest.raises(
            SchemaMismatch,
            match=r"^cannot reduce .*b1\.parquet: column types differ: 'sum' is Float64 there "
            r"but Int64 in .*b0\.parquet; merges never cast",
        ):
            merge_node(config, store, "merge-L1-part-00000", 1, 0, kids, str(out),
                       str(tmp_path / "inner.json"), False)  # fmt: skip
        assert not out.exists()
        assert store.get("merge-L1-part-00000").status is TaskStatus.DEAD

    def test_a_combine_changing_the_schema_is_refused(
        self, tmp_path: Path, store, merge_config
    ) -> None:
        config = merge_config(job={"combine": f"{__name__}:_widening_combine"})
        frame = make_records(50, seed=1).select("id", "group", "value")
        kids = [write_child(tmp_path, "b0", grouped_stats.partial(frame, CTX))]
        out = tmp_path / "inner.parquet"
        with pytest.raises(
            SchemaMismatch,
            match=r"^merge merge-L1-part-00000: job.combine returned another schema than its "
            r"input \(column 'count' is Float64, its input has Int64\)",
        ):
            merge_node(config, store, "merge-L1-part-00000", 1, 0, kids, str(out),
                       str(tmp_path / "inner.json"), False)  # fmt: skip


def _widening_combine(partials: pl.DataFrame, ctx: JobContext) -> pl.DataFrame:
    """grouped_stats' combine, but its counts come out Float64."""
    return grouped_stats.combine(partials, ctx).with_columns(pl.col("count").cast(pl.Float64))
