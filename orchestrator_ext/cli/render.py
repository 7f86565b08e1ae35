"""Text of the commands whose data module has no renderer of its own (report, redrive,
manifest verify, init, unlock).

Status, cost and the history views render beside their data (``status.render_status``,
``cost.render_cost``, ``history_view``); what is here is plain text for ``print``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator_ext.redrive import RedrivePlan


def render_report_written(path: str, size: int) -> str:
    """Where the HTML dashboard went and how big it is."""
    return f"wrote {path} ({size / 1e6:.1f} MB): open it in a browser; it needs no network"


def render_redrive(plan: RedrivePlan) -> str:
    """What ``redrive`` wrote, by category, and the command that runs it."""
    categories = ", ".join(f"{n} {c}" for c, n in plan.by_category.items())
    return (
        f"wrote {plan.config} for run {plan.run_id}: {plan.items} items ({categories}) in "
        f"{plan.items_file}\nfix the cause, then: snakemake --profile profiles/local "
        f"--configfile {plan.config}"
    )


def render_verified(manifest_path: str) -> str:
    """The line ``manifest verify`` prints when it found no problem."""
    return (
        f"ok: every file listed in {manifest_path} matches its sha256 and the state store, "
        "and the plan's items are conserved"
    )


def render_init(report: dict[str, Any]) -> list[str]:
    """Lines for what ``init`` set up: the state table, the bucket, or the SQLite note.

    Args:
        report: ``init``'s JSON report (keys ``table``, ``bucket`` and ``state``, each
            present only when it applies).
    """
    lines = []
    if "table" in report:
        verb = "created" if report["table"]["created"] else "exists"
        lines.append(f"state table {report['table']['name']}: {verb} (on-demand capacity)")
    if "bucket" in report:
        encryption = report["bucket"]["default_encryption"]
        lines.append(
            f"bucket {report['bucket']['name']}: reachable; default encryption: "
            f"{encryption or 'NONE -- enable SSE-S3 or SSE-KMS default encryption'}"
        )
    if "state" in report:
        lines.append(f"state: {report['state']}")
    return lines


def render_unlock(run_id: str, removed: dict[str, Any] | None) -> str:
    """Whose coordinator lease ``unlock`` removed, or that there was none."""
    from orchestrator_ext.coordinator import describe_holder

    if removed:
        return f"removed the lease of {describe_holder(removed)}"
    return f"run {run_id} has no coordinator lease"
