"""Unit tests for orchestrator_ext.faults: the seeded fault injector and the S3 throttle."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import uuid
from typing import Any

import boto3
import polars as pl
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from orchestrator_ext.batch_mode import run_batch_mode
from orchestrator_ext.config import FaultSpec, RetrySpec, load_config
from orchestrator_ext.errors import Category, PermanentError, TransientError, classify
from orchestrator_ext.faults import (
    FaultInjector,
    injector_for,
    install_s3_throttle,
    unit_hash,
)
from orchestrator_ext.item_mode import run_item_mode
from orchestrator_ext.job import JobContext
from orchestrator_ext.runner import JobCall

FAST_RETRY = RetrySpec(max_attempts=5, initial_delay_s=0.001, max_delay_s=0.005)
CTX = JobContext(run_id="r", batch_id="00002", attempt=1)


def spec(**kwargs: Any) -> FaultSpec:
    return FaultSpec(**{"enabled": True, **kwargs})


def echo(item: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    return {"id": item["id"], "x": item["id"] * 2}


def echo_batch(batch: pl.DataFrame, ctx: JobContext) -> pl.DataFrame:
    return batch.select(pl.col("id"), (pl.col("id") * 2).alias("x"))


def fired(injector: FaultInjector, ids: range) -> list[int]:
    """Ids whose first call raised a transient error."""
    return [i for i in ids if isinstance(injector.item_fault(i), TransientError)]


class TestConfig:
    def test_faults_section_is_off_by_default(self, make_config) -> None:
        config = load_config(make_config())
        assert config.faults.enabled is False
        assert injector_for(config.faults, 0, 1) is None

    def test_yaml_style_kill_batches_keys(self, make_config) -> None:
        config = load_config(make_config(faults={"enabled": True, "kill_batches": {"2": 500}}))
        assert config.faults.kill_batches == {2: 500}


class TestDeterminism:
    def test_unit_hash_is_stable_and_in_range(self) -> None:
        values = [unit_hash(7, 2, "transient", i) for i in range(1000)]
        assert values == [unit_hash(7, 2, "transient", i) for i in range(1000)]
        assert all(0 <= v < 1 for v in values)
        assert unit_hash(7, 2, "transient", 5) != unit_hash(8, 2, "transient", 5)

    def test_transient_choice_reproduces_per_seed_batch_and_id(self) -> None:
        first = fired(FaultInjector(spec(seed=7, transient_rate=0.2), 2), range(2000))
        again = fired(FaultInjector(spec(seed=7, transient_rate=0.2), "00002"), range(2000))
        assert first == again, "a rerun injects the same transient faults"
        assert 0.16 < len(first) / 2000 < 0.24
        other_seed = fired(FaultInjector(spec(seed=8, transient_rate=0.2), 2), range(2000))
        other_batch = fired(FaultInjector(spec(seed=7, transient_rate=0.2), 3), range(2000))
        assert other_seed != first and other_batch != first

    def test_string_and_int_ids_hash_alike(self) -> None:
        injector = FaultInjector(spec(seed=1, transient_rate=0.5), 0)
        assert [injector.is_transient(("item", str(i))) for i in range(50)] == [
            injector.is_transient(("item", i)) for i in map(str, range(50))
        ]


class TestInert:
    def test_disabled_injector_changes_nothing(self) -> None:
        injector = FaultInjector(
            FaultSpec(
                enabled=False,
                transient_rate=1.0,
                permanent_ids=(1,),
                permanent_batches=(0,),
                oom_batches=(0,),
                kill_batches={0: 0},
                s3_throttle_rate=1.0,
            ),
            0,
        )
        assert not injector.active
        assert injector.item_fault(1) is None
        assert injector.wrap_batch(echo_batch, "id") is echo_batch
        injector.before_step(0, 100)  # neither raises nor kills
        assert not injector.is_permanent(1)

    def test_enabled_without_faults_is_harmless(self) -> None:
        outcome = run_item_mode(
            pl.DataFrame({"id": range(20)}),
            JobCall(echo, CTX, "id", FAST_RETRY, FaultInjector(spec(seed=3), 0)),
        )
        assert outcome.dead == [] and outcome.result.height == 20


class TestItemFaults:
    def test_transient_fires_once_per_item_then_succeeds(self) -> None:
        injector = FaultInjector(spec(seed=7, transient_rate=0.3), 1)
        victims = fired(injector, range(100))
        assert victims, "some items are chosen"
        assert fired(injector, range(100)) == [], "the second call of each item succeeds"
        # A new attempt (new injector) fires again for the same items.
        assert fired(FaultInjector(spec(seed=7, transient_rate=0.3), 1, attempt=2), range(100)) == (
            victims
        )

    def test_transient_items_are_retried_and_processed(self) -> None:
        injector = FaultInjector(spec(seed=7, transient_rate=0.3), 1)
        outcome = run_item_mode(
            pl.DataFrame({"id": range(60)}), JobCall(echo, CTX, "id", FAST_RETRY, injector)
        )
        assert outcome.dead == []
        assert outcome.result["id"].to_list() == list(range(60))
        assert injector._fired, "transient faults were injected"

    def test_permanent_ids_always_fail(self) -> None:
        injector = FaultInjector(spec(permanent_ids=(17, "4242")), 0)
        for _ in range(3):
            fault = injector.item_fault(17)
            assert isinstance(fault, PermanentError) and "item 17" in str(fault)
        assert isinstance(injector.item_fault(4242), PermanentError)
        assert injector.item_fault(18) is None

    def test_permanent_ids_are_dead_lettered_transients_are_not(self) -> None:
        injector = FaultInjector(spec(seed=5, transient_rate=0.2, permanent_ids=(3, 11)), 0)
        outcome = run_item_mode(
            pl.DataFrame({"id": range(40)}), JobCall(echo, CTX, "id", FAST_RETRY, injector)
        )
        assert sorted(d["id"] for d in outcome.dead) == [3, 11]
        assert {d["category"] for d in outcome.dead} == {"permanent"}
        assert outcome.result["id"].to_list() == [i for i in range(40) if i not in (3, 11)]

    def test_permanent_batch_fails_every_item(self) -> None:
        injector = FaultInjector(spec(permanent_batches=(4,)), 4)
        outcome = run_item_mode(
            pl.DataFrame({"id": range(5)}), JobCall(echo, CTX, "id", FAST_RETRY, injector)
        )
        assert len(outcome.dead) == 5 and outcome.result.height == 0
        other = FaultInjector(spec(permanent_batches=(4,)), 5)
        assert not other.is_permanent(0)


class TestBatchFaults:
    def test_permanent_ids_fail_slices_and_bisection_isolates_them(self) -> None:
        injector = FaultInjector(spec(permanent_ids=(5, 12)), 0)
        call = injector.wrap_batch(echo_batch, "id")
        with pytest.raises(PermanentError):
            call(pl.DataFrame({"id": range(10)}), CTX)
        assert call(pl.DataFrame({"id": range(6, 12)}), CTX).height == 6
        outcome = run_batch_mode(
            pl.DataFrame({"id": range(16)}), JobCall(echo_batch, CTX, "id", FAST_RETRY, injector)
        )
        assert sorted(d["id"] for d in outcome.dead) == [5, 12]
        assert outcome.result["id"].to_list() == [i for i in range(16) if i not in (5, 12)]

    def test_permanent_batch_dead_letters_everything(self) -> None:
        injector = FaultInjector(spec(permanent_batches=(0,)), 0)
        outcome = run_batch_mode(
            pl.DataFrame({"id": range(8)}), JobCall(echo_batch, CTX, "id", FAST_RETRY, injector)
        )
        assert len(outcome.dead) == 8 and outcome.result.height == 0

    def test_transient_slice_fault_is_retried(self) -> None:
        injector = FaultInjector(spec(seed=1, transient_rate=1.0), 0)
        call = injector.wrap_batch(echo_batch, "id")
        with pytest.raises(TransientError):
            call(pl.DataFrame({"id": range(4)}), CTX)
        assert call(pl.DataFrame({"id": range(4)}), CTX).height == 4
        outcome = run_batch_mode(
            pl.DataFrame({"id": range(9)}),
            JobCall(
                echo_batch,
                CTX,
                "id",
                FAST_RETRY,
                FaultInjector(spec(seed=1, transient_rate=1.0), 0),
            ),
        )
        assert outcome.dead == [] and outcome.result.height == 9


class TestResourceFaults:
    def test_oom_on_first_attempt_only(self) -> None:
        with pytest.raises(MemoryError) as raised:
            FaultInjector(spec(oom_batches=(5,)), 5, attempt=1).before_step(0)
        assert classify(raised.value) is Category.RESOURCE
        FaultInjector(spec(oom_batches=(5,)), 5, attempt=2).before_step(0)
        FaultInjector(spec(oom_batches=(5,)), 6, attempt=1).before_step(0)

    def test_oom_aborts_item_mode(self) -> None:
        with pytest.raises(MemoryError):
            run_item_mode(
                pl.DataFrame({"id": range(3)}),
                JobCall(echo, CTX, "id", FAST_RETRY, FaultInjector(spec(oom_batches=(2,)), 2)),
            )

    @pytest.mark.parametrize(
        ("mode", "attempt", "expect_killed", "expect_done"),
        [("item", 1, True, 7), ("item", 2, False, 20), ("batch", 1, True, 5)],
    )
    def test_kill_after_n_items(
        self, mode: str, attempt: int, expect_killed: bool, expect_done: int
    ) -> None:
        # The worker SIGKILLs itself: run it in a child process. Batch mode calls slices of
        # 5 items, so it dies before the slice that would pass item 7.
        script = f"""
import polars as pl
from orchestrator_ext.config import FaultSpec
from orchestrator_ext.faults import FaultInjector
inj = FaultInjector(FaultSpec(enabled=True, kill_batches={{2: 7}}), 2, attempt={attempt})
done = 0
step = 1 if {mode!r} == "item" else 5
for position in range(0, 20, step):
    inj.before_step(position, step)
    done += step
    print(done, flush=True)
"""
        proc = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
        )
        lines = proc.stdout.split()
        assert (proc.returncode == -signal.SIGKILL) is expect_killed, proc.stderr
        assert (int(lines[-1]) if lines else 0) == expect_done


class TestS3Throttle:
    @pytest.fixture
    def bucket(self, aws_env: str) -> str:
        name = f"faults-{uuid.uuid4().hex[:12]}"
        boto3.client("s3").create_bucket(Bucket=name)
        return name

    def test_standard_retries_absorb_throttling(self, aws_env: str, bucket: str) -> None:
        client = boto3.client("s3", config=Config(retries={"mode": "standard", "max_attempts": 8}))
        hook = install_s3_throttle(client, 0.25, seed=11)
        for i in range(8):
            client.put_object(Bucket=bucket, Key=f"k{i}", Body=json.dumps({"i": i}).encode())
        bodies = [
            json.loads(client.get_object(Bucket=bucket, Key=f"k{i}")["Body"].read())["i"]
            for i in range(8)
        ]
        assert bodies == list(range(8))
        listed = client.list_objects_v2(Bucket=bucket)["KeyCount"]
        assert listed == 8
        assert hook.throttled > 0, "the hook fired"
        assert hook.calls == 17 + hook.throttled, "every throttled request was retried"

    def test_without_retries_the_throttle_surfaces_as_transient(
        self, aws_env: str, bucket: str
    ) -> None:
        client = boto3.client(
            "s3", config=Config(retries={"mode": "standard", "total_max_attempts": 1})
        )
        hook = install_s3_throttle(client, 1.0, seed=0)
        with pytest.raises(ClientError) as raised:
            client.head_bucket(Bucket=bucket)
        assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
        assert classify(raised.value) is Category.TRANSIENT
        assert (hook.calls, hook.throttled) == (1, 1)

    def test_same_seed_same_throttled_calls(self, aws_env: str, bucket: str) -> None:
        def pattern(seed: int) -> list[bool]:
            client = boto3.client("s3", config=Config(retries={"total_max_attempts": 1}))
            install_s3_throttle(client, 0.5, seed=seed)
            seen = []
            for _ in range(12):
                try:
                    client.head_bucket(Bucket=bucket)
                    seen.append(False)
                except ClientError:
                    seen.append(True)
            return seen

        assert pattern(4) == pattern(4)
        assert any(pattern(4))
