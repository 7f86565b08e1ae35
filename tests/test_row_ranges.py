"""Row-range batches: the cut over files, the plan's schema, reading a batch back, refusals."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import polars as pl
import pytest
from conftest import base_config
from polars.testing import assert_frame_equal

from orchestrator_ext import row_ranges
from orchestrator_ext.config import load_config
from orchestrator_ext.errors import ConfigError, InputError
from orchestrator_ext.partition import partition_items
from orchestrator_ext.process import read_batch
from orchestrator_ext.state.sqlite import SqliteStateStore
from orchestrator_ext.storage import read_json


class TestCut:
    def test_batches_span_files_and_skip_empty_ones(self) -> None:
        assert row_ranges.cut([5, 0, 3], [4, 4]) == [
            [{"file": 0, "offset": 0, "rows": 4}],
            [{"file": 0, "offset": 4, "rows": 1}, {"file": 2, "offset": 0, "rows": 3}],
        ]

    def test_sizes_that_do_not_add_up_are_a_changed_input(self) -> None:
        with pytest.raises(InputError, match="holds 8 rows, 9 were planned"):
            row_ranges.cut([5, 3], [4, 5])

    def test_entries_are_known_by_their_ranges_and_files(self) -> None:
        listing = [{"path": "a", "bytes": 10, "mtime_ns": 1}]
        first = row_ranges.entries(listing, [6], [3, 3])
        touched = row_ranges.entries([{**listing[0], "mtime_ns": 2}], [6], [3, 3])
        assert [e["items"] for e in first] == [3, 3]
        assert first[0]["sha256"] != first[1]["sha256"]
        assert first[0]["sha256"] != touched[0]["sha256"]


def test_the_plan_keeps_every_dtype_of_the_schema() -> None:
    schema = pl.Schema({
        "id": pl.String, "at": pl.Datetime("us", "Europe/Berlin"), "d": pl.Decimal(12, 3),
        "tags": pl.List(pl.Categorical), "s": pl.Struct({"x": pl.Int8}), "e": pl.Enum(["a"]),
    })  # fmt: skip
    back = row_ranges.schema_of_text(row_ranges.schema_text(schema))
    # Compared dtype by dtype: Schema equality refuses List(Categorical) even against itself.
    assert list(back.items()) == list(schema.items())


@pytest.fixture
def ranged_run(tmp_path: Path):
    """A run over two Parquet files partitioned into row ranges of 7 items; its config, the
    plan and the files' rows in input order."""
    data = tmp_path / "data"
    data.mkdir()
    first = pl.DataFrame({"id": range(10), "v": range(10)})
    # The second file stores v as Int32: the combined schema is Int64, as concat gives.
    second = pl.DataFrame(
        {"id": range(10, 15), "v": pl.Series(range(5), dtype=pl.Int32),
         "at": [dt.date(2026, 1, d) for d in range(1, 6)]}
    )  # fmt: skip
    first.write_parquet(data / "a.parquet", row_group_size=3)
    second.write_parquet(data / "b.parquet", row_group_size=2)
    raw = base_config(
        tmp_path,
        input={"uri": str(data / "*.parquet"), "format": "parquet", "id_column": "id"},
        batching={"max_items": 7, "row_ranges": True},
    )
    config = load_config(raw)
    store = SqliteStateStore(tmp_path / "state.sqlite", "t")
    batches = tmp_path / "out" / "t" / "batches"
    plan = partition_items(config, store, batches)
    rows = pl.concat([first, second], how="diagonal_relaxed")
    return config, batches / "plan.json", plan, rows


class TestPartitionAndRead:
    def test_no_batch_is_copied(self, ranged_run) -> None:
        _, plan_file, plan, _ = ranged_run
        assert sorted(p.name for p in plan_file.parent.iterdir()) == ["plan.json"]
        assert [b["items"] for b in plan["batches"]] == [7, 7, 1]
        assert plan["batches"][1]["ranges"] == [
            {"file": 0, "offset": 7, "rows": 3}, {"file": 1, "offset": 0, "rows": 4}
        ]  # fmt: skip

    def test_each_batch_reads_back_its_rows_as_the_partition_read_them(self, ranged_run) -> None:
        config, plan_file, plan, rows = ranged_run
        read = [read_batch(config, str(plan_file), f"{b:05d}", None) for b in range(3)]
        assert_frame_equal(pl.concat([items for items, _ in read]), rows)
        assert [key for _, key in read] == [b["sha256"] for b in plan["batches"]]

    def test_a_file_touched_since_the_partition_is_refused_by_name(self, ranged_run) -> None:
        config, plan_file, plan, _ = ranged_run
        path = plan["input"]["files"][1]["path"]
        stat = os.stat(path)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
        read_batch(config, str(plan_file), "00000", None)  # file 0 only: unaffected
        with pytest.raises(InputError, match=f"input file {path} changed since it was partitioned"):
            read_batch(config, str(plan_file), "00001", None)

    def test_a_file_gone_is_refused_by_name(self, ranged_run) -> None:
        config, plan_file, plan, _ = ranged_run
        path = plan["input"]["files"][0]["path"]
        os.remove(path)
        with pytest.raises(InputError, match=f"input file {path} of the plan cannot be read"):
            read_batch(config, str(plan_file), "00000", None)

    def test_fewer_rows_than_planned_are_refused(self, ranged_run, tmp_path: Path) -> None:
        config, plan_file, _, _ = ranged_run
        plan = read_json(plan_file)
        plan["batches"][2]["ranges"][0]["offset"] = 5  # past the file's end
        (tmp_path / "plan.json").write_text(json.dumps(plan))
        with pytest.raises(InputError, match="read 0 rows .* the plan has 1"):
            read_batch(config, str(tmp_path / "plan.json"), "00002", None)


class TestConfig:
    @pytest.mark.parametrize(
        "source",
        [
            {"uri": "items.csv", "format": "csv"},
            {"uri": "s3://b/items.parquet", "format": "parquet"},
        ],
    )
    def test_only_local_parquet(self, tmp_path: Path, source: dict) -> None:
        raw = base_config(tmp_path, input=source, batching={"row_ranges": True})
        raw["state"] = {"backend": "sqlite"}
        with pytest.raises(ConfigError, match="batching.row_ranges needs a local Parquet input"):
            load_config(raw)

    def test_not_with_a_weight_column(self, tmp_path: Path) -> None:
        raw = base_config(tmp_path, batching={"row_ranges": True, "weight_column": "w"})
        with pytest.raises(ConfigError, match="row_ranges and batching.weight_column"):
            load_config(raw)

    def test_unset_keeps_the_config_checksum(self, tmp_path: Path) -> None:
        plain = load_config(base_config(tmp_path))
        off = load_config(base_config(tmp_path, batching={"row_ranges": False}))
        assert not plain.batching.row_ranges and not off.batching.row_ranges
        assert "row_ranges" not in plain.raw["batching"]
