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

import collections
import concurrent.futures
import multiprocessing
import pickle
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Any, NamedTuple

from orchestrator_ext.errors import Category, OrchestratorError, classify

if TYPE_CHECKING:
    from orchestrator_ext.faults import FaultInjector
    from orchestrator_ext.job import JobContext

#: Seconds of work in one slice handed to a worker: long enough that handing it over (and,
#: for processes, pickling it both ways) is small beside it; short enough that a chunk's
#: deadline, checked between slices, stays close. The first slice is one item.
SLICE_SECONDS = 0.05
#: Slices in flight per worker: the next is queued while one runs, so no worker waits.
IN_FLIGHT_PER_WORKER = 2


class WorkerError(OrchestratorError):
    """An exception raised in a process worker that could not be sent back as itself."""


class WorkerLost(OrchestratorError):
    """A process worker died (killed, out of memory) or its result could not be sent back:
    a resource failure, so the batch is resubmitted with more memory."""

    category = Category.RESOURCE


class Called(NamedTuple):
    """What one call of the job on one item gave: its return value, or what it raised.

    A named tuple, not a frozen dataclass: one is made per item, and a frozen dataclass
    costs several times as much to make."""

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


def _call_in_process(items: list[dict[str, Any]]) -> bytes:
    """``call_one`` on a slice of items in a process worker, pickled here as one list (one
    pickle per slice, not per item: the batch's own process has cores to spare for none).
    What cannot be pickled becomes that item's ``WorkerError`` instead of breaking the pool.
    """
    assert _WORKER_JOB is not None, "the worker was started without its job"
    fn, ctx = _WORKER_JOB
    called = [call_one(fn, item, ctx) for item in items]
    for c in called:
        if c.error is not None and c.error.__traceback__ is not None:
            # A traceback does not pickle; a note does, so the batch's log shows where.
            lines = traceback.format_tb(c.error.__traceback__)
            c.error.add_note("in a job.pool worker process:\n" + "".join(lines).rstrip())
    try:
        return pickle.dumps(called)
    except Exception:
        return pickle.dumps([_picklable(c) for c in called])


def _picklable(called: Called) -> Called:
    try:
        pickle.dumps(called)
    except Exception as exc:
        what = "its exception" if called.error is not None else "its return value"
        return Called(error=WorkerError(f"{what} cannot be pickled: {exc}"))
    return called


def _call_in_thread(
    fn: Callable[..., Any], items: list[dict[str, Any]], ctx: JobContext
) -> list[Called]:
    return [call_one(fn, item, ctx) for item in items]


def _merged(
    inner: concurrent.futures.Future[Any], faulted: dict[int, Called], n: int, pickled: bool
) -> concurrent.futures.Future[Any]:
    """A future of all ``n`` results of a slice: the calls made (``inner``; pickled by a
    process worker) with the injected faults at their places."""
    merged: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def done(future: concurrent.futures.Future[Any]) -> None:
        error = future.exception()
        if error is not None:
            merged.set_exception(error)
            return
        calls = _unpickled(future.result(), n - len(faulted)) if pickled else future.result()
        it = iter(calls)
        merged.set_result([faulted[i] if i in faulted else next(it) for i in range(n)])

    inner.add_done_callback(done)
    return merged


def failed_for_good(called: Called) -> bool:
    """The call failed permanently: its item is dead-lettered whatever retries give."""
    return called.error is not None and classify(called.error) is Category.PERMANENT


def _unpickled(data: bytes, n: int) -> list[Called]:
    try:
        called = pickle.loads(data)
    except Exception as exc:  # e.g. an exception whose __init__ takes other arguments
        return [Called(error=WorkerError(f"a worker's result cannot be unpickled: {exc}"))] * n
    return list(called)


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
        self._rate: float | None = None  # items per second the pool returns (smoothed)
        self._last_slice = 1

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

    def map(
        self,
        items: Sequence[dict[str, Any]],
        deadline: float | None = None,
        before: Callable[[int], None] | None = None,
        max_failures: int | None = None,
    ) -> list[Called]:
        """One ``Called`` per item handed over, in the order of ``items``.

        Items are handed over in order, in slices of about ``SLICE_SECONDS`` of work, with
        ``workers * IN_FLIGHT_PER_WORKER`` slices in flight, until all are, or until
        ``deadline`` (``time.monotonic()``) has passed with at least one handed over, or
        until more than ``max_failures`` calls failed permanently (the batch is past its
        tolerance whatever the rest gives): the result then covers a prefix of ``items``.
        ``before(position)`` is called for each item just before it is handed over
        (injected faults that end the process).

        Raises:
            WorkerLost: a process worker died.
        """
        if self.workers == 1:
            return self._in_turn(items, deadline, before, max_failures)
        results: list[Called] = []
        failures = 0
        in_flight: collections.deque[tuple[concurrent.futures.Future[Any], int]] = (
            collections.deque()
        )
        position, last = 0, time.monotonic()
        try:
            while position < len(items) or in_flight:
                while position < len(items) and len(in_flight) < self._depth():
                    if position and deadline is not None and time.monotonic() >= deadline:
                        break
                    if max_failures is not None and failures > max_failures:
                        break
                    end = min(len(items), position + self._slice())
                    in_flight.append(self._hand_over(items, position, end, before))
                    position = end
                if not in_flight:
                    break
                future, size = in_flight.popleft()
                called = future.result()
                if max_failures is not None:
                    failures += sum(1 for c in called if c.error is not None and failed_for_good(c))
                results += called
                now = time.monotonic()
                self._observe(size / max(now - last, 1e-3))
                last = now
        except BrokenProcessPool as exc:
            raise WorkerLost(
                f"batch {self.ctx.batch_id}: a worker process of job.pool died ({exc}); "
                "killed, or out of memory"
            ) from None
        return results

    def _in_turn(
        self,
        items: Sequence[dict[str, Any]],
        deadline: float | None,
        before: Callable[[int], None] | None,
        max_failures: int | None,
    ) -> list[Called]:
        """``map`` with one worker: each item called here, in turn (no pool, no futures:
        this is every batch's path by default, and a cheap item costs microseconds)."""
        fn, ctx, faults, id_column = self.fn, self.ctx, self.faults, self.id_column
        results: list[Called] = []
        failures = 0
        for position, item in enumerate(items):
            if position and deadline is not None and time.monotonic() >= deadline:
                break
            if before is not None:
                before(position)
            fault = faults.item_fault(item[id_column]) if faults else None
            if fault is not None:
                called = Called(error=fault)
            else:
                try:
                    results.append(Called(fn(item, ctx)))
                    continue
                except Exception as exc:
                    called = Called(error=exc)
            results.append(called)
            # Only failures are counted: a successful call costs no classification.
            if max_failures is not None and failed_for_good(called):
                failures += 1
                if failures > max_failures:
                    break
        return results

    def _depth(self) -> int:
        return self.workers * IN_FLIGHT_PER_WORKER

    def _observe(self, rate: float) -> None:
        # Smoothed: results that were ready while the one before was awaited arrive at once.
        self._rate = rate if self._rate is None else 0.7 * self._rate + 0.3 * rate

    def _slice(self) -> int:
        """Items in the next slice: ``SLICE_SECONDS`` of one worker's work, growing at most
        twofold per slice (the first estimate includes the workers' start-up)."""
        if self._rate is None:
            return 1
        wanted = max(1, int(self._rate / self.workers * SLICE_SECONDS))
        self._last_slice = min(wanted, 2 * self._last_slice)
        return self._last_slice

    def _hand_over(
        self,
        items: Sequence[dict[str, Any]],
        start: int,
        end: int,
        before: Callable[[int], None] | None,
    ) -> tuple[concurrent.futures.Future[Any], int]:
        """Items ``start .. end-1`` to a worker: a future of their ``Called`` list, and
        their number."""
        part: list[dict[str, Any]] = []
        faulted: dict[int, Called] = {}
        for offset, item in enumerate(items[start:end]):
            if before is not None:
                before(start + offset)
            fault = self.faults.item_fault(item[self.id_column]) if self.faults else None
            if fault is not None:
                faulted[offset] = Called(error=fault)
            else:
                part.append(item)
        inner: concurrent.futures.Future[Any]
        if self._in_process:
            inner = self._pool().submit(_call_in_process, part)
        else:
            inner = self._pool().submit(_call_in_thread, self.fn, part, self.ctx)
        return _merged(inner, faulted, end - start, self._in_process), end - start

    def close(self) -> None:
        """Stop the workers (waiting for none: every call handed over has returned)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def __enter__(self) -> ItemCalls:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
