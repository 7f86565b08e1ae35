"""An S3 endpoint that disappears for 15 s mid-run: the run completes.

moto keeps its state in memory, so the endpoint is not stopped: a small TCP proxy in front
of it is. Every S3 request of the run (the storage plugin in Snakemake and in its jobs, and
the package's own S3 client) goes through the proxy; DynamoDB (task state) talks to moto
directly. When plan.json is in the bucket (the partition job is still uploading its batch
files), or once every batch file is there (batches are being processed), the proxy resets
every open connection and refuses new ones for 15 s, then listens again. The run must
finish with a final result byte-identical (sha256) to an undisturbed run and every item
accounted for.

What makes it survive: the profiles' ``storage-s3-retries: 10``. The storage plugin's
requests in Snakemake's own process (uploads of finished jobs' outputs, existence and
mtime checks, downloads of inputs) are retried only by botocore, and a failure there ends
the whole run: Snakemake's job retries do not apply. The plugin's default of 5 attempts
gave up within seconds at both outage points.

Also here: ``make_s3_client(faults=...)`` wires the ``s3_throttle_rate`` fault.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import signal
import socket
import struct
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import polars as pl
import pytest
from botocore.exceptions import ClientError
from conftest import (
    ORCHESTRATOR,
    base_config,
    run_snakemake,
    set_storage_env,
    snakemake_command,
    write_config,
)
from slow_jobs import slow_double_job

from orchestrator_ext import s3
from orchestrator_ext.config import FaultSpec
from orchestrator_ext.errors import Category, classify
from orchestrator_ext.layout import RunLayout
from orchestrator_ext.state.dynamodb import create_table, make_client
from orchestrator_ext.storage import sha256_file

pytestmark = pytest.mark.workflow

TESTS = Path(__file__).resolve().parent
N_ITEMS = 300
BATCH_SIZE = 50  # 6 batches
SLEEP_S = 0.1  # per item: a batch works for about 5 s, the run for well over 25 s
OUTAGE_S = 15


def report(record_property: Callable[[str, Any], None], name: str, seconds: float) -> None:
    print(f"\n[recovery] {name}: {seconds:.2f} s")
    record_property(name, round(seconds, 3))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class TcpProxy:
    """Forwards 127.0.0.1:``port`` to ``target``. ``stop()`` resets every open connection
    and closes the listening socket (new connections are refused); ``start()`` listens on
    the same port again."""

    def __init__(self, target: tuple[str, int], port: int | None = None) -> None:
        self.target = target
        self.port = port or _free_port()
        self.connections = 0
        self._listener: socket.socket | None = None
        self._accepting: threading.Thread | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        listener.settimeout(0.1)
        self._listener = listener
        self._accepting = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self._accepting.start()

    def stop(self) -> int:
        """Refuse new connections and reset the open ones; returns how many were open."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        if self._accepting is not None:
            self._accepting.join(timeout=5)
        with self._lock:
            open_now, self._open = self._open, set()
        for sock in open_now:
            # Linger 0: the close sends RST, the client sees the connection die mid-request.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes the pump blocked in recv
            sock.close()
        return len(open_now) // 2

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            client.settimeout(None)
            with self._lock:
                self._open |= {client, upstream}
                self.connections += 1
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
            return
        except OSError:
            pass
        with self._lock:
            reset_by_stop = src not in self._open
        if not reset_by_stop:  # one side failed: end the other side too
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def proxy(moto_endpoint: str) -> Iterator[TcpProxy]:
    parts = urlsplit(moto_endpoint)
    proxy = TcpProxy((parts.hostname or "127.0.0.1", parts.port or 80))
    proxy.start()
    yield proxy
    proxy.stop()


@pytest.fixture
def s3_via_proxy(moto_endpoint: str, proxy: TcpProxy, monkeypatch: pytest.MonkeyPatch) -> TcpProxy:
    """S3 settings as a user sets them (environment variables), with S3 behind the proxy and
    DynamoDB on moto directly; ``slow_jobs`` importable in the jobs."""
    set_storage_env(monkeypatch, moto_endpoint, proxy.url)
    monkeypatch.setenv("PYTHONPATH", str(TESTS))
    return proxy


def _items() -> pl.DataFrame:
    return pl.DataFrame({"id": list(range(N_ITEMS)), "value": [i * 10 for i in range(N_ITEMS)]})


def _config(root: Path, **overrides: Any) -> dict[str, Any]:
    return base_config(
        root,
        batching={"max_items": BATCH_SIZE},
        job=slow_double_job(SLEEP_S),
        merge={"fan_in": 3, "mode": "concat"},
        **overrides,
    )


@pytest.fixture(scope="module")
def undisturbed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The reference: the same items and job with local files, SQLite and no delay."""
    root = tmp_path_factory.mktemp("undisturbed")
    _items().write_parquet(root / "items.parquet")
    config = _config(root, run_id="calm")
    config["job"]["params"] = {"sleep_s": 0}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", str(TESTS))
        run_snakemake(root, write_config(root / "calm.yaml", config))
    return {"sha256": sha256_file(RunLayout(str(root / "out" / "calm")).final)}


#: When S3 goes away: as soon as plan.json is in the bucket, or once every batch file is.
OUTAGE_POINTS = ["during-partition-upload", "during-batches"]


class TestS3Outage:
    @pytest.mark.parametrize("point", OUTAGE_POINTS)
    def test_run_survives_a_15_s_s3_outage(
        self, tmp_path: Path, moto_endpoint: str, s3_via_proxy: TcpProxy, undisturbed,
        point: str, record_property,
    ) -> None:  # fmt: skip
        proxy = s3_via_proxy
        direct = s3.make_s3_client(moto_endpoint)  # the test's own view, never interrupted
        bucket = f"orchestrator-outage-{uuid.uuid4().hex[:10]}"
        direct.create_bucket(Bucket=bucket)
        _items().write_parquet(tmp_path / "items.parquet")
        direct.upload_file(str(tmp_path / "items.parquet"), bucket, "input/items.parquet")
        table = f"orchestrator-outage-{uuid.uuid4().hex[:10]}"
        create_table(make_client(), table)
        config = _config(
            tmp_path,
            run_id="outage",
            output_root=f"s3://{bucket}/runs",
            input={"uri": f"s3://{bucket}/input/items.parquet", "format": "parquet"},
            state={"backend": "dynamodb", "table": table},
        )
        layout = RunLayout(f"s3://{bucket}/runs/outage")
        configfile = write_config(tmp_path / "outage.yaml", config)

        def outage_point_reached() -> bool:
            if not _exists(direct, layout.plan):
                return False
            if point == "during-partition-upload":
                return True
            n_batches = json.loads(s3.read_bytes(direct, layout.plan))["n_batches"]
            return all(_exists(direct, layout.batch(b)) for b in range(n_batches))

        log_path = tmp_path / "snakemake.log"
        started = time.monotonic()
        with open(log_path, "w") as log:
            run = subprocess.Popen(
                snakemake_command(tmp_path, configfile), cwd=tmp_path, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
            try:
                while not outage_point_reached():
                    assert run.poll() is None, log_path.read_text()[-4000:]
                    assert time.monotonic() - started < 120, "partition never finished"
                    time.sleep(0.05)
                outage_at = time.monotonic()
                dropped = proxy.stop()
                time.sleep(OUTAGE_S)
                assert run.poll() is None, "the run must still be going when S3 comes back"
                proxy.start()
                restored_at = time.monotonic()
                returncode = run.wait(timeout=180)
            finally:
                if run.poll() is None:  # only on failure: stop our snakemake and its jobs
                    os.killpg(run.pid, signal.SIGKILL)
                    run.wait(timeout=30)
        finished_at = time.monotonic()
        output = log_path.read_text()
        assert returncode == 0, output[-8000:]
        print(
            f"\n[outage] {point}: S3 gone {outage_at - started:.1f} s into the run, "
            f"{dropped} open connection(s) reset"
        )

        final_sha = s3.sha256_object(direct, layout.final)
        manifest = json.loads(s3.read_bytes(direct, layout.manifest))
        assert final_sha == manifest["final"]["sha256"] == undisturbed["sha256"]
        assert manifest["items_in"] == N_ITEMS
        assert (manifest["items_processed"], manifest["items_dead_lettered"]) == (N_ITEMS, 0)
        assert sorted(pl.read_parquet(io.BytesIO(s3.read_bytes(direct, layout.final)))["id"]) == (
            list(range(N_ITEMS))
        )
        verify = subprocess.run(
            [ORCHESTRATOR, "manifest", "verify", "--configfile", str(configfile)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert verify.returncode == 0, verify.stdout + verify.stderr

        report(record_property, f"s3 outage {point}: whole run", finished_at - started)
        report(record_property, f"s3 outage {point}: endpoint back to run completion",
               finished_at - restored_at)  # fmt: skip
        report(record_property, f"s3 outage {point}: outage start to run completion",
               finished_at - outage_at)  # fmt: skip


def _exists(client: Any, uri: str) -> bool:
    bucket, key = s3.split_s3_uri(uri)
    listed = client.list_objects_v2(Bucket=bucket, Prefix=key).get("Contents", [])
    return any(o["Key"] == key for o in listed)


class TestS3ThrottleFault:
    """``faults.s3_throttle_rate`` on the package's own client: botocore's retries absorb
    the throttling; with retries exhausted it surfaces as a transient error."""

    def test_throttled_requests_are_retried(
        self, moto_endpoint: str, aws_env: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        plain = s3.make_s3_client(moto_endpoint)
        bucket = f"orchestrator-throttle-{uuid.uuid4().hex[:10]}"
        plain.create_bucket(Bucket=bucket)
        faults = FaultSpec(enabled=True, seed=3, s3_throttle_rate=0.3)
        client = s3.make_s3_client(moto_endpoint, faults=faults, max_attempts=10)
        with caplog.at_level(logging.INFO, logger="orchestrator_ext.faults"):
            for i in range(20):
                s3.put_bytes(client, f"s3://{bucket}/k{i:02d}", b"x" * i)
            listed = [o.size for o in s3.list_objects(client, bucket)]
        assert listed == list(range(20))
        throttled = [r for r in caplog.records if "fault injection: throttling" in r.message]
        assert 3 <= len(throttled) <= 15, len(throttled)

    def test_exhausted_retries_surface_as_transient(self, moto_endpoint: str, aws_env: str):
        faults = FaultSpec(enabled=True, s3_throttle_rate=1.0)
        client = s3.make_s3_client(moto_endpoint, faults=faults, max_attempts=2)
        with pytest.raises(ClientError) as raised:
            client.list_buckets()
        assert raised.value.response["Error"]["Code"] == "SlowDown"
        assert classify(raised.value) is Category.TRANSIENT

    def test_disabled_or_zero_rate_installs_nothing(self, moto_endpoint: str, aws_env: str):
        for faults in (
            FaultSpec(enabled=False, s3_throttle_rate=1.0),
            FaultSpec(enabled=True, s3_throttle_rate=0.0),
            None,
        ):
            s3.make_s3_client(moto_endpoint, faults=faults, max_attempts=1).list_buckets()
