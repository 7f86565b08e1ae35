"""The run manifest: every output with its checksum, and the item-conservation equation.

``build_manifest`` assembles it from the plan and the records every batch and merge node
wrote beside its output, so it needs no state store. ``verify_manifest`` re-hashes every
file the manifest lists; ``verify_run`` (``orchestrator manifest verify``) also checks the
manifest against what the state store committed (the sha256 of the manifest, the final, every
batch result and merge node) and recomputes item conservation from the plan, the batch
records and the dead-letter files, so rewriting checksums in the run folder is found too
(docs/threat-model.md says what it cannot find).

The manifest also proves the output contract (``process.check_output_contract``): every
batch's ``rows_out`` and their total, the one schema every batch result has, and, with
``job.rows: per_item``, ``rows_out == items_processed`` for every batch and in total; in
concat mode the final holds exactly the batches' rows (``output_contract``).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema

from orchestrator_ext.config import RunConfig, read_schema
from orchestrator_ext.errors import CorruptFile, MissingOutput, OrchestratorError, describe
from orchestrator_ext.job import code_version
from orchestrator_ext.layout import (
    TASK_FINAL,
    TASK_MANIFEST,
    TASK_PARTITION,
    RunLayout,
    task_id_for_batch,
    task_id_for_merge,
)
from orchestrator_ext.state import StateStore, TaskRecord
from orchestrator_ext.storage import (
    atomic_path,
    file_facts,
    parse_json_object,
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
    batches = [{k: r.get(k) for k in _BATCH_KEYS} for r in records]
    for batch in batches:  # a record written before rows_out existed
        if batch["rows_out"] is None:
            batch["rows_out"] = batch["rows"]
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
    return _rehash(manifest, sha256_of or (lambda uri: sha256_file(open_local(uri))))[0]


def _rehash(
    manifest: dict[str, Any], sha256_of: Callable[[str], str]
) -> tuple[list[str], dict[str, str]]:
    """Problems of ``verify_manifest`` and the sha256 each listed file has (by uri)."""
    problems, hashes = [], {}
    for what, uri, expected in listed_files(manifest):
        try:
            actual = sha256_of(uri)
        except (MissingOutput, FileNotFoundError):
            problems.append(f"missing: {uri} ({what})")
            continue
        hashes[uri] = actual
        if actual != expected:
            problems.append(
                f"checksum mismatch: {uri} ({what}): manifest {expected}, file {actual}"
            )
    return problems, hashes


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
        parse_json_object(Path(local).read_bytes(), manifest_uri)  # name the URI, not the copy
        return verify_manifest(str(local), sha256_of=sha256_of)


# Fields of a batch entry that must equal its record (attempts, host, duration_s may
# change when Snakemake re-runs a lost batch without rebuilding the manifest).
_BATCH_CHECKED = (
    "items", "items_processed", "items_dead_lettered", "uri", "sha256", "rows", "rows_out",
    "dead_letter",
)  # fmt: skip


class _RunFiles:
    """Reads a run's files on disk or in S3, with one S3 client made when first needed."""

    def __init__(self, client: Any = None) -> None:
        self._client = client

    def _s3(self) -> Any:
        from orchestrator_ext import s3

        if self._client is None:
            self._client = s3.make_s3_client()
        return self._client

    def read_bytes(self, uri: str) -> bytes:
        from orchestrator_ext import s3

        if s3.is_s3_uri(uri):
            return s3.read_bytes(self._s3(), uri)
        try:
            return Path(uri).read_bytes()
        except FileNotFoundError:
            raise MissingOutput(f"file not found: {uri}") from None

    def sha256(self, uri: str) -> str:
        from orchestrator_ext import s3

        return s3.sha256_object(self._s3(), uri) if s3.is_s3_uri(uri) else sha256_file(uri)

    def rows(self, uri: str) -> int:
        """Row count of a Parquet file (an object in S3 is read whole: dead letters are small)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        from orchestrator_ext import s3

        if s3.is_s3_uri(uri):
            return int(pq.read_metadata(pa.BufferReader(self.read_bytes(uri))).num_rows)
        if not os.path.exists(uri):
            raise MissingOutput(f"file not found: {uri}")
        return int(pq.read_metadata(uri).num_rows)

    def record(self, uri: str, what: str, problems: list[str]) -> dict[str, Any] | None:
        """A JSON record, or None with the reason appended to ``problems``."""
        try:
            return parse_json_object(self.read_bytes(uri), uri)
        except MissingOutput:
            problems.append(f"missing: {uri} ({what})")
        except CorruptFile as exc:
            problems.append(str(exc))
        return None


def verify_run(
    config: RunConfig, open_store: Callable[[], StateStore], client: Any = None
) -> list[str]:
    """Everything ``orchestrator manifest verify`` checks, one line per problem naming the file.

    1. Every file the manifest lists matches its sha256 (``verify_manifest``).
    2. Conservation, recomputed from the plan (``batches/plan.json``) and the batch records
       (``results/batch-N.json``): every batch of the plan is listed once, ``items_in`` is
       the plan's item count, each record's counts add up and agree with the plan and with
       its manifest entry, and the manifest's totals are the sums of the records.
    3. Each record's dead-letter count against its dead-letter file: the file's row count
       when the record names one; no file when the record names none (local runs only: in
       S3 an object an earlier attempt left is not the batch's, the record decides).
    4. The state store (another store than the run folder): the manifest file's sha256
       against task ``manifest``'s ``output_sha256``, the final's against task ``final``,
       every batch result and merge node against its task, item counts against the
       ``partition``, batch and ``manifest`` rows, and the store's batch and merge tasks
       against those the manifest lists. A store that cannot be opened or read, or lacks a
       row, is a problem (``cannot cross-check against the state store: ...``).
    5. Rows (``_rows_out_problems``): each record's ``rows_out`` against its result file
       (local runs), their sum against the manifest's ``rows_out`` and, in concat mode,
       against the final's rows (manifest entry and file); with ``job.rows: per_item``
       every record's ``rows_out`` against its ``items_processed``.

    Args:
        config: the run (its folder, local or ``s3://``; its state backend).
        open_store: opens the run's state store (as ``cli._open_store``).
        client: S3 client for a run in S3 (default: ``s3.make_s3_client()`` when needed).

    Returns:
        One line per problem; empty when all holds.

    Raises:
        MissingOutput: there is no manifest (the run has not finished). CorruptFile: the
            manifest is not a JSON object. S3Error: bucket, endpoint or credentials missing.
    """
    layout = RunLayout(config.run_dir)
    files = _RunFiles(client)
    manifest_uri = layout.manifest
    try:
        data = files.read_bytes(manifest_uri)
    except MissingOutput:
        raise MissingOutput(f"no manifest at {manifest_uri}: the run has not finished") from None
    manifest = parse_json_object(data, manifest_uri)
    if manifest.get("manifest_version") != MANIFEST_VERSION:
        return [f"{manifest_uri}: unknown manifest_version {manifest.get('manifest_version')}"]
    try:
        jsonschema.validate(manifest, manifest_schema())
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(top level)"
        return [f"{manifest_uri}: does not match the manifest schema at '{where}': {exc.message}"]
    problems, hashes = _rehash(manifest, files.sha256)
    missing = {uri for _, uri, _ in listed_files(manifest)} - hashes.keys()
    plan = files.record(layout.plan, "plan", problems)
    records: dict[str, tuple[str, dict[str, Any]]] = {}
    if plan is not None:
        problems += _conservation(manifest, manifest_uri, plan, layout, files, records, problems)
    problems += _dead_letter_problems(records, layout, files, missing)
    if (
        plan is not None
        and isinstance(plan.get("batches"), list)
        and len(records) == len(plan["batches"])
    ):
        problems += _rows_out_problems(config, manifest, manifest_uri, records, layout, files)
    problems += _redrive_link_problems(manifest, manifest_uri, layout)
    problems += _store_problems(
        config.run_id, open_store, manifest, manifest_uri, hashlib.sha256(data).hexdigest(),
        hashes, plan, layout.plan, records,
    )  # fmt: skip
    return problems


def _counts(record: dict[str, Any], keys: tuple[str, ...]) -> tuple[int, ...] | None:
    values = tuple(record.get(k) for k in keys)
    ok = all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values)
    return values if ok else None  # type: ignore[return-value]


def _conservation(
    manifest: dict[str, Any],
    manifest_uri: str,
    plan: dict[str, Any],
    layout: RunLayout,
    files: _RunFiles,
    records: dict[str, tuple[str, dict[str, Any]]],
    read_problems: list[str],
) -> list[str]:
    """Conservation from the plan and the batch records; fills ``records`` (batch id ->
    (uri, record)). A record that cannot be read goes to ``read_problems``."""
    plan_uri = layout.plan
    try:
        plan_batches = {str(b["batch_id"]): int(b["items"]) for b in plan["batches"]}
        plan_items, n_batches = int(plan["items"]), int(plan["n_batches"])
    except (KeyError, TypeError, ValueError) as exc:
        return [f"conservation: {plan_uri}: not a readable plan ({describe(exc)})"]
    problems = []
    if n_batches != len(plan["batches"]) or len(plan_batches) != len(plan["batches"]):
        problems.append(
            f"conservation: {plan_uri}: n_batches is {n_batches} but it holds "
            f"{len(plan_batches)} distinct batches of {len(plan['batches'])}"
        )
    if sum(plan_batches.values()) != plan_items:
        problems.append(
            f"conservation: {plan_uri}: items is {plan_items} but its batches hold "
            f"{sum(plan_batches.values())}"
        )
    if manifest["items_in"] != plan_items:
        problems.append(
            f"conservation: {manifest_uri}: items_in is {manifest['items_in']} but the plan "
            f"{plan_uri} has {plan_items} items"
        )
    if manifest["items_in"] != manifest["items_processed"] + manifest["items_dead_lettered"]:
        problems.append(
            f"conservation: {manifest_uri}: items_in {manifest['items_in']} != items_processed "
            f"{manifest['items_processed']} + items_dead_lettered "
            f"{manifest['items_dead_lettered']}"
        )
    entries: dict[str, dict[str, Any]] = {}
    for entry in manifest["batches"]:
        if entry["batch_id"] in entries:
            problems.append(f"conservation: {manifest_uri}: lists batch {entry['batch_id']} twice")
        entries[entry["batch_id"]] = entry
    for batch_id in sorted(plan_batches.keys() - entries.keys()):
        problems.append(
            f"conservation: {manifest_uri}: batch {batch_id} of the plan {plan_uri} is not listed"
        )
    for batch_id in sorted(entries.keys() - plan_batches.keys()):
        problems.append(
            f"conservation: {manifest_uri}: lists batch {batch_id}, which the plan {plan_uri} "
            "does not have"
        )
    processed = dead = 0
    by_category: dict[str, int] = {}
    for batch_id, planned in sorted(plan_batches.items()):
        record_uri = layout.result_record(batch_id)
        record = files.record(record_uri, f"batch {batch_id} record", read_problems)
        if record is None:
            continue
        records[batch_id] = (record_uri, record)
        counts = _counts(record, ("items", "items_processed", "items_dead_lettered"))
        categories = record.get("dead_letter_by_category", {})
        if (
            counts is None
            or not isinstance(categories, dict)
            or _counts(categories, tuple(categories)) is None
        ):
            problems.append(
                f"conservation: {record_uri} (batch {batch_id}): items, items_processed, "
                "items_dead_lettered and dead_letter_by_category must be counts"
            )
            continue
        n, done, n_dead = counts
        processed, dead = processed + done, dead + n_dead
        for category, count in categories.items():
            by_category[category] = by_category.get(category, 0) + count
        if n != planned:
            problems.append(
                f"conservation: {record_uri} (batch {batch_id}): items is {n} but the plan "
                f"{plan_uri} gives the batch {planned}"
            )
        if n != done + n_dead:
            problems.append(
                f"conservation: {record_uri} (batch {batch_id}): items {n} != items_processed "
                f"{done} + items_dead_lettered {n_dead}"
            )
        if sum(categories.values()) != n_dead:
            problems.append(
                f"conservation: {record_uri} (batch {batch_id}): dead_letter_by_category adds "
                f"up to {sum(categories.values())}, items_dead_lettered is {n_dead}"
            )
        entry = entries.get(batch_id)
        if entry is None:
            continue
        for key in _BATCH_CHECKED:
            listed, recorded = entry.get(key), record.get(key)
            if key == "rows_out":  # a record from before rows_out: the manifest took rows
                listed, recorded = _rows_out(entry), _rows_out(record)
            if listed != recorded:
                problems.append(
                    f"manifest mismatch: {manifest_uri} (batch {batch_id}): {key} is "
                    f"{listed!r}, its record {record_uri} has {recorded!r}"
                )
    if len(records) == len(plan_batches):  # the sums mean something only over all records
        totals = [
            ("items_processed", manifest["items_processed"], processed),
            ("items_dead_lettered", manifest["items_dead_lettered"], dead),
            ("dead_letter/total", manifest["dead_letter"]["total"], dead),
            ("dead_letter/by_category", manifest["dead_letter"]["by_category"],
             dict(sorted(by_category.items()))),
        ]  # fmt: skip
        for key, listed, summed in totals:
            if listed != summed:
                problems.append(
                    f"conservation: {manifest_uri}: {key} is {listed} but the batch records "
                    f"add up to {summed}"
                )
    return problems


def _rows_out(record: dict[str, Any]) -> Any:
    """A record's ``rows_out`` (its ``rows`` if it was written before rows_out existed)."""
    return record.get("rows_out", record.get("rows"))


def _rows_out_problems(
    config: RunConfig,
    manifest: dict[str, Any],
    manifest_uri: str,
    records: dict[str, tuple[str, dict[str, Any]]],
    layout: RunLayout,
    files: _RunFiles,
) -> list[str]:
    """The batch records' ``rows_out`` against the manifest's total, the final (concat
    mode), the result files (local runs: their Parquet footers) and ``job.rows``."""
    import pyarrow as pa

    problems, total = [], 0
    per_item = (manifest.get("output_contract") or {}).get("rows", config.job.rows) == "per_item"
    for batch_id, (record_uri, record) in sorted(records.items()):
        rows_out = _rows_out(record)
        if _counts({"rows_out": rows_out}, ("rows_out",)) is None:
            problems.append(f"rows: {record_uri} (batch {batch_id}): rows_out must be a count")
            return problems
        total += rows_out
        if per_item and rows_out != record.get("items_processed"):
            problems.append(
                f"rows: {record_uri} (batch {batch_id}): rows_out {rows_out} != items_processed "
                f"{record.get('items_processed')} (job.rows: per_item)"
            )
        uri = record.get("uri")
        if layout.is_remote or not isinstance(uri, str) or not os.path.exists(uri):
            continue  # a missing result is reported by the re-hash
        try:
            rows = files.rows(uri)
        except (pa.ArrowException, OSError):
            continue  # not Parquet: the re-hash reports the checksum mismatch
        if rows != rows_out:
            problems.append(
                f"rows: {uri} (batch {batch_id}): {rows} rows, but its record {record_uri} "
                f"says rows_out {rows_out}"
            )
    if "rows_out" in manifest and manifest["rows_out"] != total:
        problems.append(
            f"rows: {manifest_uri}: rows_out is {manifest['rows_out']} but the batch records "
            f"add up to {total}"
        )
    if config.merge.mode != "concat":
        return problems
    final_uri = manifest["final"]["uri"]
    if manifest["final"].get("rows") != total:
        problems.append(
            f"rows: {manifest_uri}: the final {final_uri} has rows {manifest['final'].get('rows')}"
            f" but the batch records' rows_out add up to {total} (merge.mode concat)"
        )
    if not layout.is_remote and os.path.exists(final_uri):
        try:
            rows = files.rows(final_uri)
        except (pa.ArrowException, OSError):
            return problems
        if rows != total:
            problems.append(
                f"rows: {final_uri} (final result): {rows} rows, but the batch records' "
                f"rows_out add up to {total} (merge.mode concat)"
            )
    return problems


def _dead_letter_problems(
    records: dict[str, tuple[str, dict[str, Any]]],
    layout: RunLayout,
    files: _RunFiles,
    reported_missing: set[str],
) -> list[str]:
    """Each record's dead-letter count against its dead-letter file."""
    import pyarrow as pa

    problems = []
    for batch_id, (record_uri, record) in sorted(records.items()):
        n_dead, entry = record.get("items_dead_lettered"), record.get("dead_letter")
        if entry is None:
            path = layout.dead_letter(batch_id)
            if n_dead:
                problems.append(
                    f"dead letters: {record_uri} (batch {batch_id}): items_dead_lettered is "
                    f"{n_dead} but the record names no dead-letter file"
                )
            elif not layout.is_remote and os.path.exists(path):
                problems.append(
                    f"dead letters: {path} (batch {batch_id}): exists, but its record "
                    f"{record_uri} says the batch dead-lettered nothing"
                )
            continue
        uri = entry.get("uri") if isinstance(entry, dict) else None
        if not isinstance(uri, str):
            problems.append(
                f"dead letters: {record_uri} (batch {batch_id}): dead_letter has no uri"
            )
            continue
        try:
            rows = files.rows(uri)
        except MissingOutput:
            if uri not in reported_missing:
                problems.append(f"missing: {uri} (batch {batch_id} dead letters)")
            continue
        except (pa.ArrowException, OSError) as exc:
            problems.append(
                f"dead letters: {uri} (batch {batch_id}): cannot count its rows ({describe(exc)})"
            )
            continue
        if rows != n_dead:
            problems.append(
                f"dead letters: {uri} (batch {batch_id}): {rows} rows, but its record "
                f"{record_uri} says items_dead_lettered {n_dead}"
            )
    return problems


def _redrive_link_problems(
    manifest: dict[str, Any], manifest_uri: str, layout: RunLayout
) -> list[str]:
    """``redriven_to`` (added by ``orchestrator redrive`` after the commit) against the run's
    ``redrive.json``: a consistency check within the run folder, not against the store."""
    if "redriven_to" not in manifest or layout.is_remote:
        return []
    path = os.path.join(layout.run_dir, "redrive.json")
    try:
        links = read_json(path).get("redriven_to")
    except OrchestratorError as exc:
        return [f"manifest mismatch: {manifest_uri}: has redriven_to but {path}: {exc}"]
    if links != manifest["redriven_to"]:
        return [f"manifest mismatch: {manifest_uri}: redriven_to differs from {path}"]
    return []


def _committed_before_redrive(manifest: dict[str, Any], committed_sha256: str) -> bool:
    """True when the manifest is the committed one plus the ``redriven_to`` list that
    ``orchestrator redrive`` adds afterwards (rewriting the file as ``write_json`` does)."""
    if "redriven_to" not in manifest:
        return False
    original = {k: v for k, v in manifest.items() if k != "redriven_to"}
    text = json.dumps(original, indent=2, sort_keys=True, default=str) + "\n"  # = write_json
    return hashlib.sha256(text.encode()).hexdigest() == committed_sha256


def _store_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [OrchestratorError, OSError, sqlite3.Error]
    try:
        from botocore.exceptions import BotoCoreError, ClientError

        errors += [BotoCoreError, ClientError]
    except ImportError:  # pragma: no cover - boto3 is a dependency
        pass
    return tuple(errors)


def _store_problems(
    run_id: str,
    open_store: Callable[[], StateStore],
    manifest: dict[str, Any],
    manifest_uri: str,
    manifest_sha256: str,
    hashes: dict[str, str],
    plan: dict[str, Any] | None,
    plan_uri: str,
    records: dict[str, tuple[str, dict[str, Any]]],
) -> list[str]:
    """The run folder against what the state store committed."""
    try:
        store = open_store()
        try:
            rows: dict[str, TaskRecord] = {r.task_id: r for r in store.tasks()}
        finally:
            store.close()
    except _store_errors() as exc:
        reason = str(exc) if isinstance(exc, OrchestratorError) else describe(exc)
        return [f"cannot cross-check against the state store: {' '.join(reason.split())}"]
    if not rows:
        return [f"cannot cross-check against the state store: it holds no tasks of run {run_id}"]
    problems: list[str] = []

    def committed(task: str, uri: str, what: str) -> TaskRecord | None:
        row = rows.get(task)
        if row is None or not row.output_sha256:
            state = "no row" if row is None else f"no output_sha256 (status {row.status})"
            problems.append(
                f"cannot cross-check against the state store: {uri} ({what}): task {task} "
                f"has {state}"
            )
            return None
        return row

    def check_file(task: str, uri: str, what: str, listed: str) -> TaskRecord | None:
        row = committed(task, uri, what)
        actual, source = (hashes[uri], "file") if uri in hashes else (listed, "manifest")
        if row is not None and row.output_sha256 != actual:
            problems.append(
                f"state store mismatch: {uri} ({what}, task {task}): state store "
                f"{row.output_sha256}, {source} {actual}"
            )
        return row

    def check_count(row: TaskRecord | None, field: str, uri: str, what: str, key: str,
                    value: Any) -> None:  # fmt: skip
        stored = getattr(row, field, None)
        if row is not None and stored is not None and stored != value:
            problems.append(
                f"state store mismatch: {uri} ({what}, task {row.task_id}): "
                f"{key} is {value}, state store {field} {stored}"
            )

    row = committed(TASK_MANIFEST, manifest_uri, "manifest")
    stored = row.output_sha256 if row is not None else None
    if stored and stored != manifest_sha256 and not _committed_before_redrive(manifest, stored):
        problems.append(
            f"state store mismatch: {manifest_uri} (manifest, task {TASK_MANIFEST}): state "
            f"store {stored}, file {manifest_sha256}"
        )
    check_count(row, "items", manifest_uri, "manifest", "items_in", manifest["items_in"])
    final = manifest["final"]
    check_file(TASK_FINAL, final["uri"], "final result", final["sha256"])
    for entry in manifest["batches"]:
        batch_id = entry["batch_id"]
        task = task_id_for_batch(int(batch_id))
        row = check_file(task, entry["uri"], f"batch {batch_id} result", entry["sha256"])
        uri, counts = records.get(batch_id, (manifest_uri, entry))
        what = f"batch {batch_id}"
        check_count(row, "items", uri, what, "items", counts.get("items"))
        check_count(
            row, "items_dead", uri, what, "items_dead_lettered", counts.get("items_dead_lettered")
        )
    for node in manifest["merges"]:
        task = task_id_for_merge(node["level"], node["index"])
        what = f"merge L{node['level']} part {node['index']}"
        check_file(task, node["uri"], what, node["sha256"])
    listed_tasks = {task_id_for_batch(int(b["batch_id"])) for b in manifest["batches"]}
    listed_tasks |= {task_id_for_merge(m["level"], m["index"]) for m in manifest["merges"]}
    for task in sorted(t for t in rows if t.startswith(("batch-", "merge-"))):
        if task not in listed_tasks:
            problems.append(
                f"state store mismatch: {manifest_uri} (task {task}): the state store's plan "
                "has the task, the manifest does not list it"
            )
    partition = rows.get(TASK_PARTITION)
    if plan is None:
        return problems
    if partition is None:
        problems.append(
            f"cannot cross-check against the state store: {plan_uri} (plan): task "
            f"{TASK_PARTITION} has no row"
        )
        return problems
    listing = (plan.get("input") or {}).get("listing_sha256")
    if partition.output_sha256 is not None and listing != partition.output_sha256:
        problems.append(
            f"state store mismatch: {plan_uri} (plan, task {TASK_PARTITION}): input "
            f"listing_sha256 {listing}, state store {partition.output_sha256}"
        )
    check_count(partition, "items", plan_uri, "plan", "items", plan.get("items"))
    return problems


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
