"""Unit tests for orchestrator_ext.sizing: batches sized by time, and the overhead warning."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import polars as pl
import pytest

from orchestrator_ext import sizing
from orchestrator_ext.config import MAX_ITEMS_LIMIT, BatchingSpec, RunConfig, load_config
from orchestrator_ext.errors import JobLoadError, PermanentError
from orchestrator_ext.job import JobContext
from orchestrator_ext.sizing import (
    SampleTiming,
    SizingError,
    SizingResult,
    batching_for,
    choose_max_items,
    overhead_warning,
    plan_fields,
    preview_plan,
    recorded_batching,
    render_plan_preview,
    size_by_time,
    sizing_record,
    time_sample,
)

WAIT = "orchestrator_ext.jobs.wait:wait_item"
#: Contexts the recording jobs below were called with.
SEEN: list[JobContext] = []


class FakeClock:
    """A clock that only the jobs below move: ``params.tick_s`` per item they are called on."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


CLOCK = FakeClock()


def ticking_batch(batch: pl.DataFrame, ctx: JobContext) -> pl.DataFrame:
    CLOCK.now += batch.height * ctx.params["tick_s"]
    return batch


def ticking_item(item: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    CLOCK.now += ctx.params["tick_s"]
    return item


def _ref(name: str) -> str:
    """``module:callable`` for a job of this module, however pytest imported it."""
    return f"{__name__}:{name}"


def sleepy_batch(batch: pl.DataFrame, ctx: JobContext) -> pl.DataFrame:
    """Batch mode: ``params.per_item_s`` per item plus ``params.per_call_s`` per call."""
    time.sleep(ctx.params.get("per_call_s", 0.0) + batch.height * ctx.params["per_item_s"])
    return batch


def picky_batch(batch: pl.DataFrame, ctx: JobContext) -> pl.DataFrame:
    """Batch mode: raises if the batch holds an id of ``params.bad_ids``."""
    if set(batch.get_column("id").to_list()) & set(ctx.params.get("bad_ids", [])):
        raise ValueError("a bad id")
    return batch


def picky_item(item: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Item mode: raises PermanentError for ids in ``params.bad_ids`` (all: ``"all"``)."""
    bad = ctx.params.get("bad_ids", [])
    if bad == "all" or item["id"] in bad:
        raise PermanentError(f"item {item['id']} is bad")
    return item


def oom_item(item: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    raise MemoryError("cannot allocate 64 GiB")


def recording_item(item: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    SEEN.append(ctx)
    return item


def _config(
    function: str, mode: str = "item", batching: dict[str, Any] | None = None, **job: Any
) -> RunConfig:
    return load_config(
        {
            "run_id": "r",
            "input": {"uri": "items.parquet", "format": "parquet"},
            "batching": {"target_seconds": 3} if batching is None else batching,
            "job": {"function": function, "mode": mode, **job},
        }
    )


def _items(n: int) -> pl.DataFrame:
    return pl.DataFrame({"id": list(range(n)), "value": list(range(n))})


class TestChooseMaxItems:
    @pytest.mark.parametrize(
        ("per_item", "target", "limit", "chosen"),
        [(0.001, 300, MAX_ITEMS_LIMIT, 300_000), (0.001, 300, 5000, 5000),
         (10.0, 3, 1000, 1), (0.0, 300, 777, 777), (0.3, 1, 100, 3)],
    )  # fmt: skip
    def test_target_over_time_per_item_within_bounds(
        self, per_item: float, target: float, limit: int, chosen: int
    ) -> None:
        assert choose_max_items(per_item, target, limit) == chosen


class TestTimeSampleItemMode:
    def test_a_job_of_known_time_per_item_gives_target_over_it(self) -> None:
        config = _config(WAIT, params={"wait_s": 0.01})
        result = size_by_time(config, _items(1000), budget_seconds=0.3)
        assert 0.01 <= result.seconds_per_item < 0.02
        # about target / seconds per item: 3 s of 10 ms items, sleeps overshooting a little
        assert 150 < result.max_items <= 300
        assert result.max_items == int(3 / result.seconds_per_item)
        assert 10 <= result.items_timed < 40  # stopped at the budget, not the sample's end

    def test_items_are_called_until_the_budget_is_spent(self) -> None:
        config = _config(_ref("ticking_item"), params={"tick_s": 0.1})
        CLOCK.now = 0.0
        timing = time_sample(config, _items(100), clock=CLOCK)
        assert timing.sampled_items == 15  # 1.5 s of 0.1 s items
        assert timing.seconds_per_item == pytest.approx(0.1)

    def test_workers_divide_the_time_per_item(self) -> None:
        config = _config(WAIT, params={"wait_s": 0.01}, workers=4, pool="thread")
        timing = time_sample(config, _items(30))
        assert 0.0025 <= timing.seconds_per_item < 0.006

    def test_a_small_sample_is_used_up(self) -> None:
        timing = time_sample(_config(WAIT, params={"wait_s": 0.001}), _items(5))
        assert (timing.sampled_items, timing.failed_items) == (5, 0)
        assert timing.seconds >= 0.005

    def test_the_job_gets_the_runs_params_and_workers(self) -> None:
        SEEN.clear()
        time_sample(_config(_ref("recording_item"), params={"k": 1}, workers=3), _items(2))
        assert [(c.batch_id, c.attempt, c.params, c.workers) for c in SEEN] == [
            ("partition", 1, {"k": 1}, 3)
        ] * 2

    def test_failed_items_are_counted_left_out_and_logged(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        config = _config(_ref("picky_item"), params={"bad_ids": [1, 3]})
        with caplog.at_level(logging.WARNING, logger="orchestrator_ext.sizing"):
            timing = time_sample(config, _items(10))
        assert (timing.sampled_items, timing.failed_items) == (10, 2)
        assert "2 of 10 items failed (first, item 1: PermanentError: item 1 is bad)" in caplog.text

    def test_every_item_failing_names_the_job_and_the_first_error(self) -> None:
        config = _config(_ref("picky_item"), params={"bad_ids": "all"})
        with pytest.raises(SizingError, match=r"failed on every item it was timed on \(4 of"):
            time_sample(config, _items(4))
        with pytest.raises(SizingError, match="first, item 0: PermanentError: item 0 is bad"):
            time_sample(config, _items(4))

    def test_a_memory_error_is_raised_as_it_is(self) -> None:
        with pytest.raises(MemoryError):
            time_sample(_config(_ref("oom_item")), _items(3))

    def test_a_job_that_cannot_be_imported(self) -> None:
        with pytest.raises(JobLoadError, match="no_such_module"):
            time_sample(_config("no_such_module:fn"), _items(3))

    def test_an_empty_sample(self) -> None:
        with pytest.raises(SizingError, match="no items to time"):
            time_sample(_config(WAIT), _items(0))


class TestTimeSampleBatchMode:
    def test_the_largest_call_gives_the_time_per_item(self) -> None:
        config = _config(_ref("sleepy_batch"), "batch",
                         params={"per_item_s": 0.001, "per_call_s": 0.005})  # fmt: skip
        timing = time_sample(config, _items(5000), budget_seconds=0.3)
        # slices 1, 2, 4, ...: the fixed 5 ms per call is spread over the largest slice
        assert 0.001 <= timing.seconds_per_item < 0.0015
        assert 64 <= timing.sampled_items < 1000

    def test_slices_double_until_the_budget_is_spent(self) -> None:
        config = _config(_ref("ticking_batch"), "batch", params={"tick_s": 0.01})
        CLOCK.now = 0.0
        timing = time_sample(config, _items(100_000), clock=CLOCK)
        # 1 + 2 + ... + 64 items take 1.27 s; 128 more pass the 1.5 s
        assert (timing.sampled_items, timing.failed_items) == (255, 0)
        assert timing.seconds == pytest.approx(2.55)
        assert timing.seconds_per_item == pytest.approx(0.01)

    def test_no_call_is_started_past_max_seconds(self) -> None:
        config = _config(_ref("ticking_batch"), "batch", params={"tick_s": 0.01})
        CLOCK.now = 0.0
        timing = time_sample(config, _items(100_000), budget_seconds=10, max_seconds=1.0,
                             clock=CLOCK)  # fmt: skip
        # 1 + 2 + ... + 32 items take 0.63 s; the next slice is cut to what fits in 0.37 s
        assert CLOCK.now <= 1.0 + 1e-9
        assert 63 + 30 < timing.sampled_items <= 63 + 37

    def test_a_failing_slice_is_skipped_and_slices_start_small_again(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        config = _config(_ref("picky_batch"), "batch", params={"bad_ids": [5]})
        with caplog.at_level(logging.WARNING, logger="orchestrator_ext.sizing"):
            timing = time_sample(config, _items(40))
        # slices 0, 1-2, 3-6 (fails), 7, 8-9, 10-13, 14-21, 22-37, 38-39
        assert (timing.sampled_items, timing.failed_items) == (40, 4)
        assert "first, a call on 4 items: ValueError: a bad id" in caplog.text

    def test_every_call_failing(self) -> None:
        config = _config(_ref("picky_batch"), "batch", params={"bad_ids": list(range(3))})
        with pytest.raises(SizingError, match="failed on every item"):
            time_sample(config, _items(3))


def _result(max_items: int = 2500, per_item: float = 0.12) -> SizingResult:
    return SizingResult(300, max_items, SampleTiming(14, 1, 1.56, per_item))


class TestPlanFields:
    def test_untimed_batching_keeps_the_plans_keys(self) -> None:
        assert plan_fields(BatchingSpec(max_items=7, max_bytes=100)) == {
            "max_items": 7, "max_bytes": 100, "weight_column": None,
        }  # fmt: skip

    def test_timed_batching_records_what_the_size_came_from(self) -> None:
        spec = _config(WAIT).batching
        assert plan_fields(spec, _result()) == {
            "max_items": 2500, "max_bytes": None, "weight_column": None,
            "target_seconds": 3, "max_items_limit": None, "seconds_per_item": 0.12,
            "sampled_items": 14, "failed_items": 1,
        }  # fmt: skip

    def test_a_configured_max_items_is_the_recorded_limit(self) -> None:
        spec = _config(WAIT, batching={"target_seconds": 3, "max_items": 9000}).batching
        assert plan_fields(spec, _result())["max_items_limit"] == 9000


class TestRecordedBatching:
    @pytest.fixture
    def config(self) -> RunConfig:
        return _config(WAIT, batching={"target_seconds": 3, "max_bytes": 10**6})

    @pytest.fixture
    def plan(self, config: RunConfig) -> dict[str, Any]:
        return {
            "config_sha256": config.sha256,
            "input": {"listing_sha256": "L", "files": []},
            "batching": plan_fields(config.batching, _result(max_items=1234)),
            "n_batches": 3,
        }

    def test_a_plan_of_this_config_and_input_gives_its_size(self, config, plan) -> None:
        spec, fields = recorded_batching(plan, config, "L") or (None, None)
        assert spec == BatchingSpec(max_items=1234, max_bytes=10**6, target_seconds=3)
        assert fields == plan["batching"]

    @pytest.mark.parametrize(
        "change",
        [lambda p: p.update(config_sha256="other"),
         lambda p: p["input"].update(listing_sha256="changed"),
         lambda p: p["batching"].pop("seconds_per_item"),
         lambda p: p["batching"].update(max_items=0),
         lambda p: p["batching"].update(max_items="1234"),
         lambda p: p.pop("input")],
    )  # fmt: skip
    def test_another_config_or_input_or_an_unsized_plan_gives_none(
        self, config: RunConfig, plan: dict[str, Any], change: Callable[[dict], Any]
    ) -> None:
        change(plan)
        assert recorded_batching(plan, config, "L") is None

    def test_no_plan(self, config: RunConfig) -> None:
        assert recorded_batching(None, config, "L") is None

    def test_the_sizing_record_is_enough(self, config, plan) -> None:
        record = sizing_record(plan)
        assert set(record) == {"config_sha256", "input", "batching"}
        assert recorded_batching(record, config, "L") == recorded_batching(plan, config, "L")


class TestBatchingFor:
    def test_without_target_seconds_the_job_is_not_timed(self) -> None:
        config = _config(_ref("oom_item"), batching={"max_items": 50})
        spec, fields = batching_for(config, _items(10), listing_sha256="L")
        assert spec == config.batching
        assert fields == plan_fields(config.batching)

    def test_with_target_seconds_the_job_is_timed(self) -> None:
        config = _config(WAIT, batching={"target_seconds": 1, "max_items": 60},
                         params={"wait_s": 0.001})  # fmt: skip
        spec, fields = batching_for(config, _items(5), listing_sha256="L")
        assert spec == BatchingSpec(max_items=60, target_seconds=1)  # 1 s / ~1 ms, capped
        assert fields["max_items"] == 60 and fields["max_items_limit"] == 60
        assert fields["sampled_items"] == 5

    def test_a_matching_earlier_plan_is_taken_without_timing(self) -> None:
        config = _config(_ref("oom_item"))  # timing it would raise MemoryError
        plan = {
            "config_sha256": config.sha256,
            "input": {"listing_sha256": "L"},
            "batching": plan_fields(config.batching, _result(max_items=77)),
        }
        spec, fields = batching_for(config, _items(5), listing_sha256="L", previous_plan=plan)
        assert spec.max_items == 77 and fields == plan["batching"]
        with pytest.raises(MemoryError):  # another input: timed again
            batching_for(config, _items(5), listing_sha256="M", previous_plan=plan)

    def test_the_size_is_deterministic_once_recorded(self) -> None:
        config = _config(WAIT, params={"wait_s": 0.001})
        first = batching_for(config, _items(20), listing_sha256="L")
        plan = {"config_sha256": config.sha256, "input": {"listing_sha256": "L"},
                "batching": first[1]}  # fmt: skip
        assert batching_for(config, _items(20), listing_sha256="L", previous_plan=plan) == first

    def test_at_most_sample_items_are_used(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(sizing, "SAMPLE_ITEMS", 3)
        config = _config(WAIT, params={"wait_s": 0.0})
        assert batching_for(config, _items(50), listing_sha256="L")[1]["sampled_items"] == 3

    def test_an_overhead_above_a_tenth_is_logged(self, caplog: pytest.LogCaptureFixture) -> None:
        config = _config(WAIT, batching={"target_seconds": 1}, params={"wait_s": 0.001})
        with caplog.at_level(logging.WARNING, logger="orchestrator_ext.sizing"):
            batching_for(config, _items(5), listing_sha256="L")
        assert "overhead per batch (0.5 s) is" in caplog.text


class TestOverheadWarning:
    def test_at_most_a_tenth_is_fine(self) -> None:
        assert overhead_warning(600, 5) is None
        assert overhead_warning(5, 0.5) is None

    def test_more_than_a_tenth_says_how_long_batches_should_be(self) -> None:
        line = overhead_warning(2, 0.5)
        assert line is not None and "\n" not in line
        assert line.startswith("overhead per batch (0.5 s) is 25% of a batch's expected 2 s")
        assert "make batches of at least 5 s" in line

    def test_an_overhead_that_dwarfs_the_batch(self) -> None:
        assert "is 500x a batch's" in (overhead_warning(0.01, 5) or "")
        assert "is more than a batch's expected 0 s" in (overhead_warning(0, 0.5) or "")

    def test_the_figures_of_docs_benchmarks(self, monkeypatch: pytest.MonkeyPatch) -> None:
        assert sizing.OVERHEAD_SECONDS == {"local": 0.5, "slurm": 5.0}
        monkeypatch.delenv("SLURM_JOB_ID", raising=False)
        assert sizing.overhead_here() == sizing.LOCAL_OVERHEAD_SECONDS
        monkeypatch.setenv("SLURM_JOB_ID", "42")
        assert sizing.overhead_here() == sizing.SLURM_OVERHEAD_SECONDS


class TestExpectedBatchSeconds:
    def test_from_a_plan_sized_by_time(self) -> None:
        plan = {"items": 1000, "n_batches": 4, "batching": {"seconds_per_item": 0.5}}
        assert sizing.expected_batch_seconds(plan) == 125.0

    def test_a_plan_sized_by_count_has_none(self) -> None:
        plan = {"items": 1000, "n_batches": 4, "batching": {"max_items": 250}}
        assert sizing.expected_batch_seconds(plan) is None


class TestPreviewPlan:
    def _preview(self, config: RunConfig | None = None, **given: Any) -> sizing.PlanPreview:
        facts: dict[str, Any] = {
            "source": "config", "items": 200_000, "items_basis": "counted",
            "max_items": 10_000, "size_basis": "batching.max_items",
            "seconds_per_item": 0.001, "seconds_basis": "timed",
            "overhead_seconds": 0.5, "overhead_basis": "local",
        }  # fmt: skip
        return preview_plan(config or _config(WAIT), **(facts | given))

    def test_batches_levels_and_seconds(self) -> None:
        preview = self._preview()
        assert (preview.batches, preview.levels) == (20, [20, 2, 1])
        assert preview.seconds_per_batch == pytest.approx(10.0)
        assert preview.overhead_fraction == pytest.approx(0.05)
        assert preview.warning is None

    def test_the_mean_batch_of_a_small_input(self) -> None:
        preview = self._preview(items=5000)
        assert preview.batches == 1 and preview.seconds_per_batch == pytest.approx(5.0)

    def test_given_batch_seconds_and_a_warning(self) -> None:
        preview = self._preview(batch_seconds=3.0)
        assert preview.seconds_per_batch == 3.0
        assert (preview.warning or "").startswith("overhead per batch (0.5 s) is 17%")
        assert preview.to_dict()["warning"] == preview.warning

    def test_unknown_items_or_size(self) -> None:
        preview = self._preview(items=None, seconds_per_item=None)
        assert (preview.batches, preview.levels, preview.seconds_per_batch) == (None, None, None)
        assert preview.warning is None and preview.to_dict()["overhead_fraction"] is None

    def test_max_bytes_is_noted(self) -> None:
        config = _config(WAIT, batching={"max_bytes": 1000})
        assert "max_bytes may cut more batches" in " ".join(self._preview(config).notes)

    def test_rendered(self) -> None:
        from rich.console import Console

        console = Console(record=True, width=140)
        console.print(render_plan_preview(self._preview(batch_seconds=3.0, notes=["a note"])))
        text = console.export_text()
        assert "run r: batches (from the config)" in text
        for row in ("200,000", "10,000", "20 / 2 / 1", "0.5 s (17% of a batch)", "a note"):
            assert row in text
        assert "warning: overhead per batch" in text
