"""In-job workers and overlapped transient retries: one batch, our workflow end to end.

A benchmark, not a test: it asserts nothing about time. Every case is a run of
``workflow/Snakefile`` with ``profiles/local`` (``--cores 2``) in a fresh folder, over one
batch of items (ids 0..N-1 in a Parquet file), timed end to end (wall) and by the batch's
own record (``duration_s``: the batch job from its first item to its commit). Cases, side by
side:

* **cpu**: ``hash_chain`` (``--rounds`` sha256 rounds per item, pure CPU), ``--cpu-items``
  items, ``job.workers`` 1 against 2 (``pool: process``);
* **io**: ``wait`` (``--wait-ms`` per item, as an API call waits), ``--io-items`` items,
  ``job.workers`` 1 against 32 (``pool: thread``);
* **faults**: ``hash_chain`` with 1 round (cheap items), ``--fault-items`` items, default
  ``retry:`` (0.5 s initial, 20 s cap), with ``faults.transient_rate`` 0.2 against none.

The 2-worker speed-up is bounded by the machine: **ceiling** times the same hash work in one
plain Python process, then in two at once (``2 * one / both``; a shared VM's two vCPUs do
not give two cores' work). Every output is checked: one row per item, every id once.
Figures are medians of ``--repeats`` rounds, each round running every case once (the
machine is shared: one run of a case moves by a third).

Run from the repository root::

    .venv/bin/python bench/workers.py
    .venv/bin/python bench/workers.py --cpu-items 5000 --io-items 500 --no-docs
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import polars as pl
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line, run_and_report, timed_run, venv_env  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(REPO / ".venv" / "bin" / "snakemake")


def _job(function: str, **keys: Any) -> dict[str, Any]:
    return {"function": f"orchestrator_ext.jobs.{function}", "mode": "item", **keys}


def cases(args: argparse.Namespace) -> dict[str, tuple[int, dict[str, Any], dict[str, Any]]]:
    """{case: (items, job, extra config)}."""
    cpu = _job("hash_chain:hash_chain_item", params={"rounds": args.rounds})
    io = _job("wait:wait_item", params={"wait_s": args.wait_ms / 1000})
    cheap = _job("hash_chain:hash_chain_item", params={"rounds": 1})
    faults = {"faults": {"enabled": True, "transient_rate": 0.2, "seed": 7}}
    return {
        "cpu-1": (args.cpu_items, cpu, {}),
        "cpu-2": (args.cpu_items, {**cpu, "workers": 2, "pool": "process"}, {}),
        "io-1": (args.io_items, io, {}),
        "io-32": (args.io_items, {**io, "workers": 32, "pool": "thread"}, {}),
        "faults-none": (args.fault_items, cheap, {}),
        "faults-20%": (args.fault_items, cheap, faults),
    }


def run_case(work: Path, name: str, n_items: int, job: dict[str, Any], extra: dict) -> dict:
    """One run of our workflow over one batch of ``n_items``; wall time and the record."""
    cwd = work / name
    shutil.rmtree(cwd, ignore_errors=True)
    cwd.mkdir(parents=True)
    pl.DataFrame({"id": list(range(n_items))}).write_parquet(cwd / "items.parquet")
    config = {
        "run_id": "b",
        "output_root": "out",
        "input": {"uri": "items.parquet", "format": "parquet"},
        "batching": {"max_items": n_items},
        "job": job,
        **extra,
    }
    (cwd / "run.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    cmd = [SNAKEMAKE, "--snakefile", str(REPO / "workflow" / "Snakefile"),
           "--profile", str(REPO / "profiles" / "local"), "--configfile", "run.yaml",
           "--cores", "2", "--quiet", "all"]  # fmt: skip
    sample, _ = timed_run(cmd, cwd=cwd, env=venv_env(), what=name)
    final = pl.read_parquet(cwd / "out" / "b" / "final" / "result.parquet")
    if sorted(final["id"].to_list()) != list(range(n_items)):
        raise SystemExit(f"{name}: the final result is not one row per item")
    record = json.loads((cwd / "out" / "b" / "results" / "batch-00000.json").read_text())
    print(f"  {name:12s} wall {sample.wall_s:7.2f} s  job {record['duration_s']:7.2f} s")
    return {"items": n_items, "wall_s": sample.wall_s, "job_s": record["duration_s"]}


#: One process's share of the ceiling's work: hash_chain over ids 0..n-1, nothing else.
CEILING_WORK = (
    "import sys\n"
    "from orchestrator_ext.jobs.hash_chain import hash_chain\n"
    "for i in range(int(sys.argv[1])): hash_chain(i, int(sys.argv[2]))\n"
)


def machine_ceiling(n_items: int, rounds: int) -> dict[str, float]:
    """What two processes get done against one: the same CPU work as the cpu case, in one
    plain interpreter, then in two started together (``ratio`` = 2 * one / both)."""
    cmd = [sys.executable, "-c", CEILING_WORK, str(n_items), str(rounds)]

    def wall(copies: int) -> float:
        started = time.perf_counter()
        procs = [subprocess.Popen(cmd, env=venv_env(), cwd=REPO) for _ in range(copies)]
        if any(p.wait() for p in procs):
            raise SystemExit("the ceiling's hash work failed")
        return time.perf_counter() - started

    one, both = wall(1), wall(2)
    print(f"  {'ceiling':12s} one {one:7.2f} s  both {both:7.2f} s  {2 * one / both:.2f}x")
    return {"one_s": one, "both_s": both, "ratio": 2 * one / both}


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {}
    ceilings: list[dict[str, float]] = []
    for _ in range(args.repeats):
        ceilings.append(machine_ceiling(args.cpu_items // 4, args.rounds))
        for name, case in cases(args).items():
            runs.setdefault(name, []).append(run_case(work, name, *case))
    medians = {
        name: {
            "items": samples[0]["items"],
            "wall_s": statistics.median(s["wall_s"] for s in samples),
            "job_s": statistics.median(s["job_s"] for s in samples),
            "samples": samples,
        }
        for name, samples in runs.items()
    }
    ceiling = {
        "items": args.cpu_items // 4,
        **{
            key: statistics.median(c[key] for c in ceilings) for key in ("one_s", "both_s", "ratio")
        },
        "samples": ceilings,
    }
    return {"cases": medians, "ceiling": ceiling, "rounds": args.rounds,
            "wait_ms": args.wait_ms, "repeats": args.repeats}  # fmt: skip


def render(results: dict[str, Any], facts: dict[str, str], args: argparse.Namespace) -> str:
    c = results["cases"]

    def ratio(a: str, b: str, key: str) -> float:
        return c[a][key] / c[b][key]

    rows = [
        ("CPU item job, `workers: 2` (process) against 1", "cpu-1", "cpu-2", ">= 1.8x",
         f"{c['cpu-1']['items']:,} items, {results['rounds']} rounds"),
        ("I/O-bound item job, `workers: 32` (thread) against 1", "io-1", "io-32", ">= 20x",
         f"{c['io-1']['items']:,} items, {results['wait_ms']} ms wait"),
    ]  # fmt: skip
    lines = [
        "### In-job workers and overlapped transient retries (`bench/workers.py`)",
        "",
        machine_line(facts),
        "",
        "One batch, our workflow end to end (`--cores 2`); *job* is the batch's own",
        "`duration_s` (first item to commit), *wall* the whole `snakemake` run; medians of",
        f"{results['repeats']} rounds.",
        "",
        "| workload | one | many | speed-up (job) | speed-up (wall) | target |",
        "|---|---|---|---|---|---|",
    ]
    for title, one, many, target, what in rows:
        lines.append(
            f"| {title} ({what}) | {c[one]['job_s']:.2f} s | {c[many]['job_s']:.2f} s | "
            f"{ratio(one, many, 'job_s'):.2f}x | {ratio(one, many, 'wall_s'):.2f}x | {target} |"
        )
    lines.append(
        f"| 20% transient faults, default `retry:` ({c['faults-none']['items']:,} cheap items) | "
        f"{c['faults-none']['job_s']:.2f} s | {c['faults-20%']['job_s']:.2f} s | "
        f"{ratio('faults-20%', 'faults-none', 'job_s'):.2f}x slower | "
        f"{ratio('faults-20%', 'faults-none', 'wall_s'):.2f}x slower | wall <= 2x |"
    )
    ceiling = results["ceiling"]
    lines.append(
        f"| the machine's ceiling for the first row: the same hash work in two plain processes "
        f"at once against one ({ceiling['items']:,} items each) | {ceiling['one_s']:.2f} s | "
        f"{ceiling['both_s']:.2f} s for twice the work | {ceiling['ratio']:.2f}x | - | - |"
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu-items", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--io-items", type=int, default=2_000)
    parser.add_argument("--wait-ms", type=float, default=10)
    parser.add_argument("--fault-items", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--no-docs", action="store_true", help="print only")
    return run_and_report("workers", parser.parse_args(argv), measure, render)


if __name__ == "__main__":
    raise SystemExit(main())
