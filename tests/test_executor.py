"""Unit tests for orchestrator_ext.executor's end of run: the scheduler's wake-up timers."""

from __future__ import annotations

import threading
import types

import pytest
from snakemake.scheduling.job_scheduler import JobScheduler

from orchestrator_ext.executor import EndsPromptly, cancel_scheduler_wakeups


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
