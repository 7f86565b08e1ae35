"""Unit tests for orchestrator_ext.output_schema: dtype names, schema differences,
concatenation without casts, and the input's dtypes given back exactly."""

from __future__ import annotations

import polars as pl
import pytest

from orchestrator_ext.errors import SchemaMismatch
from orchestrator_ext.output_schema import (
    concat_item_frames,
    concat_strict,
    dtype_name,
    exactly_as,
    listed,
    same_kind,
    schema_differences,
    schema_json,
    schema_of,
    schema_pairs,
    with_input_dtypes,
)


class TestNames:
    @pytest.mark.parametrize(
        ("dtype", "name"),
        [
            (pl.Int64, "Int64"),
            (pl.List(pl.String), "List(String)"),
            (pl.Datetime("us"), "Datetime"),
            (pl.Datetime("ns", "UTC"), "Datetime(ns, UTC)"),
            (pl.Duration("ms"), "Duration(ms)"),
            (pl.Decimal(38, 4), "Decimal(38, 4)"),
            (pl.Struct({"a": pl.Int8}), "Struct(a: Int8)"),
        ],
    )
    def test_dtype_name(self, dtype: pl.DataType, name: str) -> None:
        assert dtype_name(dtype) == name

    def test_schema_forms(self) -> None:
        schema = schema_of(pl.DataFrame({"b": [1], "a": ["x"]}))
        assert schema == {"b": "Int64", "a": "String"} and list(schema) == ["b", "a"]
        assert schema_pairs(schema) == [["a", "String"], ["b", "Int64"]]
        assert schema_json(schema) == '[["a","String"],["b","Int64"]]'


class TestDifferences:
    def test_one_phrase_per_column_sorted(self) -> None:
        diffs = schema_differences(
            {"a": "Int64", "c": "Null", "d": "String"}, {"a": "Int64", "b": "Int8", "c": "Int64"}
        )
        assert diffs == [
            "column 'b' (Int8) is missing",
            "column 'c' is Null, the schema has Int64 (a column of only nulls is Null: cast it)",
            "column 'd' (String) is not in the schema",
        ]

    def test_listed_says_how_many_more(self) -> None:
        assert listed(["a", "b"]) == "a; b"
        assert listed(["a", "b", "c", "d", "e"]) == "a; b; c; and 2 more"


class TestConcat:
    def test_strict_takes_the_first_order_and_skips_empty_frames(self) -> None:
        out = concat_strict(
            [
                pl.DataFrame({"a": [1], "b": ["x"]}),
                pl.DataFrame(),
                pl.DataFrame({"b": ["y"], "a": [2]}),
            ],
            "w",
        )
        assert out.to_dicts() == [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]
        assert concat_strict([], "w").shape == (0, 0)

    def test_strict_never_casts(self) -> None:
        with pytest.raises(
            SchemaMismatch, match=r"^w differ: in part 1, column 'a' is String, part 0 has Int64"
        ):
            concat_strict([pl.DataFrame({"a": [1]}), pl.DataFrame({"a": ["1"]})], "w")

    def test_item_frames_fill_missing_and_null_columns(self) -> None:
        out = concat_item_frames(
            [
                pl.DataFrame({"a": [1], "n": [None]}),
                pl.DataFrame({"a": [2], "n": ["x"], "m": [1.5]}),
            ],
            "w",
        )
        assert out.schema == {"a": pl.Int64, "n": pl.String, "m": pl.Float64}
        assert out.to_dicts() == [{"a": 1, "n": None, "m": None}, {"a": 2, "n": "x", "m": 1.5}]

    def test_item_frames_of_two_types_are_refused(self) -> None:
        with pytest.raises(SchemaMismatch, match=r"^w column 'a' is Int64 in one part"):
            concat_item_frames([pl.DataFrame({"a": [1]}), pl.DataFrame({"a": ["1"]})], "w")


class TestInputDtypes:
    def test_input_columns_get_the_input_dtype_back(self) -> None:
        frame = pl.DataFrame({"id": [1, 2], "n": [3, 4], "new": [5, 6]})
        out = with_input_dtypes(frame, {"id": pl.UInt64, "n": pl.Int32}, "id", "w")
        assert out.schema == {"id": pl.UInt64, "n": pl.Int32, "new": pl.Int64}

    def test_another_kind_is_the_jobs_own_except_for_ids(self) -> None:
        frame = pl.DataFrame({"id": [1], "n": ["text"]})
        assert with_input_dtypes(frame, {"n": pl.Int32}, "id", "w").schema["n"] == pl.String
        with pytest.raises(TypeError, match=r"^w column 'id' holds Int64 values \(e\.g\. 1\)"):
            with_input_dtypes(frame, {"id": pl.String}, "id", "w")

    def test_exactly_as_refuses_a_value_that_would_change(self) -> None:
        assert exactly_as(pl.Series("n", [1, 2]), pl.Int8, "w").dtype == pl.Int8
        with pytest.raises(ValueError, match=r"^w column 'n' has 1 values that do not fit .* Int8"):
            exactly_as(pl.Series("n", [1, 300]), pl.Int8, "w")

    def test_same_kind(self) -> None:
        assert same_kind(pl.Int64, pl.UInt8) and same_kind(pl.Null, pl.String)
        assert same_kind(pl.String, pl.Categorical) and not same_kind(pl.String, pl.Int64)
