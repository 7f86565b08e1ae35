"""Writing a run's dashboard file: open the run's state store if the caller has none,
collect the data, render the page and publish it atomically."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator_ext.errors import OrchestratorError
from orchestrator_ext.layout import RunLayout
from orchestrator_ext.report.data import collect_report_data
from orchestrator_ext.report.render import render_html
from orchestrator_ext.storage import atomic_path

if TYPE_CHECKING:
    from collections.abc import Mapping

    from orchestrator_ext.config import RunConfig
    from orchestrator_ext.state import StateStore

logger = logging.getLogger(__name__)


def write_report_html(
    config: RunConfig | Mapping[str, Any],
    path: str | os.PathLike[str],
    store: StateStore | None = None,
) -> Path:
    """Write the dashboard of a run to ``path`` (atomically) and return the path.

    Args:
        config: the run config, validated or raw (as a Snakemake script gets it).
        path: the HTML file to write.
        store: an open state store; if None, the run's store is opened (and closed) here,
            and a store that cannot be opened only leaves the task sections empty.

    Returns:
        ``path``.

    Raises:
        ConfigError: a raw config that does not validate.
    """
    from orchestrator_ext.config import RunConfig, load_config

    run_config = config if isinstance(config, RunConfig) else load_config(dict(config))
    own_store = None if store is not None else _open_existing_store(run_config)
    try:
        data = collect_report_data(run_config, store or own_store)
    finally:
        if own_store is not None:
            own_store.close()
    page = render_html(data)
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    logger.info("wrote the dashboard of run %s to %s", run_config.run_id, path)
    return Path(path)


def _open_existing_store(config: RunConfig) -> StateStore | None:
    """The run's state store, or None (logged) when it cannot be opened.

    A SQLite store is opened with ``create=False``: a report must not create the database
    of a run that never started.
    """
    from orchestrator_ext.state import open_state_store

    try:
        if config.state.backend == "sqlite":
            from orchestrator_ext.state.sqlite import SqliteStateStore

            return SqliteStateStore(RunLayout(config.run_dir).state_db, config.run_id, create=False)
        return open_state_store(config)
    except OrchestratorError as exc:
        logger.warning("report without task state: %s", exc)
        return None


def write_dashboard(config: RunConfig, store: StateStore, path: str) -> Path:
    """``write_report_html`` in the shape ``jobstep.run_step`` calls: for a workflow rule.

    Args:
        config: the run's validated config.
        store: the run's open state store.
        path: the HTML file to write.

    Returns:
        ``path``.
    """
    return write_report_html(config, path, store=store)


def render_report_written(path: str, size: int) -> str:
    """Where the HTML dashboard went and how big it is."""
    return f"wrote {path} ({size / 1e6:.1f} MB): open it in a browser; it needs no network"
