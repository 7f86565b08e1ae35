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
from typing import Any, NoReturn

from orchestrator_ext.config import RunConfig, config_sha256, load_config
from orchestrator_ext.layout import RunLayout, children, level_sizes, root_level

__all__ = [
    "CommandArgument",
    "PlanShape",
    "RunConfig",
    "RunLayout",
    "acquire_coordinator",
    "check_plan_input",
    "config_sha256",
    "input_fingerprint",
    "job_config_file",
    "load_config",
    "load_run_config",
    "publish_resolved_config",
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


def load_run_config(raw: dict[str, Any]) -> RunConfig:
    """``load_config`` for the Snakefile: a bad config stops Snakemake with one line naming
    the key, instead of Snakemake's report of where in the Snakefile the error was raised.

    Like ``snakemake.utils.validate``, it fills the defaults into ``raw`` (Snakemake's
    ``config``) in place, so every job's ``snakemake.config`` is the validated config and
    the job's ``run_step`` need not check it again.
    """
    from orchestrator_ext.errors import ConfigError

    try:
        run = load_config(raw)
    except ConfigError as exc:
        _stop(str(exc))
    raw.update(run.raw)
    return run


def acquire_coordinator(run: RunConfig) -> None:
    """Take the run's coordinator lease (``onstart``), kept with the run (its folder, or its
    state table for a run in S3); a busy lease or an unreachable state table stops the run
    with one line instead of a traceback."""
    from orchestrator_ext.coordinator import acquire
    from orchestrator_ext.errors import OrchestratorError

    try:
        acquire(run)
    except (OrchestratorError, OSError) as exc:
        _stop(str(exc))


def publish_resolved_config(run: RunConfig) -> None:
    """Write the run's resolved config into its folder (``onstart``, after the lease), or
    stop with one line if the folder cannot be written."""
    from orchestrator_ext.errors import OrchestratorError
    from orchestrator_ext.resolved_config import publish_resolved_config as publish

    try:
        publish(run)
    except (OrchestratorError, OSError) as exc:
        _stop(f"cannot write the run's config.json: {exc}")


def release_coordinator(run: RunConfig) -> None:
    """Drop the run's coordinator lease if this process holds it (``onsuccess`` /
    ``onerror``). Best effort: a lease left behind is taken over by the next coordinator on
    this host (or broken with ``orchestrator unlock``), so a failure here only warns."""
    import sys

    from orchestrator_ext.coordinator import release

    try:
        release(run)
    except Exception as exc:  # e.g. the state table unreachable: do not mask the run's result
        print(f"warning: could not release the coordinator lease: {exc}", file=sys.stderr)


@dataclass(frozen=True)
class PlanShape:
    """The facts of a plan the DAG depends on."""

    n_batches: int
    fan_in: int
    input_sha256: str

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
    """Read ``plan.json`` once per file version; a missing or garbled plan stops the run
    with one line saying how to rebuild it (its batch folder looks complete to Snakemake,
    so it would not be rebuilt by itself)."""
    try:
        stat = os.stat(plan_path)
        return _read_plan_shape(plan_path, stat.st_mtime_ns, stat.st_size)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        problem = "is missing" if isinstance(exc, FileNotFoundError) else "is not a plan"
        _stop(
            f"{plan_path} {problem}: the partition's output is incomplete; rerun with "
            "--forcerun partition_items to partition the input again"
        )


@lru_cache(maxsize=8)
def _read_plan_shape(plan_path: str, _mtime_ns: int, _size: int) -> PlanShape:
    with open(plan_path) as handle:
        plan = json.load(handle)
    return PlanShape(
        n_batches=int(plan["n_batches"]),
        fan_in=int(plan["fan_in"]),
        input_sha256=str(plan["input"]["listing_sha256"]),
    )


def input_fingerprint(run: RunConfig) -> str:
    """The input's fingerprint now (a param of the partition: when it differs from the one
    Snakemake recorded, the params rerun trigger re-partitions); a missing or unreachable
    input stops the run with one line."""
    from orchestrator_ext.errors import OrchestratorError
    from orchestrator_ext.fingerprint import current_fingerprint

    try:
        return current_fingerprint(run.input)
    except OrchestratorError as exc:
        _stop(str(exc))


def check_plan_input(plan: PlanShape, run: RunConfig, plan_path: str) -> None:
    """Stop if the plan was made from an input other than the one there is now.

    Snakemake re-partitions on a changed input through the params rerun trigger, which
    needs its metadata (``.snakemake/metadata``) from the run that made the plan; without
    it (another working directory, a deleted ``.snakemake``) nothing would notice, and the
    old result would pass as the new input's.
    """
    if plan.input_sha256 != input_fingerprint(run):
        _stop(
            f"the input ({run.input.uri}) changed since {plan_path} was made, and Snakemake "
            "has no record of the run to notice it by (its .snakemake folder is elsewhere "
            "or gone); rerun with --forcerun partition_items"
        )


def job_config_file(run: RunConfig) -> str:
    """A file holding the run's validated config, for the command of rule process_batch.

    The config (with ``job.params``, which may hold credentials) never goes on a command
    line, where any local user can read it (``/proc/PID/cmdline``), Snakemake keeps it
    (``.snakemake/metadata``: the shell command) and prints it when a job fails; the command
    names this file instead. It is written, mode 0600, by the process that builds the job
    (the coordinator locally, the job's own Snakemake process on a cluster node), under
    ``.snakemake/orchestrator/{run_id}/`` in the working directory, once per config version.
    """
    return _job_config_file(run.run_id, run.sha256, json.dumps(run.raw, sort_keys=True))


@lru_cache(maxsize=4)
def _job_config_file(run_id: str, sha256: str, text: str) -> str:
    import tempfile

    folder = os.path.join(".snakemake", "orchestrator", run_id)
    path = os.path.join(folder, f"config-{sha256[:16]}.json")
    os.makedirs(folder, mode=0o700, exist_ok=True)
    # mkstemp creates the file with mode 0600; the rename publishes it whole.
    handle, tmp = tempfile.mkstemp(prefix=".config-", dir=folder)
    with os.fdopen(handle, "w") as out:
        out.write(text)
    os.replace(tmp, path)
    return path


def _stop(message: str) -> NoReturn:
    """End Snakemake with one line (``error: ...``) instead of a traceback."""
    import sys

    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(1) from None
