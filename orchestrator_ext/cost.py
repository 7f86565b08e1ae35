"""What a run costs: S3 requests by type, DynamoDB request units, core-hours, money.

Three sources, most precise first:

- ``state store``: after (or during) a run, from the audit log: every attempt of every task,
  how long it ran, how many state writes it made;
- ``plan``: after partitioning, from ``batches/plan.json``: exact batch count and sizes,
  one attempt per task;
- ``config``: before anything ran: the item count (``--items``, or counted from local input
  files) divided by ``batching.max_items``; a lower bound on batches when ``max_bytes`` or a
  weight column cuts batches smaller.

``build_workload_*`` gather the counts; ``s3_requests``, ``dynamodb_units``, ``core_hours``
and ``estimate_cost`` turn them into requests, units and money. All of them are pure.

The request model (per task attempt; see docs/capacity.md for the reasoning):

- S3 (only for the parts of a run that live in S3): a job GETs each input it retrieves and
  HEADs it; each output it publishes is one PUT (a multipart upload above 8 MiB: one PUT
  per 8 MiB part plus two) after a HeadBucket, and Snakemake HEADs it afterwards. The
  scheduler lists each run folder once per invocation (1,000 keys per LIST page). A failed
  attempt retrieves its inputs and publishes nothing.
- DynamoDB: rows up to 1 KB, transitions up to 1 KB. Registering a task is one
  BatchWriteItem put of its row and of its first transition (1 WRU each); every attempt
  makes two state changes (RUNNING, then SUCCEEDED/FAILED/DEAD), each one strongly
  consistent GetItem (1 RRU) and one two-item TransactWriteItems (2 WRU per item).
  ``orchestrator status`` reads every task row once per call (strongly consistent Query).

Prices come from ``Prices`` (public on-demand list prices, us-east-1, as of 2025: S3
Standard, DynamoDB on-demand Standard table class, and one vCPU-hour of an EC2 c6i
on-demand instance as the stand-in for a core-hour) unless a ``--prices`` YAML file
overrides them; see ``load_prices`` for its keys.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from orchestrator_ext.errors import OrchestratorError
from orchestrator_ext.layout import level_sizes

if TYPE_CHECKING:
    from orchestrator_ext.config import RunConfig
    from orchestrator_ext.state import TaskRecord, Transition

#: boto3's multipart threshold and part size (``TransferConfig`` defaults).
MULTIPART_BYTES = 8 * 1024 * 1024
#: Keys per ListObjectsV2 page.
LIST_PAGE = 1000
#: Estimated stored size of a task row and of a transition (attributes + key), bytes.
ROW_BYTES = 500
TRANSITION_BYTES = 300
#: DynamoDB bills this much storage overhead per item.
ITEM_OVERHEAD_BYTES = 100
#: DynamoDB read unit size (strongly consistent) and write unit size.
READ_UNIT_BYTES = 4096
WRITE_UNIT_BYTES = 1024


class CostError(OrchestratorError):
    """Raised when a cost estimate lacks an input (item count, a readable price file)."""


@dataclass(frozen=True)
class Prices:
    """Unit prices. Defaults: public on-demand list prices, us-east-1 (see module docstring)."""

    currency: str = field(default="USD", metadata={"help": "Currency of every price."})
    s3_put_per_1000: float = field(
        default=0.005,
        metadata={"help": "S3 Standard PUT, COPY, POST and LIST requests, per 1,000."},
    )
    s3_get_per_1000: float = field(
        default=0.0004,
        metadata={"help": "S3 Standard GET, HEAD and all other requests, per 1,000."},
    )
    s3_storage_gb_month: float = field(
        default=0.023, metadata={"help": "S3 Standard storage, per GB-month (first 50 TB)."}
    )
    dynamodb_write_per_million: float = field(
        default=0.625, metadata={"help": "DynamoDB on-demand write request units, per million."}
    )
    dynamodb_read_per_million: float = field(
        default=0.125, metadata={"help": "DynamoDB on-demand read request units, per million."}
    )
    dynamodb_storage_gb_month: float = field(
        default=0.25, metadata={"help": "DynamoDB Standard table storage, per GB-month."}
    )
    core_hour: float = field(
        default=0.0425,
        metadata={"help": "One core for one hour (default: a c6i vCPU-hour, $0.17/h / 4)."},
    )


#: Keys of a ``--prices`` YAML file -> ``Prices`` fields.
PRICE_KEYS: dict[tuple[str, str], str] = {
    ("s3", "put_per_1000"): "s3_put_per_1000",
    ("s3", "get_per_1000"): "s3_get_per_1000",
    ("s3", "storage_gb_month"): "s3_storage_gb_month",
    ("dynamodb", "write_per_million"): "dynamodb_write_per_million",
    ("dynamodb", "read_per_million"): "dynamodb_read_per_million",
    ("dynamodb", "storage_gb_month"): "dynamodb_storage_gb_month",
    ("compute", "core_hour"): "core_hour",
}


def parse_prices(data: dict[str, Any], source: str = "prices") -> Prices:
    """Prices from a mapping shaped like the ``--prices`` file; missing keys keep defaults.

    The file::

        currency: USD
        s3: {put_per_1000: 0.005, get_per_1000: 0.0004, storage_gb_month: 0.023}
        dynamodb: {write_per_million: 0.625, read_per_million: 0.125, storage_gb_month: 0.25}
        compute: {core_hour: 0.0425}

    Raises:
        CostError: an unknown key, or a price that is not a non-negative number.
    """
    values: dict[str, Any] = {}
    for section, content in data.items():
        if section == "currency":
            values["currency"] = str(content)
            continue
        if not isinstance(content, dict):
            raise CostError(f"{source}: '{section}' must be a mapping of prices")
        for key, value in content.items():
            name = PRICE_KEYS.get((section, key))
            if name is None:
                known = ", ".join(f"{s}.{k}" for s, k in PRICE_KEYS)
                raise CostError(f"{source}: unknown price '{section}.{key}'; known: {known}")
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise CostError(
                    f"{source}: '{section}.{key}' must be a non-negative number, got {value!r}"
                )
            values[name] = float(value)
    return Prices(**values)


def load_prices(path: str | os.PathLike[str] | None) -> Prices:
    """The default prices, overridden by a YAML file if one is given.

    Raises:
        CostError: the file is missing, not YAML, or has bad keys or values.
    """
    if path is None:
        return Prices()
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise CostError(f"price file not found: {path}") from None
    except yaml.YAMLError as exc:
        detail = " ".join(str(exc).split())
        raise CostError(f"price file {path} is not valid YAML: {detail}") from None
    if data is None:
        return Prices()
    if not isinstance(data, dict):
        raise CostError(f"price file {path} must hold a mapping, got {type(data).__name__}")
    return parse_prices(data, str(path))


# -- workloads -----------------------------------------------------------------------------


@dataclass
class Workload:
    """The counts a cost estimate is made of."""

    source: str
    items: int
    batches: int
    fan_in: int
    input_files: int = 1
    batch_bytes: list[int] = field(default_factory=list)
    batch_attempts: int = 0
    merge_attempts: int = 0
    other_attempts: int = 0
    failed_attempts: int = 0
    tasks: int = 0
    transitions: int = 0
    core_seconds: float = 0.0
    core_seconds_basis: str = ""

    @property
    def levels(self) -> list[int]:
        """Nodes per level of the merge tree (level 0 = batches)."""
        return level_sizes(self.batches, self.fan_in)

    @property
    def merge_nodes(self) -> int:
        """Inner merge nodes and the root."""
        return sum(self.levels[1:])


def _task_count(batches: int, fan_in: int) -> int:
    # batches, inner merges + root (final), manifest, partition
    return batches + sum(level_sizes(batches, fan_in)[1:]) + 2


def count_input_items(config: RunConfig) -> tuple[int, int, int]:
    """(items, files, bytes) of a local input, without loading it into memory.

    Parquet row counts come from the file footers; CSV and JSONL are counted by lines.

    Raises:
        CostError: the input is in S3 (pass ``--items``) or cannot be read.
    """
    from orchestrator_ext.partition import list_input_files

    if config.input.uri.startswith("s3://"):
        raise CostError(
            f"input {config.input.uri} is in S3: pass --items N, or run the partition step "
            "first so that the plan has the exact count"
        )
    files = list_input_files(config.input.uri)
    items = 0
    for path in files:
        if config.input.format == "parquet":
            import pyarrow.parquet as pq

            items += pq.read_metadata(path).num_rows
        else:
            with open(path, "rb") as handle:
                lines = sum(1 for line in handle if line.strip())
            items += lines - 1 if config.input.format == "csv" else lines
    return items, len(files), sum(os.path.getsize(p) for p in files)


def build_workload_from_config(
    config: RunConfig, items: int | None = None, batch_seconds: float | None = None
) -> Workload:
    """Counts before partitioning: ``items`` (or the local input's count) / max_items.

    ``batch_seconds`` is the expected run time of one job; default: the wall time a first
    attempt asks for (``resources.runtime``), an upper bound.
    """
    n_files, n_bytes = 1, 0
    if items is None:
        items, n_files, n_bytes = count_input_items(config)
    if items < 1:
        raise CostError("the input has no items: nothing to estimate")
    batches = math.ceil(items / config.batching.max_items)
    per_batch = n_bytes // batches if n_bytes else 0
    workload = Workload(
        source="config", items=items, batches=batches, fan_in=config.merge.fan_in,
        input_files=n_files, batch_bytes=[per_batch] * batches,
    )  # fmt: skip
    return _one_attempt_each(workload, config, batch_seconds)


def build_workload_from_plan(
    config: RunConfig, plan: dict[str, Any], batch_seconds: float | None = None
) -> Workload:
    """Counts after partitioning: the plan's batches, one attempt per task."""
    workload = Workload(
        source="plan",
        items=int(plan["items"]),
        batches=int(plan["n_batches"]),
        fan_in=int(plan["fan_in"]),
        input_files=max(1, len(plan.get("input", {}).get("files", []))),
        batch_bytes=[int(b.get("bytes", 0)) for b in plan["batches"]],
    )
    return _one_attempt_each(workload, config, batch_seconds)


def _one_attempt_each(
    workload: Workload, config: RunConfig, batch_seconds: float | None
) -> Workload:
    workload.batch_attempts = workload.batches
    workload.merge_attempts = workload.merge_nodes
    workload.other_attempts = 2  # partition, manifest
    workload.tasks = _task_count(workload.batches, workload.fan_in)
    workload.transitions = workload.tasks + 2 * (
        workload.batch_attempts + workload.merge_attempts + workload.other_attempts
    )
    if batch_seconds is None:
        seconds, basis = config.resources.runtime * 60.0, "upper bound: resources.runtime per job"
    else:
        seconds, basis = float(batch_seconds), f"{batch_seconds:g} s per job (--batch-seconds)"
    jobs = workload.batch_attempts + workload.merge_attempts + workload.other_attempts
    workload.core_seconds, workload.core_seconds_basis = jobs * seconds, basis
    return workload


def build_workload_from_store(
    config: RunConfig,
    tasks: list[TaskRecord],
    transitions: list[Transition],
    plan: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> Workload:
    """Counts from what happened: every attempt in the audit log; open attempts up to now,
    or, once the run finished, up to its last transition.

    Raises:
        CostError: the store has no batches yet (the partition step has not run).
    """
    from orchestrator_ext.history import attempt_spans
    from orchestrator_ext.state import TaskStatus

    batches = [t for t in tasks if t.kind == "batch"]
    if not batches:
        raise CostError("the state store has no batches yet: estimate from the config instead")
    now = now or datetime.now(UTC)
    # An attempt that never recorded its end (killed) of a finished run ended by the run's
    # end at the latest: measured to now, the estimate of a finished run would keep growing.
    if transitions and any(
        t.task_id == "manifest" and t.status == TaskStatus.SUCCEEDED for t in tasks
    ):
        now = min(now, max(datetime.fromisoformat(t.at) for t in transitions))
    spans = attempt_spans(transitions)
    seconds = 0.0
    for span in spans:
        end = datetime.fromisoformat(span.ended_at) if span.ended_at else now
        seconds += max(0.0, (end - datetime.fromisoformat(span.started_at)).total_seconds())
    kinds = {t.task_id: t.kind for t in tasks}
    return Workload(
        source="state store",
        items=sum(t.items or 0 for t in batches),
        batches=len(batches),
        fan_in=int(plan["fan_in"]) if plan else config.merge.fan_in,
        input_files=max(1, len(plan["input"]["files"])) if plan else 1,
        batch_bytes=[int(b.get("bytes", 0)) for b in plan["batches"]] if plan else [],
        batch_attempts=sum(kinds.get(s.task_id) == "batch" for s in spans),
        merge_attempts=sum(kinds.get(s.task_id) in ("merge", "final") for s in spans),
        other_attempts=sum(kinds.get(s.task_id) in ("partition", "manifest") for s in spans),
        failed_attempts=sum(s.outcome not in (None, "SUCCEEDED") for s in spans),
        tasks=len(tasks),
        transitions=len(transitions),
        core_seconds=seconds,
        core_seconds_basis="measured: every attempt in the audit log",
    )


# -- requests and units --------------------------------------------------------------------


def put_requests(n_bytes: int) -> int:
    """PUT-class requests to upload one object of ``n_bytes`` (multipart above 8 MiB)."""
    if n_bytes <= MULTIPART_BYTES:
        return 1
    return math.ceil(n_bytes / MULTIPART_BYTES) + 2  # create + parts + complete


def _pages(n_keys: int) -> int:
    return max(1, math.ceil(n_keys / LIST_PAGE))


def s3_requests(workload: Workload, output_in_s3: bool, input_in_s3: bool) -> dict[str, Any]:
    """S3 requests by type (PUT, GET, HEAD, LIST) and by stage, per the module's model."""
    stages: dict[str, dict[str, int]] = {}
    n, levels = workload.batches, workload.levels
    retries = max(0, workload.batch_attempts - n)
    if input_in_s3:
        stages["input"] = {
            "LIST": _pages(workload.input_files),
            "GET": workload.input_files,
            "HEAD": 0,
            "PUT": 0,
        }
    if output_in_s3:
        sizes = workload.batch_bytes or [0] * n
        stages["partition"] = {
            "PUT": sum(put_requests(b) for b in sizes) + 1, "HEAD": 1, "LIST": 1, "GET": 0,
        }  # fmt: skip
        # every attempt retrieves batch + plan; a success publishes result, dead letters, record
        stages["process"] = {
            "GET": 2 * (n + retries),
            "HEAD": 2 * (n + retries) + 6 * n,
            "PUT": sum(put_requests(b) for b in sizes) + 2 * n,
            "LIST": 0,
        }
        children = sum(levels[:-1])  # every node below the root is read once by its parent
        merge_retries = max(0, workload.merge_attempts - workload.merge_nodes)
        stages["merge"] = {
            "GET": 2 * children + 2 * merge_retries * workload.fan_in,
            "HEAD": 2 * children + 4 * workload.merge_nodes,
            "PUT": 2 * workload.merge_nodes,
            "LIST": 0,
        }
        inner = sum(levels[1:-1])
        records = 1 + n + inner + 1
        stages["manifest"] = {
            "GET": records,
            "HEAD": records + 2 * n + inner + 1 + 2,
            "PUT": 1,
            "LIST": 0,
        }
        objects = (n + 1) + 3 * n + 2 * inner + 2 + 1
        dirs = [n + 1, 2 * n, n, *(2 * size for size in levels[1:-1]), 2]
        stages["scheduler"] = {
            "LIST": _pages(objects) + sum(_pages(d) for d in dirs),
            "GET": 0,
            "HEAD": 0,
            "PUT": 0,
        }
    totals = {
        kind: sum(s[kind] for s in stages.values()) for kind in ("PUT", "GET", "HEAD", "LIST")
    }
    return {"requests": totals, "by_stage": stages}


def dynamodb_units(workload: Workload) -> dict[str, Any]:
    """Read and write request units of the run's state writes, and of one status read."""
    changes = workload.transitions - workload.tasks  # every transition after the creation
    wru = 2 * workload.tasks + 4 * changes
    rru = changes + workload.failed_attempts + _pages(workload.tasks)
    items = workload.tasks + workload.transitions
    stored = (
        workload.tasks * ROW_BYTES + workload.transitions * TRANSITION_BYTES
        + items * ITEM_OVERHEAD_BYTES
    )  # fmt: skip
    return {
        "write_units": wru,
        "read_units": rru,
        "items": items,
        "storage_bytes": stored,
        "read_units_per_status_call": max(
            1, math.ceil(workload.tasks * ROW_BYTES / READ_UNIT_BYTES)
        ),
    }


def stored_bytes(workload: Workload, merge_mode: str) -> int:
    """Bytes a finished run keeps in its folder (batches, results, merge tree), estimated
    with results as large as their batches; a reduce tree's nodes count as negligible."""
    batch_bytes = sum(workload.batch_bytes)
    tree_copies = len(workload.levels) - 1 if merge_mode == "concat" else 0
    return batch_bytes * (2 + tree_copies)


# -- the estimate --------------------------------------------------------------------------


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
        return asdict(self)


def estimate_cost(
    config: RunConfig, workload: Workload, prices: Prices, cpus_per_job: int = 1
) -> CostEstimate:
    """Price a workload. Services the run does not use are shown with ``applies: false`` and
    left out of the total (S3 for a local run folder, DynamoDB for SQLite state)."""
    output_in_s3 = config.output_root.startswith("s3://")
    input_in_s3 = config.input.uri.startswith("s3://")
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
        "S3 and DynamoDB figures follow the request model in orchestrator_ext/cost.py "
        "(docs/capacity.md); storage is per month and not in the total.",
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


def render_cost(estimate: CostEstimate) -> Any:
    """A Rich table of the estimate."""
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
