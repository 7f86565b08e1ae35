"""Bug 1: the run's config is exactly what the user wrote (plus the documented defaults)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from .conftest import (
    assert_frames_match,
    assert_refused,
    item_outputs,
    read_final,
    run_dir,
    run_orchestrator,
    run_snakemake,
    scores,
    sensor_readings,
    station_totals,
    write_config,
    write_leftover_default_config,
)

pytestmark = pytest.mark.workflow


def reduce_config(run_id: str = "stations") -> dict[str, Any]:
    """Per-station totals of readings.csv, as a researcher writes it: no finalize."""
    return {
        "run_id": run_id,
        "output_root": "out",
        "input": {"uri": "readings.csv", "format": "csv"},
        "batching": {"max_items": 40},
        "job": {"function": "mylab_jobs:partial", "combine": "mylab_jobs:combine"},
        "merge": {"mode": "reduce", "fan_in": 3},
    }


def scores_config(run_id: str) -> dict[str, Any]:
    """Every reading scaled by 3, in batch mode, merged by concatenation (the default)."""
    return {
        "run_id": run_id,
        "output_root": "out",
        "input": {"uri": "readings.csv", "format": "csv"},
        "batching": {"max_items": 40},
        "job": {"function": "mylab_jobs:score", "params": {"factor": 3}},
    }


#: Whether the working folder also holds an older default config/config.yaml.
LEFTOVER = pytest.mark.parametrize("leftover", [False, True], ids=["alone", "leftover-default"])


def write_readings(lab: Path, n: int = 240, seed: int = 11) -> pl.DataFrame:
    frame = sensor_readings(n, seed)
    frame.write_csv(lab / "readings.csv")
    return frame


def assert_all_succeeded(status: dict[str, Any], run_id: str) -> None:
    assert status["run_id"] == run_id
    assert status["tasks"] > 0
    assert status["by_status"].get("SUCCEEDED") == status["tasks"], status["by_status"]


@LEFTOVER
def test_reduce_without_finalize_equals_polars_query(lab: Path, leftover: bool) -> None:
    if leftover:
        write_leftover_default_config(lab)
    write_readings(lab)
    write_config(lab, reduce_config())

    run_snakemake(lab)

    expected = station_totals(pl.read_csv(lab / "readings.csv"))
    assert_frames_match(read_final(lab, "stations"), expected, by="station")


@LEFTOVER
def test_item_jobs_receive_only_the_params_the_user_wrote(lab: Path, leftover: bool) -> None:
    if leftover:
        write_leftover_default_config(lab)
    write_readings(lab, n=120, seed=12)
    params = {"unit": "hPa", "calibration": 2}
    write_config(
        lab,
        {
            "run_id": "itemwise",
            "output_root": "out",
            "input": {"uri": "readings.csv", "format": "csv"},
            "batching": {"max_items": 50},
            "job": {"function": "mylab_jobs:per_item", "mode": "item", "params": params},
        },
    )

    run_snakemake(lab)

    final = read_final(lab, "itemwise")
    assert set(final["params"].to_list()) == {json.dumps(params, sort_keys=True)}
    expected = item_outputs(pl.read_csv(lab / "readings.csv"), params)
    assert_frames_match(final, expected, by="id")


@LEFTOVER
@pytest.mark.parametrize("missing", ["run_id", "input", "job"])
def test_missing_required_key_is_refused(lab: Path, missing: str, leftover: bool) -> None:
    if leftover:
        write_leftover_default_config(lab)
    write_readings(lab, n=60)
    config = reduce_config("incomplete")
    del config[missing]
    write_config(lab, config)

    result = run_snakemake(lab, check=False)

    assert_refused(result, rf"(?i)^(?=.*\b{missing}\b).*\b(missing|required)\b")
    assert not (lab / "results").exists(), "wrote into the default output_root"
    assert not (lab / "out").exists(), "wrote a run folder for a refused config"


def test_configfiles_layer_in_order_and_config_overrides_them(lab: Path) -> None:
    write_readings(lab, n=150, seed=13)
    write_config(
        lab,
        {
            "run_id": "layer-a",
            "output_root": "out",
            "input": {"uri": "readings.csv", "format": "csv"},
            "batching": {"max_items": 60},
            "job": {"function": "mylab_jobs:score", "params": {"factor": 2}},
        },
        name="a.yaml",
    )
    write_config(lab, {"run_id": "layer-b", "job": {"params": {"factor": 5}}}, name="b.yaml")
    expected = scores(pl.read_csv(lab / "readings.csv"), 5)

    run_snakemake(lab, "a.yaml", "b.yaml")

    assert not run_dir(lab, "layer-a").exists(), "a.yaml's run_id won over b.yaml's"
    assert_frames_match(read_final(lab, "layer-b"), expected, by="id")
    status = run_orchestrator(lab, "status", "--configfile", "a.yaml", "b.yaml", "--json")
    assert_all_succeeded(status.json(), "layer-b")

    run_snakemake(lab, "a.yaml", "b.yaml", config=["run_id=try2"])

    assert_frames_match(read_final(lab, "try2"), expected, by="id")


def test_status_by_configfile_and_by_run_folder_agree(lab: Path) -> None:
    write_readings(lab, n=120)
    write_config(lab, scores_config("watched"))
    run_snakemake(lab)
    assert_frames_match(
        read_final(lab, "watched"), scores(pl.read_csv(lab / "readings.csv"), 3), by="id"
    )

    by_config = run_orchestrator(lab, "status", "--configfile", "my-run.yaml", "--json").json()
    by_folder = run_orchestrator(lab, "status", "out/watched", "--json").json()

    assert_all_succeeded(by_config, "watched")
    assert_all_succeeded(by_folder, "watched")
    assert by_folder["tasks"] == by_config["tasks"]


def test_run_folder_records_the_validated_config_and_its_sha256(lab: Path) -> None:
    write_readings(lab, n=120)
    write_config(lab, scores_config("recorded"))
    run_snakemake(lab)

    document = json.loads((run_dir(lab, "recorded") / "config.json").read_text())
    assert set(document) == {"sha256", "config"}
    config = document["config"]
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"))
    assert document["sha256"] == hashlib.sha256(canonical.encode()).hexdigest()
    assert config["run_id"] == "recorded"
    # What the user wrote is there unchanged ...
    assert config["output_root"] == "out"
    assert config["input"]["uri"] == "readings.csv" and config["input"]["format"] == "csv"
    assert config["batching"]["max_items"] == 40
    assert config["job"]["function"] == "mylab_jobs:score"
    assert config["job"]["params"] == {"factor": 3}
    # ... with the documented defaults (config/README.md) and nothing else.
    assert config["input"]["id_column"] == "id"
    assert config["job"]["mode"] == "batch"
    assert config["job"]["combine"] is None and config["job"]["finalize"] is None
    assert config["merge"] == {"fan_in": 16, "mode": "concat"}
    assert config["tolerance"] == {"max_dead_letter_fraction": 0.0}
    assert config["retry"]["max_attempts"] == 5
    assert config["state"]["backend"] == "sqlite"
    assert config["faults"]["enabled"] is False
    manifest = json.loads((run_dir(lab, "recorded") / "manifest.json").read_text())
    assert manifest["config_sha256"] == document["sha256"]


# "2024-01-05" is a string to Snakemake (its --config parser reads YAML without type
# resolution after int and float fail), so the run lives in out/2024-01-05.
@pytest.mark.parametrize("run_id", ["try2", "2024-01-05"])
def test_status_config_override_addresses_that_run(lab: Path, run_id: str) -> None:
    write_readings(lab, n=80)
    write_config(lab, scores_config("base"))
    run_snakemake(lab, config=[f"run_id={run_id}"])
    assert (run_dir(lab, run_id) / "final" / "result.parquet").is_file()
    assert not run_dir(lab, "base").exists()

    status = run_orchestrator(
        lab, "status", "--configfile", "my-run.yaml", "--config", f"run_id={run_id}", "--json"
    ).json()

    assert_all_succeeded(status, run_id)
