"""The run dashboard: one self-contained HTML file with plots, from the state store and the
manifest.

``collect_report_data`` reads what there is (task rows, the audit log, ``plan.json``,
``manifest.json``, dead-letter files of a local run) into a ``ReportData``;
``build_figures`` makes the Plotly figures from it and ``render_html`` the page;
``write_report_html`` does all three and publishes the file atomically. The page embeds
plotly.js and sets a Content-Security-Policy that forbids every network request, so it opens
offline and from a Snakemake report alike.

Sections and where their numbers come from:

===========================  ============================================================
summary                      task rows: counts by status, items, dead-lettered items
batch durations              audit log: duration of every successful batch attempt
throughput over time         audit log: when each batch succeeded; items from its row
attempts per batch           task rows: the attempt counter of every batch
failures by category         audit log: every failed attempt (FAILED or DEAD)
dead letters                 dead-letter files (local run), else the manifest, else rows
merge tree                   task rows of batches, merge nodes and ``final``
failing tasks                task rows whose status is FAILED or DEAD
manifest                     ``manifest.json``
===========================  ============================================================

Every element a test or a reader may want to check carries ``data-key`` (summary cells) or
an ``id`` (plots: ``plot-durations``, ``plot-throughput``, ``plot-attempts``,
``plot-failures``, ``plot-dead-letters``, ``plot-merge-tree``).

Reporting never breaks a run: ``write_report_html`` renders what it could read and lists
what it could not in the page's notes.
"""

from __future__ import annotations

import html
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator_ext.errors import Category, OrchestratorError
from orchestrator_ext.history import (
    AttemptSpan,
    attempt_spans,
    failed_attempts_by_category,
    list_failures,
    read_dead_letters,
)
from orchestrator_ext.layout import RunLayout, level_sizes, task_id_for_merge
from orchestrator_ext.state import TaskRecord, TaskStatus
from orchestrator_ext.status import RunStatus, build_status, format_duration
from orchestrator_ext.storage import atomic_path

if TYPE_CHECKING:
    from collections.abc import Mapping

    from plotly.graph_objects import Figure

    from orchestrator_ext.config import RunConfig
    from orchestrator_ext.state import StateStore

logger = logging.getLogger(__name__)

#: Forbids every network request: the page must work offline.
CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "img-src data: blob:; font-src data:"
)
STATUS_COLORS = {
    "PENDING": "#b0b7c3",
    "SUBMITTED": "#8ab6d6",
    "RUNNING": "#3b82f6",
    "SUCCEEDED": "#16a34a",
    "FAILED": "#f59e0b",
    "DEAD": "#dc2626",
}
PLOT_IDS = (
    "plot-durations",
    "plot-throughput",
    "plot-attempts",
    "plot-failures",
    "plot-dead-letters",
    "plot-merge-tree",
)
#: Failing tasks listed in the page at most.
MAX_FAILURES_SHOWN = 50


@dataclass
class ReportData:
    """Everything the dashboard shows, read once."""

    run_id: str
    run_dir: str
    backend: str
    generated_at: str
    tasks: list[TaskRecord] = field(default_factory=list)
    spans: list[AttemptSpan] = field(default_factory=list)
    status: RunStatus | None = None
    plan: dict[str, Any] | None = None
    manifest: dict[str, Any] | None = None
    dead_by_category: dict[str, int] = field(default_factory=dict)
    dead_by_batch: dict[str, int] = field(default_factory=dict)
    dead_source: str = "none"
    notes: list[str] = field(default_factory=list)


def read_json_at(uri: str) -> dict[str, Any] | None:
    """A JSON record on disk or in S3, or None when it does not exist.

    Raises:
        CorruptFile: the file is not valid JSON or not a JSON object (names ``uri``).
    """
    from orchestrator_ext.storage import parse_json_object, read_json

    if uri.startswith("s3://"):
        from orchestrator_ext import s3
        from orchestrator_ext.errors import MissingOutput

        try:
            data = s3.read_bytes(s3.make_s3_client(), uri)
        except MissingOutput:
            return None
        return parse_json_object(data, uri)
    if not os.path.exists(uri):
        return None
    return read_json(uri)


def collect_report_data(config: RunConfig, store: StateStore | None) -> ReportData:
    """Read the run's state, plan, manifest and dead letters; what fails goes to ``notes``."""
    layout = RunLayout(config.run_dir)
    data = ReportData(
        run_id=config.run_id,
        run_dir=config.run_dir,
        backend=config.state.backend,
        generated_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    if store is None:
        data.notes.append("no state store could be opened: task-level sections are empty")
    else:
        try:
            data.tasks = store.tasks()
            data.spans = attempt_spans(store.transitions())
            data.status = build_status(config.run_id, data.tasks, resources=config.resources)
        except Exception as exc:  # reporting must never break the run
            data.notes.append(f"state store not readable: {exc}")
    for name, uri in (("plan", layout.plan), ("manifest", layout.manifest)):
        try:
            setattr(data, name, read_json_at(uri))
        except (OrchestratorError, OSError, ValueError) as exc:
            data.notes.append(f"{name} not readable ({uri}): {exc}")
        if getattr(data, name) is None:
            data.notes.append(f"no {name} yet ({uri})")
    _add_dead_letters(data, config)
    return data


def _add_dead_letters(data: ReportData, config: RunConfig) -> None:
    try:
        dead = read_dead_letters(config.run_dir, limit=0)
    except (OSError, ValueError) as exc:
        data.notes.append(f"dead-letter files not readable: {exc}")
        dead = None
    if dead is not None and dead.files:
        data.dead_by_category, data.dead_by_batch = dead.by_category, dead.by_batch
        data.dead_source = f"{dead.files} dead-letter files"
    elif data.manifest is not None:
        data.dead_by_category = dict(data.manifest["dead_letter"]["by_category"])
        data.dead_by_batch = {
            b["batch_id"]: b["items_dead_lettered"]
            for b in data.manifest["batches"]
            if b["items_dead_lettered"]
        }
        data.dead_source = "manifest"
    elif data.tasks:
        data.dead_by_batch = {
            t.task_id.removeprefix("batch-"): t.items_dead
            for t in data.tasks
            if t.kind == "batch" and t.items_dead
        }
        data.dead_source = "state store (no categories)"


# -- figures -------------------------------------------------------------------------------


def _layout(fig: Figure, title: str, x: str, y: str) -> Figure:
    fig.update_layout(
        title={"text": title, "x": 0.01},
        xaxis_title=x,
        yaxis_title=y,
        height=360,
        margin={"l": 60, "r": 30, "t": 60, "b": 50},
        template="plotly_white",
    )
    fig.update_yaxes(rangemode="tozero")
    return fig


def _empty(fig: Figure, message: str) -> Figure:
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    return fig


def figure_durations(data: ReportData) -> Figure:
    """Histogram of the durations of successful batch attempts."""
    import plotly.graph_objects as go

    kinds = {t.task_id: t.kind for t in data.tasks}
    durations = [
        s.duration_s
        for s in data.spans
        if s.outcome == "SUCCEEDED" and kinds.get(s.task_id) == "batch" and s.duration_s is not None
    ]
    fig = go.Figure(go.Histogram(x=durations, name="batches", marker_color="#3b82f6"))
    if durations:
        ordered = sorted(durations)
        median = ordered[len(ordered) // 2]
        title = f"Batch durations: {len(durations)} batches, median {median:.3g} s"
    else:
        title = "Batch durations"
        _empty(fig, "no batch has finished yet")
    return _layout(fig, title, "seconds", "batches")


def figure_throughput(data: ReportData) -> Figure:
    """Cumulative items processed over time, and batches finished per time bucket."""
    import plotly.graph_objects as go

    rows = {t.task_id: t for t in data.tasks}
    # By time only: two batches may finish at the same microsecond, and task rows do not order.
    finished = sorted(
        ((s.ended_at, rows[s.task_id]) for s in data.spans
         if s.outcome == "SUCCEEDED" and s.ended_at and s.task_id in rows
         and rows[s.task_id].kind == "batch"),
        key=lambda pair: pair[0],
    )  # fmt: skip
    fig = go.Figure()
    if not finished:
        return _layout(_empty(fig, "no batch has finished yet"), "Throughput", "time", "items")
    times, total, cumulative = [], 0, []
    for at, task in finished:
        total += (task.items or 0) - (task.items_dead or 0)
        times.append(at)
        cumulative.append(total)
    fig.add_trace(
        go.Scatter(x=times, y=cumulative, mode="lines+markers", name="items processed",
                   line={"color": "#16a34a"})
    )  # fmt: skip
    fig.add_trace(
        go.Histogram(x=times, name="batches finished", yaxis="y2", opacity=0.35,
                     marker_color="#3b82f6", nbinsx=30)
    )  # fmt: skip
    fig.update_layout(
        yaxis2={"title": "batches finished", "overlaying": "y", "side": "right"},
        legend={"orientation": "h", "y": -0.25},
    )
    title = f"Throughput: {total:,} items in {len(finished)} batches"
    return _layout(fig, title, "time (UTC)", "items processed (cumulative)")


def figure_attempts(data: ReportData) -> Figure:
    """Number of batches by how many attempts they took."""
    import plotly.graph_objects as go

    counts = Counter(t.attempt for t in data.tasks if t.kind == "batch")
    keys = sorted(counts)
    fig = go.Figure(
        go.Bar(
            x=[str(k) for k in keys], y=[counts[k] for k in keys],
            text=[str(counts[k]) for k in keys], textposition="outside", marker_color="#6366f1",
        )
    )  # fmt: skip
    if not keys:
        _empty(fig, "no batches yet")
    fig.update_xaxes(type="category")
    return _layout(fig, "Attempts per batch", "attempts (0 = not started)", "batches")


def figure_failures(data: ReportData) -> Figure:
    """Failed attempts by category (every attempt the audit log records as failed)."""
    import plotly.graph_objects as go

    counts = failed_attempts_by_category(data.spans)
    colors = {"transient": "#f59e0b", "resource": "#8b5cf6", "permanent": "#dc2626"}
    fig = go.Figure(
        go.Bar(
            x=list(counts), y=list(counts.values()), text=[str(v) for v in counts.values()],
            textposition="outside", marker_color=[colors.get(k, "#6b7280") for k in counts],
        )
    )  # fmt: skip
    return _layout(
        fig, f"Failed attempts by category: {sum(counts.values())}", "category", "attempts"
    )


def figure_dead_letters(data: ReportData) -> Figure:
    """Dead-lettered items by category and by batch."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("by category", "by batch"),
                        column_widths=[0.35, 0.65])  # fmt: skip
    categories = data.dead_by_category or {str(c): 0 for c in Category}
    fig.add_trace(
        go.Bar(x=list(categories), y=list(categories.values()),
               text=[str(v) for v in categories.values()], textposition="outside",
               marker_color="#dc2626", name="by category"),
        row=1, col=1,
    )  # fmt: skip
    batches = data.dead_by_batch
    fig.add_trace(
        go.Bar(x=list(batches), y=list(batches.values()), marker_color="#f97316",
               name="by batch"),
        row=1, col=2,
    )  # fmt: skip
    fig.update_xaxes(type="category")
    fig.update_layout(showlegend=False)
    total = sum(data.dead_by_category.values()) or sum(batches.values())
    return _layout(fig, f"Dead letters: {total:,} items (from the {data.dead_source})", "", "items")


def merge_tree_nodes(
    n_batches: int, fan_in: int, statuses: Mapping[str, str]
) -> list[dict[str, Any]]:
    """Nodes of the merge tree with their plot position and status.

    Level 0 node ``i`` sits at x = i; a node of a higher level sits at the mean x of its
    children. Each node: level, index, task_id, x, status, parent (index in level + 1).
    """
    sizes = level_sizes(n_batches, fan_in)
    top = len(sizes) - 1
    nodes: list[dict[str, Any]] = []
    xs: list[float] = [float(i) for i in range(n_batches)]
    for level, size in enumerate(sizes):
        if level > 0:
            xs = [
                sum(xs[c] for c in kids) / len(kids)
                for kids in (range(i * fan_in, min((i + 1) * fan_in, sizes[level - 1]))
                             for i in range(size))
            ]  # fmt: skip
        for i in range(size):
            if level == 0:
                task_id = f"batch-{i:05d}"
            elif level == top:
                task_id = "final"
            else:
                task_id = task_id_for_merge(level, i)
            nodes.append(
                {
                    "level": level, "index": i, "task_id": task_id, "x": xs[i],
                    "status": statuses.get(task_id, "PENDING"),
                    "parent": i // fan_in if level < top else None,
                }
            )  # fmt: skip
    return nodes


def figure_merge_tree(data: ReportData) -> Figure:
    """The merge tree, one marker per node coloured by its task's status."""
    import plotly.graph_objects as go

    fig = go.Figure()
    n_batches = sum(t.kind == "batch" for t in data.tasks)
    fan_in = int(data.plan["fan_in"]) if data.plan else 0
    if not n_batches or fan_in < 2:
        return _layout(_empty(fig, "no plan yet"), "Merge tree", "", "level")
    statuses = {t.task_id: str(t.status) for t in data.tasks}
    nodes = merge_tree_nodes(n_batches, fan_in, statuses)
    by_level: dict[int, dict[int, dict[str, Any]]] = {}
    for node in nodes:
        by_level.setdefault(node["level"], {})[node["index"]] = node
    edge_x: list[float | None] = []
    edge_y: list[float | None] = []
    for node in nodes:
        if node["parent"] is not None:
            parent = by_level[node["level"] + 1][node["parent"]]
            edge_x += [node["x"], parent["x"], None]
            edge_y += [node["level"], parent["level"], None]
    fig.add_trace(
        go.Scatter(x=edge_x, y=edge_y, mode="lines", line={"color": "#cbd5e1", "width": 1},
                   hoverinfo="skip", showlegend=False)
    )  # fmt: skip
    for status, color in STATUS_COLORS.items():
        members = [n for n in nodes if n["status"] == status]
        if members:
            fig.add_trace(
                go.Scatter(
                    x=[n["x"] for n in members], y=[n["level"] for n in members],
                    mode="markers", name=f"{status} ({len(members)})",
                    marker={"color": color, "size": 12, "line": {"width": 1, "color": "#334155"}},
                    text=[n["task_id"] for n in members], hovertemplate="%{text}<extra></extra>",
                )
            )  # fmt: skip
    fig.update_yaxes(dtick=1)
    fig.update_xaxes(showticklabels=False)
    title = f"Merge tree: {n_batches} batches, fan-in {fan_in}, {max(by_level)} levels"
    return _layout(fig, title, "", "level (0 = batches)")


def build_figures(data: ReportData) -> dict[str, Figure]:
    """Every plot of the dashboard, keyed by its element id."""
    return {
        "plot-durations": figure_durations(data),
        "plot-throughput": figure_throughput(data),
        "plot-attempts": figure_attempts(data),
        "plot-failures": figure_failures(data),
        "plot-dead-letters": figure_dead_letters(data),
        "plot-merge-tree": figure_merge_tree(data),
    }


# -- the page ------------------------------------------------------------------------------


def summary_values(data: ReportData) -> dict[str, Any]:
    """The numbers of the summary table, keyed by their ``data-key``."""
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


def _table(rows: list[tuple[str, str, Any]]) -> str:
    cells = "".join(
        f'<tr><th>{html.escape(label)}</th><td data-key="{html.escape(key)}">'
        f"{html.escape(_fmt(value))}</td></tr>"
        for key, label, value in rows
    )
    return f'<table class="kv">{cells}</table>'


def _fmt(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return "-" if value is None else str(value)


def _summary_section(data: ReportData) -> str:
    values = summary_values(data)
    labels = [
        ("run_id", "run"), ("backend", "state backend"), ("tasks", "tasks"),
        ("batches_total", "batches"), ("batches_done", "batches succeeded"),
        ("items_total", "items"), ("items_dead_lettered", "items dead-lettered"),
        ("retried_tasks", "tasks retried"), ("elapsed", "elapsed"),
    ] + [(f"status_{s}", f"tasks {s}") for s in TaskStatus
         if s is not TaskStatus.SUPERSEDED]  # fmt: skip
    rows = [(key, label, values[key]) for key, label in labels if key in values]
    return f'<section id="summary"><h2>Summary</h2>{_table(rows)}</section>'


def _failures_section(data: ReportData) -> str:
    failures = list_failures(data.tasks, RunLayout(data.run_dir))
    if not failures:
        return '<section id="failing-tasks"><h2>Failing tasks</h2><p>none</p></section>'
    head = "".join(
        f"<th>{h}</th>"
        for h in ("task", "status", "category", "error", "attempt", "slurm job", "log")
    )
    body = "".join(
        "<tr>" + "".join(
            f"<td>{html.escape(_fmt(v))}</td>"
            for v in (f.task_id, f.status, f.category,
                      f"{f.error_type or ''}: {f.message or ''}", f.attempt,
                      f.slurm_job_id, f.log)
        ) + "</tr>"
        for f in failures[:MAX_FAILURES_SHOWN]
    )  # fmt: skip
    more = (
        f"<p>{len(failures) - MAX_FAILURES_SHOWN} more: <code>orchestrator errors</code></p>"
        if len(failures) > MAX_FAILURES_SHOWN
        else ""
    )
    return (
        f'<section id="failing-tasks"><h2>Failing tasks ({len(failures)})</h2>'
        f'<table class="grid"><tr>{head}</tr>{body}</table>{more}</section>'
    )


def _manifest_section(data: ReportData) -> str:
    manifest = data.manifest
    if manifest is None:
        return (
            '<section id="manifest"><h2>Manifest</h2>'
            "<p>not written yet: the run has not finished</p></section>"
        )
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
    return f'<section id="manifest"><h2>Manifest</h2>{_table(rows)}</section>'


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #1f2937; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.1rem; margin-top: 2rem; }
table { border-collapse: collapse; font-size: 0.9rem; }
th, td { border: 1px solid #e5e7eb; padding: 0.25rem 0.6rem; text-align: left; }
table.kv th { background: #f9fafb; font-weight: 500; }
table.grid td { max-width: 40rem; overflow-wrap: anywhere; }
.plot { max-width: 72rem; }
.notes { color: #6b7280; font-size: 0.85rem; }
"""


def render_html(data: ReportData, figures: dict[str, Figure] | None = None) -> str:
    """The dashboard page: plotly.js inline, one div per plot, the tables, the notes."""
    import plotly.io as pio
    from plotly.offline import get_plotlyjs

    figures = figures if figures is not None else build_figures(data)
    plots = "".join(
        f'<div class="plot">{pio.to_html(fig, full_html=False, include_plotlyjs=False, div_id=key, config={"displaylogo": False, "responsive": True})}</div>'  # noqa: E501
        for key, fig in figures.items()
    )
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in data.notes)
    title = f"Run {data.run_id}"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style>"
        f"<script>{get_plotlyjs()}</script></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        f'<p class="notes">{html.escape(data.run_dir)}, generated {data.generated_at}</p>'
        f'{_summary_section(data)}<section id="plots"><h2>Plots</h2>{plots}</section>'
        f"{_failures_section(data)}{_manifest_section(data)}"
        f'<section id="notes"><h2>Notes</h2><ul class="notes">{notes or "<li>none</li>"}'
        "</ul></section></body></html>\n"
    )


def write_report_html(
    config: RunConfig | Mapping[str, Any],
    path: str | os.PathLike[str],
    store: StateStore | None = None,
) -> Path:
    """Write the dashboard of a run to ``path`` (atomically) and return the path.

    Args:
        config: the run config, validated or raw (as a Snakemake script gets it).
        path: the HTML file to write.
        store: an open state store; if None, the run's store is opened (and closed) here,
            and a store that cannot be opened only leaves the task sections empty.

    Raises:
        ConfigError: a raw config that does not validate.
    """
    from orchestrator_ext.config import RunConfig, load_config
    from orchestrator_ext.state import open_state_store

    run_config = config if isinstance(config, RunConfig) else load_config(dict(config))
    own_store: StateStore | None = None
    if store is None:
        try:
            if run_config.state.backend == "sqlite":
                from orchestrator_ext.state.sqlite import SqliteStateStore

                own_store = SqliteStateStore(
                    RunLayout(run_config.run_dir).state_db, run_config.run_id, create=False
                )
            else:
                own_store = open_state_store(run_config)
        except OrchestratorError as exc:
            logger.warning("report without task state: %s", exc)
    try:
        data = collect_report_data(run_config, store or own_store)
    finally:
        if own_store is not None:
            own_store.close()
    page = render_html(data)
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    logger.info("wrote the dashboard of run %s to %s", run_config.run_id, path)
    return Path(path)


def write_dashboard(config: RunConfig, store: StateStore, path: str) -> Path:
    """``write_report_html`` in the shape ``jobstep.run_step`` calls: for a workflow rule."""
    return write_report_html(config, path, store=store)
