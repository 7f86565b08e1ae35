"""Acceptance suite: a researcher's own runs, from an empty folder, with the real commands.

Every test works in its own empty ``tmp_path``: it writes a config YAML from scratch (only
the keys a user needs, as README.md "Your own run" and config/README.md describe), its own
input data (seeded sensor readings, never the shipped example records) and its own job
module ``mylab_jobs.py`` beside them, then runs ``snakemake`` and ``orchestrator`` as
subprocesses in that folder. Results are checked against an independent polars query over
the same input, never against the package's own output.

The helpers here only build files, run commands and compare frames; they import nothing
from ``orchestrator_ext``.
"""

from __future__ import annotations

import json
import random
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml
from polars.testing import assert_frame_equal

REPO = Path(__file__).resolve().parents[2]
BIN = REPO / ".venv" / "bin"
SNAKEMAKE = str(BIN / "snakemake")
ORCHESTRATOR = str(BIN / "orchestrator")
TIMEOUT_S = 300
#: Where every test's runs live, relative to its working folder.
OUTPUT_ROOT = "out"

STATIONS = ["alpine", "delta", "harbor", "mesa", "tundra"]

# The researcher's job module, written into each test's folder as mylab_jobs.py.
JOBS_MODULE = '''\
"""mylab's jobs over sensor readings (columns id, station, reading)."""

import json

import polars as pl


def score(batch: pl.DataFrame, ctx) -> pl.DataFrame:
    """Batch mode: every reading scaled by params.factor."""
    factor = ctx.params.get("factor", 1)
    return batch.select("id", "station", (pl.col("reading") * factor).alias("score"))


def per_item(item: dict, ctx) -> dict:
    """Item mode: one output row per reading; ids in params.reject are bad data."""
    item_id = item[ctx.params.get("id_column", "id")]
    if item_id in ctx.params.get("reject", []):
        raise ValueError(f"sensor {item_id} reported garbage")
    return {
        "id": item_id,
        "station": item["station"],
        "double": item["reading"] * 2,
        "params": json.dumps(ctx.params, sort_keys=True),
    }


def partial(batch: pl.DataFrame, ctx) -> pl.DataFrame:
    """Reduce: per-station partial sums of one batch."""
    return batch.group_by("station").agg(
        pl.col("reading").sum().alias("total"),
        pl.len().cast(pl.Int64).alias("n"),
        pl.col("reading").max().alias("peak"),
    )


def combine(partials: pl.DataFrame, ctx) -> pl.DataFrame:
    """Reduce: associative merge of partial sums."""
    return partials.group_by("station").agg(
        pl.col("total").sum(), pl.col("n").sum(), pl.col("peak").max()
    )


def finalize(totals: pl.DataFrame, ctx) -> pl.DataFrame:
    """Reduce, root only: the mean per station (used by an older config of mine)."""
    return totals.with_columns((pl.col("total") / pl.col("n")).alias("mean"))
'''

# An older default config of the researcher's, at Snakemake's conventional place
# (config/config.yaml in the working folder). A run given --configfile my-run.yaml must not
# pick up any of it.
LEFTOVER_DEFAULT_CONFIG = """\
run_id: old-run
output_root: results
input:
  uri: old-readings.csv
  format: csv
job:
  function: mylab_jobs:partial
  combine: mylab_jobs:combine
  finalize: mylab_jobs:finalize
  params:
    factor: 100
    unit: degF
merge:
  mode: reduce
"""


# -- files -------------------------------------------------------------------------------


@pytest.fixture
def lab(tmp_path: Path) -> Path:
    """An empty working folder holding only the researcher's job module."""
    (tmp_path / "mylab_jobs.py").write_text(JOBS_MODULE)
    return tmp_path


def write_leftover_default_config(workdir: Path) -> None:
    """Put the researcher's older default config at ``config/config.yaml``."""
    (workdir / "config").mkdir()
    (workdir / "config" / "config.yaml").write_text(LEFTOVER_DEFAULT_CONFIG)


def write_config(workdir: Path, config: dict[str, Any] | str, name: str = "my-run.yaml") -> Path:
    """Write a config file into ``workdir``: a dict as YAML, or a string verbatim."""
    path = workdir / name
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False))
    return path


def sensor_readings(
    n: int, seed: int, prefix: str = "s", ids: list[str] | None = None
) -> pl.DataFrame:
    """``n`` seeded readings: string ids ``{prefix}0000``.., a station, a 3-digit reading
    (fixed width: rewriting a file with new readings keeps its size)."""
    rng = random.Random(seed)
    return pl.DataFrame(
        {
            "id": ids if ids is not None else [f"{prefix}{i:04d}" for i in range(n)],
            "station": [rng.choice(STATIONS) for _ in range(n)],
            "reading": [rng.randint(100, 999) for _ in range(n)],
        }
    )


# -- commands ----------------------------------------------------------------------------


@dataclass
class Result:
    """A finished command: its exit code and what it printed."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return f"{self.stdout}\n{self.stderr}"

    def json(self) -> Any:
        return json.loads(self.stdout)

    def describe(self) -> str:
        return (
            f"$ {' '.join(self.args)}\nexit {self.returncode}\n"
            f"--- stdout ---\n{self.stdout[-4000:]}\n--- stderr ---\n{self.stderr[-6000:]}"
        )


def _run(args: list[str], workdir: Path, check: bool) -> Result:
    done = subprocess.run(args, cwd=workdir, capture_output=True, text=True, timeout=TIMEOUT_S)
    result = Result(args, done.returncode, done.stdout, done.stderr)
    if check and result.returncode != 0:
        raise AssertionError(f"command failed:\n{result.describe()}")
    return result


def run_snakemake(
    workdir: Path, *configfiles: str, config: list[str] | None = None, check: bool = True
) -> Result:
    """``snakemake`` with the local profile on ``configfiles`` (default my-run.yaml), in
    ``workdir``; ``config`` are ``--config KEY=VALUE`` overrides."""
    args = [
        SNAKEMAKE,
        "--snakefile", str(REPO / "workflow" / "Snakefile"),
        "--profile", str(REPO / "profiles" / "local"),
        "--directory", str(workdir),
        "--configfile", *(configfiles or ("my-run.yaml",)),
        "--cores", "2",
    ]  # fmt: skip
    if config:
        args += ["--config", *config]
    return _run(args, workdir, check)


def run_orchestrator(workdir: Path, *args: str, check: bool = True) -> Result:
    """``orchestrator ARGS`` in ``workdir``."""
    return _run([ORCHESTRATOR, *args], workdir, check)


# -- run folders -------------------------------------------------------------------------


def run_dir(workdir: Path, run_id: str) -> Path:
    return workdir / OUTPUT_ROOT / run_id


def read_final(workdir: Path, run_id: str) -> pl.DataFrame:
    """The run's final result."""
    path = run_dir(workdir, run_id) / "final" / "result.parquet"
    assert path.is_file(), f"no final result at {path}"
    return pl.read_parquet(path)


def files_under(folder: Path) -> list[str]:
    """Names (relative to ``folder``) of every file below it, sorted; [] if it is absent."""
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def batch_files(workdir: Path, run_id: str) -> list[str]:
    return files_under(run_dir(workdir, run_id) / "batches")


# -- checks ------------------------------------------------------------------------------


def station_totals(frame: pl.DataFrame) -> pl.DataFrame:
    """The independent query a reduce run of partial/combine must equal."""
    return frame.group_by("station").agg(
        pl.col("reading").sum().alias("total"),
        pl.len().cast(pl.Int64).alias("n"),
        pl.col("reading").max().alias("peak"),
    )


def scores(frame: pl.DataFrame, factor: int) -> pl.DataFrame:
    """What the batch job score returns for every row of ``frame``."""
    return frame.select("id", "station", (pl.col("reading") * factor).alias("score"))


def item_outputs(frame: pl.DataFrame, params: dict[str, Any] | None = None) -> pl.DataFrame:
    """What per_item returns for every row of ``frame`` (with ``params`` as ctx.params)."""
    return frame.select(
        "id",
        "station",
        (pl.col("reading") * 2).alias("double"),
        pl.lit(json.dumps(params or {}, sort_keys=True)).alias("params"),
    )


def assert_frames_match(actual: pl.DataFrame, expected: pl.DataFrame, by: str) -> None:
    """Same rows, columns and dtypes, in any row order."""
    assert sorted(actual.columns) == sorted(expected.columns), (actual.columns, expected.columns)
    assert_frame_equal(
        actual.select(sorted(expected.columns)).sort(by),
        expected.select(sorted(expected.columns)).sort(by),
    )


#: Snakemake's description of a job ("    input: a, b", "    reason: ..."): names files
#: without saying anything about them, so it never counts as the line naming a problem.
_JOB_DESCRIPTION = re.compile(
    r"^\s*(input|output|log|reason|jobid|wildcards|resources|shell|message|params|threads|"
    r"benchmark|conda-env|rule|localrule|checkpoint)\s*:"
)


def assert_refused(result: Result, pattern: str) -> str:
    """A user error: non-zero exit, no traceback, and a line matching ``pattern`` (not
    counting Snakemake's job descriptions). Returns that line."""
    assert result.returncode != 0, f"expected a refusal:\n{result.describe()}"
    assert "Traceback" not in result.output, f"printed a traceback:\n{result.describe()}"
    for line in result.output.splitlines():
        if not _JOB_DESCRIPTION.match(line) and re.search(pattern, line):
            return line
    raise AssertionError(f"no line matches {pattern!r}:\n{result.describe()}")


def assert_nothing_written(workdir: Path, run_id: str) -> None:
    """No batch files and no batch results were written for the run."""
    assert batch_files(workdir, run_id) == [], batch_files(workdir, run_id)
    assert not (run_dir(workdir, run_id) / "results").exists()
