"""What the two runners (``item_mode``, ``batch_mode``) share: the job call they make
(``JobCall``), what they make of a batch (``BatchOutcome``), and how they name a value the
job returned in their error messages (``kind_of``, ``short_repr``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import polars as pl

if TYPE_CHECKING:
    from orchestrator_ext.config import RetrySpec
    from orchestrator_ext.faults import FaultInjector
    from orchestrator_ext.job import JobContext
    from orchestrator_ext.workers import ItemCalls


@dataclass(frozen=True)
class JobCall:
    """The user's job function and what every call of it over one batch takes.

    Args:
        fn: the job (``job.function``): ``fn(item, ctx)`` or ``fn(frame, ctx)``.
        ctx: the batch's job context.
        id_column: the items' id column (``input.id_column``).
        retry: the in-job retry of transient errors.
        faults: injected faults, if enabled.
        items: item mode's calls on ``job.workers`` workers (None: one, in this thread).
    """

    fn: Callable[..., Any]
    ctx: JobContext
    id_column: str
    retry: RetrySpec
    faults: FaultInjector | None = None
    items: ItemCalls | None = None


@dataclass
class BatchOutcome:
    """What the job made of one batch."""

    result: pl.DataFrame
    dead: list[dict[str, Any]] = field(default_factory=list)
    #: Items worked through (item mode may stop early at a chunk ``deadline``).
    items_done: int | None = None


def kind_of(value: Any) -> str:
    """``int``, ``str``, ``pandas.DataFrame``: a value's type, with the package if not builtin."""
    if value is None:
        return "None"
    kind = type(value)
    package = kind.__module__.split(".")[0]
    return kind.__qualname__ if package == "builtins" else f"{package}.{kind.__qualname__}"


def short_repr(value: Any) -> str:
    """A one-line repr of at most 60 characters; a frame or array by its shape."""
    shape = getattr(value, "shape", None)
    if isinstance(shape, tuple):
        return f"shape {shape}"
    text = " ".join(repr(value).split())
    return text if len(text) <= 60 else text[:57] + "..."
