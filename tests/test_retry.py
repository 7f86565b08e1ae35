"""Unit tests for orchestrator_ext.retry: transient errors retried with full jitter."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from orchestrator_ext.config import RetrySpec
from orchestrator_ext.errors import PermanentError, TransientError
from orchestrator_ext.job import JobContext
from orchestrator_ext.retry import RetryingCall, transient_retrying


class TestTransientRetrying:
    def _calls(self, exc: BaseException, times: int) -> tuple[Callable[[], str], list[int]]:
        calls: list[int] = []

        def fn() -> str:
            calls.append(1)
            if len(calls) <= times:
                raise exc
            return "ok"

        return fn, calls

    def test_retries_transient_until_success(self) -> None:
        fn, calls = self._calls(TransientError("slow down"), 2)
        assert transient_retrying(RetrySpec(5, 0.001, 0.001))(fn) == "ok"
        assert len(calls) == 3

    def test_gives_up_after_max_attempts(self) -> None:
        fn, calls = self._calls(ConnectionError("reset"), 10)
        with pytest.raises(ConnectionError, match="reset"):
            transient_retrying(RetrySpec(3, 0.001, 0.001))(fn)
        assert len(calls) == 3

    def test_does_not_retry_permanent(self) -> None:
        fn, calls = self._calls(PermanentError("bad row"), 10)
        with pytest.raises(PermanentError):
            transient_retrying(RetrySpec(5, 0.001, 0.001))(fn)
        assert len(calls) == 1

    def test_job_context_is_passed(self) -> None:
        ctx = JobContext(run_id="r", batch_id="00000", attempt=1)
        seen: list[JobContext] = []
        transient_retrying(RetrySpec())(lambda c: seen.append(c), ctx)
        assert seen == [ctx]


class TestRetryingCall:
    """The job-call path: a direct first call, tenacity only after a transient failure."""

    def _calls(self, exc: BaseException, times: int) -> tuple[Callable[[int], int], list[int]]:
        calls: list[int] = []

        def fn(value: int) -> int:
            calls.append(value)
            if len(calls) <= times:
                raise exc
            return value * 2

        return fn, calls

    @pytest.mark.parametrize("failures", [0, 1, 2, 4])
    def test_succeeds_within_max_attempts(self, failures: int) -> None:
        fn, calls = self._calls(TransientError("slow down"), failures)
        assert RetryingCall(RetrySpec(5, 0.001, 0.001))(fn, 21) == 42
        assert calls == [21] * (failures + 1)

    @pytest.mark.parametrize("max_attempts", [1, 2, 3])
    def test_makes_exactly_max_attempts(self, max_attempts: int) -> None:
        fn, calls = self._calls(ConnectionError("reset"), 10)
        with pytest.raises(ConnectionError, match="reset"):
            RetryingCall(RetrySpec(max_attempts, 0.001, 0.001))(fn, 1)
        assert len(calls) == max_attempts

    def test_does_not_retry_permanent(self) -> None:
        fn, calls = self._calls(PermanentError("bad row"), 10)
        with pytest.raises(PermanentError):
            RetryingCall(RetrySpec(5, 0.001, 0.001))(fn, 1)
        assert len(calls) == 1

    def test_backoff_grows_as_tenacity_would(self, monkeypatch: pytest.MonkeyPatch) -> None:
        # Full jitter: the n-th wait is drawn from [0, initial * 2**(n-1)], capped at max.
        bounds: list[float] = []
        monkeypatch.setattr("random.uniform", lambda low, high: bounds.append(high) or 0.0)
        fn, _ = self._calls(TransientError("slow down"), 4)
        RetryingCall(RetrySpec(5, 1.0, 5.0))(fn, 1)
        assert bounds == [1.0, 2.0, 4.0, 5.0]
