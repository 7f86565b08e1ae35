"""Partition of 20 million rows: peak memory and wall time of the partition job, streaming
against the code before it, which read the whole input into one frame.

A benchmark, not a test. ``--rows`` rows (a unique ``id``, a 100-byte ``text``, an Int32
``group``) are written to one zstd Parquet file in a temporary folder under /tmp (or
``--workdir``), once with integer ids and once with string ids like ``item-000000001``, and
(unless ``--no-csv``) as CSV with integer ids. Then, each in a fresh process under
``/usr/bin/time -v``:

* **partition**: ``orchestrator_ext.partition.partition_items`` as the ``partition_items``
  rule runs it (the job imported, SQLite state store, batches of ``--max-items`` with their
  checksums, ``plan.json``), with this checkout's code (*streaming*) and with the code of
  ``--before`` (*before*: extracted with ``git archive``, imported through ``PYTHONPATH``);
* **plan**: the streaming code's planning alone (``open_items``, ``read_columns``,
  ``batch_numbers``): all a partition would do that wrote batches as row ranges of the
  input instead of copies, so the difference is what writing the copies costs;
* **baseline**: the same process up to the partition (interpreter, imports, config, state
  store).

Both codes must write the same batch files (their sha256 are compared). Run from the
repository root::

    .venv/bin/python bench/partition_memory.py             # 20 million rows, about 8 min
    .venv/bin/python bench/partition_memory.py --rows 1000000 --no-csv --no-docs
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402 - after the path tweak above
    REPO,
    machine_line,
    run_and_report,
    timed_run,
    venv_env,
)

NAME = "partition_memory"
TARGET_MIB = 1024
#: The last commit whose partition read the whole input into one frame.
BEFORE = "d8486ff"


def write_inputs(work: Path, n_rows: int, csv: bool) -> dict[str, tuple[Path, str]]:
    """The inputs by case name: (path, format)."""
    import polars as pl

    idx = pl.int_range(0, n_rows, dtype=pl.Int64, eager=True).alias("id")
    # 100 bytes: a letter (so that CSV reads it as text), then the digits of six hashes of
    # the id, which zstd cannot shrink much.
    digits = [pl.col("id").hash(seed=seed).cast(pl.String) for seed in range(6)]
    frame = pl.DataFrame([idx]).with_columns(
        text=pl.concat_str([pl.lit("t"), *digits]).str.slice(0, 100).str.pad_end(100, "x"),
        group=(pl.col("id") % 1000).cast(pl.Int32),
    )
    inputs = {"int": (work / "int-ids.parquet", "parquet")}
    frame.write_parquet(inputs["int"][0])
    if csv:
        inputs["csv"] = (work / "int-ids.csv", "csv")
        frame.write_csv(inputs["csv"][0])
    inputs["string"] = (work / "string-ids.parquet", "parquet")
    ids = pl.lit("item-") + (pl.col("id") + 10**9).cast(pl.String).str.slice(1)
    frame.with_columns(ids.alias("id")).write_parquet(inputs["string"][0])
    return inputs


def run_node(args: argparse.Namespace) -> None:
    """The measured process (``--node MODE``)."""
    from orchestrator_ext.config import load_config
    from orchestrator_ext.partition import partition_items
    from orchestrator_ext.state.sqlite import SqliteStateStore

    out = args.workdir
    config = load_config(
        {
            "run_id": "bench",
            "output_root": str(out / "results"),
            "input": {"uri": str(args.input), "format": args.format, "id_type": args.id_type},
            "batching": {"max_items": args.max_items},
            "job": {"function": "orchestrator_ext.jobs.hash_chain:hash_chain_item"},
            "merge": {"mode": "concat", "fan_in": 10},
        }
    )
    store = SqliteStateStore(out / "state.sqlite", config.run_id)
    try:
        if args.node == "plan":
            from orchestrator_ext.items import open_items
            from orchestrator_ext.partition import batch_numbers, plan_columns

            with open_items(config.input) as source:
                rows = source.read_columns(plan_columns(source.schema, config.batching))
                numbers = batch_numbers(rows, config.batching)
            (out / "plan-only.json").write_text(json.dumps({"items": len(numbers)}))
        elif args.node == "partition":
            partition_items(config, store, out / "batches")
    finally:
        store.close()


def extract_before(work: Path, rev: str) -> Path:
    """The package as of commit ``rev``, for ``PYTHONPATH``."""
    folder = work / "before"
    folder.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", rev, "orchestrator_ext"],
        capture_output=True,
        check=True,
    )
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return folder


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    started = time.perf_counter()
    inputs = write_inputs(work, args.rows, csv=not args.no_csv)
    generate_s = time.perf_counter() - started
    before = extract_before(work, args.before)
    codes = {"streaming": venv_env(), "before": venv_env(PYTHONPATH=str(before))}
    me = str(Path(__file__).resolve())
    cases: dict[str, Any] = {}
    loads = []
    for case, (path, fmt) in inputs.items():
        runs: dict[str, Any] = {}
        modes = [("streaming", "baseline"), ("streaming", "plan"), ("streaming", "partition")]
        modes += [("before", "baseline"), ("before", "partition")]
        for code, mode in modes:
            out = work / "runs" / f"{case}-{code}-{mode}"
            out.mkdir(parents=True)
            cmd = [
                sys.executable, me, "--node", mode, "--workdir", str(out), "--input", str(path),
                "--format", fmt, "--max-items", str(args.max_items),
            ]  # fmt: skip
            if fmt == "csv":
                cmd += ["--id-type", "integer"]
            loads.append(os.getloadavg()[0])
            sample, _ = timed_run(cmd, cwd=work, env=codes[code], what=f"{case} {code} {mode}")
            run = {"peak_mib": sample.rss_mib, "wall_s": sample.wall_s, "cpu_s": sample.cpu_s}
            if mode == "partition":
                plan = json.loads((out / "batches" / "plan.json").read_text())
                run["batches"] = plan["n_batches"]
                run["items"] = plan["items"]
                run["batch_bytes"] = sum(b["bytes"] for b in plan["batches"])
                run["sha256"] = [b["sha256"] for b in plan["batches"]]
            runs[f"{code} {mode}"] = run
            shutil.rmtree(out)  # a partition's batches are as large as its input
            print(
                f"  {case:6s} {code:9s} {mode:9s} peak {sample.rss_mib:6.0f} MiB  "
                f"{sample.wall_s:6.1f} s",
                flush=True,
            )
        streamed, whole = runs["streaming partition"], runs["before partition"]
        if streamed["items"] != args.rows:
            raise SystemExit(
                f"{case}: the partition has {streamed['items']} items, not {args.rows}"
            )
        cases[case] = {
            "format": fmt,
            "input_bytes": path.stat().st_size,
            "identical": streamed.pop("sha256") == whole.pop("sha256"),
            "runs": runs,
        }
    return {
        "rows": args.rows,
        "max_items": args.max_items,
        "before": args.before,
        "generate_s": generate_s,
        "cases": cases,
        "loads": loads,
    }


def render(results: dict[str, Any], facts: dict[str, str], args: argparse.Namespace) -> str:
    labels = {"int": "Parquet, integer ids", "string": "Parquet, string ids", "csv": "CSV"}
    lines = [
        "## Partition: peak memory of the partition job",
        "",
        f"`bench/partition_memory.py --rows {results['rows']} --max-items "
        f"{results['max_items']}{' --no-csv' if args.no_csv else ''}`. {results['rows']:,} "
        "rows (a unique `id`, a 100-byte `text`, an Int32 `group`) in one file (Parquet; "
        "CSV with integer ids read with `id_type: integer`), partitioned into "
        f"batches of {results['max_items']:,} by `partition_items` in a fresh process, as the "
        "`partition_items` rule runs it (batch files with checksums, `plan.json`, SQLite "
        "state). *before*: the code of "
        f"`{results['before']}`, which read the whole input into one frame; *streaming*: this "
        "code, which plans from the id column and then writes each batch as its rows stream "
        "by; *plan only*: the streaming code's planning without writing any batch (ids read "
        "and checked, batch numbers). Peak RSS by `/usr/bin/time -v`; *baseline* is the same "
        "process stopping before the partition (interpreter, imports, config, state store).",
        "",
        "| input | code | peak RSS (MiB) | above baseline (MiB) | wall (s) | written (MiB) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    verdicts, notes = [], []
    for case, result in results["cases"].items():
        runs = result["runs"]
        for code, mode, label in (
            ("before", "partition", "before"),
            ("streaming", "partition", "streaming"),
            ("streaming", "plan", "streaming, plan only"),
        ):
            run, base = runs[f"{code} {mode}"], runs[f"{code} baseline"]
            written = f"{run['batch_bytes'] / 2**20:,.0f}" if "batch_bytes" in run else "-"
            lines.append(
                f"| {labels[case]} | {label} | {run['peak_mib']:,.0f} | "
                f"{run['peak_mib'] - base['peak_mib']:,.0f} | {run['wall_s']:.1f} | {written} |"
            )
        streamed, plan = runs["streaming partition"], runs["streaming plan"]
        verdicts.append(f"{streamed['peak_mib']:,.0f} MiB ({labels[case]})")
        copies_s = streamed["wall_s"] - plan["wall_s"]
        notes.append(
            f"{labels[case]}: the {streamed['batches']:,} batch files are "
            f"{'identical' if result['identical'] else '**not identical**'} to before's; "
            f"writing them (reading every row, {streamed['batch_bytes'] / 2**20:,.0f} MiB of "
            f"zstd Parquet for a {result['input_bytes'] / 2**20:,.0f} MiB input) takes "
            f"{copies_s:.1f} of the partition's {streamed['wall_s']:.1f} s"
        )
    peak = max(c["runs"]["streaming partition"]["peak_mib"] for c in results["cases"].values())
    verdict = "met" if peak <= TARGET_MIB else "not met"
    lines += [
        "",
        f"**Peak RSS of the streaming partition: {', '.join(verdicts)}** (target at most "
        f"{TARGET_MIB:,} MiB: {verdict}).",
        "",
        "What writing copies costs, against batches that would be row ranges of the input "
        "(the plan only): " + "; ".join(notes) + ". Row-range batches would write a few "
        "kilobytes of plan instead, but every batch job would then read its rows out of the "
        "input (and out of S3 for an input there), and a rewritten input file would change "
        "batches already planned; the batch files stay copies.",
        "",
        f"Generating the inputs took {results['generate_s']:.0f} s (not measured above).",
        "",
        machine_line(facts, results["loads"]),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20_000_000)
    parser.add_argument("--max-items", type=int, default=10_000)
    parser.add_argument("--no-csv", action="store_true", help="leave out the CSV input")
    parser.add_argument("--before", default=BEFORE, help="the commit to compare with")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--no-docs", action="store_true")
    parser.add_argument("--node", help=argparse.SUPPRESS)
    parser.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--format", help=argparse.SUPPRESS)
    parser.add_argument("--id-type", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.node:
        run_node(args)
        return 0
    return run_and_report(NAME, args, measure, render)


if __name__ == "__main__":
    raise SystemExit(main())
