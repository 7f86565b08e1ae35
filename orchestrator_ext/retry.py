"""In-job retry of transient errors: exponential backoff with full jitter (tenacity).

``transient_retrying`` is the policy; ``RetryingCall`` applies it to batch-mode job calls
without entering tenacity on the first attempt. Item mode does not retry in place: it
retries its transiently failed items together, in rounds after the pass, on the same
schedule (``item_mode``). Only errors ``errors.classify`` calls transient are
retried; the rest propagate at once.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from orchestrator_ext.config import RetrySpec
from orchestrator_ext.errors import Category, classify, describe

logger = logging.getLogger(__name__)


def transient_retrying(spec: RetrySpec, tried: int = 0) -> Retrying:
    """A tenacity policy retrying transient errors only, with full-jitter backoff.

    ``tried``: attempts already made before this policy takes over; it makes the rest, up to
    ``spec.max_attempts`` in all, on the same backoff schedule.
    """

    def _log(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        what = describe(exc) if exc is not None else "no exception"  # tenacity sleeps after one
        logger.info("transient error, retry %d: %s", tried + state.attempt_number, what)

    return Retrying(
        retry=retry_if_exception(lambda exc: classify(exc) is Category.TRANSIENT),
        stop=stop_after_attempt(max(1, spec.max_attempts - tried)),
        wait=wait_random_exponential(
            multiplier=spec.initial_delay_s * 2**tried, max=spec.max_delay_s
        ),
        before_sleep=_log,
        reraise=True,
    )


class RetryingCall:
    """Calls a job function, retrying transient errors as ``transient_retrying`` does.

    The first attempt calls the function directly; tenacity takes over after a transient
    failure. Entering tenacity for every call costs about 9 us, which is several percent of
    a short item job (docs/benchmarks.md).
    """

    def __init__(self, spec: RetrySpec) -> None:
        self.spec = spec
        self.rest = transient_retrying(spec, tried=1)

    def __call__(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)``, retried on transient errors up to ``spec.max_attempts`` in all."""
        try:
            return fn(*args)
        except Exception as exc:
            if classify(exc) is not Category.TRANSIENT or self.spec.max_attempts <= 1:
                raise
            # Attempt 1's full-jitter wait, as tenacity would have slept it.
            delay = random.uniform(0, min(self.spec.initial_delay_s, self.spec.max_delay_s))
            logger.info("transient error, retry 1: %s", describe(exc))
            time.sleep(delay)
        return self.rest(fn, *args)
