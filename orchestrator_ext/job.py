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
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator_ext.errors import JobLoadError


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
    """

    run_id: str
    batch_id: str
    attempt: int
    params: dict[str, Any] = field(default_factory=dict)
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("orchestrator.job"))
    scratch_dir: Path = field(default_factory=Path)


@contextlib.contextmanager
def job_context(
    run_id: str, task: str, attempt: int, params: dict[str, Any]
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
        )


def load_callable(reference: str, what: str = "job.function") -> Callable[..., Any]:
    """Import ``package.module:callable``.

    Raises:
        JobLoadError: the module cannot be imported or has no such callable.
    """
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise JobLoadError(f"{what} {reference!r} must look like 'package.module:callable'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise JobLoadError(f"{what}: cannot import module {module_name!r}: {exc}") from None
    target = getattr(module, attribute, None)
    if not callable(target):
        raise JobLoadError(f"{what}: module {module_name!r} has no callable {attribute!r}")
    return target


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
