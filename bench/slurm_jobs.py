"""Slurm jobs benchmark: one Slurm job per batch, job arrays and group jobs, on the local
cluster, and recovery of the best of them from a killed coordinator.

A benchmark, not a test: it asserts nothing about time. On Slurm every batch used to be
one ``sbatch`` and two Snakemake start-ups (the batch script's, which plans the job, then
the ``srun`` step's, which runs it): about 5 s of job time before the first item. This
runs one workflow of ``--batches`` small batches (the example's grouped statistics over
``--items`` records, ``orchestrator example-data``, merge fan-in ``--fan-in``; task state
in SQLite in the run folder, files in a local folder: this single node is its own shared
filesystem) end to end on the local cluster, in these ways:

* **per-batch**: ``profiles/slurm`` without its group settings: one Slurm job per batch;
* **array**: the same with the Slurm plugin's job arrays for ``process_batch``
  (``--orchestrator-slurm-array-jobs process_batch``), and **array, jobs: J**: the same
  with at most ``--array-jobs-limit`` jobs at once, fewer than the batches ready at once
  (given up after ``--array-timeout`` s if nothing moves);
* **plugin group-N**: Snakemake group jobs of N batches (``profiles/slurm``'s ``groups``,
  ``group-components batches=N`` and its one-batch-wide ``group_width``) with the
  official ``slurm`` executor, which runs every member of a group job in a Slurm step of
  its own (``srun`` and a Snakemake process each; the profile's options renamed
  ``orchestrator-slurm-*`` -> ``slurm-*``);
* **group-N**: the same groups with ``orchestrator-slurm``, which runs the members in the
  batch script's own Snakemake process (snakemake_executor_plugin_orchestrator_slurm).

Every variant's profile is ``profiles/slurm`` with the test profile's fast status polling
(first check after 1 s, then every 1 s, backing off by 10 s while nothing finishes; the
production profile keeps the plugin's 40-180 s), written into the working folder. For each
run: wall time of ``snakemake --profile ...``, the Slurm jobs from ``sacct`` (submissions,
job records: an array task is a record of its own; summed elapsed time), other Slurm jobs
that ran meanwhile (the cluster is shared), and whether the final table equals one polars
query over the input (count, sum, min, max exactly; mean and population std to 1e-9).

Then **recovery** of the variant with the lowest wall time among those with fewer Slurm
jobs than batches (or ``--recovery-variant``): the run is started, its coordinator
``snakemake`` SIGKILLed once ``--kill-at`` of the batches are committed, every Slurm job
it submitted is cancelled with ``scancel``, and the same command is run again (the profile
sets ``rerun-incomplete``). Checked: the final table equals polars, ``orchestrator manifest
verify`` passes (checksums, item conservation), and every batch was committed exactly once
over both runs (one SUCCEEDED transition per batch in the state store).

Run from the repository root, with the cluster up (``bash tests/services/setup.sh slurm``)::

    .venv/bin/python bench/slurm_jobs.py              # 100 batches, ~35 min
    .venv/bin/python bench/slurm_jobs.py --batches 20 --items 20000 --group-sizes 5 \\
        --plugin-group-sizes 5 --no-docs             # a quick look, ~10 min

Options: ``--items`` (100,000), ``--batches`` (100), ``--fan-in`` (10), ``--group-sizes``
(10 25), ``--plugin-group-sizes`` (10), ``--array-jobs-limit`` (20; 0 skips that run),
``--array-timeout`` (180), ``--repeats`` (1), ``--variants`` (run only these),
``--recovery-variant``, ``--kill-at`` (0.45: inside running group jobs of 10 or 25, not
between two waves of them), ``--recovery-only``, ``--keep DIR`` (run there and keep the run
folders, each with ``snakemake.out``), ``--no-docs``. Raw figures go to
``bench/results/slurm_jobs.json``.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import slurm as slurm_bench  # noqa: E402

REPO = common.REPO
SNAKEFILE = REPO / "workflow" / "Snakefile"
PROFILE = REPO / "profiles" / "slurm"
ORCHESTRATOR = str(common.BIN / "orchestrator")
RUN_ID = "bench"

#: The profile keys that make process_batch group jobs (profiles/slurm).
GROUP_KEYS = ("groups", "group-components", "set-resources", "resources", "set-resource-scopes")
#: What profiles/slurm sets, for a profile without them (group-components is the variant's).
GROUP_DEFAULTS: dict[str, Any] = {
    "groups": ["process_batch=batches"],
    "set-resources": ["process_batch:group_width=1"],
    "resources": ["group_width=1"],
    "set-resource-scopes": ["group_width=local"],
}
#: The test profile's status polling (tests/profiles/slurm).
FAST_POLLING = {
    "orchestrator-slurm-init-seconds-before-status-checks": 1,
    "seconds-between-status-checks": 1,
}
SUBMITTED = re.compile(r"has been submitted with SLURM jobid (\d+) \(log: ([^)]*)\)")
ARRAY = re.compile(r"Submitted array job with Snakemake IDs [\d,]+ and SLURM job ID (\d+)")
BATCH_LOG = re.compile(r"/(rule_process_batch|group_\w+)/")
#: A batch committed this long before the scancel counts as in flight (see ``commits``).
IN_FLIGHT_S = 2.0


# --------------------------------------------------------------------------------------------
# the variants


def variants(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Name, label, profile keys and executor of each way to run the batches."""
    found = [
        {"name": "per-batch", "label": "one job per batch", "keys": {}, "plugin": False},
        {
            "name": "array",
            "label": "job arrays",
            "keys": {"orchestrator-slurm-array-jobs": "process_batch"},
            "plugin": False,
        },
    ]
    if args.array_jobs_limit:
        found.append(
            {
                "name": f"array-jobs-{args.array_jobs_limit}",
                "label": f"job arrays, `jobs: {args.array_jobs_limit}`",
                "keys": {
                    "orchestrator-slurm-array-jobs": "process_batch",
                    "jobs": args.array_jobs_limit,
                },
                "plugin": False,
                "timeout": args.array_timeout,
            }
        )
    for size in args.plugin_group_sizes:
        found.append(
            {
                "name": f"plugin-group-{size}",
                "label": f"group jobs of {size}, the plugin's way (a Slurm step per batch)",
                "keys": group_keys(size),
                "plugin": True,
            }
        )
    for size in args.group_sizes:
        found.append(
            {
                "name": f"group-{size}",
                "label": f"group jobs of {size} (orchestrator-slurm: one Snakemake process)",
                "keys": group_keys(size),
                "plugin": False,
            }
        )
    return found


def profile_settings() -> dict[str, Any]:
    import yaml

    return yaml.safe_load((PROFILE / "config.yaml").read_text())


def group_keys(size: int) -> dict[str, Any]:
    """profiles/slurm's group settings (or GROUP_DEFAULTS), with groups of ``size``."""
    profile = profile_settings()
    keys: dict[str, Any] = {
        key: copy.deepcopy(profile.get(key, GROUP_DEFAULTS.get(key))) for key in GROUP_KEYS
    }
    name = keys["groups"][0].split("=", 1)[1]
    keys["group-components"] = [f"{name}={size}"]
    return keys


def write_profile(work: Path, variant: dict[str, Any]) -> Path:
    """profiles/slurm without its group settings, with fast polling and the variant's keys;
    for the official executor, with its options renamed."""
    import yaml

    profile = {k: v for k, v in profile_settings().items() if k not in GROUP_KEYS}
    profile.update(FAST_POLLING)
    profile.update(variant["keys"])
    if variant["plugin"]:
        profile["executor"] = "slurm"
        profile = {re.sub(r"^orchestrator-slurm-", "slurm-", k): v for k, v in profile.items()}
    folder = work / f"profile-{variant['name']}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return folder


def write_config(items: Path, args: argparse.Namespace, run_dir: Path) -> Path:
    """The example config (config/config.yaml), rooted in ``run_dir``."""
    import yaml

    raw = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    raw["run_id"] = RUN_ID
    raw["output_root"] = str(run_dir / "out")
    raw["input"] = {"uri": str(items), "format": "parquet", "id_column": "id"}
    raw["batching"] = {**raw["batching"], "max_items": -(-args.items // args.batches)}
    raw["merge"] = {"fan_in": args.fan_in, "mode": "reduce"}
    path = run_dir / "config.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


# --------------------------------------------------------------------------------------------
# running and measuring


def command(run_dir: Path, profile: Path, configfile: Path) -> list[str]:
    return [
        common.SNAKEMAKE,
        "--snakefile", str(SNAKEFILE),
        "--directory", str(run_dir),
        "--profile", str(profile),
        "--configfile", str(configfile),
    ]  # fmt: skip


def start(cmd: list[str], run_dir: Path, env: dict[str, str]) -> tuple[subprocess.Popen, Any]:
    out = open(run_dir / "snakemake.out", "w")  # noqa: SIM115 - closed by finish()
    proc = subprocess.Popen(
        cmd, cwd=run_dir, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )
    return proc, out


def our_jobs(run_dir: Path) -> list[tuple[str, str]]:
    """(job id, state) of the jobs submitted from ``run_dir`` that Slurm still knows."""
    out = subprocess.run(
        ["squeue", "--states=all", "-h", "-o", "%i|%T|%Z"],
        capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip
    jobs = []
    for line in out.splitlines():
        job, state, cwd = (line.split("|") + ["", ""])[:3]
        if Path(cwd) == run_dir:
            jobs.append((job, state))
    return jobs


def cancel_ours(run_dir: Path) -> list[str]:
    """scancel every pending or running Slurm job submitted from ``run_dir``."""
    live = [job for job, state in our_jobs(run_dir) if state in ("PENDING", "RUNNING")]
    if live:
        subprocess.run(["scancel", *{j.split("_")[0] for j in live}], timeout=60)
    return live


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL the process group of a run (a coordinator that hangs ignores SIGTERM)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


def run_variant(
    variant: dict[str, Any], run_dir: Path, shared: dict[str, Any], args: argparse.Namespace
) -> dict[str, Any]:
    """One run of ``variant`` from a clean working folder: wall time, Slurm jobs, check."""
    run_dir.mkdir(parents=True)
    profile = write_profile(run_dir, variant)
    configfile = write_config(shared["items"], args, run_dir)
    cmd = command(run_dir, profile, configfile)
    timeout = variant.get("timeout", args.timeout)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.time()
    proc, out = start(cmd, run_dir, shared["env"])
    hung = False
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        hung = True
        kill(proc)
        cancel_ours(run_dir)
    finally:
        out.close()
    ended = time.time()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    output = (run_dir / "snakemake.out").read_text(errors="replace")
    result: dict[str, Any] = {
        "variant": variant["name"],
        "wall_s": ended - started,
        "coordinator_cpu_s": (after.ru_utime + after.ru_stime)
        - (before.ru_utime + before.ru_stime),
        "returncode": proc.returncode,
        "hung": hung,
        "load_1min": os.getloadavg()[0],
    }
    result.update(slurm_jobs(output, run_dir, started, ended))
    if hung:
        result["committed"] = committed_batches(run_dir)
        print(
            f"  {variant['name']:18s} gave up after {timeout} s: {result['committed']} of "
            f"{args.batches} batches committed, {result['submissions']} sbatch calls",
            flush=True,
        )
        return result
    if proc.returncode != 0:
        raise SystemExit(f"{variant['name']} failed ({proc.returncode}):\n{output[-4000:]}")
    result["check"] = check_final(run_dir, shared["expected"])
    print(
        f"  {variant['name']:18s} {result['wall_s']:6.1f} s wall, {result['submissions']} sbatch "
        f"calls / {result['records']} Slurm job records ({result['batch_submissions']} / "
        f"{result['batch_records']} for process_batch), {result['job_s_sum']} s summed job "
        f"time, {result['foreign_jobs']} other Slurm jobs meanwhile, result "
        + ("equal" if result["check"]["equal"] else "DIFFERENT"),
        flush=True,
    )
    return result


def slurm_jobs(output: str, run_dir: Path, started: float, ended: float) -> dict[str, Any]:
    """The run's Slurm jobs from its log (which are process_batch's) and ``sacct``: sbatch
    submissions (an array is one) and job records (every array task is one)."""
    submitted = {m[1]: bool(BATCH_LOG.search(m[2])) for m in SUBMITTED.finditer(output)}
    submitted.update({m[1]: True for m in ARRAY.finditer(output)})
    rows: list[dict[str, str]] = []
    for _ in range(30):  # slurmdbd may lag the end of a job by a moment
        rows = sacct_by_workdir(run_dir, started)
        if all(r["End"][:1].isdigit() for r in rows):
            break
        time.sleep(1)
    records = [r for r in rows if r["JobID"].split("_")[0] in submitted]
    batch = [r for r in records if submitted[r["JobID"].split("_")[0]]]
    foreign = slurm_bench.foreign_jobs({r["JobID"] for r in rows}, started, ended)
    return {
        "submissions": len(submitted),
        "batch_submissions": sum(submitted.values()),
        "records": len(records),
        "batch_records": len(batch),
        "job_s_sum": sum(int(r["ElapsedRaw"] or 0) for r in records),
        "batch_job_s_sum": sum(int(r["ElapsedRaw"] or 0) for r in batch),
        "batch_job_s_median": statistics.median([int(r["ElapsedRaw"] or 0) for r in batch])
        if batch
        else None,
        "states": sorted({r["State"].split(" ")[0] for r in records}),
        "foreign_jobs": len(foreign),
        "foreign_job_s": round(sum(foreign.values()), 1),
        "restarts": output.count("Trying to restart job"),
        "array_script_fallback": "exceeds argument-length limits" in output,
    }


def sacct_by_workdir(run_dir: Path, since: float) -> list[dict[str, str]]:
    fields = ["JobID", "State", "ElapsedRaw", "Start", "End", "WorkDir"]
    begin = dt.datetime.fromtimestamp(since - 5).isoformat(timespec="seconds")
    out = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-S", begin, "-o", ",".join(fields)],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip
    rows = [dict(zip(fields, line.split("|"), strict=False)) for line in out.splitlines()]
    return [r for r in rows if r.get("WorkDir") and Path(r["WorkDir"]) == run_dir]


def expected_table(items: Path) -> Any:
    """The grouped statistics, straight from the input with one polars query."""
    import polars as pl

    v = pl.col("value").cast(pl.Int64)
    return (
        pl.read_parquet(items)
        .group_by("group")
        .agg(
            pl.len().cast(pl.Int64).alias("count"),
            v.sum().alias("sum"),
            v.min().alias("min"),
            v.max().alias("max"),
            v.mean().alias("mean"),
            v.std(ddof=0).alias("std"),
        )
        .sort("group")
    )


def check_final(run_dir: Path, expected: Any) -> dict[str, Any]:
    import polars as pl
    from polars.testing import assert_frame_equal

    final = run_dir / "out" / RUN_ID / "final" / "result.parquet"
    got = pl.read_parquet(final).select(expected.columns).sort("group")
    exact = ["group", "count", "sum", "min", "max"]
    equal = got.select(exact).equals(expected.select(exact))
    try:
        assert_frame_equal(got, expected, check_exact=False, rel_tol=1e-9, abs_tol=1e-9)
    except AssertionError:
        equal = False
    return {"equal": equal, "groups": got.height, "items": int(got["count"].sum())}


def layout(run_dir: Path) -> Any:
    from orchestrator_ext.layout import RunLayout

    return RunLayout(str(run_dir / "out" / RUN_ID))


def committed_batches(run_dir: Path) -> int:
    """Batches whose result record is published (the last file a batch writes)."""
    return len(list((run_dir / "out" / RUN_ID / "results").glob("batch-*.json")))


# --------------------------------------------------------------------------------------------
# recovery


def recovery(
    variant: dict[str, Any], run_dir: Path, shared: dict[str, Any], args: argparse.Namespace
) -> dict[str, Any]:
    """Kill the coordinator midway, cancel its Slurm jobs, run again; check the result."""
    run_dir.mkdir(parents=True)
    profile = write_profile(run_dir, variant)
    configfile = write_config(shared["items"], args, run_dir)
    cmd = command(run_dir, profile, configfile)
    kill_at = max(1, round(args.batches * args.kill_at))
    started = time.time()
    proc, out = start(cmd, run_dir, shared["env"])
    try:
        while committed_batches(run_dir) < kill_at:
            if proc.poll() is not None:
                raise SystemExit(f"recovery: the run ended before {kill_at} batches committed")
            if time.time() - started > args.timeout:
                raise SystemExit("recovery: the run made no progress")
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)  # the coordinator only: its Slurm jobs go on
        killed_at = time.time()
        proc.wait(timeout=60)
        at_kill = committed_batches(run_dir)
        cancelled_at = time.time()
        cancelled = cancel_ours(run_dir)
        while any(state in ("PENDING", "RUNNING") for _, state in our_jobs(run_dir)):
            time.sleep(0.5)
        after_cancel = committed_batches(run_dir)
    finally:
        kill(proc)
        out.close()
    first = (run_dir / "snakemake.out").read_text(errors="replace")
    (run_dir / "snakemake-killed.out").write_text(first)
    rerun_started = time.time()
    proc, out = start(cmd, run_dir, shared["env"])
    try:
        proc.wait(timeout=args.timeout)
    finally:
        kill(proc)
        out.close()
    ended = time.time()
    second = (run_dir / "snakemake.out").read_text(errors="replace")
    if proc.returncode != 0:
        raise SystemExit(f"recovery: the rerun failed ({proc.returncode}):\n{second[-4000:]}")
    verify = subprocess.run(
        [ORCHESTRATOR, "manifest", "verify", "--configfile", str(configfile)],
        capture_output=True, text=True, timeout=300, cwd=run_dir, env=shared["env"],
    )  # fmt: skip
    result = {
        "variant": variant["name"],
        "killed_after_s": killed_at - started,
        "committed_at_kill": at_kill,
        "committed_after_cancel": after_cancel,
        "cancelled_jobs": len(cancelled),
        "rerun_wall_s": ended - rerun_started,
        "total_s": ended - started,
        "check": check_final(run_dir, shared["expected"]),
        "verify_ok": verify.returncode == 0,
        "verify_output": (verify.stdout + verify.stderr).strip()[-2000:],
        **commits(run_dir, cancelled_at),
        "first": slurm_jobs(first, run_dir, started, killed_at),
        "rerun": slurm_jobs(second, run_dir, rerun_started, ended),
    }
    print(
        f"  recovery ({variant['name']}): killed after {result['killed_after_s']:.0f} s with "
        f"{at_kill} batches committed ({after_cancel} once its {len(cancelled)} Slurm jobs "
        f"were cancelled); rerun {result['rerun_wall_s']:.1f} s; result "
        + ("equal" if result["check"]["equal"] else "DIFFERENT")
        + f", manifest verify {'passed' if result['verify_ok'] else 'FAILED'}, batches "
        f"committed once: {result['committed_once']} of {args.batches} "
        f"({result['rerun_batches']} recomputed by the rerun)",
        flush=True,
    )
    return result


def commits(run_dir: Path, cancelled_at: float) -> dict[str, Any]:
    """Per batch, from the state store: how often it was committed, and the manifest's
    item-conservation equation. A batch committed again by the rerun whose first commit was
    at most ``IN_FLIGHT_S`` before the ``scancel`` was in flight: its job was cancelled
    between the commit and its Snakemake marking the output complete, so the rerun
    (``rerun-incomplete``) ran it again, as a new attempt that replaced the same result."""
    from orchestrator_ext.state.sqlite import SqliteStateStore
    from orchestrator_ext.storage import read_json

    run = layout(run_dir)
    store = SqliteStateStore(run.state_db, RUN_ID, create=False)
    try:
        batches = [t for t in store.tasks() if t.kind == "batch"]
        done = {
            t.task_id: [x.at for x in store.transitions(t.task_id) if x.to_status == "SUCCEEDED"]
            for t in batches
        }
        attempts = {t.task_id: t.attempt for t in batches}
    finally:
        store.close()
    manifest = read_json(run.manifest)
    return {
        "batches": len(batches),
        "committed_once": sum(len(at) == 1 for at in done.values()),
        "committed_more": sorted(b for b, at in done.items() if len(at) > 1),
        "committed_more_in_flight": sorted(
            b
            for b, at in done.items()
            if len(at) > 1
            and dt.datetime.fromisoformat(at[0]).timestamp() >= cancelled_at - IN_FLIGHT_S
        ),
        "never_committed": sorted(b for b, at in done.items() if not at),
        "rerun_batches": sum(a > 1 for a in attempts.values()),
        "items_in": manifest["items_in"],
        "items_processed": manifest["items_processed"],
        "items_dead_lettered": manifest["items_dead_lettered"],
    }


# --------------------------------------------------------------------------------------------
# reporting


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median wall time of a variant's runs, with the figures of its median run."""
    done = [r for r in runs if not r["hung"]]
    if not done:
        return {**runs[0], "walls": [r["wall_s"] for r in runs]}
    median = sorted(done, key=lambda r: r["wall_s"])[(len(done) - 1) // 2]
    return {**median, "walls": [r["wall_s"] for r in done]}


def best_variant(results: dict[str, Any], batches: int) -> str:
    """The fastest variant with fewer Slurm jobs than batches (else the fastest)."""
    done = {n: r for n, r in results["variants"].items() if not r["hung"]}
    fewer = {n: r for n, r in done.items() if r["records"] < batches}
    pool = fewer or done
    return min(pool, key=lambda n: pool[n]["wall_s"])


def render(results: dict[str, Any], facts: dict[str, str], args: argparse.Namespace) -> str:
    order = [v["name"] for v in variants(args)]
    found = {
        name: results["variants"][name]
        for name in sorted(
            results["variants"],
            key=lambda n: (n not in order, order.index(n) if n in order else 0, n),
        )
    }
    results = {**results, "variants": found}
    base = found.get("per-batch")
    labels = {v["name"]: v["label"] for v in variants(args)}
    command_line = (
        f"bench/slurm_jobs.py --items {args.items} --batches {args.batches} --fan-in "
        f"{args.fan_in} --group-sizes {' '.join(map(str, args.group_sizes))} "
        f"--plugin-group-sizes {' '.join(map(str, args.plugin_group_sizes))} "
        f"--array-jobs-limit {args.array_jobs_limit} --repeats {args.repeats}"
    )
    levels = " / ".join(map(str, slurm_bench.level_sizes(args.batches, args.fan_in)))
    lines = [
        "## Slurm jobs: one per batch, job arrays, group jobs",
        "",
        f"`{command_line}`. The example (grouped statistics, reduce) over {args.items:,} "
        f"records in {args.batches} batches of {-(-args.items // args.batches):,} (about a "
        f"second of work each), merge tree {levels}, run end to end with `snakemake "
        "--profile ...` on the local single-node Slurm cluster (2 CPUs: at most two 1-CPU "
        "jobs at once), task state in SQLite, files in a local folder. Every profile is "
        "`profiles/slurm` with the test profile's fast status polling (1 s, +10 s per check "
        "that finds nothing finished; production keeps the plugin's 40-180 s) and, but for "
        "*per-batch* and the arrays, its group settings with the group size shown. *Slurm "
        "jobs* from `sacct`: sbatch submissions / job records (each array task is a record "
        "and a job to the scheduler); the merge tree, the partition and the merges add "
        f"{found[next(iter(found))]['submissions'] - found[next(iter(found))]['batch_submissions']}"
        " jobs to every variant. *Equal*: the final table equals one polars query over the "
        "input (count, sum, min, max exactly; mean and std to 1e-9). Wall time is the "
        f"median of {args.repeats} run(s) per variant.",
        "",
        "| variant | wall (s) | vs per-batch | Slurm jobs: sbatch / records | of them "
        "process_batch | process_batch job (s, median) | summed job time (s) | resubmitted "
        "| equal |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, run in found.items():
        if run["hung"]:
            lines.append(
                f"| {labels.get(name, name)} | hung: killed after {run['wall_s']:.0f} | | "
                f"{run['submissions']} / {run['records']} | {run['batch_submissions']} / "
                f"{run['batch_records']} | | | {run.get('restarts', '')} | "
                f"{run['committed']} of {args.batches} batches done |"
            )
            continue
        ratio = f"{run['wall_s'] / base['wall_s']:.2f}x" if base and not base["hung"] else ""
        median = run["batch_job_s_median"]
        lines.append(
            f"| {labels.get(name, name)} | {run['wall_s']:.1f} | {ratio} | "
            f"{run['submissions']} / {run['records']} | {run['batch_submissions']} / "
            f"{run['batch_records']} | {slurm_bench.fmt(median, 0)} | {run['job_s_sum']} | "
            f"{run.get('restarts', '')} | " + ("yes" if run["check"]["equal"] else "**no**") + " |"
        )
    disturbed = {n: r["foreign_jobs"] for n, r in found.items() if r["foreign_jobs"]}
    walls = "; ".join(
        f"{n} " + ", ".join(f"{w:.1f}" for w in r["walls"])
        for n, r in found.items()
        if len(r.get("walls", [])) > 1
    )
    if walls:
        lines += ["", f"Wall time of every run (s): {walls}."]
    lines += [
        "",
        "Other sessions' Slurm jobs that ran during a variant (they take one of the two "
        "CPUs each): "
        + (", ".join(f"{n} {c}" for n, c in disturbed.items()) if disturbed else "none")
        + ". 1-minute load average at the end of each run: "
        + ", ".join(f"{n} {r['load_1min']:.1f}" for n, r in found.items())
        + " (the machine is shared; read the figures to one digit).",
    ]
    rec = results.get("recovery")
    if rec:
        ok = recovery_intact(rec)
        lines += [
            "",
            f"**Recovery** ({rec['variant']}"
            + (
                ""
                if getattr(args, "recovery_variant", None)
                else ", the fastest with fewer Slurm jobs than batches"
            )
            + "): the coordinator "
            f"was SIGKILLed {rec['killed_after_s']:.0f} s into the run, with "
            f"{rec['committed_at_kill']} of {args.batches} batches committed; its "
            f"{rec['cancelled_jobs']} live Slurm job(s) were cancelled with `scancel` "
            f"({rec['committed_after_cancel']} batches committed by then), and the same "
            f"command was run again: {rec['rerun_wall_s']:.1f} s, "
            f"{rec['rerun']['submissions']} sbatch submissions "
            f"({rec['rerun']['batch_submissions']} for process_batch), "
            f"running the {args.batches - rec['committed_after_cancel']} batches not "
            "committed yet"
            + (
                f" and {len(rec['committed_more'])} committed one(s) again (below)"
                if rec["committed_more"]
                else ""
            )
            + f"; {rec['rerun_batches']} of these ran a second attempt (begun by a cancelled "
            "job). Result equal to polars: "
            + ("yes" if rec["check"]["equal"] else "**no**")
            + "; `orchestrator manifest verify`: "
            + ("passed" if rec["verify_ok"] else f"**failed**: {rec['verify_output']}")
            + f"; items in {rec['items_in']:,} = processed {rec['items_processed']:,} + "
            f"dead-lettered {rec['items_dead_lettered']}; batches committed exactly once "
            f"(one SUCCEEDED transition in the state store): {rec['committed_once']} of "
            f"{args.batches}"
            + (
                f" (twice: {', '.join(rec['committed_more'])}; in flight at the `scancel`, "
                f"committed less than {IN_FLIGHT_S:.0f} s before it: "
                f"{', '.join(rec['committed_more_in_flight']) or 'none'}. Its job was "
                "cancelled between the batch's commit and its Snakemake marking the output "
                "complete, so the rerun ran it again: a second attempt that replaced the same "
                "result, counted once by the manifest)"
                if rec["committed_more"]
                else ""
            )
            + ". Recovery "
            + ("**intact**." if ok else "**broken**."),
        ]
    lines += ["", verdict(results, args), "", *analysis(results, args)]
    lines += ["", common.machine_line(facts, results["loads"])]
    return "\n".join(lines)


def per_batch_s(run: dict[str, Any], size: int) -> float | None:
    """Slurm job time per batch of a variant's process_batch jobs."""
    if run["hung"] or not run["batch_records"]:
        return None
    return float(run["batch_job_s_sum"]) / (run["batch_records"] * size)


def analysis(results: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """What each way does to a batch, with this run's figures (the part of the section a
    reader needs to choose)."""
    found = results["variants"]
    base = found.get("per-batch")
    if not base or base["hung"]:
        return []

    def wall(name: str) -> str:
        run = found[name]
        return f"{run['wall_s']:.0f} s, {run['wall_s'] / base['wall_s']:.2f}x per-batch"

    lines = [
        "### What each way does to a batch",
        "",
        f"- **One job per batch** ({base['records']} Slurm jobs): a process_batch job takes "
        f"{slurm_bench.fmt(base['batch_job_s_median'], 0)} s (median, `sacct`) for about a "
        "second of work: `sbatch`, the batch script's Snakemake process (parses the workflow, "
        "plans the one job), then the `srun` step's Snakemake process, which runs it.",
    ]
    if "array" in found and not found["array"]["hung"]:
        arr = found["array"]
        text = (
            f"- **Job arrays** ({wall('array')}): one `sbatch` for all {args.batches} "
            f"batches, but still {arr['batch_records']} Slurm job records: every task is a job "
            "to the scheduler and counts against per-user job limits. In plugin 2.8 every "
            "task but the first runs three Snakemake processes (the batch script's, which "
            "plans the array's *first* job, decodes its own task's command and starts it as a "
            "second Snakemake process with the jobstep executor, which starts the `srun` "
            "step's): at 20 batches, where the array worked, tasks took 11-18 s against 9 s "
            "for one job per batch."
        )
        if arr.get("array_script_fallback") or arr["restarts"] >= args.batches // 2:
            text += (
                f" At {args.batches} batches it does not work: {arr['restarts']} tasks failed "
                "and were resubmitted one by one. The tasks' commands (compressed, in one "
                "argument) are too long for `sbatch --wrap`, and the plugin's fallback batch "
                "script puts `--slurm-jobstep-array-execs` and its payload on lines of their "
                "own: every task ran the first batch's command (that batch was computed and "
                "committed once per task, each attempt replacing the same result) and then "
                "failed on `--slurm-jobstep-array-execs: not found`."
            )
        text += (
            " Not adopted. (Before orchestrator-slurm asked `sacct` for tasks by their names, "
            "`array_task_states`, every task also counted as finished once the array's "
            "first one had: in an earlier 100-batch run 17 tasks were resubmitted as missing "
            "their outputs, 6 of 100 batches were done after 27 minutes, and it was stopped.)"
        )
        lines.append(text)
    hung = [n for n, r in found.items() if r["hung"] and n.startswith("array")]
    for name in hung:
        run = found[name]
        lines.append(
            f"- **Job arrays with `jobs` below the batches ready at once** ({name}): "
            f"{run['committed']} of {args.batches} batches done and "
            f"{run['batch_submissions'] or 'no'} array submitted after {run['wall_s']:.0f} s, "
            "when the "
            "benchmark killed the run. The plugin holds the jobs Snakemake selected back "
            "until the rest of the rule's ready jobs arrive (`run_jobs`: fewer than the ready "
            "ones and than `array_limit`: wait), but Snakemake counts them as running and "
            "selects no more: the run waits forever. `profiles/slurm` has `jobs: 200`, so any "
            "run of more than 200 batches would hang with arrays."
        )
    for name, run in found.items():
        if not name.startswith("plugin-group-") or run["hung"]:
            continue
        size = int(name.rsplit("-", 1)[1])
        lines.append(
            f"- **Group jobs the plugin's way** ({name}: {wall(name)}, {run['records']} Slurm "
            f"jobs): one `sbatch` per {size} batches, but the jobstep executor runs every "
            "member in a Slurm step of its own, through `srun` and a Snakemake process each: "
            f"{slurm_bench.fmt(per_batch_s(run, size), 1)} s of job time per batch against "
            f"{slurm_bench.fmt(per_batch_s(base, 1), 1)} s. It saves the `sbatch` and one of "
            "the two Snakemake start-ups."
        )
    for name, run in found.items():
        if not name.startswith("group-") or run["hung"]:
            continue
        size = int(name.rsplit("-", 1)[1])
        lines.append(
            f"- **Group jobs, orchestrator-slurm** ({name}: {wall(name)}, {run['records']} "
            f"Slurm jobs): the members run in the batch script's own Snakemake process, one "
            f"after another: {slurm_bench.fmt(per_batch_s(run, size), 1)} s of job time per "
            "batch, the start-up paid once per group job."
        )
    lines += [
        "",
        "What group jobs cost, and what was fixed to adopt them (`profiles/slurm`, "
        "snakemake_executor_plugin_orchestrator_slurm):",
        "",
        "- A group job's time limit is the sum of its batches' `resources.runtime` (Snakemake "
        "adds runtimes of jobs that run one after another), and it asks for one batch's CPUs "
        "and memory (`group_width`, a one-wide local resource in the profile).",
        "- A run has at most batches / group size Slurm jobs at once: a run of fewer batches "
        "than the group size times the jobs a cluster would run at once loses parallelism.",
        "- A failed batch fails its group job: Snakemake removes the outputs of all its "
        "batches and resubmits them together (the state store counts the extra attempts; "
        "the result is the same). A permanent failure is not resubmitted, as before.",
        "- Snakemake 9.27 regrouped a resumed run (post-processing the DAG twice after the "
        "partition checkpoint) into growing, overlapping groups and submitted one running "
        "group job again and again: 113 submissions in a 20-batch rerun before the fix "
        "(`stable_group_components`; snakemake issue 1628, plugin issue 253).",
        "- The plugin's failure handler for a submission of a group job raised "
        "(`job.rule`) inside the submission thread, so a failed `sbatch` left the run "
        "waiting forever; orchestrator-slurm reports it as a failed job.",
    ]
    return lines


def recovery_intact(rec: dict[str, Any]) -> bool:
    """The result is right, verified and conserved, no batch is missing, and a batch was
    committed twice only if it was in flight when its job was cancelled."""
    return bool(
        rec["check"]["equal"]
        and rec["verify_ok"]
        and rec["items_in"] == rec["items_processed"] + rec["items_dead_lettered"]
        and not rec["never_committed"]
        and set(rec["committed_more"]) <= set(rec["committed_more_in_flight"])
    )


def verdict(results: dict[str, Any], args: argparse.Namespace) -> str:
    found = results["variants"]
    base, best = found.get("per-batch"), found.get(results.get("best", ""))
    rec = results.get("recovery")
    if not base or not best or base["hung"] or best["hung"]:
        return "Target: not measured."
    fewer = best["records"] < args.batches
    faster = best["wall_s"] < base["wall_s"]
    intact = rec is not None and recovery_intact(rec)
    met = fewer and faster and intact
    return (
        f"Target (Slurm, {args.batches} batches: fewer Slurm jobs than batches, wall below one "
        f"job per batch, recovery intact): **{'met' if met else 'not met'}** by "
        f"{results['best']}: {best['records']} Slurm jobs against {args.batches} batches, "
        f"{best['wall_s']:.1f} s against {base['wall_s']:.1f} s "
        f"({best['wall_s'] / base['wall_s']:.2f}x), recovery "
        + ("intact" if intact else "not intact")
        + (
            f" (measured on {rec['variant']})."
            if rec and rec["variant"] != results["best"]
            else "."
        )
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=100_000, help="example records")
    parser.add_argument("--batches", type=int, default=100, help="batches (default 100)")
    parser.add_argument("--fan-in", type=int, default=10, help="merge fan-in (default 10)")
    parser.add_argument("--group-sizes", type=int, nargs="*", default=[10, 25])
    parser.add_argument("--plugin-group-sizes", type=int, nargs="*", default=[10])
    parser.add_argument("--array-jobs-limit", type=int, default=20, help="0: skip that run")
    parser.add_argument("--array-timeout", type=int, default=180, help="seconds")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per run")
    parser.add_argument("--repeats", type=int, default=1, help="runs per variant (median)")
    parser.add_argument("--variants", nargs="*", default=None, help="run only these")
    parser.add_argument("--recovery-variant", default=None, help="default: the best")
    parser.add_argument("--kill-at", type=float, default=0.45, help="fraction committed")
    parser.add_argument(
        "--recovery-only",
        action="store_true",
        help="run only the recovery, into bench/results/slurm_jobs.json's figures",
    )
    parser.add_argument("--no-docs", action="store_true", help="do not touch docs/benchmarks.md")
    parser.add_argument("--keep", type=Path, default=None, help="run here and keep the runs")
    parser.add_argument(
        "--from-results",
        action="store_true",
        help="run nothing: render bench/results/slurm_jobs.json again (with these options)",
    )
    args = parser.parse_args(argv)
    if args.from_results:
        saved = common.load_results("slurm_jobs")
        if saved is None:
            raise SystemExit("no bench/results/slurm_jobs.json to render")
        section = render(saved, saved["machine"], args)
        print(section)
        if not args.no_docs:
            common.write_section("slurm_jobs", section)
        return 0
    if args.batches < 2 or args.items < args.batches:
        parser.error("need at least 2 batches and one item per batch")
    if -(-args.items // -(-args.items // args.batches)) != args.batches:
        parser.error(f"{args.items} items do not cut into {args.batches} equal batches")
    if shutil.which("sbatch") is None or shutil.which("sacct") is None:
        raise SystemExit("no Slurm client tools: start the cluster (tests/services/setup.sh)")

    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-slurm-jobs-"))
    work.mkdir(parents=True, exist_ok=True)
    facts = common.machine_facts()
    stamp = dt.datetime.now().strftime("%H%M%S")
    saved = common.load_results("slurm_jobs") if args.recovery_only else None
    if args.recovery_only and saved is None:
        raise SystemExit("--recovery-only: no bench/results/slurm_jobs.json")
    try:
        items = slurm_bench.write_items(work, args.items)
        # This checkout's code in every process of the runs (sbatch exports the variable),
        # whichever checkout the venv's editable install points to.
        pythonpath = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
        env = common.venv_env(PYTHONPATH=pythonpath)
        shared = {"items": items, "expected": expected_table(items), "env": env}
        runs: dict[str, list[dict[str, Any]]] = {}
        loads = [os.getloadavg()[0]]
        chosen_ones = [v for v in variants(args) if not args.variants or v["name"] in args.variants]
        if saved is not None:
            chosen_ones = []
        for rep in range(args.repeats):
            order = chosen_ones if rep % 2 == 0 else chosen_ones[::-1]
            print(f"[repetition {rep + 1}/{args.repeats}]", flush=True)
            for variant in order:
                run_dir = work / f"{variant['name']}-{stamp}-{rep}"
                runs.setdefault(variant["name"], []).append(
                    run_variant(variant, run_dir, shared, args)
                )
                loads.append(os.getloadavg()[0])
        order_names = [v["name"] for v in variants(args)]
        results: dict[str, Any] = saved or {
            "items": args.items,
            "batches": args.batches,
            "fan_in": args.fan_in,
            "repeats": args.repeats,
            "variants": {n: summarise(runs[n]) for n in order_names if n in runs},
            "runs": runs,
            "loads": [min(loads), max(loads)],
        }
        results["best"] = best_variant(results, args.batches)
        target = args.recovery_variant or results["best"]
        chosen = next(v for v in variants(args) if v["name"] == target)
        print(f"[recovery: {chosen['name']}]", flush=True)
        results["recovery"] = recovery(chosen, work / f"recovery-{stamp}", shared, args)
        results["recovery"]["kill_at"] = args.kill_at
        results["loads"] = [min(*results["loads"], *loads), max(*results["loads"], *loads)]
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    results.setdefault("machine", facts)
    facts = results["machine"]
    common.publish("slurm_jobs", results, render(results, facts, args), args.no_docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
