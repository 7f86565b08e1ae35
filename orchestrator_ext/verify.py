"""Verifying a finished run (``orchestrator manifest verify``): re-hash what the manifest lists
and cross-check it against the state store and the run's own records.

``verify_manifest`` re-hashes every file the manifest lists (locally or in S3, streamed).
``verify_run`` also checks the manifest against what the state store committed (the sha256
of the manifest, the final, every batch result and merge node), recomputes item
conservation from the plan, the batch records and the dead-letter files, and the rows each
result really holds (Parquet footers), so rewriting checksums in the run folder is found
too (docs/threat-model.md says what it cannot find). Every problem is one line naming the
file; nothing here raises for a problem found, only for a manifest that is not there.

Over 400 lines on purpose: the checks share the records read once (a run in S3 pays one
request per record), and each is a few lines of comparison with its message.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable
from typing import Any

import jsonschema

from orchestrator_ext import task
from orchestrator_ext.config import RunConfig
from orchestrator_ext.errors import CorruptFile, MissingOutput, OrchestratorError, describe
from orchestrator_ext.layout import RunLayout
from orchestrator_ext.location import Location, location_of
from orchestrator_ext.manifest import (
    MANIFEST_VERSION,
    listed_files,
    manifest_schema,
)
from orchestrator_ext.state import StateStore, TaskRecord
from orchestrator_ext.storage import parse_json_object, record_text


def verify_manifest(manifest_uri: str, location: Location | None = None) -> list[str]:
    """Re-hash every file the manifest lists, on disk or in S3 (streamed, nothing written).

    Returns:
        One line per problem (missing file or checksum mismatch); empty when all is well.

    Raises:
        MissingOutput: the manifest itself is absent. CorruptFile: it is not a JSON object.
            S3Error: the bucket, endpoint or credentials are missing.
    """
    location = location or location_of(manifest_uri)
    manifest, _ = _read_manifest(manifest_uri, location)
    if manifest.get("manifest_version") != MANIFEST_VERSION:
        return [f"{manifest_uri}: unknown manifest_version {manifest.get('manifest_version')}"]
    return _rehash(manifest, location.sha256)[0]


def _read_manifest(manifest_uri: str, location: Location) -> tuple[dict[str, Any], str]:
    """The manifest and the sha256 of its bytes (one read)."""
    try:
        data = location.read_bytes(manifest_uri)
    except MissingOutput:
        raise MissingOutput(f"no manifest at {manifest_uri}: the run has not finished") from None
    return parse_json_object(data, manifest_uri), hashlib.sha256(data).hexdigest()


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


# Fields of a batch entry that must equal its record (attempts, host, duration_s may
# change when Snakemake re-runs a lost batch without rebuilding the manifest).
_BATCH_CHECKED = (
    "items", "items_processed", "items_dead_lettered", "uri", "sha256", "rows", "rows_out",
    "dead_letter",
)  # fmt: skip


def _record(location: Location, uri: str, what: str, problems: list[str]) -> dict[str, Any] | None:
    """A JSON record, or None with the reason appended to ``problems``."""
    try:
        return location.read_json(uri)
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
        open_store: opens the run's state store (as ``cli.run_config.open_run_store``).
        client: S3 client for a run in S3 (default: ``s3.make_s3_client()`` when needed).

    Returns:
        One line per problem; empty when all holds.

    Raises:
        MissingOutput: there is no manifest (the run has not finished). CorruptFile: the
            manifest is not a JSON object. S3Error: bucket, endpoint or credentials missing.
    """
    layout = RunLayout(config.run_dir)
    files = location_of(config.run_dir, client)
    manifest_uri = layout.manifest
    manifest, manifest_sha256 = _read_manifest(manifest_uri, files)
    if manifest.get("manifest_version") != MANIFEST_VERSION:
        return [f"{manifest_uri}: unknown manifest_version {manifest.get('manifest_version')}"]
    try:
        jsonschema.validate(manifest, manifest_schema())
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(top level)"
        return [f"{manifest_uri}: does not match the manifest schema at '{where}': {exc.message}"]
    problems, hashes = _rehash(manifest, files.sha256)
    missing = {uri for _, uri, _ in listed_files(manifest)} - hashes.keys()
    plan = _record(files, layout.plan, "plan", problems)
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
    problems += _redrive_link_problems(manifest, manifest_uri, layout, files)
    problems += _store_problems(
        config.run_id, open_store, manifest, manifest_uri, manifest_sha256,
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
    files: Location,
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
        record = _record(files, record_uri, f"batch {batch_id} record", read_problems)
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
    files: Location,
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
        if not isinstance(uri, str):
            continue
        try:
            rows = files.parquet_rows(uri)
        except (MissingOutput, pa.ArrowException, OSError):
            continue  # missing or not Parquet: the re-hash reports it
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
    if isinstance(final_uri, str):
        try:
            rows = files.parquet_rows(final_uri)
        except (MissingOutput, pa.ArrowException, OSError):
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
    files: Location,
    reported_missing: set[str],
) -> list[str]:
    """Each record's dead-letter count against its dead-letter file."""
    import pyarrow as pa

    problems = []
    # One listing, not a request per batch: most batches have no dead letters.
    present = {uri.rsplit("/", 1)[-1] for uri in files.list(layout.dead_letters_dir)}
    for batch_id, (record_uri, record) in sorted(records.items()):
        n_dead, entry = record.get("items_dead_lettered"), record.get("dead_letter")
        if entry is None:
            path = layout.dead_letter(batch_id)
            if n_dead:
                problems.append(
                    f"dead letters: {record_uri} (batch {batch_id}): items_dead_lettered is "
                    f"{n_dead} but the record names no dead-letter file"
                )
            elif path.rsplit("/", 1)[-1] in present:
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
            rows = files.parquet_rows(uri)
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
    manifest: dict[str, Any], manifest_uri: str, layout: RunLayout, files: Location
) -> list[str]:
    """``redriven_to`` (added by ``orchestrator redrive`` after the commit) against the run's
    ``redrive.json``: a consistency check within the run folder, not against the store."""
    if "redriven_to" not in manifest:
        return []
    path = layout.redrive
    try:
        links = files.read_json(path).get("redriven_to")
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
    return hashlib.sha256(record_text(original).encode()).hexdigest() == committed_sha256


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

    def committed(task_id: str, uri: str, what: str) -> TaskRecord | None:
        row = rows.get(task_id)
        if row is None or not row.output_sha256:
            state = "no row" if row is None else f"no output_sha256 (status {row.status})"
            problems.append(
                f"cannot cross-check against the state store: {uri} ({what}): task {task_id} "
                f"has {state}"
            )
            return None
        return row

    def check_file(task_id: str, uri: str, what: str, listed: str) -> TaskRecord | None:
        row = committed(task_id, uri, what)
        actual, source = (hashes[uri], "file") if uri in hashes else (listed, "manifest")
        if row is not None and row.output_sha256 != actual:
            problems.append(
                f"state store mismatch: {uri} ({what}, task {task_id}): state store "
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

    row = committed(task.MANIFEST, manifest_uri, "manifest")
    stored = row.output_sha256 if row is not None else None
    if stored and stored != manifest_sha256 and not _committed_before_redrive(manifest, stored):
        problems.append(
            f"state store mismatch: {manifest_uri} (manifest, task {task.MANIFEST}): state "
            f"store {stored}, file {manifest_sha256}"
        )
    check_count(row, "items", manifest_uri, "manifest", "items_in", manifest["items_in"])
    final = manifest["final"]
    check_file(task.FINAL, final["uri"], "final result", final["sha256"])
    for entry in manifest["batches"]:
        batch_id = entry["batch_id"]
        task_id = task.batch_id(int(batch_id))
        row = check_file(task_id, entry["uri"], f"batch {batch_id} result", entry["sha256"])
        uri, counts = records.get(batch_id, (manifest_uri, entry))
        what = f"batch {batch_id}"
        check_count(row, "items", uri, what, "items", counts.get("items"))
        check_count(
            row, "items_dead", uri, what, "items_dead_lettered", counts.get("items_dead_lettered")
        )
    for node in manifest["merges"]:
        task_id = task.merge_id(node["level"], node["index"])
        what = f"merge L{node['level']} part {node['index']}"
        check_file(task_id, node["uri"], what, node["sha256"])
    listed_tasks = {task.batch_id(int(b["batch_id"])) for b in manifest["batches"]}
    listed_tasks |= {task.merge_id(m["level"], m["index"]) for m in manifest["merges"]}
    for task_id in sorted(t for t in rows if task.kind(t) in ("batch", "merge")):
        if task_id not in listed_tasks:
            problems.append(
                f"state store mismatch: {manifest_uri} (task {task_id}): the state store's plan "
                "has the task, the manifest does not list it"
            )
    partition = rows.get(task.PARTITION)
    if plan is None:
        return problems
    if partition is None:
        problems.append(
            f"cannot cross-check against the state store: {plan_uri} (plan): task "
            f"{task.PARTITION} has no row"
        )
        return problems
    listing = (plan.get("input") or {}).get("listing_sha256")
    if partition.output_sha256 is not None and listing != partition.output_sha256:
        problems.append(
            f"state store mismatch: {plan_uri} (plan, task {task.PARTITION}): input "
            f"listing_sha256 {listing}, state store {partition.output_sha256}"
        )
    check_count(partition, "items", plan_uri, "plan", "items", plan.get("items"))
    return problems


def render_verified(manifest_path: str) -> str:
    """The line ``manifest verify`` prints when it found no problem."""
    return (
        f"ok: every file listed in {manifest_path} matches its sha256 and the state store, "
        "and the plan's items are conserved"
    )
