"""S3 helpers: a well-configured client, one-line errors, listing, reading, hashing, writing.

Where the endpoint and credentials come from (first match wins):

- endpoint: the ``endpoint_url`` argument, then boto3's standard ``AWS_ENDPOINT_URL_S3`` /
  ``AWS_ENDPOINT_URL`` (and profiles), then the storage plugin's
  ``SNAKEMAKE_STORAGE_S3_ENDPOINT_URL``;
- credentials: boto3's standard chain (``AWS_ACCESS_KEY_ID``..., ``AWS_PROFILE``, shared
  files, instance roles); when neither ``AWS_ACCESS_KEY_ID`` nor ``AWS_PROFILE`` is set, the
  storage plugin's ``SNAKEMAKE_STORAGE_S3_ACCESS_KEY`` / ``_SECRET_KEY`` (``_TOKEN``) are
  used if present, so a job sees the same bucket as the plugin that wrote its inputs;
- region: boto3's standard lookup, then ``SNAKEMAKE_STORAGE_S3_REGION``.

Files of a run are moved to and from S3 by the storage plugin ``orchestrator-s3``
(``snakemake-storage-plugin-s3`` with a cache of its existence, mtime and size answers; see
``orchestrator_ext.storage_cache``), configured by the s3 plugin's ``SNAKEMAKE_STORAGE_S3_*``
settings, and rely on the bucket's default encryption. Objects this package writes itself
go through ``put_bytes`` / ``upload_file``, which always ask for server-side encryption
(``SSE_ARGS``).

Errors that mean "this is set up wrong" (missing bucket, unreachable endpoint, missing or
refused credentials) become one line of ``S3Error``; credentials never appear in messages.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator_ext.aws import AwsResource, display_endpoint
from orchestrator_ext.errors import Category, MissingOutput, OrchestratorError
from orchestrator_ext.location import S3_SCHEME, is_remote

if TYPE_CHECKING:
    from orchestrator_ext.config import FaultSpec

#: Extra arguments of every PutObject / upload this package makes itself.
SSE_ARGS: dict[str, str] = {"ServerSideEncryption": "AES256"}
#: Largest page ListObjectsV2 returns.
MAX_PAGE_SIZE = 1000
_CHUNK = 1 << 20
_GLOB_CHARS = "*?["

_MISSING_BUCKET_CODES = frozenset({"NoSuchBucket"})
_MISSING_KEY_CODES = frozenset({"NoSuchKey", "404", "NotFound"})


class S3Error(OrchestratorError):
    """Raised when S3 is not usable as configured: no bucket, no endpoint, no credentials."""


class S3Unreachable(S3Error):
    """Raised when the S3 endpoint cannot be reached (after botocore's retries): transient,
    so a job that hits it is resubmitted rather than failed for good."""

    category = Category.TRANSIENT


@dataclass(frozen=True)
class S3Object:
    """One listed object."""

    bucket: str
    key: str
    size: int
    etag: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/key`` -> ``("bucket", "some/key")`` (the key may be empty).

    Raises:
        S3Error: not an ``s3://`` URI, or no bucket.
    """
    # Not urlsplit: a key (or key glob) may hold "?" and "#".
    if not is_remote(uri):
        raise S3Error(f"not an S3 URI (expected s3://bucket/key): {uri}")
    bucket, _, key = uri[len(S3_SCHEME) :].partition("/")
    if not bucket:
        raise S3Error(f"not an S3 URI (expected s3://bucket/key): {uri}")
    return bucket, key


def _env(name: str) -> str | None:
    return os.environ.get(name) or None


def make_s3_client(
    endpoint_url: str | None = None,
    *,
    retry_mode: str = "standard",
    max_attempts: int = 8,
    connect_timeout_s: float = 10,
    read_timeout_s: float = 60,
    faults: FaultSpec | None = None,
) -> Any:
    """A low-level S3 client from boto3's standard configuration (see the module docstring).

    Retries follow botocore's ``standard`` (or ``adaptive``) mode: throttling, 5xx and
    connection errors are retried with exponential backoff and jitter. With ``faults`` (a
    run's ``faults`` config) enabled and ``s3_throttle_rate`` > 0, that fraction of the
    client's requests is answered with ``503 SlowDown`` (``faults.install_s3_throttle``).
    """
    import boto3
    from botocore.config import Config

    if endpoint_url is None and not (_env("AWS_ENDPOINT_URL_S3") or _env("AWS_ENDPOINT_URL")):
        endpoint_url = _env("SNAKEMAKE_STORAGE_S3_ENDPOINT_URL")
    session_args: dict[str, Any] = {}
    key, secret = _env("SNAKEMAKE_STORAGE_S3_ACCESS_KEY"), _env("SNAKEMAKE_STORAGE_S3_SECRET_KEY")
    if key and secret and not (_env("AWS_ACCESS_KEY_ID") or _env("AWS_PROFILE")):
        session_args = {
            "aws_access_key_id": key,
            "aws_secret_access_key": secret,
            "aws_session_token": _env("SNAKEMAKE_STORAGE_S3_TOKEN"),
        }
    if not (_env("AWS_REGION") or _env("AWS_DEFAULT_REGION")):
        session_args["region_name"] = _env("SNAKEMAKE_STORAGE_S3_REGION")
    config = Config(
        retries={"mode": retry_mode, "max_attempts": max_attempts},
        connect_timeout=connect_timeout_s,
        read_timeout=read_timeout_s,
        # Like the storage plugin: S3-compatible servers may not strip AWS's new default
        # checksums (boto/boto3#4435), so send and check them only where S3 requires it.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    # A session per client: boto3's default session is not thread-safe; clients are.
    session = boto3.session.Session(**session_args)
    client = session.client("s3", endpoint_url=endpoint_url, config=config)
    if faults is not None and faults.enabled and faults.s3_throttle_rate > 0:
        from orchestrator_ext.faults import install_s3_throttle

        install_s3_throttle(client, faults.s3_throttle_rate, seed=faults.seed)
    return client


def translated_errors(
    client: Any, bucket: str, what: str = ""
) -> contextlib.AbstractContextManager[None]:
    """Turn setup problems into one line of ``S3Error`` (``aws.translated_errors``); other
    errors pass unchanged. ``what`` names the purpose (e.g. ``input.uri s3://b/p/*.parquet``)
    in the message."""
    from orchestrator_ext import aws

    endpoint = display_endpoint(client.meta.endpoint_url)
    where = f"S3 bucket {bucket!r} at {endpoint}" + (f" ({what})" if what else "")
    return aws.translated_errors(
        AwsResource(
            where=where,
            error=S3Error,
            unreachable_error=S3Unreachable,
            missing_codes=_MISSING_BUCKET_CODES,
            missing_message=(
                f"{where} does not exist: create it, or fix the bucket name or endpoint"
            ),
            endpoint_settings=(
                "AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL / SNAKEMAKE_STORAGE_S3_ENDPOINT_URL"
            ),
            credential_settings=(
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or SNAKEMAKE_STORAGE_S3_ACCESS_KEY"
                " / _SECRET_KEY)"
            ),
        )
    )


def check_bucket(client: Any, bucket: str) -> None:
    """Check that ``bucket`` exists and the credentials may use it (one HeadBucket).

    Raises:
        S3Error: one line for a missing bucket, an unreachable endpoint, missing or
            refused credentials.
    """
    from botocore.exceptions import ClientError

    with translated_errors(client, bucket):
        try:
            client.head_bucket(Bucket=bucket)
        except ClientError as exc:
            # HeadBucket has no body: a missing bucket is a bare 404.
            if str(exc.response.get("Error", {}).get("Code")) in ("404", "NotFound"):
                raise S3Error(
                    f"S3 bucket {bucket!r} at {display_endpoint(client.meta.endpoint_url)} "
                    "does not exist: create it, or fix the bucket name or endpoint"
                ) from None
            raise


def bucket_default_encryption(client: Any, bucket: str) -> str | None:
    """The bucket's default server-side encryption (``AES256``, ``aws:kms``, ...), or None.

    Raises:
        S3Error: the bucket is missing or unreachable (see ``check_bucket``).
    """
    from botocore.exceptions import ClientError

    with translated_errors(client, bucket):
        try:
            response = client.get_bucket_encryption(Bucket=bucket)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == (
                "ServerSideEncryptionConfigurationNotFoundError"
            ):
                return None
            raise
    rules = response.get("ServerSideEncryptionConfiguration", {}).get("Rules", [])
    for rule in rules:
        algorithm = rule.get("ApplyServerSideEncryptionByDefault", {}).get("SSEAlgorithm")
        if algorithm:
            return str(algorithm)
    return None


def glob_prefix(key_pattern: str) -> str:
    """The literal part of a key pattern before its first glob character."""
    cut = min((i for i in (key_pattern.find(c) for c in _GLOB_CHARS) if i >= 0), default=None)
    return key_pattern if cut is None else key_pattern[:cut]


def has_glob(key_pattern: str) -> bool:
    """True if the key pattern holds ``*``, ``?`` or ``[``."""
    return any(c in key_pattern for c in _GLOB_CHARS)


def list_objects(
    client: Any, bucket: str, prefix: str = "", page_size: int = MAX_PAGE_SIZE, what: str = ""
) -> Iterator[S3Object]:
    """Every object under ``prefix`` in key order, one ListObjectsV2 page at a time.

    Keys ending in ``/`` (folder markers) are skipped.

    Raises:
        S3Error: the bucket is missing or unreachable, credentials are missing or refused.
    """
    paginator = client.get_paginator("list_objects_v2")
    pages = paginator.paginate(
        Bucket=bucket, Prefix=prefix, PaginationConfig={"PageSize": min(page_size, MAX_PAGE_SIZE)}
    )
    with translated_errors(client, bucket, what):
        for page in pages:
            for item in page.get("Contents", []):
                if item["Key"].endswith("/"):
                    continue
                yield S3Object(bucket, item["Key"], int(item["Size"]), _etag(item["ETag"]))


def _etag(value: str) -> str:
    return value.strip('"')


@contextlib.contextmanager
def missing_key_as(uri: str) -> Iterator[None]:
    """Turn S3's "no such key" into ``MissingOutput`` naming ``uri``."""
    from botocore.exceptions import ClientError

    try:
        yield
    except ClientError as exc:
        if str(exc.response.get("Error", {}).get("Code")) in _MISSING_KEY_CODES:
            raise MissingOutput(f"object not found: {uri}") from None
        raise


def read_bytes(client: Any, uri: str) -> bytes:
    """The whole content of one object.

    Raises:
        MissingOutput: no such object. S3Error: setup problems (see ``translated_errors``).
    """
    bucket, key = split_s3_uri(uri)
    with translated_errors(client, bucket), missing_key_as(uri):
        return client.get_object(Bucket=bucket, Key=key)["Body"].read()


def download(client: Any, uri: str, path: str | os.PathLike[str]) -> Path:
    """Download one object to ``path`` (through a temporary name); return the path.

    Raises:
        MissingOutput: no such object. S3Error: setup problems.
    """
    from orchestrator_ext.storage import atomic_path

    bucket, key = split_s3_uri(uri)
    with translated_errors(client, bucket), missing_key_as(uri), atomic_path(path) as tmp:
        client.download_file(bucket, key, str(tmp))
    return Path(path)


def sha256_object(client: Any, uri: str) -> str:
    """The hex sha256 of an object's bytes, streamed (memory bounded by one chunk).

    Raises:
        MissingOutput: no such object. S3Error: setup problems.
    """
    bucket, key = split_s3_uri(uri)
    digest = hashlib.sha256()
    with translated_errors(client, bucket), missing_key_as(uri):
        body = client.get_object(Bucket=bucket, Key=key)["Body"]
        try:
            for chunk in body.iter_chunks(_CHUNK):
                digest.update(chunk)
        finally:
            body.close()
    return digest.hexdigest()


def put_bytes(client: Any, uri: str, data: bytes, content_type: str | None = None) -> None:
    """Write one object this package owns, with server-side encryption (``SSE_ARGS``)."""
    bucket, key = split_s3_uri(uri)
    extra = {"ContentType": content_type} if content_type else {}
    with translated_errors(client, bucket):
        client.put_object(Bucket=bucket, Key=key, Body=data, **SSE_ARGS, **extra)


def upload_file(client: Any, path: str | os.PathLike[str], uri: str) -> None:
    """Upload a local file as an object this package owns, with server-side encryption."""
    bucket, key = split_s3_uri(uri)
    with translated_errors(client, bucket):
        client.upload_file(str(path), bucket, key, ExtraArgs=dict(SSE_ARGS))


def delete_prefix(client: Any, uri: str) -> int:
    """Delete every object under the folder ``uri`` (``s3://bucket/prefix``); return how
    many. One listing, then DeleteObjects of up to 1,000 keys a request.

    Raises:
        S3Error: setup problems (see ``translated_errors``), or a key S3 refused to delete.
    """
    bucket, prefix = split_s3_uri(uri)
    prefix = prefix.rstrip("/") + "/"
    keys = [o.key for o in list_objects(client, bucket, prefix, what=uri)]
    for start in range(0, len(keys), MAX_PAGE_SIZE):
        chunk = keys[start : start + MAX_PAGE_SIZE]
        with translated_errors(client, bucket):
            response = client.delete_objects(
                Bucket=bucket, Delete={"Objects": [{"Key": k} for k in chunk], "Quiet": True}
            )
        if response.get("Errors"):
            first = response["Errors"][0]
            raise S3Error(
                f"cannot delete s3://{bucket}/{first.get('Key')}: {first.get('Code')} "
                f"{first.get('Message', '')}".rstrip()
            )
    return len(keys)
