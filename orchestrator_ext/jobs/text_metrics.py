"""Per-item text metrics (a concat job in batch mode).

Config::

    job:
      function: orchestrator_ext.jobs.text_metrics:measure
      params: {text_column: text}
    merge: {mode: concat}

Output: one row per item with ``id``, ``words``, ``chars``, ``lines`` and ``sha256`` (hex
digest of the UTF-8 text). An item whose text is null is a permanent error: the framework
bisects the batch down to it, dead-letters it and keeps the rest.
"""

from __future__ import annotations

import hashlib

import polars as pl

from orchestrator_ext.errors import PermanentError
from orchestrator_ext.job import JobContext


def measure(batch: pl.DataFrame, ctx: JobContext) -> pl.DataFrame:
    """Word, character and line counts and the sha256 of each item's text."""
    column = ctx.params.get("text_column", "text")
    id_column = ctx.params.get("id_column", "id")
    text = batch.get_column(column)
    if text.null_count():
        raise PermanentError(f"{text.null_count()} item(s) have no {column!r}")
    digests = [hashlib.sha256(t.encode()).hexdigest() for t in text.to_list()]
    return batch.select(
        pl.col(id_column),
        pl.col(column).str.extract_all(r"\S+").list.len().cast(pl.Int64).alias("words"),
        pl.col(column).str.len_chars().cast(pl.Int64).alias("chars"),
        (pl.col(column).str.count_matches("\n") + 1).cast(pl.Int64).alias("lines"),
        pl.Series("sha256", digests, dtype=pl.String),
    )
