"""Warm job processes for the local executor: a batch job is a fork of a process that has
imported Python, polars and the package already, instead of a fresh interpreter.

A ``process_batch`` job is the command ``[NAME=VALUE ...] PYTHON -m orchestrator_ext.jobstep
STEP ARGS... >> LOG 2>&1`` (rules/process.smk). Run by a shell, every job pays an
interpreter start and its imports, about 0.4 s of CPU here (docs/benchmarks.md), which is
most of what a small batch costs. ``orchestrator-local`` instead hands such a command to a
warm process that imported ``PRELOAD`` once (``serve``, driven by ``WarmStarter`` from the
executor mixin ``StartsJobsWarm``): each job is a fork of it (milliseconds) that takes the
command's environment, working directory and log redirection, runs ``jobstep.main`` with its
arguments, and exits with the status the command would have, so runtime limits, lost
attempts and retries see the same job. Any other command (another rule, a changed rule,
conda or container deployment) runs as Snakemake runs it.

Not multiprocessing's forkserver: its children run the parent's main script again (the
``snakemake`` script, or a user's own driver script), and Python 3.11 cannot preload it.
Forking is safe because the warm process only imports: polars starts its thread pool on
first use, which is in the job, after the fork (``POLARS_MAX_THREADS`` set by then); 300
forked jobs reading, grouping and writing Parquet ran without a hang here.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import re
import selectors
import shlex
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections import deque
from concurrent.futures import Future
from typing import Any, NamedTuple

from orchestrator_ext.runtime_limit import RuntimeWatch, track_process

logger = logging.getLogger(__name__)

#: What the warm process imports once: the job step and what it imports (polars among them).
PRELOAD = ("orchestrator_ext.jobstep", "orchestrator_ext.process", "orchestrator_ext.state.sqlite")

_JOBSTEP = "orchestrator_ext.jobstep"
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=.*", re.DOTALL)
#: How the command ends: ``>> LOG 2>&1`` as shlex reads it with shell punctuation.
_REDIRECT = (">>", None, "2", ">&", "1")
#: The request line that ends a warm process in order (``WarmServer.close``).
QUIT = b"quit"
#: How long jobs of a coordinator that is gone have between SIGTERM and SIGKILL.
STOP_GRACE_S = 10.0


class WarmCommand(NamedTuple):
    """A job command that a warm process can run in place of the shell."""

    env: dict[str, str]  #: the ``NAME=VALUE`` assignments before the command
    argv: list[str]  #: ``jobstep.main``'s arguments: the step and its options
    log: str  #: where the command's stdout and stderr go (appended)
    text: str  #: the command as written, for error messages


def parse_command(command: str) -> WarmCommand | None:
    """The command as a ``WarmCommand``, or None unless it is exactly ``[NAME=VALUE ...]
    PYTHON -m orchestrator_ext.jobstep STEP ARGS... >> LOG 2>&1`` with this interpreter as
    PYTHON, a known STEP and no other shell syntax (pipes, lists, substitutions)."""
    if "$" in command or "`" in command:
        return None
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        words = list(lexer)
    except ValueError:  # unbalanced quotes
        return None
    env = {}
    while words and _ASSIGNMENT.fullmatch(words[0]):
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    tail, words = words[-len(_REDIRECT) :], words[: -len(_REDIRECT)]
    if len(tail) != len(_REDIRECT) or any(
        want is not None and got != want for got, want in zip(tail, _REDIRECT, strict=True)
    ):
        return None
    if words[:3] != [sys.executable, "-m", _JOBSTEP] or len(words) < 4:
        return None
    from orchestrator_ext.jobstep import STEPS

    argv = words[3:]
    if argv[0] not in STEPS or any(_is_operator(word) for word in argv):
        return None
    return WarmCommand(env, argv, tail[1], command)


def _is_operator(word: str) -> bool:
    """A shell operator token (``;``, ``|``, ``&&``, ``>``, ...), which a warm job cannot
    honour; a quoted argument made only of such characters is refused too (it then runs
    through the shell, which is always correct)."""
    return bool(word) and all(c in "();<>|&" for c in word)


def job_command(job: Any) -> WarmCommand | None:
    """The warm command of a Snakemake job, or None if it must run as Snakemake runs it."""
    rule = job.rule
    if rule.shellcmd is None or job.is_run or job.is_shadow or job.benchmark is not None:
        return None
    return parse_command(job.shellcmd)


class WarmStarter:
    """Runs ``WarmCommand``s as forks of warm processes, from any number of job threads:
    one ``WarmServer`` per set of ``NAME=VALUE`` assignments, which become its environment
    (polars reads ``POLARS_MAX_THREADS`` once, when imported). A run has one such set."""

    def __init__(self, preload: tuple[str, ...] = PRELOAD) -> None:
        self.preload = preload
        self._lock = threading.Lock()
        self._servers: dict[tuple[tuple[str, str], ...], WarmServer] = {}

    def run(self, command: WarmCommand) -> None:
        """Run ``command`` in a fork of its warm process and wait for it (``WarmServer.run``).

        Raises:
            subprocess.CalledProcessError: as ``WarmServer.run``.
        """
        key = tuple(sorted(command.env.items()))
        with self._lock:
            server = self._servers.get(key)
            if server is None or server.gone:
                server = self._servers[key] = WarmServer(self.preload, command.env)
        server.run(command)

    def close(self) -> None:
        """End every warm process (their running jobs, if any, go on)."""
        with self._lock:
            servers, self._servers = list(self._servers.values()), {}
        for server in servers:
            server.close()


class WarmServer:
    """One warm process (``serve``) and the job threads waiting on it.

    The protocol is one JSON line per job to the server's stdin, and two lines back on its
    stdout: ``started PID`` (in the order of the requests) and, later, ``ended PID STATUS``
    (the exit status as ``subprocess`` reports it: negative for a signal).
    """

    def __init__(self, preload: tuple[str, ...], env: dict[str, str]) -> None:
        self.gone = False
        self._lock = threading.Lock()
        self._starting: deque[Future[tuple[int, Future[int]]]] = deque()
        self._ending: dict[int, Future[int]] = {}
        self._server = subprocess.Popen(
            [sys.executable, "-m", "orchestrator_ext.warm_jobs", *preload],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True,
            env={**os.environ, **env},
        )  # fmt: skip
        threading.Thread(target=self._read, name="orchestrator-warm-jobs", daemon=True).start()

    def run(self, command: WarmCommand) -> None:
        """Run ``command`` in a fork and wait for it, from a job's thread.

        Raises:
            subprocess.CalledProcessError: it exited non-zero or died of a signal (a
                negative ``returncode``, as ``subprocess`` reports it), or the warm
                process was gone (returncode 1; the next job starts a new one).
        """
        request = {"argv": command.argv, "env": {**os.environ, **command.env},
                   "cwd": os.getcwd(), "log": command.log}  # fmt: skip
        started: Future[tuple[int, Future[int]]] = Future()
        with self._lock:
            self._starting.append(started)
            try:
                assert self._server.stdin is not None
                self._server.stdin.write(json.dumps(request).encode() + b"\n")
                self._server.stdin.flush()
            except OSError as exc:
                self._starting.remove(started)
                started.set_exception(exc)
        try:
            pid, ended = started.result()
            track_process(pid)  # the job's runtime limit applies to it
            code = ended.result()
        except OSError as exc:
            logger.error("warm job process gone: %s", exc)
            code = 1
        if code:
            raise subprocess.CalledProcessError(code, command.text)

    def close(self) -> None:
        """End the warm process (its running jobs, if any, go on) and wait for it."""
        with self._lock:
            if self._server.stdin is not None and not self._server.stdin.closed:
                with contextlib.suppress(OSError):
                    self._server.stdin.write(QUIT + b"\n")
                    self._server.stdin.flush()
                with contextlib.suppress(OSError):
                    self._server.stdin.close()
        try:
            self._server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._server.kill()

    def _read(self) -> None:
        """The server's replies, handed to the waiting job threads."""
        assert self._server.stdout is not None
        for line in self._server.stdout:
            what, pid, *rest = line.split()
            if what == b"started":
                ended: Future[int] = Future()
                with self._lock:
                    self._ending[int(pid)] = ended
                    started = self._starting.popleft()
                started.set_result((int(pid), ended))
            elif what == b"ended":
                with self._lock:
                    finished = self._ending.pop(int(pid))
                finished.set_result(int(rest[0]))
        gone = OSError("the warm job process ended")
        with self._lock:
            self.gone = True
            waiting: list[Future[Any]] = [*self._starting, *self._ending.values()]
            for future in waiting:
                future.set_exception(gone)
            self._starting.clear()
            self._ending.clear()


def serve(preload: list[str]) -> None:
    """The warm process: import the modules ``preload`` names, then fork one job per
    request line on stdin, and report their pids and exit statuses on stdout.

    It ends at a ``quit`` line (``WarmServer.close``), leaving any running job to finish.
    Stdin closing without one means the coordinator is gone (SIGKILLed, say): its jobs are
    stopped as a runtime limit stops them (``_stop_jobs``), so that none goes on beside
    the attempt a rerun starts for the same batch, on cores the rerun counts as free."""
    for module in preload:
        importlib.import_module(module)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the jobs and Snakemake
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes the selector
    requests = sys.stdin.fileno()
    replies = sys.stdout.buffer
    selector = selectors.DefaultSelector()
    selector.register(requests, selectors.EVENT_READ)
    selector.register(wake_r, selectors.EVENT_READ)
    pending = b""  # read from the fd, not a buffered stream: select sees only the fd
    running: set[int] = set()
    while True:
        for key, _ in selector.select():
            if key.fileobj == wake_r:
                os.read(wake_r, 4096)
                continue
            chunk = os.read(requests, 1 << 16)
            if not chunk:
                _stop_jobs(running)
                return
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                if line == QUIT:
                    return
                pid = os.fork()
                if pid == 0:  # the job: leaves serve() by SystemExit, so Python ends normally
                    selector.close()
                    signal.set_wakeup_fd(-1)
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                    signal.signal(signal.SIGINT, signal.default_int_handler)
                    sys.exit(_run_job(json.loads(line)))
                running.add(pid)
                replies.write(b"started %d\n" % pid)
                replies.flush()
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            running.discard(pid)
            replies.write(b"ended %d %d\n" % (pid, os.waitstatus_to_exitcode(status)))
            replies.flush()


def _stop_jobs(pids: set[int], grace_s: float = STOP_GRACE_S) -> None:
    """Stop every running job as a runtime limit does (``RuntimeWatch``: SIGTERM to the job
    and the processes it started, SIGKILL to what is left), and reap the jobs. SIGKILL
    comes once the jobs are gone or ``grace_s`` has passed. Nobody reads their statuses any
    more: their attempts stay RUNNING until a rerun begins the next attempt of the batch."""
    watch = RuntimeWatch(None, "the jobs of a coordinator that is gone")
    for pid in pids:
        watch.add(pid)
    watch.send(signal.SIGTERM, again=False)
    deadline = time.monotonic() + grace_s
    while pids and time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:  # every job is reaped
            break
        if pid:
            pids.discard(pid)
        else:
            time.sleep(0.05)
    watch.send(signal.SIGKILL, again=True)  # a job still there, or a child it left
    for pid in pids:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def _run_job(request: dict[str, Any]) -> int | str | None:
    """The body of a warm job: what the shell command would have set up, then the step;
    returns what ``sys.exit`` takes."""
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    null = os.open(os.devnull, os.O_RDONLY)
    fd = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.dup2(null, 0)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
    finally:
        os.close(fd)
        os.close(null)
    # The streams stay those of the server's pipes otherwise; jobstep rebinds them too.
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    from orchestrator_ext import jobstep

    try:
        jobstep.main(request["argv"])
    except SystemExit as exc:
        return exc.code
    except BaseException:
        traceback.print_exc()
        return 1
    return 0


class StartsJobsWarm:
    """Mixin for Snakemake's local executor: jobs whose command is a job step
    (``job_command``) run as forks of a warm process (``WarmStarter``) instead of through a
    shell. Off when jobs are deployed with conda, containers or environment modules."""

    workflow: Any
    pool: Any

    def __post_init__(self, *args: Any, **kwargs: Any) -> None:
        super().__post_init__(*args, **kwargs)  # type: ignore[misc]
        deployed = self.workflow.deployment_settings.deployment_method
        self._warm = None if deployed else WarmStarter()

    def run_single_job(self, job: Any) -> Any:
        command = job_command(job) if self._warm is not None else None
        if command is None:
            return super().run_single_job(job)  # type: ignore[misc]
        self.workflow.async_run(job.prepare())
        return self.pool.submit(self.cached_or_run, job, self._run_warm, job, command)  # type: ignore[attr-defined]

    def _run_warm(self, job: Any, command: WarmCommand) -> None:
        """Run the job's command warm; a failure is reported as Snakemake reports a failed
        ``shell:`` command (a ``RuleException`` naming the rule's line, the exit status in
        its message and its ``CalledProcessError`` as the cause)."""
        from snakemake.exceptions import RuleException, format_error

        assert self._warm is not None
        try:
            self._warm.run(command)
        except subprocess.CalledProcessError as exc:
            rule = job.rule
            raise RuleException(format_error(exc, rule.lineno, snakefile=rule.snakefile)) from exc

    # Snakemake's shutdown and cancel wait for the running jobs: the warm process ends after.
    def shutdown(self) -> None:
        super().shutdown()  # type: ignore[misc]
        if self._warm is not None:
            self._warm.close()

    def cancel(self) -> None:
        super().cancel()  # type: ignore[misc]
        if self._warm is not None:
            self._warm.close()


if __name__ == "__main__":
    serve(sys.argv[1:])
