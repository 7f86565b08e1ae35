"""The job API: loading the user's callables and the context they receive.

- batch mode: ``fn(batch: polars.DataFrame, ctx) -> polars.DataFrame``
- item mode: ``fn(item: dict, ctx) -> dict | list[dict] | None``
- reduce: ``combine(partials: polars.DataFrame, ctx) -> polars.DataFrame`` (associative),
  optional ``finalize(df, ctx) -> polars.DataFrame`` on the root.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from orchestrator_ext.errors import JobLoadError, describe

if TYPE_CHECKING:
    from orchestrator_ext.config import JobSpec


@dataclass
class JobContext:
    """What a job call knows about where it runs.

    Attributes:
        run_id: the run's name.
        batch_id: zero-padded batch number (``"00042"``), or the merge node's task id.
        attempt: 1 for the first attempt of this task, counted across resubmissions.
        params: ``job.params`` from the config.
        logger: a logger writing to the task's log file.
        scratch_dir: a private temporary folder, removed when the task ends.
        workers: ``job.workers``: the cores (and polars threads) the job has; in item mode,
            how many items are called at once.
    """

    run_id: str
    batch_id: str
    attempt: int
    params: dict[str, Any] = field(default_factory=dict)
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("orchestrator.job"))
    scratch_dir: Path = field(default_factory=Path)
    workers: int = 1


@contextlib.contextmanager
def job_context(
    run_id: str, task: str, attempt: int, params: dict[str, Any], workers: int = 1
) -> Iterator[JobContext]:
    """A ``JobContext`` whose scratch folder exists for the duration of the block."""
    with tempfile.TemporaryDirectory(prefix=f"orchestrator-{task}-") as scratch:
        yield JobContext(
            run_id=run_id,
            batch_id=task,
            attempt=attempt,
            params=dict(params),
            logger=logging.getLogger(f"orchestrator.job.{task}"),
            scratch_dir=Path(scratch),
            workers=workers,
        )


def _on_sys_path(folder: str) -> bool:
    # "" on sys.path stands for the current working directory at import time.
    return any(os.path.abspath(entry or os.curdir) == folder for entry in sys.path)


def _import_module(module_name: str) -> ModuleType:
    """``importlib.import_module``, retried with the working directory on ``sys.path``."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        cwd = os.getcwd()
        if exc.name != module_name.partition(".")[0] or _on_sys_path(cwd):
            raise
    # Snakemake runs ``script:`` jobs with sys.path[0] = .snakemake/scripts, not the working
    # directory, yet researchers keep ``mylab_jobs.py`` next to their config. Appended, not
    # prepended, so that the working directory never shadows an installed package.
    sys.path.append(cwd)
    importlib.invalidate_caches()  # the finders may have cached "not here" for the folder
    try:
        return importlib.import_module(module_name)
    except BaseException:
        sys.path.remove(cwd)  # it did not help: leave sys.path as it was
        raise


def load_callable(reference: str, what: str = "job.function") -> Callable[..., Any]:
    """Import ``package.module:callable``.

    A module in the current working directory is found even when it is not on
    ``sys.path`` (as in Snakemake's ``script:`` jobs).

    Args:
        reference: ``package.module:callable``.
        what: the config key the reference came from, named in the error.

    Raises:
        JobLoadError: the reference is malformed, the module is not found or raises while
            being imported, or it has no such attribute or the attribute is not callable.
    """
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise JobLoadError(f"{what} {reference!r} must look like 'package.module:callable'")
    where = f"{what} {reference!r}"
    try:
        module = _import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name + ".").startswith(exc.name + "."):
            raise JobLoadError(
                f"{where}: cannot import module {module_name!r}: no module named "
                f"{exc.name!r} on the Python path or in the working directory "
                f"{os.getcwd()}; install it or correct {what}"
            ) from None
        raise JobLoadError(  # the module was found but imports something missing
            f"{where}: importing module {module_name!r} failed: {describe(exc)}; install "
            "what it imports and rerun"
        ) from None
    # The user's module may raise anything at top level (SyntaxError, NameError, a failed
    # open, even sys.exit); that is one line naming the module, not a traceback.
    except (Exception, SystemExit) as exc:
        raise JobLoadError(
            f"{where}: importing module {module_name!r} failed: {describe(exc)}; fix the "
            "module and rerun"
        ) from None
    missing = object()
    try:
        target = getattr(module, attribute, missing)
    except Exception as exc:  # a module-level __getattr__ may raise anything
        raise JobLoadError(f"{where}: reading {attribute!r} failed: {describe(exc)}") from None
    if target is missing:
        raise JobLoadError(
            f"{where}: module {module_name!r} has no attribute {attribute!r}; correct {what}"
        )
    if not callable(target):
        raise JobLoadError(
            f"{where}: {attribute!r} in module {module_name!r} is a "
            f"{type(target).__name__}, not a callable; name a function"
        )
    return target


@dataclass(frozen=True)
class ResolvedJob:
    """The user's callables, imported: ``function``, and ``combine``/``finalize`` if set."""

    function: Callable[..., Any]
    combine: Callable[..., Any] | None = None
    finalize: Callable[..., Any] | None = None


def resolve_job(spec: JobSpec) -> ResolvedJob:
    """Import and check every callable the job names, before any work is done.

    Called at the start of the partition step so that a typo in ``job.combine`` fails the
    run in seconds instead of after every batch has run.

    Args:
        spec: the config's ``job`` section.

    Returns:
        The imported ``job.function``, and ``job.combine`` and ``job.finalize`` when set.

    Raises:
        JobLoadError: a reference cannot be imported or is not callable (names the key,
            the reference and the reason).
    """
    return ResolvedJob(
        function=load_callable(spec.function, "job.function"),
        combine=load_callable(spec.combine, "job.combine") if spec.combine else None,
        finalize=load_callable(spec.finalize, "job.finalize") if spec.finalize else None,
    )


def code_version(reference: str) -> str:
    """Package version plus a short hash of the job module's source, for the manifest."""
    import hashlib

    from orchestrator_ext import __version__

    module_name = reference.partition(":")[0]
    try:
        spec = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        spec = None
    origin = spec.origin if spec else None
    if origin and Path(origin).is_file():
        digest = hashlib.sha256(Path(origin).read_bytes()).hexdigest()[:12]
        return f"orchestrator_ext {__version__}; {module_name} sha256:{digest}"
    return f"orchestrator_ext {__version__}; {module_name}"
