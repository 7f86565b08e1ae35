"""Where a run's files live and how the merge tree is shaped. Pure functions, no I/O.

A run's files, all under ``{output_root}/{run_id}/``::

    batches/plan.json                 the partition plan (batch sizes and checksums)
    batches/batch-NNNNN.parquet       the items of one batch
    results/batch-NNNNN.parquet       the job's output for one batch
    results/batch-NNNNN.json          its record: sha256, rows, bytes, attempts, host, ...
    dead_letter/batch-NNNNN.parquet   items that failed permanently (id, category, ...);
                                      only batches that have some (the record names it)
    merge/L{level}/part-NNNNN.parquet an inner node of the merge tree (+ .json record)
    final/result.parquet              the root of the merge tree (+ .json record)
    manifest.json                     everything above, with checksums
    config.json                       the config the run used (defaults filled) and its
                                      sha256; what ``orchestrator RUN_DIR`` reads
    state.sqlite                      task state (sqlite backend)
    logs/<rule>/<wildcards>.log       one log per job

A run under ``s3://bucket/prefix`` keeps the same layout in S3 for every file above but the
logs (and state.sqlite): Snakemake's storage plugin moves file targets, while logs stay on the
machine that ran the job, under ``logs/{run_id}/<rule>/<wildcards>.log`` relative to the
working directory. ``RunLayout(..., wrap=storage)`` lets the Snakefile mark every file target
for the storage plugin; without ``wrap`` the paths are the plain locations (``s3://`` URIs),
which is what records and the manifest store.

The merge tree: level 0 are the batch results; node ``i`` of level ``L`` merges nodes
``i*F .. i*F+F-1`` of level ``L-1`` (F = fan-in). The tree is as deep as it must be to end
in one node, and that root node is written directly as ``final/result.parquet``, so no
level is ever a plain copy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from orchestrator_ext.location import is_remote
from orchestrator_ext.task import batch_name, part_name, stage_of_rule


def level_sizes(n_batches: int, fan_in: int) -> list[int]:
    """Number of nodes per level, level 0 (the batches) first, ending with the root's 1.

    >>> level_sizes(40, 16)
    [40, 3, 1]
    >>> level_sizes(1, 16)
    [1, 1]
    """
    if n_batches < 1:
        raise ValueError(f"a run needs at least one batch, got {n_batches}")
    if fan_in < 2:
        raise ValueError(f"fan_in must be at least 2, got {fan_in}")
    sizes = [n_batches]
    while True:
        sizes.append(-(-sizes[-1] // fan_in))
        if sizes[-1] == 1:
            return sizes


def root_level(n_batches: int, fan_in: int) -> int:
    """The level of the root node (the final result)."""
    return len(level_sizes(n_batches, fan_in)) - 1


def children(level: int, index: int, n_batches: int, fan_in: int) -> range:
    """Indices, in level ``level - 1``, of the children of node ``index`` of ``level``."""
    sizes = level_sizes(n_batches, fan_in)
    if not 1 <= level < len(sizes) or not 0 <= index < sizes[level]:
        raise ValueError(f"no merge node L{level}/{index} in a tree over {n_batches} batches")
    return range(index * fan_in, min((index + 1) * fan_in, sizes[level - 1]))


@dataclass(frozen=True)
class RunLayout:
    """Paths of one run's files, relative to nothing: ``run_dir`` is prepended as given.

    ``wrap``, if given, is applied to every path of a file target (not to logs), e.g.
    Snakemake's ``storage`` so that ``s3://`` paths become storage-plugin targets.
    """

    run_dir: str
    wrap: Callable[[str], Any] | None = field(default=None, compare=False, repr=False)

    def _path(self, rel: str) -> Any:
        path = f"{self.run_dir}/{rel}"
        return self.wrap(path) if self.wrap is not None else path

    @property
    def is_remote(self) -> bool:
        """True when the run lives in S3 (``s3://bucket/prefix/run_id``)."""
        return is_remote(self.run_dir)

    @property
    def run_id(self) -> str:
        """The last component of ``run_dir``."""
        return self.run_dir.rstrip("/").rsplit("/", 1)[-1]

    @property
    def logs_dir(self) -> str:
        """Local folder of the run's job logs: ``{run_dir}/logs``, or ``logs/{run_id}``
        (relative to the working directory) when the run lives in S3."""
        return f"logs/{self.run_id}" if self.is_remote else f"{self.run_dir}/logs"

    @property
    def batches_dir(self) -> str:
        return self._path("batches")

    @property
    def plan(self) -> str:
        return self._path("batches/plan.json")

    def batch(self, batch: int | str) -> str:
        return self._path(f"batches/{_batch_file(batch)}.parquet")

    def result(self, batch: int | str) -> str:
        return self._path(f"results/{_batch_file(batch)}.parquet")

    def result_record(self, batch: int | str) -> str:
        return self._path(f"results/{_batch_file(batch)}.json")

    def chunks(self, batch: int | str) -> str:
        """The folder of a batch's sub-batch chunks (``chunks``); written by the batch job
        itself, never wrapped: in S3 for a run in S3, so an attempt on any node resumes."""
        return f"{self.run_dir}/chunks/{_batch_file(batch)}"

    @property
    def dead_letters_dir(self) -> str:
        """The folder of the dead-letter files; a plain location, never wrapped (the
        package reads it, Snakemake does not)."""
        return f"{self.run_dir}/dead_letter"

    def dead_letter(self, batch: int | str) -> str:
        return self._path(f"dead_letter/{_batch_file(batch)}.parquet")

    def merge_part(self, level: int | str, index: int | str) -> str:
        return self._path(f"merge/L{level}/{_part_file(index)}.parquet")

    def merge_record(self, level: int | str, index: int | str) -> str:
        return self._path(f"merge/L{level}/{_part_file(index)}.json")

    @property
    def final(self) -> str:
        return self._path("final/result.parquet")

    @property
    def final_record(self) -> str:
        return self._path("final/result.json")

    @property
    def manifest(self) -> str:
        return self._path("manifest.json")

    @property
    def derived(self) -> list[str]:
        """Every folder and file a plan's batches give rise to (results, dead letters, merge
        nodes, final, manifest, dashboard, sub-batch chunks): what a re-partition removes.
        Plain locations, never wrapped; ``checkpoints`` is where chunks were kept before
        they were called chunks."""
        names = ["results", "dead_letter", "merge", "final", "chunks", "checkpoints", "report"]
        return [f"{self.run_dir}/{name}" for name in [*names, "manifest.json"]]

    @property
    def sizing(self) -> str:
        """``sizing.json``: the batch size a partition chose by time (``batching.
        target_seconds``), kept outside ``batches/`` (which Snakemake removes before it runs
        the partition again) so the same config and input get the same size. Not a file
        target; written by the package (``sizing.sizing_record``)."""
        return f"{self.run_dir}/sizing.json"

    @property
    def resolved_config(self) -> str:
        """Not a file target (written by the coordinator when it starts): never wrapped."""
        return f"{self.run_dir}/config.json"

    @property
    def redrive(self) -> str:
        """``redrive.json``, the links of ``orchestrator redrive``; written by the package
        (not a file target): never wrapped."""
        return f"{self.run_dir}/redrive.json"

    @property
    def state_db(self) -> str:
        """Not a file target: never wrapped."""
        return f"{self.run_dir}/state.sqlite"

    def log(self, rule: str, name: str) -> str:
        """A job's log file; always local (see ``logs_dir``), never wrapped."""
        return f"{self.logs_dir}/{rule}/{name}.log"

    def job_log(self, rule: str) -> str:
        """The log of a job of ``rule`` (a pattern over its wildcards, as the rule's
        ``log:`` wants it), named as ``task`` names the rule's stage."""
        stage = stage_of_rule(rule)
        return self.log(stage.rule, stage.log_name)

    def node(self, level: int, index: int, n_batches: int, fan_in: int) -> tuple[str, str]:
        """(data file, record file) of tree node ``index`` at ``level`` (0 = batch results)."""
        if level == 0:
            return self.result(index), self.result_record(index)
        if level == root_level(n_batches, fan_in):
            return self.final, self.final_record
        return self.merge_part(level, index), self.merge_record(level, index)


def _batch_file(batch: int | str) -> str:
    # Snakemake wildcards arrive as the zero-padded string already.
    return batch_name(batch) if isinstance(batch, int) else f"batch-{batch}"


def _part_file(index: int | str) -> str:
    return part_name(index) if isinstance(index, int) else f"part-{index}"
