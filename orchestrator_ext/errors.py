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
import signal
from typing import Any

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


class CorruptFile(OrchestratorError):
    """Raised when a file of the run is not what the run wrote (e.g. not a JSON object)."""


class BatchFailed(OrchestratorError):
    """Raised when a batch sheds more dead-lettered items than ``tolerance`` allows."""


class OutputContractError(OrchestratorError):
    """Raised when a job's output breaks the run's output contract (permanent: the same
    input gives the same output, so a retry cannot help)."""


class WrongReturnType(OutputContractError, TypeError):
    """Raised when a batch job returns something other than a polars DataFrame (None, a
    list, a pandas frame). A ``TypeError`` too, as the bug it is; an ``OrchestratorError``
    so that the job's log holds one line, not a traceback of the framework's check."""


class SchemaMismatch(OutputContractError):
    """Raised when a result's columns or types differ from the run's output schema, or
    when the children of a merge differ from each other (merges never cast)."""


class RowsMismatch(OutputContractError):
    """Raised when a batch breaks ``job.rows: per_item`` (one row per item, with its id)."""


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


#: Slurm job states (sacct/squeue) by category. States not listed (FAILED, CANCELLED, ...)
#: say nothing about the cause; the state store's record of the attempt decides then.
SLURM_STATE_CATEGORIES: dict[str, Category] = {
    "OUT_OF_MEMORY": Category.RESOURCE,
    "TIMEOUT": Category.RESOURCE,
    "DEADLINE": Category.RESOURCE,
    "NODE_FAIL": Category.RESOURCE,
    "PREEMPTED": Category.RESOURCE,
    "BOOT_FAIL": Category.RESOURCE,
}

#: Process exit codes by category: 137 = 128 + SIGKILL, what the OOM killer (or a node
#: going away) leaves; 143 = 128 + SIGTERM, Slurm's signal at the time limit; 124, what
#: coreutils ``timeout`` exits with when it stopped the command.
EXIT_CODE_CATEGORIES: dict[int, Category] = {
    124: Category.RESOURCE,
    137: Category.RESOURCE,
    143: Category.RESOURCE,
}

#: Signals that end a job from outside, by category: SIGKILL is what the kernel's OOM killer
#: (and a cgroup's memory limit) sends, SIGTERM what Slurm sends at the time limit and the
#: local executor past ``resources.runtime``, SIGXCPU a CPU-time limit: resource failures,
#: resubmitted with escalated resources. A hang-up or an interrupt is transient. Every other
#: signal (SIGSEGV, SIGABRT, SIGBUS, SIGFPE, SIGILL, ...) is the process crashing on its own,
#: which in research code is nearly always deterministic (a bug in a C extension, an
#: assertion): permanent, not resubmitted. The one resource failure that shows as a crash,
#: C++ code aborting on ``std::bad_alloc``, is the price of not rerunning segfaults.
SIGNAL_CATEGORIES: dict[int, Category] = {
    signal.SIGKILL: Category.RESOURCE,
    signal.SIGTERM: Category.RESOURCE,
    signal.SIGXCPU: Category.RESOURCE,
    signal.SIGHUP: Category.TRANSIENT,
    signal.SIGINT: Category.TRANSIENT,
}


def classify_slurm_state(state: str) -> Category | None:
    """Category of a Slurm job state (``"OUT_OF_MEMORY"``, ``"CANCELLED by 0"``, ...), or None."""
    return SLURM_STATE_CATEGORIES.get(state.split()[0].upper().rstrip("+")) if state else None


def exit_signal(code: int | None) -> signal.Signals | None:
    """The signal that ended a process, from its exit code: negative in Python's
    ``subprocess`` (``-11``), 128 + N from a shell (``139``); None for an ordinary status."""
    if code is None:
        return None
    number = -code if code < 0 else code - 128 if 128 < code < 128 + signal.NSIG else 0
    try:
        return signal.Signals(number) if number else None
    except ValueError:
        return None


def describe_exit_code(code: int) -> str:
    """``killed by SIGSEGV (exit -11)``, ``exited with status 3``."""
    sig = exit_signal(code)
    return f"killed by {sig.name} (exit {code})" if sig else f"exited with status {code}"


def classify_exit_code(code: int | None) -> Category | None:
    """Category of a job's exit code, or None when the code says nothing about the cause.

    ``EXIT_CODE_CATEGORIES`` first; then a process killed by a signal (``exit_signal``) is
    classified by ``SIGNAL_CATEGORIES``, and any other signal is a crash: permanent. An
    ordinary status (0, 1, 2, ...) says nothing.
    """
    if code is None:
        return None
    if code in EXIT_CODE_CATEGORIES:
        return EXIT_CODE_CATEGORIES[code]
    sig = exit_signal(code)
    if sig is None:
        return None
    return SIGNAL_CATEGORIES.get(sig, Category.PERMANENT)


def _resolve_class(name: str) -> type[BaseException]:
    import builtins
    import importlib

    module_name, _, attribute = name.rpartition(".")
    target = (
        getattr(importlib.import_module(module_name), attribute, None)
        if module_name
        else (getattr(builtins, attribute, None))
    )
    if not (isinstance(target, type) and issubclass(target, BaseException)):
        raise ConfigError(f"errors: {name!r} is not an exception class")
    return target


#: Rules from the run's config (``errors:``), checked before the built-in table.
CONFIGURED_CATEGORIES: list[tuple[tuple[type[BaseException], ...], Category]] = []


def configure_error_rules(transient: Any = (), resource: Any = (), permanent: Any = ()) -> None:
    """Install the config's extra classification rules (names of exception classes).

    Called once per job process with ``config.error_rules``; replaces earlier rules.

    Raises:
        ConfigError: a name is not importable or not an exception class.
    """
    table = []
    for category, names in (
        (Category.TRANSIENT, transient),
        (Category.RESOURCE, resource),
        (Category.PERMANENT, permanent),
    ):
        if names:
            try:
                table.append((tuple(_resolve_class(n) for n in names), category))
            except ImportError as exc:
                raise ConfigError(f"errors.{category}: cannot import {exc.name!r}") from None
    CONFIGURED_CATEGORIES[:] = table


def classify(exc: BaseException) -> Category:
    """Return the category of a failure.

    Checks the config's rules, then the package's own errors, then the built-in table.

    Args:
        exc: the exception a job, a merge or a service call raised.

    Returns:
        ``Category.TRANSIENT`` for retryable service trouble, ``Category.RESOURCE`` for
        memory exhaustion, ``Category.PERMANENT`` for everything else.
    """
    for types, category in CONFIGURED_CATEGORIES:
        if isinstance(exc, types):
            return category
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


def type_and_message(error_type: str | None, message: str | None) -> str:
    """A recorded failure as one line, ``Type: message``, with the type said once: the
    message of a failure the job raised already starts with it (``describe``), one the
    executor recorded (a lost attempt) does not."""
    text = " ".join((message or "").split())
    if not error_type or text == error_type or text.startswith(f"{error_type}: "):
        return text
    return f"{error_type}: {text}" if text else error_type
