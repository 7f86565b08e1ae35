"""The coordinator lease: one coordinator per run; a dead one never blocks the next."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator_ext.coordinator import (
    CoordinatorBusy,
    acquire,
    break_lease,
    lease_path,
    read_lease,
    release,
)
from orchestrator_ext.state import current_host


def _write_lease(tmp_path, **fields) -> None:
    path = lease_path("r", tmp_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"run_id": "r", "started_at": "then", **fields}))


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


class TestAcquire:
    def test_takes_a_free_lease_and_releases_it(self, tmp_path):
        lease = acquire("r", tmp_path)
        assert lease["pid"] == os.getpid() and lease["host"] == current_host()
        assert read_lease(lease_path("r", tmp_path)) == lease
        release("r", tmp_path)
        assert not lease_path("r", tmp_path).exists()

    def test_takes_over_from_a_dead_coordinator(self, tmp_path, caplog):
        _write_lease(tmp_path, host=current_host(), pid=_dead_pid())
        lease = acquire("r", tmp_path)
        assert lease["pid"] == os.getpid()
        assert "is gone; taking over" in caplog.text

    def test_refuses_a_live_coordinator_on_this_host(self, tmp_path):
        # A live snakemake-looking process: a python whose command line names snakemake.
        holder = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(30)", "snakemake"]
        )
        try:
            # The child's command line is its own only once it has exec'd.
            deadline = time.monotonic() + 10
            cmdline = Path(f"/proc/{holder.pid}/cmdline")
            while b"snakemake" not in cmdline.read_bytes() and time.monotonic() < deadline:
                time.sleep(0.01)
            _write_lease(tmp_path, host=current_host(), pid=holder.pid)
            with pytest.raises(
                CoordinatorBusy, match=f"already coordinated by snakemake pid {holder.pid}"
            ):
                acquire("r", tmp_path)
        finally:
            holder.kill()
            holder.wait()

    def test_a_reused_pid_that_is_not_snakemake_is_stale(self, tmp_path):
        holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        try:
            _write_lease(tmp_path, host=current_host(), pid=holder.pid)
            assert acquire("r", tmp_path)["pid"] == os.getpid()
        finally:
            holder.kill()
            holder.wait()

    def test_refuses_a_lease_from_another_host_and_names_the_way_out(self, tmp_path):
        _write_lease(tmp_path, host="other-node", pid=1234)
        with pytest.raises(CoordinatorBusy, match="host other-node.*orchestrator unlock"):
            acquire("r", tmp_path)

    def test_unlock_breaks_any_lease(self, tmp_path):
        _write_lease(tmp_path, host="other-node", pid=1234)
        assert break_lease("r", tmp_path)["host"] == "other-node"
        assert acquire("r", tmp_path)["pid"] == os.getpid()

    def test_release_leaves_someone_elses_lease(self, tmp_path):
        _write_lease(tmp_path, host="other-node", pid=1234)
        release("r", tmp_path)
        assert lease_path("r", tmp_path).exists()
