"""Word count over a text column (a reduce job).

Config::

    job:
      function: orchestrator_ext.jobs.word_count:count_words
      combine: orchestrator_ext.jobs.word_count:combine
      params: {text_column: text}
    merge: {mode: reduce}

Words are runs of letters, digits and apostrophes, lower-cased.
"""

from __future__ import annotations

import polars as pl

from orchestrator_ext.job import JobContext

WORD_PATTERN = r"[\p{L}\p{N}']+"


def count_words(batch: pl.DataFrame, ctx: JobContext) -> pl.DataFrame:
    """Occurrences of every word in the batch."""
    column = ctx.params.get("text_column", "text")
    words = batch.select(
        pl.col(column).fill_null("").str.to_lowercase().str.extract_all(WORD_PATTERN).alias("word")
    ).explode("word")
    return (
        words.drop_nulls("word")
        .group_by("word")
        .agg(pl.len().cast(pl.Int64).alias("count"))
        .sort("word")
    )


def combine(partials: pl.DataFrame, ctx: JobContext) -> pl.DataFrame:
    """Add the counts of equal words."""
    return partials.group_by("word").agg(pl.col("count").sum()).sort("word")
