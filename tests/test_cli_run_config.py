"""Unit tests for orchestrator_ext.cli.run_config: which run a command line names."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator_ext.cli.run_config import load_cli_config, open_run_store
from orchestrator_ext.errors import OrchestratorError


def _args(**values: Any) -> argparse.Namespace:
    return argparse.Namespace(**{"run": None, "configfile": None, "config": None, **values})


class TestLoadCliConfig:
    def test_configfiles_layer_in_order_and_overrides_win(
        self, tmp_path: Path, make_config: Callable[..., dict[str, Any]]
    ) -> None:
        base = tmp_path / "base.yaml"
        base.write_text(yaml.safe_dump(make_config(run_id="a", batching={"max_items": 7})))
        extra = tmp_path / "extra.yaml"
        extra.write_text(yaml.safe_dump({"run_id": "b"}))
        assert load_cli_config(_args(configfile=[str(base), str(extra)])).run_id == "b"
        config = load_cli_config(_args(configfile=[str(base), str(extra)], config=["run_id=c"]))
        assert config.run_id == "c"
        assert config.batching.max_items == 7  # kept from the first file

    def test_folder_and_configfile_are_refused(self) -> None:
        with pytest.raises(OrchestratorError, match="either by its folder or by --configfile"):
            load_cli_config(_args(run="results/r", configfile=["c.yaml"]))

    def test_no_run_outside_a_checkout_says_how_to_name_one(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.chdir(tmp_path)  # a user's own folder: no config/config.yaml
        with pytest.raises(OrchestratorError, match=r"folder \(e\.g\. results/RUN_ID\) or --conf"):
            load_cli_config(_args())


class TestOpenRunStore:
    def test_never_creates_a_store(
        self, tmp_path: Path, make_config: Callable[..., dict[str, Any]]
    ) -> None:
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump(make_config(run_id="r")))
        config = load_cli_config(_args(configfile=[str(path)]))
        with pytest.raises(OrchestratorError, match="no state store at"):
            open_run_store(config)
        assert not Path(config.run_dir, "state.sqlite").exists()
