"""End-to-end runs of the workflow with the local profile (real Snakemake, SQLite state)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from conftest import run_snakemake, write_config

from orchestrator_ext import attempt_log
from orchestrator_ext.example_data import make_records
from orchestrator_ext.job import JobContext
from orchestrator_ext.jobs import grouped_stats
from orchestrator_ext.layout import RunLayout
from orchestrator_ext.state.sqlite import SqliteStateStore
from orchestrator_ext.verify import verify_manifest

pytestmark = pytest.mark.workflow


def _prepare(tmp_path: Path, config: dict[str, Any], n_items: int = 1000) -> Path:
    make_records(n_items, seed=3).write_parquet(tmp_path / "items.parquet")
    return write_config(tmp_path / "config.yaml", config)


def _layout(config: dict[str, Any]) -> RunLayout:
    return RunLayout(f"{config['output_root']}/{config['run_id']}")


def _attempts(config: dict[str, Any]) -> dict[str, int]:
    store = SqliteStateStore(_layout(config).state_db, config["run_id"], create=False)
    try:
        return {t.task_id: t.attempt for t in store.tasks()}
    finally:
        store.close()


def _single_pass(items: pl.DataFrame) -> pl.DataFrame:
    ctx = JobContext(run_id="x", batch_id="all", attempt=1, params={})
    partials = grouped_stats.partial(items, ctx)
    return grouped_stats.finalize(grouped_stats.combine(partials, ctx), ctx)


class TestReduceRun:
    def test_result_equals_single_pass_and_items_are_conserved(self, tmp_path, make_config):
        # 1000 items, 100 per batch, fan-in 3: levels [10, 4, 2, 1] -- a three-level tree.
        config = make_config()
        configfile = _prepare(tmp_path, config)
        run_snakemake(tmp_path, configfile)
        layout = _layout(config)

        final = pl.read_parquet(layout.final)
        expected = _single_pass(pl.read_parquet(tmp_path / "items.parquet"))
        assert final.equals(expected), "tree-merged result differs from one pass over all items"

        manifest = json.loads(Path(layout.manifest).read_text())
        assert manifest["items_in"] == 1000
        assert manifest["items_processed"] + manifest["items_dead_lettered"] == 1000
        assert len(manifest["batches"]) == 10
        assert sorted((m["level"], m["index"]) for m in manifest["merges"]) == [
            (1, 0), (1, 1), (1, 2), (1, 3), (2, 0), (2, 1),
        ]  # fmt: skip
        assert verify_manifest(layout.manifest) == []
        assert set(_attempts(config).values()) == {1}

    def test_second_invocation_has_nothing_to_do(self, tmp_path, make_config):
        config = make_config(batching={"max_items": 500})
        configfile = _prepare(tmp_path, config)
        run_snakemake(tmp_path, configfile)
        again = run_snakemake(tmp_path, configfile)
        assert "Nothing to be done" in again.stdout + again.stderr

    def test_batching_does_not_change_a_reduce_result(self, tmp_path, make_config):
        config = make_config(batching={"max_items": 37}, merge={"fan_in": 2})
        configfile = _prepare(tmp_path, config)
        run_snakemake(tmp_path, configfile)
        one_batch = make_config(run_id="one", batching={"max_items": 100000})
        run_snakemake(tmp_path, write_config(tmp_path / "one.yaml", one_batch))
        assert pl.read_parquet(_layout(config).final).equals(
            pl.read_parquet(_layout(one_batch).final)
        )


class TestReconfiguredRun:
    def test_changed_batching_repartitions_and_rebuilds_the_tree(self, tmp_path, make_config):
        config = make_config()
        configfile = _prepare(tmp_path, config)
        run_snakemake(tmp_path, configfile)
        config["batching"] = {"max_items": 250}
        write_config(configfile, config)

        run_snakemake(tmp_path, configfile)

        layout = _layout(config)
        manifest = json.loads(Path(layout.manifest).read_text())
        assert len(manifest["batches"]) == 4 and manifest["items_in"] == 1000
        assert pl.read_parquet(layout.final).equals(
            _single_pass(pl.read_parquet(tmp_path / "items.parquet"))
        )
        assert verify_manifest(layout.manifest) == []


class TestRecovery:
    def test_deleted_batch_result_recomputes_only_its_merge_path(self, tmp_path, make_config):
        config = make_config()
        configfile = _prepare(tmp_path, config)
        run_snakemake(tmp_path, configfile)
        layout = _layout(config)
        before = pl.read_parquet(layout.final)
        Path(layout.result(4)).unlink()

        run_snakemake(tmp_path, configfile)

        attempts = _attempts(config)
        # Batch 4 sits under L1 node 1 (batches 3-5), which sits under L2 node 0 (L1 0-2).
        rerun = {"batch-00004", "merge-L1-part-00001", "merge-L2-part-00000", "final", "manifest"}
        assert {task for task, n in attempts.items() if n == 2} == rerun
        assert all(n == 1 for task, n in attempts.items() if task not in rerun)
        assert pl.read_parquet(layout.final).equals(before)
        assert verify_manifest(layout.manifest) == []

    def test_tampered_child_is_refused_by_its_merge(self, tmp_path, make_config):
        config = make_config()
        configfile = _prepare(tmp_path, config)
        run_snakemake(tmp_path, configfile)
        layout = _layout(config)
        tampered = Path(layout.result(1))
        other = pl.read_parquet(layout.result(2))
        other.write_parquet(tampered)  # valid Parquet, wrong content

        result = run_snakemake(tmp_path, configfile, check=False)

        output = result.stdout + result.stderr
        assert result.returncode != 0
        assert "checksum mismatch" in output and "batch-00001.parquet" in output
        assert "Traceback" not in output

    def test_manifest_verify_names_a_changed_file(self, tmp_path, make_config):
        config = make_config(batching={"max_items": 500})
        configfile = _prepare(tmp_path, config)
        run_snakemake(tmp_path, configfile)
        layout = _layout(config)
        Path(layout.result(0)).write_bytes(b"not parquet")
        problems = verify_manifest(layout.manifest)
        assert len(problems) == 1 and "results/batch-00000.parquet" in problems[0]


class TestDeterminism:
    def test_same_input_gives_byte_identical_batches(self, tmp_path, make_config):
        first = make_config(run_id="a", batching={"max_items": 70})
        second = make_config(run_id="b", batching={"max_items": 70})
        _prepare(tmp_path, first)
        for config in (first, second):
            configfile = write_config(tmp_path / f"{config['run_id']}.yaml", config)
            run_snakemake(tmp_path, configfile, "--until", "partition_items")
        a, b = Path(_layout(first).batches_dir), Path(_layout(second).batches_dir)
        names = sorted(p.name for p in a.glob("batch-*.parquet"))
        assert len(names) == 15
        assert names == sorted(p.name for p in b.glob("batch-*.parquet"))
        for name in names:
            assert (a / name).read_bytes() == (b / name).read_bytes(), name


class TestItemModeRun:
    def test_failing_items_are_dead_lettered_and_conserved(self, tmp_path, make_config):
        files = tmp_path / "files"
        files.mkdir()
        rows = []
        for i in range(60):
            path = files / f"f{i}.txt"
            if i % 10 != 3:  # every tenth file is missing
                path.write_text(f"content {i}\n" * i)
            rows.append({"id": i, "path": str(path)})
        pl.DataFrame(rows).write_csv(tmp_path / "files.csv")
        config = make_config(
            input={"uri": str(tmp_path / "files.csv"), "format": "csv", "id_type": "integer"},
            batching={"max_items": 20},
            job={
                "function": "orchestrator_ext.jobs.checksum:checksum_file",
                "mode": "item",
                "combine": None,
                "finalize": None,
            },
            merge={"fan_in": 2, "mode": "concat"},
            tolerance={"max_dead_letter_fraction": 0.2},
        )
        run_snakemake(tmp_path, write_config(tmp_path / "config.yaml", config))
        layout = _layout(config)
        manifest = json.loads(Path(layout.manifest).read_text())
        assert manifest["items_in"] == 60
        assert manifest["items_dead_lettered"] == 6
        assert manifest["items_processed"] == 54
        assert manifest["dead_letter"]["by_category"] == {"permanent": 6}
        final = pl.read_parquet(layout.final)
        assert sorted(final["id"].to_list()) == [i for i in range(60) if i % 10 != 3]
        dead = pl.concat([pl.read_parquet(layout.dead_letter(b)) for b in range(3)])
        assert sorted(dead["id"].to_list()) == [3, 13, 23, 33, 43, 53]
        assert set(dead["error_type"]) == {"FileNotFoundError"}

    def test_batch_over_tolerance_fails_and_publishes_nothing(self, tmp_path, make_config):
        pl.DataFrame({"id": [1, 2], "path": ["/nonexistent/a", "/nonexistent/b"]}).write_csv(
            tmp_path / "files.csv"
        )
        config = make_config(
            input={"uri": str(tmp_path / "files.csv"), "format": "csv"},
            job={
                "function": "orchestrator_ext.jobs.checksum:checksum_file",
                "mode": "item",
                "combine": None,
                "finalize": None,
            },
            merge={"mode": "concat"},
        )
        result = run_snakemake(
            tmp_path, write_config(tmp_path / "config.yaml", config), check=False
        )
        output = result.stdout + result.stderr
        assert result.returncode != 0
        # The default tolerance (0.0) is exceeded by the first failure: item 2 is not run.
        assert "1 of 2 items failed (50.0% > tolerance 0.0%); stopped after 1 of 2 items" in output
        assert not Path(_layout(config).result(0)).exists()
        # A permanent failure is not resubmitted, although the profile allows retries.
        assert "permanent failure" in output and "not resubmitting" in output
        assert _attempts(config)["batch-00000"] == 1


class TestBadInput:
    def test_missing_input_file(self, tmp_path, make_config):
        config = make_config()
        configfile = write_config(tmp_path / "config.yaml", config)  # no items.parquet
        result = run_snakemake(tmp_path, configfile, check=False)
        output = result.stdout + result.stderr
        assert result.returncode != 0
        assert f"input file not found: {tmp_path / 'items.parquet'}" in output
        assert "Traceback" not in output
        assert not Path(_layout(config).batches_dir).exists()

    def test_duplicate_ids(self, tmp_path, make_config):
        config = make_config()
        configfile = write_config(tmp_path / "config.yaml", config)
        pl.DataFrame({"id": [1, 2, 2], "group": ["a"] * 3, "value": [1, 2, 3]}).write_parquet(
            tmp_path / "items.parquet"
        )
        result = run_snakemake(tmp_path, configfile, check=False)
        output = result.stdout + result.stderr
        assert "duplicate ids" in output and "Traceback" not in output
        assert not Path(_layout(config).batches_dir).exists()

    def test_malformed_config_is_one_clear_line(self, tmp_path, make_config):
        config = make_config(batching={"max_items": 0})
        configfile = _prepare(tmp_path, config)
        result = run_snakemake(tmp_path, configfile, check=False)
        output = result.stdout + result.stderr
        assert result.returncode != 0
        assert "invalid config at 'batching/max_items': 0 is less than the minimum of 1" in output
        assert "Traceback" not in output
        assert not Path(config["output_root"]).exists()

    def test_missing_state_table_says_to_run_init(self, tmp_path, make_config, aws_env):
        config = make_config(state={"backend": "dynamodb", "table": "no-such-table"})
        configfile = _prepare(tmp_path, config)
        result = run_snakemake(tmp_path, configfile, check=False)
        output = result.stdout + result.stderr
        assert result.returncode != 0
        assert "no-such-table" in output and "orchestrator init --configfile" in output
        assert "Traceback" not in output
        assert not Path(_layout(config).batches_dir).exists()


class TestCoordinatorLease:
    def test_a_second_coordinator_of_a_running_run_is_refused(self, tmp_path, make_config):
        import subprocess
        import time

        from conftest import REPO, SNAKEMAKE

        from orchestrator_ext.coordinator import lease_path

        config = make_config()
        configfile = _prepare(tmp_path, config)
        cmd = [
            SNAKEMAKE, "--snakefile", str(REPO / "workflow" / "Snakefile"),
            "--profile", str(REPO / "profiles" / "local"), "--configfile", str(configfile),
            "--cores", "1",
        ]  # fmt: skip
        first = subprocess.Popen(
            cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            deadline = time.monotonic() + 120
            while not lease_path(_layout(config).run_dir).exists():
                assert first.poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
            second = run_snakemake(tmp_path, configfile, check=False)
        finally:
            first.wait(timeout=300)
        output = second.stdout + second.stderr
        assert second.returncode != 0
        assert f"already coordinated by snakemake pid {first.pid}" in output
        assert "Traceback" not in output
        assert first.returncode == 0
        assert not lease_path(_layout(config).run_dir).exists(), "released on success"

    def test_a_second_coordinator_from_another_working_directory_is_refused(
        self, tmp_path, make_config
    ):
        """The lease lives in the run folder, not in ``.snakemake/`` of the working
        directory: a second snakemake elsewhere on the same run is refused in one line."""
        import subprocess
        import time

        from conftest import snakemake_command

        from orchestrator_ext.coordinator import lease_path
        from orchestrator_ext.state import current_host

        config = make_config()  # absolute output_root and input
        configfile = _prepare(tmp_path, config)
        first_dir, second_dir = tmp_path / "first", tmp_path / "second"
        first_dir.mkdir()
        second_dir.mkdir()
        lease = lease_path(_layout(config).run_dir)
        first = subprocess.Popen(
            snakemake_command(first_dir, configfile, "--cores", "1"),
            cwd=first_dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while not lease.exists():
                assert first.poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
            second = run_snakemake(second_dir, configfile, check=False)
        finally:
            first.wait(timeout=300)
        output = second.stdout + second.stderr
        assert second.returncode != 0
        refusals = [line for line in output.splitlines() if "already coordinated" in line]
        assert len(refusals) == 1, output
        holder = (
            f"error: run {config['run_id']} is already coordinated by snakemake pid "
            f"{first.pid} on host {current_host()} (working directory {first_dir.resolve()}) "
            "since "
        )
        assert refusals[0].startswith(holder), refusals[0]
        since = refusals[0][len(holder) :].split(" ")[0]
        assert since.endswith("+00:00"), refusals[0]
        assert "Traceback" not in output and "empty file" not in output
        assert first.returncode == 0
        assert not lease.exists(), "released on success"
        # No lease in the working directory (only the batch command's config file).
        assert not list((second_dir / ".snakemake").rglob("*.coordinator.json"))


def _batch_job(function: str, **params: Any) -> dict[str, Any]:
    """A batch-mode ``job:`` of tests/jobs_for_tests.py (the test puts tests/ on PYTHONPATH)."""
    return {
        "function": f"jobs_for_tests:{function}",
        "mode": "batch",
        "combine": None,
        "finalize": None,
        "params": params,
    }


def _orchestrator_json(command: str, configfile: Path) -> dict[str, Any]:
    import subprocess

    from conftest import ORCHESTRATOR

    out = subprocess.run(
        [ORCHESTRATOR, command, "--configfile", str(configfile), "--json"],
        capture_output=True, text=True, timeout=120, check=True, cwd=configfile.parent,
    )  # fmt: skip
    return json.loads(out.stdout)


@pytest.fixture
def tests_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """``jobs_for_tests`` importable in the job processes."""
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parent))


@pytest.mark.usefixtures("tests_on_path")
class TestEveryAttemptEndsInTheStateStore:
    def test_a_crashed_batch_is_recorded_dead_and_not_rerun(self, tmp_path, make_config):
        config = make_config(job=_batch_job("abort_batch"), merge={"mode": "concat"})
        configfile = _prepare(tmp_path, config, n_items=50)  # one batch

        result = run_snakemake(tmp_path, configfile, check=False)

        assert result.returncode != 0
        assert _attempts(config)["batch-00000"] == 1, "a crash is not resubmitted"
        errors = _orchestrator_json("errors", configfile)
        (failure,) = errors["failed_tasks"]
        # The attempt's own log (attempt_log), which a rerun of the batch would not replace.
        log = attempt_log.path(_layout(config).log("process_batch", "00000"), 1)
        assert (failure["task_id"], failure["status"], failure["category"]) == (
            "batch-00000", "DEAD", "permanent",
        )  # fmt: skip
        assert "killed by SIGABRT" in failure["message"] and log in failure["message"]
        assert failure["log"] == log
        assert "Fatal Python error: Aborted" in Path(log).read_text(), "the log tells why"
        status = _orchestrator_json("status", configfile)
        assert status["by_status"]["RUNNING"] == 0 and status["by_status"]["DEAD"] == 1

    def test_a_jobs_output_goes_to_its_log_not_the_coordinators(self, tmp_path, make_config):
        try:
            from jobs_for_tests import CHATTY_MARKERS
        except ImportError:  # pragma: no cover - run from the repository root as a package
            from tests.jobs_for_tests import CHATTY_MARKERS

        config = make_config(job=_batch_job("chatty_batch"), merge={"mode": "concat"})
        configfile = _prepare(tmp_path, config, n_items=50)

        result = run_snakemake(tmp_path, configfile)

        coordinator = result.stdout + result.stderr
        assert len(coordinator) < 100_000
        log = Path(_layout(config).log("process_batch", "00000")).read_text()
        assert len(log) > 1_000_000
        for marker in CHATTY_MARKERS.values():
            assert marker not in coordinator, marker
            assert marker in log, marker

    def test_a_batch_past_its_runtime_is_stopped_and_recorded(self, tmp_path, make_config):
        # runtime is in whole minutes: one attempt (--retries 0) takes a minute.
        config = make_config(
            job=_batch_job("sleep_forever"), merge={"mode": "concat"}, resources={"runtime": 1}
        )
        configfile = _prepare(tmp_path, config, n_items=50)

        result = run_snakemake(tmp_path, configfile, "--retries", "0", check=False, timeout=240)

        assert result.returncode != 0
        (failure,) = _orchestrator_json("errors", configfile)["failed_tasks"]
        assert (failure["status"], failure["category"], failure["error_type"]) == (
            "FAILED", "resource", "RuntimeExceeded",
        )  # fmt: skip
        assert failure["message"].startswith("exceeded its runtime of 1 min: stopped with SIGTERM")
        log = Path(_layout(config).log("process_batch", "00000")).read_text()
        assert "exceeded its runtime of 1 min" in log
        assert _orchestrator_json("status", configfile)["by_status"]["RUNNING"] == 0


class TestOutputContractRun:
    """The output contract end to end: a batch breaking it fails the run permanently,
    names what differs in its log, and no final result is published."""

    @pytest.fixture(autouse=True)
    def _test_jobs_importable(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))

    @staticmethod
    def _concat_config(make_config, **job: Any) -> dict[str, Any]:
        return make_config(
            job={"combine": None, "finalize": None, **job}, merge={"fan_in": 4, "mode": "concat"}
        )

    @staticmethod
    def _error_lines(config: dict[str, Any]) -> dict[str, str]:
        """Batch -> the ``error:`` line of its log, for the batches that failed."""
        folder = Path(_layout(config).logs_dir) / "process_batch"
        logs = {p.stem: p.read_text().splitlines() for p in folder.glob("[0-9]????.log")}
        return {
            batch: next(line for line in lines if line.startswith("error: "))
            for batch, lines in logs.items()
            if any(line.startswith("error: ") for line in lines)
        }

    def test_a_batch_of_another_schema_fails_the_run(self, tmp_path, make_config):
        # Bug 1: batch 0's Int64 and the others' String gave a final `v: Int64`, rc 0.
        config = self._concat_config(
            make_config, function="jobs_for_tests:typed_batch",
            params={"dtype": "String", "dtypes": {"00000": "Int64"}},
        )  # fmt: skip
        result = run_snakemake(tmp_path, _prepare(tmp_path, config), check=False)
        output = result.stdout + result.stderr
        assert result.returncode != 0
        failed = self._error_lines(config)
        assert failed, output
        for batch, line in failed.items():
            assert line.startswith(f"error: batch {batch}: result does not match the run's ")
            # Whichever batch committed first, the other kind is refused, naming both types.
            assert re.search(r"column 'v' is (String|Int64), the schema has (Int64|String);", line)
            assert "String" in line and "Int64" in line
        # The coordinator prints the recorded cause of a failed batch in one line.
        assert any(line.removeprefix("error: ") in output for line in failed.values()), output
        assert "not resubmitting" in output and "Traceback" not in output
        layout = _layout(config)
        assert not Path(layout.final).exists() and not Path(layout.manifest).exists()
        for batch in failed:
            assert not Path(layout.result(int(batch))).exists()

    def test_a_batch_dropping_rows_fails_a_per_item_run(self, tmp_path, make_config):
        # Bug 2: a job that drops half its rows gave a manifest "1000 = 1000 + 0", rc 0.
        config = self._concat_config(
            make_config, function="jobs_for_tests:rows_batch", rows="per_item",
            params={"rows": "drop_half"},
        )  # fmt: skip
        result = run_snakemake(tmp_path, _prepare(tmp_path, config), check=False)
        output = result.stdout + result.stderr
        assert result.returncode != 0
        failed = self._error_lines(config)
        assert failed, output
        for batch, line in failed.items():
            assert line == f"error: batch {batch}: 50 rows for 100 items (job.rows: per_item)"
        assert any(line.removeprefix("error: ") in output for line in failed.values()), output
        layout = _layout(config)
        assert not Path(layout.final).exists() and not Path(layout.manifest).exists()

    def test_a_run_keeping_the_contract_proves_it(self, tmp_path, make_config):
        schema = {"id": "Int64", "doubled": "Int64"}
        config = self._concat_config(
            make_config, function="jobs_for_tests:rows_batch", rows="per_item", output_schema=schema
        )
        run_snakemake(tmp_path, _prepare(tmp_path, config))
        layout = _layout(config)
        manifest = json.loads(Path(layout.manifest).read_text())
        assert manifest["rows_out"] == manifest["items_processed"] == 1000
        assert manifest["output_contract"] == {
            "schema": [["doubled", "Int64"], ["id", "Int64"]], "declared": True,
            "rows": "per_item", "held": True,
        }  # fmt: skip
        assert pl.read_parquet(layout.final).height == 1000
