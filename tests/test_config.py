"""Unit tests for orchestrator_ext.config."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator_ext.config import (
    MAX_ITEMS_LIMIT,
    BatchingSpec,
    ChunksSpec,
    RunConfig,
    config_sha256,
    load_config,
    load_config_file,
    read_config_file,
    read_schema,
    run_config_from,
    validate_config,
)
from orchestrator_ext.errors import ConfigError, OrchestratorError

MINIMAL = {
    "run_id": "demo",
    "input": {"uri": "items.csv", "format": "csv"},
    "job": {"function": "pkg.mod:fn"},
}


def _error(raw: dict) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(raw)
    message = str(info.value)
    assert "\n" not in message, f"config errors must be one line: {message!r}"
    return message


class TestLoadConfigDefaults:
    def test_minimal_config_gets_every_default(self) -> None:
        config = load_config(copy.deepcopy(MINIMAL))
        assert isinstance(config, RunConfig)
        assert config.output_root == "results"
        assert config.input.id_column == "id"
        assert config.batching.max_items == 10000
        assert config.batching.max_bytes is None
        assert config.batching.weight_column is None
        assert config.job.mode == "batch"
        assert config.job.combine is None
        assert config.job.params == {}
        assert config.merge.fan_in == 16
        assert config.merge.mode == "concat"
        assert config.max_dead_letter_fraction == 0.0
        assert config.retry.max_attempts == 5
        assert config.state.backend == "sqlite"

    def test_raw_keeps_defaults_and_input_is_not_mutated(self) -> None:
        raw = copy.deepcopy(MINIMAL)
        config = load_config(raw)
        assert raw == MINIMAL
        assert config.raw["batching"]["max_items"] == 10000
        assert config.raw["tolerance"] == {"max_dead_letter_fraction": 0.0}

    def test_run_dir_joins_root_and_run_id(self) -> None:
        config = load_config(
            {
                **copy.deepcopy(MINIMAL),
                "output_root": "s3://bucket/runs/",
                "state": {"backend": "dynamodb", "table": "t"},
            }
        )
        assert config.run_dir == "s3://bucket/runs/demo"

    def test_sqlite_state_is_refused_for_a_run_in_s3(self) -> None:
        with pytest.raises(ConfigError, match="output_root is in S3 but state.backend is 'sqlite'"):
            load_config({**copy.deepcopy(MINIMAL), "output_root": "s3://bucket/runs"})

    def test_given_values_win_over_defaults(self, make_config) -> None:
        config = load_config(make_config(batching={"max_items": 7, "max_bytes": 1000}))
        assert config.batching.max_items == 7
        assert config.batching.max_bytes == 1000
        assert config.merge.fan_in == 3
        assert config.merge.mode == "reduce"


class TestLoadConfigErrors:
    def test_negative_max_items_names_the_key(self, make_config) -> None:
        message = _error(make_config(batching={"max_items": -1}))
        assert "batching/max_items" in message
        assert "minimum of 1" in message

    def test_wrong_type_names_the_key(self, make_config) -> None:
        message = _error(make_config(batching={"max_items": "ten"}))
        assert "batching/max_items" in message
        assert "integer" in message

    def test_unknown_top_level_key_is_named(self, make_config) -> None:
        message = _error(make_config(batchin={"max_items": 5}))
        assert "'batchin' was unexpected" in message

    def test_unknown_nested_key_is_named(self, make_config) -> None:
        message = _error(make_config(merge={"fanin": 4}))
        assert "'merge'" in message
        assert "'fanin' was unexpected" in message

    def test_bad_job_function_pattern(self, make_config) -> None:
        message = _error(make_config(job={"function": "no_colon_here"}))
        assert "job/function" in message
        assert "no_colon_here" in message

    def test_unknown_format(self, make_config) -> None:
        message = _error(make_config(input={"format": "xml"}))
        assert "input/format" in message
        assert "'xml'" in message

    def test_fan_in_below_two(self, make_config) -> None:
        assert "merge/fan_in" in _error(make_config(merge={"fan_in": 1}))

    def test_tolerance_above_one(self, make_config) -> None:
        message = _error(make_config(tolerance={"max_dead_letter_fraction": 1.5}))
        assert "tolerance/max_dead_letter_fraction" in message

    @pytest.mark.parametrize("key", ["run_id", "input", "job"])
    def test_missing_required_key(self, key: str) -> None:
        raw = copy.deepcopy(MINIMAL)
        del raw[key]
        assert f"required key '{key}' is missing" in _error(raw)

    def test_missing_nested_required_key_is_named_with_its_parent(self) -> None:
        raw = copy.deepcopy(MINIMAL)
        del raw["input"]["format"]
        assert "required key 'input.format' is missing" in _error(raw)

    @pytest.mark.parametrize("value", [1e30, 10.0, True])
    def test_an_integer_key_refuses_floats_and_booleans(self, make_config, value) -> None:
        # JSON Schema counts 1e30 and 10.0 as integers; the partition then failed with a
        # TypeError (issue 11).
        message = _error(make_config(batching={"max_items": value}))
        assert "batching/max_items" in message
        assert "is not of type 'integer'" in message

    def test_max_items_has_a_ceiling(self, make_config) -> None:
        assert "batching/max_items" in _error(make_config(batching={"max_items": 10**30}))

    def test_kill_batches_keys_must_be_batch_numbers(self, make_config) -> None:
        message = _error(make_config(faults={"kill_batches": {"abc": 5}}))
        assert "faults/kill_batches" in message
        assert "'abc'" in message

    def test_kill_batches_with_number_keys_is_fine(self, make_config) -> None:
        config = load_config(make_config(faults={"kill_batches": {"2": 500, 3: 1}}))
        assert config.faults.kill_batches == {2: 500, 3: 1}

    def test_output_root_that_is_a_file(self, make_config, tmp_path) -> None:
        target = tmp_path / "a-file"
        target.write_text("x")
        message = _error(make_config(output_root=str(target)))
        assert f"output_root {str(target)!r} is a file" in message

    def test_output_root_under_a_file(self, make_config, tmp_path) -> None:
        target = tmp_path / "a-file"
        target.write_text("x")
        message = _error(make_config(output_root=str(target / "runs")))
        assert f"lies under {str(target)!r}, which is a file" in message

    def test_output_root_that_does_not_exist_yet_is_fine(self, make_config, tmp_path) -> None:
        config = load_config(make_config(output_root=str(tmp_path / "new" / "runs")))
        assert config.output_root.endswith("new/runs")

    def test_bad_run_id(self, make_config) -> None:
        assert "run_id" in _error(make_config(run_id="has space"))

    def test_reduce_without_combine(self, make_config) -> None:
        raw = make_config(job={"combine": None}, merge={"mode": "reduce"})
        with pytest.raises(ConfigError, match=r"merge\.mode is 'reduce' but job\.combine"):
            load_config(raw)

    def test_dynamodb_without_table(self, make_config) -> None:
        with pytest.raises(ConfigError, match=r"state\.backend is 'dynamodb' but state\.table"):
            load_config(make_config(state={"backend": "dynamodb"}))

    def test_dynamodb_with_table_is_fine(self, make_config) -> None:
        config = load_config(make_config(state={"backend": "dynamodb", "table": "runs"}))
        assert config.state.table == "runs"

    def test_s3_keys_needs_s3_uri(self, make_config) -> None:
        with pytest.raises(ConfigError, match="s3-keys' needs an s3://"):
            load_config(make_config(input={"format": "s3-keys", "uri": "/local/dir"}))

    def test_config_error_is_an_orchestrator_error(self, make_config) -> None:
        with pytest.raises(OrchestratorError):
            load_config(make_config(merge={"mode": "sideways"}))


class TestChunksKey:
    """``chunks:``, and its deprecated name ``checkpoint:``."""

    def test_default_is_off(self) -> None:
        config = load_config(copy.deepcopy(MINIMAL))
        assert config.chunks == ChunksSpec(every_items=None, every_seconds=None)
        assert config.raw["chunks"] == {"every_items": None, "every_seconds": None}

    def test_given_values(self) -> None:
        config = load_config({**copy.deepcopy(MINIMAL), "chunks": {"every_items": 20}})
        assert config.chunks == ChunksSpec(every_items=20)

    def test_the_old_key_still_works_and_warns_once(self, caplog) -> None:
        new = load_config({**copy.deepcopy(MINIMAL), "chunks": {"every_seconds": 30}})
        with caplog.at_level(logging.WARNING, logger="orchestrator_ext.config"):
            old = load_config({**copy.deepcopy(MINIMAL), "checkpoint": {"every_seconds": 30}})
        assert old == new and old.sha256 == new.sha256
        assert "checkpoint" not in old.raw
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert warnings == [
            "config key 'checkpoint' is deprecated: call it 'chunks' (same settings)"
        ]

    def test_errors_under_the_old_key_name_it(self, make_config) -> None:
        assert "'checkpoint/every_items'" in _error(make_config(checkpoint={"every_items": 0}))
        assert "'checkpoint'" in _error(make_config(checkpoint={"every_item": 5}))

    def test_both_keys_are_an_error_naming_both(self) -> None:
        raw = {**copy.deepcopy(MINIMAL), "chunks": {"every_items": 5}, "checkpoint": {}}
        assert _error(raw) == (
            "invalid config: both 'chunks' and 'checkpoint' are given; 'checkpoint' is the "
            "deprecated name of 'chunks': keep only 'chunks'"
        )

    def test_the_snakefiles_config_keeps_one_sha256(self) -> None:
        # load_run_config updates Snakemake's config in place: the old key stays beside the
        # new one there, and a job building its RunConfig from it ignores the old one.
        from orchestrator_ext.workflow import load_run_config

        config = {**copy.deepcopy(MINIMAL), "checkpoint": {"every_items": 5}}
        run = load_run_config(config)
        assert "checkpoint" in config and config["chunks"] == run.raw["chunks"]
        again = run_config_from(config)
        assert again == run and again.sha256 == run.sha256 and "checkpoint" not in again.raw


class TestValidateConfig:
    def test_returns_copy_with_defaults(self) -> None:
        raw = copy.deepcopy(MINIMAL)
        data = validate_config(raw)
        assert data is not raw
        assert data["retry"] == {"max_attempts": 5, "initial_delay_s": 0.5, "max_delay_s": 20}
        assert "retry" not in raw


class TestRunConfigFrom:
    """Job processes build their RunConfig from the coordinator's validated config."""

    def test_same_config_as_load_config(self) -> None:
        loaded = load_config(copy.deepcopy(MINIMAL))
        again = run_config_from(copy.deepcopy(loaded.raw))
        assert again == loaded and again.sha256 == loaded.sha256

    def test_does_not_validate_again(self) -> None:
        data = validate_config(copy.deepcopy(MINIMAL))
        data["merge"]["fan_in"] = 1  # the schema's minimum is 2: load_config would refuse
        assert run_config_from(data).merge.fan_in == 1
        with pytest.raises(ConfigError, match="merge/fan_in"):
            load_config(data)

    def test_load_run_config_fills_snakemakes_config_in_place(self) -> None:
        from orchestrator_ext.workflow import load_run_config

        config = copy.deepcopy(MINIMAL)  # the Snakefile's ``config``
        run = load_run_config(config)
        assert config == run.raw and config["retry"]["max_attempts"] == 5
        assert run_config_from(config) == run

    def test_schema_parsed_as_pyyaml_would(self) -> None:
        path = Path(__file__).parents[1] / "orchestrator_ext" / "schemas" / "config.schema.yaml"
        assert read_schema(path) == yaml.safe_load(path.read_text())


class TestReadConfigFile:
    def test_reads_yaml_mapping(self, tmp_path: Path) -> None:
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(MINIMAL))
        assert read_config_file(path) == MINIMAL

    def test_missing_file(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
            read_config_file(tmp_path / "nope.yaml")

    def test_invalid_yaml_is_one_line(self, tmp_path: Path) -> None:
        path = tmp_path / "bad.yaml"
        path.write_text("run_id: [unclosed\njob: {\n")
        with pytest.raises(ConfigError, match="is not valid YAML") as info:
            read_config_file(path)
        assert "\n" not in str(info.value)
        assert "bad.yaml" in str(info.value)

    @pytest.mark.parametrize(
        ("text", "kind"), [("- a\n- b\n", "list"), ("just text\n", "str"), ("", "NoneType")]
    )
    def test_non_mapping(self, tmp_path: Path, text: str, kind: str) -> None:
        path = tmp_path / "c.yaml"
        path.write_text(text)
        with pytest.raises(ConfigError, match=f"must hold a mapping of keys, got {kind}"):
            read_config_file(path)

    def test_load_config_file_validates(self, tmp_path: Path) -> None:
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump({**MINIMAL, "merge": {"fan_in": 0}}))
        with pytest.raises(ConfigError, match="merge/fan_in"):
            load_config_file(path)


class TestConfigSha256:
    def test_stable_across_key_order_and_calls(self) -> None:
        a = {"b": 1, "a": {"y": 2, "x": [1, 2]}}
        b = {"a": {"x": [1, 2], "y": 2}, "b": 1}
        assert config_sha256(a) == config_sha256(b)
        assert len(config_sha256(a)) == 64

    def test_changes_with_any_value(self) -> None:
        base = load_config(copy.deepcopy(MINIMAL)).sha256
        changed = load_config({**copy.deepcopy(MINIMAL), "run_id": "other"}).sha256
        nested = load_config({**copy.deepcopy(MINIMAL), "batching": {"max_items": 9}}).sha256
        assert len({base, changed, nested}) == 3

    def test_explicit_default_equals_implicit_default(self) -> None:
        implicit = load_config(copy.deepcopy(MINIMAL))
        explicit = load_config({**copy.deepcopy(MINIMAL), "merge": {"fan_in": 16}})
        assert implicit.sha256 == explicit.sha256


class TestResolvedConfig:
    def test_round_trip_keeps_config_and_sha256(self, make_config) -> None:
        from orchestrator_ext.resolved_config import publish_resolved_config, read_resolved_config

        config = load_config(make_config(job={"params": {"factor": 3}}))
        path = Path(publish_resolved_config(config))
        assert path == Path(config.run_dir) / "config.json"
        document = json.loads(path.read_text())
        assert document["sha256"] == config.sha256
        assert document["config"] == config.raw
        again = read_resolved_config(config.run_dir)
        assert again == config
        assert again.raw == config.raw

    def test_a_tampered_file_is_refused(self, make_config) -> None:
        from orchestrator_ext.resolved_config import publish_resolved_config, read_resolved_config

        config = load_config(make_config())
        path = Path(publish_resolved_config(config))
        document = json.loads(path.read_text())
        document["config"]["batching"]["max_items"] = 7
        path.write_text(json.dumps(document))
        with pytest.raises(ConfigError, match="was changed after the run wrote it"):
            read_resolved_config(config.run_dir)

    def test_not_a_run_folder(self, tmp_path) -> None:
        from orchestrator_ext.resolved_config import read_resolved_config

        with pytest.raises(ConfigError, match="is not a run folder"):
            read_resolved_config(str(tmp_path))


class TestOutputContractConfig:
    """``job.output_schema`` and ``job.rows``: the run's output contract."""

    def test_defaults(self) -> None:
        job = load_config(copy.deepcopy(MINIMAL)).job
        assert (job.output_schema, job.rows) == (None, "any")

    def test_dtype_names_are_parsed_to_their_canonical_spelling(self) -> None:
        raw = copy.deepcopy(MINIMAL)
        raw["job"]["output_schema"] = {
            "id": "Int64", "v": "Utf8", "t": "Datetime(us)", "tz": "Datetime(ns, UTC)",
            "tags": " List( String ) ", "d": "Decimal(10, 2)", "ok": "Boolean", "day": "Date",
        }  # fmt: skip
        raw["job"]["rows"] = "per_item"
        job = load_config(raw).job
        assert job.rows == "per_item"
        assert job.output_schema == {
            "id": "Int64", "v": "String", "t": "Datetime", "tz": "Datetime(ns, UTC)",
            "tags": "List(String)", "d": "Decimal(10, 2)", "ok": "Boolean", "day": "Date",
        }  # fmt: skip
        assert list(job.output_schema) == list(raw["job"]["output_schema"]), "declared order"
        assert run_config_from(load_config(raw).raw) == load_config(raw)

    @pytest.mark.parametrize(
        "name",
        ["Int64", "UInt8", "Float32", "String", "Boolean", "Date", "Time", "Binary", "Null",
         "Datetime", "Datetime(ms)", "Datetime(us, Europe/Berlin)", "Duration", "Duration(ns)",
         "Decimal(38, 4)", "List(String)", "List(List(Datetime(ns)))"],
    )  # fmt: skip
    def test_the_polars_dtype_of_a_name_has_that_name(self, name: str) -> None:
        from orchestrator_ext.dtypes import canonical_dtype, polars_dtype
        from orchestrator_ext.output_schema import dtype_name

        assert dtype_name(polars_dtype(name)) == canonical_dtype(name) == name

    @pytest.mark.parametrize("bad", ["Int65", "int64", "List()", "List(String", "Datetime(s)",
                                     "Struct", "Decimal(10)"])  # fmt: skip
    def test_a_bad_dtype_name_is_one_line(self, bad: str) -> None:
        raw = copy.deepcopy(MINIMAL)
        raw["job"]["output_schema"] = {"id": "Int64", "v": bad}
        message = _error(raw)
        assert message.startswith("invalid config at 'job/output_schema/v': ")
        assert repr(bad) in message and "expected a polars dtype name: Boolean, Int8," in message

    def test_an_empty_schema_is_refused(self) -> None:
        raw = copy.deepcopy(MINIMAL)
        raw["job"]["output_schema"] = {}
        assert _error(raw).startswith(
            "invalid config at 'job/output_schema': {} should be non-empty"
        )

    def test_an_unknown_rows_value_is_refused(self) -> None:
        raw = copy.deepcopy(MINIMAL)
        raw["job"]["rows"] = "per_row"
        assert _error(raw) == (
            "invalid config at 'job/rows': 'per_row' is not one of ['any', 'per_item']"
        )

    def test_per_item_needs_the_id_column_in_a_declared_schema(self) -> None:
        raw = copy.deepcopy(MINIMAL)
        raw["job"].update(rows="per_item", output_schema={"v": "Int64"})
        assert _error(raw) == (
            "invalid config: job.rows is 'per_item' but job.output_schema has no column 'id' "
            "(input.id_column): every output row carries its item's id"
        )


class TestWorkers:
    def test_defaults_one_worker_process_pool(self) -> None:
        job = load_config(copy.deepcopy(MINIMAL)).job
        assert (job.workers, job.pool, job.cores) == (1, "process", 1)

    @pytest.mark.parametrize(
        ("job", "cores"),
        [
            ({"workers": 4}, 4),
            ({"workers": 4, "mode": "item", "pool": "process"}, 4),
            ({"workers": 32, "mode": "item", "pool": "thread"}, 1),
            ({"workers": 3, "mode": "batch", "pool": "thread"}, 3),
        ],
    )
    def test_cores_reserved(self, job: dict[str, Any], cores: int) -> None:
        raw = copy.deepcopy(MINIMAL)
        raw["job"].update(job)
        assert load_config(raw).job.cores == cores

    @pytest.mark.parametrize(
        ("job", "message"),
        [({"workers": 0}, "job.workers"), ({"pool": "fiber"}, "job.pool"),
         ({"workers": 1.5}, "job.workers")],
    )  # fmt: skip
    def test_bad_values_are_one_line(self, job: dict[str, Any], message: str) -> None:
        raw = copy.deepcopy(MINIMAL)
        raw["job"].update(job)
        with pytest.raises(ConfigError, match=message):
            load_config(raw)


class TestBatchingTargetSeconds:
    """``batching.target_seconds`` and how it combines with ``max_items``."""

    @staticmethod
    def _load(batching: dict[str, Any], **extra: Any) -> RunConfig:
        return load_config({**copy.deepcopy(MINIMAL), "batching": batching, **extra})

    def test_unset_max_items_is_10000_in_the_resolved_config(self) -> None:
        config = load_config(copy.deepcopy(MINIMAL))
        assert config.batching == BatchingSpec(max_items=10000)
        # As before target_seconds existed: the checksum of an existing run's config holds.
        assert config.raw["batching"] == {
            "max_items": 10000, "max_bytes": None, "weight_column": None,
        }  # fmt: skip

    def test_explicit_null_max_items_is_the_default(self) -> None:
        assert self._load({"max_items": None}).sha256 == load_config(copy.deepcopy(MINIMAL)).sha256

    def test_target_alone_is_not_capped_by_the_default(self) -> None:
        config = self._load({"target_seconds": 300})
        assert config.batching.target_seconds == 300
        assert config.batching.max_items == MAX_ITEMS_LIMIT
        assert config.raw["batching"]["max_items"] is None  # no bound but the time-derived size

    def test_an_explicit_max_items_stays_the_bound(self) -> None:
        config = self._load({"target_seconds": 300, "max_items": 5000, "max_bytes": 10**6})
        assert config.batching == BatchingSpec(max_items=5000, max_bytes=10**6, target_seconds=300)

    def test_the_resolved_config_loads_to_the_same_run(self) -> None:
        config = self._load({"target_seconds": 12.5})
        assert load_config(copy.deepcopy(config.raw)) == config
        assert run_config_from(copy.deepcopy(config.raw)) == config

    def test_with_weight_column_is_refused(self) -> None:
        message = _error({**copy.deepcopy(MINIMAL),
                          "batching": {"target_seconds": 60, "weight_column": "w"}})  # fmt: skip
        assert message.startswith(
            "invalid config: batching.target_seconds and batching.weight_column cannot be combined"
        )

    def test_longer_than_a_jobs_wall_time_is_refused(self) -> None:
        message = _error({**copy.deepcopy(MINIMAL), "batching": {"target_seconds": 3601}})
        assert "longer than a batch job may run (resources.runtime: 60 minutes)" in message
        config = self._load({"target_seconds": 3601}, resources={"runtime": 120})
        assert config.batching.target_seconds == 3601

    @pytest.mark.parametrize(
        ("value", "problem"),
        [(0, "less than or equal to the minimum of 0"), (-5, "less than or equal"),
         ("5m", "is not of type 'number', 'null'"), (True, "is not of type"),
         (float("nan"), "is not a number of seconds"), (float("inf"), "is not a number")],
    )  # fmt: skip
    def test_bad_values_name_the_key(self, value: Any, problem: str) -> None:
        message = _error({**copy.deepcopy(MINIMAL), "batching": {"target_seconds": value}})
        assert "batching/target_seconds" in message and problem in message
