"""Unit tests for orchestrator_ext.cost.render: the Rich table of an estimate."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

from rich.console import Console

from orchestrator_ext.config import load_config
from orchestrator_ext.cost.prices import Prices
from orchestrator_ext.cost.pricing import estimate_cost
from orchestrator_ext.cost.render import render_cost
from orchestrator_ext.cost.workload import Workload


def _text(renderable: Any) -> str:
    console = Console(file=io.StringIO(), width=160, color_system=None)
    console.print(renderable)
    return console.file.getvalue()  # type: ignore[attr-defined]


def _estimate(make_config: Callable[..., dict[str, Any]], **overrides: Any) -> Any:
    config = load_config(make_config(**overrides))
    workload = Workload(
        source="plan", items=40, batches=8, fan_in=3, batch_attempts=8, merge_attempts=4,
        other_attempts=2, tasks=14, transitions=42, core_seconds=3600.0,
        core_seconds_basis="36 s per job",
    )  # fmt: skip
    return estimate_cost(config, workload, Prices())


class TestRenderCost:
    def test_a_local_run_marks_s3_and_dynamodb_unused(self, make_config) -> None:
        out = _text(render_cost(_estimate(make_config)))
        assert "estimated cost (from the plan)" in out
        assert "S3 PUT requests (not used)" in out and "DynamoDB write units (not used)" in out
        s3_row = next(line for line in out.splitlines() if "S3 requests" in line)
        assert "n/a" in s3_row
        assert "core-hours: 36 s per job" in out

    def test_notes_are_printed_as_is_not_as_markup(self, make_config) -> None:
        # notes carry error messages (cmd_cost appends why a source was skipped)
        estimate = _estimate(make_config)
        estimate.notes.append("no state store figures ([/bold] in a path)")
        assert "no state store figures ([/bold] in a path)" in _text(render_cost(estimate))
