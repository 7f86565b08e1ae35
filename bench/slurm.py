"""Slurm benchmark: the example on the local Slurm cluster against a plain Snakemake workflow.

A benchmark, not a test: it asserts nothing about time. Workload 6 of the benchmark issue:
the example (grouped statistics, ``merge.mode: reduce``) run end to end on the local Slurm
cluster, against a hand-written Snakefile of the same DAG shape on the same cluster with
the same profile settings. Target: ours no slower.

* **ours**: ``workflow/Snakefile`` with ``--profile tests/profiles/slurm`` (executor
  ``orchestrator-slurm``) on a small version of ``config/config.yaml``: ``--items``
  example records (``orchestrator example-data``) cut into ``--batches`` batches, fan-in
  ``--fan-in``. Files go to a local folder (this single node is its own shared
  filesystem); task state is SQLite in the run folder (``--state dynamodb`` puts it in a
  DynamoDB table on the moto server at 127.0.0.1:5555 instead, as the production profile
  recommends for a real cluster).
* **plain**: ``PLAIN_SNAKEFILE`` below, written into each run folder with one small
  ``script:`` per rule, what a researcher would hand-write with polars: a
  ``partition_items`` checkpoint cutting the same input into the same batches
  (``plan.json`` holds the count), one ``process_batch`` job per batch computing the same
  per-group partials (count, sum, sum of squares, min, max), the merge tree with the same
  fan-in and levels, a root that adds mean and std, a manifest (sha256 of every file) and a
  local HTML report rule (rule names as in ours, so that figures line up). It runs with the
  official ``slurm`` executor and a copy of the same profile in which only the executor
  name and its option prefix (``orchestrator-slurm-*`` -> ``slurm-*``) are swapped.

Both profiles keep the test profile's fast status polling (first check after 1 s, then every
1 s, backing off by 10 s while nothing finishes), so a run takes one to two minutes; the
production profile keeps the plugin's defaults (40 s, up to 180 s).

Each repetition runs ours and plain (order alternating) from clean working folders, times
``snakemake --profile ...`` end to end, checks that both final tables are equal (per group:
count, sum, sum_sq, min, max, mean, std), and reads ``sacct`` for the Slurm jobs each
submitted: how many, their summed elapsed time, the part of it spent in the job's ``srun``
step (the job itself) rather than in the Snakemake process that the batch script starts
first, and how long the coordinator took to notice finished jobs, and which other Slurm
jobs ran meanwhile. The cluster is shared (other sessions' tests submit jobs to it), so a
repetition during which other jobs ran is discarded and repeated, up to ``--repeats`` more
times. Figures are medians.

Then, to see where a job's time goes without the status polling, one job of every rule is
re-run with ``--force`` in the last repetition's run folders (``--anatomy-repeats`` times per
side; ``anatomy``): outside Slurm, the command a Slurm job's ``srun`` step runs, and the
same with ``--dry-run``, which splits it into Snakemake start-up and planning (paid twice
per Slurm job) and running the rule (paid once); and in Slurm, the batch script's command
through ``sbatch --wait`` (two jobs at once where a run has two or more).

Run from the repository root, with the cluster up (``bash tests/services/setup.sh all``)::

    .venv/bin/python bench/slurm.py                  # 3 repetitions per side, ~16 min
    .venv/bin/python bench/slurm.py --repeats 1 --no-docs --anatomy-repeats 0   # ~4 min

Options: ``--items`` (20,000), ``--batches`` (8), ``--fan-in`` (4), ``--repeats`` (3),
``--state sqlite|dynamodb``, ``--anatomy-repeats`` (3), ``--keep DIR`` (run there and keep
the run folders, with each run's Snakemake output in ``snakemake.out``), ``--no-docs``.
Raw figures go to ``bench/results/slurm.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

REPO = common.REPO
SNAKEFILE = REPO / "workflow" / "Snakefile"
TEST_PROFILE = REPO / "tests" / "profiles" / "slurm"
ORCHESTRATOR = str(common.BIN / "orchestrator")
MOTO = "http://127.0.0.1:5555"

PLAIN_SNAKEFILE = """\
# Plain Snakefile of the same DAG shape as workflow/Snakefile (written by bench/slurm.py):
# what a researcher would hand-write for the grouped-statistics example with polars.
import json

ITEMS = "@ITEMS@"
MAX_ITEMS = @MAX_ITEMS@
FAN_IN = @FAN_IN@


wildcard_constraints:
    batch=r"\\d{5}",
    level=r"[1-9][0-9]*",
    part=r"\\d{5}",


rule all:
    input:
        "out/manifest.json",
        "out/report.html",


checkpoint partition_items:
    input:
        ITEMS,
    output:
        directory("out/batches"),
    log:
        "out/logs/partition_items.log",
    params:
        max_items=MAX_ITEMS,
    script:
        "scripts/partition.py"


def levels():
    with open(checkpoints.partition_items.get().output[0] + "/plan.json") as handle:
        sizes = [json.load(handle)["n_batches"]]
    while True:
        sizes.append(-(-sizes[-1] // FAN_IN))
        if sizes[-1] == 1:
            return sizes


def node(level, index, sizes):
    if level == 0:
        return f"out/results/batch-{index:05d}.parquet"
    if level == len(sizes) - 1:
        return "out/final/result.parquet"
    return f"out/merge/L{level}/part-{index:05d}.parquet"


def children(level, index):
    sizes = levels()
    last = min((index + 1) * FAN_IN, sizes[level - 1])
    return [node(level - 1, i, sizes) for i in range(index * FAN_IN, last)]


def every_node(wildcards):
    sizes = levels()
    return [node(lv, i, sizes) for lv, n in enumerate(sizes) for i in range(n)]


rule process_batch:
    input:
        "out/batches/batch-{batch}.parquet",
    output:
        "out/results/batch-{batch}.parquet",
    log:
        "out/logs/process_batch/{batch}.log",
    script:
        "scripts/process_batch.py"


rule merge_level:
    input:
        lambda wildcards: children(int(wildcards.level), int(wildcards.part)),
    output:
        "out/merge/L{level}/part-{part}.parquet",
    log:
        "out/logs/merge_level/L{level}-{part}.log",
    params:
        final=False,
    script:
        "scripts/merge.py"


rule merge_final:
    input:
        lambda wildcards: children(len(levels()) - 1, 0),
    output:
        "out/final/result.parquet",
    log:
        "out/logs/merge_final.log",
    params:
        final=True,
    script:
        "scripts/merge.py"


rule write_manifest:
    input:
        plan=lambda wildcards: checkpoints.partition_items.get().output[0] + "/plan.json",
        files=every_node,
    output:
        "out/manifest.json",
    log:
        "out/logs/write_manifest.log",
    script:
        "scripts/manifest.py"


rule report_dashboard:
    input:
        "out/final/result.parquet",
    output:
        "out/report.html",
    localrule: True
    script:
        "scripts/report.py"
"""

PLAIN_SCRIPTS = {
    "partition.py": """\
import json
import os

import polars as pl

items = pl.read_parquet(snakemake.input[0])
size = snakemake.params.max_items
n_batches = -(-items.height // size)
out = snakemake.output[0]
os.makedirs(out, exist_ok=True)
for b in range(n_batches):
    items.slice(b * size, size).write_parquet(f"{out}/batch-{b:05d}.parquet")
with open(f"{out}/plan.json", "w") as handle:
    json.dump({"items": items.height, "max_items": size, "n_batches": n_batches}, handle)
with open(snakemake.log[0], "w") as log:
    print(f"{items.height} items in {n_batches} batches", file=log)
""",
    "process_batch.py": """\
import polars as pl

batch = pl.read_parquet(snakemake.input[0])
v = pl.col("value").cast(pl.Int64)
partial = (
    batch.group_by("group")
    .agg(
        pl.len().cast(pl.Int64).alias("count"),
        v.sum().alias("sum"),
        (v * v).sum().alias("sum_sq"),
        v.min().alias("min"),
        v.max().alias("max"),
    )
    .sort("group")
)
partial.write_parquet(snakemake.output[0])
with open(snakemake.log[0], "w") as log:
    print(f"{batch.height} items, {partial.height} groups", file=log)
""",
    "merge.py": """\
import polars as pl

parts = pl.concat([pl.read_parquet(path) for path in snakemake.input])
merged = (
    parts.group_by("group")
    .agg(
        pl.col("count").sum(),
        pl.col("sum").sum(),
        pl.col("sum_sq").sum(),
        pl.col("min").min(),
        pl.col("max").max(),
    )
    .sort("group")
)
if snakemake.params.final:
    mean = pl.col("sum") / pl.col("count")
    variance = pl.col("sum_sq") / pl.col("count") - mean * mean
    merged = merged.with_columns(mean.alias("mean"), variance.clip(0).sqrt().alias("std"))
merged.write_parquet(snakemake.output[0])
with open(snakemake.log[0], "w") as log:
    print(f"{len(snakemake.input)} parts, {merged.height} groups", file=log)
""",
    "manifest.py": """\
import hashlib
import json
import os

import polars as pl

with open(snakemake.input.plan) as handle:
    plan = json.load(handle)
files = []
for path in snakemake.input.files:
    with open(path, "rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    files.append({"path": path, "sha256": digest, "bytes": os.path.getsize(path)})
final = pl.read_parquet(snakemake.input.files[-1])
manifest = {"items_in": plan["items"], "items_out": int(final["count"].sum()), "files": files}
with open(snakemake.output[0], "w") as handle:
    json.dump(manifest, handle, indent=2)
with open(snakemake.log[0], "w") as log:
    print(f"{len(files)} files", file=log)
""",
    "report.py": """\
import polars as pl

final = pl.read_parquet(snakemake.input[0])
head = "".join(f"<th>{c}</th>" for c in final.columns)
rows = "".join(
    "<tr>" + "".join(f"<td>{v}</td>" for v in row) + "</tr>" for row in final.iter_rows()
)
with open(snakemake.output[0], "w") as handle:
    handle.write(f"<html><body><table><tr>{head}</tr>{rows}</table></body></html>")
""",
}

# The Slurm plugin adds this to its status-check interval after a check finding no job done.
POLL_STEP_S = 10.0
STAT_COLUMNS = ["group", "count", "sum", "sum_sq", "min", "max", "mean", "std"]
SUBMITTED = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: ([^)]*)\)")
FINISHED = re.compile(r"^Finished jobid: (\d+) \(Rule: (\w+)\)", re.MULTILINE)
STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$", re.MULTILINE)


# --------------------------------------------------------------------------------------------
# preparing the runs


def level_sizes(n_batches: int, fan_in: int) -> list[int]:
    sizes = [n_batches]
    while True:
        sizes.append(-(-sizes[-1] // fan_in))
        if sizes[-1] == 1:
            return sizes


def write_items(work: Path, n_items: int) -> Path:
    """The example records, through the package's own CLI."""
    path = work / "items.parquet"
    subprocess.run(
        [ORCHESTRATOR, "example-data", "--items", str(n_items), "--out", str(path)],
        check=True,
        capture_output=True,
        text=True,
    )
    return path


def plain_profile(work: Path) -> Path:
    """A copy of the test profile with only the executor (and its option prefix) swapped."""
    text = (TEST_PROFILE / "config.yaml").read_text()
    swapped = re.sub(r"^executor: orchestrator-slurm$", "executor: slurm", text, flags=re.M)
    swapped = re.sub(r"^orchestrator-slurm-", "slurm-", swapped, flags=re.M)
    if swapped.count("executor: slurm\n") != 1 or "orchestrator-slurm" in swapped:
        raise SystemExit(f"unexpected profile {TEST_PROFILE}: cannot swap the executor")
    folder = work / "profile-plain"
    folder.mkdir(exist_ok=True)
    (folder / "config.yaml").write_text(swapped)
    return folder


def ours_config(items: Path, max_items: int, fan_in: int, run_dir: Path, state: str) -> Path:
    """The example config (config/config.yaml), made small and rooted in ``run_dir``."""
    import yaml

    raw = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    raw["run_id"] = "bench"
    raw["output_root"] = str(run_dir / "out")
    raw["input"] = {"uri": str(items), "format": "parquet", "id_column": "id"}
    raw["batching"] = {**raw["batching"], "max_items": max_items}
    raw["merge"] = {"fan_in": fan_in, "mode": "reduce"}
    if state == "dynamodb":
        from orchestrator_ext.state.dynamodb import create_table, make_client

        table = f"bench-slurm-{uuid.uuid4().hex[:10]}"
        create_table(make_client(), table)
        raw["state"] = {"backend": "dynamodb", "table": table}
    path = run_dir / "config.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def prepare(side: str, run_dir: Path, args: argparse.Namespace, shared: dict[str, Any]) -> list:
    """A clean working folder for one run of ``side``; returns its command."""
    run_dir.mkdir(parents=True)
    if side == "ours":
        configfile = ours_config(
            shared["items"], shared["max_items"], args.fan_in, run_dir, args.state
        )
        return [
            common.SNAKEMAKE,
            "--snakefile", str(SNAKEFILE),
            "--directory", str(run_dir),
            "--profile", str(TEST_PROFILE),
            "--configfile", str(configfile),
        ]  # fmt: skip
    text = (
        PLAIN_SNAKEFILE.replace("@ITEMS@", str(shared["items"]))
        .replace("@MAX_ITEMS@", str(shared["max_items"]))
        .replace("@FAN_IN@", str(args.fan_in))
    )
    (run_dir / "Snakefile").write_text(text)
    (run_dir / "scripts").mkdir()
    for name, code in PLAIN_SCRIPTS.items():
        (run_dir / "scripts" / name).write_text(code)
    return [
        common.SNAKEMAKE,
        "--snakefile", str(run_dir / "Snakefile"),
        "--directory", str(run_dir),
        "--profile", str(shared["plain_profile"]),
    ]  # fmt: skip


def final_file(side: str, run_dir: Path) -> Path:
    if side == "ours":
        return run_dir / "out" / "bench" / "final" / "result.parquet"
    return run_dir / "out" / "final" / "result.parquet"


# --------------------------------------------------------------------------------------------
# measuring


def sacct_rows(job_ids: list[str]) -> dict[str, dict[str, str]]:
    """sacct's rows (jobs and their steps) of ``job_ids``, keyed by JobID."""
    fields = ["JobID", "State", "Submit", "Start", "End", "ElapsedRaw"]
    out = subprocess.run(
        ["sacct", "-n", "-P", "-o", ",".join(fields), "-j", ",".join(job_ids)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    rows = [dict(zip(fields, line.split("|"), strict=True)) for line in out.splitlines() if line]
    return {row["JobID"]: row for row in rows}


def epoch(text: str) -> float:
    return dt.datetime.fromisoformat(text).timestamp()


def foreign_jobs(mine: set[str], started: float, ended: float) -> dict[str, float]:
    """Other Slurm jobs (other runs, other users' tests) that ran on the cluster during
    ours, with the seconds each overlapped it: they took CPUs from the run's jobs."""
    window = [dt.datetime.fromtimestamp(t).isoformat(timespec="seconds") for t in (started, ended)]
    out = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-a", "-o", "JobID,Start,End", "-S", window[0],
         "-E", window[1]],
        capture_output=True,
        text=True,
    ).stdout  # fmt: skip
    overlaps = {}
    for line in out.splitlines():
        job, start, end = (line.split("|") + ["", ""])[:3]
        if job in mine or not start[:1].isdigit():
            continue
        stop = epoch(end) if end[:1].isdigit() else ended
        seconds = min(stop, ended) - max(epoch(start), started)
        if seconds > 0:
            overlaps[job] = seconds
    return overlaps


def slurm_figures(output: str, started: float, ended: float) -> dict[str, Any]:
    """What the run submitted to Slurm, from its log and ``sacct``.

    ``job_s`` is each job's elapsed time; ``step_s`` that of its ``srun`` step (``.0``: the
    inner ``snakemake`` process that runs the rule); the difference is the batch script's
    own Snakemake process (parsing the workflow, planning the one job) and ``srun``.
    ``notice_s`` is how long after a job ended the coordinator logged it as finished.
    """
    submitted = {m[1]: (m[2], re.search(r"/rule_(\w+)/", m[3])) for m in SUBMITTED.finditer(output)}
    rule_of = {sid: (rule[1] if rule else "?") for sid, rule in submitted.values()}
    ids = sorted(rule_of, key=int)
    rows: dict[str, dict[str, str]] = {}
    for _ in range(30):  # slurmdbd may lag the end of a job by a moment
        rows = sacct_rows(ids)
        if all(rows.get(i, {}).get("End", "Unknown") not in ("Unknown", "") for i in ids):
            break
        time.sleep(1)
    finished_at: dict[str, float] = {}
    stamps = [(m.start(), m[1]) for m in STAMP.finditer(output)]
    for m in FINISHED.finditer(output):
        before = [stamp for pos, stamp in stamps if pos < m.start()]
        if before and m[1] in submitted:
            when = dt.datetime.strptime(before[-1], "%a %b %d %H:%M:%S %Y").timestamp()
            finished_at[submitted[m[1]][0]] = when
    jobs = []
    for sid in ids:
        row = rows.get(sid)
        if row is None:
            continue
        step = rows.get(f"{sid}.0", {})
        end = epoch(row["End"])
        jobs.append(
            {
                "slurm_id": sid,
                "rule": rule_of[sid],
                "state": row["State"],
                "job_s": int(row["ElapsedRaw"]),
                "step_s": int(step.get("ElapsedRaw") or 0),
                "wait_s": epoch(row["Start"]) - epoch(row["Submit"]),
                "submit_at_s": epoch(row["Submit"]) - started,
                "end_at_s": end - started,
                "notice_s": finished_at[sid] - end if sid in finished_at else None,
            }
        )
    foreign = foreign_jobs(set(ids), started, ended)
    per_rule: dict[str, list[int]] = {}
    for job in jobs:
        per_rule.setdefault(job["rule"], []).append(job["job_s"])
    notices = [j["notice_s"] for j in jobs if j["notice_s"] is not None]
    return {
        "jobs": len(jobs),
        "jobs_per_rule": {rule: len(v) for rule, v in sorted(per_rule.items())},
        "job_s_sum": sum(j["job_s"] for j in jobs),
        "step_s_sum": sum(j["step_s"] for j in jobs),
        "job_s_median_per_rule": {r: statistics.median(v) for r, v in sorted(per_rule.items())},
        "wait_s_sum": sum(j["wait_s"] for j in jobs),
        "first_submit_s": min((j["submit_at_s"] for j in jobs), default=None),
        "after_last_job_s": ended - max(epoch(rows[j["slurm_id"]]["End"]) for j in jobs),
        "notice_s_mean": statistics.mean(notices) if notices else None,
        "states": sorted({j["state"] for j in jobs}),
        "foreign_jobs": len(foreign),
        "foreign_job_s": round(sum(foreign.values()), 1),
        "job_list": jobs,
    }


def run_once(
    side: str, run_dir: Path, args: argparse.Namespace, shared: dict[str, Any]
) -> dict[str, Any]:
    cmd = prepare(side, run_dir, args, shared)
    started = time.time()
    sample, output = common.timed_run(cmd, cwd=run_dir, env=shared["env"], what=f"{side} run")
    ended = time.time()
    (run_dir / "snakemake.out").write_text(output)
    figures = slurm_figures(output, started, ended)
    if figures["states"] != ["COMPLETED"]:
        raise SystemExit(f"{side}: Slurm jobs ended {figures['states']} (see {run_dir})")
    print(
        f"  {side:5s} {sample.wall_s:6.1f} s wall, {figures['jobs']} Slurm jobs, "
        f"{figures['job_s_sum']} s summed job time ({figures['step_s_sum']} s in srun steps), "
        f"{figures['foreign_jobs']} other Slurm jobs during the run",
        flush=True,
    )
    return {"sample": sample, "figures": figures, "final": final_file(side, run_dir)}


# One job of every rule (up to two where the run has two or more, which run at once).
ANATOMY_TARGETS = [
    ("partition_items", [""]),
    ("process_batch", ["batch=00000", "batch=00001"]),
    ("merge_level", ["level=1,part=00000", "level=1,part=00001"]),
    ("merge_final", [""]),
    ("write_manifest", [""]),
]


def job_command(snakefile: Path, rule: str, wildcards: str, configfile: Path | None) -> list:
    """What a Slurm job's ``srun`` step runs for one job (as the plugin's ``format_job_exec``
    writes it, with the profile's defaults): ``snakemake --mode remote`` on one target job.
    The batch script runs the same with ``--executor slurm-jobstep --jobs 1``: it parses the
    workflow, plans the one job, and starts this command through ``srun``."""
    import yaml

    profile = yaml.safe_load((TEST_PROFILE / "config.yaml").read_text())
    defaults = [f"{k}={v}" for k, v in profile["default-resources"].items()]
    cmd = [
        sys.executable, "-m", "snakemake",
        "--snakefile", str(snakefile),
        "--target-jobs", f"{rule}:{wildcards}",
        "--allowed-rules", rule,
        "--cores", "all", "--attempt", "1", "--force-use-threads", "--force",
        "--target-files-omit-workdir-adjustment", "--max-inventory-time", "0",
        "--retries", "0", "--nocolor", "--no-hooks", "--nolock", "--ignore-incomplete",
        "--rerun-triggers", "params", "mtime", "software-env", "input", "code",
        "--shared-fs-usage", "software-deployment-cache", "input-output",
        "software-deployment", "sources", "storage-local-copies", "source-cache",
        "persistence",
        "--latency-wait", str(profile["latency-wait"]),
        "--storage-s3-retries", str(profile["storage-s3-retries"]),
        "--default-resources", "tmpdir=system_tmpdir", *defaults,
        "--mode", "remote",
    ]  # fmt: skip
    if configfile is not None:
        cmd += ["--configfiles", str(configfile)]
    return cmd


def sbatch_wait(
    commands: list[list[str]], run_dir: Path, env: dict[str, str], raw: bool = False
) -> float:
    """Submit one Slurm job per command at once, as the executor would (the batch script's
    Snakemake process with ``--executor slurm-jobstep``), and wait for all of them.

    Returns the seconds from the first job's command starting to the last one's ending,
    taken inside the jobs (``sbatch --wait`` itself polls with growing intervals); no
    status polling is involved.
    """
    import yaml

    resources = yaml.safe_load((TEST_PROFILE / "config.yaml").read_text())["default-resources"]
    procs = []
    for i, cmd in enumerate(commands):
        log = run_dir / ".snakemake" / f"bench-sbatch-{uuid.uuid4().hex[:8]}-{i}.log"
        inner = shlex.join(cmd if raw else [*cmd, "--executor", "slurm-jobstep", "--jobs", "1"])
        script = f"s=$(date +%s.%N); {inner}; rc=$?; echo BENCH_SPAN $s $(date +%s.%N); exit $rc"
        submit = [
            "sbatch", "--wait", "--quiet",
            "-A", str(resources["slurm_account"]),
            "-p", str(resources["slurm_partition"]),
            "-c", "1", "--mem", "500", "-t", "10",
            "-D", str(run_dir), "-o", str(log), "--wrap", script,
        ]  # fmt: skip
        proc = subprocess.Popen(
            submit, cwd=run_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        procs.append((proc, log))
    spans = []
    for proc, log in procs:
        output, _ = proc.communicate()
        text = log.read_text() if log.exists() else ""
        found = re.findall(r"^BENCH_SPAN ([\d.]+) ([\d.]+)$", text, re.MULTILINE)
        if proc.returncode != 0 or not found:
            raise SystemExit(f"Slurm job failed in {run_dir}: {output!r}\n{text[-3000:]}")
        spans.append((float(found[-1][0]), float(found[-1][1])))
    return max(end for _, end in spans) - min(start for start, _ in spans)


def anatomy(
    run_dirs: dict[str, Path], env: dict[str, str], repeats: int
) -> dict[str, dict[str, Any]]:
    """Per rule, what its jobs cost without the status polling, in the last repetition's
    finished run folders (every job re-run with ``--force``), sides alternating:

    * outside Slurm, one at a time, one job of the rule: ``run_s`` is the command a Slurm
      job's srun step runs (``job_command``), ``run_cpu_s`` its CPU time, and ``plan_s``
      the same with ``--dry-run`` (Python and Snakemake start-up, parsing the workflow,
      planning the one job); ``job_s = run_s - plan_s`` runs the rule itself;
    * in Slurm: ``slurm_s``, the wall time of ``sbatch --wait`` for the batch-script
      command of one or two jobs of the rule submitted together (two run at once, as in
      a run); a Slurm job pays ``plan_s`` twice (batch script, then srun step) and
      ``job_s`` once, plus Slurm's own start-up.
    """
    for run_dir in run_dirs.values():  # warm-up: the first Slurm job after a pause is slower
        sbatch_wait([[sys.executable, "-c", "import snakemake.cli"]], run_dir, env, raw=True)
    result: dict[str, dict[str, Any]] = {}
    for rule, targets in ANATOMY_TARGETS:
        samples: dict[str, dict[str, list[float]]] = {}
        for rep in range(repeats):
            sides = list(run_dirs.items())
            for side, run_dir in sides if rep % 2 == 0 else sides[::-1]:
                if side == "ours":
                    cmds = [
                        job_command(SNAKEFILE, rule, wc, run_dir / "config.yaml") for wc in targets
                    ]
                else:
                    cmds = [job_command(run_dir / "Snakefile", rule, wc, None) for wc in targets]
                what = f"{side} {rule} job command"
                plan, _ = common.timed_run([*cmds[0], "--dry-run"], run_dir, env, what)
                run, _ = common.timed_run(cmds[0], run_dir, env, what)
                slurm = sbatch_wait(cmds, run_dir, env)
                entry = samples.setdefault(side, {})
                for key, value in (
                    ("plan_s", plan.wall_s),
                    ("run_s", run.wall_s),
                    ("run_cpu_s", run.cpu_s),
                    ("slurm_s", slurm),
                ):
                    entry.setdefault(key, []).append(value)
        result[rule] = {"jobs_at_once": len(targets)}
        for side, entry in samples.items():
            figures = {key: statistics.median(values) for key, values in entry.items()}
            figures["job_s"] = figures["run_s"] - figures["plan_s"]
            result[rule][side] = figures
        ours, plain = result[rule]["ours"], result[rule]["plain"]
        print(
            f"  {rule:16s} plan + job: ours {ours['plan_s']:.2f} + {ours['job_s']:.2f} s, "
            f"plain {plain['plan_s']:.2f} + {plain['job_s']:.2f} s; Slurm job "
            f"({len(targets)} at once): ours {ours['slurm_s']:.2f} s, plain "
            f"{plain['slurm_s']:.2f} s",
            flush=True,
        )
    return result


def compare_finals(ours: Path, plain: Path) -> dict[str, Any]:
    """Equal final statistics: the same groups with the same integer sums, min and max, and
    mean and std equal to float precision."""
    import polars as pl
    from polars.testing import assert_frame_equal

    a = pl.read_parquet(ours).select(STAT_COLUMNS).sort("group")
    b = pl.read_parquet(plain).select(STAT_COLUMNS).sort("group")
    try:
        assert_frame_equal(a, b, check_exact=False, rel_tol=1e-12, abs_tol=1e-9)
    except AssertionError as exc:
        raise SystemExit(f"the final statistics differ: {exc}\nours:\n{a}\nplain:\n{b}") from None
    return {"groups": a.height, "items": int(a["count"].sum()), "identical": a.equals(b)}


def med(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r["figures"][key] for r in runs if r["figures"][key] is not None]
    return statistics.median(values) if values else None


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    per_rule: dict[str, list[float]] = {}
    for run in runs:
        for rule, value in run["figures"]["job_s_median_per_rule"].items():
            per_rule.setdefault(rule, []).append(value)
    return {
        **common.median_sample([r["sample"] for r in runs]),
        "jobs": runs[0]["figures"]["jobs"],
        "jobs_per_rule": runs[0]["figures"]["jobs_per_rule"],
        "job_s_sum": med(runs, "job_s_sum"),
        "step_s_sum": med(runs, "step_s_sum"),
        "wait_s_sum": med(runs, "wait_s_sum"),
        "first_submit_s": med(runs, "first_submit_s"),
        "after_last_job_s": med(runs, "after_last_job_s"),
        "notice_s_mean": med(runs, "notice_s_mean"),
        "foreign_jobs": med(runs, "foreign_jobs"),
        "foreign_job_s": med(runs, "foreign_job_s"),
        "job_s_median_per_rule": {r: statistics.median(v) for r, v in sorted(per_rule.items())},
        "runs": [r["figures"] for r in runs],
    }


# --------------------------------------------------------------------------------------------
# reporting


def fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def render(results: dict[str, Any], facts: dict[str, str], args: argparse.Namespace) -> str:
    ours, plain = results["ours"], results["plain"]
    ratio = results["ratio"]
    state = (
        "task state in a DynamoDB table on the local moto server"
        if args.state == "dynamodb"
        else "task state in SQLite in the run folder"
    )
    seen = set(ours["job_s_median_per_rule"]) | set(plain["job_s_median_per_rule"])
    rules = [r for r, _ in ANATOMY_TARGETS if r in seen] + sorted(
        seen - {r for r, _ in ANATOMY_TARGETS}
    )
    command = (
        f"bench/slurm.py --items {args.items} --batches {args.batches} --fan-in {args.fan_in} "
        f"--repeats {args.repeats}"
        + (" --state dynamodb" if args.state == "dynamodb" else "")
        + (f" --anatomy-repeats {args.anatomy_repeats}" if args.anatomy_repeats != 3 else "")
    )
    levels = " / ".join(map(str, results["levels"]))
    lines = [
        "## Slurm (the example on the local cluster)",
        "",
        f"`{command}`. The example (grouped statistics, reduce) over {args.items:,} records "
        f"in {args.batches} batches, merge tree {levels} (fan-in {args.fan_in}), run end to "
        "end with `snakemake --profile ...` on the local single-node Slurm cluster (2 CPUs, so "
        "at most two 1-CPU jobs run at once). **ours**: `workflow/Snakefile` with "
        f"`tests/profiles/slurm` (executor `orchestrator-slurm`), files in a local folder, "
        f"{state}. **plain**: a hand-written Snakefile of the same DAG shape (partition "
        "checkpoint, one job per batch, the merge tree with the same fan-in, the root, a "
        "manifest; a local report rule), polars in one `script:` per rule, run with the "
        "official `slurm` executor and a copy of the same profile with only the executor name "
        "and its option prefix swapped. Both use the test profile's status polling (first "
        "check after 1 s, then every 1 s, backing off by 10 s while nothing finishes); the "
        "production profile keeps the plugin's 40-180 s. Wall time is the median of "
        f"{args.repeats} runs per side, alternating, each from a clean working folder; the "
        "cluster is shared, so a repetition during which other Slurm jobs ran (other "
        "sessions' tests) is discarded and repeated, up to as many times again. Jobs and "
        "job times come from `sacct` (1 s resolution); *srun step* is the part of a job spent "
        "in the rule's own `snakemake` process, the rest is the batch script's Snakemake "
        "process that plans the job first.",
        "",
        "| | ours | plain | ours / plain |",
        "|---|---:|---:|---:|",
        f"| **wall time (s)** | {ours['wall_s']:.1f} | {plain['wall_s']:.1f} | **{ratio:.2f}x** |",
        f"| Slurm jobs | {ours['jobs']} | {plain['jobs']} | |",
        f"| summed job elapsed (s) | {fmt(ours['job_s_sum'], 0)} | {fmt(plain['job_s_sum'], 0)} "
        f"| {ours['job_s_sum'] / plain['job_s_sum']:.2f}x |",
        f"| of it in srun steps (s) | {fmt(ours['step_s_sum'], 0)} | "
        f"{fmt(plain['step_s_sum'], 0)} | |",
    ]
    for rule in rules:
        a = ours["job_s_median_per_rule"].get(rule)
        b = plain["job_s_median_per_rule"].get(rule)
        lines.append(f"| median job elapsed, {rule} (s) | {fmt(a, 0)} | {fmt(b, 0)} | |")
    pairs = ", ".join(
        f"{a['wall_s']:.1f} / {b['wall_s']:.1f}"
        for a, b in zip(ours["samples"], plain["samples"], strict=True)
    )
    lines += [
        f"| first job submitted after (s) | {fmt(ours['first_submit_s'])} | "
        f"{fmt(plain['first_submit_s'])} | |",
        f"| finished job noticed after (s, mean) | {fmt(ours['notice_s_mean'])} | "
        f"{fmt(plain['notice_s_mean'])} | |",
        f"| coordinator CPU (s) | {ours['cpu_s']:.1f} | {plain['cpu_s']:.1f} | |",
        f"| other Slurm jobs during the run (count / s) | {fmt(ours['foreign_jobs'], 0)} / "
        f"{fmt(ours['foreign_job_s'], 0)} | {fmt(plain['foreign_jobs'], 0)} / "
        f"{fmt(plain['foreign_job_s'], 0)} | |",
        "",
        f"Wall time per repetition, ours / plain (s): {pairs}. Repetitions discarded because "
        f"other Slurm jobs ran meanwhile: {results['discarded_repetitions']}; used runs that "
        f"still overlapped other jobs: {results['used_runs_disturbed']}.",
        "",
        f"Both final tables are equal ({results['check']['groups']} groups, "
        f"{results['check']['items']:,} items; "
        + ("bit for bit" if results["check"]["identical"] else "mean and std to 1e-12")
        + ") in every repetition.",
        "",
        "Target (ours no slower than plain, wall time): " + verdict(ratio, ours, plain),
    ]
    if results.get("diagnosis"):
        lines += ["", results["diagnosis"]]
    lines += ["", common.machine_line(facts, results["load_avg_1min"])]
    return "\n".join(lines)


def verdict(ratio: float, ours: dict[str, Any], plain: dict[str, Any]) -> str:
    """Met or not, and whether a miss is larger than what the measurement resolves: a run's
    wall time moves in steps of about the status polling's 10 s back-off."""
    if ratio <= 1.0:
        return f"**met** (ours / plain {ratio:.2f}x)."
    slower = ours["wall_s"] - plain["wall_s"]
    text = f"**not met**: ours {(ratio - 1) * 100:.0f}% ({slower:.1f} s) slower"
    if slower < POLL_STEP_S:
        text += (
            f", less than one {POLL_STEP_S:.0f} s step of the status polling's back-off, "
            "which decides which of a few durations a run gets: within what this "
            "measurement resolves"
        )
    return text + "."


def diagnose(results: dict[str, Any]) -> str:
    """Where the time goes: the per-job figures measured outside Slurm, scaled by the jobs
    of each rule, against the wall-time difference and the status polling."""
    ours, plain = results["ours"], results["plain"]
    d_wall = ours["wall_s"] - plain["wall_s"]
    lines = ["### Where the time goes", ""]
    found = results.get("anatomy")
    if found:
        lines += [
            "Every rule's jobs without the status polling, in the last repetition's finished "
            f"run folders (re-run with `--force`, median of {results['anatomy_repeats']}, "
            "sides alternating). Outside Slurm, one job at a time: *plan* is the srun step's "
            "command (`snakemake --mode remote --target-jobs ...`) with `--dry-run`: Python "
            "and Snakemake start-up, parsing the workflow, planning the one job; *job* is the "
            "whole command minus *plan*: running the rule; *CPU* is the whole command's. A "
            "Slurm job pays *plan* twice (the batch script's Snakemake process, then the srun "
            "step's) and *job* once. *Slurm job* is the batch script's command (Snakemake "
            "with `--executor slurm-jobstep`, which starts the srun step) run in Slurm with "
            "`sbatch --wait`, for one job, or for two submitted together where the run has two "
            "or more (they run at once, as in a run): from the first one's start to the last "
            "one's end, timed inside the jobs, after one warm-up job.",
            "",
            "| rule | jobs in a run | plan ours / plain (s) | job ours / plain (s) "
            "| CPU ours / plain (s) | Slurm job ours / plain (s) |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        extra = 0.0
        for rule, sides in found.items():
            a, b = sides["ours"], sides["plain"]
            n = ours["jobs_per_rule"].get(rule, 0)
            waves = -(-n // sides["jobs_at_once"])
            extra += waves * (a["slurm_s"] - b["slurm_s"])
            lines.append(
                f"| {rule} | {n} | {a['plan_s']:.2f} / {b['plan_s']:.2f} "
                f"| {a['job_s']:.2f} / {b['job_s']:.2f} "
                f"| {a['run_cpu_s']:.2f} / {b['run_cpu_s']:.2f} "
                f"| {a['slurm_s']:.2f} / {b['slurm_s']:.2f} |"
            )
        lines += [
            "",
            "Scaled to the run (the *Slurm job* difference times the waves of each rule's "
            f"jobs, two at a time), ours' jobs account for {extra:+.1f} s of the wall-time "
            "difference.",
        ]
    d_job = (ours["job_s_sum"] or 0) - (plain["job_s_sum"] or 0)
    lines += [
        "",
        f"Measured on the cluster: wall time {d_wall:+.1f} s (ours - plain), summed Slurm job "
        f"time {d_job:+.0f} s (1 s resolution, and jobs share two CPUs with the machine's "
        f"other load), {ours['jobs'] - plain['jobs']:+d} jobs. Beyond the jobs' own time, the "
        "wall time is set by status polling: the executor checks 1 s after a submission "
        "and then adds 10 s to the interval after every check that finds nothing finished, "
        "so finished jobs are "
        f"noticed after {fmt(ours['notice_s_mean'])} s (ours) and "
        f"{fmt(plain['notice_s_mean'])} s (plain) on average, and a difference of a second in "
        "a job's run time can move the run by up to ten. Coordinator start to first "
        f"submission: {fmt(ours['first_submit_s'])} s against {fmt(plain['first_submit_s'])} "
        "s; last job's end to the end of the run (noticing it, the local report rule): "
        f"{fmt(ours['after_last_job_s'])} s against {fmt(plain['after_last_job_s'])} s.",
        "",
        "The cluster is shared: other Slurm jobs (other sessions' test runs) hold one of the "
        "two CPUs each while they run, and the spread between repetitions (above; all "
        "figures in `bench/results/slurm.json`) is wider than most differences here.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=20_000, help="example records")
    parser.add_argument("--batches", type=int, default=8, help="batches (default 8)")
    parser.add_argument("--fan-in", type=int, default=4, help="merge fan-in (default 4)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side (median)")
    parser.add_argument(
        "--state",
        choices=["sqlite", "dynamodb"],
        default="sqlite",
        help="ours' task state (dynamodb: a table on the moto server at 127.0.0.1:5555)",
    )
    parser.add_argument(
        "--anatomy-repeats",
        type=int,
        default=3,
        help="runs per rule and side of the one-job measurement outside Slurm (0: skip)",
    )
    parser.add_argument("--no-docs", action="store_true", help="do not touch docs/benchmarks.md")
    parser.add_argument(
        "--keep", type=Path, default=None, help="run in this folder and keep it (default: temp)"
    )
    args = parser.parse_args(argv)
    if args.batches < 2 or args.items < args.batches:
        parser.error("need at least 2 batches and one item per batch")
    if shutil.which("sbatch") is None or shutil.which("sacct") is None:
        raise SystemExit("no Slurm client tools: start the cluster (tests/services/setup.sh all)")

    env = common.venv_env()
    if args.state == "dynamodb":
        env = common.aws_env(MOTO)
        os.environ.update({k: env[k] for k in env if k.startswith("AWS_")})
        for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
            os.environ.pop(name, None)

    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-slurm-"))
    work.mkdir(parents=True, exist_ok=True)
    max_items = -(-args.items // args.batches)
    if -(-args.items // max_items) != args.batches:
        parser.error(f"{args.items} items do not cut into {args.batches} equal batches")
    facts = common.machine_facts()
    try:
        shared = {
            "items": write_items(work, args.items),
            "max_items": max_items,
            "plain_profile": plain_profile(work),
            "env": env,
        }
        runs: dict[str, list[dict[str, Any]]] = {"ours": [], "plain": []}
        disturbed: dict[str, list[dict[str, Any]]] = {"ours": [], "plain": []}
        checks = []
        loads = [os.getloadavg()[0]]
        stamp = dt.datetime.now().strftime("%H%M%S")
        attempt = 0
        # A repetition during which other Slurm jobs ran (the cluster is shared) is repeated,
        # up to --repeats extra times; after that the disturbed ones are used as well.
        while len(runs["ours"]) < args.repeats and attempt < 2 * args.repeats:
            order = ["ours", "plain"] if attempt % 2 == 0 else ["plain", "ours"]
            print(f"[repetition {len(runs['ours']) + 1}/{args.repeats}]", flush=True)
            pair = {}
            for side in order:
                run_dir = work / f"{side}-{stamp}-{attempt}"
                pair[side] = run_once(side, run_dir, args, shared)
                loads.append(os.getloadavg()[0])
            checks.append(compare_finals(pair["ours"]["final"], pair["plain"]["final"]))
            last = {side: work / f"{side}-{stamp}-{attempt}" for side in ("ours", "plain")}
            attempt += 1
            clean = all(run["figures"]["foreign_jobs"] == 0 for run in pair.values())
            for side, run in pair.items():
                (runs if clean else disturbed)[side].append(run)
            if not clean:
                print("  other Slurm jobs ran meanwhile: repeating this repetition", flush=True)
        for side in runs:
            runs[side] += disturbed[side][: args.repeats - len(runs[side])]
        found = None
        if args.anatomy_repeats > 0:
            print("[one job per rule, outside Slurm and in Slurm]", flush=True)
            found = anatomy(last, env, args.anatomy_repeats)
        results: dict[str, Any] = {
            "items": args.items,
            "batches": args.batches,
            "fan_in": args.fan_in,
            "levels": level_sizes(args.batches, args.fan_in),
            "state": args.state,
            "repeats": args.repeats,
            "machine": facts,
            "load_avg_1min": [min(loads), max(loads)],
            "ours": summarise(runs["ours"]),
            "plain": summarise(runs["plain"]),
            "check": {**checks[0], "identical": all(c["identical"] for c in checks)},
            "anatomy": found,
            "anatomy_repeats": args.anatomy_repeats,
            "discarded_repetitions": attempt - len(runs["ours"]),
            "disturbed": {side: [r["figures"] for r in v] for side, v in disturbed.items()},
            "used_runs_disturbed": sum(
                r["figures"]["foreign_jobs"] > 0 for v in runs.values() for r in v
            ),
        }
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    results["ratio"] = results["ours"]["wall_s"] / results["plain"]["wall_s"]
    results["diagnosis"] = diagnose(results)
    common.publish("slurm", results, render(results, facts, args), args.no_docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
