"""What a run costs: ``orchestrator cost`` estimates a run's S3 requests by type (PUT, GET,
HEAD, LIST, per stage), its DynamoDB read and write request units, its core-hours, and
what they cost at public list prices or a ``--prices`` file, from the most precise source
at hand (the state store's audit log, else the plan, else the config), counting only the
services the run uses. ``workload`` gathers the counts from a source into a ``Workload``;
``request_model`` turns a workload into requests, units and stored bytes (the model
docs/capacity.md explains); ``prices`` loads and validates the price file; ``pricing``
multiplies the two into a ``CostEstimate``; ``render`` draws it as a Rich table;
``errors`` holds ``CostError``. Every name below is re-exported so that
``from orchestrator_ext import cost; cost.estimate_cost(...)`` keeps working.
"""

from __future__ import annotations

from orchestrator_ext.cost.errors import CostError
from orchestrator_ext.cost.prices import PRICE_KEYS, Prices, load_prices, parse_prices
from orchestrator_ext.cost.pricing import CostEstimate, estimate_cost
from orchestrator_ext.cost.render import render_cost
from orchestrator_ext.cost.request_model import (
    ITEM_OVERHEAD_BYTES,
    LIST_PAGE,
    MULTIPART_BYTES,
    READ_UNIT_BYTES,
    ROW_BYTES,
    TRANSITION_BYTES,
    dynamodb_units,
    put_requests,
    s3_requests,
    stored_bytes,
)
from orchestrator_ext.cost.workload import (
    Workload,
    build_workload_from_config,
    build_workload_from_plan,
    build_workload_from_store,
    count_input_items,
)

__all__ = [
    "ITEM_OVERHEAD_BYTES",
    "LIST_PAGE",
    "MULTIPART_BYTES",
    "PRICE_KEYS",
    "READ_UNIT_BYTES",
    "ROW_BYTES",
    "TRANSITION_BYTES",
    "CostError",
    "CostEstimate",
    "Prices",
    "Workload",
    "build_workload_from_config",
    "build_workload_from_plan",
    "build_workload_from_store",
    "count_input_items",
    "dynamodb_units",
    "estimate_cost",
    "load_prices",
    "parse_prices",
    "put_requests",
    "render_cost",
    "s3_requests",
    "stored_bytes",
]
