"""The dashboard page: ``dashboard.html.j2`` rendered with Jinja2 from a ``ReportData`` and
its figures.

This module turns the data into the template's context (the rows of the summary, failure
and manifest tables, the notes, one HTML fragment per plot); the template lays them out.
Autoescaping is on for the template, so every value from the run (run id, error messages,
notes) is escaped; what the template inserts unescaped is marked ``|safe`` there, with why.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2

from orchestrator_ext.history import list_failures
from orchestrator_ext.layout import RunLayout
from orchestrator_ext.state import TaskStatus
from orchestrator_ext.status import format_duration

if TYPE_CHECKING:
    from plotly.graph_objects import Figure

    from orchestrator_ext.report.data import ReportData

#: Forbids every network request: the page must work offline.
CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "img-src data: blob:; font-src data:"
)
#: Failing tasks listed in the page at most.
MAX_FAILURES_SHOWN = 50
TEMPLATE = "dashboard.html.j2"
FAILURE_HEADINGS = ("task", "status", "category", "error", "attempt", "slurm job", "log")
_SUMMARY_LABELS = [
    ("run_id", "run"), ("backend", "state backend"), ("tasks", "tasks"),
    ("batches_total", "batches"), ("batches_done", "batches succeeded"),
    ("items_total", "items"), ("items_dead_lettered", "items dead-lettered"),
    ("retried_tasks", "tasks retried"), ("elapsed", "elapsed"),
] + [(f"status_{s}", f"tasks {s}") for s in TaskStatus
     if s is not TaskStatus.SUPERSEDED]  # fmt: skip


def format_value(value: Any) -> str:
    """A table cell's text: ints with thousands separators, None as ``-``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return "-" if value is None else str(value)


@cache
def environment() -> jinja2.Environment:
    """The Jinja2 environment of the package's templates, autoescaping ``.j2`` and HTML.

    ``StrictUndefined`` makes a name missing from the context an error, not an empty string.
    """
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html", "j2")),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    env.filters["fmt"] = format_value
    return env


def summary_values(data: ReportData) -> dict[str, Any]:
    """The numbers of the summary table, keyed by their ``data-key``.

    Args:
        data: the run's report data.

    Returns:
        ``run_id`` and ``backend`` always; the task counts when the state store was read
        (``status_<STATUS>`` per status); ``manifest_*`` when the manifest exists.
    """
    status = data.status
    values: dict[str, Any] = {"run_id": data.run_id, "backend": data.backend}
    if status is not None:
        values.update(
            tasks=status.tasks,
            batches_total=status.batches_total,
            batches_done=status.batches_done,
            items_total=status.items_total,
            items_dead_lettered=status.items_dead_lettered,
            retried_tasks=status.retried_tasks,
            elapsed=format_duration(status.elapsed_s),
        )
        values.update({f"status_{k}": v for k, v in status.by_status.items()})
    if data.manifest is not None:
        manifest = data.manifest
        values.update(
            manifest_items_in=manifest["items_in"],
            manifest_items_processed=manifest["items_processed"],
            manifest_items_dead_lettered=manifest["items_dead_lettered"],
        )
    return values


def summary_rows(data: ReportData) -> list[tuple[str, str, Any]]:
    """(data-key, label, value) of each summary cell there is a value for."""
    values = summary_values(data)
    return [(key, label, values[key]) for key, label in _SUMMARY_LABELS if key in values]


def manifest_rows(manifest: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """(data-key, label, value) of each cell of the manifest table."""
    conserved = manifest["items_in"] == (
        manifest["items_processed"] + manifest["items_dead_lettered"]
    )
    rows = [
        ("manifest_items_in", "items in", manifest["items_in"]),
        ("manifest_items_processed", "items processed", manifest["items_processed"]),
        ("manifest_items_dead_lettered", "items dead-lettered", manifest["items_dead_lettered"]),
        ("manifest_conserved", "conserved", "yes" if conserved else "NO"),
        ("manifest_batches", "batch outputs", len(manifest["batches"])),
        ("manifest_merges", "merge nodes", len(manifest["merges"]) + 1),
        ("manifest_final_rows", "final rows", manifest["final"]["rows"]),
        ("manifest_final_sha256", "final sha256", manifest["final"]["sha256"]),
        ("manifest_config_sha256", "config sha256", manifest["config_sha256"]),
        ("manifest_code_version", "code version", manifest["code_version"]),
        ("manifest_created_at", "created", manifest.get("created_at")),
    ]  # fmt: skip
    by_category = manifest["dead_letter"]["by_category"]
    rows += [(f"manifest_dead_{k}", f"dead-lettered: {k}", v) for k, v in by_category.items()]
    return rows


def plot_html(fig: Figure, div_id: str) -> str:
    """One figure as an HTML fragment (a div and its script; plotly.js not included)."""
    import plotly.io as pio

    config = {"displaylogo": False, "responsive": True}
    html: str = pio.to_html(
        fig, full_html=False, include_plotlyjs=False, div_id=div_id, config=config
    )
    return html


def render_html(data: ReportData, figures: dict[str, Figure] | None = None) -> str:
    """The dashboard page: plotly.js inline, one div per plot, the tables, the notes.

    Args:
        data: the run's report data.
        figures: the plots keyed by element id; by default ``build_figures(data)``.

    Returns:
        The whole HTML document.
    """
    from plotly.offline import get_plotlyjs

    from orchestrator_ext.report.figures import build_figures

    figures = figures if figures is not None else build_figures(data)
    failures = list_failures(data.tasks, RunLayout(data.run_dir))
    return (
        environment()
        .get_template(TEMPLATE)
        .render(
            csp=CSP,
            plotlyjs=get_plotlyjs(),
            title=f"Run {data.run_id}",
            run_dir=data.run_dir,
            generated_at=data.generated_at,
            summary=summary_rows(data),
            plots=[plot_html(fig, key) for key, fig in figures.items()],
            failure_headings=FAILURE_HEADINGS,
            failures_total=len(failures),
            failures=[
                (
                    f.task_id,
                    f.status,
                    f.category,
                    f"{f.error_type or ''}: {f.message or ''}",
                    f.attempt,
                    f.slurm_job_id,
                    f.log,
                )
                for f in failures[:MAX_FAILURES_SHOWN]
            ],  # fmt: skip
            manifest=manifest_rows(data.manifest) if data.manifest is not None else None,
            notes=data.notes,
        )
    )
