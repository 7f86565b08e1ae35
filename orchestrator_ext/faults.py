"""Built-in fault injection for tests and chaos drills (config section ``faults:``).

Inert unless ``faults.enabled`` is true. Every choice is seeded: whether an item call fails
transiently is a hash of ``(seed, batch, item id)``, so a rerun of the same config injects
the same faults. The kinds (config keys):

- ``transient_rate``: that fraction of item calls (item mode) or job calls (batch mode) raise
  ``TransientError`` once; the in-job retry of the same call then succeeds.
- ``permanent_ids``: these items always raise ``PermanentError`` (dead-lettered; in batch
  mode every call on a slice holding one fails, so bisection isolates them).
- ``permanent_batches``: every item of these batches fails permanently.
- ``oom_batches``: the first attempt of these batches raises ``MemoryError`` (a resource
  error: resubmitted with more memory).
- ``kill_batches`` (``{batch: n}``): the first attempt of the batch SIGKILLs its own process
  once ``n`` items are done (batch mode: before the call that would go past ``n`` items).
- ``s3_throttle_rate``: that fraction of the package's own S3 requests are answered with a
  ``503 SlowDown`` before they leave the process (``install_s3_throttle``), so botocore's
  retry mode has to absorb them.

``FaultInjector`` is built per batch attempt by ``process.process_batch``; the hooks are
``before_step`` (oom, kill), ``item_fault`` and ``wrap_batch`` (transient, permanent).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from orchestrator_ext.config import FaultSpec
from orchestrator_ext.errors import PermanentError, TransientError

logger = logging.getLogger(__name__)


def unit_hash(*parts: Any) -> float:
    """A number in [0, 1) determined by ``parts`` alone (stable across processes and runs)."""
    text = json.dumps([str(p) for p in parts], separators=(",", ":"))
    digest = hashlib.sha256(text.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class FaultInjector:
    """The faults of one attempt of one batch.

    Args:
        spec: the ``faults`` config.
        batch: the batch number (``3`` or ``"00003"``).
        attempt: the attempt number from the state store (1 = first attempt).
    """

    def __init__(self, spec: FaultSpec, batch: int | str, attempt: int = 1) -> None:
        self.spec = spec
        self.batch = int(batch)
        self.attempt = attempt
        self._permanent_ids = {str(i) for i in spec.permanent_ids}
        self._fired: set[Any] = set()  # transient faults raised in this attempt
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        """True when the faults section is enabled (every hook is a no-op otherwise)."""
        return self.spec.enabled

    @property
    def batch_permanent(self) -> bool:
        return self.active and self.batch in self.spec.permanent_batches

    def is_permanent(self, item_id: Any) -> bool:
        """Whether calls on this item always fail permanently."""
        return self.active and (self.batch_permanent or str(item_id) in self._permanent_ids)

    def is_transient(self, key: Any) -> bool:
        """Whether the first call on ``key`` (an item id, or a slice key) fails transiently."""
        rate = self.spec.transient_rate
        return (
            self.active
            and rate > 0
            and unit_hash(self.spec.seed, self.batch, "transient", key) < rate
        )

    def _fire_once(self, key: Any) -> bool:
        """True the first time ``key`` is seen in this attempt, if it is a transient fault."""
        if not self.is_transient(key):
            return False
        with self._lock:
            if key in self._fired:
                return False
            self._fired.add(key)
            return True

    # -- hooks ---------------------------------------------------------------------------

    def before_step(self, position: int, size: int = 1) -> None:
        """Called before the job works on items ``position .. position+size-1`` of the batch.

        On the first attempt: raises ``MemoryError`` for an ``oom_batches`` batch, and
        SIGKILLs this process when the step would go past the ``kill_batches`` count.
        """
        if not self.active or self.attempt != 1:
            return
        if self.batch in self.spec.oom_batches:
            raise MemoryError(f"fault injection: batch {self.batch} exceeds its memory")
        kill_at = self.spec.kill_batches.get(self.batch)
        if kill_at is not None and position + size > kill_at:
            logger.warning(
                "fault injection: SIGKILL batch %d after %d items (attempt 1)", self.batch, position
            )
            for handler in logging.getLogger().handlers:
                handler.flush()
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    def item_fault(self, item_id: Any) -> Exception | None:
        """The error an injected fault makes this call on ``item_id`` raise, or None: always
        for a permanent item, the first time only for a transient one."""
        if not self.active:
            return None
        if self.is_permanent(item_id):
            return PermanentError(f"fault injection: item {item_id} fails permanently")
        if self._fire_once(("item", str(item_id))):
            return TransientError(f"fault injection: transient error on item {item_id}")
        return None

    def wrap_batch(self, fn: Callable[..., Any], id_column: str) -> Callable[..., Any]:
        """``fn`` (a batch-mode job) failing permanently when its slice holds a permanent
        item, and transiently once for a ``transient_rate`` fraction of slices."""
        if not self.active:
            return fn

        def call(chunk: Any, ctx: Any) -> Any:
            ids = chunk.get_column(id_column).to_list()
            bad = [i for i in ids if self.is_permanent(i)]
            if bad:
                raise PermanentError(
                    f"fault injection: {len(bad)} permanent item(s) in slice, first {bad[0]}"
                )
            if ids and self._fire_once(("slice", str(ids[0]), str(ids[-1]), len(ids))):
                raise TransientError(
                    f"fault injection: transient error on slice {ids[0]}..{ids[-1]}"
                )
            return fn(chunk, ctx)

        return call


def injector_for(spec: FaultSpec, batch: int | str, attempt: int) -> FaultInjector | None:
    """A ``FaultInjector`` when faults are enabled, else None (the code path stays unchanged)."""
    return FaultInjector(spec, batch, attempt) if spec.enabled else None


# -- S3 throttling -------------------------------------------------------------------------

_SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate. (fault injection)</Message>"
    b"<RequestId>fault-injection</RequestId></Error>"
)


class _Body:
    """The ``raw`` of a canned botocore response."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def stream(self, **_: Any) -> Any:
        yield self._data

    def read(self, *_: Any, **__: Any) -> bytes:
        data, self._data = self._data, b""
        return data


class ThrottleHook:
    """A botocore ``before-send`` handler answering a seeded fraction of requests with
    ``503 SlowDown``. ``calls`` and ``throttled`` count what it saw and did."""

    def __init__(self, rate: float, seed: int = 0) -> None:
        import random

        self.rate = rate
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.calls = 0
        self.throttled = 0

    def __call__(self, request: Any, **_: Any) -> Any:
        from botocore.awsrequest import AWSResponse

        with self._lock:
            self.calls += 1
            if self._rng.random() >= self.rate:
                return None
            self.throttled += 1
        logger.info("fault injection: throttling %s %s", request.method, request.url)
        headers = {"Content-Type": "application/xml", "Content-Length": str(len(_SLOW_DOWN))}
        return AWSResponse(request.url, 503, headers, _Body(_SLOW_DOWN))


def install_s3_throttle(client: Any, rate: float, seed: int = 0) -> ThrottleHook:
    """Make ``client`` (a boto3 S3 client) see a ``rate`` fraction of its requests throttled.

    The hook answers before the request leaves the process, after signing, on every
    attempt, so botocore's retry handler (``standard`` / ``adaptive`` mode) sees a real
    ``SlowDown`` error and retries with backoff. Returns the hook (for its counters).
    """
    hook = ThrottleHook(rate, seed)
    client.meta.events.register("before-send.s3", hook)
    return hook
