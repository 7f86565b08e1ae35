"""Unit tests for orchestrator_ext.cost and ``orchestrator cost``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from ops_fixtures import make_finished_run, open_store

from orchestrator_ext import cost
from orchestrator_ext.cli import EXIT_USER_ERROR, main
from orchestrator_ext.config import load_config
from orchestrator_ext.layout import RunLayout
from orchestrator_ext.partition import read_plan


@pytest.fixture
def finished(tmp_path: Path, make_config: Callable[..., dict[str, Any]]):
    return make_finished_run(tmp_path, make_config)


def _remote(config_raw: dict[str, Any]) -> Any:
    raw = {
        **config_raw,
        "output_root": "s3://bucket/prefix",
        "state": {"backend": "dynamodb", "table": "orchestrator-state", "region": "eu-west-1"},
    }
    return load_config(raw)


class TestPrices:
    def test_defaults_are_public_list_prices(self) -> None:
        prices = cost.load_prices(None)
        assert prices.s3_put_per_1000 == 0.005 and prices.s3_get_per_1000 == 0.0004
        assert prices.dynamodb_write_per_million == 0.625
        assert prices.dynamodb_read_per_million == 0.125
        assert prices.currency == "USD"

    def test_file_overrides_some_keys(self, tmp_path: Path) -> None:
        path = tmp_path / "prices.yaml"
        path.write_text("currency: EUR\ncompute: {core_hour: 0.03}\ns3: {put_per_1000: 0.0054}\n")
        prices = cost.load_prices(path)
        assert (prices.currency, prices.core_hour, prices.s3_put_per_1000) == ("EUR", 0.03, 0.0054)
        assert prices.s3_get_per_1000 == 0.0004

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ("s3: {put: 1}", "unknown price 's3.put'"),
            ("s3: {put_per_1000: -1}", "must be a non-negative number"),
            ("compute: {core_hour: yes}", "must be a non-negative number"),
            ("compute: 3", "'compute' must be a mapping"),
            ("- 1", "must hold a mapping"),
            ("a: [", "is not valid YAML"),
        ],
    )
    def test_bad_files(self, tmp_path: Path, text: str, message: str) -> None:
        path = tmp_path / "prices.yaml"
        path.write_text(text)
        with pytest.raises(cost.CostError, match=message):
            cost.load_prices(path)

    def test_missing_file(self, tmp_path: Path) -> None:
        with pytest.raises(cost.CostError, match="price file not found"):
            cost.load_prices(tmp_path / "none.yaml")


class TestRequestModel:
    @pytest.mark.parametrize(
        ("size", "puts"), [(0, 1), (cost.MULTIPART_BYTES, 1), (cost.MULTIPART_BYTES + 1, 4)]
    )
    def test_multipart_above_8_mib(self, size: int, puts: int) -> None:
        assert cost.put_requests(size) == puts

    def test_plan_of_a_run_in_s3(self, finished) -> None:
        _, config = finished
        remote = _remote(config.raw)
        workload = cost.build_workload_from_plan(remote, read_plan(RunLayout(config.run_dir).plan))
        # 8 batches, fan-in 3: levels [8, 3, 1]; 14 tasks, one attempt each
        assert (workload.batches, workload.merge_nodes, workload.tasks) == (8, 4, 14)
        s3 = cost.s3_requests(workload, output_in_s3=True, input_in_s3=False)
        assert s3["requests"] == {"PUT": 42, "GET": 51, "HEAD": 138, "LIST": 7}
        assert s3["by_stage"]["process"] == {"GET": 16, "HEAD": 64, "PUT": 24, "LIST": 0}
        units = cost.dynamodb_units(workload)
        # 2 WRU to register each task; 2 changes per attempt at 4 WRU and 1 RRU each
        assert (units["write_units"], units["read_units"]) == (2 * 14 + 4 * 28, 28 + 1)

    def test_local_run_makes_no_s3_requests(self, finished) -> None:
        _, config = finished
        workload = cost.build_workload_from_plan(config, read_plan(RunLayout(config.run_dir).plan))
        assert cost.s3_requests(workload, False, False)["requests"] == {
            "PUT": 0, "GET": 0, "HEAD": 0, "LIST": 0,
        }  # fmt: skip

    def test_input_in_s3_is_listed_and_read(self) -> None:
        workload = cost.Workload(source="plan", items=10, batches=1, fan_in=2, input_files=2500)
        requests = cost.s3_requests(workload, False, True)["requests"]
        assert requests == {"PUT": 0, "GET": 2500, "HEAD": 0, "LIST": 3}


class TestWorkloads:
    def test_from_config_counts_local_parquet_rows(self, finished) -> None:
        _, config = finished
        workload = cost.build_workload_from_config(config)
        assert (workload.items, workload.batches) == (40, 8)
        # no --batch-seconds: every job is priced at resources.runtime (60 min)
        assert workload.core_seconds == (8 + 4 + 2) * 3600

    @pytest.mark.parametrize(
        ("fmt", "text"), [("csv", "id,v\n1,a\n2,b\n3,c\n"), ("jsonl", '{"id":1}\n{"id":2}\n\n')]
    )
    def test_counts_csv_and_jsonl_lines(self, tmp_path, make_config, fmt: str, text: str) -> None:
        path = tmp_path / f"items.{fmt}"
        path.write_text(text)
        config = load_config(make_config(input={"uri": str(path), "format": fmt}))
        assert cost.count_input_items(config)[0] == (3 if fmt == "csv" else 2)

    def test_input_in_s3_needs_items(self, make_config) -> None:
        config = load_config(
            make_config(
                input={"uri": "s3://b/in/*.parquet", "format": "parquet"},
                output_root="s3://b/out",
                state={"backend": "dynamodb", "table": "t"},
            )
        )
        with pytest.raises(cost.CostError, match="pass --items N"):
            cost.build_workload_from_config(config)
        assert cost.build_workload_from_config(config, items=250).batches == 3

    def test_from_store_counts_every_attempt(self, finished) -> None:
        _, config = finished
        store = open_store(config)
        tasks, transitions = store.tasks(), store.transitions()
        store.close()
        plan = read_plan(RunLayout(config.run_dir).plan)
        workload = cost.build_workload_from_store(config, tasks, transitions, plan)
        assert workload.source == "state store"
        assert workload.batch_attempts == 10 and workload.failed_attempts == 2
        assert (workload.merge_attempts, workload.other_attempts) == (4, 2)
        assert workload.transitions == len(transitions) and workload.core_seconds > 0
        units = cost.dynamodb_units(workload)
        assert units["write_units"] == 2 * 14 + 4 * (len(transitions) - 14)

    def test_a_killed_attempt_of_a_finished_run_ends_with_the_run(self, make_config) -> None:
        from datetime import UTC, datetime, timedelta

        from orchestrator_ext.state import TaskRecord, TaskStatus, Transition

        t0 = datetime(2030, 1, 1, tzinfo=UTC)

        def at(seconds: float) -> str:
            return (t0 + timedelta(seconds=seconds)).isoformat()

        def step(task: str, to: str, attempt: int, seconds: float) -> Transition:
            return Transition(task, None, to, attempt, at(seconds))

        # Attempt 1 of the batch was killed without a record; attempt 2 ran 2 s, the
        # manifest 1 s, and the run ended at 5 s.
        transitions = [
            step("batch-00000", "RUNNING", 1, 0), step("batch-00000", "RUNNING", 2, 1),
            step("batch-00000", "SUCCEEDED", 2, 3), step("manifest", "RUNNING", 1, 4),
            step("manifest", "SUCCEEDED", 1, 5),
        ]  # fmt: skip
        tasks = [
            TaskRecord("batch-00000", TaskStatus.SUCCEEDED, 2, kind="batch", items=10),
            TaskRecord("manifest", TaskStatus.SUCCEEDED, 1, kind="manifest"),
        ]
        config = load_config(make_config())
        an_hour_later = t0 + timedelta(hours=1)
        workload = cost.build_workload_from_store(config, tasks, transitions, now=an_hour_later)
        assert workload.core_seconds == pytest.approx(5 + 2 + 1)
        # Still running, the killed attempt may yet be running: it counts up to now.
        tasks[-1].status = TaskStatus.RUNNING
        running = cost.build_workload_from_store(
            config, tasks, transitions[:-1], now=t0 + timedelta(seconds=10)
        )
        assert running.core_seconds == pytest.approx(10 + 2 + 6)

    def test_from_an_empty_store(self, finished) -> None:
        _, config = finished
        with pytest.raises(cost.CostError, match="no batches yet"):
            cost.build_workload_from_store(config, [], [])


class TestEstimate:
    def test_prices_only_the_services_used(self, finished) -> None:
        _, config = finished
        remote = _remote(config.raw)
        workload = cost.build_workload_from_plan(
            remote, read_plan(RunLayout(config.run_dir).plan), batch_seconds=36
        )
        estimate = cost.estimate_cost(remote, workload, cost.Prices(), cpus_per_job=2)
        s3 = (42 + 7) / 1000 * 0.005 + (51 + 138) / 1000 * 0.0004
        ddb = 140 / 1e6 * 0.625 + 29 / 1e6 * 0.125
        core_hours = 14 * 36 * 2 / 3600
        assert estimate.compute["core_hours"] == pytest.approx(core_hours)
        assert estimate.total == pytest.approx(s3 + ddb + core_hours * 0.0425, abs=1e-6)
        local = cost.estimate_cost(config, workload, cost.Prices())
        assert not local.s3["applies"] and not local.dynamodb["applies"]
        assert local.total == pytest.approx(14 * 36 / 3600 * 0.0425, abs=1e-6)


class TestCostCommand:
    def test_after_a_run_uses_the_store(self, finished, capsys) -> None:
        configfile, _ = finished
        assert main(["cost", "--json", "--configfile", str(configfile)]) == 0
        data = json.loads(capsys.readouterr().out)
        assert data["source"] == "state store" and data["attempts"]["failed"] == 2

    def test_before_a_run_from_config_with_prices(self, tmp_path, make_config, capsys) -> None:
        raw = make_config(batching={"max_items": 5})
        configfile = tmp_path / "c.yaml"
        configfile.write_text(yaml.safe_dump(raw))
        prices = tmp_path / "p.yaml"
        prices.write_text("currency: EUR\ncompute: {core_hour: 1.0}\n")
        args = ["cost", "--json", "--items", "1000", "--batch-seconds", "360",
                "--prices", str(prices), "--configfile", str(configfile)]  # fmt: skip
        assert main(args) == 0
        data = json.loads(capsys.readouterr().out)
        assert data["source"] == "config" and data["batches"] == 200 and data["currency"] == "EUR"
        jobs = data["attempts"]["batch"] + data["attempts"]["merge"] + data["attempts"]["other"]
        assert data["compute"]["core_hours"] == pytest.approx(jobs * 0.1)
        assert data["total"] == pytest.approx(jobs * 0.1)

    def test_table(self, finished, capsys) -> None:
        configfile, _ = finished
        assert main(["cost", "--source", "plan", "--configfile", str(configfile)]) == 0
        out = capsys.readouterr().out
        assert "estimated cost (from the plan)" in out and "core-hours" in out

    def test_currency_is_printed_as_is_not_as_markup(self, finished, tmp_path, capsys) -> None:
        configfile, _ = finished
        prices = tmp_path / "p.yaml"
        prices.write_text("currency: '[/bold]EUR'\n")
        args = ["cost", "--source", "plan", "--prices", str(prices)]
        assert main([*args, "--configfile", str(configfile)]) == 0
        assert "cost ([/bold]EUR)" in capsys.readouterr().out

    def test_bad_price_file_is_one_line(self, finished, tmp_path, capsys) -> None:
        configfile, _ = finished
        bad = tmp_path / "bad.yaml"
        bad.write_text("s3: {put: 1}\n")
        code = main(["cost", "--prices", str(bad), "--configfile", str(configfile)])
        assert code == EXIT_USER_ERROR
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "unknown price 's3.put'" in err[0]
