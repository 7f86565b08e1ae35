"""Unit tests for orchestrator_ext.cli, called in-process through ``main([...])``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml

from orchestrator_ext.cli import EXIT_USER_ERROR, EXIT_VERIFY_FAILED, main, parse_overrides
from orchestrator_ext.config import load_config
from orchestrator_ext.errors import OrchestratorError
from orchestrator_ext.layout import RunLayout
from orchestrator_ext.state import TaskStatus
from orchestrator_ext.state.sqlite import SqliteStateStore
from orchestrator_ext.storage import sha256_file

try:
    import jobs_for_tests as jobs
except ModuleNotFoundError:  # tests/ imported as a package
    from tests import jobs_for_tests as jobs


@pytest.fixture
def configfile(tmp_path: Path, make_config: Callable[..., dict[str, Any]]) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(make_config(run_id="r")))
    return path


@pytest.fixture
def store_with_tasks(configfile: Path):
    """The run's own state store with 5 batches, 2 inner merges, final, manifest."""
    config = load_config(yaml.safe_load(configfile.read_text()))
    store = SqliteStateStore(RunLayout(config.run_dir).state_db, config.run_id)
    store.ensure_tasks(
        [f"batch-{i:05d}" for i in range(5)]
        + ["merge-L1-part-00000", "merge-L1-part-00001", "final", "manifest"]
    )
    for task in ["batch-00000", "batch-00001", "batch-00002"]:
        store.succeed(store.begin_attempt(task, host="n1"), "0" * 64)
    lease = store.begin_attempt("batch-00003", host="n2")
    store.fail(lease, "permanent", "BatchFailed", "too many", retryable=False)
    store.begin_attempt("batch-00004", host="n2")
    yield store
    store.close()


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("orchestrator: error: ")
    assert "Traceback" not in captured.err
    return lines[0]


class TestStatus:
    def test_json_counts(self, configfile: Path, store_with_tasks, capsys) -> None:
        assert main(["status", "--json", "--configfile", str(configfile)]) == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary["run_id"] == "r"
        assert summary["tasks"] == 9
        # Every status a task can be in is counted, the ones no task has as 0.
        zero = {str(s): 0 for s in TaskStatus if s is not TaskStatus.SUPERSEDED}
        assert summary["by_status"] == zero | {
            "PENDING": 4,
            "RUNNING": 1,
            "SUCCEEDED": 3,
            "DEAD": 1,
        }
        assert summary["by_kind"]["batch"] == {"SUCCEEDED": 3, "DEAD": 1, "RUNNING": 1}
        assert summary["by_kind"]["merge"] == {"PENDING": 2}
        assert summary["by_kind"]["final"] == {"PENDING": 1}

    def test_table(self, configfile: Path, store_with_tasks, capsys) -> None:
        assert main(["status", "--configfile", str(configfile)]) == 0
        out = capsys.readouterr().out
        assert "run r: 9 tasks" in out
        assert "SUCCEEDED" in out and "DEAD" in out

    def test_run_not_started(self, configfile: Path, capsys) -> None:
        assert main(["status", "--json", "--configfile", str(configfile)]) == EXIT_USER_ERROR
        assert "no state store at" in _one_error_line(capsys)
        assert not (configfile.parent / "out" / "r" / "state.sqlite").exists()


class TestManifestVerify:
    @pytest.fixture
    def finished(self, tmp_path: Path, make_config: Callable[..., dict[str, Any]]) -> Path:
        pl.DataFrame({"id": list(range(12)), "value": list(range(12))}).write_parquet(
            tmp_path / "items.parquet"
        )
        raw = make_config(
            run_id="r",
            batching={"max_items": 5},
            job={"function": jobs.module_ref("double_batch"), "combine": None, "finalize": None},
            merge={"fan_in": 2, "mode": "concat"},
        )
        config = load_config(raw)
        store = SqliteStateStore(RunLayout(config.run_dir).state_db, config.run_id)
        try:
            jobs.run_in_process(config, store)
        finally:
            store.close()
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(raw))
        return path

    def test_ok(self, finished: Path, capsys) -> None:
        assert main(["manifest", "verify", "--configfile", str(finished)]) == 0
        assert capsys.readouterr().out.startswith("ok: every file listed in ")

    def test_mismatch_names_the_file(self, finished: Path, tmp_path: Path, capsys) -> None:
        result = RunLayout(str(tmp_path / "out" / "r")).result(1)
        Path(result).write_bytes(b"tampered")
        code = main(["manifest", "verify", "--configfile", str(finished)])
        assert code == EXIT_VERIFY_FAILED
        err = capsys.readouterr().err
        assert f"checksum mismatch: {result} (batch 00001 result)" in err

    def test_missing_file_json(self, finished: Path, tmp_path: Path, capsys) -> None:
        final = RunLayout(str(tmp_path / "out" / "r")).final
        Path(final).unlink()
        code = main(["manifest", "verify", "--json", "--configfile", str(finished)])
        assert code == EXIT_VERIFY_FAILED
        report = json.loads(capsys.readouterr().out)
        assert report["ok"] is False
        assert report["problems"] == [f"missing: {final} (final result)"]

    def test_no_manifest_is_a_user_error(self, configfile: Path, capsys) -> None:
        assert main(["manifest", "verify", "--configfile", str(configfile)]) == EXIT_USER_ERROR
        assert "manifest.json" in _one_error_line(capsys)

    @pytest.mark.parametrize(
        ("garbage", "reason"),
        [('{"manifest_version": 1,', "is not valid JSON (line 1 column 24: "),
         ("[]", "is not a JSON object (it holds a list)")],
    )  # fmt: skip
    def test_garbage_manifest_is_one_line(
        self, finished: Path, tmp_path: Path, capsys, garbage: str, reason: str
    ) -> None:
        manifest = Path(RunLayout(str(tmp_path / "out" / "r")).manifest)
        manifest.write_text(garbage)
        assert main(["manifest", "verify", "--configfile", str(finished)]) == EXIT_USER_ERROR
        line = _one_error_line(capsys)
        assert line.startswith(f"orchestrator: error: {manifest} {reason}")
        assert line.endswith("delete it and rerun to regenerate it")

    def test_rewritten_checksum_is_found_against_the_state_store(
        self, finished: Path, tmp_path: Path, capsys
    ) -> None:
        layout = RunLayout(str(tmp_path / "out" / "r"))
        data = bytearray(Path(layout.final).read_bytes())
        data[len(data) // 2] ^= 0x01
        Path(layout.final).write_bytes(bytes(data))
        manifest = json.loads(Path(layout.manifest).read_text())
        manifest["final"]["sha256"] = sha256_file(layout.final)
        Path(layout.manifest).write_text(json.dumps(manifest))
        code = main(["manifest", "verify", "--configfile", str(finished)])
        assert code == EXIT_VERIFY_FAILED
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 2, err
        assert err[0].startswith(
            f"state store mismatch: {layout.manifest} (manifest, task manifest)"
        )
        assert err[1].startswith(f"state store mismatch: {layout.final} (final result, task final)")

    def test_dropped_batch_json(self, finished: Path, tmp_path: Path, capsys) -> None:
        layout = RunLayout(str(tmp_path / "out" / "r"))
        manifest = json.loads(Path(layout.manifest).read_text())
        gone = manifest["batches"].pop()
        manifest["items_in"] -= gone["items"]
        manifest["items_processed"] -= gone["items_processed"]
        Path(layout.manifest).write_text(json.dumps(manifest))
        code = main(["manifest", "verify", "--json", "--configfile", str(finished)])
        assert code == EXIT_VERIFY_FAILED
        report = json.loads(capsys.readouterr().out)
        assert report["ok"] is False
        assert (
            f"conservation: {layout.manifest}: batch 00002 of the plan {layout.plan} is not listed"
        ) in report["problems"]
        assert (
            f"conservation: {layout.manifest}: items_in is 10 but the plan {layout.plan} has 12 "
            "items"
        ) in report["problems"]

    def test_no_state_store_is_a_problem_not_ok(
        self, finished: Path, tmp_path: Path, capsys
    ) -> None:
        layout = RunLayout(str(tmp_path / "out" / "r"))
        Path(layout.state_db).unlink()
        code = main(["manifest", "verify", "--configfile", str(finished)])
        assert code == EXIT_VERIFY_FAILED
        assert capsys.readouterr().err == (
            f"cannot cross-check against the state store: no state store at {layout.state_db}: "
            "the run has not started (or ran elsewhere)\n"
        )


class TestCorruptPlan:
    def test_cost_with_garbage_plan(self, configfile: Path, capsys) -> None:
        config = load_config(yaml.safe_load(configfile.read_text()))
        plan = Path(RunLayout(config.run_dir).plan)
        plan.parent.mkdir(parents=True)
        plan.write_bytes(b"\x00garbage")
        code = main(["cost", "--source", "plan", "--configfile", str(configfile)])
        assert code == EXIT_USER_ERROR
        line = _one_error_line(capsys)
        assert f"{plan} is not valid JSON (line 1 column 1: " in line
        assert line.endswith("delete it and rerun to regenerate it")


class TestConfigErrors:
    def test_missing_config_file(self, tmp_path: Path, capsys) -> None:
        missing = tmp_path / "nope.yaml"
        assert main(["status", "--configfile", str(missing)]) == EXIT_USER_ERROR
        assert _one_error_line(capsys) == f"orchestrator: error: config file not found: {missing}"

    def test_invalid_config_value(self, configfile: Path, capsys) -> None:
        code = main(["status", "--configfile", str(configfile), "--config", "merge={fan_in: 1}"])
        assert code == EXIT_USER_ERROR
        assert "merge/fan_in" in _one_error_line(capsys)

    def test_override_changes_the_run(self, configfile: Path, store_with_tasks, capsys) -> None:
        code = main(["status", "--json", "--configfile", str(configfile), "--config", "run_id=x"])
        assert code == EXIT_USER_ERROR
        assert "out/x/state.sqlite" in _one_error_line(capsys)

    def test_malformed_override(self, configfile: Path, capsys) -> None:
        code = main(["status", "--configfile", str(configfile), "--config", "run_id"])
        assert code == EXIT_USER_ERROR
        assert "--config expects KEY=VALUE, got 'run_id'" in _one_error_line(capsys)


class TestParseOverrides:
    # Every form of --config a user might type; Snakemake's own parser is the reference.
    FORMS = [
        "run_id=x", "output_root=/tmp/a=b", "batching={max_items: 5}", "flag=True",
        "ratio=0.25", "big=1e3", "empty=", "quoted='q'", "listed=[1, 2]", "nul=null",
        "hex=0x1f", "job={params: {k: 1, s: text}}",
    ]  # fmt: skip

    @pytest.mark.parametrize("form", FORMS)
    def test_parses_as_snakemake_does(self, form: str) -> None:
        from snakemake.cli import parse_config

        assert parse_overrides([form]) == parse_config([form])

    def test_later_entries_update_earlier_ones_recursively(self) -> None:
        from snakemake.cli import parse_config

        forms = ["job={params: {a: 1}}", "job={params: {b: 2}}", "run_id=x", "run_id=y"]
        assert parse_overrides(forms) == parse_config(forms)
        assert parse_overrides(forms) == {"job": {"params": {"a": "1", "b": "2"}}, "run_id": "y"}

    def test_empty(self) -> None:
        assert parse_overrides([]) == {}

    def test_malformed(self) -> None:
        with pytest.raises(OrchestratorError, match="--config expects KEY=VALUE"):
            parse_overrides(["no_equals"])

    @pytest.mark.parametrize("pair", ["=value", "batching.max_items=5", "x=1"])
    def test_key_must_be_a_name_as_in_snakemake(self, pair: str) -> None:
        from snakemake.cli import parse_config

        with pytest.raises(ValueError):
            parse_config([pair])
        with pytest.raises(OrchestratorError, match="the key must be a name"):
            parse_overrides([pair])


class TestParser:
    def test_subcommand_required(self, capsys) -> None:
        with pytest.raises(SystemExit) as info:
            main([])
        assert info.value.code == 2
        assert "required" in capsys.readouterr().err


class TestRunFolder:
    """``orchestrator CMD RUN_DIR`` reads the config the run wrote into its folder."""

    def test_status_by_folder_equals_status_by_configfile(
        self, configfile: Path, store_with_tasks, capsys
    ) -> None:
        from orchestrator_ext.resolved_config import publish_resolved_config

        config = load_config(yaml.safe_load(configfile.read_text()))
        publish_resolved_config(config)
        assert main(["status", "--json", "--configfile", str(configfile)]) == 0
        by_file = json.loads(capsys.readouterr().out)
        assert main(["status", config.run_dir, "--json"]) == 0
        by_folder = json.loads(capsys.readouterr().out)
        assert by_folder["run_id"] == by_file["run_id"] == "r"
        assert by_folder["by_status"] == by_file["by_status"]

    def test_a_folder_without_config_json_is_one_line(self, tmp_path: Path, capsys) -> None:
        assert main(["status", str(tmp_path)]) == EXIT_USER_ERROR
        assert "is not a run folder" in _one_error_line(capsys)

    def test_folder_and_configfile_together_are_refused(self, configfile: Path, capsys) -> None:
        assert main(["status", "somewhere", "--configfile", str(configfile)]) == EXIT_USER_ERROR
        assert "either by its folder or by --configfile" in _one_error_line(capsys)

    def test_a_changed_config_json_is_refused(self, configfile: Path, capsys) -> None:
        from orchestrator_ext.resolved_config import publish_resolved_config

        config = load_config(yaml.safe_load(configfile.read_text()))
        path = Path(publish_resolved_config(config))
        document = json.loads(path.read_text())
        document["config"]["run_id"] = "other"
        path.write_text(json.dumps(document))
        assert main(["status", config.run_dir]) == EXIT_USER_ERROR
        assert "was changed after the run wrote it" in _one_error_line(capsys)

    def test_kill_batches_with_a_name_key_is_one_line(
        self, tmp_path: Path, make_config: Callable[..., dict[str, Any]], capsys
    ) -> None:
        path = tmp_path / "faulty.yaml"
        path.write_text(yaml.safe_dump(make_config(faults={"kill_batches": {"abc": 5}})))
        assert main(["status", "--configfile", str(path)]) == EXIT_USER_ERROR
        assert "faults/kill_batches" in _one_error_line(capsys)


class TestRichMarkupInData:
    """Text from the state store and the dead-letter files is printed as is, never as markup."""

    MESSAGE = "bad [/bold] [red]x[/red]"

    @pytest.fixture
    def marked_up_run(self, configfile: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
        monkeypatch.setenv("COLUMNS", "300")  # one table row per line, nothing folded
        config = load_config(yaml.safe_load(configfile.read_text()))
        store = SqliteStateStore(RunLayout(config.run_dir).state_db, config.run_id)
        store.ensure_tasks(["batch-00000", "batch-00001", "manifest"])
        lease = store.begin_attempt("batch-00000", host="[bold]n1", slurm_job_id="[/]7")
        store.fail(lease, "permanent", "ValueError", self.MESSAGE, retryable=False)
        store.begin_attempt("batch-00001", host="[/bold]n2", slurm_job_id="[red]8")
        store.close()
        dead = Path(RunLayout(config.run_dir).dead_letter(1))
        dead.parent.mkdir(parents=True, exist_ok=True)
        pl.DataFrame(
            {"id": ["[i]42"], "category": ["permanent"], "error_type": ["PermanentError"],
             "message": [f"PermanentError: {self.MESSAGE}"], "attempt": [1]}
        ).write_parquet(dead)  # fmt: skip
        return configfile

    def test_errors_prints_messages_ids_and_hosts_verbatim(
        self, marked_up_run: Path, capsys
    ) -> None:
        assert main(["errors", "--configfile", str(marked_up_run)]) == 0
        out = capsys.readouterr().out
        assert f"ValueError: {self.MESSAGE}" in out
        assert "[/]7" in out
        assert f"PermanentError: {self.MESSAGE}" in out
        assert "[i]42" in out

    def test_status_prints_hosts_and_job_ids_verbatim(self, marked_up_run: Path, capsys) -> None:
        assert main(["status", "--configfile", str(marked_up_run)]) == 0
        out = capsys.readouterr().out
        assert "[/bold]n2" in out and "[red]8" in out


def test_a_closed_pipe_ends_quietly(tmp_path: Path, make_config) -> None:
    import subprocess

    from conftest import ORCHESTRATOR

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(make_config(run_id="piped")))
    config = load_config(yaml.safe_load(path.read_text()))
    store = SqliteStateStore(RunLayout(config.run_dir).state_db, config.run_id)
    store.ensure_tasks([f"batch-{i:05d}" for i in range(3000)])
    store.close()
    result = subprocess.run(
        f"{ORCHESTRATOR} audit --configfile {path} | head -1", shell=True,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.stdout.startswith("run piped: 3000 transitions")
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr


def test_the_command_runs_as_a_module_too(tmp_path: Path, make_config) -> None:
    import subprocess
    import sys

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(make_config(run_id="as-module")))
    module = [sys.executable, "-m", "orchestrator_ext.cli"]
    helped = subprocess.run([*module, "--help"], capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0 and "status" in helped.stdout, helped.stderr
    # Its exit code and one-line error, as from the console script.
    result = subprocess.run(
        [*module, "status", "--configfile", str(path)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == EXIT_USER_ERROR
    assert result.stderr.startswith("orchestrator: error: no state store at ")
    assert "Traceback" not in result.stderr


def printing_item(item: dict[str, Any], ctx: Any) -> dict[str, Any]:
    """Item mode: prints a line per item (which must not reach the report on stdout)."""
    print(f"working on {item['id']}")
    return item


def out_of_memory_item(item: dict[str, Any], ctx: Any) -> dict[str, Any]:
    """Item mode: fails as nothing else here does, so a test sees that it was not called."""
    raise MemoryError("called")


class TestPlan:
    """``orchestrator plan``: the batches a run will have, before it runs."""

    @pytest.fixture
    def write_run(
        self, tmp_path: Path, make_config: Callable[..., dict[str, Any]]
    ) -> Callable[..., Path]:
        """``write_run(n=100, **overrides)``: a Parquet input of n items and a config of an
        item job waiting 1 ms per item; returns the config file."""

        def write(n: int = 100, **overrides: Any) -> Path:
            frame = pl.DataFrame({"id": list(range(n)), "value": list(range(n))})
            frame.write_parquet(tmp_path / "items.parquet")
            job = {"function": "orchestrator_ext.jobs.wait:wait_item", "mode": "item",
                   "combine": None, "finalize": None, "params": {"wait_s": 0.001}}  # fmt: skip
            raw = make_config(run_id="p", job=job, merge={"fan_in": 3, "mode": "concat"},
                              batching={"max_items": 40})  # fmt: skip
            for key, value in overrides.items():
                raw[key] = {**raw[key], **value} if isinstance(value, dict) else value
            path = tmp_path / "plan.yaml"
            path.write_text(yaml.safe_dump(raw))
            return path

        return write

    @staticmethod
    def _json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
        assert main(["plan", "--json", *argv]) == 0
        return json.loads(capsys.readouterr().out)

    def test_counts_the_input_and_times_the_job(self, write_run, capsys) -> None:
        preview = self._json(capsys, "--configfile", str(write_run()))
        assert preview["source"] == "config"
        assert (preview["items"], preview["items_basis"]) == (100, "counted in 1 parquet file")
        assert (preview["max_items"], preview["size_basis"]) == (40, "batching.max_items")
        assert (preview["batches"], preview["levels"]) == (3, [3, 1])
        assert preview["seconds_basis"] == "timed on 100 items"
        # 100 items of about 1 ms in 3 batches
        assert 0.033 <= preview["seconds_per_batch"] < 0.1
        assert preview["overhead_seconds"] == 0.5
        assert preview["warning"].startswith("overhead per batch (0.5 s) is ")

    def test_target_seconds_sizes_batches_by_time(self, write_run, capsys) -> None:
        path = write_run(n=30, batching={"max_items": None, "target_seconds": 1},
                         job={"params": {"wait_s": 0.01}})  # fmt: skip
        preview = self._json(capsys, "--configfile", str(path))
        assert preview["size_basis"] == "timed (target 1 s)"
        assert 45 < preview["max_items"] <= 100  # about 1 s / 10 ms
        assert preview["batches"] == 1
        assert "the partition times the job again" in " ".join(preview["notes"])

    def test_table_with_the_overhead_warning(self, write_run, capsys) -> None:
        assert main(["plan", "--configfile", str(write_run()), "--executor", "slurm"]) == 0
        out = capsys.readouterr().out
        assert "run p: batches (from the config)" in out
        assert "slurm executor" in out and "5 s (" in out
        assert "warning: overhead per batch (5 s) is" in out

    def test_given_batch_seconds_and_overhead_skip_the_timing(self, write_run, capsys) -> None:
        path = write_run(job={"function": f"{__name__}:out_of_memory_item"})
        preview = self._json(capsys, "--configfile", str(path), "--batch-seconds", "600",
                             "--overhead-seconds", "6")  # fmt: skip
        assert (preview["seconds_per_batch"], preview["seconds_basis"]) == (600, "--batch-seconds")
        assert (preview["overhead_seconds"], preview["overhead_basis"]) == (6, "--overhead-seconds")
        assert preview["overhead_fraction"] == pytest.approx(0.01)
        assert preview["warning"] is None

    def test_csv_rows_are_counted_not_lines(self, write_run, tmp_path: Path, capsys) -> None:
        (tmp_path / "items.csv").write_text('id,text\n007,"two\nlines"\n008,one\n009,"a\n\nb"\n')
        path = write_run(input={"uri": str(tmp_path / "items.csv"), "format": "csv"},
                         job={"function": f"{__name__}:printing_item"})  # fmt: skip
        preview = self._json(capsys, "--configfile", str(path))
        assert (preview["items"], preview["items_basis"]) == (3, "counted in 1 csv file")

    def test_jsonl_files_are_counted(self, write_run, tmp_path: Path, capsys) -> None:
        for name, ids in (("a", [1, 2]), ("b", [3, 4, 5])):
            (tmp_path / f"{name}.jsonl").write_text("".join(f'{{"id": {i}}}\n' for i in ids))
        path = write_run(input={"uri": str(tmp_path / "*.jsonl"), "format": "jsonl"},
                         job={"params": {"wait_s": 0}})  # fmt: skip
        preview = self._json(capsys, "--configfile", str(path))
        assert (preview["items"], preview["items_basis"]) == (5, "counted in 2 jsonl files")
        assert preview["seconds_basis"] == "timed on 2 items"  # the head of the first file

    def test_what_the_job_prints_goes_to_stderr(self, write_run, capsys) -> None:
        path = write_run(n=3, job={"function": f"{__name__}:printing_item"})
        assert main(["plan", "--json", "--configfile", str(path)]) == 0
        captured = capsys.readouterr()
        assert json.loads(captured.out)["items"] == 3
        assert "working on 2" in captured.err

    def test_an_input_in_s3_is_counted_only_with_items(self, write_run, capsys) -> None:
        path = write_run(input={"uri": "s3://bucket/items/*.parquet"})
        preview = self._json(capsys, "--configfile", str(path))
        assert preview["items"] is None and preview["batches"] is None
        assert preview["items_basis"] == "not counted: the input is in S3 (pass --items N)"
        assert preview["seconds_per_batch"] is None
        assert "the input is in S3: the job is not timed here" in " ".join(preview["notes"])
        preview = self._json(capsys, "--configfile", str(path), "--items", "1000",
                             "--batch-seconds", "120")  # fmt: skip
        assert (preview["items"], preview["batches"], preview["levels"]) == (
            1000,
            25,
            [25, 9, 3, 1],
        )
        assert preview["overhead_fraction"] == pytest.approx(0.5 / 120)

    def test_a_recorded_plan_is_shown(self, write_run, capsys) -> None:
        path = write_run(batching={"max_items": None, "target_seconds": 60},
                         job={"function": f"{__name__}:out_of_memory_item"})  # fmt: skip
        config = load_config(yaml.safe_load(path.read_text()))
        plan = Path(RunLayout(config.run_dir).plan)
        plan.parent.mkdir(parents=True)
        batching = {"max_items": 250, "max_bytes": None, "weight_column": None,
                    "target_seconds": 60, "max_items_limit": None, "seconds_per_item": 0.24,
                    "sampled_items": 9, "failed_items": 0}  # fmt: skip
        recorded = {"config_sha256": config.sha256, "items": 1000, "n_batches": 4,
                    "fan_in": 3, "batching": batching}  # fmt: skip
        plan.write_text(json.dumps(recorded))
        preview = self._json(capsys, "--configfile", str(path))
        assert preview["source"] == "plan.json"
        assert (preview["items"], preview["max_items"], preview["batches"]) == (1000, 250, 4)
        assert preview["levels"] == [4, 2, 1]
        assert preview["size_basis"] == "timed (target 60 s), plan.json"
        assert preview["seconds_per_batch"] == pytest.approx(60.0)
        assert preview["seconds_basis"] == "timed on 9 items"

    def test_a_plan_of_another_config_is_passed_over(self, write_run, capsys) -> None:
        path = write_run()
        config = load_config(yaml.safe_load(path.read_text()))
        plan = Path(RunLayout(config.run_dir).plan)
        plan.parent.mkdir(parents=True)
        plan.write_text(json.dumps({"config_sha256": "0" * 64, "items": 9, "n_batches": 9}))
        preview = self._json(capsys, "--configfile", str(path))
        assert (preview["source"], preview["items"], preview["batches"]) == ("config", 100, 3)
        assert f"{plan} was made from another config" in preview["notes"][0]

    def test_a_plan_without_counts_is_one_line(self, write_run, capsys) -> None:
        path = write_run()
        config = load_config(yaml.safe_load(path.read_text()))
        plan = Path(RunLayout(config.run_dir).plan)
        plan.parent.mkdir(parents=True)
        plan.write_text(json.dumps({"config_sha256": config.sha256}))
        assert main(["plan", "--configfile", str(path)]) == EXIT_USER_ERROR
        assert "is not a plan the partition wrote" in _one_error_line(capsys)

    def test_a_job_failing_on_every_item_is_one_line(self, write_run, capsys) -> None:
        path = write_run(batching={"target_seconds": 5}, job={"params": {"id_column": "x"}})
        assert main(["plan", "--configfile", str(path)]) == EXIT_USER_ERROR
        line = _one_error_line(capsys)
        assert "the job failed on every item it was timed on" in line
        assert "first, item 0: KeyError: 'x'" in line

    def test_a_job_that_cannot_be_imported_is_one_line(self, write_run, capsys) -> None:
        path = write_run(job={"function": "no_such_module:fn"})
        assert main(["plan", "--configfile", str(path)]) == EXIT_USER_ERROR
        assert "cannot import module 'no_such_module'" in _one_error_line(capsys)
