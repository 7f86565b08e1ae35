"""The run dashboard: one self-contained HTML file with plots, made from a run's state
store, plan and manifest, written by ``orchestrator report`` and by the workflow's
``report_dashboard`` rule. ``data.py`` reads the run once into a ``ReportData``
(``collect_report_data``; the merge tree's nodes: ``merge_tree_nodes``), ``figures.py``
draws the six Plotly figures from it (``build_figures``), ``render.py`` renders the Jinja2
template ``dashboard.html.j2`` with them (``render_html``; every value from the run is
escaped), and ``write.py`` does all three and publishes the file atomically
(``write_report_html``). The page embeds plotly.js and sets a Content-Security-Policy that
forbids every network request (``CSP``), so it opens offline and from a Snakemake report
alike; reporting never breaks a run: what could not be read is listed in the page's notes.

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
an ``id`` (plots: ``PLOT_IDS``).
"""

from orchestrator_ext.report.data import (
    ReportData,
    collect_report_data,
    merge_tree_nodes,
    read_json_at,
)
from orchestrator_ext.report.figures import PLOT_IDS, build_figures
from orchestrator_ext.report.render import CSP, render_html, summary_values
from orchestrator_ext.report.write import write_dashboard, write_report_html

__all__ = [
    "CSP",
    "PLOT_IDS",
    "ReportData",
    "build_figures",
    "collect_report_data",
    "merge_tree_nodes",
    "read_json_at",
    "render_html",
    "summary_values",
    "write_dashboard",
    "write_report_html",
]
