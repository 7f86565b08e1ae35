"""Redrive: a new run over the dead-lettered items of a finished run.

``redrive`` joins the ids in ``dead_letter/batch-*.parquet`` with the run's batch files (or
with the input rows the plan names, for row ranges), so the new input holds the items'
*original rows* (every input column), in batch order. It
writes that as one Parquet file, a config for the new run that is the old one with
``run_id`` and ``input`` replaced, and a ``redrive.json`` in both run folders::

    {old run}/redrive.json   {"redrive_version": 1, "redriven_to": [{run_id, config,
                               items, items_sha256, by_category, created_at}, ...]}
    {new run}/redrive.json   {"redrive_version": 1, "redrive_of": {run_id, run_dir,
                               manifest_sha256, items, items_sha256, by_category,
                               category_filter, created_at}}

The old run's file is appended to on every redrive (written atomically), and the old run's
manifest gains the same ``redriven_to`` list; the new run's manifest carries
``redrive_of`` (``manifest.build_manifest`` reads the new run's ``redrive.json``). Run
folders may be local or in S3 (``location``); the new config and, by default, its input
file are written beside ``--out`` on this machine (``--items-out`` may be an ``s3://`` URI).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from orchestrator_ext.errors import OrchestratorError
from orchestrator_ext.layout import RunLayout
from orchestrator_ext.location import Location, S3Location, join, location_of
from orchestrator_ext.storage import atomic_path

if TYPE_CHECKING:
    import polars as pl

    from orchestrator_ext.config import RunConfig

REDRIVE_VERSION = 1
REDRIVE_FILE = "redrive.json"


class RedriveError(OrchestratorError):
    """Raised when a redrive cannot be made: unfinished run, nothing dead-lettered, a target
    that already exists, or dead letters that do not match the run's batches."""


@dataclass
class RedrivePlan:
    """What ``redrive`` wrote."""

    from_run_id: str
    run_id: str
    config: str
    items_file: str
    items: int
    items_sha256: str
    by_category: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def next_run_id(config: RunConfig, files: Location | None = None) -> str:
    """``{run_id}-redrive-N`` with the first N whose run folder does not exist yet."""
    files = files or location_of(config.output_root)
    n = 1
    while files.occupied(join(config.output_root, f"{config.run_id}-redrive-{n}")):
        n += 1
    return f"{config.run_id}-redrive-{n}"


def collect_dead_items(
    config: RunConfig, category: str | None = None, files: Location | None = None
) -> tuple[pl.DataFrame, dict[str, int]]:
    """The original rows of the run's dead-lettered items, and their count per category:
    from the batch files, or for row ranges (``batching.row_ranges``) from the input.

    Raises:
        RedriveError: a dead-letter file has no batch file, or names ids its batch lacks.
        InputError: an input file of a row range changed since the partition.
    """
    import polars as pl

    from orchestrator_ext import row_ranges

    id_column = config.input.id_column
    files = files or location_of(config.run_dir)
    layout = RunLayout(config.run_dir)
    plan = files.read_json(layout.plan)
    frames: list[pl.DataFrame] = []
    by_category: dict[str, int] = {}
    for path in files.list(layout.dead_letters_dir, ".parquet"):
        dead = files.read_parquet(path)
        if category is not None:
            dead = dead.filter(pl.col("category") == category)
        if dead.height == 0:
            continue
        batch_id = path.rsplit("/", 1)[-1].removesuffix(".parquet").removeprefix("batch-")
        entries = plan["batches"]
        entry = entries[int(batch_id)] if int(batch_id) < len(entries) else {}
        if "ranges" in entry:
            batch_file = f"the rows {layout.plan} names for batch {batch_id}"
            rows = row_ranges.read(config.input, plan, entry)
        else:
            batch_file = layout.batch(batch_id)
            if not files.exists(batch_file):
                raise RedriveError(
                    f"{path} has no batch file {batch_file}: the run folder is incomplete"
                )
            rows = files.read_parquet(batch_file)
        wanted = dead.select(pl.col("id").cast(rows.schema[id_column]).alias(id_column)).unique()
        found = rows.join(wanted, on=id_column, how="semi", maintain_order="left")
        if found.height != wanted.height:
            raise RedriveError(
                f"{path}: {wanted.height - found.height} dead-lettered ids are not in "
                f"{batch_file}; the dead letters do not belong to this run's batches"
            )
        frames.append(found)
        for name, n in dead.group_by("category").len().iter_rows():
            by_category[name] = by_category.get(name, 0) + n
    if not frames:
        what = f" of category {category!r}" if category else ""
        raise RedriveError(
            f"run {layout.run_id} has no dead-lettered items{what}: nothing to redrive"
        )
    return pl.concat(frames, how="vertical_relaxed"), dict(sorted(by_category.items()))


def build_redrive_config(
    raw: dict[str, Any], run_id: str, items_file: str, id_column: str
) -> dict[str, Any]:
    """The new run's config: the old one (defaults included) with run_id and input replaced."""
    new = json.loads(json.dumps(raw))  # a deep copy that keeps only plain values
    new["run_id"] = run_id
    new["input"] = {"uri": items_file, "format": "parquet", "id_column": id_column}
    return new


def redrive(
    config: RunConfig,
    out: str | os.PathLike[str],
    run_id: str | None = None,
    items_file: str | os.PathLike[str] | None = None,
    category: str | None = None,
) -> RedrivePlan:
    """Write the redrive run's input, config and the ``redrive.json`` links.

    Args:
        config: the finished run's config.
        out: where to write the new run's config (YAML); must not exist.
        run_id: the new run's id (default ``next_run_id``).
        items_file: where to write the new input (default: ``{run_id}-items.parquet`` beside
            ``out``); must not exist.
        category: redrive only the items dead-lettered with this category.

    Raises:
        RedriveError: see the class; nothing is written then.
    """
    from orchestrator_ext.config import load_config
    from orchestrator_ext.errors import MissingOutput

    files = location_of(config.run_dir)
    layout = RunLayout(config.run_dir)
    try:
        manifest = files.read_json(layout.manifest)
    except MissingOutput:
        raise RedriveError(
            f"run {config.run_id} has no manifest ({layout.manifest}): it has not finished; "
            "rerun it with snakemake first (failed batches are retried)"
        ) from None
    run_id = run_id or next_run_id(config, files)
    if run_id == config.run_id:
        raise RedriveError("--run-id must differ from the run being redriven")
    out = Path(out)
    items_uri = str(items_file) if items_file else str(out.parent / f"{run_id}-items.parquet")
    items_files = location_of(items_uri, files.client if isinstance(files, S3Location) else None)
    new_run_dir = join(config.output_root, run_id)
    for taken, what, where in (
        (out.exists(), "--out", out),
        (items_files.exists(items_uri), "--items-out", items_uri),
        (files.occupied(new_run_dir), "run folder", new_run_dir),
    ):
        if taken:
            raise RedriveError(f"{what} {where} already exists; choose another (or remove it)")

    items, by_category = collect_dead_items(config, category, files)
    if category is None and items.height != manifest.get("items_dead_lettered"):
        raise RedriveError(
            f"found {items.height} dead-lettered items but the manifest records "
            f"{manifest.get('items_dead_lettered')}: run `orchestrator manifest verify`"
        )
    new_raw = build_redrive_config(config.raw, run_id, items_uri, config.input.id_column)
    load_config(new_raw)  # the new config must be valid before anything is written

    buffer = io.BytesIO()
    items.write_parquet(buffer, compression="zstd", statistics=True)
    items_files.write_bytes(items_uri, buffer.getvalue())
    items_sha256 = hashlib.sha256(buffer.getvalue()).hexdigest()
    created = datetime.now(UTC).isoformat(timespec="seconds")
    header = (
        f"# Redrive of run {config.run_id}: {items.height} dead-lettered items "
        f"({', '.join(f'{k} {v}' for k, v in by_category.items())}).\n"
        f"# Written by `orchestrator redrive` at {created}; the link is in "
        f"{new_run_dir}/{REDRIVE_FILE}.\n"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        tmp.write_text(header + yaml.safe_dump(new_raw, sort_keys=False))
    # The old run first: its manifest gains the link, then the new run records the sha256
    # of that manifest, so both manifests name each other and both checksums hold.
    links = _append_link(
        files,
        layout.redrive,
        {
            "run_id": run_id,
            "config": str(out),
            "items": items.height,
            "items_sha256": items_sha256,
            "by_category": by_category,
            "created_at": created,
        },
    )
    files.write_json(layout.manifest, {**manifest, "redriven_to": links})
    files.write_json(
        RunLayout(new_run_dir).redrive,
        {
            "redrive_version": REDRIVE_VERSION,
            "redrive_of": {
                "run_id": config.run_id,
                "run_dir": config.run_dir,
                "manifest_sha256": files.sha256(layout.manifest),
                "items": items.height,
                "items_file": items_uri,
                "items_sha256": items_sha256,
                "by_category": by_category,
                "category_filter": category,
                "created_at": created,
            },
        },
    )
    return RedrivePlan(
        from_run_id=config.run_id, run_id=run_id, config=str(out), items_file=items_uri,
        items=items.height, items_sha256=items_sha256, by_category=by_category,
    )  # fmt: skip


def _append_link(files: Location, uri: str, link: dict[str, Any]) -> list[dict[str, Any]]:
    data: dict[str, Any] = (
        files.read_json(uri) if files.exists(uri) else {"redrive_version": REDRIVE_VERSION}
    )
    data.setdefault("redriven_to", []).append(link)
    files.write_json(uri, data)
    return data["redriven_to"]


def render_redrive(plan: RedrivePlan) -> str:
    """What ``redrive`` wrote, by category, and the command that runs it."""
    categories = ", ".join(f"{n} {c}" for c, n in plan.by_category.items())
    return (
        f"wrote {plan.config} for run {plan.run_id}: {plan.items} items ({categories}) in "
        f"{plan.items_file}\nfix the cause, then: snakemake --profile profiles/local "
        f"--configfile {plan.config}"
    )
