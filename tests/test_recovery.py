"""Recovery paths, proven with fault injection: sub-batch chunks and resume, a batch
killed mid-way, the coordinator (snakemake) killed at several points, two attempts of one
batch racing, a result corrupted after commit, and a chaos drill with transient and
permanent item faults.

Results are compared by sha256 and item counts. Each recovery's duration is printed and
recorded as a junit property (``record_property``).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from conftest import base_config, run_snakemake, snakemake_command, write_config

from orchestrator_ext.config import load_config
from orchestrator_ext.errors import StateConflict
from orchestrator_ext.example_data import make_records
from orchestrator_ext.faults import FaultInjector
from orchestrator_ext.job import JobContext
from orchestrator_ext.layout import RunLayout
from orchestrator_ext.process import process_batch
from orchestrator_ext.state import TaskStatus
from orchestrator_ext.state.sqlite import SqliteStateStore
from orchestrator_ext.storage import read_json, sha256_file, write_json
from orchestrator_ext.verify import verify_manifest

TESTS = Path(__file__).resolve().parent
FAST_RETRY = {"max_attempts": 5, "initial_delay_s": 0.001, "max_delay_s": 0.01}
DOUBLE_ITEM = "jobs_for_tests:double_item"
DOUBLE_BATCH = "jobs_for_tests:double_batch"


def report(record_property: Callable[[str, Any], None], name: str, seconds: float) -> None:
    """Print a recovery time and record it in the junit report."""
    print(f"\n[recovery] {name}: {seconds:.2f} s")
    record_property(name, round(seconds, 3))


def _layout(config: dict[str, Any]) -> RunLayout:
    return RunLayout(f"{config['output_root']}/{config['run_id']}")


def _open_store(config: dict[str, Any]) -> SqliteStateStore:
    return SqliteStateStore(_layout(config).state_db, config["run_id"], create=False)


def _items(n: int) -> pl.DataFrame:
    return pl.DataFrame({"id": list(range(n)), "value": [i * 10 for i in range(n)]})


def _item_job(function: str = DOUBLE_ITEM, **params: Any) -> dict[str, Any]:
    return {
        "function": function,
        "mode": "item" if function == DOUBLE_ITEM else "batch",
        "combine": None,
        "finalize": None,
        "params": params,
    }


# -- in process: one batch through process_batch ---------------------------------------


class Batch:
    """Batch 00000 of a run in ``root``, processed with ``process_batch`` in this process
    (or in a child process, for faults that kill the worker)."""

    def __init__(self, root: Path, n_items: int) -> None:
        self.root = root
        self.run = root / "out" / "r"
        self.batch_file = self.run / "batches" / "batch-00000.parquet"
        self.batch_file.parent.mkdir(parents=True, exist_ok=True)
        _items(n_items).write_parquet(self.batch_file)
        self.state = self.run / "state.sqlite"

    def paths(self, run_id: str = "r") -> dict[str, str]:
        run = self.root / "out" / run_id
        return {
            "result_file": str(run / "results" / "batch-00000.parquet"),
            "dead_letter_uri": str(run / "dead_letter" / "batch-00000.parquet"),
            "record_file": str(run / "results" / "batch-00000.json"),
        }

    def config(self, run_id: str = "r", **overrides: Any) -> dict[str, Any]:
        overrides.setdefault("job", _item_job())
        overrides.setdefault("retry", FAST_RETRY)
        return base_config(self.root, run_id=run_id, merge={"mode": "concat"}, **overrides)

    def process(self, raw: dict[str, Any], store: SqliteStateStore | None = None) -> dict:
        own = store is None
        store = store or SqliteStateStore(self.root / "out" / raw["run_id"] / "state.sqlite",
                                          raw["run_id"])  # fmt: skip
        try:
            return process_batch(
                load_config(raw), store, "00000", str(self.batch_file),
                str(self.write_plan()), **self.paths(raw["run_id"]),
            )  # fmt: skip
        finally:
            if own:
                store.close()

    def write_plan(self) -> Path:
        """``plan.json`` beside the batch file, naming its sha256 as ``partition_items``
        does: ``process_batch`` checks the batch by it."""
        plan = self.batch_file.parent / "plan.json"
        write_json(
            plan, {"batches": [{"batch_id": "00000", "sha256": sha256_file(self.batch_file)}]}
        )
        return plan

    def process_in_child(self, raw: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        """Run ``process`` in a child process (a fault may SIGKILL it)."""
        script = (
            "import json, sys\n"
            "from test_recovery import Batch\n"
            "from pathlib import Path\n"
            "batch = Batch.__new__(Batch)\n"
            "batch.root = Path(sys.argv[1])\n"
            "batch.batch_file = Path(sys.argv[2])\n"
            "batch.process(json.loads(sys.argv[3]))\n"
        )
        env = {**os.environ, "PYTHONPATH": str(TESTS)}
        return subprocess.run(
            [sys.executable, "-c", script, str(self.root), str(self.batch_file), json.dumps(raw)],
            capture_output=True, text=True, timeout=120, env=env, cwd=TESTS,
        )  # fmt: skip

    def result_sha(self, run_id: str = "r") -> str:
        return sha256_file(self.paths(run_id)["result_file"])

    def chunk_folder(self, run_id: str = "r") -> Path:
        return Path(RunLayout(str(self.root / "out" / run_id)).chunks("00000"))


@pytest.fixture
def jobs_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``jobs_for_tests`` importable by Snakemake's job processes."""
    monkeypatch.setenv("PYTHONPATH", str(TESTS))


class TestChunksInProcess:
    def test_chunked_batch_is_byte_identical_and_cleans_up(self, tmp_path: Path) -> None:
        batch = Batch(tmp_path, 120)
        plain = batch.process(batch.config("plain"))
        record = batch.process(batch.config(chunks={"every_items": 25}))
        assert record["sha256"] == plain["sha256"] == batch.result_sha()
        assert record["chunks"] == {"count": 5, "items_by_attempt": {"1": 120}}
        assert "chunks" not in plain
        assert not batch.chunk_folder().exists(), "chunks are removed after the commit"
        store = SqliteStateStore(batch.state, "r")
        assert store.get("batch-00000").items_done == 120
        store.close()

    def test_batch_mode_slices_and_bisection(self, tmp_path: Path) -> None:
        batch = Batch(tmp_path, 100)
        faults = {"enabled": True, "permanent_ids": [7, 61, 62]}
        common = {"job": _item_job(DOUBLE_BATCH), "tolerance": {"max_dead_letter_fraction": 0.1}}
        plain = batch.process(batch.config("plain", faults=faults, **common))
        record = batch.process(batch.config(chunks={"every_items": 30}, faults=faults, **common))
        assert record["sha256"] == plain["sha256"]
        assert record["chunks"]["count"] == 4
        dead = pl.read_parquet(batch.paths()["dead_letter_uri"])
        assert dead["id"].to_list() == [7, 61, 62]

    def test_time_based_chunks(self, tmp_path: Path) -> None:
        batch = Batch(tmp_path, 12)
        plain = batch.process(batch.config("plain"))
        record = batch.process(batch.config(chunks={"every_seconds": 0}))
        assert record["chunks"]["count"] == 12, "every_seconds 0: one item per chunk"
        assert record["sha256"] == plain["sha256"]

    def test_killed_attempt_is_resumed_from_its_last_chunk(
        self, tmp_path: Path, record_property
    ) -> None:
        batch = Batch(tmp_path, 100)
        plain = batch.process(batch.config("plain"))
        raw = batch.config(
            chunks={"every_items": 20}, faults={"enabled": True, "kill_batches": {0: 70}}
        )
        child = batch.process_in_child(raw)
        assert child.returncode == -signal.SIGKILL, child.stderr[-3000:]
        index = read_json(batch.chunk_folder() / "index.json")
        assert [(c["start"], c["end"], c["attempt"]) for c in index["chunks"]] == [
            (0, 20, 1), (20, 40, 1), (40, 60, 1),
        ]  # fmt: skip

        started = time.monotonic()
        record = batch.process(raw)  # attempt 2: no kill, resumes at item 60
        report(record_property, "in-process resume after SIGKILL", time.monotonic() - started)

        assert record["sha256"] == plain["sha256"] == batch.result_sha()
        assert record["attempts"] == 2
        assert record["chunks"]["items_by_attempt"] == {"1": 60, "2": 40}
        store = SqliteStateStore(batch.state, "r")
        log = store.transitions("batch-00000")
        store.close()
        assert [(t.to_status, t.attempt) for t in log] == [
            ("PENDING", 0), ("RUNNING", 1), ("RUNNING", 2), ("RUNNING", 2), ("SUCCEEDED", 2),
        ]  # fmt: skip
        assert log[3].detail == (
            "resumed at item 60 of 100 from 3 persisted chunk(s) (attempt 1: 60)"
        )

    def test_chunks_of_a_run_in_s3_live_in_s3(self, tmp_path: Path, aws_env: str) -> None:
        """A run in S3 keeps its chunks in S3, not beside the storage plugin's local copy:
        an attempt on another node resumes from them; the commit removes them."""
        import uuid

        from orchestrator_ext.s3 import make_s3_client

        client = make_s3_client()
        bucket = f"chunks-{uuid.uuid4().hex[:10]}"
        client.create_bucket(Bucket=bucket)
        batch = Batch(tmp_path, 100)
        plain = batch.process(batch.config("plain"))
        raw = batch.config(
            chunks={"every_items": 20}, faults={"enabled": True, "kill_batches": {0: 70}},
            output_root=f"s3://{bucket}/p", state={"backend": "dynamodb", "table": "t"},
        )  # fmt: skip
        assert batch.process_in_child(raw).returncode == -signal.SIGKILL

        def chunk_keys() -> list[str]:
            listed = client.list_objects_v2(Bucket=bucket, Prefix="p/r/chunks/batch-00000/")
            return sorted(o["Key"].rsplit("/", 1)[-1] for o in listed.get("Contents", []))

        assert chunk_keys() == [
            "chunk-00000.dead.parquet", "chunk-00000.parquet", "chunk-00001.dead.parquet",
            "chunk-00001.parquet", "chunk-00002.dead.parquet", "chunk-00002.parquet",
            "index.json",
        ]  # fmt: skip
        assert not batch.chunk_folder().exists(), "nothing of the chunks on local disk"
        record = batch.process(raw)
        assert record["sha256"] == plain["sha256"] == batch.result_sha()
        assert record["chunks"]["items_by_attempt"] == {"1": 60, "2": 40}
        assert chunk_keys() == [], "chunks are removed after the commit"

    def test_tampered_chunk_and_the_ones_after_it_are_redone(self, tmp_path: Path) -> None:
        batch = Batch(tmp_path, 100)
        plain = batch.process(batch.config("plain"))
        raw = batch.config(
            chunks={"every_items": 20}, faults={"enabled": True, "kill_batches": {0: 70}}
        )
        assert batch.process_in_child(raw).returncode == -signal.SIGKILL
        folder = batch.chunk_folder()
        # Chunk 1 replaced by other valid Parquet: chunks 1 and 2 are redone, chunk 0 kept.
        (folder / "chunk-00001.parquet").write_bytes((folder / "chunk-00002.parquet").read_bytes())
        record = batch.process(raw)
        assert record["sha256"] == plain["sha256"]
        assert record["chunks"]["items_by_attempt"] == {"1": 20, "2": 80}

    def test_chunks_of_another_job_config_are_not_reused(self, tmp_path: Path) -> None:
        batch = Batch(tmp_path, 100)
        plain = batch.process(batch.config("plain"))
        raw = batch.config(
            chunks={"every_items": 20}, faults={"enabled": True, "kill_batches": {0: 30}}
        )
        assert batch.process_in_child(raw).returncode == -signal.SIGKILL
        assert (batch.chunk_folder() / "chunk-00000.parquet").exists()
        changed = {**raw, "job": {**raw["job"], "params": {"bad_ids": []}}}
        record = batch.process(changed)
        assert record["chunks"]["items_by_attempt"] == {"2": 100}
        assert record["sha256"] == plain["sha256"]


# -- two attempts of one batch racing -----------------------------------------------------

GATES: dict[int, threading.Event] = {}


def gated_item(item: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Item job that waits until the test opens the gate of its attempt."""
    if not GATES[ctx.attempt].wait(timeout=60):
        raise TimeoutError(f"gate of attempt {ctx.attempt} never opened")
    return {"id": item["id"], "doubled": item["value"] * 2}


class TestRacingAttempts:
    @pytest.mark.parametrize("chunks", [False, True], ids=["plain", "chunks"])
    @pytest.mark.parametrize("first", [1, 2], ids=["older-finishes-first", "newer-finishes-first"])
    def test_exactly_one_attempt_commits(self, tmp_path: Path, chunks: bool, first: int):
        batch = Batch(tmp_path, 20)
        raw = batch.config(
            job={**_item_job(), "function": f"{__name__}:gated_item"},
            **({"chunks": {"every_items": 5}} if chunks else {}),
        )
        GATES.clear()
        GATES.update({1: threading.Event(), 2: threading.Event()})
        outcomes: dict[int, Any] = {}

        def attempt(n: int) -> None:
            store = SqliteStateStore(batch.state, "r")  # each worker has its own connection
            try:
                outcomes[n] = batch.process(raw, store)
            except Exception as exc:  # noqa: BLE001 - the outcome is what the test checks
                outcomes[n] = exc
            finally:
                store.close()

        watcher = SqliteStateStore(batch.state, "r")

        def wait_attempt(n: int) -> None:
            deadline = time.monotonic() + 30
            while (record := watcher.get("batch-00000")) is None or record.attempt < n:
                assert time.monotonic() < deadline, "attempt never started"
                time.sleep(0.01)

        threads = {n: threading.Thread(target=attempt, args=(n,)) for n in (1, 2)}
        threads[1].start()
        wait_attempt(1)
        threads[2].start()
        wait_attempt(2)
        second = 2 if first == 1 else 1
        GATES[first].set()
        threads[first].join(timeout=60)
        GATES[second].set()
        threads[second].join(timeout=60)

        winner, loser = outcomes[2], outcomes[1]
        assert isinstance(loser, StateConflict), loser
        assert "attempt 1 lost the race" in str(loser)
        assert isinstance(winner, dict), winner
        state = watcher.get("batch-00000")
        log = watcher.transitions("batch-00000")
        watcher.close()
        assert state.status is TaskStatus.SUCCEEDED and state.attempt == 2
        assert [t.to_status for t in log].count("SUCCEEDED") == 1
        result = Path(batch.paths()["result_file"])
        assert sha256_file(result) == winner["sha256"] == state.output_sha256
        assert read_json(batch.paths()["record_file"]) == winner
        assert pl.read_parquet(result)["id"].to_list() == list(range(20))
        leftovers = [p.name for p in result.parent.iterdir() if p.name.endswith(".tmp")]
        assert leftovers == []


# -- end to end, with the local profile ----------------------------------------------------


def _prepare_items(tmp_path: Path, config: dict[str, Any], frame: pl.DataFrame) -> Path:
    frame.write_parquet(tmp_path / "items.parquet")
    return write_config(tmp_path / f"{config['run_id']}.yaml", config)


def _manifest(config: dict[str, Any]) -> dict[str, Any]:
    return read_json(_layout(config).manifest)


def _assert_conserved(config: dict[str, Any], n_items: int) -> dict[str, Any]:
    manifest = _manifest(config)
    assert manifest["items_in"] == n_items
    assert manifest["items_processed"] + manifest["items_dead_lettered"] == n_items
    assert verify_manifest(_layout(config).manifest) == []
    return manifest


@pytest.mark.workflow
class TestKilledBatch:
    def test_batch_killed_midway_resumes_and_matches_an_undisturbed_run(
        self, tmp_path: Path, jobs_on_path: None, record_property
    ) -> None:
        common = {
            "batching": {"max_items": 400},
            "job": _item_job(),
            "merge": {"fan_in": 2, "mode": "concat"},
        }
        calm = base_config(tmp_path, run_id="calm", **common)
        killed = base_config(
            tmp_path,
            run_id="killed",
            chunks={"every_items": 50},
            faults={"enabled": True, "kill_batches": {1: 150}},
            **common,
        )
        _prepare_items(tmp_path, calm, _items(800))
        started = time.monotonic()
        run_snakemake(tmp_path, tmp_path / "calm.yaml")
        calm_s = time.monotonic() - started
        started = time.monotonic()
        run_snakemake(tmp_path, write_config(tmp_path / "killed.yaml", killed))
        killed_s = time.monotonic() - started

        layout = _layout(killed)
        assert sha256_file(layout.final) == sha256_file(_layout(calm).final)
        manifest = _assert_conserved(killed, 800)
        assert manifest["items_dead_lettered"] == 0
        record = read_json(layout.result_record(1))
        assert record["attempts"] == 2
        assert record["chunks"]["items_by_attempt"] == {"1": 150, "2": 250}
        assert not Path(layout.run_dir, "chunks", "batch-00001").exists()

        store = _open_store(killed)
        log = store.transitions("batch-00001")
        assert store.get("batch-00000").attempt == 1
        store.close()
        assert [(t.from_status, t.to_status, t.attempt) for t in log] == [
            (None, "PENDING", 0),
            ("PENDING", "RUNNING", 1),
            ("RUNNING", "FAILED", 1),  # SIGKILLed: recorded by the executor, not the job
            ("FAILED", "RUNNING", 2),
            ("RUNNING", "RUNNING", 2),  # attempt 2 resumed from attempt 1's chunks
            ("RUNNING", "SUCCEEDED", 2),
        ]
        assert "SIGKILL" in log[2].detail and log[2].detail.startswith("resource: ")
        assert "resumed at item 150 of 400" in log[4].detail
        assert "attempt 1: 150" in log[4].detail
        report(record_property, "killed batch: whole run", killed_s)
        report(record_property, "killed batch: undisturbed run", calm_s)
        report(record_property, "killed batch: resumed attempt 2", record["duration_s"])
        at = [datetime.fromisoformat(t.at) for t in log]
        report(
            record_property,
            "killed batch: attempt 1 start to attempt 2 commit",
            (at[4] - at[1]).total_seconds(),
        )


# The coordinator-kill runs share one undisturbed run of the same input and config.
COORD_ITEMS = 600


def _coordinator_config(root: Path) -> dict[str, Any]:
    return base_config(root, batching={"max_items": 100}, merge={"fan_in": 3, "mode": "reduce"})


@pytest.fixture(scope="module")
def undisturbed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("undisturbed")
    config = _coordinator_config(root)
    configfile = _prepare_items(root, config, make_records(COORD_ITEMS, seed=3))
    started = time.monotonic()
    run_snakemake(root, configfile)
    return {
        "sha256": sha256_file(_layout(config).final),
        "seconds": time.monotonic() - started,
        "manifest": _manifest(config),
    }


KILL_POINTS = {
    # name: files (globs under the run folder) whose appearance triggers the kill
    "after-partition": "batches/plan.json",
    "after-3-batch-results": "results/batch-*.json",
    "during-merges": "merge/L1/part-*.json",
}


def _matches(run_dir: Path, pattern: str) -> int:
    return len(list(run_dir.glob(pattern)))


@pytest.mark.workflow
class TestCoordinatorKill:
    @pytest.mark.parametrize("kill_point", list(KILL_POINTS))
    def test_rerun_after_sigkill_is_byte_identical(
        self, tmp_path: Path, undisturbed: dict[str, Any], kill_point: str, record_property
    ) -> None:
        config = _coordinator_config(tmp_path)
        configfile = _prepare_items(tmp_path, config, make_records(COORD_ITEMS, seed=3))
        run_dir = Path(_layout(config).run_dir)
        pattern = KILL_POINTS[kill_point]
        needed = 3 if kill_point == "after-3-batch-results" else 1

        log = open(tmp_path / "killed-run.log", "w")  # noqa: SIM115 - held by the child
        started = time.monotonic()
        coordinator = subprocess.Popen(
            snakemake_command(tmp_path, configfile), cwd=tmp_path, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            while _matches(run_dir, pattern) < needed:
                assert coordinator.poll() is None, "snakemake ended before the kill point"
                assert time.monotonic() - started < 300, "kill point never reached"
                time.sleep(0.02)
            os.killpg(coordinator.pid, signal.SIGKILL)  # snakemake and its running jobs
        finally:
            coordinator.wait(timeout=60)
            log.close()
        killed_at = time.monotonic() - started
        assert not Path(_layout(config).final).exists(), "killed before the end"

        recovery_started = time.monotonic()
        # One plain rerun must finish: the dead coordinator's lease is recognised as stale
        # (its pid is gone) and taken over; no --unlock, no second try.
        rerun = run_snakemake(tmp_path, configfile, "--rerun-incomplete")
        assert "is gone; taking over" in rerun.stdout + rerun.stderr
        recovery = time.monotonic() - recovery_started

        assert sha256_file(_layout(config).final) == undisturbed["sha256"]
        manifest = _assert_conserved(config, COORD_ITEMS)
        assert manifest["items_processed"] == undisturbed["manifest"]["items_processed"]
        report(record_property, f"coordinator kill {kill_point}: killed after", killed_at)
        report(record_property, f"coordinator kill {kill_point}: rerun to success", recovery)
        report(record_property, "undisturbed run", undisturbed["seconds"])


@pytest.mark.workflow
class TestCorruptedResult:
    def test_corruption_is_named_and_a_rerun_regenerates_it(
        self, tmp_path: Path, record_property
    ) -> None:
        config = base_config(tmp_path, merge={"fan_in": 2, "mode": "reduce"})
        configfile = _prepare_items(tmp_path, config, make_records(300, seed=3))
        run_snakemake(tmp_path, configfile)
        layout = _layout(config)
        original = sha256_file(layout.final)
        recorded = read_json(layout.result_record(1))["sha256"]

        tampered = Path(layout.result(1))
        tampered.write_bytes(Path(layout.result(2)).read_bytes())  # valid Parquet, wrong bytes
        failed = run_snakemake(tmp_path, configfile, check=False)
        output = failed.stdout + failed.stderr
        assert failed.returncode != 0
        assert "checksum mismatch" in output and "batch-00001.parquet" in output
        assert "Traceback" not in output

        tampered.unlink()
        started = time.monotonic()
        run_snakemake(tmp_path, configfile)
        report(record_property, "corrupted result: regenerate", time.monotonic() - started)
        assert sha256_file(tampered) == recorded
        assert sha256_file(layout.final) == original
        _assert_conserved(config, 300)


@pytest.mark.workflow
class TestFaultsDrill:
    def test_transient_and_permanent_item_faults(
        self, tmp_path: Path, jobs_on_path: None, record_property
    ) -> None:
        permanent = [17, 42, 150]
        config = base_config(
            tmp_path,
            batching={"max_items": 100},
            job=_item_job(),
            merge={"fan_in": 2, "mode": "concat"},
            retry=FAST_RETRY,
            tolerance={"max_dead_letter_fraction": 0.05},
            faults={
                "enabled": True,
                "seed": 7,
                "transient_rate": 0.2,
                "permanent_ids": permanent,
                "oom_batches": [1],
            },
        )
        configfile = _prepare_items(tmp_path, config, _items(200))
        started = time.monotonic()
        run_snakemake(tmp_path, configfile)
        report(record_property, "faults drill: run", time.monotonic() - started)

        layout = _layout(config)
        manifest = _assert_conserved(config, 200)
        assert (manifest["items_processed"], manifest["items_dead_lettered"]) == (197, 3)
        assert manifest["dead_letter"]["by_category"] == {"permanent": 3}
        dead = pl.concat([pl.read_parquet(layout.dead_letter(b)) for b in (0, 1)])
        assert sorted(dead["id"].to_list()) == permanent
        final_ids = set(pl.read_parquet(layout.final)["id"].to_list())
        assert final_ids == set(range(200)) - set(permanent)

        spec = load_config(config).faults
        transient = [
            i for i in range(200)
            if i not in permanent
            and FaultInjector(spec, i // 100).is_transient(("item", str(i)))
        ]  # fmt: skip
        assert 20 < len(transient) < 60 and set(transient) <= final_ids
        logs = "".join(Path(layout.log("process_batch", f"{b:05d}")).read_text() for b in (0, 1))
        # Each transient item is set aside and retried in a round after the pass: the round's
        # log line counts them (round 1 of each batch attempt that reached its end).
        retried = [int(n) for n in re.findall(r"(\d+) items failed transiently", logs)]
        assert sum(retried) == len(transient), (retried, len(transient))

        store = _open_store(config)
        batch1 = store.transitions("batch-00001")
        store.close()
        assert [(t.to_status, t.attempt) for t in batch1][1:] == [
            ("RUNNING", 1), ("FAILED", 1), ("RUNNING", 2), ("SUCCEEDED", 2),
        ]  # fmt: skip
        assert batch1[2].detail.startswith("resource: MemoryError")
