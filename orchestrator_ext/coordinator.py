"""One coordinator per run, and a dead coordinator never blocks the next one.

Snakemake's own directory lock records no owner, so after the coordinator is SIGKILLed the
next ``snakemake --rerun-incomplete`` may stop with a ``LockException`` until someone runs
``snakemake --unlock`` -- and unlocking blindly could let two coordinators run at once.
The profiles therefore set ``nolock: true`` and the workflow takes this lease instead
(``onstart``), released on success or error:

- the lease is a small JSON file ``.snakemake/orchestrator/<run_id>.coordinator.json`` in the
  working directory, created with ``O_EXCL`` and holding host, pid and start time;
- a lease whose process is gone (same host, pid not alive or not a snakemake process) is
  stale: the new coordinator takes over and says so;
- a live lease, or one held on another host, stops the new coordinator with one line saying
  who holds it and, for another host, how to break it (``orchestrator unlock``).
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from orchestrator_ext.errors import OrchestratorError
from orchestrator_ext.state import current_host

logger = logging.getLogger(__name__)

LEASE_DIR = Path(".snakemake") / "orchestrator"


class CoordinatorBusy(OrchestratorError):
    """Raised when another live coordinator holds the run's lease."""


def lease_path(run_id: str, workdir: str | os.PathLike[str] = ".") -> Path:
    """Where the run's coordinator lease lives."""
    return Path(workdir) / LEASE_DIR / f"{run_id}.coordinator.json"


def is_alive(pid: int) -> bool:
    """Whether ``pid`` is a running snakemake process on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True
    return b"snakemake" in cmdline


def read_lease(path: Path) -> dict[str, Any] | None:
    """The lease's content, or None if there is none (or it is unreadable)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def acquire(run_id: str, workdir: str | os.PathLike[str] = ".") -> dict[str, Any]:
    """Take the run's coordinator lease for this process.

    Returns:
        The lease written.

    Raises:
        CoordinatorBusy: a live coordinator (or one on another host) holds it.
    """
    path = lease_path(run_id, workdir)
    path.parent.mkdir(parents=True, exist_ok=True)
    mine = {
        "run_id": run_id,
        "host": current_host(),
        "pid": os.getpid(),
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            held = read_lease(path)
            if held is None:
                path.unlink(missing_ok=True)  # half-written by a coordinator that died
                continue
            _refuse_if_live(held, path)
            logger.warning(
                "previous coordinator of run %s (pid %s, started %s) is gone; taking over",
                run_id, held.get("pid"), held.get("started_at"),
            )  # fmt: skip
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as handle:
            json.dump(mine, handle)
        return mine
    raise CoordinatorBusy(f"could not take the coordinator lease {path}: it keeps changing")


def _refuse_if_live(held: dict[str, Any], path: Path) -> None:
    if held.get("pid") == os.getpid() and held.get("host") == current_host():
        return
    since = f"since {held.get('started_at')}"
    if held.get("host") != current_host():
        raise CoordinatorBusy(
            f"run {held.get('run_id')} is coordinated by snakemake pid {held.get('pid')} on "
            f"host {held.get('host')} {since}; if that process is gone, run "
            f"`orchestrator unlock --configfile F` (removes {path})"
        )
    if is_alive(int(held.get("pid", 0))):
        raise CoordinatorBusy(
            f"run {held.get('run_id')} is already coordinated by snakemake pid "
            f"{held.get('pid')} on this host {since}; wait for it or stop it"
        )


def release(run_id: str, workdir: str | os.PathLike[str] = ".") -> None:
    """Drop the lease if this process holds it."""
    path = lease_path(run_id, workdir)
    held = read_lease(path)
    if held and held.get("pid") == os.getpid() and held.get("host") == current_host():
        path.unlink(missing_ok=True)


def break_lease(run_id: str, workdir: str | os.PathLike[str] = ".") -> dict[str, Any] | None:
    """Remove the lease whoever holds it (``orchestrator unlock``); return what it held."""
    path = lease_path(run_id, workdir)
    held = read_lease(path)
    path.unlink(missing_ok=True)
    return held
