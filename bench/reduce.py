"""Reduce over records: grouped statistics of 10 million rows, ours against one polars query.

A benchmark, not a test: it asserts nothing about time. Input: ``--rows`` rows of
``id`` (Int64), ``group`` (50 Zipf-skewed string keys) and ``value`` (Int64, 0..9999), in
one Parquet file. Sides, each a fresh process timed end to end:

* **polars**: one lazy query, ``scan_parquet(...).group_by("group").agg(count, sum, min,
  max, mean, std)``, written to Parquet.
* **ours**: ``workflow/Snakefile`` with ``profiles/local`` and the shipped grouped_stats
  reduce job (exact integer partials, combined up a tree of fan-in ``--fan-in``) over
  ``--batches`` batches: partition, SQLite state, merge tree, manifest, dashboard. Twice:
  *ranges* with ``batching.row_ranges: true`` (batches are row ranges of the input, read by
  the batch jobs) and *copies* without (the partition writes and hashes a copy of every
  batch).

The two results are compared (count, sum, min, max exactly; mean and std to 1e-9 relative)
before any figure is reported. Where our time goes comes from the state store's task
timestamps. Run from the repository root::

    .venv/bin/python bench/reduce.py                    # 10 million rows, 3 repeats
    .venv/bin/python bench/reduce.py --rows 1000000 --repeats 1 --no-docs
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402 - after the path tweak above
    REPO,
    SNAKEMAKE,
    machine_line,
    median_sample,
    run_and_report,
    timed_run,
    venv_env,
)

NAME = "reduce"
TARGET = 3.0
DEFAULT_ROWS = 10_000_000
GROUPS = 50


def write_rows(path: Path, n_rows: int, seed: int = 0) -> None:
    import numpy as np
    import polars as pl

    rng = np.random.default_rng(seed)
    group_ids = np.minimum(rng.zipf(1.5, n_rows), GROUPS) - 1
    names = pl.Series([f"g{g:02d}" for g in range(GROUPS)])
    pl.DataFrame(
        {
            "id": np.arange(n_rows, dtype=np.int64),
            "group": names.gather(group_ids),
            "value": rng.integers(0, 10_000, n_rows, dtype=np.int64),
        }
    ).write_parquet(path)


def polars_query(items: Path, out: Path) -> None:
    """The one-query baseline (run in its own process by ``--polars``)."""
    import polars as pl

    value = pl.col("value")
    (
        pl.scan_parquet(items)
        .group_by("group")
        .agg(
            pl.len().cast(pl.Int64).alias("count"),
            value.sum().alias("sum"),
            value.min().alias("min"),
            value.max().alias("max"),
            value.mean().alias("mean"),
            value.std(ddof=0).alias("std"),
        )
        .sort("group")
        .collect()
        .write_parquet(out)
    )


def check_equal(ours: Path, reference: Path) -> None:
    import polars as pl
    from polars.testing import assert_frame_equal

    exact = ["group", "count", "sum", "min", "max"]
    got = pl.read_parquet(ours).sort("group")
    want = pl.read_parquet(reference).sort("group")
    assert_frame_equal(got.select(exact), want.select(exact), check_dtypes=False)
    assert_frame_equal(
        got.select("mean", "std"), want.select("mean", "std"), check_exact=False, rel_tol=1e-9
    )


#: Our two configs: batches as row ranges of the input, and as copies of its rows.
SIDES = {"ranges": True, "copies": False}


def prepare_ours(
    root: Path, items: Path, n_rows: int, n_batches: int, fan_in: int, row_ranges: bool
) -> Path:
    import yaml

    root.mkdir(parents=True, exist_ok=True)
    config = {
        "run_id": "reduce",
        "output_root": "results",
        "input": {"uri": str(items), "format": "parquet", "id_column": "id"},
        "batching": {"max_items": -(-n_rows // n_batches), "row_ranges": row_ranges},
        "job": {
            "function": "orchestrator_ext.jobs.grouped_stats:partial",
            "combine": "orchestrator_ext.jobs.grouped_stats:combine",
            "finalize": "orchestrator_ext.jobs.grouped_stats:finalize",
            "params": {"group_column": "group", "value_column": "value"},
        },
        "merge": {"fan_in": fan_in, "mode": "reduce"},
        "state": {"backend": "sqlite"},
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def phases(state_db: Path, started: float) -> dict[str, float]:
    """Seconds from the command's start to each phase's end, from task timestamps."""
    with sqlite3.connect(state_db) as db:
        rows = db.execute("SELECT task_id, started_at, finished_at FROM tasks").fetchall()

    def at(stamp: str) -> float:
        return dt.datetime.fromisoformat(stamp).timestamp() - started

    tasks = {task: (at(s), at(f)) for task, s, f in rows if s and f}
    batches = [v for k, v in tasks.items() if k.startswith("batch-")]
    return {
        "partition_start": tasks["partition"][0],
        "partition_end": tasks["partition"][1],
        "batches_end": max(end for _, end in batches),
        "batch_busy_s": sum(end - start for start, end in batches),
        "final_end": tasks["final"][1],
        "manifest_end": tasks["manifest"][1],
    }


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    items = work / "items.parquet"
    t0 = time.perf_counter()
    write_rows(items, args.rows)
    print(f"[{args.rows:,} rows] written in {time.perf_counter() - t0:.1f} s", flush=True)
    env = venv_env()
    polars_dir = work / "polars"
    polars_dir.mkdir()
    polars_cmd = [sys.executable, str(Path(__file__).resolve()), "--polars", str(items),
                  str(polars_dir / "result.parquet")]  # fmt: skip
    commands = {}
    for side, row_ranges in SIDES.items():
        configfile = prepare_ours(
            work / side, items, args.rows, args.batches, args.fan_in, row_ranges
        )
        commands[side] = [SNAKEMAKE, "--snakefile", str(REPO / "workflow" / "Snakefile"),
                          "--profile", str(REPO / "profiles" / "local"),
                          "--configfile", str(configfile), "--cores", str(args.workers),
                          "--quiet", "all"]  # fmt: skip
    samples: dict[str, list[Any]] = {"polars": [], **{side: [] for side in SIDES}}
    timelines: dict[str, list[dict[str, float]]] = {side: [] for side in SIDES}
    loads = [os.getloadavg()[0]]
    for _ in range(args.repeats):
        sample, _ = timed_run(polars_cmd, cwd=polars_dir, env=env, what="polars")
        samples["polars"].append(sample)
        for side, command in commands.items():
            ours_dir = work / side
            for entry in ours_dir.iterdir():
                if entry.name != "config.yaml":
                    shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
            started = time.time()
            sample, _ = timed_run(command, cwd=ours_dir, env=env, what=f"ours ({side})")
            samples[side].append(sample)
            loads.append(os.getloadavg()[0])
            run_dir = ours_dir / "results" / "reduce"
            check_equal(run_dir / "final" / "result.parquet", polars_dir / "result.parquet")
            timeline = phases(run_dir / "state.sqlite", started) | {"wall_s": sample.wall_s}
            timelines[side].append(timeline)
        print(
            f"  polars {samples['polars'][-1].wall_s:6.2f} s   "
            + "   ".join(f"{side} {samples[side][-1].wall_s:6.2f} s" for side in SIDES),
            flush=True,
        )
    results: dict[str, Any] = {
        "rows": args.rows,
        "batches": args.batches,
        "fan_in": args.fan_in,
        "workers": args.workers,
        "input_mib": items.stat().st_size / 2**20,
        "load_avg_1min": [min(loads), max(loads)],
        "polars": median_sample(samples["polars"]),
    }
    for side in SIDES:
        ours = median_sample(samples[side])
        results[side] = ours
        # the run nearest the median, to tell where a typical run's time goes
        results[f"{side}_timeline"] = min(
            timelines[side], key=lambda t: abs(t["wall_s"] - ours["wall_s"])
        )
        results[f"{side}_ratio"] = ours["wall_s"] / results["polars"]["wall_s"]
    return results


def render(results: dict[str, Any], facts: dict[str, str], args: argparse.Namespace) -> str:
    base = results["polars"]
    rows = [
        f"| {side} | {r['wall_s']:.2f} | {r['cpu_s']:.1f} | {r['rss_mib']:.0f} |"
        for side, r in [("polars", base), *((f"ours, {s}", results[s]) for s in SIDES)]
    ]
    ratios = ", ".join(
        f"{side} **{results[f'{side}_ratio']:.1f}x**"
        f" ({'met' if results[f'{side}_ratio'] <= TARGET else 'not met'})"
        for side in SIDES
    )
    return "\n".join(
        [
            f"## Reduce: grouped statistics of {results['rows'] / 1e6:,.0f} million rows",
            "",
            f"`bench/reduce.py --rows {results['rows']} --batches {results['batches']} "
            f"--fan-in {results['fan_in']} --repeats {args.repeats}`. {results['rows']:,} "
            f"rows (`id`, `group` with {GROUPS} skewed keys, integer `value`; "
            f"{results['input_mib']:.0f} MiB of Parquet). *polars*: one lazy query "
            "(`scan_parquet` → `group_by` → count, sum, min, max, mean, std); *ours*: the "
            f"whole run with `profiles/local` on {results['workers']} cores, grouped_stats "
            f"over {results['batches']} batches, fan-in {results['fan_in']}, with "
            "`batching.row_ranges: true` (*ranges*: the batches are row ranges of the input) "
            "and without (*copies*: the partition writes and hashes a copy of each batch). "
            "Every result is checked equal to polars' (exact integers; mean and std to "
            f"1e-9). Medians of {args.repeats} runs, each a fresh process.",
            "",
            "| side | wall (s) | CPU (s) | peak RSS (MiB) |",
            "|---|---:|---:|---:|",
            *rows,
            "",
            f"**ours / polars:** {ratios}; target at most {TARGET:.0f}x.",
            "",
            "Where our time goes (one run near the median, seconds since the command "
            "started): Snakemake start-up and parsing until the partition starts; partition "
            "(read and check the ids; copies: write and hash the batch files) until its end; "
            "batches (busy time inside the jobs); merge tree; manifest; dashboard and exit.",
            "",
            "| side | partition starts | partition ends | batches end (busy s) | final | "
            "manifest | exit |",
            "|---|---:|---:|---:|---:|---:|---:|",
            *(_timeline_row(side, results[f"{side}_timeline"]) for side in SIDES),
            "",
            machine_line(facts, results["load_avg_1min"]),
        ]
    )


def _timeline_row(side: str, t: dict[str, float]) -> str:
    return (
        f"| {side} | {t['partition_start']:.1f} | {t['partition_end']:.1f} | "
        f"{t['batches_end']:.1f} ({t['batch_busy_s']:.1f}) | {t['final_end']:.1f} | "
        f"{t['manifest_end']:.1f} | {t['wall_s']:.1f} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--fan-in", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the runs here")
    parser.add_argument("--no-docs", action="store_true")
    parser.add_argument("--polars", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.polars:
        polars_query(*args.polars)
        return 0
    # Another size is another workload (issue 14: 300 million rows), with a section of its own.
    name = NAME if args.rows == DEFAULT_ROWS else f"{NAME} --rows {args.rows}"
    return run_and_report(name, args, measure, render)


if __name__ == "__main__":
    raise SystemExit(main())
