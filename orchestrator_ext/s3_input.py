"""Items from S3: data files named by a key glob, or one item per object (``s3-keys``).

``input.uri`` forms:

- ``s3://bucket/data/*.parquet`` (format parquet, csv or jsonl): the objects whose keys
  match the pattern, read in key order. The pattern is matched with ``fnmatch`` against the
  whole key, so ``*`` also spans ``/``. Only the prefix before the first glob character is
  listed (paginated ListObjectsV2).
- ``s3://bucket/data/part-0.parquet``: that one object. ``s3://bucket/data/`` (trailing
  slash): every object under the folder.
- ``s3://bucket/prefix`` with ``format: s3-keys``: every object under the folder
  ``prefix/`` (or under a key glob) is one item, with columns ``id`` (the key), ``key``,
  ``size`` and ``etag``, in key order.

``items.open_items`` (and ``read_items``) read what is listed here; everything runs inside
the partition job, never when the Snakefile is parsed.
"""

from __future__ import annotations

import fnmatch
import hashlib
from typing import Any

import polars as pl

from orchestrator_ext.errors import InputError
from orchestrator_ext.s3 import (
    MAX_PAGE_SIZE,
    S3Object,
    glob_prefix,
    has_glob,
    list_objects,
    split_s3_uri,
)

S3_KEYS_SCHEMA = {"id": pl.String, "key": pl.String, "size": pl.Int64, "etag": pl.String}


def match_objects(
    client: Any, uri: str, folder: bool = False, page_size: int = MAX_PAGE_SIZE
) -> list[S3Object]:
    """The objects ``uri`` names, sorted by key.

    Args:
        client: an S3 client (``make_s3_client``).
        uri: ``s3://bucket/pattern``: a key glob, a single key, or a folder ending in ``/``.
        folder: treat a ``uri`` without glob characters as a folder (``s3-keys``).
        page_size: ListObjectsV2 page size (at most 1000).

    Raises:
        InputError: nothing matches. S3Error: missing bucket, endpoint or credentials.
    """
    bucket, pattern = split_s3_uri(uri)
    what = f"input.uri {uri}"
    if has_glob(pattern):
        listed = list_objects(client, bucket, glob_prefix(pattern), page_size, what)
        objects = [o for o in listed if fnmatch.fnmatchcase(o.key, pattern)]
    elif folder or not pattern or pattern.endswith("/"):
        prefix = pattern if not pattern or pattern.endswith("/") else f"{pattern}/"
        objects = list(list_objects(client, bucket, prefix, page_size, what))
    else:
        listed = list_objects(client, bucket, pattern, page_size, what)
        objects = [o for o in listed if o.key == pattern]
    if not objects:
        raise InputError(f"input.uri matches no S3 object: {uri}")
    return sorted(objects, key=lambda o: o.key)


def keys_frame(objects: list[S3Object]) -> pl.DataFrame:
    """One item per object: ``id`` (= key), ``key``, ``size``, ``etag``."""
    return pl.DataFrame(
        {
            "id": [o.key for o in objects],
            "key": [o.key for o in objects],
            "size": [o.size for o in objects],
            "etag": [o.etag for o in objects],
        },
        schema=S3_KEYS_SCHEMA,
    )


def keys_listing(uri: str, objects: list[S3Object]) -> list[dict[str, Any]]:
    """The plan's listing of an ``s3-keys`` source: one summary row, not one per key (the
    items themselves are the keys), with a checksum over every key, size and etag."""
    digest = hashlib.sha256()
    for o in objects:
        digest.update(f"{o.key}\t{o.size}\t{o.etag}\n".encode())
    return [
        {
            "path": uri,
            "objects": len(objects),
            "bytes": sum(o.size for o in objects),
            "keys_sha256": digest.hexdigest(),
        }
    ]
