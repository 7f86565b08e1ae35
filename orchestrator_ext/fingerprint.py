"""The input's fingerprint: what the item source looked like when it was planned.

A plan records a listing of the source, and the Snakefile hands the listing's sha256 to the
partition as a param, so Snakemake's params rerun trigger re-partitions when a file was
rewritten, added or removed. One entry per file::

    local file       {"path": ..., "bytes": ..., "mtime_ns": ...}
    S3 data object   {"path": "s3://...", "bytes": ..., "etag": ...}
    s3-keys source   one summary: {"path": uri, "objects": n, "bytes": total,
                     "keys_sha256": sha256 over every key, size and ETag}

Local files are compared by size and modification time (not content: hashing terabytes at
every start would cost more than the run); a file rewritten in place gets a new mtime. S3
objects are compared by ETag, which changes with every upload of new content.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from typing import Any

from orchestrator_ext.config import InputSpec
from orchestrator_ext.location import is_remote


def input_listing(spec: InputSpec, client: Any = None) -> list[dict[str, Any]]:
    """The fingerprint entries of every file (or object) the source names, in read order.

    Raises:
        InputError: nothing matches. S3Error: the bucket or endpoint is unreachable.
    """
    if spec.format == "s3-keys" or is_remote(spec.uri):
        from orchestrator_ext.s3 import make_s3_client
        from orchestrator_ext.s3_input import keys_listing, match_objects

        client = client or make_s3_client()
        if spec.format == "s3-keys":
            return keys_listing(spec.uri, match_objects(client, spec.uri, folder=True))
        objects = match_objects(client, spec.uri)
        return [{"path": o.uri, "bytes": o.size, "etag": o.etag} for o in objects]
    from orchestrator_ext.items import list_input_files

    return [local_entry(path) for path in list_input_files(spec.uri)]


def local_entry(path: str) -> dict[str, Any]:
    """The listing entry of local file ``path`` as it is now.

    Raises:
        OSError: the file cannot be stat'ed.
    """
    stat = os.stat(path)
    return {"path": path, "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def listing_sha256(listing: list[dict[str, Any]]) -> str:
    """sha256 of a listing in canonical JSON: equal listings, equal fingerprints."""
    text = json.dumps(listing, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


@functools.cache
def current_fingerprint(spec: InputSpec) -> str:
    """``listing_sha256`` of the source as it is now, once per process (the Snakefile asks
    for it whenever the partition job's params are read)."""
    return listing_sha256(input_listing(spec))
