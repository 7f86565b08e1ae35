"""S3 helpers and S3 item sources against the local AWS endpoint (real boto3 over HTTP)."""

from __future__ import annotations

import hashlib
import io
import json
import uuid
from pathlib import Path

import polars as pl
import pytest

from orchestrator_ext import s3
from orchestrator_ext.config import InputSpec, load_config
from orchestrator_ext.errors import ConfigError, InputError, MissingOutput, OrchestratorError
from orchestrator_ext.items import read_items
from orchestrator_ext.location import S3Location
from orchestrator_ext.s3_input import match_objects
from orchestrator_ext.verify import verify_manifest

SECRET = "do-not-print-this-secret"


def _bucket_name() -> str:
    return f"test-{uuid.uuid4().hex[:20]}"


@pytest.fixture
def client(aws_env: str):
    return s3.make_s3_client()


@pytest.fixture
def bucket(client) -> str:
    name = _bucket_name()
    client.create_bucket(Bucket=name)
    return name


def _parquet(frame: pl.DataFrame) -> bytes:
    out = io.BytesIO()
    frame.write_parquet(out)
    return out.getvalue()


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and text, f"not one line: {text!r}"
    assert SECRET not in text
    return text


def _no_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in (
        "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE", "SNAKEMAKE_STORAGE_S3_ACCESS_KEY",
        "SNAKEMAKE_STORAGE_S3_SECRET_KEY",
    ):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


class TestUris:
    def test_split(self) -> None:
        assert s3.split_s3_uri("s3://b/p/k.parquet") == ("b", "p/k.parquet")
        assert s3.split_s3_uri("s3://b") == ("b", "")
        assert s3.split_s3_uri("s3://b/p/part-?.csv#1") == ("b", "p/part-?.csv#1")

    @pytest.mark.parametrize("uri", ["results/x", "s3:///key", "http://b/k"])
    def test_not_an_s3_uri(self, uri: str) -> None:
        with pytest.raises(s3.S3Error, match="not an S3 URI"):
            s3.split_s3_uri(uri)

    def test_glob_prefix(self) -> None:
        assert s3.glob_prefix("in/2024-*/part-?.parquet") == "in/2024-"
        assert s3.glob_prefix("in/[ab]/x") == "in/"
        assert s3.glob_prefix("in/x.parquet") == "in/x.parquet"
        assert s3.has_glob("a/*") and not s3.has_glob("a/b")

    def test_display_endpoint_drops_user_info(self) -> None:
        assert s3.display_endpoint(f"http://key:{SECRET}@host:9000/p") == "http://host:9000/p"
        assert s3.display_endpoint(None) == "(default)"


class TestClient:
    def test_standard_environment(self, client, moto_endpoint: str) -> None:
        assert client.meta.endpoint_url == moto_endpoint
        assert client.meta.config.retries["mode"] == "standard"
        assert client.meta.config.connect_timeout == 10

    def test_explicit_endpoint_wins(self, aws_env: str) -> None:
        assert s3.make_s3_client("http://127.0.0.1:1").meta.endpoint_url == "http://127.0.0.1:1"

    def test_storage_plugin_variables_are_a_fallback(
        self, moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        _no_credentials(monkeypatch, tmp_path)
        monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
        monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
        monkeypatch.setenv("SNAKEMAKE_STORAGE_S3_ENDPOINT_URL", moto_endpoint)
        monkeypatch.setenv("SNAKEMAKE_STORAGE_S3_ACCESS_KEY", "testing")
        monkeypatch.setenv("SNAKEMAKE_STORAGE_S3_SECRET_KEY", "testing")
        client = s3.make_s3_client()
        assert client.meta.endpoint_url == moto_endpoint
        name = _bucket_name()
        client.create_bucket(Bucket=name)
        s3.check_bucket(client, name)

    def test_aws_endpoint_variables_win_over_the_plugin_ones(
        self, aws_env: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("SNAKEMAKE_STORAGE_S3_ENDPOINT_URL", "http://127.0.0.1:1")
        assert s3.make_s3_client().meta.endpoint_url == aws_env


class TestSetupErrors:
    def test_bucket_ok(self, client, bucket: str) -> None:
        s3.check_bucket(client, bucket)

    def test_missing_bucket(self, client) -> None:
        with pytest.raises(s3.S3Error) as info:
            s3.check_bucket(client, "no-such-bucket-here")
        assert "'no-such-bucket-here'" in _one_line(info.value)
        assert "does not exist" in str(info.value)

    def test_wrong_endpoint(self, aws_env: str) -> None:
        client = s3.make_s3_client("http://127.0.0.1:1", max_attempts=2, connect_timeout_s=2)
        with pytest.raises(s3.S3Error) as info:
            s3.check_bucket(client, "any-bucket")
        line = _one_line(info.value)
        assert "cannot reach" in line and "http://127.0.0.1:1" in line

    def test_missing_credentials(
        self, moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        _no_credentials(monkeypatch, tmp_path)
        monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
        client = s3.make_s3_client()
        with pytest.raises(s3.S3Error) as info:
            s3.check_bucket(client, "any-bucket")
        assert "no AWS credentials" in _one_line(info.value)

    def test_secret_never_in_messages(
        self, moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        _no_credentials(monkeypatch, tmp_path)
        monkeypatch.setenv("SNAKEMAKE_STORAGE_S3_ACCESS_KEY", "testing")
        monkeypatch.setenv("SNAKEMAKE_STORAGE_S3_SECRET_KEY", SECRET)
        client = s3.make_s3_client("http://127.0.0.1:1", max_attempts=1)
        with pytest.raises(s3.S3Error) as info:
            list(s3.list_objects(client, "any-bucket", what="input.uri s3://any-bucket/x"))
        assert "input.uri s3://any-bucket/x" in _one_line(info.value)

    def test_errors_are_the_packages_own(self) -> None:
        assert issubclass(s3.S3Error, OrchestratorError)


class TestObjects:
    def test_put_bytes_and_upload_ask_for_encryption(self, client, bucket, tmp_path) -> None:
        s3.put_bytes(client, f"s3://{bucket}/own/a.json", b"{}", "application/json")
        (tmp_path / "b.txt").write_text("b")
        s3.upload_file(client, tmp_path / "b.txt", f"s3://{bucket}/own/b.txt")
        for key in ("own/a.json", "own/b.txt"):
            assert client.head_object(Bucket=bucket, Key=key)["ServerSideEncryption"] == "AES256"

    def test_delete_prefix_removes_the_folder_only(self, client, bucket) -> None:
        keys = [f"run/results/batch-{i:05d}.json" for i in range(1203)] + ["run/results-x/keep"]
        for key in keys[:3] + keys[-1:]:
            client.put_object(Bucket=bucket, Key=key, Body=b"x")
        # More than one DeleteObjects request (at most 1,000 keys each).
        for key in keys[3:-1]:
            client.put_object(Bucket=bucket, Key=key, Body=b"")
        assert s3.delete_prefix(client, f"s3://{bucket}/run/results") == 1203
        left = [o.key for o in s3.list_objects(client, bucket, "run/")]
        assert left == ["run/results-x/keep"]
        assert s3.delete_prefix(client, f"s3://{bucket}/run/results/") == 0

    def test_bucket_default_encryption(self, client, bucket) -> None:
        assert s3.bucket_default_encryption(client, bucket) in (None, "AES256")
        client.put_bucket_encryption(
            Bucket=bucket,
            ServerSideEncryptionConfiguration={
                "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms"}}]
            },
        )
        assert s3.bucket_default_encryption(client, bucket) == "aws:kms"

    def test_bucket_default_encryption_of_a_missing_bucket(self, client) -> None:
        with pytest.raises(s3.S3Error, match="does not exist"):
            s3.bucket_default_encryption(client, "no-such-bucket-here")

    def test_read_hash_download(self, client, bucket, tmp_path) -> None:
        data = b"x" * (3 << 20)  # several streaming chunks
        s3.put_bytes(client, f"s3://{bucket}/d/big.bin", data)
        uri = f"s3://{bucket}/d/big.bin"
        assert s3.sha256_object(client, uri) == hashlib.sha256(data).hexdigest()
        assert s3.read_bytes(client, uri) == data
        assert s3.download(client, uri, tmp_path / "sub" / "big.bin").read_bytes() == data
        assert [p.name for p in (tmp_path / "sub").iterdir()] == ["big.bin"]

    def test_missing_object(self, client, bucket, tmp_path) -> None:
        uri = f"s3://{bucket}/nothing"
        for call in (
            lambda: s3.sha256_object(client, uri),
            lambda: s3.read_bytes(client, uri),
            lambda: s3.download(client, uri, tmp_path / "x"),
        ):
            with pytest.raises(MissingOutput, match=f"object not found: {uri}"):
                call()
        assert not (tmp_path / "x").exists()

    def test_listing_is_paginated_and_sorted(self, client, bucket) -> None:
        for i in reversed(range(7)):
            s3.put_bytes(client, f"s3://{bucket}/many/k{i}", b"." * i)
        s3.put_bytes(client, f"s3://{bucket}/many/folder/", b"")  # a folder marker
        s3.put_bytes(client, f"s3://{bucket}/other/k", b"")
        calls = []
        client.meta.events.register(
            "before-call.s3.ListObjectsV2", lambda **kwargs: calls.append(kwargs)
        )
        objects = list(s3.list_objects(client, bucket, "many/", page_size=2))
        assert [o.key for o in objects] == [f"many/k{i}" for i in range(7)]
        assert [o.size for o in objects] == list(range(7))
        assert objects[3].uri == f"s3://{bucket}/many/k3"
        assert objects[3].etag == hashlib.md5(b"...").hexdigest()  # noqa: S324 - S3's etag
        assert len(calls) == 4


class TestS3Input:
    @pytest.fixture
    def items(self) -> pl.DataFrame:
        return pl.DataFrame({"id": list(range(30)), "v": [i * 3 for i in range(30)]})

    @pytest.fixture
    def source(self, client, bucket, items) -> str:
        # Written out of key order; a distractor in every place a loose match could reach.
        for i in (2, 0, 1):
            s3.put_bytes(
                client, f"s3://{bucket}/in/part-{i}.parquet", _parquet(items[i * 10 :][:10])
            )
        s3.put_bytes(client, f"s3://{bucket}/in/notes.txt", b"not items")
        s3.put_bytes(client, f"s3://{bucket}/input-other/part-9.parquet", _parquet(items[:1]))
        return bucket

    def test_parquet_glob(self, client, source, items) -> None:
        spec = InputSpec(f"s3://{source}/in/*.parquet", "parquet")
        got, listing = read_items(spec, client, page_size=1)
        assert got.equals(items)
        assert [f["path"] for f in listing] == [
            f"s3://{source}/in/part-{i}.parquet" for i in range(3)
        ]
        assert all(f["bytes"] > 0 and len(f["etag"]) == 32 for f in listing)

    def test_read_items_dispatches_to_s3(self, source, items) -> None:
        got, listing = read_items(InputSpec(f"s3://{source}/in/part-?.parquet", "parquet"))
        assert got.equals(items) and len(listing) == 3

    def test_single_object_and_folder(self, client, source, items) -> None:
        one, listing = read_items(InputSpec(f"s3://{source}/in/part-1.parquet", "parquet"))
        assert one.equals(items[10:20]) and len(listing) == 1
        with pytest.raises(InputError, match="cannot read .*notes.txt as parquet"):
            read_items(InputSpec(f"s3://{source}/in/", "parquet"), client)

    @pytest.mark.parametrize("fmt", ["csv", "jsonl"])
    def test_text_formats(self, client, bucket, items, fmt) -> None:
        for i in range(2):
            part = items[i * 15 :][:15]
            out = io.BytesIO()
            part.write_csv(out) if fmt == "csv" else part.write_ndjson(out)
            s3.put_bytes(client, f"s3://{bucket}/t/p{i}.{fmt}", out.getvalue())
        # CSV ids are text unless id_type says otherwise (JSON keeps its numbers).
        id_type = "integer" if fmt == "csv" else None
        spec = InputSpec(f"s3://{bucket}/t/*.{fmt}", fmt, id_type=id_type)
        got, _ = read_items(spec, client)
        assert got.equals(items)

    def test_s3_keys(self, client, source) -> None:
        got, listing = read_items(InputSpec(f"s3://{source}/in", "s3-keys"), client, page_size=2)
        keys = ["in/notes.txt", "in/part-0.parquet", "in/part-1.parquet", "in/part-2.parquet"]
        assert got.columns == ["id", "key", "size", "etag"]
        assert got["id"].to_list() == keys == got["key"].to_list()
        head = client.head_object(Bucket=source, Key="in/notes.txt")
        assert got.row(0) == ("in/notes.txt", "in/notes.txt", 9, head["ETag"].strip('"'))
        assert listing[0]["objects"] == 4 and listing[0]["path"] == f"s3://{source}/in"
        assert len(listing[0]["keys_sha256"]) == 64
        # The prefix is a folder: input-other/ is not under s3://bucket/in.
        again, _ = read_items(InputSpec(f"s3://{source}/in/", "s3-keys"), client)
        assert again.equals(got)

    def test_s3_keys_with_a_glob(self, client, source) -> None:
        got, _ = read_items(InputSpec(f"s3://{source}/in*/*.parquet", "s3-keys"), client)
        assert got["key"].to_list() == [
            "in/part-0.parquet", "in/part-1.parquet", "in/part-2.parquet",
            "input-other/part-9.parquet",
        ]  # fmt: skip

    def test_s3_keys_id_column_is_checked(self, client, source) -> None:
        with pytest.raises(InputError, match="id column 'name' not found"):
            read_items(InputSpec(f"s3://{source}/in", "s3-keys", id_column="name"), client)

    def test_s3_keys_needs_an_s3_uri(self, tmp_path) -> None:
        raw = {
            "run_id": "r",
            "input": {"uri": str(tmp_path), "format": "s3-keys"},
            "job": {"function": "m:f"},
        }
        with pytest.raises(ConfigError, match="s3-keys"):
            load_config(raw)

    @pytest.mark.parametrize(
        "uri", ["s3://{b}/in/*.csv", "s3://{b}/nothing/", "s3://{b}/in/part-7.parquet"]
    )
    def test_no_matching_object(self, client, source, uri) -> None:
        uri = uri.format(b=source)
        with pytest.raises(InputError) as info:
            match_objects(client, uri)
        assert _one_line(info.value) == f"input.uri matches no S3 object: {uri}"

    def test_empty_prefix_for_s3_keys(self, client, bucket) -> None:
        with pytest.raises(InputError, match="matches no S3 object"):
            read_items(InputSpec(f"s3://{bucket}/empty", "s3-keys"), client)

    def test_missing_bucket(self, client) -> None:
        with pytest.raises(s3.S3Error) as info:
            read_items(InputSpec("s3://no-such-bucket-here/in/*.parquet", "parquet"), client)
        line = _one_line(info.value)
        assert "'no-such-bucket-here'" in line and "input.uri" in line


class TestManifestInS3:
    def test_verify_streams_every_listed_object(self, client, bucket) -> None:
        def put(key: str, data: bytes) -> tuple[str, str]:
            s3.put_bytes(client, f"s3://{bucket}/run/{key}", data)
            return f"s3://{bucket}/run/{key}", hashlib.sha256(data).hexdigest()

        plan, result, dead, final = (
            put(k, k.encode()) for k in ("plan.json", "r.parquet", "d.parquet", "f.parquet")
        )
        manifest = {
            "manifest_version": 1,
            "plan": {"uri": plan[0], "sha256": plan[1]},
            "batches": [
                {
                    "batch_id": "00000",
                    "uri": result[0],
                    "sha256": result[1],
                    "dead_letter": {"uri": dead[0], "sha256": dead[1]},
                }
            ],
            "merges": [],
            "final": {"uri": final[0], "sha256": final[1]},
        }
        put("manifest.json", json.dumps(manifest).encode())
        manifest_uri = f"s3://{bucket}/run/manifest.json"
        assert verify_manifest(manifest_uri, S3Location(client)) == []

        s3.put_bytes(client, result[0], b"changed")
        client.delete_object(Bucket=bucket, Key="run/d.parquet")
        problems = verify_manifest(manifest_uri)
        assert problems[0].startswith(f"checksum mismatch: {result[0]} (batch 00000 result)")
        assert problems[1:] == [f"missing: {dead[0]} (batch 00000 dead letters)"]

    def test_missing_manifest(self, client, bucket) -> None:
        with pytest.raises(MissingOutput, match="no manifest at s3://.*the run has not finished"):
            verify_manifest(f"s3://{bucket}/run/manifest.json", S3Location(client))


class TestRemoteLayout:
    def test_logs_stay_local_and_targets_are_wrapped(self) -> None:
        from orchestrator_ext.layout import RunLayout

        plain = RunLayout("s3://b/prefix/run1")
        assert plain.is_remote and plain.run_id == "run1"
        assert plain.result(3) == "s3://b/prefix/run1/results/batch-00003.parquet"
        assert plain.log("process_batch", "00003") == "logs/run1/process_batch/00003.log"
        wrapped = RunLayout("s3://b/prefix/run1", wrap=lambda path: ("wrapped", path))
        assert wrapped.final == ("wrapped", "s3://b/prefix/run1/final/result.parquet")
        assert wrapped.node(1, 0, 2, 2) == (
            ("wrapped", "s3://b/prefix/run1/final/result.parquet"),
            ("wrapped", "s3://b/prefix/run1/final/result.json"),
        )
        assert wrapped.log("merge_final", "final") == "logs/run1/merge_final/final.log"
        assert wrapped.state_db == "s3://b/prefix/run1/state.sqlite"
        assert wrapped == plain

    def test_local_layout_is_unchanged(self) -> None:
        from orchestrator_ext.layout import RunLayout

        local = RunLayout("out/demo")
        assert not local.is_remote
        assert local.log("process_batch", "00003") == "out/demo/logs/process_batch/00003.log"
