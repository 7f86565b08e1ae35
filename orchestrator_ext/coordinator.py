"""One coordinator per run, and a dead coordinator never blocks the next one.

Snakemake's own directory lock records no owner, so after the coordinator is SIGKILLed the
next ``snakemake --rerun-incomplete`` may stop with a ``LockException`` until someone runs
``snakemake --unlock`` -- and unlocking blindly could let two coordinators run at once.
Snakemake's lock also lives in the *working directory* (``.snakemake/``), so it never kept
two coordinators started from two directories off one run folder. The profiles therefore
set ``nolock: true`` and the workflow takes this lease instead (``onstart``), released on
success or error. The lease lives *with the run*, so it is the same whichever working
directory or host a coordinator starts from:

- local runs (``output_root`` a folder): the file ``{run_dir}/.coordinator.json``. It is
  created whole and atomically (a temporary file hard-linked into place, which fails if
  the lease exists; ``O_EXCL`` where hard links are not supported), so of two racing
  coordinators exactly one wins. Taking over a stale lease and breaking one happen under an
  ``flock`` of ``{run_dir}/.coordinator.lock`` and only if the lease is still the one read.
- runs in S3 (``state.backend: dynamodb``): a row of the state table with sort key
  ``~coordinator``, outside the task rows' and the audit log's key ranges, so it is never
  listed as a task. It is taken with a conditional put (no holder yet), taken over with a
  put conditional on the old holder's ``token``, and released with an update conditional
  on this holder (the row stays, without a holder: only PutItem, UpdateItem and GetItem
  are used, as the IAM policy allows).

Either way the lease records host, pid, working directory, start time (UTC) and a random
token. A lease whose process is gone (same host, pid not alive or not a snakemake process)
is stale: the new coordinator takes over and says so. A live lease, or one held on another
host, stops the new coordinator with one line naming the holder and, for another host, how
to break it (``orchestrator unlock``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

from orchestrator_ext.errors import OrchestratorError
from orchestrator_ext.location import is_remote
from orchestrator_ext.state import current_host

if TYPE_CHECKING:
    from orchestrator_ext.config import RunConfig
    from orchestrator_ext.state.dynamodb import DynamoStateStore

    #: What the lease functions accept: a run's config, a local run folder, or a backend.
    LeaseTarget: TypeAlias = "RunConfig | str | os.PathLike[str] | LeaseBackend"

logger = logging.getLogger(__name__)

LEASE_FILE = ".coordinator.json"
LOCK_FILE = ".coordinator.lock"
#: Seconds an unreadable lease file is given to become readable before it counts as stale
#: (only where no hard links exist is a lease ever visible before it is written).
UNREADABLE_GRACE_S = 5.0
_TRIES = 50


class CoordinatorBusy(OrchestratorError):
    """Raised when another live coordinator holds the run's lease."""


def lease_path(run_dir: str | os.PathLike[str]) -> Path:
    """Where a local run's coordinator lease lives: ``{run_dir}/.coordinator.json``."""
    return Path(run_dir) / LEASE_FILE


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
    """The lease file's content, or None if there is none (or it is unreadable)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


class LeaseBackend(Protocol):
    """Where a run's lease is kept; every write is conditional."""

    run_id: str
    where: str  # for messages: the file, or the table row

    def read(self) -> dict[str, Any] | None:
        """The current lease, or None if the run has none."""

    def create(self, mine: dict[str, Any]) -> bool:
        """Write ``mine`` if the run has no lease; False if it has one."""

    def replace(self, old: dict[str, Any], mine: dict[str, Any]) -> bool:
        """Write ``mine`` if the lease is still ``old``; False if it changed."""

    def remove(self, holder: tuple[str, int] | None) -> dict[str, Any] | None:
        """Remove the lease (only if held by ``holder`` = (host, pid), if given); return
        what was removed, or None."""

    def close(self) -> None:
        """Release connections."""


class FileLease:
    """The lease of a local run: ``{run_dir}/.coordinator.json``."""

    def __init__(self, run_dir: str | os.PathLike[str], run_id: str | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.run_id = run_id or self.run_dir.resolve().name
        self.path = lease_path(self.run_dir)
        self.where = str(self.path)

    def read(self) -> dict[str, Any] | None:
        try:
            text = self.path.read_text()
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            return None
        try:
            held = json.loads(text)
            if isinstance(held, dict):
                return held
        except ValueError:
            pass
        # Garbage, or a lease caught half-written where O_EXCL had to stand in for links.
        return {"unreadable": True, "mtime": mtime}

    def create(self, mine: dict[str, Any]) -> bool:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.run_dir / f".coordinator.{mine['host']}.{mine['pid']}.{mine['token']}.tmp"
        tmp.write_text(json.dumps(mine))
        try:
            os.link(tmp, self.path)  # the lease appears whole, or not at all
            return True
        except FileExistsError:
            return False
        except OSError:  # no hard links on this file system
            return self._create_exclusive(mine)
        finally:
            tmp.unlink(missing_ok=True)

    def _create_exclusive(self, mine: dict[str, Any]) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as handle:
            json.dump(mine, handle)
        return True

    def replace(self, old: dict[str, Any], mine: dict[str, Any]) -> bool:
        with self._locked():
            if self.read() != old:
                return False
            tmp = self.path.with_name(f".coordinator.{mine['token']}.tmp")
            tmp.write_text(json.dumps(mine))
            os.replace(tmp, self.path)
            return True

    def remove(self, holder: tuple[str, int] | None) -> dict[str, Any] | None:
        if not self.path.exists():
            return None
        with self._locked():
            held = self.read()
            if held is None:
                return None
            if holder is not None and (held.get("host"), held.get("pid")) != holder:
                return None
            self.path.unlink(missing_ok=True)
            return held

    def close(self) -> None:
        """Nothing to release."""

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold ``{run_dir}/.coordinator.lock`` (flock; released if the process dies), so a
        takeover's read-then-write is not interleaved with another one. Where the file
        system has no locks, go on without: creation stays exclusive regardless."""
        import fcntl

        fd = os.open(self.run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as exc:
                logger.debug("no flock on %s (%s); taking over unlocked", self.run_dir, exc)
            yield
        finally:
            os.close(fd)  # drops the lock


class StateStoreLease:
    """The lease of a run in S3: the ``~coordinator`` row of its DynamoDB state table."""

    def __init__(self, store: DynamoStateStore) -> None:
        self.store = store
        self.run_id = store.run_id
        self.where = f"the ~coordinator row of run {store.run_id} in DynamoDB table {store.table}"

    def read(self) -> dict[str, Any] | None:
        return self.store.read_coordinator()

    def create(self, mine: dict[str, Any]) -> bool:
        return self.store.put_coordinator(mine, None)

    def replace(self, old: dict[str, Any], mine: dict[str, Any]) -> bool:
        return self.store.put_coordinator(mine, old.get("token"))

    def remove(self, holder: tuple[str, int] | None) -> dict[str, Any] | None:
        return self.store.clear_coordinator(holder)

    def close(self) -> None:
        self.store.close()


def lease_backend(run: LeaseTarget) -> LeaseBackend:
    """The lease of ``run``: a RunConfig (its ``output_root`` picks the backend), a local run
    folder, or a backend as it is."""
    from orchestrator_ext.config import RunConfig

    if isinstance(run, str | os.PathLike):
        if is_remote(str(run)):
            raise ValueError(f"{run}: the lease of a run in S3 needs its config (state table)")
        return FileLease(run)
    if isinstance(run, RunConfig):
        if is_remote(run.output_root):
            from orchestrator_ext.state.dynamodb import DynamoStateStore

            return StateStoreLease(DynamoStateStore.from_config(run))
        return FileLease(run.run_dir, run.run_id)
    return run


@contextlib.contextmanager
def _opened(run: LeaseTarget) -> Iterator[LeaseBackend]:
    backend = lease_backend(run)
    try:
        yield backend
    finally:
        if backend is not run:
            backend.close()


def _is_mine(held: dict[str, Any]) -> bool:
    return held.get("pid") == os.getpid() and held.get("host") == current_host()


def acquire(run: LeaseTarget) -> dict[str, Any]:
    """Take the run's coordinator lease for this process.

    Args:
        run: the RunConfig, a local run folder, or a ``LeaseBackend``.

    Returns:
        The lease written.

    Raises:
        CoordinatorBusy: a live coordinator (or one on another host) holds it.
    """
    with _opened(run) as backend:
        mine = {
            "run_id": backend.run_id,
            "host": current_host(),
            "pid": os.getpid(),
            "workdir": os.getcwd(),
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "token": uuid.uuid4().hex,
        }
        for _ in range(_TRIES):
            held = backend.read()
            if held is None:
                if backend.create(mine):
                    return mine
                continue  # someone else created it first: look at theirs
            if _is_mine(held):
                return held
            if held.get("unreadable"):
                if time.time() - float(held.get("mtime", 0)) < UNREADABLE_GRACE_S:
                    time.sleep(0.1)  # perhaps being written right now
                    continue
                logger.warning("coordinator lease %s is unreadable; replacing it", backend.where)
            else:
                _refuse_if_live(held, backend)
                logger.warning(
                    "previous coordinator of run %s (pid %s on %s, working directory %s, "
                    "started %s) is gone; taking over",
                    backend.run_id, held.get("pid"), held.get("host"), held.get("workdir"),
                    held.get("started_at"),
                )  # fmt: skip
            if backend.replace(held, mine):
                return mine
        raise CoordinatorBusy(
            f"could not take the coordinator lease ({backend.where}): it keeps changing"
        )


def live_holder(run: LeaseTarget) -> dict[str, Any] | None:
    """The lease of a coordinator that may be running ``run`` now, or None: no lease, a
    released one, or one whose holder on this host is gone (what ``acquire`` takes over).
    A lease held on another host is returned: whether its process lives cannot be seen
    from here."""
    with _opened(run) as backend:
        held = backend.read()
    if held is None or held.get("unreadable"):
        return held
    if held.get("host") == current_host() and not is_alive(int(held.get("pid", 0))):
        return None
    return held


def describe_holder(held: dict[str, Any]) -> str:
    """``snakemake pid P on host H (working directory W) since T``."""
    return (
        f"snakemake pid {held.get('pid')} on host {held.get('host')} (working directory "
        f"{held.get('workdir', 'unknown')}) since {held.get('started_at')}"
    )


def _refuse_if_live(held: dict[str, Any], backend: LeaseBackend) -> None:
    run_id = held.get("run_id", backend.run_id)
    if held.get("host") != current_host():
        raise CoordinatorBusy(
            f"run {run_id} is coordinated by {describe_holder(held)}; if that process is "
            f"gone, run `orchestrator unlock --configfile F` (clears {backend.where})"
        )
    if is_alive(int(held.get("pid", 0))):
        raise CoordinatorBusy(
            f"run {run_id} is already coordinated by {describe_holder(held)} (this host); "
            "wait for it or stop it"
        )


def release(run: LeaseTarget) -> None:
    """Drop the lease if this process holds it."""
    with _opened(run) as backend:
        backend.remove((current_host(), os.getpid()))


def break_lease(run: LeaseTarget) -> dict[str, Any] | None:
    """Remove the lease whoever holds it (``orchestrator unlock``); return what it held."""
    with _opened(run) as backend:
        return backend.remove(None)


def render_unlock(run_id: str, removed: dict[str, Any] | None) -> str:
    """Whose coordinator lease ``unlock`` removed, or that there was none."""
    if removed:
        return f"removed the lease of {describe_holder(removed)}"
    return f"run {run_id} has no coordinator lease"
