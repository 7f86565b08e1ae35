"""Concat merge of 10 million rows: peak memory of one merge node against its largest child.

A benchmark, not a test. ``--rows`` rows (``id`` Int64, ``value`` Int64, ``digest`` a
64-character hex string, like the CPU benchmark's output) are split into ``--children``
Parquet files, each with its record, as batch results are. Then, each in a fresh process
under ``/usr/bin/time -v``:

* **merge**: ``orchestrator_ext.merge.merge_node`` in concat mode over the children
  (checksums verified, streamed into one Parquet file, record and state written), as the
  ``merge_level`` rule runs it;
* **baseline**: the same process up to the merge (interpreter, imports, config, state
  store), so that ``peak - baseline`` is what the merge itself holds;
* **read-all**: ``polars.concat`` of every child read whole, then written: what a merge
  without streaming holds, for comparison.

The largest child's size is its decoded in-memory (Arrow) size. Run from the repository
root::

    .venv/bin/python bench/merge_memory.py             # 10 million rows, 4 children
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402 - after the path tweak above
    machine_line,
    run_and_report,
    timed_run,
    venv_env,
)

NAME = "merge_memory"
TARGET = 2.0


def write_children(work: Path, n_rows: int, n_children: int) -> list[tuple[str, str]]:
    """Children like batch results: Parquet files (zstd) and records with their sha256."""
    import polars as pl

    from orchestrator_ext.storage import file_facts

    size = -(-n_rows // n_children)
    children = []
    for index in range(n_children):
        start = index * size
        ids = pl.int_range(start, min(start + size, n_rows), dtype=pl.Int64, eager=True)
        frame = pl.DataFrame({"id": ids}).with_columns(
            value=(pl.col("id") * 7919) % 10_000,
            digest=pl.concat_str(
                [pl.col("id").hash(seed=s).cast(pl.String).str.zfill(20) for s in range(4)]
            ).str.slice(0, 64),
        )
        data = work / f"batch-{index:05d}.parquet"
        frame.write_parquet(data, compression="zstd", statistics=True)
        record = work / f"batch-{index:05d}.json"
        record.write_text(json.dumps({"batch_id": f"{index:05d}", **file_facts(data)}))
        children.append((str(data), str(record)))
    return children


def run_node(mode: str, work: Path, children: list[tuple[str, str]]) -> None:
    """The measured process (``--node MODE``)."""
    # pyarrow too: a concat merge imports it when it starts (not when the module loads), and
    # the baseline should hold everything but the merge's data.
    import pyarrow.parquet  # noqa: F401

    from orchestrator_ext.config import load_config
    from orchestrator_ext.merge import merge_node
    from orchestrator_ext.state.sqlite import SqliteStateStore

    config = load_config(
        {
            "run_id": "merge",
            "output_root": str(work / "results"),
            "input": {"uri": "unused.parquet", "format": "parquet"},
            "job": {"function": "orchestrator_ext.jobs.hash_chain:hash_chain_item"},
            "merge": {"mode": "concat", "fan_in": max(2, len(children))},
        }
    )
    store = SqliteStateStore(work / f"state-{os.getpid()}.sqlite", config.run_id)
    try:
        if mode == "baseline":
            return
        if mode == "read-all":
            import polars as pl

            frames = [pl.read_parquet(data) for data, _ in children]
            pl.concat(frames).write_parquet(work / "read-all.parquet", compression="zstd")
            return
        merge_node(
            config, store, "merge-L1-part-00000", 1, 0, children,
            str(work / "part-00000.parquet"), str(work / "part-00000.json"), is_root=False,
        )  # fmt: skip
    finally:
        store.close()


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import pyarrow.parquet as pq

    children = write_children(work, args.rows, args.children)
    (work / "children.json").write_text(json.dumps(children))
    sizes = [pq.read_table(data).nbytes for data, _ in children]
    disk = [Path(data).stat().st_size for data, _ in children]
    me = str(Path(__file__).resolve())
    peaks: dict[str, list[float]] = {"baseline": [], "merge": [], "read-all": []}
    walls: dict[str, list[float]] = {k: [] for k in peaks}
    for _ in range(args.repeats):
        for mode in peaks:
            cmd = [sys.executable, me, "--node", mode, "--workdir", str(work)]
            sample, _ = timed_run(cmd, cwd=work, env=venv_env(), what=mode)
            peaks[mode].append(sample.rss_mib)
            walls[mode].append(sample.wall_s)
            print(f"  {mode:9s} peak {sample.rss_mib:7.0f} MiB  {sample.wall_s:6.2f} s", flush=True)
    rows = pq.ParquetFile(work / "part-00000.parquet").metadata.num_rows
    if rows != args.rows:
        raise SystemExit(f"the merged node has {rows} rows, expected {args.rows}")
    peak = {mode: statistics.median(values) for mode, values in peaks.items()}
    largest = max(sizes) / 2**20
    return {
        "rows": args.rows,
        "children": args.children,
        "largest_child_mib": largest,
        "largest_child_disk_mib": max(disk) / 2**20,
        "total_mib": sum(sizes) / 2**20,
        "peak_mib": peak,
        "wall_s": {mode: statistics.median(values) for mode, values in walls.items()},
        "merge_extra_mib": peak["merge"] - peak["baseline"],
        "read_all_extra_mib": peak["read-all"] - peak["baseline"],
        "ratio": (peak["merge"] - peak["baseline"]) / largest,
        "ratio_peak": peak["merge"] / largest,
    }


def render(results: dict[str, Any], facts: dict[str, str], args: argparse.Namespace) -> str:
    peak, wall = results["peak_mib"], results["wall_s"]
    verdict = "met" if results["ratio"] <= TARGET else "not met"
    return "\n".join(
        [
            "## Concat merge: peak memory of a merge node",
            "",
            f"`bench/merge_memory.py --rows {results['rows']} --children "
            f"{results['children']} --repeats {args.repeats}`. {results['rows']:,} rows "
            "(`id`, `value`, a 64-character hex `digest`) in "
            f"{results['children']} children of {results['largest_child_mib']:.0f} MiB each "
            f"in memory ({results['largest_child_disk_mib']:.0f} MiB of zstd Parquet), "
            "merged by one concat node as the `merge_level` rule does (checksums verified, "
            "streamed, record and state written). Peak RSS by `/usr/bin/time -v`, median of "
            f"{args.repeats}; *baseline* is the same process stopping just before the merge "
            "(interpreter, polars, pyarrow, config, state store).",
            "",
            "| process | peak RSS (MiB) | above baseline (MiB) | wall (s) |",
            "|---|---:|---:|---:|",
            f"| baseline | {peak['baseline']:.0f} | - | {wall['baseline']:.2f} |",
            f"| merge node (ours, streaming) | {peak['merge']:.0f} | "
            f"{results['merge_extra_mib']:.0f} | {wall['merge']:.2f} |",
            f"| read all children, `pl.concat`, write | {peak['read-all']:.0f} | "
            f"{results['read_all_extra_mib']:.0f} | {wall['read-all']:.2f} |",
            "",
            f"**Merge node above baseline / largest child: {results['ratio']:.2f}x** (target "
            f"at most {TARGET:.0f}x: {verdict}); the whole process's peak is "
            f"{results['ratio_peak']:.2f}x the largest child, and the merged data is "
            f"{results['total_mib']:.0f} MiB in memory.",
            "",
            machine_line(facts),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--children", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--no-docs", action="store_true")
    parser.add_argument("--node", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.node:
        children = json.loads((args.workdir / "children.json").read_text())
        run_node(args.node, args.workdir, [tuple(c) for c in children])
        return 0
    return run_and_report(NAME, args, measure, render)


if __name__ == "__main__":
    raise SystemExit(main())
