"""Unit tests for orchestrator_ext.dead_letter: the dead-letter table, the tolerance and
publishing."""

from __future__ import annotations

import uuid
from typing import Any

import polars as pl
import pytest

from orchestrator_ext import s3
from orchestrator_ext.dead_letter import (
    check_tolerance,
    count_by_category,
    dead_letter,
    dead_letter_frame,
    publish_dead_letters,
)
from orchestrator_ext.errors import BatchFailed, PermanentError, StateConflict


class TestDeadLetter:
    def test_names_the_error_and_its_category(self) -> None:
        letter = dead_letter(7, PermanentError("bad row"), 2)
        assert letter == {
            "id": 7,
            "category": "permanent",
            "error_type": "PermanentError",
            "message": "PermanentError: bad row",
            "attempt": 2,
        }

    def test_the_message_is_cut_at_1000_characters(self) -> None:
        assert len(dead_letter(1, ValueError("x" * 5000), 1)["message"]) == 1000

    def test_count_by_category_is_sorted(self) -> None:
        dead = [{"category": c} for c in ("transient", "permanent", "transient")]
        assert list(count_by_category(dead).items()) == [("permanent", 1), ("transient", 2)]


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
        with publish_dead_letters(dead_letter_frame([], pl.Int64), uri, retried=False) as facts:
            assert facts is None
        assert s3.make_s3_client().list_objects_v2(Bucket=bucket).get("KeyCount") == 0

    def test_a_retry_without_dead_letters_removes_an_earlier_attempts(self, bucket) -> None:
        """The folder agrees with the record in S3 too: `errors` and `redrive` read it."""
        uri = f"s3://{bucket}/run/dead_letter/batch-00003.parquet"
        with publish_dead_letters(self._dead(), uri, retried=False):
            pass  # attempt 1 dead-letters item 7, then fails (say, its commit is lost)
        client = s3.make_s3_client()
        assert client.list_objects_v2(Bucket=bucket).get("KeyCount") == 1
        with publish_dead_letters(dead_letter_frame([], pl.Int64), uri, retried=True) as facts:
            assert facts is None  # attempt 2: item 7 succeeds this time
        assert client.list_objects_v2(Bucket=bucket).get("KeyCount") == 0


class TestDeadLetterFrame:
    def test_ids_keep_the_input_dtype(self) -> None:
        dead = [{"id": 2**63, "category": "permanent", "error_type": "E", "message": "m"}]
        frame = dead_letter_frame([{**dead[0], "attempt": 1}], pl.UInt64)
        assert frame.schema["id"] == pl.UInt64 and frame.item(0, "id") == 2**63

    def test_id_of_another_kind_is_not_coerced(self) -> None:
        dead = [{"id": 5, "category": "permanent", "error_type": "E", "message": "m", "attempt": 1}]
        with pytest.raises(TypeError, match=r"dead-letter column 'id' holds Int64 values"):
            dead_letter_frame(dead, pl.String)

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
