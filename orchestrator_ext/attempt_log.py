"""Every attempt of a task keeps its own log.

Snakemake removes a job's log before it runs the job (``Job.remove_existing_output``), so a
retry or a rerun erases what the attempt before it wrote, the traceback of its failure
among it. Once a job step knows its attempt number (``StateStore.attempt_scope``), its log
gets a second name, ``<name>.attempt-<N>.log``: a hard link, one file written once under
two names, the second of which outlives the next attempt's removal of the first. The rule's
own ``<name>.log`` is always the latest attempt's.
"""

from __future__ import annotations

import contextlib
import logging
import os

logger = logging.getLogger(__name__)


def path(log: str, attempt: int) -> str:
    """The name of attempt ``attempt``'s log beside the rule's ``log``."""
    return f"{log.removesuffix('.log')}.attempt-{attempt}.log"


def keep(log: str, attempt: int) -> None:
    """Give ``log`` its attempt's name too (``path``). A name left by an earlier plan's
    attempt of the same number is replaced. Where the file system has no hard links, the
    job goes on with its one log, which the next attempt replaces (a warning says so)."""
    own = path(log, attempt)
    with contextlib.suppress(FileNotFoundError):
        os.remove(own)
    try:
        os.link(log, own)
    except OSError as exc:
        logger.warning(
            "could not keep this attempt's log as %s (%s); the next attempt's log replaces "
            "%s", own, exc.strerror or exc, log,
        )  # fmt: skip


def of_attempt(log: str, attempt: int) -> str:
    """Attempt ``attempt``'s log: its own name if it has one, else the rule's ``log`` (an
    attempt killed before its job step began, or a file system without hard links)."""
    own = path(log, attempt)
    return own if os.path.exists(own) else log
