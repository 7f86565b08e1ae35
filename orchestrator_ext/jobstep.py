"""Running a package function as the body of a Snakemake job.

Scripts under ``scripts/`` call ``run_step``: it sends the job's log output to the rule's
log file, runs the function, and turns the package's own errors into one clear line and a
non-zero exit instead of a traceback. Unexpected errors keep their traceback in the log,
because that is a bug worth reading.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

from orchestrator_ext.errors import OrchestratorError, configure_error_rules

EXIT_FAILED = 1


def setup_logging(log_path: str | None) -> None:
    """Send stderr and the package's logging to ``log_path`` (appending)."""
    if log_path:
        sys.stderr = open(log_path, "a", buffering=1)  # noqa: SIM115 - lives for the job
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )


def run_step(
    log_path: str | None, fn: Callable[..., Any], raw_config: dict[str, Any], **kwargs: Any
) -> Any:
    """Run ``fn(config, store, **kwargs)`` as a job body.

    Validates the config, opens the run's state store, and on the package's own errors
    prints one line and exits non-zero instead of showing a traceback.
    """
    from orchestrator_ext.config import load_config
    from orchestrator_ext.state import open_state_store

    setup_logging(log_path)
    try:
        config = load_config(raw_config)
        rules = config.error_rules
        configure_error_rules(rules.transient, rules.resource, rules.permanent)
        store = open_state_store(config)
        try:
            return fn(config, store, **kwargs)
        finally:
            store.close()
    except OrchestratorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_FAILED)
