"""Snakemake's job scheduler, made to stat a waiting job's input files once.

Snakemake 9.27 (``JobScheduler.update_input_sizes``) checks ``exists`` and ``size`` of every
input of every ready job it considers, on every scheduling round, and a round follows every
finished job. With 1,000 batches ready that was 45% of the coordinator's main thread
(py-spy, docs/benchmarks.md, "Trivial batches"), work that grows with ready jobs times
rounds. A ready job's inputs are finished outputs that do not change while it waits, so a
size once known is kept; the sizes only weigh the greedy scheduler's choice among ready
jobs (temp-file cleanup), never which jobs run.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterable
from typing import Any

#: Snakemake's own bound on the cache: beyond it, sizes of files no waiting job reads are
#: dropped.
MAX_CACHED = 10000


def cached_input_sizes(job_scheduler_module: Any) -> None:
    """Make ``JobScheduler.update_input_sizes`` of Snakemake's ``job_scheduler_module`` stat
    only the input files whose size it does not know yet. Idempotent."""
    scheduler = job_scheduler_module.JobScheduler
    original = scheduler.update_input_sizes
    if getattr(original, "cached_input_sizes", False):
        return

    async def update_input_sizes(self: Any, jobs: Iterable[Any]) -> None:
        async def get_size(path: Any) -> tuple[Any, int | None]:
            return path, await path.size() if await path.exists() else None

        sizes: dict[Any, int | None] | None = getattr(self, "_input_sizes", None)
        if sizes is None:  # a Snakemake that keeps its sizes elsewhere: its own way
            return await original(self, jobs)
        paths = {path for job in jobs for path in job.input}
        unknown = [path for path in paths if sizes.get(path) is None]
        if unknown:
            sizes.update(await asyncio.gather(*(get_size(path) for path in unknown)))
        if len(sizes) > MAX_CACHED:
            for path in [path for path in sizes if path not in paths]:
                del sizes[path]

    update_input_sizes.cached_input_sizes = True  # type: ignore[attr-defined]
    update_input_sizes.__wrapped__ = original  # type: ignore[attr-defined]
    scheduler.update_input_sizes = update_input_sizes


def install() -> None:
    """Patch the scheduler of the running Snakemake, if it is loaded (it is whenever a
    Snakefile is parsed) and has the method; otherwise do nothing."""
    module = sys.modules.get("snakemake.scheduling.job_scheduler")
    if hasattr(getattr(module, "JobScheduler", None), "update_input_sizes"):
        cached_input_sizes(module)
