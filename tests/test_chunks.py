"""Unit tests for orchestrator_ext.chunks: persisted sub-batch chunks and their resume."""

from __future__ import annotations

import copy
from pathlib import Path

import polars as pl
import pytest

from orchestrator_ext.chunks import (
    DEFAULT_BATCH_SLICE,
    ChunkStore,
    batch_slice_size,
    chunks_key,
    enabled,
)
from orchestrator_ext.config import ChunksSpec, load_config
from orchestrator_ext.dead_letter import dead_letter_frame
from orchestrator_ext.layout import RunLayout

MINIMAL = {
    "run_id": "demo",
    "input": {"uri": "items.csv", "format": "csv"},
    "job": {"function": "pkg.mod:fn"},
}


def _rows(start: int, end: int) -> pl.DataFrame:
    return pl.DataFrame({"id": list(range(start, end)), "v": [i * 2 for i in range(start, end)]})


def _dead(*ids: int) -> pl.DataFrame:
    letters = [{"id": i, "category": "permanent", "error_type": "E", "message": "m",
                "attempt": 1} for i in ids]  # fmt: skip
    return dead_letter_frame(letters, pl.Int64)


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ChunkStore:
    """The chunks of batch 3 of a run on disk, and of a run in S3 (the local S3 server)."""
    if request.param == "local":
        return ChunkStore(RunLayout(str(tmp_path / "r")).chunks("00003"), "key-1", "00003")
    import uuid

    from orchestrator_ext.s3 import make_s3_client

    request.getfixturevalue("aws_env")
    client = make_s3_client()
    bucket = f"chunks-{uuid.uuid4().hex[:10]}"
    client.create_bucket(Bucket=bucket)
    return ChunkStore(RunLayout(f"s3://{bucket}/p/r").chunks("00003"), "key-1", "00003")


def _again(store: ChunkStore, key: str = "key-1") -> ChunkStore:
    """A later attempt's view of the same folder (a new process, maybe on another node)."""
    return ChunkStore(store.folder, key, "00003")


def _gone(store: ChunkStore) -> bool:
    return store.files.list(store.folder) == []


def _saved(store: ChunkStore) -> ChunkStore:
    store.save(0, 4, _rows(0, 4), _dead(), attempt=1)
    store.save(4, 8, _rows(4, 7), _dead(7), attempt=1)
    store.save(8, 10, _rows(8, 10), _dead(), attempt=2)
    return store


class TestSettings:
    def test_enabled_by_either_setting(self) -> None:
        assert not enabled(ChunksSpec())
        assert enabled(ChunksSpec(every_items=5)) and enabled(ChunksSpec(every_seconds=0))

    def test_batch_slices(self) -> None:
        assert batch_slice_size(ChunksSpec(every_items=7)) == 7
        assert batch_slice_size(ChunksSpec(every_seconds=10)) == DEFAULT_BATCH_SLICE

    def test_folder_is_in_the_run_folder(self) -> None:
        assert RunLayout("out/r").chunks("00003") == "out/r/chunks/batch-00003"
        assert RunLayout("s3://b/p/r").chunks(3) == "s3://b/p/r/chunks/batch-00003"

    def test_key_depends_on_the_input_and_the_chunking(self) -> None:
        config = load_config(copy.deepcopy(MINIMAL))
        other = load_config({**copy.deepcopy(MINIMAL), "chunks": {"every_items": 5}})
        assert chunks_key(config, "a") == chunks_key(load_config(copy.deepcopy(MINIMAL)), "a")
        assert chunks_key(config, "a") != chunks_key(config, "b")
        assert chunks_key(config, "a") != chunks_key(other, "a")


class TestSaveAndResume:
    def test_a_new_store_resumes_every_intact_chunk(self, store: ChunkStore) -> None:
        _saved(store)
        again = _again(store)
        assert [(c.start, c.end) for c in again.resume()] == [(0, 4), (4, 8), (8, 10)]
        assert again.items_done == 10
        assert again.items_by_attempt() == {"1": 8, "2": 2}
        assert pl.concat(again.results()).equals(
            pl.concat([_rows(0, 4), _rows(4, 7), _rows(8, 10)])
        )
        assert [d["id"] for d in again.dead_letters()] == [7]

    def test_index_names_the_batch_and_every_chunk(self, store: ChunkStore) -> None:
        _saved(store)
        index = store.files.read_json(store.index_file)
        assert (index["batch_id"], index["key"], index["version"]) == ("00003", "key-1", 1)
        assert [(c["index"], c["rows"], c["dead"]) for c in index["chunks"]] == [
            (0, 4, 0), (1, 3, 1), (2, 2, 0),
        ]  # fmt: skip

    def test_a_gap_is_refused(self, store: ChunkStore) -> None:
        store.save(0, 4, _rows(0, 4), _dead(), attempt=1)
        with pytest.raises(ValueError, match="chunk starts at item 5, expected 4"):
            store.save(5, 8, _rows(5, 8), _dead(), attempt=1)

    def test_a_tampered_chunk_and_the_ones_after_it_are_dropped(self, store: ChunkStore) -> None:
        _saved(store)
        store.files.write_bytes(store.result_path(1), store.files.read_bytes(store.result_path(2)))
        again = _again(store)
        assert [c.index for c in again.resume()] == [0]
        assert not store.files.exists(store.result_path(1))
        assert not store.files.exists(store.result_path(2))
        assert len(store.files.read_json(store.index_file)["chunks"]) == 1

    def test_a_missing_file_is_redone(self, store: ChunkStore) -> None:
        _saved(store)
        store.files.remove(store.dead_path(2))
        assert [c.index for c in _again(store).resume()] == [0, 1]

    def test_another_key_starts_over(self, store: ChunkStore) -> None:
        _saved(store)
        assert _again(store, "key-2").resume() == []
        assert _gone(store)

    def test_files_without_an_index_start_over(self, store: ChunkStore) -> None:
        _saved(store)
        store.files.remove(store.index_file)
        assert _again(store).resume() == []
        assert _gone(store)

    def test_an_unreadable_index_starts_over(self, store: ChunkStore) -> None:
        _saved(store)
        store.files.write_bytes(store.index_file, b"{not json")
        assert _again(store).resume() == []

    def test_an_entry_that_does_not_continue_the_prefix_ends_it(self, store: ChunkStore) -> None:
        _saved(store)
        index = store.files.read_json(store.index_file)
        index["chunks"][1]["start"] = 5
        store.files.write_json(store.index_file, index)
        assert [c.index for c in _again(store).resume()] == [0]

    def test_nothing_persisted_leaves_no_folder(self, store: ChunkStore) -> None:
        assert store.resume() == [] and _gone(store)
        assert store.items_done == 0 and store.results() == [] and store.dead_letters() == []

    def test_clear_removes_the_folder(self, store: ChunkStore) -> None:
        _saved(store).clear()
        assert _gone(store) and store.chunks == []
