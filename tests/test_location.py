"""orchestrator_ext.location: one interface, the same answers from a local folder and from S3
(the local S3 server over HTTP, through real boto3)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pytest

from orchestrator_ext.errors import CorruptFile, MissingOutput
from orchestrator_ext.location import (
    LocalLocation,
    Location,
    S3Location,
    is_remote,
    join,
    local_copy,
    location_of,
)
from orchestrator_ext.s3 import S3Error, make_s3_client


@pytest.fixture(params=["local", "s3"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Location, str]:
    """(location, a fresh folder in it) for each backend."""
    if request.param == "local":
        return LocalLocation(), str(tmp_path / "run")
    request.getfixturevalue("aws_env")
    client = make_s3_client()
    bucket = f"loc-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    return S3Location(client), f"s3://{bucket}/prefix/run"


def test_is_remote_and_join() -> None:
    assert is_remote("s3://b/k") and not is_remote("/data/s3:/x") and not is_remote("s3x://b")
    assert join("s3://b/p/", "/results/", "x.json") == "s3://b/p/results/x.json"
    assert join("out/r", "dead_letter") == "out/r/dead_letter"
    assert isinstance(location_of("s3://b/k"), S3Location)
    assert isinstance(location_of(Path("out")), LocalLocation)


def test_write_read_hash_exists(root: tuple[Location, str]) -> None:
    location, run = root
    uri = join(run, "results", "a.bin")
    assert not location.exists(uri)
    location.write_bytes(uri, b"hello")
    assert location.exists(uri)
    assert location.read_bytes(uri) == b"hello"
    # sha256 of b"hello", computed independently
    assert location.sha256(uri) == (
        "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    )
    location.write_bytes(uri, b"again")  # overwrite whole
    assert location.read_bytes(uri) == b"again"


def test_missing_file_is_missing_output_naming_it(root: tuple[Location, str]) -> None:
    location, run = root
    uri = join(run, "nothing.json")
    for call in (location.read_bytes, location.sha256, location.read_json, location.parquet_rows):
        with pytest.raises(MissingOutput, match="nothing.json"):
            call(uri)


def test_json_records(root: tuple[Location, str]) -> None:
    location, run = root
    uri = join(run, "r.json")
    location.write_json(uri, {"b": 2, "a": [1]})
    assert location.read_json(uri) == {"a": [1], "b": 2}
    location.write_bytes(uri, b"{torn")
    with pytest.raises(CorruptFile, match=r"r\.json is not valid JSON"):
        location.read_json(uri)


def test_parquet_and_rows_from_footer(root: tuple[Location, str], tmp_path: Path) -> None:
    location, run = root
    frame = pl.DataFrame({"id": [f"{i:04d}" for i in range(1234)], "v": list(range(1234))})
    uri = join(run, "results", "batch-00000.parquet")
    location.write_parquet(uri, frame)
    assert location.read_parquet(uri).equals(frame)
    assert location.parquet_rows(uri) == 1234
    empty = join(run, "results", "empty.parquet")
    location.write_parquet(empty, frame.clear())
    assert location.parquet_rows(empty) == 0
    not_parquet = join(run, "results", "x.parquet")
    location.write_bytes(not_parquet, b"just some text, definitely not parquet")
    with pytest.raises(pa.ArrowException):
        location.parquet_rows(not_parquet)
    local = tmp_path / "local.parquet"
    frame.write_parquet(local)
    copied = join(run, "copy", "c.parquet")
    location.put_file(local, copied)
    assert location.sha256(copied) == LocalLocation().sha256(str(local))
    with local_copy(copied, location) as path:
        assert pl.read_parquet(path).equals(frame)


def test_list_and_remove(root: tuple[Location, str]) -> None:
    location, run = root
    names = [
        "dead_letter/batch-00002.parquet",
        "dead_letter/batch-00000.parquet",
        "dead_letter/sub/x.parquet",
        "dead_letter/note.txt",
        "results/batch-00000.json",
    ]
    for name in names:
        location.write_bytes(join(run, name), b"x")
    listed = location.list(join(run, "dead_letter"), ".parquet")
    assert [u.removeprefix(run) for u in listed] == [
        "/dead_letter/batch-00000.parquet",
        "/dead_letter/batch-00002.parquet",
        "/dead_letter/sub/x.parquet",
    ]
    assert location.list(join(run, "nothing")) == []
    # A folder whose name is a prefix of another folder's is not part of it.
    location.write_bytes(join(run, "dead_letter_other", "y.parquet"), b"y")
    assert location.remove(join(run, "dead_letter")) == 4
    assert location.list(join(run, "dead_letter")) == []
    assert location.exists(join(run, "dead_letter_other", "y.parquet"))
    assert location.remove(join(run, "results", "batch-00000.json")) == 1
    assert location.remove(join(run, "results")) == 0


def test_s3_setup_problem_is_one_line(aws_env: str) -> None:
    location = S3Location(make_s3_client())
    with pytest.raises(S3Error, match="does not exist"):
        location.read_bytes(f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/k")


def test_s3_writes_are_encrypted(aws_env: str) -> None:
    client = make_s3_client()
    bucket = f"loc-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    location = S3Location(client)
    location.write_json(f"s3://{bucket}/a.json", {"a": 1})
    head: dict[str, Any] = client.head_object(Bucket=bucket, Key="a.json")
    assert head.get("ServerSideEncryption") == "AES256"


def test_occupied(root: tuple[Location, str]) -> None:
    location, run = root
    assert not location.occupied(run)
    location.write_bytes(join(run, "results", "a.json"), b"{}")
    assert location.occupied(run) and location.occupied(join(run, "results"))
    # A folder whose name is a prefix of another's is not occupied by it.
    assert not location.occupied(run[:-1]) and not location.occupied(join(run, "res"))
