"""Size and sha256 of the file each item names (a concat job in item mode).

Config::

    input: {uri: files.csv, format: csv, id_column: id}   # a column 'path' per item
    job:
      function: orchestrator_ext.jobs.checksum:checksum_file
      mode: item
      params: {path_column: path}
    tolerance: {max_dead_letter_fraction: 0.01}

A missing or unreadable file raises ``FileNotFoundError``/``PermissionError``: a permanent
error, so that item is dead-lettered and the batch goes on.
"""

from __future__ import annotations

import hashlib
from typing import Any

from orchestrator_ext.job import JobContext

_CHUNK = 1 << 20


def checksum_file(item: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """``{id, path, bytes, sha256}`` of the item's file."""
    path = item[ctx.params.get("path_column", "path")]
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return {
        "id": item[ctx.params.get("id_column", "id")],
        "path": path,
        "bytes": size,
        "sha256": digest.hexdigest(),
    }
