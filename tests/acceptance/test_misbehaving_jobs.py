"""Jobs that misbehave: drifting types, lost or repeated rows, crashes, noise, hostile text.

Each test writes its own job module (``bad_jobs.py``) into an empty folder, runs the real
``snakemake`` and ``orchestrator`` commands on a config written from scratch, and checks
what the run refused, recorded or computed (against an independent polars query where there
is a result).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import polars as pl
import pytest
from conftest import wait_gone

from .conftest import (
    OUTPUT_ROOT,
    REPO,
    SNAKEMAKE,
    TIMEOUT_S,
    Result,
    assert_frames_match,
    assert_refused,
    read_final,
    run_dir,
    run_orchestrator,
    run_snakemake,
    sensor_readings,
    write_config,
)

pytestmark = pytest.mark.workflow

CONFIG = "my-run.yaml"


# -- helpers -----------------------------------------------------------------------------


def setup_run(
    workdir: Path,
    jobs: str,
    run_id: str,
    job: dict,
    *,
    n: int = 60,
    seed: int,
    prefix: str = "m",
    max_items: int = 20,
    **extra: dict,
) -> pl.DataFrame:
    """Write ``bad_jobs.py``, seeded readings and my-run.yaml into ``workdir``; return the
    readings."""
    (workdir / "bad_jobs.py").write_text(jobs)
    readings = sensor_readings(n, seed=seed, prefix=prefix)
    readings.write_csv(workdir / "readings.csv")
    config = {
        "run_id": run_id,
        "output_root": OUTPUT_ROOT,
        "input": {"uri": "readings.csv", "format": "csv"},
        "batching": {"max_items": max_items},
        "job": job,
        **extra,
    }
    write_config(workdir, config)
    return readings


def batch_logs(workdir: Path, run_id: str) -> str:
    """Every process_batch log of the run, concatenated."""
    folder = run_dir(workdir, run_id) / "logs" / "process_batch"
    return "".join(p.read_text(errors="replace") for p in sorted(folder.glob("*.log")))


def lines_matching(text: str, *patterns: str) -> list[str]:
    """Lines of ``text`` that match every one of ``patterns``."""
    return [line for line in text.splitlines() if all(re.search(p, line) for p in patterns)]


def assert_failed_naming(result: Result, workdir: Path, run_id: str, *patterns: str) -> str:
    """Snakemake failed, left no final, and its output or a batch log has a line matching
    every pattern; returns that line."""
    assert result.returncode != 0, f"expected the run to fail:\n{result.describe()}"
    final = run_dir(workdir, run_id) / "final" / "result.parquet"
    assert not final.exists(), f"a final result was written:\n{result.describe()}"
    found = lines_matching(result.output + "\n" + batch_logs(workdir, run_id), *patterns)
    assert found, (
        f"no line matches all of {patterns!r} in the output or the batch logs:\n"
        f"{result.describe()}\n--- batch logs ---\n{batch_logs(workdir, run_id)[-6000:]}"
    )
    return found[0]


def read_manifest(workdir: Path, run_id: str) -> dict:
    return json.loads((run_dir(workdir, run_id) / "manifest.json").read_text())


# -- 1. schema drift ---------------------------------------------------------------------

DRIFT_JOBS = """
import polars as pl


def int_then_string(batch, ctx):
    out = batch.select("id", pl.col("reading").cast(pl.Int64).alias("v"))
    if ctx.batch_id != "00000":
        out = out.with_columns(pl.col("v").cast(pl.String))
    return out


def float_then_int(batch, ctx):
    out = batch.select("id", pl.col("reading").cast(pl.Int64).alias("v"))
    if ctx.batch_id == "00000":
        out = out.with_columns(pl.col("v").cast(pl.Float64))
    return out


def partial(batch, ctx):
    out = batch.group_by("station").agg(pl.col("reading").cast(pl.Int64).sum().alias("total"))
    if ctx.batch_id == "00001":
        out = out.with_columns(pl.col("total").cast(pl.Float64))
    return out


def combine(partials, ctx):
    return partials.group_by("station").agg(pl.col("total").sum())
"""


@pytest.mark.parametrize(
    ("function", "types"),
    [("int_then_string", ("Int64", "String")), ("float_then_int", ("Float64", "Int64"))],
)
def test_schema_drift_between_batches_fails_naming_column_and_types(
    tmp_path: Path, function: str, types: tuple[str, str]
) -> None:
    setup_run(tmp_path, DRIFT_JOBS, "drift", {"function": f"bad_jobs:{function}"}, seed=811)
    result = run_snakemake(tmp_path, CONFIG, check=False)
    assert_failed_naming(result, tmp_path, "drift", r"\bv\b", types[0], types[1])


def test_reduce_partials_that_disagree_in_type_are_refused(tmp_path: Path) -> None:
    job = {"function": "bad_jobs:partial", "combine": "bad_jobs:combine"}
    setup_run(tmp_path, DRIFT_JOBS, "drift-reduce", job, seed=812, merge={"mode": "reduce"})
    result = run_snakemake(tmp_path, CONFIG, check=False)
    assert_failed_naming(result, tmp_path, "drift-reduce", r"\btotal\b", "Int64", "Float64")


# -- 2. item mode ------------------------------------------------------------------------

ITEM_JOBS = """
def two_kinds(item, ctx):
    number = int(item["id"][1:])
    code = number if number % 2 == 0 else str(number)
    return {"id": item["id"], "code": code}


def forty_two(item, ctx):
    if item["id"] in ctx.params["weird"]:
        return 42
    return {"id": item["id"], "station": item["station"], "half": item["reading"] // 2}
"""


def test_item_key_with_two_python_types_fails_the_batch(tmp_path: Path) -> None:
    job = {"function": "bad_jobs:two_kinds", "mode": "item"}
    setup_run(tmp_path, ITEM_JOBS, "kinds", job, n=30, seed=821, max_items=30)
    result = run_snakemake(tmp_path, CONFIG, check=False)
    assert_failed_naming(
        result, tmp_path, "kinds", r"\bcode\b", r"\bint\b|Int64", r"\bstr\b|String"
    )


def test_item_job_returning_a_number_is_dead_lettered(tmp_path: Path) -> None:
    weird = ["w0007", "w0033"]
    job = {"function": "bad_jobs:forty_two", "mode": "item", "params": {"weird": weird}}
    readings = setup_run(
        tmp_path, ITEM_JOBS, "answer", job, n=50, seed=822, prefix="w",
        tolerance={"max_dead_letter_fraction": 1.0},
    )  # fmt: skip
    run_snakemake(tmp_path, CONFIG)
    report = run_orchestrator(tmp_path, "errors", "--configfile", CONFIG, "--json").json()
    dead = {item["id"]: item for item in report["dead_letters"]["items"]}
    assert sorted(dead) == weird, report
    for item in dead.values():
        assert item["category"] == "permanent", item
        assert "42" in item["message"] and "int" in item["message"], item
    expected = readings.filter(~pl.col("id").is_in(weird)).select(
        "id", "station", (pl.col("reading") // 2).alias("half")
    )
    assert_frames_match(read_final(tmp_path, "answer"), expected, by="id")


BROKEN_JOBS = """
def broken(item, ctx):
    with open(ctx.params["calls"], "a") as calls:
        calls.write(item["id"] + "\\n")
    raise ValueError(f"cannot parse the reading of {item['id']}")
"""


def test_an_item_job_failing_on_every_item_stops_once_past_the_tolerance(tmp_path: Path) -> None:
    # Before, the job was called on all 200 items before the batch failed.
    calls = tmp_path / "calls.txt"
    job = {"function": "bad_jobs:broken", "mode": "item", "params": {"calls": str(calls)}}
    setup_run(
        tmp_path, BROKEN_JOBS, "broken", job, n=200, seed=823, prefix="b", max_items=200,
        tolerance={"max_dead_letter_fraction": 0.05},
    )  # fmt: skip
    result = run_snakemake(tmp_path, CONFIG, check=False)
    assert_failed_naming(
        result, tmp_path, "broken", r"11 of 200 items failed \(5\.5% > tolerance 5\.0%\)",
        r"stopped after 11 of 200 items, the rest not run", r"cannot parse the reading of b0000",
    )  # fmt: skip
    # 5% of 200 allows 10 dead letters: the 11th ends the batch (permanent: not resubmitted).
    assert calls.read_text().split() == [f"b{i:04d}" for i in range(11)]


# -- 3. lost and repeated rows -----------------------------------------------------------

ROWS_JOBS = """
import polars as pl


def _scored(batch):
    return batch.select("id", (pl.col("reading") + 1).alias("next"))


def drop_half(batch, ctx):
    out = _scored(batch)
    return out.head(out.height // 2)


def duplicate(batch, ctx):
    out = _scored(batch)
    return pl.concat([out, out])


def empty(batch, ctx):
    return _scored(batch).head(0)


def thirds(batch, ctx):
    return _scored(batch).filter(pl.col("next") % 3 != 0)
"""


@pytest.mark.parametrize(("function", "rows"), [("drop_half", 10), ("duplicate", 40), ("empty", 0)])
def test_per_item_contract_refuses_wrong_row_counts(
    tmp_path: Path, function: str, rows: int
) -> None:
    job = {"function": f"bad_jobs:{function}", "rows": "per_item"}
    setup_run(tmp_path, ROWS_JOBS, "per-item", job, seed=831)
    result = run_snakemake(tmp_path, CONFIG, check=False)
    assert_failed_naming(
        result, tmp_path, "per-item", rf"batch 0000\d\b.*\b{rows} rows for 20 items"
    )


def test_without_contract_dropped_rows_are_counted_in_the_manifest(tmp_path: Path) -> None:
    readings = setup_run(
        tmp_path, ROWS_JOBS, "thirds", {"function": "bad_jobs:thirds"}, seed=832, n=70
    )
    run_snakemake(tmp_path, CONFIG)

    def job_output(items: pl.DataFrame) -> pl.DataFrame:
        return items.select("id", (pl.col("reading") + 1).alias("next")).filter(
            pl.col("next") % 3 != 0
        )

    expected = job_output(readings)
    assert_frames_match(read_final(tmp_path, "thirds"), expected, by="id")
    manifest = read_manifest(tmp_path, "thirds")
    assert manifest["rows_out"] == expected.height < manifest["items_in"] == readings.height
    folder = run_dir(tmp_path, "thirds") / "batches"
    seen_ids: list[str] = []
    assert len(manifest["batches"]) == 4
    for entry in manifest["batches"]:
        ids = pl.read_parquet(folder / f"batch-{entry['batch_id']}.parquet")["id"]
        seen_ids += ids.to_list()
        mine = readings.filter(pl.col("id").is_in(ids.implode()))
        assert entry["rows_out"] == job_output(mine).height, entry
    assert sorted(seen_ids) == sorted(readings["id"].to_list())
    assert sum(e["rows_out"] for e in manifest["batches"]) == manifest["rows_out"]


# -- 4. tamper-evident verify ------------------------------------------------------------

VERIFY_JOBS = """
import polars as pl


def score(batch, ctx):
    return batch.select("id", "station", (pl.col("reading") * 3).alias("score"))
"""


@pytest.fixture(scope="module")
def verified_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean run (4 batches, a two-level merge tree) to tamper with in copies."""
    workdir = tmp_path_factory.mktemp("verify-clean")
    readings = setup_run(
        workdir, VERIFY_JOBS, "sealed", {"function": "bad_jobs:score"}, seed=841, n=80,
        merge={"fan_in": 2},
    )  # fmt: skip
    run_snakemake(workdir, CONFIG)
    expected = readings.select("id", "station", (pl.col("reading") * 3).alias("score"))
    assert_frames_match(read_final(workdir, "sealed"), expected, by="id")
    return workdir


def tampered_copy(verified_run: Path, tmp_path: Path) -> Path:
    workdir = tmp_path / "lab"
    shutil.copytree(verified_run, workdir, symlinks=True)
    return workdir


def verify(workdir: Path) -> Result:
    return run_orchestrator(workdir, "manifest", "verify", "--configfile", CONFIG, check=False)


def test_verify_passes_on_a_clean_run(verified_run: Path, tmp_path: Path) -> None:
    workdir = tampered_copy(verified_run, tmp_path)
    result = verify(workdir)
    assert result.returncode == 0, result.describe()


def test_verify_catches_a_changed_final_with_its_checksum_rewritten(
    verified_run: Path, tmp_path: Path
) -> None:
    workdir = tampered_copy(verified_run, tmp_path)
    folder = run_dir(workdir, "sealed")
    final = folder / "final" / "result.parquet"
    data = bytearray(final.read_bytes())
    old = hashlib.sha256(data).hexdigest()
    data[len(data) // 2] ^= 0x01
    final.write_bytes(bytes(data))
    new = hashlib.sha256(data).hexdigest()
    manifest = folder / "manifest.json"
    text = manifest.read_text()
    assert text.count(old) >= 1
    manifest.write_text(text.replace(old, new))
    result = verify(workdir)
    assert result.returncode == 1, result.describe()
    assert "final/result.parquet" in result.output, result.describe()


def test_verify_catches_a_batch_dropped_from_the_manifest(
    verified_run: Path, tmp_path: Path
) -> None:
    workdir = tampered_copy(verified_run, tmp_path)
    path = run_dir(workdir, "sealed") / "manifest.json"
    manifest = json.loads(path.read_text())
    dropped = manifest["batches"].pop()
    manifest["items_in"] -= dropped["items"]
    manifest["items_processed"] -= dropped["items_processed"]
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    result = verify(workdir)
    assert result.returncode == 1, result.describe()


def test_verify_catches_edited_batch_record_counts(verified_run: Path, tmp_path: Path) -> None:
    workdir = tampered_copy(verified_run, tmp_path)
    path = run_dir(workdir, "sealed") / "results" / "batch-00000.json"
    record = json.loads(path.read_text())
    record["items_processed"] -= 1
    record["items_dead_lettered"] += 1
    assert record["items"] == record["items_processed"] + record["items_dead_lettered"]
    path.write_text(json.dumps(record, indent=2, sort_keys=True))
    result = verify(workdir)
    assert result.returncode == 1, result.describe()
    assert "batch-00000.json" in result.output, result.describe()


# -- 5. crashes and noise ----------------------------------------------------------------

CRASH_JOBS = """
import os

import polars as pl


def abort_one(batch, ctx):
    if ctx.batch_id == "00001":
        os.abort()
    return batch.select("id", "reading")


def out_of_memory_once(batch, ctx):
    if ctx.batch_id == "00001":
        print(f"attempt {ctx.attempt} of batch 00001 was here")
        if ctx.attempt == 1:
            raise MemoryError("first attempt ran out of memory")
    return batch.select("id", "reading")


def loud(batch, ctx):
    if ctx.batch_id == "00000":
        for line in range(2000):
            print(f"noise-{line:05d}-" + "z" * 90)
    return batch.select("id", "reading")
"""


def test_a_job_killed_by_sigabrt_is_recorded_as_failed(tmp_path: Path) -> None:
    setup_run(tmp_path, CRASH_JOBS, "aborts", {"function": "bad_jobs:abort_one"}, seed=851)
    result = run_snakemake(tmp_path, CONFIG, check=False)
    assert result.returncode != 0, result.describe()
    report = run_orchestrator(tmp_path, "errors", "--configfile", CONFIG, "--json").json()
    failed = {f["task_id"]: f for f in report["failed_tasks"]}
    assert "batch-00001" in failed, report
    failure = failed["batch-00001"]
    assert failure["status"] in ("FAILED", "DEAD"), failure
    assert "SIGABRT" in (failure["message"] or ""), failure
    assert failure["log"], failure
    status = run_orchestrator(tmp_path, "status", "--configfile", CONFIG, "--json").json()
    assert status["by_status"].get("RUNNING", 0) == 0, status
    assert status["slowest_running"] == [], status
    # The run ended with an error: it is stopped, not in progress, and --watch says so.
    assert (status["state"], status["finished"]) == ("stopped", False), status
    watched = run_orchestrator(
        tmp_path, "status", "--configfile", CONFIG, "--watch", "--interval", "0.2", check=False
    )
    assert watched.returncode == 1 and "stopped" in watched.stdout, watched.describe()


def test_a_retried_batch_keeps_the_failed_attempts_log(tmp_path: Path) -> None:
    """Snakemake removes a job's log before it runs the job again: the failed attempt's
    traceback must survive the retry under a name of its own."""
    job = {"function": "bad_jobs:out_of_memory_once"}
    readings = setup_run(tmp_path, CRASH_JOBS, "oom-once", job, seed=853)
    result = run_snakemake(tmp_path, CONFIG)
    logs = run_dir(tmp_path, "oom-once") / "logs" / "process_batch"
    first = (logs / "00001.attempt-1.log").read_text()
    second = (logs / "00001.attempt-2.log").read_text()
    assert "attempt 1 of batch 00001 was here" in first, first
    assert "MemoryError: first attempt ran out of memory" in first, first
    assert "attempt 1 " not in second and "attempt 2 of batch 00001 was here" in second, second
    assert (logs / "00001.log").read_text() == second
    # The coordinator's error line points at the failed attempt's own log.
    assert f"log: {logs.relative_to(tmp_path)}/00001.attempt-1.log" in result.output, (
        result.describe()[:3000]
    )
    assert_frames_match(read_final(tmp_path, "oom-once"), readings.select("id", "reading"), by="id")
    # Once the retry succeeded, the audit still leads to the failed attempt's log.
    audit = run_orchestrator(
        tmp_path, "audit", "--configfile", CONFIG, "--task", "1", "--json"
    ).json()
    failed = [row for row in audit["transitions"] if row["to"] == "FAILED"]
    assert [Path(row["log"]).name for row in failed] == ["00001.attempt-1.log"], audit


def test_a_job_printing_200_kb_keeps_it_in_its_log(tmp_path: Path) -> None:
    readings = setup_run(tmp_path, CRASH_JOBS, "loud", {"function": "bad_jobs:loud"}, seed=852)
    result = run_snakemake(tmp_path, CONFIG)
    assert "noise-" not in result.output, result.describe()[:3000]
    log = (run_dir(tmp_path, "loud") / "logs" / "process_batch" / "00000.log").read_text()
    for line in range(2000):
        assert f"noise-{line:05d}-" + "z" * 90 in log, line
    assert_frames_match(read_final(tmp_path, "loud"), readings.select("id", "reading"), by="id")


# -- 6. markup in error messages ---------------------------------------------------------

MARKUP_JOBS = """
def picky(item, ctx):
    if item["id"] in ctx.params["bad"]:
        raise ValueError("bad [/bold] value [red]x")
    return {"id": item["id"], "reading": item["reading"]}
"""


def test_errors_table_prints_markup_in_messages_verbatim(tmp_path: Path) -> None:
    bad = ["k0011", "k0024"]
    job = {"function": "bad_jobs:picky", "mode": "item", "params": {"bad": bad}}
    setup_run(
        tmp_path, MARKUP_JOBS, "markup", job, n=40, seed=861, prefix="k",
        tolerance={"max_dead_letter_fraction": 1.0},
    )  # fmt: skip
    run_snakemake(tmp_path, CONFIG)
    result = run_orchestrator(tmp_path, "errors", "--configfile", CONFIG)
    assert result.returncode == 0, result.describe()
    squeezed = "".join(result.stdout.split())
    assert squeezed.count("bad[/bold]value[red]x") == 2, result.describe()
    for item_id in bad:
        assert item_id in result.stdout, result.describe()


# -- 7. bisection stops ------------------------------------------------------------------

BISECT_JOBS = """
def always_bad(batch, ctx):
    with open(ctx.params["calls"], "a") as handle:
        handle.write(f"{batch.height}\\n")
    raise ValueError("this job never works")
"""


def test_bisection_of_an_always_failing_batch_stops_early(tmp_path: Path) -> None:
    calls = tmp_path / "calls.txt"
    job = {"function": "bad_jobs:always_bad", "params": {"calls": str(calls)}}
    setup_run(tmp_path, BISECT_JOBS, "bisect", job, n=100, seed=871, max_items=100)
    result = run_snakemake(tmp_path, CONFIG, check=False)
    assert result.returncode != 0, result.describe()
    assert not (run_dir(tmp_path, "bisect") / "final" / "result.parquet").exists()
    made = calls.read_text().splitlines()
    assert 1 <= len(made) <= 10, made


# -- 8. elapsed of a finished run --------------------------------------------------------

SLOW_JOBS = """
import os
import time

import polars as pl


def nap(batch, ctx):
    time.sleep(ctx.params.get("seconds", 0.3))
    return batch.select("id", (pl.col("reading") - 100).alias("above"))


def held(batch, ctx):
    # Runs until the test lets it go: the run stays up however fast the machine is.
    if "pids" in ctx.params:  # written whole, then renamed: the test never reads half
        name = os.path.join(ctx.params["pids"], ctx.batch_id)
        with open(name + ".tmp", "w") as out:
            out.write(str(os.getpid()))
        os.replace(name + ".tmp", name)
    deadline = time.monotonic() + 300
    while not os.path.exists(ctx.params["release"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return nap(batch, ctx)
"""


def test_elapsed_of_a_finished_run_stops_growing(tmp_path: Path) -> None:
    setup_run(tmp_path, SLOW_JOBS, "timed", {"function": "bad_jobs:nap"}, seed=881)
    started = time.monotonic()
    run_snakemake(tmp_path, CONFIG)
    wall = time.monotonic() - started
    time.sleep(3)
    first = run_orchestrator(tmp_path, "status", "--configfile", CONFIG, "--json").json()
    since_start = time.monotonic() - started
    time.sleep(2)
    second = run_orchestrator(tmp_path, "status", "--configfile", CONFIG, "--json").json()
    assert first["finished"] is True, first
    elapsed = first["elapsed_s"]
    assert elapsed is not None and 0 < elapsed < since_start, (elapsed, since_start)
    assert elapsed < wall + 1, (elapsed, wall)
    assert second["elapsed_s"] == elapsed, (first["elapsed_s"], second["elapsed_s"])


# -- 9. two coordinators -----------------------------------------------------------------


def snakemake_command(workdir: Path, configfile: Path) -> list[str]:
    """The command run_snakemake runs, for a run started in the background."""
    return [
        SNAKEMAKE,
        "--snakefile", str(REPO / "workflow" / "Snakefile"),
        "--profile", str(REPO / "profiles" / "local"),
        "--directory", str(workdir),
        "--configfile", str(configfile),
        "--cores", "2",
    ]  # fmt: skip


def test_a_second_coordinator_is_refused_from_another_folder(tmp_path: Path) -> None:
    folder_a, folder_b = tmp_path / "a", tmp_path / "b"
    folder_a.mkdir()
    folder_b.mkdir()
    root = tmp_path / "shared-results"
    release = tmp_path / "release"
    (folder_a / "bad_jobs.py").write_text(SLOW_JOBS)
    readings = sensor_readings(100, seed=891, prefix="c")
    readings.write_csv(folder_a / "readings.csv")
    config = {
        "run_id": "contended",
        "output_root": str(root),
        "input": {"uri": str(folder_a / "readings.csv"), "format": "csv"},
        "batching": {"max_items": 10},
        "job": {"function": "bad_jobs:held", "params": {"release": str(release)}},
    }
    configfile = write_config(folder_a, config)
    lease = root / "contended" / ".coordinator.json"
    out_a = (tmp_path / "a.out").open("w")
    holder = subprocess.Popen(
        snakemake_command(folder_a, configfile), cwd=folder_a, stdout=out_a,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not lease.exists():
            assert holder.poll() is None, (tmp_path / "a.out").read_text()
            assert time.monotonic() < deadline, "no lease file appeared"
            time.sleep(0.05)
        # Folder B holds nothing of the run: only the job module, so the job can be
        # imported there, and the config is the same file.
        shutil.copy(folder_a / "bad_jobs.py", folder_b / "bad_jobs.py")
        done = subprocess.run(
            snakemake_command(folder_b, configfile), cwd=folder_b, capture_output=True,
            text=True, timeout=TIMEOUT_S,
        )  # fmt: skip
        second = Result(done.args, done.returncode, done.stdout, done.stderr)
        assert holder.poll() is None, "the first run ended before the second was refused"
        line = assert_refused(second, rf"\b{holder.pid}\b")
        assert socket.gethostname() in line, line
        release.touch()
        assert holder.wait(timeout=TIMEOUT_S) == 0, (tmp_path / "a.out").read_text()[-6000:]
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        out_a.close()
    final = pl.read_parquet(root / "contended" / "final" / "result.parquet")
    expected = readings.select("id", (pl.col("reading") - 100).alias("above"))
    assert_frames_match(final, expected, by="id")


def test_batch_jobs_of_a_sigkilled_coordinator_stop(tmp_path: Path) -> None:
    """Killed with SIGKILL (the OOM killer on a login node), the coordinator cannot stop its
    jobs; left running, they would work beside the attempts a rerun starts for the same
    batches, on cores the rerun counts as free."""
    release, pids = tmp_path / "release", tmp_path / "pids"
    pids.mkdir()
    job = {"function": "bad_jobs:held", "params": {"release": str(release), "pids": str(pids)}}
    readings = setup_run(tmp_path, SLOW_JOBS, "orphans", job, n=40, seed=893, max_items=10)
    out = (tmp_path / "first.out").open("w")
    coordinator = subprocess.Popen(
        snakemake_command(tmp_path, tmp_path / CONFIG), cwd=tmp_path, stdout=out,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while len(list(pids.glob("[0-9]*[0-9]"))) < 2:  # --cores 2: two batches at once
            assert coordinator.poll() is None, (tmp_path / "first.out").read_text()
            assert time.monotonic() < deadline, "no two batches started"
            time.sleep(0.05)
        coordinator.kill()
        coordinator.wait()
        for pid in (int(p.read_text()) for p in pids.glob("[0-9]*[0-9]")):
            wait_gone(pid, 30, f"batch job {pid} outlived the coordinator")
    finally:
        release.touch()  # whatever happened, nothing waits for the test any more
        if coordinator.poll() is None:
            coordinator.kill()
            coordinator.wait()
    run_snakemake(tmp_path, CONFIG)
    expected = readings.select("id", (pl.col("reading") - 100).alias("above"))
    assert_frames_match(read_final(tmp_path, "orphans"), expected, by="id")
