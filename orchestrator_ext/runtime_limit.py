"""The local executor's runtime limit: stop a job past its ``resources.runtime``, as Slurm
does (SIGTERM, then SIGKILL after ``KILL_GRACE_S``), so the attempt ends as a resource
failure and is retried with the escalated runtime.

Snakemake's local executor starts a job's shell through ``snakemake.shell.sp``; the watchdog
sees the processes there (``track_job_processes``). That is a Snakemake internal, pinned by
tests/test_executor.py.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from orchestrator_ext.lost_attempt import exit_code_of, job_runtime, minutes, note_job_end

logger = logging.getLogger(__name__)


#: Seconds between SIGTERM and SIGKILL for a job past its runtime.
KILL_GRACE_S = 30.0

_current = threading.local()


class RuntimeWatch:
    """The processes of one running job and its deadline (``RuntimeWatchdog.watch``)."""

    def __init__(self, runtime: float | None, label: str = "a job", log: str | None = None) -> None:
        self.runtime = runtime
        self.label = label
        self.log = log
        self.deadline = time.monotonic() + runtime * 60 if runtime else None
        self.stopped_at: float | None = None  # when it was first signalled
        self.killed = False  # SIGKILL was needed
        self.finished = False  # the job's thread is done with it
        self._roots: list[Any] = []
        self._signalled: dict[int, Any] = {}
        self._lock = threading.Lock()

    @property
    def stopped(self) -> bool:
        return self.stopped_at is not None

    def add(self, pid: int) -> None:
        """A process the job started (from its own thread)."""
        import psutil

        try:
            process = psutil.Process(pid)
        except psutil.Error:
            return
        with self._lock:
            self._roots.append(process)

    def _tree(self) -> list[Any]:
        """Every live process of the job: those it started, their descendants, and any
        signalled before (a killed shell's children are re-parented away from it)."""
        import psutil

        with self._lock:
            known = self._roots + list(self._signalled.values())
        found: dict[int, Any] = {}
        for process in known:
            try:
                if not process.is_running() or process.status() == psutil.STATUS_ZOMBIE:
                    continue
                found.setdefault(process.pid, process)
                for child in process.children(recursive=True):
                    found.setdefault(child.pid, child)
            except psutil.Error:
                continue
        return list(found.values())

    def send(self, sig: int, again: bool) -> int:
        """Send ``sig`` to the job's processes (``again``: also to those signalled before);
        return how many were signalled."""
        import psutil

        sent = 0
        for process in self._tree():
            if not again and process.pid in self._signalled:
                continue
            with self._lock:
                self._signalled[process.pid] = process
            with contextlib.suppress(psutil.Error):
                process.send_signal(sig)
                sent += 1
        return sent


class RuntimeWatchdog:
    """Stops local jobs that run past their runtime: SIGTERM to the job's processes (the
    shell Snakemake started and everything below it), SIGKILL to what is left
    ``grace_s`` later. One daemon thread checks every ``poll_s`` while jobs have a deadline.

    Why a watchdog, not ``timeout ... {runtime}m`` around the command: Snakemake's local
    executor runs ``shell:`` and ``script:`` jobs inside its own process (``run_wrapper`` in
    a thread) and builds their command lines deep in ``snakemake.shell``, with no per-job
    hook to wrap them; and ``timeout`` moves the job into a process group of its own, so
    Ctrl-C in the terminal no longer reaches it. The watchdog sees a job's processes
    through ``track_job_processes`` and knows it stopped the job, so the failure is recorded
    as "exceeded its runtime" instead of being inferred from an exit code.
    """

    def __init__(self, grace_s: float = KILL_GRACE_S, poll_s: float = 1.0) -> None:
        self.grace_s = grace_s
        self.poll_s = poll_s
        self._watches: list[RuntimeWatch] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def watch(
        self, runtime: float | None, label: str = "a job", log: str | None = None
    ) -> Iterator[RuntimeWatch]:
        """Watch the job the calling thread runs in the block (``label`` names it, ``log``
        is its log file, told when it is stopped); processes it starts through
        ``snakemake.shell`` are found (``track_job_processes``)."""
        watch = RuntimeWatch(runtime, label, log)
        previous = getattr(_current, "watch", None)
        _current.watch = watch
        if watch.deadline is not None:
            with self._lock:
                self._watches.append(watch)
                if self._thread is None and not self._stop.is_set():
                    self._thread = threading.Thread(
                        target=self._run, name="orchestrator-runtime-watchdog", daemon=True
                    )
                    self._thread.start()
        try:
            yield watch
        finally:
            _current.watch = previous
            watch.finished = True
            with self._lock:
                # A stopped job stays watched until all its processes are gone: its shell
                # may die of the SIGTERM while a child that ignores it lives on.
                if watch in self._watches and not watch.stopped:
                    self._watches.remove(watch)

    def check(self) -> None:
        """One round: signal the jobs past their deadline."""
        now = time.monotonic()
        with self._lock:
            due = [w for w in self._watches if w.deadline is not None and now >= w.deadline]
        for watch in due:
            if watch.stopped_at is None:
                watch.stopped_at = now
                message = (
                    f"{watch.label} exceeded its runtime of {minutes(watch.runtime or 0)} min: "
                    f"stopping it (SIGTERM; SIGKILL if still running {self.grace_s:g} s later)"
                )
                logger.warning(message)
                if watch.log:  # the job's own log says why it ends here
                    with contextlib.suppress(OSError), open(watch.log, "a") as log:
                        log.write(f"\n{datetime.now(UTC).isoformat()} executor: {message}\n")
            if now - watch.stopped_at >= self.grace_s:
                if watch.send(signal.SIGKILL, again=True):
                    watch.killed = True
                elif watch.finished:
                    with self._lock:
                        self._watches.remove(watch)
            else:  # processes the job started since the first round get theirs too
                watch.send(signal.SIGTERM, again=False)

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.check()
            except Exception as exc:  # never let the thread die silently
                logger.warning("runtime watchdog: %s", exc)

    def stop(self) -> None:
        self._stop.set()


class _TrackingSubprocess:
    """What ``snakemake.shell`` sees as its ``subprocess`` module (``sp``): the module
    itself, except that a process started by ``Popen`` is added to the ``RuntimeWatch`` of
    the job the calling thread runs, if any."""

    def __getattr__(self, name: str) -> Any:
        return getattr(subprocess, name)

    @staticmethod
    def Popen(*args: Any, **kwargs: Any) -> subprocess.Popen:  # noqa: N802 - the API's name
        process = subprocess.Popen(*args, **kwargs)
        track_process(process.pid)
        return process


def track_process(pid: int) -> None:
    """Add process ``pid`` to the ``RuntimeWatch`` of the job the calling thread runs, if
    any: for a job started other than through ``snakemake.shell`` (``warm_jobs``)."""
    watch = getattr(_current, "watch", None)
    if watch is not None:
        watch.add(pid)


def track_job_processes() -> None:
    """Let ``RuntimeWatchdog`` see the processes of ``shell:`` and ``script:`` jobs: both
    start them with ``snakemake.shell.shell``, which calls ``sp.Popen``. Idempotent."""
    import importlib

    # The module, not the ``shell`` class that the ``snakemake`` package exports as the name.
    module = importlib.import_module("snakemake.shell")
    if not isinstance(getattr(module, "sp", None), _TrackingSubprocess):
        module.sp = _TrackingSubprocess()  # type: ignore[attr-defined]


class EnforcesRuntime:
    """Mixin for Snakemake's local executor: stop a job past its ``resources.runtime``
    (``RuntimeWatchdog``), and remember how a failed job's process ended (its exit status,
    whether it was stopped) for ``RecordsLostAttempts``. Jobs of ``run:`` rules (none in
    this workflow) run through ``subprocess`` directly and are not stopped."""

    def __post_init__(self, *args: Any, **kwargs: Any) -> None:
        super().__post_init__(*args, **kwargs)  # type: ignore[misc]
        track_job_processes()
        self._watchdog = RuntimeWatchdog()

    def cached_or_run(self, job: Any, run_func: Any, *args: Any) -> None:
        """Runs in the worker thread of the job (Snakemake's ``LocalExecutor``)."""
        logs = [str(f) for f in getattr(job, "log", None) or []]
        label = f"{job.rule.name} {dict(job.wildcards)}"
        with self._watchdog.watch(job_runtime(job), label, logs[0] if logs else None) as watch:
            try:
                super().cached_or_run(job, run_func, *args)  # type: ignore[misc]
            except BaseException as exc:
                note_job_end(
                    self, job, exit_code=exit_code_of(exc),
                    runtime_exceeded=watch.runtime if watch.stopped else None,
                    killed=watch.killed,
                )  # fmt: skip
                raise

    # Snakemake's shutdown and cancel wait for the running jobs: the watchdog stops after.
    def shutdown(self) -> None:
        super().shutdown()  # type: ignore[misc]
        self._watchdog.stop()

    def cancel(self) -> None:
        super().cancel()  # type: ignore[misc]
        self._watchdog.stop()
