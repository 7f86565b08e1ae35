"""A ``CostEstimate`` as a Rich table, for ``orchestrator cost`` without ``--json``.

(``--json`` prints ``CostEstimate.to_dict()``; nothing to render.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import RenderableType

    from orchestrator_ext.cost.pricing import CostEstimate


def render_cost(estimate: CostEstimate) -> RenderableType:
    """A Rich table of the estimate, then its notes (core-hours basis, per-call reads)."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    cur = estimate.currency
    # The run id and the currency (from a prices file) are data: as Text, never read as
    # Rich markup (a str title holding "[/bold]" raises MarkupError).
    table = Table(
        title=Text(
            f"run {estimate.run_id}: estimated cost (from the {estimate.source})",
            style="table.title",  # what Rich gives a str title
        ),
        title_justify="left",
    )
    table.add_column("what")
    table.add_column("amount", justify="right")
    table.add_column(Text(f"cost ({cur})"), justify="right")
    s3, ddb, compute = estimate.s3, estimate.dynamodb, estimate.compute
    unused = " (not used)"
    table.add_row("batches / merge nodes", f"{estimate.batches:,} / {estimate.merge_nodes:,}", "")
    table.add_row("items", f"{estimate.items:,}", "")
    for kind in ("PUT", "GET", "HEAD", "LIST"):
        table.add_row(f"S3 {kind} requests" + ("" if s3["applies"] else unused),
                      f"{s3['requests'][kind]:,}", "")  # fmt: skip
    table.add_row("S3 requests", "", f"{s3['request_cost']:.4f}" if s3["applies"] else "n/a")
    table.add_row("S3 storage (per month)", f"{s3['storage_gb']:.3f} GB",
                  f"{s3['storage_cost_per_month']:.4f}")  # fmt: skip
    suffix = "" if ddb["applies"] else unused
    table.add_row(f"DynamoDB write units{suffix}", f"{ddb['write_units']:,}", "")
    table.add_row(f"DynamoDB read units{suffix}", f"{ddb['read_units']:,}", "")
    table.add_row(
        "DynamoDB requests", "", f"{ddb['request_cost']:.4f}" if ddb["applies"] else "n/a"
    )
    table.add_row("core-hours", f"{compute['core_hours']:,.2f}", f"{compute['cost']:.4f}")
    table.add_row("total", "", f"{estimate.total:.4f}", style="bold")
    notes = [
        Text(f"core-hours: {compute['basis']}", style="dim"),
        Text(
            f"one `orchestrator status` call reads {ddb['read_units_per_status_call']:,} "
            "DynamoDB read units",
            style="dim",
        ),
        *(Text(note, style="dim") for note in estimate.notes),
    ]
    return Group(table, *notes)
