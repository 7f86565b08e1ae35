"""Unit tests for orchestrator_ext.cost.request_model: stored bytes and DynamoDB units."""

from __future__ import annotations

from orchestrator_ext.cost.request_model import (
    ITEM_OVERHEAD_BYTES,
    LIST_PAGE,
    ROW_BYTES,
    TRANSITION_BYTES,
    dynamodb_units,
    stored_bytes,
)
from orchestrator_ext.cost.workload import Workload


def _workload(tasks: int = 0, transitions: int = 0, failed_attempts: int = 0) -> Workload:
    # 9 batches, fan-in 3: levels [9, 3, 1]
    return Workload(
        source="plan", items=90, batches=9, fan_in=3, batch_bytes=[100] * 9,
        tasks=tasks, transitions=transitions, failed_attempts=failed_attempts,
    )  # fmt: skip


class TestStoredBytes:
    def test_concat_keeps_a_copy_per_merge_level(self) -> None:
        # batches + results, and one copy for each of the two merge levels
        assert stored_bytes(_workload(), "concat") == 900 * (2 + 2)

    def test_reduce_tree_nodes_are_negligible(self) -> None:
        assert stored_bytes(_workload(), "reduce") == 900 * 2


class TestDynamodbUnits:
    def test_storage_counts_rows_transitions_and_overhead(self) -> None:
        units = dynamodb_units(_workload(tasks=15, transitions=45))
        assert units["items"] == 60
        assert units["storage_bytes"] == (
            15 * ROW_BYTES + 45 * TRANSITION_BYTES + 60 * ITEM_OVERHEAD_BYTES
        )

    def test_a_status_call_reads_every_row_once(self) -> None:
        small = dynamodb_units(_workload(tasks=1, transitions=1))
        assert small["read_units_per_status_call"] == 1
        large = dynamodb_units(_workload(tasks=10_000, transitions=10_000))
        assert large["read_units_per_status_call"] == 10_000 * ROW_BYTES // 4096 + 1

    def test_failed_attempts_and_the_status_query_cost_reads(self) -> None:
        units = dynamodb_units(_workload(tasks=2 * LIST_PAGE, transitions=2 * LIST_PAGE + 10))
        failed = dynamodb_units(
            _workload(tasks=2 * LIST_PAGE, transitions=2 * LIST_PAGE + 10, failed_attempts=3)
        )
        # 10 changes, one GetItem each, and two pages of task rows
        assert units["read_units"] == 10 + 2
        assert failed["read_units"] == units["read_units"] + 3
