"""How ``orchestrator errors`` and ``orchestrator audit`` show a run's history.

The data comes from ``history`` (``TaskFailure``, ``DeadLetters``, ``audit_rows``); this
module only lays it out, apart from ``history`` so that reading the history never imports
Rich. Every cell taken from the state store or a dead-letter file is a Rich ``Text``, shown as
is: a message holding ``"[/bold]"`` is data, not Rich markup (which would raise
``MarkupError`` or restyle the table).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from orchestrator_ext.errors import type_and_message
from orchestrator_ext.history import DeadLetters, TaskFailure

if TYPE_CHECKING:
    from rich.console import RenderableType
    from rich.text import Text

_FAILURE_COLUMNS = ("task", "status", "category", "error", "attempt", "slurm job", "log")
_DEAD_LETTER_COLUMNS = ("batch", "id", "category", "attempt", "message")


def _plain(value: Any) -> Text:
    """A Rich ``Text`` of ``value``, shown as is (never read as markup); None is blank."""
    from rich.text import Text  # here, not at the top: rich is slow to import

    return Text("" if value is None else str(value))


def _table(title: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> RenderableType:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(_plain(cell) for cell in row))
    return table


def render_failures(failures: list[TaskFailure]) -> RenderableType:
    """The failed and dead tasks as a table, or a line saying there are none."""
    if not failures:
        return "no failed tasks"
    rows = [
        (f.task_id, f.status, f.category, type_and_message(f.error_type, f.message),
         str(f.attempt), f.slurm_job_id or "-", f.log or "-")
        for f in failures
    ]  # fmt: skip
    return _table(f"failed tasks ({len(failures)})", _FAILURE_COLUMNS, rows)


def render_dead_letters(dead: DeadLetters) -> RenderableType:
    """The dead-lettered items shown (of how many), or a line saying there are none.

    Args:
        dead: the items ``history.read_dead_letters`` returned.
    """
    if not dead.total:
        return "no dead-lettered items"
    # The message starts with the error type, so the table needs no column of its own for it.
    rows = [(d.batch_id, d.id, d.category, d.attempt, d.message) for d in dead.items]
    title = f"dead-lettered items: showing {len(dead.items)} of {dead.total}"
    return _table(title, _DEAD_LETTER_COLUMNS, rows)


def render_audit(run_id: str, rows: list[dict[str, Any]]) -> list[str]:
    """The audit log as lines: a heading, then one line per transition.

    Lines, not a table: easy to grep, never wrapped.

    Args:
        run_id: the run the transitions belong to.
        rows: ``history.audit_rows`` of the transitions to show.
    """
    lines = [f"run {run_id}: {len(rows)} transitions"]
    for row in rows:
        detail = f"  {row['detail']}" if row["detail"] else ""
        if row.get("log"):
            detail += f"  log: {row['log']}"
        lines.append(
            f"{row['at']}  {row['task_id']:<22} {row['from'] or '-':>9} -> {row['to']:<9} "
            f"attempt {row['attempt']}  host {row['host'] or '-'}  "
            f"slurm {row['slurm_job_id'] or '-'}{detail}"
        )
    return lines
