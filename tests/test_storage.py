"""Unit tests for orchestrator_ext.storage: atomic local writes and checksums."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from orchestrator_ext.errors import ChecksumMismatch, CorruptFile, MissingOutput
from orchestrator_ext.storage import (
    atomic_path,
    file_facts,
    parse_json_object,
    read_json,
    sha256_file,
    verify_checksum,
    write_json,
)

ABC_SHA256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


class TestAtomicPath:
    def test_publishes_on_success(self, tmp_path: Path) -> None:
        final = tmp_path / "deep" / "er" / "out.txt"
        with atomic_path(final) as tmp:
            assert tmp.parent == final.parent
            assert tmp != final
            tmp.write_text("done")
            assert not final.exists(), "nothing is visible under the final name before exit"
        assert final.read_text() == "done"
        assert sorted(p.name for p in final.parent.iterdir()) == ["out.txt"]

    def test_leaves_nothing_on_exception(self, tmp_path: Path) -> None:
        final = tmp_path / "out.txt"
        with pytest.raises(RuntimeError, match="crash"), atomic_path(final) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
        assert list(tmp_path.iterdir()) == []

    def test_failure_keeps_the_previous_version(self, tmp_path: Path) -> None:
        final = tmp_path / "out.txt"
        final.write_text("old")
        with pytest.raises(KeyboardInterrupt), atomic_path(final) as tmp:
            tmp.write_text("new")
            raise KeyboardInterrupt
        assert final.read_text() == "old"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]

    def test_success_replaces_the_previous_version(self, tmp_path: Path) -> None:
        final = tmp_path / "out.txt"
        final.write_text("old")
        with atomic_path(final) as tmp:
            tmp.write_text("new")
        assert final.read_text() == "new"

    def test_nested_publish_in_reverse_order(self, tmp_path: Path) -> None:
        a, b = tmp_path / "a", tmp_path / "b"
        with atomic_path(a) as tmp_a, atomic_path(b) as tmp_b:
            tmp_a.write_text("a")
            tmp_b.write_text("b")
        assert (a.read_text(), b.read_text()) == ("a", "b")


class TestSha256File:
    def test_known_digest(self, tmp_path: Path) -> None:
        path = tmp_path / "abc"
        path.write_bytes(b"abc")
        assert sha256_file(path) == ABC_SHA256

    def test_large_file_in_chunks(self, tmp_path: Path) -> None:
        data = bytes(range(256)) * 10_000  # > one 1 MiB chunk
        path = tmp_path / "big"
        path.write_bytes(data)
        assert sha256_file(path) == hashlib.sha256(data).hexdigest()

    def test_missing(self, tmp_path: Path) -> None:
        with pytest.raises(MissingOutput, match="file not found: .*nope"):
            sha256_file(tmp_path / "nope")


class TestFileFacts:
    def test_facts(self, tmp_path: Path) -> None:
        path = tmp_path / "abc"
        path.write_bytes(b"abc")
        assert file_facts(path) == {"sha256": ABC_SHA256, "bytes": 3}


class TestVerifyChecksum:
    def test_match(self, tmp_path: Path) -> None:
        path = tmp_path / "abc"
        path.write_bytes(b"abc")
        verify_checksum(path, ABC_SHA256, "test file")

    def test_mismatch_names_the_file(self, tmp_path: Path) -> None:
        path = tmp_path / "abc"
        path.write_bytes(b"abd")
        with pytest.raises(
            ChecksumMismatch, match=r"checksum mismatch for batch 00003 result \(.*abc\)"
        ) as info:
            verify_checksum(path, ABC_SHA256, "batch 00003 result")
        assert "ba7816bf8f01" in str(info.value)
        assert "\n" not in str(info.value)

    def test_missing(self, tmp_path: Path) -> None:
        with pytest.raises(MissingOutput):
            verify_checksum(tmp_path / "gone", ABC_SHA256, "x")


class TestJson:
    def test_round_trip_sorted_and_atomic(self, tmp_path: Path) -> None:
        path = tmp_path / "sub" / "r.json"
        write_json(path, {"b": 1, "a": [1, 2]})
        assert read_json(path) == {"a": [1, 2], "b": 1}
        assert path.read_text().index('"a"') < path.read_text().index('"b"')
        assert sorted(p.name for p in path.parent.iterdir()) == ["r.json"]

    def test_missing(self, tmp_path: Path) -> None:
        with pytest.raises(MissingOutput, match="r.json"):
            read_json(tmp_path / "r.json")

    def test_garbage_names_the_file(self, tmp_path: Path) -> None:
        path = tmp_path / "results" / "batch-00003.json"
        path.parent.mkdir()
        path.write_text('{"sha256": "ab",\n  oops')
        with pytest.raises(CorruptFile) as info:
            read_json(path)
        message = str(info.value)
        assert message.startswith(f"{path} is not valid JSON (line 2 column 3: ")
        assert message.endswith("delete it and rerun to regenerate it")
        assert "\n" not in message

    def test_empty_file(self, tmp_path: Path) -> None:
        path = tmp_path / "plan.json"
        path.write_text("")
        with pytest.raises(CorruptFile, match=r"plan.json is not valid JSON \(line 1 column 1"):
            read_json(path)

    def test_not_utf8(self, tmp_path: Path) -> None:
        path = tmp_path / "r.json"
        path.write_bytes(b'{"a": "\xff\xfe"}')
        with pytest.raises(CorruptFile, match=r"r.json is not valid JSON \(not UTF-8 text"):
            read_json(path)

    @pytest.mark.parametrize(
        ("text", "kind"), [("[]", "list"), ("42", "int"), ('"x"', "str"), ("null", "NoneType")]
    )
    def test_not_an_object(self, tmp_path: Path, text: str, kind: str) -> None:
        path = tmp_path / "result.json"
        path.write_text(text)
        with pytest.raises(CorruptFile) as info:
            read_json(path)
        assert str(info.value) == (
            f"{path} is not a JSON object (it holds a {kind}); delete it and rerun to regenerate it"
        )

    def test_corrupt_file_is_a_package_error(self) -> None:
        from orchestrator_ext.errors import Category, OrchestratorError, classify

        error = CorruptFile("x")
        assert isinstance(error, OrchestratorError)
        assert classify(error) is Category.PERMANENT

    def test_parse_names_the_source(self) -> None:
        assert parse_json_object(b'{"a": 1}', "s3://b/r.json") == {"a": 1}
        with pytest.raises(CorruptFile, match=r"^s3://b/r.json is not valid JSON \(line 1"):
            parse_json_object(b"<html>", "s3://b/r.json")


class TestReadJsonAt:
    """``report.read_json_at`` reads the run's records on disk and in S3 the same way."""

    def test_local(self, tmp_path: Path) -> None:
        from orchestrator_ext.report import read_json_at

        path = tmp_path / "plan.json"
        assert read_json_at(str(path)) is None
        path.write_text("{not json")
        with pytest.raises(CorruptFile, match=rf"^{path} is not valid JSON"):
            read_json_at(str(path))
        path.write_text("[1]")
        with pytest.raises(CorruptFile, match="is not a JSON object"):
            read_json_at(str(path))
        write_json(path, {"n_batches": 2})
        assert read_json_at(str(path)) == {"n_batches": 2}

    def test_s3(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from orchestrator_ext import s3
        from orchestrator_ext.report import read_json_at

        objects = {"s3://b/run/batches/plan.json": b"garbage", "s3://b/run/ok.json": b"{}"}

        def read_bytes(client: object, uri: str) -> bytes:
            if uri not in objects:
                raise MissingOutput(f"no object at {uri}")
            return objects[uri]

        monkeypatch.setattr(s3, "make_s3_client", lambda *a, **k: None)
        monkeypatch.setattr(s3, "read_bytes", read_bytes)
        assert read_json_at("s3://b/run/missing.json") is None
        assert read_json_at("s3://b/run/ok.json") == {}
        with pytest.raises(CorruptFile, match=r"^s3://b/run/batches/plan.json is not valid JSON"):
            read_json_at("s3://b/run/batches/plan.json")
