"""The coordinator lease: one coordinator per run; a dead one never blocks the next.

The lease lives with the run: a file in a local run folder, a row of the DynamoDB state
table for a run in S3. So coordinators started from different working directories (or
hosts) see one lease.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator_ext.cli import main
from orchestrator_ext.config import load_config
from orchestrator_ext.coordinator import (
    CoordinatorBusy,
    FileLease,
    acquire,
    break_lease,
    lease_path,
    read_lease,
    release,
)
from orchestrator_ext.state import current_host
from orchestrator_ext.state.dynamodb import (
    COORDINATOR_KEY,
    DynamoStateStore,
    create_table,
)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return tmp_path / "out" / "r"


def _write_lease(run_dir: Path, **fields: Any) -> None:
    path = lease_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"run_id": "r", "started_at": "then", "token": "old", **fields}))


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _wait_for_cmdline(pid: int) -> None:
    """The child's command line is its own (naming snakemake) only once it has exec'd."""
    deadline = time.monotonic() + 10
    cmdline = Path(f"/proc/{pid}/cmdline")
    while b"snakemake" not in cmdline.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.01)


#: A coordinator stand-in: a process whose command line names snakemake (so it counts as a
#: live coordinator), that waits for ``go`` to appear, tries to take the lease of the run
#: named by argv[1] (a run folder, or a config file for a run in S3), prints ``won`` or
#: ``busy: ...`` and then holds on until its stdin closes.
_CONTENDER = """
import os, sys, time
from orchestrator_ext.coordinator import CoordinatorBusy, acquire
target, go = sys.argv[1], sys.argv[2]
if target.endswith(".yaml"):
    from orchestrator_ext.config import load_config_file
    target = load_config_file(target)
while not os.path.exists(go):
    time.sleep(0.002)
try:
    acquire(target)
    print("won", flush=True)
except CoordinatorBusy as exc:
    print(f"busy: {exc}", flush=True)
sys.stdin.read()
"""


def _race(target: str, tmp_path: Path, n: int = 6, cwd: Path | None = None) -> list[str]:
    """Start ``n`` contenders on one run at once; return what each printed."""
    go = tmp_path / f"go-{uuid.uuid4().hex[:6]}"
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _CONTENDER, target, str(go), "snakemake"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=cwd,
        )  # fmt: skip
        for _ in range(n)
    ]
    try:
        time.sleep(0.5)  # let them all get to the start line
        go.touch()
        return [child.stdout.readline().strip() for child in children]  # type: ignore[union-attr]
    finally:
        for child in children:
            child.communicate(timeout=30)


class TestLocalLease:
    def test_lives_in_the_run_folder_and_is_released(self, run_dir):
        lease = acquire(run_dir)
        assert lease_path(run_dir) == run_dir / ".coordinator.json"
        assert lease["pid"] == os.getpid() and lease["host"] == current_host()
        assert lease["workdir"] == os.getcwd() and lease["started_at"].endswith("+00:00")
        assert read_lease(lease_path(run_dir)) == lease
        assert acquire(run_dir) == lease, "taking it again in the same process is a no-op"
        release(run_dir)
        assert not lease_path(run_dir).exists()

    def test_a_second_coordinator_from_another_working_directory_is_refused(
        self, run_dir, tmp_path, monkeypatch
    ):
        first_dir, second_dir = tmp_path / "a", tmp_path / "b"
        first_dir.mkdir()
        second_dir.mkdir()
        holder = subprocess.Popen(
            [sys.executable, "-c", _CONTENDER, str(run_dir), str(tmp_path / "go"), "snakemake"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=first_dir,
        )  # fmt: skip
        try:
            (tmp_path / "go").touch()
            assert holder.stdout.readline().strip() == "won"  # type: ignore[union-attr]
            _wait_for_cmdline(holder.pid)
            monkeypatch.chdir(second_dir)
            with pytest.raises(CoordinatorBusy) as refused:
                acquire(run_dir)
        finally:
            holder.communicate(timeout=30)
        message = str(refused.value)
        assert "\n" not in message
        assert (
            f"already coordinated by snakemake pid {holder.pid} on host {current_host()} "
            f"(working directory {first_dir.resolve()}) since " in message
        )
        assert read_lease(lease_path(run_dir))["pid"] == holder.pid, "left as it was"

    def test_takes_over_from_a_dead_coordinator(self, run_dir, caplog):
        _write_lease(run_dir, host=current_host(), pid=_dead_pid(), workdir="/elsewhere")
        lease = acquire(run_dir)
        assert lease["pid"] == os.getpid()
        assert read_lease(lease_path(run_dir)) == lease
        assert "is gone; taking over" in caplog.text and "/elsewhere" in caplog.text

    def test_refuses_a_live_coordinator_on_this_host(self, run_dir):
        # A live snakemake-looking process: a python whose command line names snakemake.
        holder = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(30)", "snakemake"]
        )
        try:
            _wait_for_cmdline(holder.pid)
            _write_lease(run_dir, host=current_host(), pid=holder.pid)
            with pytest.raises(
                CoordinatorBusy, match=f"already coordinated by snakemake pid {holder.pid}"
            ):
                acquire(run_dir)
        finally:
            holder.kill()
            holder.wait()

    def test_a_reused_pid_that_is_not_snakemake_is_stale(self, run_dir):
        holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        try:
            _write_lease(run_dir, host=current_host(), pid=holder.pid)
            assert acquire(run_dir)["pid"] == os.getpid()
        finally:
            holder.kill()
            holder.wait()

    def test_refuses_a_lease_from_another_host_and_names_the_way_out(self, run_dir):
        _write_lease(run_dir, host="other-node", pid=1234, workdir="/home/u/w")
        with pytest.raises(
            CoordinatorBusy,
            match=r"pid 1234 on host other-node \(working directory /home/u/w\) since then.*"
            r"orchestrator unlock",
        ):
            acquire(run_dir)

    def test_an_old_unreadable_lease_is_replaced(self, run_dir, caplog):
        lease_path(run_dir).parent.mkdir(parents=True)
        lease_path(run_dir).write_text("")
        os.utime(lease_path(run_dir), (time.time() - 60, time.time() - 60))
        assert acquire(run_dir)["pid"] == os.getpid()
        assert "unreadable" in caplog.text

    def test_unlock_breaks_any_lease(self, run_dir):
        _write_lease(run_dir, host="other-node", pid=1234)
        assert break_lease(run_dir)["host"] == "other-node"
        assert break_lease(run_dir) is None
        assert acquire(run_dir)["pid"] == os.getpid()

    def test_release_leaves_someone_elses_lease(self, run_dir):
        _write_lease(run_dir, host="other-node", pid=1234)
        release(run_dir)
        assert read_lease(lease_path(run_dir))["host"] == "other-node"
        _write_lease(run_dir, host=current_host(), pid=_dead_pid())
        release(run_dir)
        assert lease_path(run_dir).exists()

    def test_orchestrator_unlock_removes_the_run_folders_lease(self, tmp_path, make_config, capsys):
        configfile = tmp_path / "config.yaml"
        configfile.write_text(yaml.safe_dump(make_config(run_id="r")))
        run_dir = tmp_path / "out" / "r"
        _write_lease(run_dir, host="other-node", pid=1234, workdir="/home/u/w")
        assert main(["unlock", "--configfile", str(configfile)]) == 0
        out = capsys.readouterr().out
        assert "pid 1234 on host other-node (working directory /home/u/w)" in out
        assert not lease_path(run_dir).exists()
        assert main(["unlock", "--configfile", str(configfile)]) == 0
        assert "has no coordinator lease" in capsys.readouterr().out

    def test_the_config_picks_the_run_folder(self, tmp_path, make_config, monkeypatch):
        config = load_config(make_config(run_id="r"))
        monkeypatch.chdir(tmp_path)
        acquire(config)
        assert read_lease(tmp_path / "out" / "r" / ".coordinator.json")["run_id"] == "r"
        release(config)
        assert not (tmp_path / "out" / "r" / ".coordinator.json").exists()

    def test_racing_coordinators_on_a_free_lease_exactly_one_wins(self, run_dir, tmp_path):
        results = _race(str(run_dir), tmp_path)
        assert results.count("won") == 1, results
        assert all(r.startswith("busy: ") for r in results if r != "won"), results
        assert not list(run_dir.glob("*.tmp")), "no temporary files left"

    def test_racing_takeovers_of_a_dead_lease_exactly_one_wins(self, run_dir, tmp_path):
        _write_lease(run_dir, host=current_host(), pid=_dead_pid())
        results = _race(str(run_dir), tmp_path)
        assert results.count("won") == 1, results

    def test_a_lease_left_unchanged_by_a_racer_is_not_replaced(self, run_dir):
        _write_lease(run_dir, host="other-node", pid=1)
        lease = FileLease(run_dir)
        assert not lease.replace({"host": "x"}, {"host": "y", "token": "t"})
        assert read_lease(lease_path(run_dir))["host"] == "other-node"


# -- runs in S3: the lease is a row of the DynamoDB state table ----------------------------


@pytest.fixture(scope="module")
def lease_table(moto_endpoint: str) -> Any:
    import boto3

    client = boto3.session.Session().client(
        "dynamodb", region_name="us-east-1", endpoint_url=moto_endpoint,
        aws_access_key_id="testing", aws_secret_access_key="testing",
    )  # fmt: skip
    name = f"lease-test-{uuid.uuid4().hex[:8]}"
    create_table(client, name)
    yield name
    client.delete_table(TableName=name)


@pytest.fixture
def s3_run(
    aws_env: str, lease_table: str, tmp_path: Path, make_config: Callable[..., dict[str, Any]]
) -> tuple[Any, Path]:
    """A run in S3 with DynamoDB state (a fresh run id), and its config file."""
    raw = make_config(
        run_id=f"run-{uuid.uuid4().hex[:12]}",
        output_root="s3://bucket/runs",
        state={"backend": "dynamodb", "table": lease_table, "region": "us-east-1"},
    )
    configfile = tmp_path / "s3.yaml"
    configfile.write_text(yaml.safe_dump(raw))
    return load_config(raw), configfile


def _store(config: Any) -> DynamoStateStore:
    return DynamoStateStore.from_config(config)


def _other(**fields: Any) -> dict[str, Any]:
    return {"host": "other-node", "pid": 1234, "workdir": "/w", "started_at": "then",
            "token": "old", **fields}  # fmt: skip


class TestStateTableLease:
    def test_is_a_row_that_is_no_task(self, s3_run):
        config, _ = s3_run
        store = _store(config)
        store.ensure_tasks(["batch-00000", "final"])
        before = (store.all_tasks(), store.counts(), store.transitions())
        lease = acquire(config)
        assert store.read_coordinator() == lease
        assert (store.all_tasks(), store.counts(), store.transitions()) == before
        assert [t.task_id for t in store.tasks()] == ["batch-00000", "final"]
        release(config)
        assert store.read_coordinator() is None
        item = store._client.get_item(
            TableName=store.table,
            Key={"run_id": {"S": config.run_id}, "task_id": {"S": COORDINATOR_KEY}},
        )["Item"]
        assert "released_at" in item and "pid" not in item, "released, the row kept"
        assert (store.all_tasks(), store.counts()) == before[:2]
        assert acquire(config)["pid"] == os.getpid(), "a released lease can be taken again"

    def test_a_live_holder_elsewhere_is_refused_and_unlock_breaks_it(self, s3_run, capsys):
        config, configfile = s3_run
        store = _store(config)
        assert store.put_coordinator(_other(), None)
        assert not store.put_coordinator(_other(token="new"), None), "conditional on no holder"
        with pytest.raises(
            CoordinatorBusy,
            match=r"pid 1234 on host other-node \(working directory /w\).*orchestrator unlock",
        ):
            acquire(config)
        release(config)
        assert store.read_coordinator()["host"] == "other-node", "release leaves it"
        assert main(["unlock", "--configfile", str(configfile)]) == 0
        assert "pid 1234 on host other-node" in capsys.readouterr().out
        assert store.read_coordinator() is None
        assert break_lease(config) is None

    def test_a_dead_holder_on_this_host_is_taken_over(self, s3_run, caplog):
        config, _ = s3_run
        store = _store(config)
        assert store.put_coordinator(_other(host=current_host(), pid=_dead_pid()), None)
        assert not store.put_coordinator(_other(token="x"), "not-the-holder")
        lease = acquire(config)
        assert store.read_coordinator() == lease
        assert "is gone; taking over" in caplog.text

    def test_racing_coordinators_exactly_one_wins(self, s3_run, tmp_path):
        config, configfile = s3_run
        results = _race(str(configfile), tmp_path, n=4)
        assert results.count("won") == 1, results
        assert all("already coordinated" in r for r in results if r != "won"), results
        assert _store(config).all_tasks() == []


def test_the_state_tables_lease_needs_no_extra_iam_action() -> None:
    """Taking, taking over and releasing use only GetItem, PutItem and UpdateItem."""
    from orchestrator_ext.iam import STATE_ITEM_ACTIONS

    assert {"dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem"} <= set(
        STATE_ITEM_ACTIONS
    )
