"""Which run a command line names: its config, resolved as Snakemake resolves it, and its store.

Every subcommand names its run either by the run's folder (``RUN_DIR``, local or ``s3://``:
the ``config.json`` the run wrote) or by ``--configfile`` files (default
``config/config.yaml``, the shipped example), and both take ``--config KEY=VALUE``
overrides in the grammar of ``snakemake --config``.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import yaml

from orchestrator_ext.config import RunConfig, load_config, read_config_file
from orchestrator_ext.errors import OrchestratorError

if TYPE_CHECKING:
    from orchestrator_ext.state import StateStore

#: The config a command reads when given neither ``RUN_DIR`` nor ``--configfile``.
EXAMPLE_CONFIG = "config/config.yaml"

# Snakemake's --config grammar (snakemake.cli.parse_config), restated because importing
# snakemake.cli costs 1.5 s; tests/test_cli.py checks both agree on every form.
_CONFIG_KEY = re.compile(r"[a-zA-Z_][\w-]*\w$")


def _parse_value(text: str) -> Any:
    if text == "":
        return None
    for parse in (int, float, _parse_bool, _parse_yaml):
        try:
            value = parse(text)
        except Exception:  # noqa: S112 - each parser is tried in turn, as Snakemake does
            continue
        if not callable(value):
            return value
    return text


def _parse_bool(text: str) -> bool:
    if text in ("True", "False"):
        return text == "True"
    raise ValueError(text)


def _parse_yaml(text: str) -> Any:
    # BaseLoader, as Snakemake: nested scalars stay strings ({n: 5} gives {"n": "5"}).
    return yaml.load(text, Loader=yaml.BaseLoader)  # noqa: S506 - no object construction


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``--config`` entries, parsed exactly as ``snakemake --config`` parses them.

    ``["run_id=x", "batching={max_items: 5}"]`` -> ``{"run_id": "x", "batching":
    {"max_items": "5"}}``. Keys are top-level names; nested keys are given as a YAML
    mapping value. Later entries update earlier ones recursively.

    Raises:
        OrchestratorError: an entry is not ``KEY=VALUE`` or its key is not a name.
    """
    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise OrchestratorError(f"--config expects KEY=VALUE, got {pair!r}")
        if not _CONFIG_KEY.match(key):
            raise OrchestratorError(
                f"--config {pair!r}: the key must be a name (nested keys go in a YAML value, "
                "e.g. 'batching={max_items: 500}'), as with snakemake"
            )
        _merge(overrides, {key: _parse_value(value.strip("'\""))})
    return overrides


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def load_cli_config(args: argparse.Namespace) -> RunConfig:
    """The run named on the command line, as Snakemake resolves it.

    A run folder (``RUN_DIR``, local or ``s3://``) is read from its ``config.json``, the
    config its coordinator used. Otherwise the ``--configfile`` files are layered in order
    and ``--config`` over them; with neither, the shipped example (as for ``snakemake``).

    Raises:
        OrchestratorError: both a folder and ``--configfile`` are given, a file or folder
            cannot be read, or the resulting config is invalid.
    """
    overrides = parse_overrides(args.config or [])
    if getattr(args, "run", None):
        if args.configfile:
            raise OrchestratorError("name the run either by its folder or by --configfile")
        from orchestrator_ext.resolved_config import read_resolved_config

        run = read_resolved_config(args.run)
        return load_config(_merge(run.raw, overrides)) if overrides else run
    if not args.configfile and not os.path.exists(EXAMPLE_CONFIG):
        raise OrchestratorError(
            f"no run named, and no {EXAMPLE_CONFIG} here to default to: give the run's "
            "folder (e.g. results/RUN_ID) or --configfile FILE"
        )
    raw: dict[str, Any] = {}
    for path in args.configfile or [EXAMPLE_CONFIG]:
        _merge(raw, read_config_file(path))
    return load_config(_merge(raw, overrides))


def open_run_store(config: RunConfig) -> StateStore:
    """The run's existing state store; a command never creates one.

    Raises:
        OrchestratorError: the run has no state store (it has not started, or ran elsewhere).
    """
    from orchestrator_ext.state import open_state_store
    from orchestrator_ext.state.sqlite import SqliteStateStore

    if config.state.backend == "sqlite":
        return SqliteStateStore(f"{config.run_dir}/state.sqlite", config.run_id, create=False)
    return open_state_store(config)
