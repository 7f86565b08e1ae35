"""Unit tests for orchestrator_ext.config."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from orchestrator_ext.config import (
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

    def test_missing_required_key(self) -> None:
        raw = copy.deepcopy(MINIMAL)
        del raw["job"]
        assert "'job' is a required property" in _error(raw)

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
