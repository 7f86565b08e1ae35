"""Per-job cost: many trivial batches, our workflow against a lean hand-written Snakefile.

A benchmark, not a test: it asserts nothing about time. The work is next to nothing
(``--items`` ids, each hashed once), cut into ``--batches`` batches, so what is measured is
what a job costs: scheduling, start-up, state, checksums, merging. Sides, each a fresh
``snakemake`` process timed end to end from an empty folder:

* **plain**: the lean Snakefile the issue names (written by this benchmark): a fixed batch
  count, the split in a ``run:`` rule, each batch a ``shell:`` one-liner ``python -c``
  reading and writing Parquet, one concat rule; ``--scheduler greedy``.
* **ours**: ``workflow/Snakefile`` with ``profiles/local``, the same ids, item mode
  (``hash_chain_item``, one round), concat merge tree, SQLite state: everything a run does.

Both run with ``--cores --workers``. Every output is checked against a polars computation
over the input. ``--profile`` records the coordinator of each side with py-spy (a
speedscope file under bench/results/) at the largest batch count.

Run from the repository root::

    .venv/bin/python bench/batches.py                        # 200, 1,000, 3,000 batches
    .venv/bin/python bench/batches.py --batches 200 --no-docs --profile
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402 - after the path tweak above
    REPO,
    RESULTS,
    SNAKEMAKE,
    Sample,
    machine_line,
    median_sample,
    run_and_report,
    timed_run,
    venv_env,
)

NAME = "batches"
#: The issue's target: 1,000 batches in at most 0.8x the lean plain Snakefile's wall time.
TARGET = 0.8

PLAIN_SNAKEFILE = """\
# The lean plain Snakefile (written by bench/batches.py): a fixed batch count, split in a
# run: rule, each batch a shell: one-liner, concat.
N = config["batches"]


rule all:
    input:
        "out/result.parquet",


rule split:
    input:
        config["items"],
    output:
        expand("batches/{batch}.parquet", batch=range(N)),
    run:
        import polars as pl

        ids = pl.read_parquet(input[0])
        size = -(-ids.height // N)
        for index, path in enumerate(output):
            ids.slice(index * size, size).write_parquet(path)


rule process:
    input:
        "batches/{batch}.parquet",
    output:
        "results/{batch}.parquet",
    shell:
        "python -c 'import sys, polars as pl; "
        "pl.read_parquet(sys.argv[1]).write_parquet(sys.argv[2])' {input} {output}"


rule concat:
    input:
        expand("results/{batch}.parquet", batch=range(N)),
    output:
        "out/result.parquet",
    run:
        import polars as pl

        pl.concat([pl.read_parquet(p) for p in input]).write_parquet(output[0])
"""


def write_items(path: Path, n_items: int) -> None:
    """Ids 0..n-1 in one Parquet file (no other column)."""
    import polars as pl

    pl.DataFrame({"id": pl.int_range(0, n_items, eager=True)}).write_parquet(path)


def expected(items: Path) -> Any:
    """The independent answer: every id once."""
    import polars as pl

    return pl.read_parquet(items).select("id").sort("id")


def check_output(path: Path, want: Any, what: str) -> None:
    """Refuse a side whose ids differ from the input's: a fast wrong answer is no answer."""
    import polars as pl

    got = pl.read_parquet(path).select("id").sort("id")
    if not got.equals(want):
        raise SystemExit(f"{what}: output ids differ from the input's ({path})")


def prepare_ours(root: Path, items: Path, n_items: int, n_batches: int) -> Path:
    """A config written from scratch, as config/README.md tells a user."""
    import yaml

    root.mkdir(parents=True, exist_ok=True)
    config = {
        "run_id": "batches",
        "output_root": "results",
        "input": {"uri": str(items), "format": "parquet", "id_column": "id"},
        "batching": {"max_items": -(-n_items // n_batches)},
        "job": {
            "function": "orchestrator_ext.jobs.hash_chain:hash_chain_item",
            "mode": "item",
            "params": {"rounds": 1},
        },
        "merge": {"fan_in": 16, "mode": "concat"},
        "state": {"backend": "sqlite"},
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def cases(args: argparse.Namespace, work: Path, items: Path) -> dict[str, Any]:
    """{case: (command, cwd, output file, files to keep between runs)}."""
    found: dict[str, Any] = {}
    for n in args.batches:
        if "plain" in args.sides and (args.plain_batches is None or n in args.plain_batches):
            cwd = work / f"plain-{n}"
            cwd.mkdir(parents=True, exist_ok=True)
            (cwd / "Snakefile").write_text(PLAIN_SNAKEFILE)
            cmd = [SNAKEMAKE, "--cores", str(args.workers), "--quiet", "--scheduler", "greedy",
                   "--config", f"batches={n}", f"items={items}"]  # fmt: skip
            found[f"plain@{n}"] = (cmd, cwd, cwd / "out" / "result.parquet", ("Snakefile",))
        if "ours" in args.sides:
            cwd = work / f"ours-{n}"
            configfile = prepare_ours(cwd, items, args.items, n)
            cmd = [SNAKEMAKE, "--snakefile", str(REPO / "workflow" / "Snakefile"),
                   "--profile", str(REPO / "profiles" / "local"), "--configfile",
                   str(configfile), "--cores", str(args.workers), "--quiet"]  # fmt: skip
            out = cwd / "results" / "batches" / "final" / "result.parquet"
            found[f"ours@{n}"] = (cmd, cwd, out, ("config.yaml",))
    return found


def clean(root: Path, keep: tuple[str, ...]) -> None:
    """Remove everything a previous run left in ``root`` but the prepared files."""
    for entry in root.iterdir():
        if entry.name not in keep:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def profiled(cmd: list[str], name: str) -> list[str]:
    """``cmd`` under py-spy (the coordinator and its subprocesses), to a speedscope file."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{NAME}-{name.replace('@', '-')}.speedscope.json"
    return [str(Path(sys.executable).parent / "py-spy"), "record", "--format", "speedscope",
            "--rate", "50", "--subprocesses", "-o", str(out), "--", *cmd]  # fmt: skip


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    items = work / "items.parquet"
    write_items(items, args.items)
    want = expected(items)
    env = venv_env()
    samples: dict[str, list[Sample]] = {}
    loads = [os.getloadavg()[0]]
    todo = cases(args, work, items)
    for _ in range(args.repeats):
        for name, (cmd, cwd, out, keep) in todo.items():
            clean(cwd, keep)
            sample, _ = timed_run(cmd, cwd=cwd, env=env, what=name)
            loads.append(os.getloadavg()[0])
            check_output(out, want, name)
            samples.setdefault(name, []).append(sample)
            print(f"  {name:12s} {sample.wall_s:8.2f} s  CPU {sample.cpu_s:7.1f} s", flush=True)
    if args.profile:
        largest = max(args.batches)
        for name, (cmd, cwd, _, keep) in todo.items():
            if name.endswith(f"@{largest}"):
                clean(cwd, keep)
                subprocess.run(profiled(cmd, name), cwd=cwd, env=env, check=True,
                               capture_output=True)  # fmt: skip
    results: dict[str, Any] = {
        "items": args.items,
        "workers": args.workers,
        "batches": args.batches,
        "load_avg_1min": [min(loads), max(loads)],
        "sides": {name: median_sample(runs) for name, runs in samples.items()},
    }
    return results


def render(results: dict[str, Any], facts: dict[str, str], args: argparse.Namespace) -> str:
    sides = results["sides"]
    rows = [
        "| batches | plain wall (s) | ours wall (s) | ours / plain | plain CPU (s) | ours CPU (s) "
        "| ours per job (s) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in results["batches"]:
        plain, ours = sides.get(f"plain@{n}"), sides.get(f"ours@{n}")
        ratio = f"{ours['wall_s'] / plain['wall_s']:.2f}x" if plain and ours else "-"
        cells = [f"{s['wall_s']:.1f}" if s else "-" for s in (plain, ours)]
        cpus = [f"{s['cpu_s']:.1f}" if s else "-" for s in (plain, ours)]
        per_job = f"{ours['wall_s'] * results['workers'] / n:.3f}" if ours else "-"
        rows.append(f"| {n:,} | {cells[0]} | {cells[1]} | {ratio} | {cpus[0]} | {cpus[1]} "
                    f"| {per_job} |")  # fmt: skip
    lines = [
        "## Per-job cost: trivial batches",
        "",
        f"`bench/batches.py --items {results['items']} --workers {results['workers']} "
        f"--batches {' '.join(map(str, results['batches']))} --repeats {args.repeats}`. "
        f"{results['items']:,} ids, each hashed once, cut into the given number of batches; "
        "wall time of the whole `snakemake` command from an empty folder (median of "
        f"{args.repeats}), CPU time of it and its children. *plain*: a lean hand-written "
        "Snakefile (split in a `run:` rule, one `shell:` one-liner `python -c` per batch "
        "reading and writing Parquet, concat; greedy scheduler). *ours*: `workflow/Snakefile` "
        "with `profiles/local`, item mode, the whole run (partition with checksums, SQLite "
        "state, merge tree, manifest, dashboard). Every output is checked against the input's "
        f"ids. Target: 1,000 batches at most {TARGET}x plain's wall time. *Per job*: wall "
        "time times workers over batches.",
        "",
        *rows,
        "",
        machine_line(facts, results["load_avg_1min"]),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batches", type=int, nargs="+", default=[200, 1000, 3000])
    parser.add_argument("--sides", nargs="+", default=["plain", "ours"], choices=["plain", "ours"])
    parser.add_argument(
        "--plain-batches", type=int, nargs="*", default=None,
        help="the batch counts (of --batches) the plain Snakefile runs at (default: all)",
    )  # fmt: skip
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--profile", action="store_true", help="py-spy the largest count")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the runs here")
    parser.add_argument("--no-docs", action="store_true")
    return run_and_report(NAME, parser.parse_args(argv), measure, render)


if __name__ == "__main__":
    raise SystemExit(main())
