"""Workload x prices: a ``CostEstimate`` of requests, units, core-hours and money.

``estimate_cost`` runs the request model (``request_model``) over a workload, prices what
the run uses (S3 only where a part of it lives in S3, DynamoDB only for that state backend)
and adds up a total. The total is requests and core-hours; storage is priced per month
beside it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

from orchestrator_ext.cost.request_model import dynamodb_units, s3_requests, stored_bytes
from orchestrator_ext.location import is_remote

if TYPE_CHECKING:
    from orchestrator_ext.config import RunConfig
    from orchestrator_ext.cost.prices import Prices
    from orchestrator_ext.cost.workload import Workload


@dataclass
class CostEstimate:
    """Requests, units, core-hours and what they cost."""

    run_id: str
    source: str
    items: int
    batches: int
    merge_nodes: int
    attempts: dict[str, int]
    s3: dict[str, Any]
    dynamodb: dict[str, Any]
    compute: dict[str, Any]
    total: float
    currency: str
    prices: dict[str, Any]
    notes: list[str]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field (what ``orchestrator cost --json`` prints)."""
        return asdict(self)


def estimate_cost(
    config: RunConfig, workload: Workload, prices: Prices, cpus_per_job: int = 1
) -> CostEstimate:
    """Price a workload. Services the run does not use are shown with ``applies: false`` and
    left out of the total (S3 for a local run folder, DynamoDB for SQLite state)."""
    output_in_s3 = is_remote(config.output_root)
    input_in_s3 = is_remote(config.input.uri)
    s3 = s3_requests(workload, output_in_s3, input_in_s3)
    requests = s3["requests"]
    gb = stored_bytes(workload, config.merge.mode) / 1e9 if output_in_s3 else 0.0
    s3_cost = (requests["PUT"] + requests["LIST"]) / 1000 * prices.s3_put_per_1000 + (
        requests["GET"] + requests["HEAD"]
    ) / 1000 * prices.s3_get_per_1000
    s3.update(
        applies=output_in_s3 or input_in_s3,
        storage_gb=round(gb, 6),
        request_cost=round(s3_cost, 6),
        storage_cost_per_month=round(gb * prices.s3_storage_gb_month, 6),
    )
    ddb = dynamodb_units(workload)
    ddb_cost = (
        ddb["write_units"] / 1e6 * prices.dynamodb_write_per_million
        + ddb["read_units"] / 1e6 * prices.dynamodb_read_per_million
    )
    ddb.update(
        applies=config.state.backend == "dynamodb",
        request_cost=round(ddb_cost, 6),
        storage_cost_per_month=round(
            ddb["storage_bytes"] / 1e9 * prices.dynamodb_storage_gb_month, 6
        ),
    )
    core_hours = workload.core_seconds * cpus_per_job / 3600
    compute = {
        "core_hours": round(core_hours, 4),
        "cpus_per_job": cpus_per_job,
        "basis": workload.core_seconds_basis,
        "cost": round(core_hours * prices.core_hour, 6),
    }
    total = core_hours * prices.core_hour
    total += s3["request_cost"] if s3["applies"] else 0.0
    total += ddb["request_cost"] if ddb["applies"] else 0.0
    notes = [
        "S3 and DynamoDB figures follow the request model in "
        "orchestrator_ext/cost/request_model.py (docs/capacity.md); storage is per month and "
        "not in the total.",
    ]
    if workload.source == "config" and (config.batching.max_bytes or config.batching.weight_column):
        notes.append("batching by bytes or weight may cut more batches than max_items alone")
    if workload.source == "state store":
        notes.append("reads by orchestrator status/report are not included (see per-call cost)")
    return CostEstimate(
        run_id=config.run_id,
        source=workload.source,
        items=workload.items,
        batches=workload.batches,
        merge_nodes=workload.merge_nodes,
        attempts={
            "batch": workload.batch_attempts,
            "merge": workload.merge_attempts,
            "other": workload.other_attempts,
            "failed": workload.failed_attempts,
        },
        s3=s3,
        dynamodb=ddb,
        compute=compute,
        total=round(total, 6),
        currency=prices.currency,
        prices={f.name: getattr(prices, f.name) for f in fields(prices)},
        notes=notes,
    )
