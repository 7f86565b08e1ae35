"""The run manifest: every output with its checksum, and the item-conservation equation.

``build_manifest`` assembles it from the plan and the records every batch and merge node
wrote beside its output, so it needs no state store; ``write_run_manifest`` commits it
(its sha256 in the state store). Checking a finished run against it is ``verify``.

The manifest also proves the output contract (``output_contract.check_output_contract``): every
batch's ``rows_out`` and their total, the one schema every batch result has, and, with
``job.rows: per_item``, ``rows_out == items_processed`` for every batch and in total; in
concat mode the final holds exactly the batches' rows (``output_contract``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema

from orchestrator_ext import task
from orchestrator_ext.config import RunConfig, read_schema
from orchestrator_ext.errors import MissingOutput, OrchestratorError
from orchestrator_ext.job import code_version
from orchestrator_ext.layout import RunLayout
from orchestrator_ext.location import location_of
from orchestrator_ext.state import StateStore
from orchestrator_ext.storage import (
    atomic_path,
    file_facts,
    read_json,
    sha256_file,
    write_json,
)

MANIFEST_VERSION = 1
SCHEMA_PATH = Path(__file__).parent / "schemas" / "manifest.schema.yaml"

_BATCH_KEYS = [
    "batch_id", "items", "items_processed", "items_dead_lettered", "uri", "sha256", "rows",
    "rows_out", "bytes", "attempts", "duration_s", "host", "slurm_job_id", "dead_letter",
]  # fmt: skip
_MERGE_KEYS = ["level", "index", "children", "uri", "sha256", "rows", "bytes", "attempts"]


class ConservationError(OrchestratorError):
    """Raised when items_in differs from items_processed + items_dead_lettered."""


class ContractBroken(OrchestratorError):
    """Raised when the batch records break the run's output contract (schema, rows)."""


class ManifestInvalid(OrchestratorError):
    """Raised when an assembled manifest does not match the manifest schema."""


def manifest_schema() -> dict[str, Any]:
    """The manifest's JSON schema."""
    return read_schema(SCHEMA_PATH)


def build_manifest(
    config: RunConfig,
    plan_file: str,
    batch_records: list[str],
    merge_records: list[str],
    final_record: str,
    plan_uri: str | None = None,
) -> dict[str, Any]:
    """Assemble the manifest from the plan and the per-node records.

    Raises:
        ConservationError: the counts do not add up (an item was lost or duplicated), or in
            concat mode the final's rows are not the batches' ``rows_out``.
        ContractBroken: the batch results have different schemas, or break ``job.rows``.
    """
    plan = read_json(plan_file)
    records = [read_json(path) for path in batch_records]
    batches: list[dict[str, Any]] = [{k: r.get(k) for k in _BATCH_KEYS} for r in records]
    for batch in batches:  # a record written before rows_out existed
        if batch["rows_out"] is None:
            batch["rows_out"] = batch["rows"]
    merges = [{k: r.get(k) for k in _MERGE_KEYS} for r in map(read_json, merge_records)]
    final = {
        k: v for k, v in read_json(final_record).items() if k in ("uri", "sha256", "rows", "bytes")
    }
    by_category: dict[str, int] = {}
    for record in records:
        for category, n in record.get("dead_letter_by_category", {}).items():
            by_category[category] = by_category.get(category, 0) + n
    processed = sum(b["items_processed"] for b in batches)
    dead = sum(b["items_dead_lettered"] for b in batches)
    if plan["items"] != processed + dead or len(batches) != plan["n_batches"]:
        raise ConservationError(
            f"items not conserved: plan has {plan['items']} items in {plan['n_batches']} "
            f"batches, records show {processed} processed + {dead} dead-lettered in "
            f"{len(batches)} batches"
        )
    rows_out = sum(b["rows_out"] for b in batches)
    if config.merge.mode == "concat" and final.get("rows") != rows_out:
        raise ConservationError(
            f"rows not conserved: the final has {final.get('rows')} rows, the batches' "
            f"rows_out add up to {rows_out} (merge.mode concat)"
        )
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "run_id": config.run_id,
        "config_sha256": config.sha256,
        "code_version": code_version(config.job.function),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "items_in": plan["items"],
        "items_processed": processed,
        "items_dead_lettered": dead,
        "input": plan["input"],
        "plan": {"uri": plan_uri or plan_file, **file_facts(plan_file)},
        "batches": sorted(batches, key=lambda b: b["batch_id"]),
        "merges": sorted(merges, key=lambda m: (m["level"], m["index"])),
        "final": final,
        "dead_letter": {"total": dead, "by_category": dict(sorted(by_category.items()))},
        "rows_out": rows_out,
        "output_contract": _output_contract(config, records, batches),
    }
    manifest.update(_redrive_links(config))
    try:
        jsonschema.validate(manifest, manifest_schema())
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(top level)"
        raise ManifestInvalid(
            f"manifest does not match its schema at '{where}': {exc.message}"
        ) from None
    return manifest


def _output_contract(
    config: RunConfig, records: list[dict[str, Any]], batches: list[dict[str, Any]]
) -> dict[str, Any]:
    """What the manifest says of the output contract, once the records show it held.

    Raises:
        ContractBroken: two batch results have different schemas, one differs from
            ``job.output_schema``, or (``job.rows: per_item``) a batch's ``rows_out`` is
            not its ``items_processed``.
    """
    declared = config.job.output_schema
    schema = [[n, t] for n, t in sorted(declared.items())] if declared is not None else None
    source = "job.output_schema" if declared is not None else None
    for record in records:
        if record.get("schema") is None or (not record["schema"] and not record.get("rows")):
            continue  # written before records had a schema, or no rows and no columns
        if schema is None:
            schema, source = record["schema"], f"batch {record['batch_id']}"
        elif record["schema"] != schema:
            raise ContractBroken(
                f"output contract broken: batch {record['batch_id']}'s result has schema "
                f"{record['schema']}, {source} {schema}"
            )
    if config.job.rows == "per_item":
        for batch in batches:
            if batch["rows_out"] != batch["items_processed"]:
                raise ContractBroken(
                    f"output contract broken: batch {batch['batch_id']} has rows_out "
                    f"{batch['rows_out']} for items_processed {batch['items_processed']} "
                    "(job.rows: per_item)"
                )
    return {"schema": schema, "declared": declared is not None, "rows": config.job.rows,
            "held": True}  # fmt: skip


def _redrive_links(config: RunConfig) -> dict[str, Any]:
    """``redrive_of`` / ``redriven_to`` from the run's ``redrive.json``, if it has one."""
    try:
        links = location_of(config.run_dir).read_json(RunLayout(config.run_dir).redrive)
    except MissingOutput:
        return {}
    return {k: links[k] for k in ("redrive_of", "redriven_to") if k in links}


def listed_files(manifest: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Every file the manifest lists as ``(what, uri, sha256)``."""
    files = (
        [("plan", manifest["plan"]["uri"], manifest["plan"]["sha256"])]
        if "plan" in manifest
        else []
    )
    for batch in manifest["batches"]:
        files.append((f"batch {batch['batch_id']} result", batch["uri"], batch["sha256"]))
        if dead := batch["dead_letter"]:  # None: the batch dead-lettered nothing
            files.append((f"batch {batch['batch_id']} dead letters", dead["uri"], dead["sha256"]))
    for node in manifest["merges"]:
        files.append((f"merge L{node['level']} part {node['index']}", node["uri"], node["sha256"]))
    files.append(("final result", manifest["final"]["uri"], manifest["final"]["sha256"]))
    return files


def write_run_manifest(
    config: RunConfig,
    store: StateStore,
    plan_file: str,
    batch_records: list[str],
    merge_records: list[str],
    final_record: str,
    manifest_file: str,
    plan_uri: str | None = None,
) -> dict[str, Any]:
    """Build, validate and publish ``manifest.json`` as the run's last task.

    ``plan_uri`` is where the plan lives (an ``s3://`` URI for a run in S3) when
    ``plan_file`` is a local copy.
    """
    with store.attempt_scope(task.MANIFEST) as attempt:
        manifest = build_manifest(
            config, plan_file, batch_records, merge_records, final_record, plan_uri
        )
        with atomic_path(manifest_file) as tmp:
            write_json(tmp, manifest)
            store.succeed(attempt, sha256_file(tmp), items=manifest["items_in"])
    return manifest
