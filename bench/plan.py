"""Planning benchmark: ``snakemake -n`` on our workflow against a bare Snakefile of the same DAG.

A benchmark, not a test: it asserts nothing about time. For every requested batch count N
(fan-in 16 by default) it prepares, in a temporary folder:

* **ours**: a run of ``workflow/Snakefile`` whose partition checkpoint has already run. The
  batches come from ``orchestrator_ext.partition.partition_items`` over 2*N generated records
  with ``batching.max_items: 2`` (SQLite state store, ``output_root: results`` as in the
  shipped config), so the dry run builds the whole DAG: one ``process_batch`` per batch, the
  merge tree, the root, the manifest and ``all``.
* **bare**: a hand-written Snakefile of the same shape, written here: a checkpoint producing
  ``batches/`` (``plan.json`` + N batch files), one job per batch with the same three outputs
  and a log, the merge tree with the same fan-in and levels (inner nodes + root), a manifest
  rule, a report rule and ``rule all`` over every file. Input functions read ``n_batches``
  from ``plan.json`` with ``json``; every job rule is ``shell: "touch {output} {log}"``. Its
  checkpoint output exists as well. When the workflow's DAG changes shape, change
  ``BARE_SNAKEFILE`` with it (the warm-up checks the jobs per rule on both sides).
* **bare+script** (diagnostic; ``--no-bare-script`` skips it): the same bare Snakefile with
  every job rule running an empty Python file through ``script:``, as ours do. It separates
  what Snakemake itself charges per ``script:`` job from what our input functions cost.

Each side gets one warm-up dry run (which also checks that it plans the expected number of
jobs) and then ``--repeats`` timed ones, interleaved. Each is
``snakemake -n --cores 1 --quiet`` under ``/usr/bin/time -v`` for peak RSS and CPU
time (falling back to ``resource.getrusage(RUSAGE_CHILDREN)`` when GNU time is missing).
Figures are medians. It prints a table and rewrites its own section of
``docs/benchmarks.md``, between HTML comment markers, keeping the rest of the file.

Run (from the repository root, with the project's venv)::

    .venv/bin/python bench/plan.py --batches 1000 10000 [30000]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402 - after the path tweak above
    REPO,
    SNAKEMAKE,
    Sample,
    gnu_time_works,
    machine_facts,
    save_results,
    timed_run,
    write_section,
)

SNAKEFILE = REPO / "workflow" / "Snakefile"

TARGET = 1.2
# Logged when a finished checkpoint's dependants are re-planned, i.e. the full DAG is built.
CHECKPOINT_DONE = "Updating checkpoint dependencies."
SHELL_ACTION = '    shell:\n        "touch {{output}} {{log}}"'
SCRIPT_ACTION = '    script:\n        "noop.py"'

BARE_SNAKEFILE = """\
# Bare Snakefile of the same DAG shape as workflow/Snakefile (written by bench/plan.py).
# Job rules: {flavour}.
import json

FAN_IN = {fan_in}


wildcard_constraints:
    batch=r"\\d{{5}}",
    level=r"[1-9][0-9]*",
    part=r"\\d{{5}}",


checkpoint partition:
    output:
        directory("batches"),
    log:
        "logs/partition.log",
    shell:
        "mkdir -p {{output}} && touch {{log}}"


def n_batches():
    with open(checkpoints.partition.get().output[0] + "/plan.json") as handle:
        return json.load(handle)["n_batches"]


def sizes():
    levels = [n_batches()]
    while True:
        levels.append(-(-levels[-1] // FAN_IN))
        if levels[-1] == 1:
            return levels


def node(level, index, levels):
    if level == 0:
        return f"results/batch-{{index:05d}}.parquet", f"results/batch-{{index:05d}}.json"
    if level == len(levels) - 1:
        return "final/result.parquet", "final/result.json"
    part = f"merge/L{{level}}/part-{{index:05d}}"
    return part + ".parquet", part + ".json"


def children(level, index):
    levels = sizes()
    last = min((index + 1) * FAN_IN, levels[level - 1])
    nodes = [node(level - 1, i, levels) for i in range(index * FAN_IN, last)]
    return {{"data": [d for d, _ in nodes], "records": [r for _, r in nodes]}}


def merge_inputs(wildcards):
    return children(int(wildcards.level), int(wildcards.part))


def final_inputs(wildcards):
    return children(len(sizes()) - 1, 0)


def manifest_inputs(wildcards):
    levels = sizes()
    batches = range(levels[0])
    nodes = [(lv, i) for lv in range(1, len(levels) - 1) for i in range(levels[lv])]
    return {{
        "plan": "batches/plan.json",
        "results": [f"results/batch-{{b:05d}}.parquet" for b in batches],
        "batch_records": [f"results/batch-{{b:05d}}.json" for b in batches],
        "dead_letters": [f"dead_letter/batch-{{b:05d}}.parquet" for b in batches],
        "merge_parts": [f"merge/L{{lv}}/part-{{i:05d}}.parquet" for lv, i in nodes],
        "merge_records": [f"merge/L{{lv}}/part-{{i:05d}}.json" for lv, i in nodes],
        "final": "final/result.parquet",
        "final_record": "final/result.json",
    }}


def all_inputs(wildcards):
    files = ["manifest.json"]
    for value in manifest_inputs(wildcards).values():
        files += value if isinstance(value, list) else [value]
    return [*files, "report/dashboard.html"]


rule all:
    default_target: True
    input:
        all_inputs,


rule process_batch:
    input:
        batch="batches/batch-{{batch}}.parquet",
        plan="batches/plan.json",
    output:
        result="results/batch-{{batch}}.parquet",
        dead_letter="dead_letter/batch-{{batch}}.parquet",
        record="results/batch-{{batch}}.json",
    log:
        "logs/process_batch/{{batch}}.log",
{action}


rule merge_level:
    input:
        unpack(merge_inputs),
    output:
        part="merge/L{{level}}/part-{{part}}.parquet",
        record="merge/L{{level}}/part-{{part}}.json",
    log:
        "logs/merge_level/L{{level}}-{{part}}.log",
{action}


rule merge_final:
    input:
        unpack(final_inputs),
    output:
        part="final/result.parquet",
        record="final/result.json",
    log:
        "logs/merge_final/final.log",
{action}


rule write_manifest:
    input:
        unpack(manifest_inputs),
    output:
        manifest="manifest.json",
    log:
        "logs/write_manifest/manifest.log",
{action}


rule report_dashboard:
    input:
        manifest="manifest.json",
    output:
        dashboard="report/dashboard.html",
    log:
        "logs/report_dashboard/dashboard.log",
{action}
"""


@dataclass
class Side:
    name: str
    cmd: list[str]
    cwd: Path
    samples: list[Sample] = field(default_factory=list)

    def median(self, attr: str) -> float:
        return statistics.median(getattr(s, attr) for s in self.samples)


# --------------------------------------------------------------------------------------------
# preparing the workflows


def level_sizes(n_batches: int, fan_in: int) -> list[int]:
    sizes = [n_batches]
    while True:
        sizes.append(-(-sizes[-1] // fan_in))
        if sizes[-1] == 1:
            return sizes


def expected_counts(n_batches: int, fan_in: int) -> dict[str, int]:
    """Jobs per rule every dry run must plan (both Snakefiles use these rule names); rules
    with one job each (the root, the manifest, a report, ``all``) may come and go."""
    return {
        "process_batch": n_batches,
        "merge_level": sum(level_sizes(n_batches, fan_in)[1:-1]),
        "merge_final": 1,
        "write_manifest": 1,
        "all": 1,
    }


def prepare_ours(root: Path, n_batches: int, fan_in: int, snakefile: Path) -> Side:
    """A run of our workflow with the partition done."""
    import yaml

    from orchestrator_ext.config import load_config
    from orchestrator_ext.example_data import write_records
    from orchestrator_ext.partition import partition_items
    from orchestrator_ext.state.sqlite import SqliteStateStore

    root.mkdir(parents=True)
    items = write_records(root / "items.parquet", 2 * n_batches, seed=7)
    raw: dict[str, Any] = {
        "run_id": "bench",
        "output_root": "results",  # relative to the working directory, as shipped
        "input": {"uri": str(items), "format": "parquet", "id_column": "id"},
        "batching": {"max_items": 2},
        "job": {
            "function": "orchestrator_ext.jobs.grouped_stats:partial",
            "combine": "orchestrator_ext.jobs.grouped_stats:combine",
            "finalize": "orchestrator_ext.jobs.grouped_stats:finalize",
        },
        "merge": {"fan_in": fan_in, "mode": "reduce"},
        "state": {"backend": "sqlite"},
    }
    configfile = root / "config.yaml"
    configfile.write_text(yaml.safe_dump(raw, sort_keys=False))
    config = load_config(raw)
    run_dir = root / config.run_dir
    store = SqliteStateStore(run_dir / "state.sqlite", config.run_id)
    try:
        plan = partition_items(config, store, run_dir / "batches")
    finally:
        store.close()
    if plan["n_batches"] != n_batches:
        raise SystemExit(f"partition made {plan['n_batches']} batches, expected {n_batches}")
    cmd = [
        SNAKEMAKE,
        "--snakefile", str(snakefile),
        "--directory", str(root),
        "--configfile", str(configfile),
    ]  # fmt: skip
    return Side("ours", cmd, root)


def prepare_bare(root: Path, n_batches: int, fan_in: int, script: bool) -> Side:
    """The bare Snakefile with its checkpoint output present."""
    batches = root / "batches"
    batches.mkdir(parents=True)
    (root / "noop.py").write_text("# does nothing: only the script: directive is measured\n")
    text = BARE_SNAKEFILE.format(
        fan_in=fan_in,
        flavour="script: noop.py" if script else "shell: touch",
        action=SCRIPT_ACTION if script else SHELL_ACTION,
    )
    (root / "Snakefile").write_text(text)
    (batches / "plan.json").write_text(json.dumps({"n_batches": n_batches, "fan_in": fan_in}))
    for b in range(n_batches):
        (batches / f"batch-{b:05d}.parquet").touch()
    cmd = [SNAKEMAKE, "--snakefile", str(root / "Snakefile"), "--directory", str(root)]
    return Side("bare+script" if script else "bare", cmd, root)


# --------------------------------------------------------------------------------------------
# measuring


def dry_run(side: Side, quiet: tuple[str, ...] = ()) -> tuple[Sample, str]:
    """One ``snakemake -n --cores 1 --quiet`` run; returns its sample and its output.

    Plain ``--quiet`` (rules and progress) prints the job counts and returns once the DAG is
    built; ``--quiet rules`` would also format every job for the dry-run listing (a third of
    the time at 10,000 batches, the same work on both sides). Plain ``--quiet`` prints no job
    counts, so the warm-up uses ``quiet=("rules",)`` to check the plan."""
    full = [*side.cmd, "--dry-run", "--cores", "1", "--quiet", *quiet]
    return timed_run(full, cwd=side.cwd, what=f"{side.name} dry run")


def job_counts(output: str) -> dict[str, int]:
    """The "Job stats" table of a dry run as {rule: jobs} (with "total")."""
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", output, re.MULTILINE)}


def measure(n_batches: int, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    case = workdir / f"n{n_batches}"
    t0 = time.perf_counter()
    sides = [
        prepare_ours(case / "ours", n_batches, args.fan_in, args.snakefile),
        prepare_bare(case / "bare", n_batches, args.fan_in, script=False),
    ]
    if args.bare_script:
        sides.append(prepare_bare(case / "bare-script", n_batches, args.fan_in, script=True))
    print(f"[{n_batches} batches] prepared in {time.perf_counter() - t0:.1f} s", flush=True)
    want = expected_counts(n_batches, args.fan_in)
    jobs = {}
    for side in sides:  # warm-up: page cache, .snakemake/, bytecode; checks the DAG
        _, output = dry_run(side, quiet=("rules",))
        counts = job_counts(output)
        wrong = {rule: counts.get(rule) for rule, n in want.items() if counts.get(rule) != n}
        if wrong or "partition_items" in counts or "partition" in counts:
            raise SystemExit(
                f"{side.name}: the dry run plans {counts}, expected {want} and no partition "
                "(if it plans the partition again, a script was edited after partitioning: "
                "rerun)\n" + output[-3000:]
            )
        jobs[side.name] = counts.get("total")
    loads = [os.getloadavg()[0]]
    for _ in range(args.repeats):
        for side in sides:
            sample, output = dry_run(side)
            loads.append(os.getloadavg()[0])
            if CHECKPOINT_DONE not in output:  # the plan stopped at the partition
                raise SystemExit(f"{side.name}: the partition is planned again\n{output[-3000:]}")
            side.samples.append(sample)
            print(
                f"  {side.name:12s} {sample.wall_s:7.2f} s wall {sample.cpu_s:7.2f} s cpu "
                f"{sample.max_rss_kib / 1024:6.0f} MiB",
                flush=True,
            )
    result: dict[str, Any] = {
        "n_batches": n_batches,
        "fan_in": args.fan_in,
        "levels": level_sizes(n_batches, args.fan_in),
        "jobs": jobs["ours"],
        "jobs_bare": jobs["bare"],
        "load_avg_1min": [min(loads), max(loads)],
    }
    for side in sides:
        result[side.name] = {
            "wall_s": side.median("wall_s"),
            "cpu_s": side.median("cpu_s"),
            "rss_mib": side.median("max_rss_kib") / 1024,
            "samples_wall_s": [s.wall_s for s in side.samples],
            "samples_cpu_s": [s.cpu_s for s in side.samples],
        }
    ours, bare = result["ours"], result["bare"]
    result["ratio"] = ours["wall_s"] / bare["wall_s"]
    result["cpu_ratio"] = ours["cpu_s"] / bare["cpu_s"]
    result["rss_ratio"] = ours["rss_mib"] / bare["rss_mib"]
    if "bare+script" in result:
        result["ratio_vs_script"] = ours["wall_s"] / result["bare+script"]["wall_s"]
    print(
        f"[{n_batches} batches] ours {ours['wall_s']:.2f} s, bare {bare['wall_s']:.2f} s: "
        f"{result['ratio']:.2f}x wall, {result['cpu_ratio']:.2f}x cpu; RSS ours "
        f"{ours['rss_mib']:.0f} MiB, bare {bare['rss_mib']:.0f} MiB",
        flush=True,
    )
    return result


# --------------------------------------------------------------------------------------------
# reporting


def render(
    results: list[dict[str, Any]], facts: dict[str, str], args: argparse.Namespace, how: str
) -> str:
    with_script = args.bare_script
    head = (
        "| batches | jobs | levels | ours (s) | bare (s) | **ours / bare** | CPU ours / bare (s) "
    )
    rule = "|---:|---:|---|---:|---:|---:|---:|"
    if with_script:
        head += "| bare+script (s) | ours / bare+script "
        rule += "---:|---:|"
    head += "| RSS ours (MiB) | RSS bare (MiB) | RSS ours / bare |"
    rule += "---:|---:|---:|"
    rows = [head, rule]
    for r in results:
        ours, bare = r["ours"], r["bare"]
        row = (
            f"| {r['n_batches']:,} | {r['jobs']:,} | {' / '.join(map(str, r['levels']))} "
            f"| {ours['wall_s']:.2f} | {bare['wall_s']:.2f} | **{r['ratio']:.2f}x** "
            f"| {ours['cpu_s']:.1f} / {bare['cpu_s']:.1f} = {r['cpu_ratio']:.2f}x "
        )
        if with_script:
            row += f"| {r['bare+script']['wall_s']:.2f} | {r['ratio_vs_script']:.2f}x "
        row += f"| {ours['rss_mib']:.0f} | {bare['rss_mib']:.0f} | {r['rss_ratio']:.2f}x |"
        rows.append(row)
    met = [f"{r['n_batches']:,}" for r in results if r["ratio"] <= TARGET]
    low = min(r["load_avg_1min"][0] for r in results)
    high = max(r["load_avg_1min"][1] for r in results)
    verdict = (
        f"Target (ours at most {TARGET}x bare, wall time): met at {len(met)} of "
        f"{len(results)} sizes ({', '.join(met) or 'none'})."
    )
    command = (
        f"bench/plan.py --batches {' '.join(map(str, args.batches))} --fan-in {args.fan_in} "
        f"--repeats {args.repeats}" + ("" if with_script else " --no-bare-script")
    )
    if args.snakefile.resolve() != SNAKEFILE:
        command += f" --snakefile {args.snakefile}"
    lines = [
        "## Planning (snakemake -n)",
        "",
        f"`{command}`, run on {facts['date']}. Wall time of `snakemake -n --cores 1 --quiet` "
        f"(median of {args.repeats} runs after one warm-up), CPU time (user + sys, "
        f"median) and peak RSS ({how}, median) of our `workflow/Snakefile`, whose partition "
        "checkpoint has already run, against a bare Snakefile of the same DAG shape written by "
        "the benchmark: same jobs, outputs and logs per job, fan-in and levels; input "
        "functions that read `n_batches` from `plan.json` with `json`; `shell: touch` rules. "
        "Every dry run plans all jobs: one per batch, the merge tree, the root, the manifest, "
        "the report and `all`. Plain `--quiet` stops once the DAG is built and counted; "
        "without it Snakemake also formats every job for the listing, the same work on both "
        "sides, which dilutes the ratio.",
    ]
    if with_script:
        lines += [
            "",
            "*bare+script* is the same bare Snakefile with its job rules running an empty file "
            "through `script:`, as ours do: the gap between bare and bare+script is what "
            "Snakemake itself charges per `script:` job, the gap between bare+script and ours "
            "is what our rules and input functions add.",
        ]
    lines += [
        "",
        *rows,
        "",
        verdict,
        "",
        f"Machine: {facts['cpus']} CPUs ({facts['cpu_model']}), {facts['memory']} RAM, "
        f"{facts['os']}, Python {facts['python']}, Snakemake {facts['snakemake']}. "
        f"1-minute load average during the timed runs: {low:.1f} to {high:.1f} "
        "(wall times are only comparable on an otherwise idle machine; CPU times suffer less "
        "from other load).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--batches",
        type=int,
        nargs="+",
        default=[1000, 10000],
        help="batch counts to plan (default: 1000 10000; 30000 takes a while)",
    )
    parser.add_argument("--fan-in", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side (median)")
    parser.add_argument(
        "--no-bare-script",
        dest="bare_script",
        action="store_false",
        help="skip the diagnostic bare Snakefile with script: rules",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep the generated runs here (default: a temp dir, removed)",
    )
    parser.add_argument(
        "--snakefile",
        type=Path,
        default=SNAKEFILE,
        help="our workflow's Snakefile (default: workflow/Snakefile; point it at a copy "
        "of another revision to compare)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write raw figures here")
    parser.add_argument("--no-docs", action="store_true", help="do not touch docs/benchmarks.md")
    args = parser.parse_args(argv)

    how = "`/usr/bin/time -v`" if gnu_time_works() else "`getrusage(RUSAGE_CHILDREN)`"
    facts = machine_facts()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-plan-"))
    results = []
    try:
        for n in args.batches:
            results.append(measure(n, args, workdir))
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    section = render(results, facts, args, how)
    print(section)
    if args.json:
        args.json.write_text(json.dumps({"machine": facts, "results": results}, indent=2) + "\n")
    if not args.no_docs:
        save_results("plan", {"facts": facts, "results": results})
        write_section("plan", section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
