"""Unit tests for orchestrator_ext.executor: the end of run (the scheduler's wake-up timers),
lost attempts recorded from how a failed job ended, and the local executor's runtime limit."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_gone
from snakemake.exceptions import RuleException
from snakemake.scheduling.job_scheduler import JobScheduler

from orchestrator_ext.config import load_config
from orchestrator_ext.executor import (
    EndsPromptly,
    PermanentFailureAware,
    RecordsLostAttempts,
    cancel_scheduler_wakeups,
)
from orchestrator_ext.lost_attempt import (
    JobEnd,
    describe_lost_attempt,
    exit_code_in_text,
    exit_code_of,
)
from orchestrator_ext.runtime_limit import EnforcesRuntime, RuntimeWatchdog, track_job_processes
from orchestrator_ext.state import StateStore, TaskStatus, open_state_store


def _scheduler() -> types.SimpleNamespace:
    """Just what JobScheduler._schedule_reevalutation touches: the semaphore it releases."""
    return types.SimpleNamespace(_open_jobs=threading.Semaphore(0))


class TestCancelSchedulerWakeups:
    def test_cancels_the_schedulers_timers_and_nothing_else(self) -> None:
        scheduler = _scheduler()
        # Snakemake's own method, so the test breaks if it stops using threading.Timer.
        JobScheduler._schedule_reevalutation(scheduler, 30)
        fired = threading.Event()
        other = threading.Timer(30, fired.set)
        other.start()
        try:
            assert cancel_scheduler_wakeups() == 1
            wakeups = [t for t in threading.enumerate() if isinstance(t, threading.Timer)]
            for timer in wakeups:
                if timer is not other:
                    timer.join(timeout=5)
                    assert not timer.is_alive(), "a cancelled timer ends at once"
            assert other.is_alive(), "timers of anyone else are left alone"
            assert not scheduler._open_jobs.acquire(blocking=False), "the wake-up never fired"
        finally:
            other.cancel()

    def test_a_due_wakeup_still_fires_until_the_run_ends(self) -> None:
        scheduler = _scheduler()
        JobScheduler._schedule_reevalutation(scheduler, 0.01)
        assert scheduler._open_jobs.acquire(timeout=5)


class TestEndsPromptly:
    def test_shutdown_shuts_down_then_cancels(self) -> None:
        calls: list[str] = []

        class Base:
            def shutdown(self) -> None:
                calls.append("executor")

        class Executor(EndsPromptly, Base):
            pass

        scheduler = _scheduler()
        JobScheduler._schedule_reevalutation(scheduler, 30)
        Executor().shutdown()
        assert calls == ["executor"]
        assert cancel_scheduler_wakeups() == 0, "none left to cancel"

    @pytest.mark.parametrize(
        "module",
        [
            "snakemake_executor_plugin_orchestrator_local",
            "snakemake_executor_plugin_orchestrator_slurm",
        ],
    )
    def test_both_executors_end_promptly(self, module: str) -> None:
        executor = __import__(module).Executor
        assert issubclass(executor, EndsPromptly)


# -- lost attempts: a job killed before it could record its failure ----------------------

TASK = "batch-00000"


class _SnakemakeExecutor:
    """Just the executor methods the mixins extend, recording what reached them."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.workflow = types.SimpleNamespace(config=config)
        self.logger = logging.getLogger("test-executor")
        self.reached: list[str] = []
        self.__post_init__()

    def __post_init__(self) -> None:
        pass

    def run_job(self, job: Any) -> None:
        self.reached.append("run_job")

    def report_job_submission(self, job_info: Any) -> None:
        self.reached.append("submission")

    def report_job_error(self, job_info: Any, msg: Any = None, **kwargs: Any) -> None:
        self.reached.append("error")

    def report_job_success(self, job_info: Any) -> None:
        self.reached.append("success")

    def handle_job_error(self, job: Any) -> None:
        self.reached.append("handle_job_error")

    def cached_or_run(self, job: Any, run_func: Callable[..., Any], *args: Any) -> None:
        run_func(*args)

    def shutdown(self) -> None:
        pass


class LocalExecutor(
    RecordsLostAttempts, EnforcesRuntime, PermanentFailureAware, _SnakemakeExecutor
):
    """The bases of orchestrator-local over a stand-in for Snakemake's local executor."""


class SlurmExecutor(RecordsLostAttempts, PermanentFailureAware, _SnakemakeExecutor):
    """The bases of orchestrator-slurm over a stand-in for the Slurm plugin's executor."""


class FakeJob:
    """A process_batch job as the executor sees it."""

    def __init__(self, log: str, runtime: float = 60, restart_times: int = 2) -> None:
        self.rule = types.SimpleNamespace(name="process_batch")
        self.wildcards = {"batch": "00000"}
        self.resources = {"runtime": runtime}
        self.log = [log]
        self.restart_times = restart_times
        self.attempt = 1


@pytest.fixture
def run(tmp_path: Path, make_config: Callable[..., dict[str, Any]]) -> Any:
    """A run's config, its state store (a job process's view) and a job of batch 0."""
    config = load_config(make_config())  # the Snakefile's config: validated, defaults filled
    Path(config.run_dir).mkdir(parents=True)
    store = open_state_store(config)
    store.ensure_tasks([TASK], {TASK: 10})
    job = FakeJob(f"{config.run_dir}/logs/process_batch/00000.log")
    yield types.SimpleNamespace(raw=config.raw, store=store, job=job)
    store.close()


def _fail_locally(executor: LocalExecutor, job: FakeJob, returncode: int) -> None:
    """What Snakemake's local executor does with a job whose shell command exited with
    ``returncode``: the CalledProcessError comes out of run_wrapper as a RuleException."""

    def shell_job() -> None:
        try:
            raise subprocess.CalledProcessError(returncode, "python -m orchestrator_ext.jobstep")
        except subprocess.CalledProcessError as exc:
            raise RuleException(f"CalledProcessError in file process.smk:\n{exc}") from None

    with pytest.raises(RuleException):
        executor.cached_or_run(job, shell_job)
    executor.report_job_error(types.SimpleNamespace(job=job))
    executor.handle_job_error(job)


def _row(store: StateStore) -> Any:
    row = store.get(TASK)
    assert row is not None
    return row


class TestLostAttemptOnTheLocalExecutor:
    @pytest.mark.parametrize(
        ("code", "status", "category", "words", "resubmitted"),
        [
            (-11, TaskStatus.DEAD, "permanent", "killed by SIGSEGV (exit -11)", False),
            (134, TaskStatus.DEAD, "permanent", "killed by SIGABRT (exit 134)", False),
            (137, TaskStatus.FAILED, "resource", "killed by SIGKILL (exit 137)", True),
            (-9, TaskStatus.FAILED, "resource", "killed by SIGKILL (exit -9)", True),
            (124, TaskStatus.FAILED, "resource", "was stopped by timeout (exit 124)", True),
            (1, TaskStatus.FAILED, "transient", "exited with status 1", True),
        ],
    )
    def test_a_running_attempt_is_recorded_from_the_exit_code(
        self, run: Any, code: int, status: TaskStatus, category: str, words: str,
        resubmitted: bool,
    ) -> None:  # fmt: skip
        executor = LocalExecutor(run.raw)
        executor.run_job(run.job)
        run.store.begin_attempt(TASK)  # the job process takes the task, then dies

        _fail_locally(executor, run.job, code)

        row = _row(run.store)
        assert (row.status, row.attempt, row.error_category) == (status, 1, category)
        assert words in row.error_message and run.job.log[0] in row.error_message
        last = run.store.transitions(TASK)[-1]
        assert (last.from_status, last.to_status, last.attempt) == ("RUNNING", str(status), 1)
        assert last.detail.startswith(f"{category}: {words}")
        # A permanent crash uses up the job's attempts: Snakemake does not resubmit it.
        assert (run.job.attempt == 1) is resubmitted
        assert executor.reached[-1] == "handle_job_error"

    def test_a_failure_the_job_recorded_itself_is_left_alone(self, run: Any) -> None:
        executor = LocalExecutor(run.raw)
        executor.run_job(run.job)
        lease = run.store.begin_attempt(TASK)
        run.store.fail(lease, "transient", "TimeoutError", "service down", retryable=True)
        before = run.store.transitions(TASK)

        _fail_locally(executor, run.job, 1)

        row = _row(run.store)
        assert (row.status, row.error_category, row.error_type) == (
            TaskStatus.FAILED, "transient", "TimeoutError",
        )  # fmt: skip
        assert run.store.transitions(TASK) == before
        assert run.job.attempt == 1

    def test_a_newer_attempt_holding_the_task_is_not_overwritten(self, run: Any) -> None:
        executor = LocalExecutor(run.raw)
        executor.run_job(run.job)
        run.store.begin_attempt(TASK)  # the job's attempt 1 ...
        run.store.begin_attempt(TASK, host="other-node")  # ... lost the task to attempt 2

        _fail_locally(executor, run.job, -11)

        row = _row(run.store)
        assert (row.status, row.attempt, row.host) == (TaskStatus.RUNNING, 2, "other-node")
        assert run.job.attempt == 1

    def test_an_attempt_begun_before_the_job_was_submitted_is_not_its_own(self, run: Any) -> None:
        run.store.begin_attempt(TASK)  # e.g. of an earlier coordinator, killed
        executor = LocalExecutor(run.raw)
        executor.run_job(run.job)  # this job dies before it takes the task

        _fail_locally(executor, run.job, -11)

        assert _row(run.store).status == TaskStatus.RUNNING

    def test_a_succeeded_job_leaves_nothing_behind(self, run: Any) -> None:
        executor = LocalExecutor(run.raw)
        executor.run_job(run.job)
        executor.report_job_success(types.SimpleNamespace(job=run.job))
        assert executor._orchestrator_job_notes.since == {}


class TestLostAttemptOnSlurm:
    def _fail(self, run: Any, msg: str, slurm_log: str | None = None) -> SlurmExecutor:
        executor = SlurmExecutor(run.raw)
        executor.run_job(run.job)
        executor.report_job_submission(types.SimpleNamespace(job=run.job, external_jobid="4242"))
        run.store.begin_attempt(TASK, slurm_job_id="4242")
        executor.report_job_error(types.SimpleNamespace(job=run.job), msg=msg, aux_logs=[slurm_log])
        executor.handle_job_error(run.job)
        return executor

    @pytest.mark.parametrize(
        ("state", "status", "category", "words"),
        [
            ("OUT_OF_MEMORY", TaskStatus.FAILED, "resource", "ran out of memory"),
            ("TIMEOUT", TaskStatus.FAILED, "resource", "exceeded its runtime of 60 min"),
            ("NODE_FAIL", TaskStatus.FAILED, "resource", "lost its node"),
            ("CANCELLED", TaskStatus.FAILED, "transient", "was cancelled"),
        ],
    )
    def test_the_slurm_state_names_the_cause(
        self, run: Any, state: str, status: TaskStatus, category: str, words: str
    ) -> None:
        msg = f"SLURM-job '4242' failed, SLURM status is: '{state}'. Reason: Step 0: x."
        self._fail(run, msg)
        row = _row(run.store)
        assert (row.status, row.error_category, row.error_type) == (status, category, state)
        assert words in row.error_message and f"(Slurm state {state})" in row.error_message
        assert row.slurm_job_id == "4242"

    def test_a_crash_is_read_from_the_slurm_log(self, run: Any, tmp_path: Path) -> None:
        slurm_log = tmp_path / "4242.log"
        slurm_log.write_text(
            "RuleException:\nCalledProcessError in file process.smk, line 25:\n"
            "Command 'set -euo pipefail;  python -m orchestrator_ext.jobstep' died with "
            "<Signals.SIGSEGV: 11>.\n"
        )
        self._fail(run, "SLURM-job '4242' failed, SLURM status is: 'FAILED'. Reason: x.",
                   str(slurm_log))  # fmt: skip
        row = _row(run.store)
        assert (row.status, row.error_category) == (TaskStatus.DEAD, "permanent")
        assert "killed by SIGSEGV (exit -11) (Slurm state FAILED)" in row.error_message
        assert f"Slurm log: {slurm_log}" in row.error_message
        assert run.job.attempt == run.job.restart_times + 1, "not resubmitted"


class TestDescribeLostAttempt:
    def test_exit_codes_of_the_local_executors_exceptions(self) -> None:
        try:
            try:
                raise subprocess.CalledProcessError(-6, "cmd")
            except subprocess.CalledProcessError:
                raise RuleException("CalledProcessError ...") from None
        except RuleException as exc:
            assert exit_code_of(exc) == -6
        assert exit_code_of(RuleException("Command 'x' returned non-zero exit status 139.")) == 139
        assert exit_code_of(ValueError("no exit here")) is None

    def test_the_last_error_of_a_log_counts(self) -> None:
        text = (
            "Command 'a' returned non-zero exit status 1.\n"
            "Command 'b' died with <Signals.SIGKILL: 9>.\n"
        )
        assert exit_code_in_text(text) == -9
        assert exit_code_in_text("nothing") is None

    def test_runtime_exceeded_is_a_resource_failure(self) -> None:
        category, error_type, reason = describe_lost_attempt(
            JobEnd(exit_code=-15, runtime_exceeded=1), log="/r/logs/x.log"
        )
        assert (str(category), error_type) == ("resource", "RuntimeExceeded")
        assert reason.startswith("exceeded its runtime of 1 min: stopped with SIGTERM (exit -15)")
        assert reason.endswith("; log: /r/logs/x.log")


class TestRuntimeOnTheLocalExecutor:
    def _shell(self, command: str) -> None:
        """Snakemake's own shell(), as a shell: rule's job runs it."""
        from snakemake.shell import shell

        shell(command)

    def test_a_job_past_its_runtime_is_stopped_and_recorded(self, run: Any, tmp_path: Path) -> None:
        executor = LocalExecutor(run.raw)
        executor._watchdog = RuntimeWatchdog(grace_s=5, poll_s=0.05)
        run.job.resources = {"runtime": 0.02}  # minutes: 1.2 s
        pid_file = tmp_path / "pid"
        executor.run_job(run.job)
        run.store.begin_attempt(TASK)

        started = time.monotonic()
        with pytest.raises(subprocess.CalledProcessError) as caught:
            executor.cached_or_run(run.job, self._shell, f"sleep 600 & echo $! > {pid_file}; wait")
        elapsed = time.monotonic() - started
        executor.report_job_error(types.SimpleNamespace(job=run.job))
        executor.handle_job_error(run.job)

        # Stopped at its runtime (1.2 s), not after its 600 s: the upper bound leaves room
        # for a loaded machine (a bound of 4 s flaked).
        assert 1.2 <= elapsed < 30, elapsed
        assert caught.value.returncode in (-signal.SIGTERM, 128 + signal.SIGTERM)
        child = int(pid_file.read_text())
        wait_gone(child, 10, "the job's child process is stopped too")
        row = _row(run.store)
        assert (row.status, row.error_category, row.error_type) == (
            TaskStatus.FAILED, "resource", "RuntimeExceeded",
        )  # fmt: skip
        assert row.error_message.startswith(
            "exceeded its runtime of 0.02 min: stopped with SIGTERM"
        )
        assert run.job.attempt == 1, "Snakemake resubmits it, with more runtime"

    def test_what_ignores_sigterm_gets_sigkill_after_the_grace_period(self, tmp_path: Path) -> None:
        track_job_processes()
        watchdog = RuntimeWatchdog(grace_s=0.5, poll_s=0.05)
        pid_file = tmp_path / "pid"
        stubborn = (
            "import os, signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            f"open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(600)"
        )
        with watchdog.watch(0.01) as watch, pytest.raises(subprocess.CalledProcessError):
            self._shell(f"{sys.executable} -c {stubborn!r}; true")
        assert watch.stopped
        pid = int(pid_file.read_text())
        wait_gone(pid, 5, "SIGKILL never came")
        assert watch.killed
        watchdog.stop()

    def test_jobs_within_their_runtime_and_other_threads_are_left_alone(self) -> None:
        track_job_processes()
        watchdog = RuntimeWatchdog(grace_s=0.5, poll_s=0.05)
        outside = subprocess.Popen(["sleep", "30"])  # started by no job
        try:
            with watchdog.watch(1) as watch:
                self._shell("sleep 0.3")
            assert not watch.stopped
            assert outside.poll() is None
        finally:
            outside.kill()
            outside.wait()
            watchdog.stop()


class TestBothExecutorsRecordLostAttempts:
    @pytest.mark.parametrize(
        "module",
        [
            "snakemake_executor_plugin_orchestrator_local",
            "snakemake_executor_plugin_orchestrator_slurm",
        ],
    )
    def test_recorded_before_the_permanent_failure_check(self, module: str) -> None:
        mro = __import__(module).Executor.__mro__
        assert mro.index(RecordsLostAttempts) < mro.index(PermanentFailureAware)

    def test_the_local_executor_enforces_runtime(self) -> None:
        import snakemake_executor_plugin_orchestrator_local as local

        assert issubclass(local.Executor, EnforcesRuntime)

    def test_snakemake_shell_starts_processes_through_the_tracker(self) -> None:
        import importlib

        track_job_processes()
        track_job_processes()  # idempotent
        module = importlib.import_module("snakemake.shell")
        assert type(module.sp).__name__ == "_TrackingSubprocess"
        assert module.sp.PIPE == subprocess.PIPE
        assert module.sp.CalledProcessError is subprocess.CalledProcessError


class TestFailureLine:
    def test_names_task_attempt_category_cause_and_log(self) -> None:
        from orchestrator_ext.executor import failure_line
        from orchestrator_ext.state import TaskRecord, TaskStatus

        record = TaskRecord(
            "batch-00003", TaskStatus.DEAD, attempt=1, error_category="permanent",
            error_type="TypeError", error_message="job returned list,\n expected a DataFrame",
        )  # fmt: skip
        assert failure_line(record, "run/logs/process_batch/00003.log") == (
            "error: batch-00003 attempt 1 failed (permanent, not retried): TypeError: job "
            "returned list, expected a DataFrame; log: run/logs/process_batch/00003.log"
        )

    def test_the_type_is_said_once_when_the_message_starts_with_it(self) -> None:
        """A failure the job raised is recorded as ``describe`` gives it (``Type: message``);
        the line said ``BatchFailed: BatchFailed: ...``."""
        from orchestrator_ext.executor import failure_line
        from orchestrator_ext.state import TaskRecord, TaskStatus

        record = TaskRecord(
            "batch-00006", TaskStatus.DEAD, attempt=1, error_category="permanent",
            error_type="BatchFailed", error_message="BatchFailed: batch 00006: 1 of 500 failed",
        )  # fmt: skip
        assert failure_line(record, None) == (
            "error: batch-00006 attempt 1 failed (permanent, not retried): BatchFailed: "
            "batch 00006: 1 of 500 failed"
        )

    def test_nothing_for_a_task_that_recorded_no_failure(self) -> None:
        from orchestrator_ext.executor import failure_line
        from orchestrator_ext.state import TaskRecord, TaskStatus

        assert failure_line(TaskRecord("final", TaskStatus.RUNNING, attempt=2), None) is None
        assert failure_line(None, None) is None
