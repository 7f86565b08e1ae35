"""Unit tests for orchestrator_ext.items: reading the input whole (``read_items``) and file by
file (``open_items``), and checking its ids."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from orchestrator_ext import items as items_module
from orchestrator_ext import s3
from orchestrator_ext.config import InputSpec
from orchestrator_ext.errors import InputError
from orchestrator_ext.items import (
    ItemSource,
    check_ids,
    concat_items,
    input_files,
    list_input_files,
    open_items,
    read_items,
    runs,
)


def _items(n: int, start: int = 0) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "id": np.arange(start, start + n, dtype=np.int64),
            "group": [f"g{i % 7}" for i in range(n)],
            "value": np.arange(n, dtype=np.int64) * 3,
        }
    )


def _read_columns(spec: InputSpec, columns: dict[str, pl.Expr] | None = None) -> pl.DataFrame:
    with open_items(spec) as source:
        return source.read_columns(columns or {})


def _frames(spec: InputSpec) -> list[pl.DataFrame]:
    with open_items(spec) as source:
        return list(source.frames())


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

    def test_sorted_duplicates_name_examples(self) -> None:
        frame = pl.DataFrame({"id": [1, 2, 2, 3, 4, 4, 4]})
        with pytest.raises(InputError, match=r"2 duplicate ids \(e\.g\. 2, 4\)"):
            check_ids(frame, "id", "src")

    def test_duplicates_name_examples(self) -> None:
        frame = pl.DataFrame({"id": ["a", "b", "x", "c", "x", "b", "b"]})
        with pytest.raises(InputError, match=r"2 duplicate ids \(e\.g\. b, x\)"):
            check_ids(frame, "id", "src")


@pytest.fixture
def parts(tmp_path: Path) -> Callable[..., InputSpec]:
    """Factory: three Parquet files of different but compatible columns, small row groups."""

    def build(row_group_size: int = 40, **spec: Any) -> InputSpec:
        _items(100).write_parquet(tmp_path / "p0.parquet", row_group_size=row_group_size)
        _items(70, 100).drop("group").with_columns(extra=pl.lit(0.5)).write_parquet(
            tmp_path / "p1.parquet", row_group_size=row_group_size
        )
        _items(50, 170).with_columns(pl.col("value").cast(pl.Int16)).write_parquet(
            tmp_path / "p2.parquet", row_group_size=row_group_size
        )
        return InputSpec(uri=str(tmp_path / "p*.parquet"), format="parquet", **spec)

    return build


class TestOpenItems:
    def test_schema_is_the_whole_inputs(self, parts) -> None:
        spec = parts()
        with open_items(spec) as source:
            assert source.schema == read_items(spec)[0].schema
            assert [Path(f.name).name for f in source.files] == [f"p{i}.parquet" for i in range(3)]

    def test_an_unreadable_file_is_named(self, tmp_path: Path, parts) -> None:
        parts()
        (tmp_path / "p1.parquet").write_text("not parquet")
        with pytest.raises(InputError, match=r"cannot read .*p1\.parquet as parquet"):
            _read_columns(InputSpec(uri=str(tmp_path / "p*.parquet"), format="parquet"))

    def test_incompatible_columns(self, tmp_path: Path) -> None:
        _items(3).write_parquet(tmp_path / "a.parquet")
        _items(3, 3).with_columns(value=pl.int_ranges(0, pl.col("value"))).write_parquet(
            tmp_path / "b.parquet"
        )
        spec = InputSpec(uri=str(tmp_path / "*.parquet"), format="parquet")
        with pytest.raises(InputError, match="input files do not share compatible columns"):
            _read_columns(spec)

    def test_an_empty_file_without_the_id_column_adds_nothing(self, tmp_path: Path) -> None:
        _items(3).write_parquet(tmp_path / "a.parquet")
        pl.DataFrame({"key": []}, schema={"key": pl.Int64}).write_parquet(tmp_path / "b.parquet")
        spec = InputSpec(uri=str(tmp_path / "*.parquet"), format="parquet")
        assert _read_columns(spec).height == 3
        assert pl.concat(_frames(spec)).equals(read_items(spec)[0])


class TestReadColumns:
    def test_reads_file_by_file(self, parts, monkeypatch: pytest.MonkeyPatch) -> None:
        read: list[tuple[int, int]] = []
        select = ItemSource.select

        def spy(self: ItemSource, index: int, *args: Any, **kwargs: Any) -> pl.DataFrame:
            got = select(self, index, *args, **kwargs)
            read.append((index, got.height))
            return got

        monkeypatch.setattr(ItemSource, "select", spy)
        rows = _read_columns(parts(), {"v": pl.col("value")})
        assert read == [(0, 100), (1, 70), (2, 50)]
        assert rows.columns == ["v"]
        assert rows.get_column("v").equals(
            read_items(parts())[0].get_column("value"), check_names=False
        )

    def test_reads_only_the_columns_it_is_asked_for(self, tmp_path: Path) -> None:
        # A value the CSV reader cannot parse, in a column planning does not need: only
        # reading the rows finds it.
        lines = "".join(f"{i},{i}\n" for i in range(300))
        (tmp_path / "items.csv").write_text(f"id,v\n{lines}300,abc\n")
        spec = InputSpec(uri=str(tmp_path / "items.csv"), format="csv", id_type="integer")
        assert _read_columns(spec).height == 301
        with pytest.raises(InputError, match=r"cannot read .*items\.csv as csv: .*abc"):
            _frames(spec)

    def test_string_duplicates_across_files(self, tmp_path: Path) -> None:
        for name, start in (("a", 0), ("b", 15)):
            _items(20, start).with_columns(pl.format("item-{}", "id").alias("id")).write_parquet(
                tmp_path / f"{name}.parquet"
            )
        with pytest.raises(
            InputError,
            match=r"has 5 duplicate ids \(e\.g\. item-15, item-16, item-17, item-18, item-19\)",
        ):
            _read_columns(InputSpec(uri=str(tmp_path / "*.parquet"), format="parquet"))

    def test_null_string_ids(self, tmp_path: Path) -> None:
        pl.DataFrame({"id": ["a", None, "c", None]}).write_parquet(tmp_path / "a.parquet")
        with pytest.raises(InputError, match="has 2 null ids"):
            _read_columns(InputSpec(uri=str(tmp_path / "a.parquet"), format="parquet"))

    def test_a_repeated_hash_is_settled_by_the_ids(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # A hash that collides all the time (the length of the id) stands for a real
        # collision: unique ids pass, and duplicates are still reported exactly.
        def by_length(id_column: str, dtype: pl.DataType) -> pl.Expr:
            return pl.col(id_column).str.len_bytes().cast(pl.UInt64)

        monkeypatch.setattr(items_module, "_id_key", by_length)
        path = tmp_path / "a.parquet"
        pl.DataFrame({"id": ["aa", "bb", "cc", "d"]}).write_parquet(path)
        assert _read_columns(InputSpec(uri=str(path), format="parquet")).height == 4
        pl.DataFrame({"id": ["aa", "bb", "cc", "bb", "aa"]}).write_parquet(path)
        with pytest.raises(InputError, match=r"2 duplicate ids \(e\.g\. aa, bb\)"):
            _read_columns(InputSpec(uri=str(path), format="parquet"))

    def test_ids_integer_cannot_parse_are_named_with_their_file(self, tmp_path: Path) -> None:
        (tmp_path / "a.csv").write_text("id,v\n1,2\n3,4\n")
        (tmp_path / "b.csv").write_text("id,v\n7,1\nx9,2\n1.5,3\n9223372036854775808,4\n")
        with pytest.raises(
            InputError,
            match=r"id column 'id' in .*b\.csv has 3 ids that are not integers .*"
            r"\(e\.g\. 'x9', '1\.5', '9223372036854775808'\)",
        ):
            _read_columns(InputSpec(uri=str(tmp_path / "*.csv"), format="csv", id_type="integer"))

    @pytest.mark.parametrize(
        "ids",
        [
            pl.Series("id", [0.5, 1.5, float("nan")]),
            pl.Series("id", [1, 2**63, 2**64 - 1], dtype=pl.UInt64),
            pl.Series("id", [True, False]),
            pl.Series("id", [3, 1, 3, 2, 1], dtype=pl.Int32),
            pl.Series("id", [1, None, 3]),
        ],
        ids=["float", "uint64", "boolean", "duplicates", "nulls"],
    )
    def test_refuses_what_read_items_refuses(self, tmp_path: Path, ids: pl.Series) -> None:
        path = tmp_path / "a.parquet"
        ids.to_frame().write_parquet(path)
        spec = InputSpec(uri=str(path), format="parquet")
        with pytest.raises(InputError) as whole:
            read_items(spec)
        with pytest.raises(InputError) as streamed:
            _read_columns(spec)
        assert str(streamed.value) == str(whole.value)


class TestFrames:
    @pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
    def test_the_whole_input(self, tmp_path: Path, fmt: str) -> None:
        for name, start, n in (("a", 0, 120), ("b", 120, 0), ("c", 120, 90)):
            frame = _items(n, start).with_columns(pl.col("id").cast(pl.String))
            if name == "c":
                frame = frame.drop("group").with_columns(extra=pl.lit(True))
            path = tmp_path / f"{name}.{fmt}"
            if fmt == "parquet":
                frame.write_parquet(path, row_group_size=50)
            elif n:  # an empty CSV or JSONL file is not readable
                frame.write_csv(path) if fmt == "csv" else frame.write_ndjson(path)
        spec = InputSpec(uri=str(tmp_path / f"*.{fmt}"), format=fmt, id_type="integer")
        assert pl.concat(_frames(spec)).equals(read_items(spec)[0])

    def test_parquet_frames_are_its_row_groups(self, parts) -> None:
        frames = _frames(parts(row_group_size=40))
        assert [f.height for f in frames] == [40, 40, 20, 40, 30, 40, 10]
        assert all(f.n_chunks() == 1 for f in frames)

    def test_text_frames_are_the_readers_chunks(self, tmp_path: Path) -> None:
        path = tmp_path / "items.jsonl"
        _items(20_000).write_ndjson(path)
        whole = pl.read_ndjson(path).get_column("id").chunk_lengths()
        assert len(whole) > 1
        spec = InputSpec(uri=str(path), format="jsonl")
        assert [f.height for f in _frames(spec)] == whole
        with open_items(spec) as source:
            source.read_columns({})  # notes the chunks as it reads the ids
            assert [f.height for f in source.frames()] == whole

    def test_huge_row_groups_are_read_in_chunks(
        self, parts, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(items_module, "_MAX_ROW_GROUP_BYTES", 100)
        monkeypatch.setattr(items_module, "_CHUNK_ROWS", 32)
        frames = _frames(parts(row_group_size=1000))
        assert [f.height for f in frames] == [32, 32, 32, 4, 32, 32, 6, 32, 18]


class TestRuns:
    def _frames(self, *heights: int) -> list[pl.DataFrame]:
        starts = np.cumsum([0, *heights])
        return [_items(h, int(s)) for h, s in zip(heights, starts, strict=False)]

    def test_cuts_across_frames(self) -> None:
        frames = self._frames(5, 0, 7, 3)
        got = list(runs(frames, [4, 4, 7]))
        assert [[p.height for p in run] for run in got] == [[4], [1, 3], [4, 3]]
        assert pl.concat([pl.concat(run) for run in got]).equals(pl.concat(frames))

    @pytest.mark.parametrize(("sizes", "what"), [([4, 4], "more"), ([4, 4, 9], "fewer")])
    def test_other_rows_than_planned(self, sizes: list[int], what: str) -> None:
        with pytest.raises(InputError, match=f"changed while it was being read \\({what} items"):
            list(runs(self._frames(5, 7), sizes))


@pytest.fixture
def s3_source(aws_env: str) -> tuple[Any, str]:
    """An S3 client and a bucket holding two Parquet objects under ``in/``."""
    import uuid

    client = s3.make_s3_client()
    bucket = f"test-{uuid.uuid4().hex[:20]}"
    client.create_bucket(Bucket=bucket)
    for i in range(2):
        out = io.BytesIO()
        _items(10, 10 * i).write_parquet(out)
        s3.put_bytes(client, f"s3://{bucket}/in/part-{i}.parquet", out.getvalue())
    return client, bucket


class TestS3Objects:
    def test_read_from_copies_that_are_removed(self, s3_source, tmp_path: Path) -> None:
        client, bucket = s3_source
        spec = InputSpec(uri=f"s3://{bucket}/in/*.parquet", format="parquet")
        with open_items(spec, client, scratch_dir=tmp_path) as source:
            copies = [Path(f.path) for f in source.files]
            assert all(c.parent.parent == tmp_path and c.is_file() for c in copies)
            assert [f.name for f in source.files] == [
                f"s3://{bucket}/in/part-{i}.parquet" for i in range(2)
            ]
            assert pl.concat(list(source.frames())).equals(pl.concat([_items(10), _items(10, 10)]))
        assert list(tmp_path.iterdir()) == []

    def test_an_unreadable_object_is_named_by_its_uri(self, s3_source, tmp_path: Path) -> None:
        client, bucket = s3_source
        s3.put_bytes(client, f"s3://{bucket}/in/part-2.parquet", b"not parquet")
        spec = InputSpec(uri=f"s3://{bucket}/in/*.parquet", format="parquet")
        with (
            pytest.raises(InputError, match=rf"cannot read s3://{bucket}/in/part-2\.parquet"),
            open_items(spec, client, scratch_dir=tmp_path),
        ):
            pass
        assert list(tmp_path.iterdir()) == []

    def test_an_object_gone_since_listed(
        self, s3_source, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        client, bucket = s3_source
        match = items_module.s3_input.match_objects

        def then_delete(*args: Any, **kwargs: Any) -> Any:
            objects = match(*args, **kwargs)
            client.delete_object(Bucket=bucket, Key="in/part-1.parquet")
            return objects

        monkeypatch.setattr(items_module.s3_input, "match_objects", then_delete)
        spec = InputSpec(uri=f"s3://{bucket}/in/*.parquet", format="parquet")
        with (
            pytest.raises(InputError, match=r"S3 object vanished .*in/part-1\.parquet"),
            input_files(spec, client, tmp_path),
        ):
            pass
