"""Atomic local writes, checksums and the small JSON records that sit beside every output.

Every output is written to a temporary name in its final folder and renamed into place
only when the writer finished without error, so a crash never leaves a half-written file
under a name a later run would trust. Each data file gets a record (``<name>.json``) with
its sha256, written after the data file; readers check the data against the record.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from orchestrator_ext.errors import ChecksumMismatch, CorruptFile, MissingOutput

_CHUNK = 1 << 20


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    The temporary file is removed when the block raises, so nothing partial survives.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Return the hex sha256 of a file's bytes.

    Raises:
        MissingOutput: the file does not exist.
    """
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    except FileNotFoundError:
        raise MissingOutput(f"file not found: {path}") from None
    return digest.hexdigest()


def record_text(data: Any) -> str:
    """The text of one of the run's JSON records: indented, key-sorted, one final newline.
    Every writer uses it, so a record's sha256 can be recomputed from its content."""
    return json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Write ``data`` as a record (``record_text``), atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(record_text(data))


def parse_json_object(data: str | bytes, source: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse the text of one of the run's JSON records, which are all JSON objects.

    Args:
        data: the file's text or bytes.
        source: where ``data`` came from (a path or ``s3://`` URI), named in the error.

    Raises:
        CorruptFile: ``data`` is not valid JSON or not a JSON object.
    """
    # Every reader of the run's records goes through here so that a damaged file (a torn
    # copy, a hand edit) is one line naming the file instead of a JSONDecodeError traceback.
    regenerate = "delete it and rerun to regenerate it"
    try:
        value = json.loads(data)
    except json.JSONDecodeError as exc:
        raise CorruptFile(
            f"{source} is not valid JSON (line {exc.lineno} column {exc.colno}: {exc.msg}); "
            f"{regenerate}"
        ) from None
    except UnicodeDecodeError as exc:
        raise CorruptFile(
            f"{source} is not valid JSON (not UTF-8 text at byte {exc.start}); {regenerate}"
        ) from None
    if not isinstance(value, dict):
        raise CorruptFile(
            f"{source} is not a JSON object (it holds a {type(value).__name__}); {regenerate}"
        )
    return value


def read_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read one of the run's JSON records (a plan, a batch or merge record, a manifest).

    Raises:
        MissingOutput: the file does not exist.
        CorruptFile: the file is not valid JSON or not a JSON object.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise MissingOutput(f"file not found: {path}") from None
    return parse_json_object(data, path)


def file_facts(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``{"sha256": ..., "bytes": ...}`` of a file."""
    return {"sha256": sha256_file(path), "bytes": os.path.getsize(path)}


def verify_checksum(path: str | os.PathLike[str], expected_sha256: str, what: str) -> None:
    """Check a file's sha256 against the one recorded when it was written.

    Args:
        path: the file to hash.
        expected_sha256: the recorded checksum.
        what: how to name the file in the error (e.g. ``batch 00003 result``).

    Raises:
        ChecksumMismatch: the bytes changed since they were recorded.
        MissingOutput: the file is gone.
    """
    actual = sha256_file(path)
    if actual != expected_sha256:
        raise ChecksumMismatch(
            f"checksum mismatch for {what} ({path}): recorded sha256 {expected_sha256[:12]}..., "
            f"file has {actual[:12]}...; the file changed after it was written. Delete it and "
            "rerun to regenerate it"
        )
