"""What the Snakefile needs at parse time, and nothing heavier.

Every cluster job re-parses the Snakefile, so this module imports no data libraries and does
no I/O beyond reading config and, once the partition checkpoint has finished, ``plan.json``
(cached per file version, since input functions ask for it once per job).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from orchestrator_ext.config import RunConfig, load_config
from orchestrator_ext.layout import RunLayout, children, level_sizes, root_level

__all__ = [
    "CommandArgument",
    "PlanShape",
    "RunConfig",
    "RunLayout",
    "acquire_coordinator",
    "load_config",
    "load_run_config",
    "read_plan_shape",
    "release_coordinator",
    "retry_transient",
]


class CommandArgument:
    """A value for a job's command line that Snakemake's params rerun trigger ignores.

    Snakemake compares only params it can represent (builtins); this one it cannot, so
    handing the whole config to a job does not make every config edit rerun every batch.
    The rule lists the params that should trigger reruns (``job``) separately.
    """

    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return self.text


def retry_transient(call: Any, patience_s: float = 300) -> Any:
    """``call()``, retried on transient errors (an S3 endpoint that went away, throttling)
    for up to ``patience_s`` seconds with exponential backoff and jitter.

    For the storage requests the coordinator makes in input functions: a failure there ends
    the whole run, and the storage plugin's own retries may give up within seconds.
    """
    from tenacity import (
        Retrying,
        retry_if_exception,
        stop_after_delay,
        wait_random_exponential,
    )

    from orchestrator_ext.errors import Category, classify

    policy = Retrying(
        retry=retry_if_exception(lambda exc: classify(exc) is Category.TRANSIENT),
        stop=stop_after_delay(patience_s),
        wait=wait_random_exponential(multiplier=0.5, max=15),
        reraise=True,
    )
    return policy(call)


def load_run_config(raw: dict) -> RunConfig:  # type: ignore[type-arg]
    """``load_config`` for the Snakefile: a bad config stops Snakemake with one line naming
    the key, instead of Snakemake's report of where in the Snakefile the error was raised.

    Like ``snakemake.utils.validate``, it fills the defaults into ``raw`` (Snakemake's
    ``config``) in place, so every job's ``snakemake.config`` is the validated config and
    the job's ``run_step`` need not check it again.
    """
    import sys

    from orchestrator_ext.errors import ConfigError

    try:
        run = load_config(raw)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    raw.update(run.raw)
    return run


def acquire_coordinator(run_id: str) -> None:
    """Take the run's coordinator lease (``onstart``); a busy lease stops the run with one
    line instead of a traceback."""
    import sys

    from orchestrator_ext.coordinator import CoordinatorBusy, acquire

    try:
        acquire(run_id)
    except CoordinatorBusy as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


def release_coordinator(run_id: str) -> None:
    """Drop the run's coordinator lease (``onsuccess`` / ``onerror``)."""
    from orchestrator_ext.coordinator import release

    release(run_id)


@dataclass(frozen=True)
class PlanShape:
    """The facts of a plan the DAG depends on."""

    n_batches: int
    fan_in: int

    @property
    def batch_ids(self) -> list[str]:
        """Zero-padded ids of all batches."""
        return [f"{i:05d}" for i in range(self.n_batches)]

    @property
    def root_level(self) -> int:
        return root_level(self.n_batches, self.fan_in)

    def inner_nodes(self) -> list[tuple[int, int]]:
        """(level, index) of every merge node below the root."""
        sizes = level_sizes(self.n_batches, self.fan_in)
        return [(level, i) for level in range(1, len(sizes) - 1) for i in range(sizes[level])]

    def children(self, level: int, index: int) -> range:
        """Child indices (in level - 1) of a node."""
        return children(level, index, self.n_batches, self.fan_in)


def read_plan_shape(plan_path: str) -> PlanShape:
    """Read ``plan.json`` once per file version."""
    stat = os.stat(plan_path)
    return _read_plan_shape(plan_path, stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=8)
def _read_plan_shape(plan_path: str, _mtime_ns: int, _size: int) -> PlanShape:
    with open(plan_path) as handle:
        plan = json.load(handle)
    return PlanShape(
        n_batches=plan["n_batches"],
        fan_in=plan["fan_in"],
    )
