"""In-job workers: the calls of an item-mode job, in this thread or on a pool.

``job.workers`` (default 1) and ``job.pool`` (``process`` or ``thread``) say how a batch job
calls its items: one at a time, or ``workers`` at a time on a ``concurrent.futures`` pool of
processes (CPU-bound Python) or threads (calls that wait: S3, a web API, a subprocess).
``ItemCalls.map`` returns one ``Called`` per item *in input order*, whatever order the
workers finish in, so results, dead letters and chunks are what one worker makes.

Process workers are started with ``spawn`` (polars' thread pool does not survive a
``fork``); they import the job's module by name, as ``job.function`` names it. What a call
raises comes back as its exception; one that cannot be pickled back is replaced by a
``WorkerError`` carrying its type and message. Injected item faults
(``faults.item_fault``) are decided here, in the batch's own process, so they stay
deterministic on any pool.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import pickle
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from orchestrator_ext.errors import Category, OrchestratorError

if TYPE_CHECKING:
    from orchestrator_ext.faults import FaultInjector
    from orchestrator_ext.job import JobContext

#: Items handed to the pool at once, per worker: enough to keep every worker busy and to
#: amortize a process pool's pickling; small enough that a chunk's deadline stays close.
WAVE_PER_WORKER = 16


class WorkerError(OrchestratorError):
    """An exception raised in a process worker that could not be sent back as itself."""


class WorkerLost(OrchestratorError):
    """A process worker died (killed, out of memory) or its result could not be sent back:
    a resource failure, so the batch is resubmitted with more memory."""

    category = Category.RESOURCE


@dataclass(frozen=True)
class Called:
    """What one call of the job on one item gave: its return value, or what it raised."""

    value: Any = None
    error: BaseException | None = None


def call_one(fn: Callable[..., Any], item: dict[str, Any], ctx: JobContext) -> Called:
    """``fn(item, ctx)`` as a ``Called`` (in a process worker: one that pickles back)."""
    try:
        return Called(fn(item, ctx))
    except Exception as exc:
        return Called(error=exc)


#: The job and its context in a process worker, set once when the worker starts.
_WORKER_JOB: tuple[Callable[..., Any], JobContext] | None = None


def _start_worker(fn: Callable[..., Any], ctx: JobContext) -> None:
    global _WORKER_JOB
    _WORKER_JOB = (fn, ctx)


def _call_in_process(item: dict[str, Any]) -> bytes:
    """``call_one`` in a process worker, pickled here: what cannot be pickled becomes that
    item's ``WorkerError`` instead of breaking the pool."""
    assert _WORKER_JOB is not None, "the worker was started without its job"
    fn, ctx = _WORKER_JOB
    called = call_one(fn, item, ctx)
    try:
        return pickle.dumps(called)
    except Exception as exc:
        what = "its exception" if called.error is not None else "its return value"
        return pickle.dumps(Called(error=WorkerError(f"{what} cannot be pickled: {exc}")))


def _unpickled(data: bytes) -> Called:
    try:
        called = pickle.loads(data)
    except Exception as exc:  # e.g. an exception whose __init__ takes other arguments
        return Called(error=WorkerError(f"a worker's result cannot be unpickled: {exc}"))
    return called if isinstance(called, Called) else Called(error=WorkerError(repr(called)))


class ItemCalls:
    """Calls an item-mode job on items: in this thread (``workers`` 1) or on a pool.

    Args:
        fn: the job (``fn(item, ctx)``).
        ctx: the batch's job context (sent to process workers with every item).
        id_column: the items' id column (for injected faults).
        faults: injected faults, if enabled.
        workers: how many calls run at once.
        pool: ``process`` or ``thread``.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        ctx: JobContext,
        id_column: str,
        faults: FaultInjector | None = None,
        workers: int = 1,
        pool: str = "process",
    ) -> None:
        self.fn, self.ctx, self.id_column, self.faults = fn, ctx, id_column, faults
        self.workers, self.pool = workers, pool
        self._in_process = workers > 1 and pool == "process"
        self._executor: concurrent.futures.Executor | None = None  # started when first used

    @property
    def wave(self) -> int:
        """How many items to hand over at once."""
        return 1 if self.workers == 1 else self.workers * WAVE_PER_WORKER

    def _pool(self) -> concurrent.futures.Executor:
        if self._executor is None:
            self._executor = (
                concurrent.futures.ProcessPoolExecutor(
                    self.workers,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_start_worker,
                    initargs=(self.fn, self.ctx),
                )
                if self._in_process
                else concurrent.futures.ThreadPoolExecutor(self.workers)
            )
        return self._executor

    def map(self, items: Sequence[dict[str, Any]]) -> list[Called]:
        """One ``Called`` per item, in the order of ``items``."""
        results: list[Called | None] = [None] * len(items)
        todo: list[int] = []
        for position, item in enumerate(items):
            fault = self.faults.item_fault(item[self.id_column]) if self.faults else None
            if fault is not None:
                results[position] = Called(error=fault)
            else:
                todo.append(position)
        if self.workers == 1 or len(todo) <= 1:
            for position in todo:
                results[position] = call_one(self.fn, items[position], self.ctx)
        else:
            wanted = [items[p] for p in todo]
            try:
                for position, result in zip(todo, self._on_pool(wanted), strict=True):
                    results[position] = result
            except concurrent.futures.process.BrokenProcessPool as exc:
                raise WorkerLost(
                    f"batch {self.ctx.batch_id}: a worker process of job.pool died ({exc}); "
                    "killed, or out of memory"
                ) from None
        return [r for r in results if r is not None]

    def _on_pool(self, items: list[dict[str, Any]]) -> Iterator[Called]:
        if self._in_process:
            chunksize = max(1, len(items) // (self.workers * 4))
            pickled = self._pool().map(_call_in_process, items, chunksize=chunksize)
            return (_unpickled(data) for data in pickled)
        return self._pool().map(lambda item: call_one(self.fn, item, self.ctx), items)

    def close(self) -> None:
        """Stop the workers (waiting for none: every call handed over has returned)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def __enter__(self) -> ItemCalls:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
