"""Unit tests for orchestrator_ext.jobstep: where a job's output goes. Each runs the job body
in a child process, because ``setup_logging`` takes over file descriptors 1 and 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

_JOB = """
import logging, os, subprocess, sys
from orchestrator_ext.jobstep import setup_logging
setup_logging(sys.argv[1])
print("print-to-stdout")
print("print-to-stderr", file=sys.stderr)
os.write(1, b"fd-1-as-c-code-writes\\n")
os.write(2, b"fd-2-as-c-code-writes\\n")
subprocess.run([sys.executable, "-c", "print('child-stdout')"], check=True)
subprocess.run(["sh", "-c", "echo child-stderr >&2"], check=True)
logging.getLogger("orchestrator_ext.test").info("logged-line")
sys.stdout.flush()
os.abort() if len(sys.argv) > 2 else None
"""

MARKERS = [
    "print-to-stdout", "print-to-stderr", "fd-1-as-c-code-writes", "fd-2-as-c-code-writes",
    "child-stdout", "child-stderr", "logged-line",
]  # fmt: skip


def _run(tmp_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess[str], str]:
    log = tmp_path / "job.log"
    log.write_text("earlier attempt\n")
    child = subprocess.run(
        [sys.executable, "-c", _JOB, str(log), *extra],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return child, log.read_text()


class TestSetupLogging:
    def test_all_output_of_the_job_and_its_children_goes_to_the_log(self, tmp_path) -> None:
        child, log = _run(tmp_path)
        assert child.returncode == 0, child.stderr
        assert (child.stdout, child.stderr) == ("", ""), "nothing reaches the coordinator"
        assert log.startswith("earlier attempt\n"), "appended, not truncated"
        for marker in MARKERS:
            assert marker in log, marker
        assert log.index("print-to-stdout") < log.index("print-to-stderr"), "kept in order"

    def test_a_crash_leaves_its_traceback_in_the_log(self, tmp_path) -> None:
        child, log = _run(tmp_path, "abort")
        assert child.returncode < 0
        assert "logged-line" in log
        assert "Fatal Python error: Aborted" in log and "<module>" in log
        assert "Fatal Python error" not in child.stderr
