"""Where a run's files are: a local folder or an S3 prefix, behind one small interface.

Every module that reads or writes a run's own files outside Snakemake's file targets (the
manifest, redrive, dead letters, chunks, the report, re-partition cleanup) goes through a
``Location``: ``location_of(uri)`` picks the backend from the URI, and both backends answer
the same calls with the same errors:

- ``read_bytes`` / ``read_json`` / ``read_parquet``, ``parquet_rows``;
- ``write_bytes`` / ``write_json`` / ``write_parquet`` / ``put_file``: atomic (a local file is
  renamed into place; an S3 object appears whole), S3 objects with server-side encryption;
- ``sha256``, ``exists``, ``list`` (files under a folder, sorted), ``occupied`` (anything
  at a folder), ``remove`` (a file or a whole folder).

A missing file is ``MissingOutput`` naming it, a damaged record ``CorruptFile``; setup
problems in S3 (bucket, endpoint, credentials) are one line of ``S3Error``
(``s3.translated_errors``). ``is_remote`` is the one place that tells the two kinds apart.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import struct
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator_ext.errors import MissingOutput
from orchestrator_ext.storage import atomic_path, parse_json_object, record_text, sha256_file

if TYPE_CHECKING:
    import polars as pl

S3_SCHEME = "s3://"
_PARQUET_MAGIC = b"PAR1"


def is_remote(uri: str | os.PathLike[str]) -> bool:
    """True for a location in S3 (``s3://bucket/key``), False for a local path."""
    return str(uri).startswith(S3_SCHEME)


def join(base: str, *parts: str) -> str:
    """``base/part/...`` for a local folder or an S3 prefix alike."""
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


def location_of(uri: str | os.PathLike[str], client: Any = None) -> Location:
    """The backend for ``uri``: ``S3Location`` (with ``client``, or one made when first
    needed) for ``s3://``, else ``LocalLocation``."""
    return S3Location(client) if is_remote(uri) else LocalLocation()


class Location(ABC):
    """Read, write atomically, hash, test, list and remove files of one kind of storage."""

    @abstractmethod
    def read_bytes(self, uri: str) -> bytes:
        """The whole file. Raises MissingOutput if it does not exist."""

    @abstractmethod
    def write_bytes(self, uri: str, data: bytes, private: bool = False) -> None:
        """Write the whole file atomically: readers see the old file or the new, never part.

        ``private``: readable by its owner only (a local file gets mode 0600; objects in S3
        are private to the bucket and encrypted anyway), for files that may hold secrets.
        """

    @abstractmethod
    def put_file(self, path: str | os.PathLike[str], uri: str) -> None:
        """Copy the local file ``path`` to ``uri`` atomically."""

    @abstractmethod
    def sha256(self, uri: str) -> str:
        """Hex sha256 of the file's bytes, streamed. Raises MissingOutput."""

    @abstractmethod
    def exists(self, uri: str) -> bool:
        """True if the file exists."""

    @abstractmethod
    def list(self, folder: str, suffix: str = "") -> list[str]:
        """Every file under ``folder`` (recursively) whose name ends in ``suffix``, sorted."""

    @abstractmethod
    def occupied(self, folder: str) -> bool:
        """True if something is at ``folder``: a local folder (even empty) or file, or any
        object under the prefix in S3 (one request for a page of one key)."""

    @abstractmethod
    def remove(self, uri: str) -> int:
        """Remove the file or the whole folder ``uri``; return how many files went (0 if
        there was nothing)."""

    @abstractmethod
    def _tail(self, uri: str, size: int) -> tuple[bytes, int]:
        """The last ``size`` bytes of the file and the file's length."""

    def read_json(self, uri: str) -> dict[str, Any]:
        """One of the run's JSON records. Raises MissingOutput, CorruptFile (naming ``uri``)."""
        return parse_json_object(self.read_bytes(uri), uri)

    def write_json(self, uri: str, data: Any) -> None:
        """Write ``data`` as a record (``storage.record_text``), atomically."""
        self.write_bytes(uri, record_text(data).encode())

    def read_parquet(self, uri: str) -> pl.DataFrame:
        """A Parquet file as a frame. Raises MissingOutput."""
        import io

        import polars as pl

        return pl.read_parquet(io.BytesIO(self.read_bytes(uri)))

    def write_parquet(self, uri: str, frame: pl.DataFrame) -> None:
        """Write ``frame`` as zstd Parquet with statistics, atomically."""
        import io

        buffer = io.BytesIO()
        frame.write_parquet(buffer, compression="zstd", statistics=True)
        self.write_bytes(uri, buffer.getvalue())

    def parquet_rows(self, uri: str) -> int:
        """Row count of a Parquet file from its footer alone (two small reads in S3).

        Raises:
            MissingOutput: no such file. pyarrow.ArrowException: not a Parquet file.
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        tail, length = self._tail(uri, 8)
        if len(tail) < 8 or tail[4:] != _PARQUET_MAGIC:
            raise pa.ArrowInvalid(f"{uri} is not a Parquet file (no footer)")
        (footer_len,) = struct.unpack("<I", tail[:4])
        if footer_len + 12 > length:
            raise pa.ArrowInvalid(f"{uri} is not a Parquet file (footer longer than the file)")
        footer, _ = self._tail(uri, footer_len + 8)
        # The footer alone, framed as a file: the reader needs nothing before it.
        framed = _PARQUET_MAGIC + footer
        return int(pq.read_metadata(pa.BufferReader(framed)).num_rows)


class LocalLocation(Location):
    """Files on this machine's file system (``uri`` is a path)."""

    def read_bytes(self, uri: str) -> bytes:
        try:
            return Path(uri).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            raise MissingOutput(f"file not found: {uri}") from None

    def write_bytes(self, uri: str, data: bytes, private: bool = False) -> None:
        with atomic_path(uri) as tmp:
            if private:
                tmp.chmod(0o600)  # before the data is in it
            tmp.write_bytes(data)

    def put_file(self, path: str | os.PathLike[str], uri: str) -> None:
        with atomic_path(uri) as tmp:
            shutil.copyfile(path, tmp)

    def sha256(self, uri: str) -> str:
        return sha256_file(uri)

    def exists(self, uri: str) -> bool:
        return os.path.isfile(uri)

    def list(self, folder: str, suffix: str = "") -> list[str]:
        root = Path(folder)
        if not root.is_dir():
            return []
        return sorted(str(p) for p in root.rglob(f"*{suffix}") if p.is_file())

    def occupied(self, folder: str) -> bool:
        return os.path.exists(folder)

    def remove(self, uri: str) -> int:
        path = Path(uri)
        if path.is_dir():
            removed = sum(1 for p in path.rglob("*") if not p.is_dir())
            shutil.rmtree(path)
            return removed
        if path.exists():
            path.unlink()
            return 1
        return 0

    def _tail(self, uri: str, size: int) -> tuple[bytes, int]:
        try:
            with open(uri, "rb") as handle:
                length = handle.seek(0, os.SEEK_END)
                handle.seek(max(0, length - size))
                return handle.read(), length
        except (FileNotFoundError, NotADirectoryError):
            raise MissingOutput(f"file not found: {uri}") from None


class S3Location(Location):
    """Objects in S3 (``uri`` is ``s3://bucket/key``), through one low-level client."""

    def __init__(self, client: Any = None) -> None:
        self._client = client

    @property
    def client(self) -> Any:
        """The S3 client, made from the environment when first needed (``make_s3_client``)."""
        if self._client is None:
            from orchestrator_ext.s3 import make_s3_client

            self._client = make_s3_client()
        return self._client

    def read_bytes(self, uri: str) -> bytes:
        from orchestrator_ext import s3

        return s3.read_bytes(self.client, uri)

    def write_bytes(self, uri: str, data: bytes, private: bool = False) -> None:
        from orchestrator_ext import s3

        s3.put_bytes(self.client, uri, data)

    def put_file(self, path: str | os.PathLike[str], uri: str) -> None:
        from orchestrator_ext import s3

        s3.upload_file(self.client, path, uri)

    def sha256(self, uri: str) -> str:
        from orchestrator_ext import s3

        return s3.sha256_object(self.client, uri)

    def exists(self, uri: str) -> bool:
        with contextlib.suppress(MissingOutput):
            self._head(uri)
            return True
        return False

    def list(self, folder: str, suffix: str = "") -> list[str]:
        from orchestrator_ext import s3

        bucket, prefix = s3.split_s3_uri(folder)
        prefix = prefix.rstrip("/") + "/" if prefix else ""
        objects = s3.list_objects(self.client, bucket, prefix, what=folder)
        return sorted(o.uri for o in objects if o.key.endswith(suffix))

    def occupied(self, folder: str) -> bool:
        from orchestrator_ext import s3

        bucket, prefix = s3.split_s3_uri(folder)
        prefix = prefix.rstrip("/") + "/" if prefix else ""
        objects = s3.list_objects(self.client, bucket, prefix, page_size=1, what=folder)
        return next(iter(objects), None) is not None

    def remove(self, uri: str) -> int:
        from orchestrator_ext import s3

        removed = s3.delete_prefix(self.client, uri)
        if self.exists(uri):
            bucket, key = s3.split_s3_uri(uri)
            with s3.translated_errors(self.client, bucket):
                self.client.delete_object(Bucket=bucket, Key=key)
            removed += 1
        return removed

    def _head(self, uri: str) -> dict[str, Any]:
        from orchestrator_ext import s3

        bucket, key = s3.split_s3_uri(uri)
        with s3.translated_errors(self.client, bucket), s3.missing_key_as(uri):
            return dict(self.client.head_object(Bucket=bucket, Key=key))

    def _tail(self, uri: str, size: int) -> tuple[bytes, int]:
        from orchestrator_ext import s3

        length = int(self._head(uri)["ContentLength"])
        bucket, key = s3.split_s3_uri(uri)
        start = max(0, length - size)
        with s3.translated_errors(self.client, bucket), s3.missing_key_as(uri):
            body = self.client.get_object(Bucket=bucket, Key=key, Range=f"bytes={start}-")
            return body["Body"].read(), length


@contextlib.contextmanager
def local_copy(uri: str, location: Location | None = None) -> Iterator[str]:
    """A local path holding the file's bytes: the file itself if local, else a temporary
    download removed afterwards (for readers that need a path, e.g. scanning Parquet)."""
    if not is_remote(uri):
        yield uri
        return
    import tempfile

    location = location or location_of(uri)
    with tempfile.TemporaryDirectory(prefix="orchestrator-") as tmp:
        path = os.path.join(tmp, uri.rsplit("/", 1)[-1])
        Path(path).write_bytes(location.read_bytes(uri))
        yield path
