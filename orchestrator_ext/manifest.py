"""The run manifest: every output with its checksum, and the item-conservation equation.

``build_manifest`` assembles it from the plan and the records every batch and merge node
wrote beside its output, so it needs no state store. ``verify_manifest`` re-hashes every
file the manifest lists.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema

from orchestrator_ext.config import RunConfig, read_schema
from orchestrator_ext.errors import MissingOutput, OrchestratorError
from orchestrator_ext.job import code_version
from orchestrator_ext.layout import TASK_MANIFEST
from orchestrator_ext.state import StateStore
from orchestrator_ext.storage import atomic_path, file_facts, read_json, sha256_file, write_json

MANIFEST_VERSION = 1
SCHEMA_PATH = Path(__file__).parent / "schemas" / "manifest.schema.yaml"

_BATCH_KEYS = [
    "batch_id", "items", "items_processed", "items_dead_lettered", "uri", "sha256", "rows",
    "bytes", "attempts", "duration_s", "host", "slurm_job_id", "dead_letter",
]  # fmt: skip
_MERGE_KEYS = ["level", "index", "children", "uri", "sha256", "rows", "bytes", "attempts"]


class ConservationError(OrchestratorError):
    """Raised when items_in differs from items_processed + items_dead_lettered."""


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
        ConservationError: the counts do not add up (an item was lost or duplicated).
    """
    plan = read_json(plan_file)
    batches = [{k: r.get(k) for k in _BATCH_KEYS} for r in map(read_json, batch_records)]
    merges = [{k: r.get(k) for k in _MERGE_KEYS} for r in map(read_json, merge_records)]
    final = {
        k: v for k, v in read_json(final_record).items() if k in ("uri", "sha256", "rows", "bytes")
    }
    by_category: dict[str, int] = {}
    for record in map(read_json, batch_records):
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


def _redrive_links(config: RunConfig) -> dict[str, Any]:
    """``redrive_of`` / ``redriven_to`` from the run's ``redrive.json`` (local runs)."""
    path = os.path.join(config.run_dir, "redrive.json")
    if config.run_dir.startswith("s3://") or not os.path.exists(path):
        return {}
    links = read_json(path)
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


def verify_manifest(
    manifest_path: str,
    open_local: Callable[[str], str] = lambda uri: uri,
    sha256_of: Callable[[str], str] | None = None,
) -> list[str]:
    """Re-hash every file the manifest lists.

    Args:
        manifest_path: local path of ``manifest.json``.
        open_local: maps a listed uri to a local path (downloads S3 objects if needed).
        sha256_of: maps a listed uri to the sha256 of its bytes, raising ``MissingOutput``
            when it is absent (e.g. streaming an S3 object); replaces ``open_local``.

    Returns:
        One line per problem (missing file or checksum mismatch); empty when all is well.
    """
    manifest = read_json(manifest_path)
    if manifest.get("manifest_version") != MANIFEST_VERSION:
        return [f"{manifest_path}: unknown manifest_version {manifest.get('manifest_version')}"]
    problems = []
    for what, uri, expected in listed_files(manifest):
        try:
            actual = sha256_of(uri) if sha256_of else sha256_file(open_local(uri))
        except (MissingOutput, FileNotFoundError):
            problems.append(f"missing: {uri} ({what})")
            continue
        if actual != expected:
            problems.append(
                f"checksum mismatch: {uri} ({what}): manifest {expected}, file {actual}"
            )
    return problems


def verify_manifest_at(manifest_uri: str, client: Any = None) -> list[str]:
    """``verify_manifest`` for a manifest on disk or in S3.

    An ``s3://`` manifest is downloaded to a temporary folder; every ``s3://`` file it lists
    is hashed while it streams from S3 (nothing else is written to disk), local ones are
    hashed on disk.

    Raises:
        MissingOutput: the manifest itself is absent. S3Error: the bucket, endpoint or
            credentials are missing.
    """
    import tempfile

    from orchestrator_ext import s3

    if not s3.is_s3_uri(manifest_uri):
        return verify_manifest(manifest_uri)
    client = client or s3.make_s3_client()

    def sha256_of(uri: str) -> str:
        return s3.sha256_object(client, uri) if s3.is_s3_uri(uri) else sha256_file(uri)

    with tempfile.TemporaryDirectory(prefix="orchestrator-manifest-") as tmp:
        try:
            local = s3.download(client, manifest_uri, Path(tmp) / "manifest.json")
        except MissingOutput:
            raise MissingOutput(
                f"no manifest at {manifest_uri}: the run has not finished"
            ) from None
        return verify_manifest(str(local), sha256_of=sha256_of)


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
    with store.attempt_scope(TASK_MANIFEST) as lease:
        manifest = build_manifest(
            config, plan_file, batch_records, merge_records, final_record, plan_uri
        )
        with atomic_path(manifest_file) as tmp:
            write_json(tmp, manifest)
            store.succeed(lease, sha256_file(tmp), items=manifest["items_in"])
    return manifest
