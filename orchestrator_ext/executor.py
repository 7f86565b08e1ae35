"""Failure-category-aware executors: Snakemake's own, minus pointless resubmissions.

Core Snakemake resubmits any failed job while ``job.restart_times > job.attempt - 1``
(``snakemake/scheduling/job_scheduler.py``, ``_handle_error``), right after calling the
executor's ``handle_job_error(job)``. It has no notion of error categories. The job itself
records its failure category in the state store before it exits (``attempt_scope``), so
``handle_job_error`` reads that record and, for a permanent failure (status DEAD), uses up
the job's remaining attempts: Snakemake then reports the failure instead of resubmitting,
and Slurm sees exactly one job for the batch. Resource and transient failures keep
Snakemake's resubmission, with resources escalated per attempt by the rules. A job killed
before it could record anything is recorded by the executor (below), and then handled the
same way by its category.

Two executors use this: ``orchestrator-slurm`` (the Slurm plugin's executor) and
``orchestrator-local`` (Snakemake's local executor), each a thin plugin module. Both also
make the ``orchestrator-s3`` storage provider forget what it knew about a job's outputs
when the job finishes (``DropsStorageCache``): the job may have written them, so those
answers go before Snakemake learns of the completion (``orchestrator_ext.storage_cache``).
And both end the run as soon as the scheduler is done (``EndsPromptly``).

Every attempt ends in the state store (``RecordsLostAttempts``, both executors): a job
process killed before it could record its failure (a signal, the OOM killer, a time limit)
leaves its task RUNNING; when Snakemake reports the job failed, the executor finds the
attempt that job ran and, if it is still RUNNING, records it FAILED or DEAD with a category
taken from how the process ended (``describe_lost_attempt``). A permanent crash is then not
resubmitted, like any permanent failure. On the local executor the exit status comes from
the job's ``CalledProcessError``; on Slurm from the Slurm state the plugin reports and from
the error the job's Snakemake wrote to the Slurm log. The local executor also stops a job
past its ``resources.runtime`` (``EnforcesRuntime``), as Slurm does.
"""

from __future__ import annotations

import contextlib
import logging
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from orchestrator_ext import storage_cache
from orchestrator_ext.errors import (
    Category,
    classify_exit_code,
    classify_slurm_state,
    describe_exit_code,
    exit_signal,
)

logger = logging.getLogger(__name__)

PARTITION_RULE = "partition_items"


def task_id_for_job(rule: str, wildcards: dict[str, str]) -> str | None:
    """The state-store task a Snakemake job works on, or None for rules without one."""
    from orchestrator_ext.layout import (
        TASK_FINAL,
        TASK_MANIFEST,
        TASK_PARTITION,
        task_id_for_batch,
        task_id_for_merge,
    )

    if rule == "process_batch":
        return task_id_for_batch(int(wildcards["batch"]))
    if rule == "merge_level":
        return task_id_for_merge(int(wildcards["level"]), int(wildcards["part"]))
    return {
        "merge_final": TASK_FINAL,
        "write_manifest": TASK_MANIFEST,
        PARTITION_RULE: TASK_PARTITION,
    }.get(rule)


def recorded_state(raw_config: dict[str, Any], rule: str, wildcards: dict[str, str]) -> Any:
    """The state store's row of the task a job works on (a ``TaskRecord``), or None.

    Never raises: if state cannot be read, the answer is None and Snakemake's ordinary
    retry policy applies.
    """
    from orchestrator_ext.config import load_config
    from orchestrator_ext.state import open_state_store

    task_id = task_id_for_job(rule, wildcards)
    if task_id is None:
        return None
    try:
        store = open_state_store(load_config(raw_config))
        try:
            return store.get(task_id)
        finally:
            store.close()
    except Exception as exc:  # monitoring must never break the run
        logger.debug("cannot read state of %s: %s", task_id, exc)
        return None


def is_permanent_failure(raw_config: dict[str, Any], rule: str, wildcards: dict[str, str]) -> bool:
    """Whether the state store says the task's last attempt failed permanently (DEAD)."""
    from orchestrator_ext.state import TaskStatus

    record = recorded_state(raw_config, rule, wildcards)
    return record is not None and record.status == TaskStatus.DEAD


def failure_line(record: Any, log: str | None) -> str | None:
    """One line saying why a task's attempt failed, from its state row (None if the row
    records no failure): what the coordinator prints instead of the job's whole log."""
    from orchestrator_ext.state import TaskStatus

    if record is None or record.status not in (TaskStatus.FAILED, TaskStatus.DEAD):
        return None
    again = "not retried" if record.status == TaskStatus.DEAD else "may be retried"
    where = f"; log: {log}" if log else ""
    message = " ".join((record.error_message or "").split())
    return (
        f"error: {record.task_id} attempt {record.attempt} failed ({record.error_category}, "
        f"{again}): {record.error_type}: {message}{where}"
    )


def logged_error_line(job: Any, log: str | None) -> str | None:
    """The job's own one-line error (the last ``error: ...`` line ``run_step`` wrote to its
    log), for a failure the state store could not record (e.g. the store is unreachable)."""
    if not log:
        return None
    try:
        with open(log, errors="replace") as handle:
            errors = [line.strip() for line in handle if line.startswith("error: ")]
    except OSError:
        return None
    if not errors:
        return None
    return f"error: {job.rule.name} {dict(job.wildcards)}: {errors[-1][7:]}; log: {log}"


class PermanentFailureAware:
    """Mixin for an executor: no resubmission of jobs whose failure was permanent, and one
    line per failed job naming the recorded cause and the log (the profiles do not print
    failed jobs' logs: a traceback belongs in the log, not in the run's output)."""

    workflow: Any
    logger: Any

    def handle_job_error(self, job: Any) -> None:
        super().handle_job_error(job)  # type: ignore[misc]
        from orchestrator_ext.state import TaskStatus

        jobs = job.jobs if hasattr(job, "jobs") else [job]  # group jobs hold several
        for one in jobs:
            record = recorded_state(self.workflow.config, one.rule.name, dict(one.wildcards))
            logs = [str(f) for f in getattr(one, "log", None) or []]
            log = logs[0] if logs else None
            line = failure_line(record, log) or logged_error_line(one, log)
            if line:
                self.logger.error(line)
            if record is not None and record.status == TaskStatus.DEAD:
                if job.restart_times > job.attempt - 1:
                    self.logger.info(
                        f"{one.rule.name} {dict(one.wildcards)}: permanent failure (see "
                        "`orchestrator errors`); not resubmitting"
                    )
                job.attempt = job.restart_times + 1


# -- lost attempts: a job process that died without recording its failure ----------------


@dataclass
class JobEnd:
    """How a failed job's process ended, as far as the executor knows."""

    #: Exit status: negative for a signal in Python's subprocess, 128 + N from a shell.
    exit_code: int | None = None
    #: The Slurm job state the plugin reported (``OUT_OF_MEMORY``, ``FAILED``, ...).
    slurm_state: str | None = None
    #: Set when the local executor stopped the job past its runtime (minutes).
    runtime_exceeded: float | None = None
    #: Whether stopping it took SIGKILL after the grace period.
    killed: bool = False
    #: Slurm's log of the job, if there is one.
    slurm_log: str | None = None


_SIGNAL_DEATH = re.compile(r"died with <Signals\.(SIG[A-Z0-9]+): (\d+)>")
_EXIT_STATUS = re.compile(r"returned non-zero exit status (-?\d+)")
_SLURM_STATUS = re.compile(r"SLURM status is: '([A-Z_]+)")


def exit_code_in_text(text: str) -> int | None:
    """The exit code of the last ``CalledProcessError`` message in ``text`` (what
    Snakemake prints for a failed ``shell:`` or ``script:`` job), or None."""
    found = [(m.start(), -int(m.group(2))) for m in _SIGNAL_DEATH.finditer(text)]
    found += [(m.start(), int(m.group(1))) for m in _EXIT_STATUS.finditer(text)]
    return max(found)[1] if found else None


def exit_code_of(exc: BaseException | None) -> int | None:
    """The exit code of the ``CalledProcessError`` behind a failed job's exception.

    Snakemake's local executor re-raises it as a ``RuleException`` (the original is its
    ``__context__``), or as ``SpawnedJobError``; failing that, its message is searched.
    """
    seen: set[int] = set()
    pending = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, subprocess.CalledProcessError):
            return current.returncode
        pending += [current.__cause__, current.__context__]
    return exit_code_in_text(str(exc)) if exc is not None else None


def slurm_state_in_message(msg: str | None) -> str | None:
    """The Slurm state named in the Slurm plugin's failure message, or None."""
    match = _SLURM_STATUS.search(msg or "")
    return match.group(1) if match else None


def _tail(path: str | None, size: int = 256 * 1024) -> str:
    """The last ``size`` bytes of a text file, or "" if it cannot be read."""
    if not path:
        return ""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, 2)
            handle.seek(max(0, handle.tell() - size))
            return handle.read().decode(errors="replace")
    except OSError:
        return ""


def _minutes(value: float) -> str:
    return f"{value:g}"


#: What a Slurm state that names its cause says, in words.
_SLURM_REASONS = {
    "OUT_OF_MEMORY": "ran out of memory",
    "NODE_FAIL": "lost its node",
    "PREEMPTED": "was preempted",
    "BOOT_FAIL": "could not boot its node",
}


def describe_lost_attempt(
    end: JobEnd, runtime: float | None = None, log: str | None = None
) -> tuple[Category, str, str]:
    """(category, error type, reason) of an attempt that died without a record.

    In order: the local executor stopped it past its runtime (resource); Slurm names a
    cause (``OUT_OF_MEMORY``, ``TIMEOUT``, ``NODE_FAIL``, ...: resource); Slurm says
    ``CANCELLED`` (someone ran ``scancel``: transient, resubmitted); the process was killed by
    a signal, by ``errors.classify_exit_code`` (SIGKILL, SIGTERM: resource; SIGSEGV, SIGABRT
    and any other crash: permanent, see ``errors.SIGNAL_CATEGORIES``); coreutils
    ``timeout``'s 124 (resource). Anything else (an ordinary non-zero status, or nothing
    known) is transient: the job records every failure it sees, so one that exits without
    a record most likely could not reach the state store when it tried.
    """
    code, state = end.exit_code, end.slurm_state
    category: Category | None
    if end.runtime_exceeded is not None:
        how = "SIGTERM, then SIGKILL" if end.killed else "SIGTERM"
        category, error_type = Category.RESOURCE, "RuntimeExceeded"
        reason = f"exceeded its runtime of {_minutes(end.runtime_exceeded)} min: stopped with {how}"
        if code is not None:
            reason += f" (exit {code})"
    elif state and (category := classify_slurm_state(state)) is not None:
        error_type = state
        if state in ("TIMEOUT", "DEADLINE"):
            limit = f" of {_minutes(runtime)} min" if runtime else ""
            reason = f"exceeded its runtime{limit} (Slurm state {state})"
        else:
            reason = f"{_SLURM_REASONS.get(state, 'failed')} (Slurm state {state})"
    elif state == "CANCELLED":
        category, error_type = Category.TRANSIENT, state
        reason = "was cancelled (Slurm state CANCELLED)"
    elif code is not None and (category := classify_exit_code(code)) is not None:
        sig = exit_signal(code)
        error_type = sig.name if sig else "ExitStatus"
        reason = describe_exit_code(code)
        if sig is None and code == 124:
            reason = "was stopped by timeout (exit 124)"
        if state:
            reason += f" (Slurm state {state})"
    else:
        category, error_type = Category.TRANSIENT, "LostAttempt"
        reason = describe_exit_code(code) if code is not None else "ended"
        if state:
            reason += f" (Slurm state {state})"
    reason += " before it could record a failure"
    if log:
        reason += f"; log: {log}"
    if end.slurm_log:
        reason += f"; Slurm log: {end.slurm_log}"
    return category, error_type, reason


def attempt_of_job(
    transitions: list[Any], since: datetime, slurm_job_id: str | None = None
) -> int | None:
    """The attempt a job ran: the first one to start (transition to RUNNING) in the Slurm
    job ``slurm_job_id`` or after ``since``, when the job was submitted. None if it never
    began one (it failed before taking the task)."""
    for entry in transitions:
        if entry.to_status != "RUNNING":
            continue
        if slurm_job_id and entry.slurm_job_id == slurm_job_id:
            return int(entry.attempt)
        if datetime.fromisoformat(entry.at) >= since:
            return int(entry.attempt)
    return None


def record_lost_attempt(
    raw_config: dict[str, Any],
    rule: str,
    wildcards: dict[str, str],
    end: JobEnd,
    since: datetime,
    slurm_job_id: str | None = None,
    runtime: float | None = None,
    log: str | None = None,
) -> tuple[Category, str] | None:
    """Record the attempt a failed job ran as FAILED/DEAD if it is still RUNNING.

    Returns (category, reason) if a failure was recorded, else None: the job recorded its
    failure itself, never began an attempt, or a newer attempt holds the task. Never raises:
    if state cannot be read or written, Snakemake's ordinary retry policy applies.
    """
    from orchestrator_ext.config import load_config
    from orchestrator_ext.state import TaskStatus, open_state_store

    task_id = task_id_for_job(rule, wildcards)
    if task_id is None:
        return None
    try:
        store = open_state_store(load_config(raw_config))
        try:
            row = store.get(task_id)
            if row is None or row.status != TaskStatus.RUNNING:
                return None  # recorded by the job itself (or never begun)
            attempt = attempt_of_job(store.transitions(task_id), since, slurm_job_id)
            if attempt is None:
                return None
            category, error_type, reason = describe_lost_attempt(end, runtime, log)
            if not store.record_lost_attempt(task_id, attempt, str(category), reason, error_type):
                return None
        finally:
            store.close()
    except Exception as exc:  # monitoring must never break the run
        logger.debug("cannot record the lost attempt of %s: %s", task_id, exc)
        return None
    return category, reason


def _single_jobs(job: Any) -> list[Any]:
    return list(job.jobs) if hasattr(job, "jobs") else [job]  # group jobs hold several


def job_runtime(job: Any) -> float | None:
    """A job's ``resources.runtime`` in minutes, or None if it has none."""
    try:
        value = float(job.resources.get("runtime"))
    except (AttributeError, TypeError, ValueError):
        return None
    return value if value > 0 else None


class _JobNotes:
    """What the executor learnt about its jobs between submission and failure."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.since: dict[Any, datetime] = {}
        self.slurm_ids: dict[Any, str] = {}
        self.ends: dict[Any, JobEnd] = {}

    def forget(self, job: Any) -> tuple[datetime | None, str | None, JobEnd]:
        with self.lock:
            return (
                self.since.pop(job, None),
                self.slurm_ids.pop(job, None),
                self.ends.pop(job, None) or JobEnd(),
            )


_notes_lock = threading.Lock()


def job_notes(executor: Any) -> _JobNotes:
    """The executor's ``_JobNotes``, made on first use (mixins have no common __init__)."""
    notes = getattr(executor, "_orchestrator_job_notes", None)
    if notes is None:
        with _notes_lock:
            notes = getattr(executor, "_orchestrator_job_notes", None)
            if notes is None:
                notes = _JobNotes()
                executor._orchestrator_job_notes = notes
    return notes


def note_job_end(executor: Any, job: Any, **fields: Any) -> None:
    """Remember how a job's process ended (fields of ``JobEnd``; None values are skipped)."""
    notes = job_notes(executor)
    with notes.lock:
        end = notes.ends.setdefault(job, JobEnd())
        for name, value in fields.items():
            if value is not None:
                setattr(end, name, value)


class RecordsLostAttempts:
    """Mixin for an executor: when a job fails and its attempt is still RUNNING in the state
    store, record it FAILED/DEAD (``record_lost_attempt``), before ``PermanentFailureAware``
    (which must come after it in the bases) reads the state. Both executors."""

    workflow: Any
    logger: Any

    def run_job(self, job: Any) -> None:
        now = datetime.now(UTC)
        notes = job_notes(self)
        with notes.lock:
            for one in _single_jobs(job):
                notes.since[one] = now
                notes.ends.pop(one, None)
        super().run_job(job)  # type: ignore[misc]

    def report_job_submission(self, job_info: Any) -> None:
        now = datetime.now(UTC)
        notes = job_notes(self)
        external = getattr(job_info, "external_jobid", None)
        with notes.lock:
            for one in _single_jobs(job_info.job):
                notes.since.setdefault(one, now)  # array jobs skip run_job
                if external:
                    notes.slurm_ids[one] = str(external)
        super().report_job_submission(job_info)  # type: ignore[misc]

    def report_job_error(self, job_info: Any, msg: Any = None, **kwargs: Any) -> None:
        state = slurm_state_in_message(msg if isinstance(msg, str) else None)
        if state is not None:  # the Slurm plugin; its log holds the job's own error
            logs = [log for log in kwargs.get("aux_logs") or [] if log]
            slurm_log = logs[0] if logs else None
            code = exit_code_in_text(_tail(slurm_log))
            for one in _single_jobs(job_info.job):
                note_job_end(self, one, slurm_state=state, exit_code=code, slurm_log=slurm_log)
        super().report_job_error(job_info, msg, **kwargs)  # type: ignore[misc]

    def report_job_success(self, job_info: Any) -> None:
        for one in _single_jobs(job_info.job):
            job_notes(self).forget(one)
        super().report_job_success(job_info)  # type: ignore[misc]

    def handle_job_error(self, job: Any) -> None:
        for one in _single_jobs(job):
            since, slurm_id, end = job_notes(self).forget(one)
            if since is None:
                continue
            logs = [str(f) for f in getattr(one, "log", None) or []]
            recorded = record_lost_attempt(
                self.workflow.config, one.rule.name, dict(one.wildcards), end, since, slurm_id,
                job_runtime(one), logs[0] if logs else None,
            )  # fmt: skip
            if recorded is not None:
                category, reason = recorded
                self.logger.info(
                    f"{one.rule.name} {dict(one.wildcards)}: {reason}; recorded as a "
                    f"{category} failure"
                )
        super().handle_job_error(job)  # type: ignore[misc]


# -- runtime: the local executor stops a job past its resources.runtime -------------------

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
                    f"{watch.label} exceeded its runtime of {_minutes(watch.runtime or 0)} min: "
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
        watch = getattr(_current, "watch", None)
        if watch is not None:
            watch.add(process.pid)
        return process


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


class DropsStorageCache:
    """Mixin for an executor: forget what the storage caches of this process know about a
    job's outputs when it finishes (successfully or not), before Snakemake is told; see
    ``orchestrator_ext.storage_cache``. Caches keep answers only once such an executor
    exists (``storage_cache.enable``).
    """

    def __post_init__(self, *args: Any, **kwargs: Any) -> None:
        storage_cache.enable()
        super().__post_init__(*args, **kwargs)  # type: ignore[misc]

    def report_job_success(self, job_info: Any) -> None:
        _drop_outputs(job_info)
        super().report_job_success(job_info)  # type: ignore[misc]

    def report_job_error(self, job_info: Any, msg: Any = None, **kwargs: Any) -> None:
        _drop_outputs(job_info)
        super().report_job_error(job_info, msg, **kwargs)  # type: ignore[misc]


def _drop_outputs(job_info: Any) -> None:
    """Drop the cached answers about a finished job's (or group job's) storage outputs;
    everything, if they cannot be named."""
    try:
        job = job_info.job
        jobs = list(job.jobs) if job.is_group() else [job]
        if any(single.rule.name == PARTITION_RULE for single in jobs):
            # A new plan removes every file of the old one (partition.remove_derived).
            storage_cache.drop_all()
            return
        keys = []
        for single in jobs:
            for output in single.output:
                if not output.is_storage:
                    continue
                stored = output.storage_object
                keys.append((stored.bucket, stored.key, output.is_directory))
    except AttributeError:  # a storage object without bucket/key, or an unusual job
        storage_cache.drop_all()
        return
    storage_cache.drop_keys(keys)


class EndsPromptly:
    """Mixin for an executor: when the scheduler shuts it down at the end of a run, cancel
    the scheduler's pending wake-up timers (``cancel_scheduler_wakeups``)."""

    def shutdown(self) -> None:
        super().shutdown()  # type: ignore[misc]
        cancel_scheduler_wakeups()


def cancel_scheduler_wakeups() -> int:
    """Cancel the wake-up timers Snakemake's job scheduler left behind; return how many.

    Under ``--max-jobs-per-timespan`` (default ``100/1s``) every scheduling round starts a
    ``threading.Timer`` (not a daemon) that wakes the scheduler one timespan later. Once the
    scheduler has finished and shut its executor down nothing listens, but the interpreter
    still waits for the last timer before it exits: up to a second at the end of every run
    (measured on the CPU benchmark, docs/benchmarks.md). Only those timers are cancelled.
    """
    cancelled = 0
    for thread in threading.enumerate():
        function = getattr(thread, "function", None)
        if (
            isinstance(thread, threading.Timer)
            and "_schedule_reevalutation" in getattr(function, "__qualname__", "")
            and not thread.finished.is_set()  # not fired or cancelled already
        ):
            thread.cancel()
            cancelled += 1
    return cancelled


def slurm_state(status: str) -> str:
    """A Slurm job state without its qualifier: ``sacct`` reports a cancelled job as
    ``CANCELLED by <uid>``, ``squeue`` as ``CANCELLED``."""
    return status.split(" ", 1)[0]


def normalize_slurm_states(plugin: Any) -> None:
    """Make the Slurm plugin module ``plugin`` see ``CANCELLED by <uid>`` as ``CANCELLED``.

    snakemake-executor-plugin-slurm 2.8 compares ``sacct``'s state with a fixed list
    (``fail_stati`` in ``Executor.check_active_jobs``) and treats anything else as still
    running, so a job cancelled with ``scancel`` was waited for forever. Its status query
    (``query_job_status``, a module function) is wrapped to drop the qualifier; the failed
    job is then reported and resubmitted like any job killed mid-way. Idempotent.
    """
    original = plugin.query_job_status
    if getattr(original, "normalizes_slurm_states", False):
        return

    async def query_job_status(command: str, logger: Any) -> Any:
        states, duration = await original(command, logger)
        if states is not None:
            states = {job: slurm_state(state) for job, state in states.items()}
        return states, duration

    query_job_status.normalizes_slurm_states = True  # type: ignore[attr-defined]
    query_job_status.__wrapped__ = original  # type: ignore[attr-defined]
    plugin.query_job_status = query_job_status
