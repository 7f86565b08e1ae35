"""What every benchmark under ``bench/`` shares: timing a command, the machine, the report.

Benchmarks measure and assert nothing about time. Each writes its raw figures to
``bench/results/<name>.json`` (kept out of git) and rewrites its own section of
``docs/benchmarks.md``, between ``<!-- BEGIN bench/<name>.py -->`` markers, so sections
written by other benchmarks stay. ``bench/plot.py`` draws the figure from the JSON files.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs" / "benchmarks.md"
RESULTS = REPO / "bench" / "results"
BIN = Path(sys.executable).parent
SNAKEMAKE = str(BIN / "snakemake") if (BIN / "snakemake").exists() else "snakemake"
GNU_TIME = "/usr/bin/time"


@dataclass
class Sample:
    """One timed command: wall seconds, CPU seconds (user + sys of it and its children),
    and the peak RSS of its largest process."""

    wall_s: float
    cpu_s: float
    max_rss_kib: int

    @property
    def rss_mib(self) -> float:
        return self.max_rss_kib / 1024


def gnu_time_works() -> bool:
    """Whether GNU ``/usr/bin/time -v`` is there to report peak RSS per command."""
    if not os.access(GNU_TIME, os.X_OK):
        return False
    probe = subprocess.run([GNU_TIME, "-v", "true"], capture_output=True, text=True)
    return probe.returncode == 0 and "Maximum resident set size" in probe.stderr


def timed_run(
    cmd: list[str],
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    what: str | None = None,
) -> tuple[Sample, str]:
    """Run ``cmd`` once under GNU time (or getrusage); return its sample and its output.

    Exits with the command's output tail when it fails: a benchmark of a failed run would
    be a lie.
    """
    time_file = None
    full = list(cmd)
    if gnu_time_works():
        fd, time_file = tempfile.mkstemp(prefix="time-", suffix=".txt")
        os.close(fd)
        full = [GNU_TIME, "-v", "-o", time_file, *full]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(full, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise SystemExit(
            f"{what or 'command'} failed ({proc.returncode}): {' '.join(cmd)}\n{output[-4000:]}"
        )
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    rss = after.ru_maxrss
    if time_file:
        text = Path(time_file).read_text()
        os.unlink(time_file)
        rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1))
    return Sample(wall, cpu, rss), output


def median_sample(samples: list[Sample]) -> dict[str, Any]:
    """Medians of a list of samples, with the raw wall times."""
    return {
        "wall_s": statistics.median(s.wall_s for s in samples),
        "cpu_s": statistics.median(s.cpu_s for s in samples),
        "rss_mib": statistics.median(s.rss_mib for s in samples),
        "samples": [asdict(s) for s in samples],
    }


def machine_facts() -> dict[str, str]:
    """The machine and software the figures were measured on."""
    cpu = "unknown"
    with open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    version = subprocess.run([SNAKEMAKE, "--version"], capture_output=True, text=True)
    return {
        "date": dt.date.today().isoformat(),
        "cpus": str(os.cpu_count()),
        "cpu_model": cpu,
        "memory": f"{mem_kib / 1024 / 1024:.1f} GiB",
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "snakemake": version.stdout.strip(),
    }


def machine_line(facts: dict[str, str], loads: list[float] | None = None) -> str:
    """One sentence naming the machine (and the load average seen during the runs)."""
    line = (
        f"Machine: {facts['cpus']} CPUs ({facts['cpu_model']}), {facts['memory']} RAM, "
        f"{facts['os']}, Python {facts['python']}, Snakemake {facts['snakemake']}; "
        f"run on {facts['date']}."
    )
    if loads:
        line += (
            f" 1-minute load average during the timed runs: {min(loads):.1f} to "
            f"{max(loads):.1f} (wall times compare best on an otherwise idle machine)."
        )
    return line


def markers(name: str) -> tuple[str, str]:
    """The comment lines around benchmark ``name``'s section of docs/benchmarks.md. A name
    ``"SCRIPT ARGS"`` is a second workload of one script, with a section of its own."""
    script, _, variant = name.partition(" ")
    label = f"bench/{script}.py" + (f" {variant}" if variant else "")
    return (
        f"<!-- BEGIN {label} (generated: rerun the benchmark, do not edit by hand) -->",
        f"<!-- END {label} -->",
    )


def results_path(name: str) -> Path:
    """Where benchmark ``name``'s raw figures go (``"reduce --rows 300000000"``:
    ``reduce_rows_300000000.json``)."""
    return RESULTS / (re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_") + ".json")


def write_section(name: str, body: str) -> None:
    """Replace (or append) benchmark ``name``'s section of docs/benchmarks.md."""
    begin, end = markers(name)
    section = f"{begin}\n{body.strip()}\n{end}"
    text = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    DOCS.parent.mkdir(parents=True, exist_ok=True)
    DOCS.write_text(text)


def save_results(name: str, results: dict[str, Any]) -> Path:
    """Write benchmark ``name``'s raw figures to bench/results/<name>.json."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = results_path(name)
    path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    return path


def load_results(name: str) -> dict[str, Any] | None:
    """Benchmark ``name``'s last raw figures, or None."""
    path = results_path(name)
    return json.loads(path.read_text()) if path.exists() else None


def venv_env(**extra: str) -> dict[str, str]:
    """The environment for a benchmarked command: this venv first on PATH."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def aws_env(endpoint: str, **extra: str) -> dict[str, str]:
    """The environment of a cluster user with AWS on the local endpoint: what
    tests/conftest.py ``set_storage_env`` sets (DynamoDB through boto3's
    ``AWS_ENDPOINT_URL_DYNAMODB``, S3 through the storage plugin's variables), fake keys."""
    env = venv_env(**extra)
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
        env.pop(name, None)
    env.update(
        AWS_ENDPOINT_URL_DYNAMODB=endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        SNAKEMAKE_STORAGE_S3_ENDPOINT_URL=endpoint,
        SNAKEMAKE_STORAGE_S3_ACCESS_KEY="testing",
        SNAKEMAKE_STORAGE_S3_SECRET_KEY="testing",
    )
    return env


def run_and_report(
    name: str,
    args: Any,
    measure: Callable[[Any, Path], dict[str, Any]],
    render: Callable[[dict[str, Any], dict[str, str], Any], str],
) -> int:
    """The shared tail of a benchmark's ``main``: ``measure(args, workdir)`` in
    ``args.workdir`` (or a temporary folder, removed afterwards), then the raw figures to
    ``render(results, facts, args)``, and the text and figures to ``publish``."""
    facts = machine_facts()
    work = args.workdir or Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        results = measure(args, work)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    results["facts"] = facts
    results["elapsed_s"] = time.perf_counter() - started
    publish(name, results, render(results, facts, args), args.no_docs)
    return 0


def publish(name: str, results: dict[str, Any], text: str, no_docs: bool) -> None:
    """Print benchmark ``name``'s section ``text``; unless ``no_docs`` (a quick look, which
    replaces neither the figures nor the plot's data), write its raw figures to
    bench/results/ and the text to its section of docs/benchmarks.md."""
    print(text)
    if no_docs:
        return
    path = save_results(name, results)
    print(f"wrote {path.relative_to(REPO)}")
    write_section(name, text)
    print(f"wrote {DOCS.relative_to(REPO)}")
