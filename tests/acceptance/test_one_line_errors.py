"""Bug 6: a user's mistake (in the config or in the run folder) is one line, not a traceback."""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl
import pytest

from .conftest import (
    assert_frames_match,
    assert_nothing_written,
    assert_refused,
    read_final,
    run_dir,
    run_orchestrator,
    run_snakemake,
    scores,
    sensor_readings,
    write_config,
)

pytestmark = pytest.mark.workflow

CONFIG_HEAD = """\
run_id: {run_id}
output_root: out
input:
  uri: readings.csv
  format: csv
job:
  function: mylab_jobs:score
  params:
    factor: 3
merge:
  fan_in: 2
"""


def write_readings(lab: Path, n: int = 120) -> pl.DataFrame:
    frame = sensor_readings(n, seed=60)
    frame.write_csv(lab / "readings.csv")
    return frame


def finished_run(lab: Path, run_id: str) -> Path:
    """A successful run (readings scaled by 3) in 4 batches; returns its folder."""
    write_readings(lab)
    write_config(lab, CONFIG_HEAD.format(run_id=run_id) + "batching:\n  max_items: 30\n")
    run_snakemake(lab)
    return run_dir(lab, run_id)


@pytest.mark.parametrize("value", ["1.0e30", "1.0e+30"])
def test_float_max_items_is_refused(lab: Path, value: str) -> None:
    write_readings(lab)
    write_config(lab, CONFIG_HEAD.format(run_id="huge") + f"batching:\n  max_items: {value}\n")

    result = run_snakemake(lab, check=False)

    assert_refused(result, r"batching[/.]max_items")
    assert_nothing_written(lab, "huge")


@pytest.mark.parametrize("output_root", ["taken.txt", "taken.txt/runs"])
def test_output_root_at_or_under_a_file_is_refused(lab: Path, output_root: str) -> None:
    write_readings(lab)
    (lab / "taken.txt").write_text("my notes\n")
    config = CONFIG_HEAD.format(run_id="misplaced").replace(
        "output_root: out", f"output_root: {output_root}"
    )
    write_config(lab, config)

    result = run_snakemake(lab, check=False)

    assert_refused(result, r"output_root")
    assert (lab / "taken.txt").read_text() == "my notes\n"


def test_non_numeric_kill_batches_is_refused(lab: Path) -> None:
    write_readings(lab)
    write_config(
        lab,
        CONFIG_HEAD.format(run_id="drill")
        + "faults:\n  enabled: true\n  kill_batches:\n    abc: 5\n",
    )

    by_snakemake = run_snakemake(lab, check=False)
    by_status = run_orchestrator(lab, "status", "--configfile", "my-run.yaml", check=False)

    assert_refused(by_snakemake, r"kill_batches")
    assert_nothing_written(lab, "drill")
    assert_refused(by_status, r"kill_batches")


def test_corrupt_batch_record_is_named(lab: Path) -> None:
    run = finished_run(lab, "record")
    (run / "results" / "batch-00000.json").write_text("}} not a record {{\n")
    (run / "final" / "result.parquet").unlink()

    result = run_snakemake(lab, check=False)

    assert_refused(result, r"batch-00000\.json")


def test_corrupt_plan_is_named(lab: Path) -> None:
    run = finished_run(lab, "badplan")
    (run / "batches" / "plan.json").write_text("plan? what plan\n")

    result = run_snakemake(lab, check=False)

    assert_refused(result, r"plan\.json")


def test_deleted_plan_recovers_or_says_what_to_do(lab: Path) -> None:
    run = finished_run(lab, "noplan")
    (run / "batches" / "plan.json").unlink()

    result = run_snakemake(lab, check=False)

    if result.returncode == 0:
        expected = scores(pl.read_csv(lab / "readings.csv"), 3)
        assert_frames_match(read_final(lab, "noplan"), expected, by="id")
        assert (run / "batches" / "plan.json").is_file()
    else:
        assert_refused(
            result,
            r"(?i)plan\.json.*\b(rerun|re-run|run again|remove|delete|forcerun|re-?partition)\b",
        )


@pytest.mark.parametrize("tool", ["snakemake", "orchestrator"])
def test_yaml_syntax_error_names_the_file_and_line(lab: Path, tool: str) -> None:
    write_readings(lab)
    write_config(
        lab,
        "run_id: broken\noutput_root: out\ninput:\n  uri: [unclosed\n  format: csv\n"
        "job:\n  function: mylab_jobs:score\n",
    )

    if tool == "snakemake":
        result = run_snakemake(lab, check=False)
    else:
        result = run_orchestrator(lab, "status", "--configfile", "my-run.yaml", check=False)

    assert_refused(result, r"my-run\.yaml")
    # One line names the file and where in it: the unclosed bracket is on line 4, and
    # YAML notices it on line 5.
    named = [line for line in result.output.splitlines() if "my-run.yaml" in line]
    numbers = {
        int(n) for line in named for n in re.findall(r"(?:\bline\s*|my-run\.yaml:)(\d+)", line)
    }
    assert numbers & {4, 5}, f"no line number of the error beside the file name: {named}"
    assert not (lab / "out").exists()


BUGGY_JOBS = """
import polars as pl


def returns_a_list(batch, ctx):
    return batch.to_dicts()


def partial(batch, ctx):
    return batch.group_by("station").agg(pl.len().alias("n"))


def combine(partials, ctx):
    return partials.group_by("station").agg(pl.col("no_such_column").sum())
"""


@pytest.mark.parametrize(
    ("job", "task", "cause", "traceback_in_log"),
    [
        ({"function": "buggy_jobs:returns_a_list"}, "batch-00000", "WrongReturnType: job "
         "returned list, expected a polars DataFrame", False),
        ({"function": "buggy_jobs:partial", "combine": "buggy_jobs:combine"}, "final",
         "ColumnNotFoundError", True),
    ],
    ids=["wrong-return", "bug-in-combine"],
)  # fmt: skip
def test_a_failing_job_is_one_line_in_the_run_output(
    lab: Path, job: dict, task: str, cause: str, traceback_in_log: bool
) -> None:
    (lab / "buggy_jobs.py").write_text(BUGGY_JOBS)
    sensor_readings(30, seed=9).write_csv(lab / "readings.csv")
    config = {
        "run_id": "buggy",
        "output_root": "out",
        "input": {"uri": "readings.csv", "format": "csv"},
        "batching": {"max_items": 50},
        "job": job,
        "merge": {"mode": "reduce" if "combine" in job else "concat"},
    }
    result = run_snakemake(lab, write_config(lab, config), check=False)
    line = assert_refused(result, rf"^error: {task} attempt 1 failed \(permanent")
    assert cause in line
    log = line.rsplit("; log: ", 1)[1]
    text = (lab / log).read_text()
    assert ("Traceback" in text) is traceback_in_log, text
