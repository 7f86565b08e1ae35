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
from orchestrator_ext.state.sqlite import SqliteStateStore

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
        assert summary["by_status"] == {
            "PENDING": 4,
            "SUBMITTED": 0,
            "RUNNING": 1,
            "SUCCEEDED": 3,
            "FAILED": 0,
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


class TestConfigErrors:
    def test_missing_config_file(self, tmp_path: Path, capsys) -> None:
        missing = tmp_path / "nope.yaml"
        assert main(["status", "--configfile", str(missing)]) == EXIT_USER_ERROR
        assert _one_error_line(capsys) == f"orchestrator: error: config file not found: {missing}"

    def test_invalid_config_value(self, configfile: Path, capsys) -> None:
        code = main(["status", "--configfile", str(configfile), "--config", "merge.fan_in=1"])
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
    def test_dotted_and_typed(self) -> None:
        assert parse_overrides(
            ["run_id=x", "batching.max_items=5", "batching.max_bytes=null", "job.params.a.b=[1, 2]"]
        ) == {
            "run_id": "x",
            "batching": {"max_items": 5, "max_bytes": None},
            "job": {"params": {"a": {"b": [1, 2]}}},
        }

    def test_value_may_contain_equals(self) -> None:
        assert parse_overrides(["input.uri=a=b.csv"]) == {"input": {"uri": "a=b.csv"}}

    def test_empty(self) -> None:
        assert parse_overrides([]) == {}

    @pytest.mark.parametrize("pair", ["no_equals", "=value"])
    def test_malformed(self, pair: str) -> None:
        with pytest.raises(OrchestratorError, match="--config expects KEY=VALUE"):
            parse_overrides([pair])


class TestParser:
    def test_subcommand_required(self, capsys) -> None:
        with pytest.raises(SystemExit) as info:
            main([])
        assert info.value.code == 2
        assert "required" in capsys.readouterr().err
