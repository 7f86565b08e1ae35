"""The ``orchestrator`` command: watch and operate a run.

Every subcommand reads the run's config: from the run's folder (``orchestrator status
results/my-run``: the ``config.json`` the run wrote), or from ``--configfile`` files with
``--config KEY=VALUE`` overrides resolved as Snakemake resolves them (default
``config/config.yaml``, the shipped example) and prints for people by default or
JSON with ``--json``. The package's own errors print one line and exit 2; nothing here
prints a traceback for a user error.

Where each part lives:

- ``main`` (here): runs the parsed command and turns errors into exit codes
  (``exit_codes``).
- ``parser``: ``build_parser``, every subcommand's options and help, the argument types.
- ``run_config``: which run a command line names: the ``--config`` grammar
  (``parse_overrides``), ``load_cli_config`` and ``open_run_store``.
- ``inspect``: the bodies of ``status``, ``errors``, ``audit``, ``report``, ``cost`` and
  ``plan``.
- ``operate``: the bodies of ``redrive``, ``unlock``, ``init``, ``manifest verify``,
  ``iam-policy`` and ``example-data``.
- Renderers sit beside their data: ``status.render_status``, ``cost.render_cost``,
  ``history_view`` (failed tasks, dead letters, audit lines), ``redrive.render_redrive``,
  ``verify.render_verified``, ``coordinator.render_unlock``, ``sizing.render_plan_preview``,
  ``report.write.render_report_written``; ``init``, which has no data module, renders in
  ``operate``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from orchestrator_ext.cli.exit_codes import EXIT_BROKEN_PIPE, EXIT_USER_ERROR, EXIT_VERIFY_FAILED
from orchestrator_ext.cli.parser import build_parser
from orchestrator_ext.cli.run_config import load_cli_config, parse_overrides
from orchestrator_ext.errors import OrchestratorError

__all__ = [
    "EXIT_BROKEN_PIPE",
    "EXIT_USER_ERROR",
    "EXIT_VERIFY_FAILED",
    "build_parser",
    "load_cli_config",
    "main",
    "parse_overrides",
]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``orchestrator`` console script.

    Returns:
        The exit code: 0, ``EXIT_VERIFY_FAILED``, ``EXIT_USER_ERROR`` (one line on stderr)
        or ``EXIT_BROKEN_PIPE``.
    """
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except OrchestratorError as exc:
        print(f"orchestrator: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except BrokenPipeError:
        # The reader went away (`orchestrator audit | head`): stop quietly, as Unix tools
        # do, and keep Python from reporting the pipe again when it flushes at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
