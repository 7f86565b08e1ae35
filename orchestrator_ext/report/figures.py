"""The six plots of the dashboard, as Plotly figures made from a ``ReportData``.

``build_figures`` returns them keyed by the id of the element each is drawn in
(``PLOT_IDS``, in page order). Each figure draws an explanatory annotation instead of
failing when there is nothing to plot yet.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from orchestrator_ext.errors import Category
from orchestrator_ext.history import failed_attempts_by_category
from orchestrator_ext.report.data import ReportData, merge_tree_nodes

if TYPE_CHECKING:
    from plotly.graph_objects import Figure

STATUS_COLORS = {
    "PENDING": "#b0b7c3",
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
