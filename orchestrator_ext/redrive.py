"""Redrive: a new run over the dead-lettered items of a finished run.

``redrive`` joins the ids in ``dead_letter/batch-*.parquet`` with the run's batch files, so
the new input holds the items' *original rows* (every input column), in batch order. It
writes that as one Parquet file, a config for the new run that is the old one with
``run_id`` and ``input`` replaced, and a ``redrive.json`` in both run folders::

    {old run}/redrive.json   {"redrive_version": 1, "redriven_to": [{run_id, config,
                               items, items_sha256, by_category, created_at}, ...]}
    {new run}/redrive.json   {"redrive_version": 1, "redrive_of": {run_id, run_dir,
                               manifest_sha256, items, items_sha256, by_category,
                               category_filter, created_at}}

The old run's file is appended to on every redrive (written atomically), and the old run's
manifest gains the same ``redriven_to`` list; the new run's manifest carries
``redrive_of`` (``manifest.build_manifest`` reads the new run's ``redrive.json``). Runs in
S3 are not supported yet: copy the run folder or point ``output_root`` at a local copy.
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from orchestrator_ext.errors import OrchestratorError
from orchestrator_ext.layout import RunLayout
from orchestrator_ext.storage import atomic_path, read_json, sha256_file, write_json

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


def next_run_id(config: RunConfig) -> str:
    """``{run_id}-redrive-N`` with the first N whose run folder does not exist yet."""
    n = 1
    while os.path.exists(f"{config.output_root.rstrip('/')}/{config.run_id}-redrive-{n}"):
        n += 1
    return f"{config.run_id}-redrive-{n}"


def collect_dead_items(
    run_dir: str, id_column: str, category: str | None = None
) -> tuple[pl.DataFrame, dict[str, int]]:
    """The original rows of the run's dead-lettered items, and their count per category.

    Raises:
        RedriveError: a dead-letter file has no batch file, or names ids its batch lacks.
    """
    import polars as pl

    layout = RunLayout(run_dir)
    frames: list[pl.DataFrame] = []
    by_category: dict[str, int] = {}
    for path in sorted(glob.glob(os.path.join(run_dir, "dead_letter", "batch-*.parquet"))):
        dead = pl.read_parquet(path)
        if category is not None:
            dead = dead.filter(pl.col("category") == category)
        if dead.height == 0:
            continue
        batch_id = Path(path).stem.removeprefix("batch-")
        batch_file = layout.batch(batch_id)
        if not os.path.exists(batch_file):
            raise RedriveError(
                f"{path} has no batch file {batch_file}: the run folder is incomplete"
            )
        rows = pl.read_parquet(batch_file)
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

    if config.run_dir.startswith("s3://"):
        raise RedriveError(
            f"run {config.run_id} is in S3 ({config.run_dir}); redrive reads local run folders "
            "only: sync the folder to disk and set output_root to it"
        )
    layout = RunLayout(config.run_dir)
    if not os.path.exists(layout.manifest):
        raise RedriveError(
            f"run {config.run_id} has no manifest ({layout.manifest}): it has not finished; "
            "rerun it with snakemake first (failed batches are retried)"
        )
    run_id = run_id or next_run_id(config)
    if run_id == config.run_id:
        raise RedriveError("--run-id must differ from the run being redriven")
    out = Path(out)
    items_path = Path(items_file) if items_file else out.parent / f"{run_id}-items.parquet"
    new_run_dir = f"{config.output_root.rstrip('/')}/{run_id}"
    for path, what in (
        (out, "--out"),
        (items_path, "--items-out"),
        (Path(new_run_dir), "run folder"),
    ):
        if path.exists():
            raise RedriveError(f"{what} {path} already exists; choose another (or remove it)")

    items, by_category = collect_dead_items(config.run_dir, config.input.id_column, category)
    manifest = read_json(layout.manifest)
    if category is None and items.height != manifest.get("items_dead_lettered"):
        raise RedriveError(
            f"found {items.height} dead-lettered items but the manifest records "
            f"{manifest.get('items_dead_lettered')}: run `orchestrator manifest verify`"
        )
    new_raw = build_redrive_config(config.raw, run_id, str(items_path), config.input.id_column)
    load_config(new_raw)  # the new config must be valid before anything is written

    items_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(items_path) as tmp:
        items.write_parquet(tmp, compression="zstd", statistics=True)
    items_sha256 = sha256_file(items_path)
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
        Path(config.run_dir) / REDRIVE_FILE,
        {
            "run_id": run_id,
            "config": str(out),
            "items": items.height,
            "items_sha256": items_sha256,
            "by_category": by_category,
            "created_at": created,
        },
    )
    with atomic_path(layout.manifest) as tmp:
        write_json(tmp, {**manifest, "redriven_to": links})
    write_json(
        Path(new_run_dir) / REDRIVE_FILE,
        {
            "redrive_version": REDRIVE_VERSION,
            "redrive_of": {
                "run_id": config.run_id,
                "run_dir": config.run_dir,
                "manifest_sha256": sha256_file(layout.manifest),
                "items": items.height,
                "items_file": str(items_path),
                "items_sha256": items_sha256,
                "by_category": by_category,
                "category_filter": category,
                "created_at": created,
            },
        },
    )
    return RedrivePlan(
        from_run_id=config.run_id, run_id=run_id, config=str(out), items_file=str(items_path),
        items=items.height, items_sha256=items_sha256, by_category=by_category,
    )  # fmt: skip


def _append_link(path: Path, link: dict[str, Any]) -> list[dict[str, Any]]:
    data: dict[str, Any] = (
        read_json(path) if path.exists() else {"redrive_version": REDRIVE_VERSION}
    )
    data.setdefault("redriven_to", []).append(link)
    write_json(path, data)
    return data["redriven_to"]
