"""Errors of the package and the classification of any failure into a category.

Every failure lands in one of three categories, and each is handled differently:

- ``transient``: network trouble, throttling, 5xx, timeouts talking to a service. Retried
  inside the job with exponential backoff and full jitter.
- ``resource``: out of memory, wall-time limit, node failure, preemption. Resubmitted by
  Snakemake with escalated resources.
- ``permanent``: bad data, validation errors, errors in the user's code. Never retried; in
  item mode the item is dead-lettered.

``classify`` maps an exception to its category through ``EXCEPTION_CATEGORIES`` (most
specific class first); anything unknown is permanent, because retrying a bug only burns
allocation.
"""

from __future__ import annotations

import enum

from snakemake_interface_common.exceptions import WorkflowError


class Category(enum.StrEnum):
    """The three kinds of failure, each with its own handling."""

    TRANSIENT = "transient"
    RESOURCE = "resource"
    PERMANENT = "permanent"


class OrchestratorError(WorkflowError):
    """Root of the package's errors; its message is meant for the user, one line."""

    category: Category = Category.PERMANENT

    def __str__(self) -> str:
        # WorkflowError formats its args with line breaks and rule info; ours are one line.
        return str(self.args[0]) if self.args and self.args[0] else self.__class__.__name__


class ConfigError(OrchestratorError):
    """Raised when the run configuration is malformed or inconsistent."""


class InputError(OrchestratorError):
    """Raised when the item source is missing, unreadable or invalid (no id column, duplicates)."""


class JobLoadError(OrchestratorError):
    """Raised when a ``module:callable`` named in config cannot be imported."""


class ChecksumMismatch(OrchestratorError):
    """Raised when a file's sha256 differs from the checksum recorded when it was written."""


class MissingOutput(OrchestratorError):
    """Raised when a file the run recorded (or a merge needs) is absent."""


class BatchFailed(OrchestratorError):
    """Raised when a batch sheds more dead-lettered items than ``tolerance`` allows."""


class StateConflict(OrchestratorError):
    """Raised when a state write loses a race: another attempt holds or committed the task."""


class StateStoreError(OrchestratorError):
    """Raised when the state store is unreachable or not set up (e.g. a missing table)."""


class TransientError(OrchestratorError):
    """Raise from a job to ask for an in-job retry (a flaky service, a throttled call)."""

    category = Category.TRANSIENT


class PermanentError(OrchestratorError):
    """Raise from a job to dead-letter an item (or fail a batch) without any retry."""


def _transient_types() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [TransientError, TimeoutError, ConnectionError]
    try:  # botocore is a dependency, but keep classification importable without it
        from botocore.exceptions import (
            ConnectionClosedError,
            ConnectTimeoutError,
            EndpointConnectionError,
            ReadTimeoutError,
        )

        types += [
            EndpointConnectionError,
            ConnectTimeoutError,
            ReadTimeoutError,
            ConnectionClosedError,
        ]
    except ImportError:  # pragma: no cover
        pass
    return tuple(types)


#: Exception types by category, checked in order; the first ``isinstance`` match wins.
EXCEPTION_CATEGORIES: list[tuple[tuple[type[BaseException], ...], Category]] = [
    ((MemoryError,), Category.RESOURCE),
    (_transient_types(), Category.TRANSIENT),
]

#: AWS error codes (botocore ClientError) that mean "try again later".
TRANSIENT_AWS_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "SlowDown",
        "TooManyRequestsException",
        "InternalError",
        "InternalFailure",
        "ServiceUnavailable",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)


def classify(exc: BaseException) -> Category:
    """Return the category of a failure.

    Args:
        exc: the exception a job, a merge or a service call raised.

    Returns:
        ``Category.TRANSIENT`` for retryable service trouble, ``Category.RESOURCE`` for
        memory exhaustion, ``Category.PERMANENT`` for everything else.
    """
    if isinstance(exc, OrchestratorError):
        return exc.category
    for types, category in EXCEPTION_CATEGORIES:
        if isinstance(exc, types):
            return category
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        error = response.get("Error", {})
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if error.get("Code") in TRANSIENT_AWS_CODES or (
            isinstance(status, int) and 500 <= status < 600
        ):
            return Category.TRANSIENT
    return Category.PERMANENT


def describe(exc: BaseException) -> str:
    """Return a one-line description of an exception: ``Type: message``, newlines folded."""
    message = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
