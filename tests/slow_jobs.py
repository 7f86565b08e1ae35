"""Job functions that take their time, for recovery tests that must catch a batch while it
runs (``slow_jobs:<callable>`` in a config; the test puts ``tests/`` on ``PYTHONPATH``, which
``sbatch --export=ALL`` passes on to Slurm jobs).

The result never depends on the delay, so a run with ``sleep_s: 0`` is the undisturbed
reference of a slow one.
"""

from __future__ import annotations

import time
from typing import Any

from orchestrator_ext.job import JobContext


def slow_double(item: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Item mode: ``{id, doubled}`` after sleeping ``params.sleep_s`` seconds (default 0)."""
    delay = float(ctx.params.get("sleep_s", 0))
    if delay > 0:
        time.sleep(delay)
    return {"id": item["id"], "doubled": item["value"] * 2}


def slow_double_job(sleep_s: float = 0) -> dict[str, Any]:
    """The ``job:`` config of ``slow_double`` (item mode, concat, no combine)."""
    return {
        "function": "slow_jobs:slow_double",
        "mode": "item",
        "combine": None,
        "finalize": None,
        "params": {"sleep_s": sleep_s},
    }
