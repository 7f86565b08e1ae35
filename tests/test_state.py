"""Tests of orchestrator_ext.state: one contract suite run against both backends (SQLite in a
temporary folder, DynamoDB on the local moto server through the real boto3), plus the
DynamoDB backend's own builders and its setup errors against the same server."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest

from orchestrator_ext.config import load_config
from orchestrator_ext.errors import StateConflict, StateStoreError
from orchestrator_ext.state import (
    RowUpdate,
    StateStore,
    TaskRecord,
    TaskStatus,
    Transition,
    open_state_store,
)
from orchestrator_ext.state.dynamodb import (
    DynamoStateStore,
    build_update_transaction,
    send_batch_write,
)
from orchestrator_ext.state.dynamodb_client import DynamoSettings, make_client
from orchestrator_ext.state.dynamodb_items import (
    build_new_task_items,
    build_task_item,
    from_item,
    merge_transitions,
    parse_task_item,
    to_attribute,
    to_item,
    transition_sort_key,
    validate_task_id,
)
from orchestrator_ext.state.dynamodb_requests import (
    BATCH_WRITE_LIMIT,
    build_batch_write_requests,
    build_update,
)
from orchestrator_ext.state.dynamodb_table import (
    build_create_table_request,
    check_table,
    create_table,
)
from orchestrator_ext.state.sqlite import SqliteStateStore

REGION = "us-east-1"
IDS = ["batch-00000", "batch-00001", "batch-00002"]

StoreFactory = Callable[..., StateStore]


def _raw_client(endpoint: str) -> Any:
    """A client with explicit test credentials, independent of the environment."""
    return boto3.session.Session().client(
        "dynamodb",
        region_name=REGION,
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture(scope="module")
def dynamo_table(moto_endpoint: str) -> Iterator[str]:
    """A fresh state table for this module; every test uses its own run id in it."""
    client = _raw_client(moto_endpoint)
    name = f"state-test-{uuid.uuid4().hex[:8]}"
    assert create_table(client, name) is True
    yield name
    client.delete_table(TableName=name)


def _dynamo_config(
    make_config: Callable[..., dict[str, Any]], run_id: str, table: str, **state: Any
) -> Any:
    return load_config(
        make_config(
            run_id=run_id, state={"backend": "dynamodb", "table": table, "region": REGION, **state}
        )
    )


@pytest.fixture(params=["sqlite", "dynamodb"])
def open_store(
    request: pytest.FixtureRequest, tmp_path: Path, make_config: Callable[..., dict[str, Any]]
) -> Iterator[StoreFactory]:
    """Factory of stores on one fresh run: each call opens a new connection (or client), as
    separate jobs would."""
    run_id = f"run-{uuid.uuid4().hex[:12]}"
    opened: list[StateStore] = []
    if request.param == "sqlite":
        config = load_config(make_config(run_id=run_id, output_root=str(tmp_path / "out")))
    else:
        request.getfixturevalue("aws_env")  # endpoint and credentials from boto3's env lookup
        config = _dynamo_config(make_config, run_id, request.getfixturevalue("dynamo_table"))

    def factory(closed_by_caller: bool = False) -> StateStore:
        store = open_state_store(config)
        if not closed_by_caller:
            opened.append(store)
        return store

    yield factory
    for store in opened:
        store.close()


#: moto's DynamoDB behind werkzeug's server without threads: one request at a time.
_SERIAL_MOTO = """
import sys
from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication, MotoRequestHandler, create_backend_app,
)
run_simple("127.0.0.1", int(sys.argv[1]), DomainDispatcherApplication(create_backend_app),
           threaded=False, request_handler=MotoRequestHandler)
"""


@pytest.fixture(scope="module")
def serial_moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second moto server (real HTTP) that handles one request at a time.

    moto's threaded server does not isolate concurrent transactions: a cancelled
    TransactWriteItems restores a deep copy of the whole table taken when it started, undoing
    writes that committed meanwhile. Real DynamoDB serialises the writes to an item, so races
    between writers run here, where moto's per-request behaviour is exact.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    log = open(tmp_path_factory.mktemp("moto") / "serial-moto.log", "wb")  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "-c", _SERIAL_MOTO, str(port)], stdout=log, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{url}/moto-api/", timeout=1)
            break
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError(f"serial moto server did not start on port {port}") from None
            time.sleep(0.1)
    yield url
    process.terminate()
    process.wait(timeout=10)
    log.close()


@pytest.fixture(params=["sqlite", "dynamodb"])
def race_open_store(
    request: pytest.FixtureRequest, tmp_path: Path, make_config: Callable[..., dict[str, Any]]
) -> Iterator[StoreFactory]:
    """Like ``open_store``, with DynamoDB on the serial moto server (see there why)."""
    run_id = f"run-{uuid.uuid4().hex[:12]}"
    opened: list[StateStore] = []
    if request.param == "sqlite":
        config = load_config(make_config(run_id=run_id, output_root=str(tmp_path / "out")))
    else:
        request.getfixturevalue("aws_env")
        endpoint = request.getfixturevalue("serial_moto_endpoint")
        table = f"race-{uuid.uuid4().hex[:8]}"
        create_table(_raw_client(endpoint), table)
        config = _dynamo_config(make_config, run_id, table, endpoint_url=endpoint)

    def factory(closed_by_caller: bool = False) -> StateStore:
        store = open_state_store(config)
        if not closed_by_caller:
            opened.append(store)
        return store

    yield factory
    for store in opened:
        store.close()


@pytest.fixture
def store(open_store: StoreFactory) -> StateStore:
    return open_store()


def _statuses(transitions: list[Transition]) -> list[tuple[str | None, str, int]]:
    return [(t.from_status, t.to_status, t.attempt) for t in transitions]


# -- the contract: every backend ------------------------------------------------------------


class TestBackendSelection:
    def test_open_state_store_picks_the_backend(
        self, store: StateStore, request: pytest.FixtureRequest
    ) -> None:
        expected = SqliteStateStore if "sqlite" in request.node.callspec.id else DynamoStateStore
        assert isinstance(store, expected)


class TestEnsureTasks:
    def test_creates_pending_rows_in_task_order(self, store: StateStore) -> None:
        store.ensure_tasks(["partition", *reversed(IDS)], items={"batch-00001": 7})
        rows = store.tasks()
        assert [r.task_id for r in rows] == [*IDS, "partition"]
        assert {r.status for r in rows} == {TaskStatus.PENDING}
        assert all(r.attempt == 0 and r.version == 0 for r in rows)
        by_id = {r.task_id: r for r in rows}
        assert by_id["batch-00001"].items == 7
        assert by_id["batch-00000"].items is None
        assert by_id["batch-00000"].kind == "batch"
        assert by_id["partition"].kind == "partition"
        assert by_id["batch-00000"].host is None

    def test_is_idempotent_and_never_overwrites(self, store: StateStore) -> None:
        store.ensure_tasks(IDS)
        lease = store.begin_attempt("batch-00000", host="node1")
        store.ensure_tasks([*IDS, "batch-00003"], items={"batch-00000": 99})
        store.ensure_tasks([*IDS, "batch-00003"])
        row = store.get("batch-00000")
        assert row is not None
        assert (row.status, row.attempt, row.host, row.items) == (
            TaskStatus.RUNNING,
            lease.attempt,
            "node1",
            None,
        )
        assert len(store.tasks()) == 4
        pending = [t.task_id for t in store.transitions() if t.to_status == "PENDING"]
        assert sorted(pending) == [*IDS, "batch-00003"]

    def test_get_of_unknown_task_is_none(self, store: StateStore) -> None:
        assert store.get("batch-99999") is None


class TestStartPlan:
    """A re-partition: the store then names exactly the new plan's tasks (issue 11)."""

    def test_old_tasks_are_superseded_and_kept_ones_start_over(self, store: StateStore) -> None:
        old = ["partition", "batch-00000", "batch-00001", "batch-00002", "final"]
        store.ensure_tasks(old, items={"batch-00000": 10, "batch-00001": 10, "batch-00002": 5})
        store.succeed(store.begin_attempt("batch-00000"), "a" * 64, items_done=10)
        store.fail(store.begin_attempt("batch-00001"), "permanent", "E", "m", retryable=False)
        lease = store.begin_attempt("partition")
        changed = store.start_plan(
            ["batch-00000", "final", "manifest"], {"batch-00000": 25}, keep="partition"
        )
        assert changed == 3  # batch-00000 starts over; 00001 and 00002 are superseded
        rows = {r.task_id: r for r in store.tasks()}
        assert sorted(rows) == ["batch-00000", "final", "manifest", "partition"]
        batch = rows["batch-00000"]
        assert (batch.status, batch.items, batch.output_sha256, batch.items_done) == (
            TaskStatus.PENDING, 25, None, None,
        )  # fmt: skip
        assert batch.attempt == 1  # kept: attempt numbers never go back
        assert rows["partition"].status is TaskStatus.RUNNING
        superseded = {r.task_id for r in store.all_tasks()} - set(rows)
        assert superseded == {"batch-00001", "batch-00002"}
        assert store.counts()["PENDING"] == 3
        assert "SUPERSEDED" not in store.counts()
        details = {t.task_id: t.detail for t in store.transitions() if t.to_status == "SUPERSEDED"}
        assert set(details) == superseded
        store.succeed(lease, "p")

    def test_an_attempt_of_the_old_plan_can_no_longer_commit(self, store: StateStore) -> None:
        from orchestrator_ext.errors import StateConflict

        store.ensure_tasks(["batch-00000", "batch-00001"])
        straggler = store.begin_attempt("batch-00000")
        gone = store.begin_attempt("batch-00001")
        store.start_plan(["batch-00000"], {"batch-00000": 3}, keep="partition")
        with pytest.raises(StateConflict):
            store.succeed(straggler, "s")
        with pytest.raises(StateConflict):
            store.succeed(gone, "s")
        assert store.begin_attempt("batch-00000").attempt == straggler.attempt + 1

    def test_a_superseded_task_named_again_starts_over(self, store: StateStore) -> None:
        store.ensure_tasks(["batch-00000", "batch-00001"])
        store.start_plan(["batch-00000"], {}, keep="partition")
        store.start_plan(["batch-00000", "batch-00001"], {"batch-00001": 4}, keep="partition")
        row = store.get("batch-00001")
        assert row is not None and (row.status, row.items) == (TaskStatus.PENDING, 4)

    def test_the_same_plan_again_changes_nothing(self, store: StateStore) -> None:
        store.start_plan(["batch-00000", "final"], {"batch-00000": 3}, keep="partition")
        before = len(store.transitions())
        assert store.start_plan(["batch-00000", "final"], {"batch-00000": 3}, keep="p") == 0
        assert len(store.transitions()) == before


class TestFacts:
    """Run-level facts (``claim_fact``): the first value recorded wins, on both backends."""

    def test_first_claim_wins_and_later_ones_get_it(self, open_store: StoreFactory) -> None:
        first, second = open_store(), open_store()  # two jobs, two connections
        assert first.get_fact("output_schema") is None
        assert first.claim_fact("output_schema", '[["v","Int64"]]') == '[["v","Int64"]]'
        assert second.claim_fact("output_schema", '[["v","String"]]') == '[["v","Int64"]]'
        assert second.get_fact("output_schema") == '[["v","Int64"]]'
        assert first.claim_fact("other", "x") == "x", "facts are kept apart by name"

    def test_facts_are_not_tasks_and_leave_no_transitions(self, store: StateStore) -> None:
        store.ensure_tasks(IDS)
        before = store.transitions()
        store.claim_fact("output_schema", "[]")
        assert [r.task_id for r in store.all_tasks()] == IDS
        assert store.transitions() == before
        assert store.counts()["PENDING"] == 3

    def test_start_plan_forgets_the_output_schema(self, open_store: StoreFactory) -> None:
        store, other = open_store(), open_store()
        store.claim_fact("output_schema", '[["v","Int64"]]')
        store.start_plan(["batch-00000"], {"batch-00000": 3}, keep="partition")
        assert other.get_fact("output_schema") is None
        assert other.claim_fact("output_schema", '[["v","String"]]') == '[["v","String"]]'
        assert store.get_fact("output_schema") == '[["v","String"]]'

    def test_forget_is_idempotent(self, store: StateStore) -> None:
        store.forget_fact("output_schema")
        store.claim_fact("output_schema", "a")
        store.forget_fact("output_schema")
        store.forget_fact("output_schema")
        assert store.get_fact("output_schema") is None

    def test_racing_claims_agree_on_one_value(self, race_open_store: StoreFactory) -> None:
        workers = 4
        start = threading.Barrier(workers, timeout=30)
        results: list[str] = []
        lock = threading.Lock()

        def claim(value: str) -> None:
            store = race_open_store(closed_by_caller=True)  # its own connection, as a job's
            try:
                start.wait()
                recorded = store.claim_fact("output_schema", value)
            finally:
                store.close()
            with lock:
                results.append(recorded)

        threads = [
            threading.Thread(target=claim, args=(f"v{i}",), daemon=True) for i in range(workers)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert len(results) == workers and len(set(results)) == 1
        assert race_open_store().get_fact("output_schema") == results[0]


class TestSqliteFactsMigration:
    def test_a_state_file_from_before_facts_gets_the_table(self, tmp_path: Path) -> None:
        path = tmp_path / "state.sqlite"
        SqliteStateStore(path, "r").close()
        import sqlite3

        with sqlite3.connect(path) as db:
            db.execute("DROP TABLE facts")
        store = SqliteStateStore(path, "r")
        try:
            assert store.get_fact("output_schema") is None
            assert store.claim_fact("output_schema", "[]") == "[]"
        finally:
            store.close()


class TestSqliteOpenRace:
    def test_jobs_opening_a_new_state_file_at_once_all_open_it(self, tmp_path: Path) -> None:
        # A run's first batch jobs open its new state file together. Switching it to WAL
        # was refused at once ("database is locked") in about 4% of such races of 8.
        failed: list[Exception] = []
        for trial in range(100):
            path = tmp_path / f"{trial}" / "state.sqlite"
            start = threading.Barrier(8, timeout=30)

            def open_store(path: Path = path, start: threading.Barrier = start) -> None:
                start.wait()
                try:
                    SqliteStateStore(path, "r").close()
                except StateStoreError as exc:
                    failed.append(exc)

            threads = [threading.Thread(target=open_store) for _ in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
        assert not failed, f"{len(failed)} opens failed, e.g. {failed[0]}"


class TestBeginAttempt:
    def test_increments_attempt_and_records_where(self, store: StateStore) -> None:
        store.ensure_tasks(IDS)
        first = store.begin_attempt("batch-00001", host="node1", slurm_job_id="101")
        second = store.begin_attempt("batch-00001", host="node2", slurm_job_id="102")
        assert (first.attempt, second.attempt) == (1, 2)
        row = store.get("batch-00001")
        assert row is not None
        assert (row.status, row.attempt, row.host, row.slurm_job_id) == (
            TaskStatus.RUNNING,
            2,
            "node2",
            "102",
        )
        assert row.version == 2
        assert row.started_at and row.updated_at and row.items_done == 0

    def test_a_running_attempt_superseded_is_said_so_in_the_audit_log(
        self, store: StateStore
    ) -> None:
        store.ensure_tasks(IDS)
        lease = store.begin_attempt("batch-00002")
        store.fail(lease, "transient", "TimeoutError", "slow", retryable=True)
        store.begin_attempt("batch-00002")  # after a recorded end: nothing to say
        store.begin_attempt("batch-00002")  # attempt 2 never ended: its process was lost
        log = store.transitions("batch-00002")
        assert [(t.from_status, t.to_status, t.attempt) for t in log[-2:]] == [
            ("FAILED", "RUNNING", 2), ("RUNNING", "RUNNING", 3)
        ]  # fmt: skip
        assert log[-2].detail is None
        assert log[-1].detail == (
            "attempt 2 was still RUNNING and is superseded: its process was lost, or it can "
            "no longer commit"
        )

    def test_clears_the_previous_failure(self, store: StateStore) -> None:
        store.ensure_tasks(IDS)
        lease = store.begin_attempt("batch-00000")
        store.fail(lease, "transient", "TimeoutError", "slow", retryable=True)
        store.begin_attempt("batch-00000")
        row = store.get("batch-00000")
        assert row is not None
        assert (row.error_category, row.error_type, row.error_message) == (None, None, None)
        assert row.finished_at is None

    def test_creates_a_missing_row(self, store: StateStore) -> None:
        lease = store.begin_attempt("final", host="h")
        assert lease.attempt == 1
        row = store.get("final")
        assert row is not None and row.kind == "final" and row.status == TaskStatus.RUNNING
        assert _statuses(store.transitions("final")) == [
            (None, "PENDING", 0),
            ("PENDING", "RUNNING", 1),
        ]


class TestSucceed:
    def test_holder_commits(self, store: StateStore) -> None:
        store.ensure_tasks(IDS, items={"batch-00000": 10})
        lease = store.begin_attempt("batch-00000", host="n", slurm_job_id="7")
        store.succeed(lease, "ab" * 32, items_done=9, items_dead=1)
        row = store.get("batch-00000")
        assert row is not None
        assert row.status == TaskStatus.SUCCEEDED
        assert (row.output_sha256, row.items, row.items_done, row.items_dead) == (
            "ab" * 32,
            10,
            9,
            1,
        )
        assert row.finished_at is not None and row.attempt == 1
        assert store.transitions("batch-00000")[-1].slurm_job_id == "7"

    def test_second_commit_by_the_same_attempt_conflicts(self, store: StateStore) -> None:
        store.ensure_tasks(IDS)
        lease = store.begin_attempt("batch-00000")
        store.succeed(lease, "x")
        with pytest.raises(StateConflict, match="status SUCCEEDED"):
            store.succeed(lease, "y")
        row = store.get("batch-00000")
        assert row is not None and row.output_sha256 == "x"

    def test_stale_attempt_cannot_commit_or_fail(self, store: StateStore) -> None:
        store.ensure_tasks(IDS)
        stale = store.begin_attempt("batch-00002", host="old")
        fresh = store.begin_attempt("batch-00002", host="new")
        with pytest.raises(StateConflict, match="attempt 1 lost the race.*attempt 2 holds it"):
            store.succeed(stale, "stale-sha")
        with pytest.raises(StateConflict, match="attempt 1 lost the race"):
            store.fail(stale, "permanent", "ValueError", "stale", retryable=False)
        with pytest.raises(StateConflict, match="attempt 1 lost the race"):
            store.record_progress(stale, 5)
        row = store.get("batch-00002")
        assert row is not None
        assert (row.status, row.attempt, row.host, row.output_sha256, row.error_type) == (
            TaskStatus.RUNNING,
            2,
            "new",
            None,
            None,
        )
        store.succeed(fresh, "fresh-sha")
        row = store.get("batch-00002")
        assert row is not None and row.output_sha256 == "fresh-sha"
        assert [t.to_status for t in store.transitions("batch-00002")].count("SUCCEEDED") == 1

    def test_stale_attempt_cannot_overwrite_a_finished_task(self, store: StateStore) -> None:
        store.ensure_tasks(IDS)
        stale = store.begin_attempt("batch-00001")
        fresh = store.begin_attempt("batch-00001")
        store.succeed(fresh, "fresh-sha")
        with pytest.raises(StateConflict):
            store.succeed(stale, "stale-sha")
        with pytest.raises(StateConflict):
            store.fail(stale, "resource", "MemoryError", "oom", retryable=True)
        row = store.get("batch-00001")
        assert row is not None
        assert (row.status, row.output_sha256, row.attempt) == (
            TaskStatus.SUCCEEDED,
            "fresh-sha",
            2,
        )


class TestUpdate:
    def test_stale_version_conflicts_and_writes_nothing(self, store: StateStore) -> None:
        store.ensure_tasks(IDS)
        row = store.get("batch-00000")
        assert row is not None
        store._update("batch-00000", row.version, {"host": "first"}, None)
        before = store.transitions()
        late = Transition("batch-00000", "PENDING", "RUNNING", 1, "2000-01-01T00:00:00+00:00")
        with pytest.raises(StateConflict, match="expected version 0"):
            store._update("batch-00000", row.version, {"host": "second"}, late)
        after = store.get("batch-00000")
        assert after is not None
        assert (after.host, after.version) == ("first", row.version + 1)
        assert store.transitions() == before

    def test_missing_row_conflicts(self, store: StateStore) -> None:
        with pytest.raises(StateConflict):
            store._update("batch-00009", 0, {"host": "x"}, None)
        assert store.get("batch-00009") is None

    def test_none_clears_a_value(self, store: StateStore) -> None:
        store.ensure_tasks(IDS)
        store._update("batch-00000", 0, {"host": "h", "items": 3}, None)
        store._update("batch-00000", 1, {"host": None}, None)
        row = store.get("batch-00000")
        assert row is not None
        assert (row.host, row.items, row.version) == (None, 3, 2)


class TestFail:
    @pytest.mark.parametrize(
        ("retryable", "status"), [(True, TaskStatus.FAILED), (False, TaskStatus.DEAD)]
    )
    def test_status_by_retryability(
        self, store: StateStore, retryable: bool, status: TaskStatus
    ) -> None:
        store.ensure_tasks(IDS)
        lease = store.begin_attempt("batch-00000")
        store.record_progress(lease, 4)
        store.fail(lease, "transient", "TimeoutError", "x" * 3000, retryable=retryable)
        row = store.get("batch-00000")
        assert row is not None
        assert (row.status, row.error_category, row.error_type, row.items_done) == (
            status,
            "transient",
            "TimeoutError",
            4,
        )
        assert row.error_message == "x" * 2000
        last = store.transitions("batch-00000")[-1]
        assert (last.from_status, last.to_status) == ("RUNNING", str(status))
        assert last.detail is not None and last.detail.startswith("transient: x")


class TestRecordLostAttempt:
    @pytest.mark.parametrize(
        ("category", "status"),
        [("resource", TaskStatus.FAILED), ("transient", TaskStatus.FAILED),
         ("permanent", TaskStatus.DEAD)],
    )  # fmt: skip
    def test_a_running_attempt_is_recorded_by_category(
        self, store: StateStore, category: str, status: TaskStatus
    ) -> None:
        store.ensure_tasks(IDS)
        lease = store.begin_attempt("batch-00000", host="node-7", slurm_job_id="4242")
        store.record_progress(lease, 3)
        reason = "killed by SIGSEGV (exit -11) before it could record a failure; log: x.log"

        assert store.record_lost_attempt("batch-00000", 1, category, reason, "SIGSEGV")

        row = store.get("batch-00000")
        assert row is not None
        assert (row.status, row.attempt, row.error_category, row.error_type) == (
            status, 1, category, "SIGSEGV",
        )  # fmt: skip
        assert row.error_message == reason and row.finished_at is not None
        assert row.items_done == 3, "progress of the lost attempt is kept"
        last = store.transitions("batch-00000")[-1]
        assert (last.from_status, last.to_status, last.attempt) == ("RUNNING", str(status), 1)
        assert (last.host, last.slurm_job_id) == ("node-7", "4242")
        assert last.detail == f"{category}: {reason}"

    def test_a_failure_the_attempt_recorded_is_left_alone(self, store: StateStore) -> None:
        store.ensure_tasks(IDS)
        lease = store.begin_attempt("batch-00000")
        store.fail(lease, "transient", "TimeoutError", "service down", retryable=True)
        n = len(store.transitions())

        assert not store.record_lost_attempt("batch-00000", 1, "permanent", "killed")

        row = store.get("batch-00000")
        assert row is not None
        assert (row.status, row.error_type) == (TaskStatus.FAILED, "TimeoutError")
        assert len(store.transitions()) == n

    def test_a_newer_attempt_is_not_overwritten(self, store: StateStore) -> None:
        store.ensure_tasks(IDS)
        store.begin_attempt("batch-00000")
        newer = store.begin_attempt("batch-00000", host="other-node")
        n = len(store.transitions())

        assert not store.record_lost_attempt("batch-00000", 1, "resource", "killed by SIGKILL")

        row = store.get("batch-00000")
        assert row is not None
        assert (row.status, row.attempt, row.host) == (TaskStatus.RUNNING, 2, "other-node")
        assert len(store.transitions()) == n
        store.succeed(newer, "sha")  # the newer attempt still holds its lease

    def test_unknown_or_pending_tasks_are_left_alone(self, store: StateStore) -> None:
        store.ensure_tasks(IDS)
        assert not store.record_lost_attempt("batch-00000", 0, "resource", "killed")
        assert not store.record_lost_attempt("batch-99999", 1, "resource", "killed")
        row = store.get("batch-00000")
        assert row is not None and row.status == TaskStatus.PENDING


class TestRecordProgress:
    def test_holder_records_without_a_transition(self, store: StateStore) -> None:
        store.ensure_tasks(IDS)
        lease = store.begin_attempt("batch-00001")
        n = len(store.transitions())
        store.record_progress(lease, 40)
        store.record_progress(lease, 80)
        row = store.get("batch-00001")
        assert row is not None and row.items_done == 80 and row.status == TaskStatus.RUNNING
        assert len(store.transitions()) == n

    def test_a_detail_is_logged_in_the_same_write(self, store: StateStore) -> None:
        store.ensure_tasks(IDS)
        lease = store.begin_attempt("batch-00001", host="n1", slurm_job_id="7")
        store.record_progress(lease, 40, detail="resumed at item 40 of 100")
        row = store.get("batch-00001")
        assert row is not None and (row.items_done, row.version) == (40, 2)
        last = store.transitions("batch-00001")[-1]
        assert (last.from_status, last.to_status, last.attempt) == ("RUNNING", "RUNNING", 1)
        assert (last.host, last.slurm_job_id, last.detail) == (
            "n1",
            "7",
            "resumed at item 40 of 100",
        )

    def test_only_the_holder_records(self, store: StateStore) -> None:
        store.ensure_tasks(IDS)
        stale = store.begin_attempt("batch-00001")
        store.begin_attempt("batch-00001")
        n = len(store.transitions())
        with pytest.raises(StateConflict, match="cannot record its resume"):
            store.record_progress(stale, 40, detail="resumed")
        with pytest.raises(StateConflict, match="cannot record progress"):
            store.record_progress(stale, 40)
        row = store.get("batch-00001")
        assert row is not None and row.items_done == 0
        assert len(store.transitions()) == n


class TestLargeNumbers:
    def test_counts_round_trip_exactly(self, store: StateStore) -> None:
        # past 2**53 a float would round; past 2**63 neither SQLite nor int64 would hold it
        big = 2**63 - 1
        store.ensure_tasks(IDS, items={"batch-00000": big, "batch-00001": 2**53 + 1})
        lease = store.begin_attempt("batch-00000")
        store.succeed(lease, "s", items_done=big - 1, items_dead=1)
        row = store.get("batch-00000")
        assert row is not None and (row.items, row.items_done, row.items_dead) == (big, big - 1, 1)
        assert type(row.items) is int and type(row.version) is int
        other = {r.task_id: r for r in store.tasks()}["batch-00001"]
        assert other.items == 2**53 + 1 and type(other.items) is int


class TestCounts:
    def test_every_status_counted(self, store: StateStore) -> None:
        assert store.counts() == {str(s): 0 for s in TaskStatus if s is not TaskStatus.SUPERSEDED}
        store.ensure_tasks([*IDS, "batch-00003"])
        store.succeed(store.begin_attempt("batch-00000"), "s")
        store.fail(store.begin_attempt("batch-00001"), "permanent", "E", "m", retryable=False)
        store.begin_attempt("batch-00002")
        assert store.counts() == {
            "PENDING": 1,
            "RUNNING": 1,
            "SUCCEEDED": 1,
            "FAILED": 0,
            "DEAD": 1,
        }


class TestTransitions:
    def test_life_cycle_is_logged_in_order_and_only_appended(self, store: StateStore) -> None:
        store.ensure_tasks(IDS)
        seen: list[list[Transition]] = [store.transitions()]
        lease = store.begin_attempt("batch-00001", host="n1", slurm_job_id="11")
        seen.append(store.transitions())
        store.fail(lease, "resource", "MemoryError", "oom", retryable=True)
        seen.append(store.transitions())
        other = store.begin_attempt("batch-00000")
        store.succeed(other, "s0")
        lease = store.begin_attempt("batch-00001", host="n2", slurm_job_id="12")
        store.succeed(lease, "s1")
        seen.append(store.transitions())
        for earlier, later in zip(seen, seen[1:], strict=False):
            assert later[: len(earlier)] == earlier
            assert len(later) > len(earlier)
        assert _statuses(store.transitions("batch-00001")) == [
            (None, "PENDING", 0),
            ("PENDING", "RUNNING", 1),
            ("RUNNING", "FAILED", 1),
            ("FAILED", "RUNNING", 2),
            ("RUNNING", "SUCCEEDED", 2),
        ]
        hosts = [t.host for t in store.transitions("batch-00001")]
        assert hosts == [None, "n1", "n1", "n2", "n2"]
        everything = store.transitions()
        assert len(everything) == 3 + 4 + 2
        assert [t.at for t in everything] == sorted(t.at for t in everything)
        assert {t.task_id for t in store.transitions("batch-00000")} == {"batch-00000"}
        assert _statuses(store.transitions("batch-00002")) == [(None, "PENDING", 0)]


class TestConcurrency:
    def test_exactly_one_racing_attempt_commits(self, race_open_store: StoreFactory) -> None:
        race_open_store().ensure_tasks(IDS)
        workers = 4
        began, ready = (
            threading.Barrier(workers, timeout=30),
            threading.Barrier(workers, timeout=30),
        )
        outcomes: list[tuple[int, str]] = []
        lock = threading.Lock()

        def race(host: str) -> None:
            store = race_open_store(closed_by_caller=True)  # its own connection, as a job's
            try:
                began.wait()
                lease = store.begin_attempt("batch-00000", host=host)
                ready.wait()  # every attempt has begun; only the latest holds the lease
                try:
                    store.succeed(lease, f"sha-{host}")
                    outcome = "committed"
                except StateConflict:
                    outcome = "conflict"
            finally:
                store.close()
            with lock:
                outcomes.append((lease.attempt, outcome))

        threads = [
            threading.Thread(target=race, args=(f"h{i}",), daemon=True) for i in range(workers)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert len(outcomes) == workers
        assert sorted(a for a, _ in outcomes) == list(range(1, workers + 1))
        committed = [a for a, o in outcomes if o == "committed"]
        assert committed == [workers]
        store = race_open_store()
        row = store.get("batch-00000")
        assert row is not None
        assert (row.status, row.attempt) == (TaskStatus.SUCCEEDED, workers)
        assert row.output_sha256 == f"sha-{row.host}"
        log = [t.to_status for t in store.transitions("batch-00000")]
        assert log.count("SUCCEEDED") == 1 and log.count("RUNNING") == workers

    def test_writers_past_the_fence_race_on_the_version(
        self, race_open_store: StoreFactory
    ) -> None:
        """Both writers read the same version; exactly one conditional write lands."""
        race_open_store().ensure_tasks(IDS)
        workers = 4
        start = threading.Barrier(workers, timeout=30)
        results: list[str] = []
        lock = threading.Lock()

        def write(host: str) -> None:
            store = race_open_store(closed_by_caller=True)
            transition = Transition("batch-00001", "PENDING", "RUNNING", 0, "t", host)
            try:
                start.wait()
                store._update("batch-00001", 0, {"host": host}, transition)
                result = host
            except StateConflict:
                result = "conflict"
            finally:
                store.close()
            with lock:
                results.append(result)

        threads = [
            threading.Thread(target=write, args=(f"h{i}",), daemon=True) for i in range(workers)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        winners = [r for r in results if r != "conflict"]
        assert len(results) == workers and len(winners) == 1
        store = race_open_store()
        row = store.get("batch-00001")
        assert row is not None and (row.host, row.version) == (winners[0], 1)
        assert [t.host for t in store.transitions("batch-00001")] == [None, winners[0]]


class TestAttemptScope:
    @pytest.mark.parametrize(
        ("exc", "category", "status"),
        [
            (TimeoutError("service slow"), "transient", TaskStatus.FAILED),
            (MemoryError(), "resource", TaskStatus.FAILED),
            (ValueError("bad row 3"), "permanent", TaskStatus.DEAD),
        ],
    )
    def test_records_the_failure_category(
        self,
        store: StateStore,
        monkeypatch: pytest.MonkeyPatch,
        exc: BaseException,
        category: str,
        status: TaskStatus,
    ) -> None:
        monkeypatch.setenv("SLURM_JOB_ID", "4242")
        store.ensure_tasks(IDS)
        with pytest.raises(type(exc)), store.attempt_scope("batch-00000", host="n"):
            raise exc
        row = store.get("batch-00000")
        assert row is not None
        assert (row.status, row.error_category, row.error_type, row.slurm_job_id) == (
            status,
            category,
            type(exc).__name__,
            "4242",
        )
        assert row.error_message is not None and row.error_message.startswith(type(exc).__name__)

    def test_clean_block_commits(self, store: StateStore) -> None:
        store.ensure_tasks(IDS)
        with store.attempt_scope("batch-00000") as lease:
            store.succeed(lease, "ok")
        row = store.get("batch-00000")
        assert row is not None and row.status == TaskStatus.SUCCEEDED


# -- DynamoDB: request builders, no server -------------------------------------------------


class TestBatchWriteChunks:
    def test_sixty_tasks_go_out_in_requests_of_at_most_25(self) -> None:
        ids = [f"batch-{i:05d}" for i in range(60)]
        items = build_new_task_items("r", ids, set(), {}, "2025-01-01T00:00:00+00:00")
        assert len(items) == 120  # a row and its PENDING transition per task
        requests = build_batch_write_requests("t", items)
        sizes = [len(r["RequestItems"]["t"]) for r in requests]
        assert sizes == [25, 25, 25, 25, 20]
        assert max(sizes) <= BATCH_WRITE_LIMIT
        sent = [p["PutRequest"]["Item"] for r in requests for p in r["RequestItems"]["t"]]
        assert sent == items

    def test_existing_and_duplicate_tasks_are_skipped(self) -> None:
        items = build_new_task_items("r", ["a", "b", "a", "c"], {"b"}, {"c": 5}, "t0")
        rows = [from_item(i) for i in items if not i["task_id"]["S"].startswith("~")]
        assert [r["task_id"] for r in rows] == ["a", "c"]
        assert rows[1]["items"] == 5 and "items" not in rows[0]

    def test_chunk_size_over_the_aws_limit_is_refused(self) -> None:
        with pytest.raises(ValueError, match="between 1 and 25"):
            build_batch_write_requests("t", [], chunk_size=26)
        assert build_batch_write_requests("t", []) == []


class TestRequestBuilders:
    def test_a_fact_sorts_outside_the_tasks_and_the_log(self) -> None:
        from orchestrator_ext.state.dynamodb_items import TASKS_END, TRANSITION_PREFIX
        from orchestrator_ext.state.dynamodb_requests import build_fact_claim, build_fact_forget

        claim = build_fact_claim("t", "r", "output_schema", "[]", "now")
        key = claim["Item"]["task_id"]["S"]
        assert key == "~fact#output_schema"
        assert key > TASKS_END and not key.startswith(TRANSITION_PREFIX)
        assert claim["ConditionExpression"] == "attribute_not_exists(#value)"
        forget = build_fact_forget("t", "r", "output_schema", "now")
        assert forget["Key"]["task_id"] == {"S": key}
        assert forget["UpdateExpression"].startswith("REMOVE #value")

    def test_update_sets_removes_and_fences_on_version(self) -> None:
        request = build_update("t", "r", "batch-00001", 3, {"status": "RUNNING", "host": None})
        assert request["Key"] == {"run_id": {"S": "r"}, "task_id": {"S": "batch-00001"}}
        assert request["ConditionExpression"] == "attribute_exists(#pk) AND #version = :expected"
        assert request["UpdateExpression"] == "SET #version = :next, #f0 = :v0 REMOVE #f1"
        values = request["ExpressionAttributeValues"]
        assert values[":expected"] == {"N": "3"} and values[":next"] == {"N": "4"}
        assert request["ExpressionAttributeNames"]["#f1"] == "host"

    def test_update_may_not_touch_managed_attributes(self) -> None:
        with pytest.raises(ValueError, match="version"):
            build_update("t", "r", "x", 0, {"version": 9})

    def test_transition_rides_in_the_same_transaction(self) -> None:
        transition = Transition("batch-00001", "RUNNING", "SUCCEEDED", 2, "t1", "h")
        request = build_update_transaction(
            "t", "r", RowUpdate("batch-00001", 5, {"a": 1}, transition)
        )
        update, put = request["TransactItems"]
        assert "Update" in update
        item = put["Put"]["Item"]
        assert item["task_id"] == {"S": transition_sort_key("batch-00001", 6)}
        assert item["of_task"] == {"S": "batch-00001"} and item["attempt"] == {"N": "2"}
        assert "from_status" in item and "detail" not in item
        assert put["Put"]["ConditionExpression"] == "attribute_not_exists(#pk)"
        alone = build_update_transaction("t", "r", RowUpdate("batch-00001", 5, {"a": 1}))
        assert len(alone["TransactItems"]) == 1

    def test_values_are_typed(self) -> None:
        assert to_attribute(3) == {"N": "3"} and to_attribute("3") == {"S": "3"}
        assert to_attribute(np.int64(4)) == {"N": "4"}  # type: ignore[arg-type]
        for bad in (True, 1.5, None):
            with pytest.raises(TypeError):
                to_attribute(bad)  # type: ignore[arg-type]

    def test_task_ids_may_not_collide_with_the_log(self) -> None:
        validate_task_id("merge-L1-part-00003")
        for bad in ("", "~transition", "\u00e9t\u00e9", "a#b"):
            with pytest.raises(ValueError, match="invalid"):
                validate_task_id(bad)

    def test_transition_keys_sort_by_version_after_all_tasks(self) -> None:
        keys = [transition_sort_key("batch-00001", v) for v in (9, 10, 100)]
        assert keys == sorted(keys) and all(k > "zzzz" for k in keys)

    def test_run_wide_log_keeps_each_tasks_order(self) -> None:
        # host clocks disagree: b's second entry carries an earlier time than its first
        a = [Transition("a", None, "PENDING", 0, "t2"), Transition("a", "PENDING", "X", 1, "t5")]
        b = [Transition("b", None, "PENDING", 0, "t4"), Transition("b", "PENDING", "X", 1, "t3")]
        merged = merge_transitions(a + b)
        assert [(t.task_id, t.at) for t in merged] == [
            ("a", "t2"),
            ("b", "t4"),
            ("b", "t3"),
            ("a", "t5"),
        ]

    def test_create_table_is_on_demand_with_the_run_as_partition_key(self) -> None:
        request = build_create_table_request("t")
        assert request["BillingMode"] == "PAY_PER_REQUEST"
        assert request["KeySchema"] == [
            {"AttributeName": "run_id", "KeyType": "HASH"},
            {"AttributeName": "task_id", "KeyType": "RANGE"},
        ]

    def test_settings_are_validated(self) -> None:
        with pytest.raises(ValueError, match="retry_mode"):
            DynamoSettings(retry_mode="legacy")


class TestItemConversion:
    """boto3's serializers underneath: exact integers, None as an absent attribute."""

    def test_integers_of_up_to_38_digits_round_trip_exactly(self) -> None:
        for value in (0, -5, 2**53 + 1, 2**64 + 1, 10**37 + 1, -(10**38 - 1)):
            item = to_item({"n": value})
            assert item == {"n": {"N": str(value)}}
            back = from_item(item)["n"]
            assert back == value and type(back) is int

    def test_more_digits_than_dynamodb_holds_are_refused(self) -> None:
        with pytest.raises(ValueError, match="38 digits"):
            to_attribute(10**40 + 1)

    def test_none_is_left_out_and_missing_or_null_reads_as_none(self) -> None:
        record = TaskRecord(task_id="batch-00003", status=TaskStatus.PENDING, kind="batch")
        item = build_task_item("r", record)
        assert "host" not in item and "items" not in item and "error_message" not in item
        assert item["attempt"] == {"N": "0"} and item["run_id"] == {"S": "r"}
        assert parse_task_item(item) == record
        item["host"] = {"NULL": True}  # written by another tool: same as absent
        assert parse_task_item(item) == record

    def test_a_fraction_stays_an_exact_decimal(self) -> None:
        # this package never stores one; reading one must not round it through a float
        assert from_item({"x": {"N": "0.1"}}) == {"x": Decimal("0.1")}


class _ThrottlingClient:
    """Stands in for a client whose BatchWriteItem leaves items unprocessed ``times`` times."""

    def __init__(self, times: int) -> None:
        self.times = times
        self.calls: list[int] = []

    def batch_write_item(self, RequestItems: dict[str, list[Any]]) -> dict[str, Any]:  # noqa: N803
        puts = RequestItems["t"]
        self.calls.append(len(puts))
        if len(self.calls) <= self.times:
            return {"UnprocessedItems": {"t": puts[1:] or puts}}
        return {"UnprocessedItems": {}}


class TestSendBatchWrite:
    def test_unprocessed_items_are_resent(self) -> None:
        client = _ThrottlingClient(times=2)
        request = build_batch_write_requests("t", [{"k": {"S": str(i)}} for i in range(5)])[0]
        send_batch_write(client, request, tries=5)
        assert client.calls == [5, 4, 3]

    def test_gives_up_with_a_clear_error(self) -> None:
        client = _ThrottlingClient(times=100)
        request = build_batch_write_requests("t", [{"k": {"S": "1"}}])[0]
        with pytest.raises(StateStoreError, match="1 items unprocessed after 3 tries"):
            send_batch_write(client, request, tries=3)
        assert len(client.calls) == 3


# -- DynamoDB: against the server -------------------------------------------------------------


def _count_calls(store: DynamoStateStore, operation: str) -> list[dict[str, Any]]:
    """Record the parameters of every ``operation`` the store's real client sends."""
    seen: list[dict[str, Any]] = []

    def hook(params: dict[str, Any], **_: Any) -> None:
        seen.append(params)

    store._client.meta.events.register(f"provide-client-params.dynamodb.{operation}", hook)
    return seen


@pytest.fixture
def dynamo_config(
    aws_env: str, dynamo_table: str, make_config: Callable[..., dict[str, Any]]
) -> Callable[..., Any]:
    """Factory: a dynamodb RunConfig on the module's table with a fresh run id."""
    return lambda **state: _dynamo_config(
        make_config, f"run-{uuid.uuid4().hex[:12]}", dynamo_table, **state
    )


class TestDynamoOnServer:
    def test_sixty_tasks_are_written_25_at_a_time_and_read_across_pages(
        self, dynamo_config: Callable[..., Any]
    ) -> None:
        store = DynamoStateStore.from_config(dynamo_config(), DynamoSettings(page_size=7))
        writes = _count_calls(store, "BatchWriteItem")
        queries = _count_calls(store, "Query")
        ids = [f"batch-{i:05d}" for i in range(60)]
        store.ensure_tasks(ids)
        assert [len(w["RequestItems"][store.table]) for w in writes] == [25, 25, 25, 25, 20]
        queries.clear()
        assert [r.task_id for r in store.tasks()] == ids
        assert len(queries) >= 60 // 7
        assert len(store.transitions()) == 60
        store.ensure_tasks(ids)
        assert len(writes) == 5  # nothing new, nothing written
        store.close()

    def test_layout_in_the_table(
        self, dynamo_config: Callable[..., Any], moto_endpoint: str
    ) -> None:
        store = DynamoStateStore.from_config(dynamo_config())
        store.ensure_tasks(["batch-00000"], items={"batch-00000": 12})
        store.succeed(store.begin_attempt("batch-00000", host="h"), "sha")
        items = _raw_client(moto_endpoint).query(
            TableName=store.table,
            KeyConditionExpression="run_id = :r",
            ExpressionAttributeValues={":r": {"S": store.run_id}},
        )["Items"]
        keys = [i["task_id"]["S"] for i in items]
        assert keys == [
            "batch-00000",
            transition_sort_key("batch-00000", 0),
            transition_sort_key("batch-00000", 1),
            transition_sort_key("batch-00000", 2),
        ]
        row = items[0]
        assert row["version"] == {"N": "2"} and row["items"] == {"N": "12"}
        assert "error_message" not in row and "error_category" not in row
        assert all(i.get("item_type") == {"S": "transition"} for i in items[1:])
        store.close()

    def test_transactions_carry_an_idempotency_token(
        self, dynamo_config: Callable[..., Any]
    ) -> None:
        # botocore fills ClientRequestToken once per call, so its retries cannot double-commit
        store = DynamoStateStore.from_config(dynamo_config())
        bodies: list[bytes] = []

        def hook(params: dict[str, Any], **_: Any) -> None:
            bodies.append(params["body"])

        store._client.meta.events.register("before-call.dynamodb.TransactWriteItems", hook)
        store.succeed(store.begin_attempt("batch-00000"), "s")
        assert len(bodies) == 3  # insert, begin, succeed
        assert all(b"ClientRequestToken" in body for body in bodies)
        store.close()

    def test_config_endpoint_overrides_the_environment(
        self, dynamo_config: Callable[..., Any], aws_env: str
    ) -> None:
        store = DynamoStateStore.from_config(dynamo_config(endpoint_url=aws_env))
        assert store._client.meta.endpoint_url == aws_env
        store.close()

    def test_create_table_is_idempotent(self, moto_endpoint: str, dynamo_table: str) -> None:
        client = _raw_client(moto_endpoint)
        assert create_table(client, dynamo_table) is False
        check_table(client, dynamo_table)

    def test_wrong_key_schema_is_reported(self, moto_endpoint: str) -> None:
        client = _raw_client(moto_endpoint)
        name = f"other-{uuid.uuid4().hex[:8]}"
        client.create_table(
            TableName=name,
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            BillingMode="PAY_PER_REQUEST",
        )
        try:
            with pytest.raises(StateStoreError, match=f"'{name}' .* has key schema"):
                check_table(client, name)
        finally:
            client.delete_table(TableName=name)


def _one_line(exc: pytest.ExceptionInfo[StateStoreError]) -> str:
    message = str(exc.value)
    assert "\n" not in message
    assert "testing" not in message  # the test credentials never appear
    return message


class TestDynamoSetupErrors:
    def test_missing_table(self, dynamo_config: Callable[..., Any]) -> None:
        config = dynamo_config()
        config = load_config({**config.raw, "state": {**config.raw["state"], "table": "nope"}})
        store = DynamoStateStore.from_config(config, configfile="cfg.yaml")
        with pytest.raises(StateStoreError) as info:
            store.tasks()
        message = _one_line(info)
        assert message == (
            "DynamoDB table 'nope' not found in region us-east-1 at endpoint "
            f"{store._client.meta.endpoint_url}: run `orchestrator init --configfile cfg.yaml` "
            "to create it"
        )
        actions = [store.check, lambda: store.get("batch-00000"), lambda: store.ensure_tasks(IDS)]
        for action in actions:
            with pytest.raises(StateStoreError, match="'nope' not found.*orchestrator init"):
                action()

    def test_unreachable_endpoint(self, dynamo_config: Callable[..., Any]) -> None:
        # the environment points at the live server; the config's endpoint must win
        config = dynamo_config(endpoint_url="http://127.0.0.1:1")
        settings = DynamoSettings(max_attempts=1, connect_timeout_s=1, read_timeout_s=1)
        store = DynamoStateStore.from_config(config, settings)
        started = time.monotonic()
        with pytest.raises(StateStoreError) as info:
            store.get("batch-00000")
        assert time.monotonic() - started < 10
        message = _one_line(info)
        assert "cannot reach DynamoDB table" in message and "http://127.0.0.1:1" in message

    def test_missing_credentials(
        self, dynamo_config: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        for name in (
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_PROFILE",
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            "AWS_WEB_IDENTITY_TOKEN_FILE",
        ):
            monkeypatch.delenv(name, raising=False)
        empty = tmp_path / "empty"
        empty.write_text("")
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
        monkeypatch.setenv("AWS_CONFIG_FILE", str(empty))
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-role probe
        store = DynamoStateStore.from_config(dynamo_config())
        with pytest.raises(StateStoreError) as info:
            store.ensure_tasks(IDS)
        assert _one_line(info).startswith("no AWS credentials found for DynamoDB table")

    def test_missing_region(
        self, dynamo_config: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        config = dynamo_config(region=None)
        empty = tmp_path / "empty"
        empty.write_text("")
        for name in ("AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("AWS_CONFIG_FILE", str(empty))
        with pytest.raises(StateStoreError, match="no AWS region"):
            make_client(config.state.region, config.state.endpoint_url)

    def test_config_without_table(self, tmp_path: Path, make_config: Callable[..., Any]) -> None:
        config = load_config(make_config(run_id="r"))
        with pytest.raises(StateStoreError, match="state.table is not set"):
            DynamoStateStore.from_config(config)
