"""Unit tests for orchestrator_ext.manifest, on a small run driven in-process."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import polars as pl
import pytest

from orchestrator_ext.config import RunConfig, load_config
from orchestrator_ext.layout import RunLayout
from orchestrator_ext.manifest import (
    MANIFEST_VERSION,
    ConservationError,
    ManifestInvalid,
    build_manifest,
    listed_files,
    manifest_schema,
    verify_manifest,
)
from orchestrator_ext.state import TaskStatus
from orchestrator_ext.state.sqlite import SqliteStateStore
from orchestrator_ext.storage import read_json, sha256_file, write_json

try:
    import jobs_for_tests as jobs
except ModuleNotFoundError:  # tests/ imported as a package
    from tests import jobs_for_tests as jobs

BAD_IDS = [5, 17, 18]


@pytest.fixture
def run(tmp_path: Path, make_config: Callable[..., dict[str, Any]]):
    """30 items in 3 batches of 10, item mode with 3 bad items, fan-in 2 (levels 3, 2, 1)."""
    pl.DataFrame({"id": list(range(30)), "value": list(range(30))}).write_parquet(
        tmp_path / "items.parquet"
    )
    config = load_config(
        make_config(
            run_id="r",
            batching={"max_items": 10},
            job={
                "function": jobs.module_ref("double_item"),
                "mode": "item",
                "combine": None,
                "finalize": None,
                "params": {"bad_ids": BAD_IDS},
            },
            merge={"fan_in": 2, "mode": "concat"},
            tolerance={"max_dead_letter_fraction": 0.2},
        )
    )
    store = SqliteStateStore(tmp_path / "state.sqlite", "r")
    manifest = jobs.run_in_process(config, store)
    yield config, store, manifest
    store.close()


def _inputs(config: RunConfig) -> dict[str, Any]:
    layout = RunLayout(config.run_dir)
    return {
        "plan_file": layout.plan,
        "batch_records": [layout.result_record(i) for i in range(3)],
        "merge_records": [layout.merge_record(1, 0), layout.merge_record(1, 1)],
        "final_record": layout.final_record,
    }


class TestBuildManifest:
    def test_contents(self, run) -> None:
        config, _, manifest = run
        layout = RunLayout(config.run_dir)
        assert manifest["manifest_version"] == MANIFEST_VERSION
        assert manifest["run_id"] == "r"
        assert manifest["config_sha256"] == config.sha256
        assert "jobs_for_tests sha256:" in manifest["code_version"]
        assert manifest["items_in"] == 30
        assert manifest["items_processed"] == 27
        assert manifest["items_dead_lettered"] == 3
        assert manifest["dead_letter"] == {"total": 3, "by_category": {"permanent": 3}}
        assert [b["batch_id"] for b in manifest["batches"]] == ["00000", "00001", "00002"]
        assert [b["items_dead_lettered"] for b in manifest["batches"]] == [1, 2, 0]
        assert manifest["batches"][1]["sha256"] == sha256_file(layout.result(1))
        assert manifest["batches"][1]["dead_letter"]["sha256"] == sha256_file(layout.dead_letter(1))
        # Batch 2 dead-lettered nothing: no file, none listed.
        assert manifest["batches"][2]["dead_letter"] is None
        assert not os.path.exists(layout.dead_letter(2))
        assert [(m["level"], m["index"]) for m in manifest["merges"]] == [(1, 0), (1, 1)]
        assert manifest["merges"][0]["children"] == [layout.result(0), layout.result(1)]
        assert manifest["merges"][1]["children"] == [layout.result(2)]
        assert manifest["final"] == {
            "uri": layout.final,
            "sha256": sha256_file(layout.final),
            "rows": 27,
            "bytes": Path(layout.final).stat().st_size,
        }
        assert manifest["plan"]["sha256"] == sha256_file(layout.plan)
        assert read_json(layout.manifest) == manifest

    def test_manifest_state_row(self, run) -> None:
        config, store, _ = run
        record = store.get("manifest")
        assert record.status is TaskStatus.SUCCEEDED
        assert record.output_sha256 == sha256_file(RunLayout(config.run_dir).manifest)
        assert record.items == 30

    def test_rebuild_from_records(self, run) -> None:
        config, _, manifest = run
        again = build_manifest(config, **_inputs(config))
        assert {k: v for k, v in again.items() if k != "created_at"} == {
            k: v for k, v in manifest.items() if k != "created_at"
        }

    def test_conservation_error_when_counts_do_not_add_up(self, run) -> None:
        config, _, _ = run
        record_file = RunLayout(config.run_dir).result_record(2)
        record = read_json(record_file)
        write_json(record_file, {**record, "items_processed": record["items_processed"] - 1})
        with pytest.raises(ConservationError, match=r"plan has 30 items .* 26 processed \+ 3"):
            build_manifest(config, **_inputs(config))

    def test_conservation_error_when_a_batch_is_missing(self, run) -> None:
        config, _, _ = run
        inputs = _inputs(config)
        inputs["batch_records"] = inputs["batch_records"][:2]
        with pytest.raises(ConservationError, match="in 3 batches, .* in 2 batches"):
            build_manifest(config, **inputs)

    def test_schema_validation_refuses_a_bad_record(self, run) -> None:
        config, _, _ = run
        record_file = RunLayout(config.run_dir).result_record(0)
        write_json(record_file, {**read_json(record_file), "sha256": "not-a-checksum"})
        with pytest.raises(ManifestInvalid, match="batches/0/sha256.*not-a-checksum"):
            build_manifest(config, **_inputs(config))


class TestManifestSchema:
    def test_built_manifest_is_valid(self, run) -> None:
        jsonschema.validate(run[2], manifest_schema())

    @pytest.mark.parametrize(
        "key", ["items_in", "config_sha256", "batches", "merges", "final", "dead_letter"]
    )
    def test_required_keys(self, run, key: str) -> None:
        broken = {k: v for k, v in run[2].items() if k != key}
        with pytest.raises(jsonschema.ValidationError, match=f"'{key}' is a required property"):
            jsonschema.validate(broken, manifest_schema())

    def test_version_is_pinned(self, run) -> None:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({**run[2], "manifest_version": 2}, manifest_schema())


class TestListedFiles:
    def test_every_output_is_listed(self, run) -> None:
        whats = [what for what, _, _ in listed_files(run[2])]
        assert whats == [
            "plan",
            "batch 00000 result",
            "batch 00000 dead letters",
            "batch 00001 result",
            "batch 00001 dead letters",
            "batch 00002 result",  # it dead-lettered nothing: no file
            "merge L1 part 0",
            "merge L1 part 1",
            "final result",
        ]


class TestVerifyManifest:
    def test_intact_run_passes(self, run) -> None:
        assert verify_manifest(RunLayout(run[0].run_dir).manifest) == []

    def test_missing_file(self, run) -> None:
        layout = RunLayout(run[0].run_dir)
        Path(layout.result(1)).unlink()
        assert verify_manifest(layout.manifest) == [
            f"missing: {layout.result(1)} (batch 00001 result)"
        ]

    def test_changed_file(self, run) -> None:
        layout = RunLayout(run[0].run_dir)
        Path(layout.dead_letter(1)).write_bytes(b"changed")
        Path(layout.final).write_bytes(Path(layout.final).read_bytes() + b"x")
        problems = verify_manifest(layout.manifest)
        assert len(problems) == 2
        assert problems[0].startswith(
            f"checksum mismatch: {layout.dead_letter(1)} (batch 00001 dead letters)"
        )
        assert problems[1].startswith(f"checksum mismatch: {layout.final} (final result)")

    def test_open_local_maps_uris(self, run, tmp_path: Path) -> None:
        layout = RunLayout(run[0].run_dir)
        seen: list[str] = []

        def open_local(uri: str) -> str:
            seen.append(uri)
            return uri

        assert verify_manifest(layout.manifest, open_local) == []
        assert len(seen) == 9  # plan, 3 results, 2 dead-letter files, 2 merges, final

    def test_unknown_version(self, run, tmp_path: Path) -> None:
        path = tmp_path / "m.json"
        write_json(path, {**run[2], "manifest_version": 99})
        assert verify_manifest(str(path)) == [f"{path}: unknown manifest_version 99"]
