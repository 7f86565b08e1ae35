"""Unit tests for orchestrator_ext.warm_jobs: which commands run warm, and that a warm job
behaves as the shell command would (arguments, environment, working directory, log, exit
status, signals, the runtime limit's view of its process)."""

from __future__ import annotations

import ast
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import wait_gone

from orchestrator_ext import runtime_limit
from orchestrator_ext.warm_jobs import WarmCommand, WarmStarter, job_command, parse_command

PY = sys.executable
RULE_COMMAND = (
    "POLARS_MAX_THREADS=2 {py} -m orchestrator_ext.jobstep process-batch --batch 00003"
    " --batch-file 'b dir/batch-00003.parquet' --plan-file p.json --result r.parquet"
    " --record r.json --log l.log --config-file c.json >> 'logs/00003 x.log' 2>&1"
)


class TestParseCommand:
    def test_the_rules_command_runs_warm(self) -> None:
        command = parse_command(RULE_COMMAND.format(py=shlex.quote(PY)))
        assert command is not None
        assert command.env == {"POLARS_MAX_THREADS": "2"}
        assert command.argv[:3] == ["process-batch", "--batch", "00003"]
        assert command.argv[4] == "b dir/batch-00003.parquet"
        assert command.argv[-2:] == ["--config-file", "c.json"]
        assert command.log == "logs/00003 x.log"

    @pytest.mark.parametrize(
        "text",
        [
            # another interpreter (a conda env's, a cluster node's)
            RULE_COMMAND.format(py="/opt/other/python"),
            # not the job step, or an unknown step
            "{py} -m other.module process-batch >> l.log 2>&1",
            "{py} -m orchestrator_ext.jobstep merge-tree --x 1 >> l.log 2>&1",
            # shell syntax a fork cannot honour
            "{py} -m orchestrator_ext.jobstep process-batch --batch 1 >> l.log 2>&1; rm -rf x",
            "{py} -m orchestrator_ext.jobstep process-batch --batch $(id) >> l.log 2>&1",
            "{py} -m orchestrator_ext.jobstep process-batch | tee x >> l.log 2>&1",
            "{py} -m orchestrator_ext.jobstep process-batch --batch 1 > l.log 2>&1",
            "{py} -m orchestrator_ext.jobstep process-batch --batch 1",
            "{py} -m orchestrator_ext.jobstep process-batch 'unbalanced >> l.log 2>&1",
        ],
    )
    def test_anything_else_runs_through_the_shell(self, text: str) -> None:
        assert parse_command(text.format(py=shlex.quote(PY))) is None

    def test_only_shell_jobs_outside_shadow_and_benchmark(self) -> None:
        class Rule:
            shellcmd = "x"

        class Job:
            rule = Rule()
            is_run = False
            is_shadow = False
            benchmark = None
            shellcmd = RULE_COMMAND.format(py=shlex.quote(PY))

        assert job_command(Job()) is not None
        Job.benchmark = "bench.tsv"  # type: ignore[assignment]
        assert job_command(Job()) is None
        Job.benchmark, Job.is_shadow = None, True
        assert job_command(Job()) is None


#: A job step for these tests, in a module the warm process imports: what a warm job sees,
#: and how it ends.
PROBE_STEPS = """
import os, signal, subprocess, sys, time
from pathlib import Path
from orchestrator_ext import jobstep

def probe(argv):
    out, how = argv
    import polars  # imported by the warm process already: its thread pool starts here
    seen = {"cwd": os.getcwd(), "env": os.environ.get("WARM_PROBE"), "pid": os.getpid(),
            "polars_threads": polars.thread_pool_size()}
    Path(out).write_text(repr(seen))
    print("printed by the job")
    if how == "fail":
        sys.exit(3)
    if how == "raise":
        raise RuntimeError("a bug")
    if how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if how == "sleep":
        time.sleep(60)
    if how == "child":  # a job that starts a process of its own, as research code does
        child = subprocess.Popen(["sleep", "60"])
        Path(out + ".child").write_text(str(child.pid))
        time.sleep(60)

jobstep.STEPS["probe"] = probe
"""


@pytest.fixture
def warm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[WarmStarter]:
    """A warm process that has imported the probe step."""
    (tmp_path / "warm_probe_steps.py").write_text(PROBE_STEPS)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    starter = WarmStarter(preload=("polars", "warm_probe_steps"))
    yield starter
    starter.close()


def _command(tmp_path: Path, how: str, **env: str) -> WarmCommand:
    out = tmp_path / f"{how}.txt"
    return WarmCommand(env, ["probe", str(out), how], str(tmp_path / "job.log"), f"probe {how}")


def _seen(tmp_path: Path, how: str) -> dict[str, Any]:
    return ast.literal_eval((tmp_path / f"{how}.txt").read_text())


class TestWarmStarter:
    def test_runs_the_step_with_the_commands_env_cwd_and_log(
        self, warm: WarmStarter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.chdir(tmp_path)
        warm.run(_command(tmp_path, "ok", WARM_PROBE="from the command", POLARS_MAX_THREADS="1"))
        seen = _seen(tmp_path, "ok")
        assert seen["cwd"] == str(tmp_path)
        assert seen["env"] == "from the command"
        # The rule's POLARS_MAX_THREADS={threads} holds although polars was imported before.
        assert seen["polars_threads"] == 1
        warm.run(_command(tmp_path, "ok", POLARS_MAX_THREADS="2"))
        assert _seen(tmp_path, "ok")["polars_threads"] == 2
        assert len(warm._servers) == 2
        assert seen["pid"] != os.getpid()
        assert "printed by the job" in (tmp_path / "job.log").read_text()

    @pytest.mark.parametrize(("how", "code"), [("fail", 3), ("raise", 1), ("kill", -9)])
    def test_a_failure_is_the_exit_status_the_shell_would_see(
        self, warm: WarmStarter, tmp_path: Path, how: str, code: int
    ) -> None:
        with pytest.raises(subprocess.CalledProcessError) as failed:
            warm.run(_command(tmp_path, how))
        assert failed.value.returncode == code
        if how == "raise":
            assert "RuntimeError: a bug" in (tmp_path / "job.log").read_text()

    def test_jobs_run_side_by_side_from_several_threads(
        self, warm: WarmStarter, tmp_path: Path
    ) -> None:
        errors: list[BaseException] = []

        def one(i: int) -> None:
            try:
                warm.run(_command(tmp_path, f"ok{i}"))
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert not errors
        pids = {_seen(tmp_path, f"ok{i}")["pid"] for i in range(12)}
        assert len(pids) == 12

    def test_the_runtime_limit_sees_and_stops_a_warm_job(
        self, warm: WarmStarter, tmp_path: Path
    ) -> None:
        watchdog = runtime_limit.RuntimeWatchdog(grace_s=0.5, poll_s=0.05)
        try:
            with (
                watchdog.watch(0.5 / 60, "probe", str(tmp_path / "job.log")) as watch,
                pytest.raises(subprocess.CalledProcessError) as failed,
            ):
                warm.run(_command(tmp_path, "sleep"))
        finally:
            watchdog.stop()
        assert watch.stopped
        assert failed.value.returncode == -signal.SIGTERM

    def test_a_job_waiting_on_a_server_that_dies_fails_instead_of_hanging(
        self, warm: WarmStarter, tmp_path: Path
    ) -> None:
        waiter, failed, pid = _start_sleeper(warm, tmp_path)
        (server,) = warm._servers.values()
        server._server.kill()
        waiter.join(20)
        os.kill(pid, signal.SIGKILL)  # the orphaned job
        assert not waiter.is_alive()
        assert len(failed) == 1
        # The next job gets a new warm process.
        warm.run(_command(tmp_path, "ok"))
        assert _seen(tmp_path, "ok")["pid"] != os.getpid()

    def test_jobs_stop_when_the_coordinator_is_gone(
        self, warm: WarmStarter, tmp_path: Path
    ) -> None:
        waiter, failed, pid = _start_sleeper(warm, tmp_path, "child")
        deadline = time.monotonic() + 20
        while not (tmp_path / "child.txt.child").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        child = int((tmp_path / "child.txt.child").read_text())
        (server,) = warm._servers.values()
        assert server._server.stdin is not None
        # What a SIGKILLed coordinator leaves: stdin closed without a quit line.
        server._server.stdin.close()
        wait_gone(pid, 20, "the job of a coordinator that is gone goes on")
        wait_gone(child, 20, "a process the job started goes on")
        waiter.join(20)
        assert len(failed) == 1

    def test_an_orderly_close_leaves_a_running_job_to_finish(
        self, warm: WarmStarter, tmp_path: Path
    ) -> None:
        waiter, _, pid = _start_sleeper(warm, tmp_path)
        warm.close()
        try:
            assert psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        finally:
            os.kill(pid, signal.SIGKILL)
            waiter.join(20)


def _start_sleeper(
    warm: WarmStarter, tmp_path: Path, how: str = "sleep"
) -> tuple[threading.Thread, list[BaseException], int]:
    """Run a probe job that sleeps (``how``), from a thread; return the thread, the list
    its failure goes to, and the job's pid once it has started."""
    failed: list[BaseException] = []

    def wait_for_sleeper() -> None:
        try:
            warm.run(_command(tmp_path, how))
        except subprocess.CalledProcessError as exc:
            failed.append(exc)

    waiter = threading.Thread(target=wait_for_sleeper)
    waiter.start()
    deadline = time.monotonic() + 20
    while not (tmp_path / f"{how}.txt").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return waiter, failed, int(_seen(tmp_path, how)["pid"])
