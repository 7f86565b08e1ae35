"""Synthetic example input: records with a skewed group, an integer value and some text.

Deterministic for a given seed, so examples and tests are reproducible.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

WORDS = [
    "alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa",
    "lambda", "mu", "nu", "xi", "omicron", "pi", "rho", "sigma", "tau", "upsilon", "phi",
    "chi", "psi", "omega",
]  # fmt: skip


def make_records(n_items: int, seed: int = 0, groups: int = 50) -> pl.DataFrame:
    """``n_items`` records: ``id``, ``group`` (Zipf-skewed), ``value`` (0..9999), ``weight``
    (heavy-tailed cost) and ``text`` (3-12 words)."""
    rng = np.random.default_rng(seed)
    group_ids = np.minimum(rng.zipf(1.5, n_items), groups) - 1
    lengths = rng.integers(3, 13, n_items)
    word_ids = rng.integers(0, len(WORDS), int(lengths.sum()))
    words = np.array(WORDS)[word_ids]
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    text = [" ".join(words[bounds[i] : bounds[i + 1]]) for i in range(n_items)]
    return pl.DataFrame(
        {
            "id": np.arange(n_items, dtype=np.int64),
            "group": [f"g{g:02d}" for g in group_ids],
            "value": rng.integers(0, 10_000, n_items, dtype=np.int64),
            "weight": np.round(rng.pareto(1.2, n_items) + 1.0, 3),
            "text": text,
        }
    )


def write_records(path: str | Path, n_items: int, seed: int = 0) -> Path:
    """Write example records to ``path`` (format from its suffix: .parquet, .csv, .jsonl)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = make_records(n_items, seed)
    if path.suffix == ".csv":
        frame.write_csv(path)
    elif path.suffix == ".jsonl":
        frame.write_ndjson(path)
    else:
        frame.write_parquet(path)
    return path
