"""Unit tests for orchestrator_ext.manifest, on a small run driven in-process."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import polars as pl
import pytest
from ops_fixtures import make_finished_run, open_store

from orchestrator_ext.config import RunConfig, load_config
from orchestrator_ext.errors import StateStoreError
from orchestrator_ext.layout import RunLayout
from orchestrator_ext.manifest import (
    MANIFEST_VERSION,
    ConservationError,
    ContractBroken,
    ManifestInvalid,
    build_manifest,
    listed_files,
    manifest_schema,
)
from orchestrator_ext.state import TaskStatus
from orchestrator_ext.state.sqlite import SqliteStateStore
from orchestrator_ext.storage import read_json, sha256_file, write_json
from orchestrator_ext.verify import verify_manifest, verify_run

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

    def test_unknown_version(self, run, tmp_path: Path) -> None:
        path = tmp_path / "m.json"
        write_json(path, {**run[2], "manifest_version": 99})
        assert verify_manifest(str(path)) == [f"{path}: unknown manifest_version 99"]


class TestVerifyRun:
    """``verify_run`` (``orchestrator manifest verify``): tampering that rewrites the
    checksums in the run folder is found against the state store, the plan and the records.
    The run: 40 items in 8 batches of 5; batch 0 dead-lettered 2 items, batch 3 one."""

    @pytest.fixture
    def finished(self, tmp_path: Path, make_config: Callable[..., dict[str, Any]]) -> RunConfig:
        return make_finished_run(tmp_path, make_config, prefail=False)[1]

    @staticmethod
    def verify(config: RunConfig) -> list[str]:
        return verify_run(config, lambda: open_store(config))

    @staticmethod
    def edit(path: str, change: Callable[[dict[str, Any]], Any]) -> None:
        data = read_json(path)
        change(data)
        write_json(path, data)

    def test_clean_run_verifies_ok(self, finished: RunConfig) -> None:
        assert self.verify(finished) == []

    def test_flipped_final_with_its_new_sha256_in_the_manifest(self, finished: RunConfig) -> None:
        layout = RunLayout(finished.run_dir)
        committed = read_json(layout.manifest)["final"]["sha256"]
        committed_manifest = sha256_file(layout.manifest)
        data = bytearray(Path(layout.final).read_bytes())
        data[len(data) // 2] ^= 0x01
        Path(layout.final).write_bytes(bytes(data))
        self.edit(layout.manifest, lambda m: m["final"].update(sha256=sha256_file(layout.final)))
        assert verify_manifest(layout.manifest) == []  # re-hashing alone is fooled
        problems = self.verify(finished)
        assert problems == [
            f"state store mismatch: {layout.manifest} (manifest, task manifest): state store "
            f"{committed_manifest}, file {sha256_file(layout.manifest)}",
            f"state store mismatch: {layout.final} (final result, task final): state store "
            f"{committed}, file {sha256_file(layout.final)}",
        ]

    def test_dropped_batch_and_lowered_items_in(self, finished: RunConfig) -> None:
        layout = RunLayout(finished.run_dir)

        def drop_last(m: dict[str, Any]) -> None:
            gone = m["batches"].pop()
            m["items_in"] -= gone["items"]
            m["items_processed"] -= gone["items_processed"]

        self.edit(layout.manifest, drop_last)
        assert verify_manifest(layout.manifest) == []
        problems = self.verify(finished)
        m = layout.manifest
        assert (
            f"conservation: {m}: items_in is 35 but the plan {layout.plan} has 40 items" in problems
        )
        assert f"conservation: {m}: batch 00007 of the plan {layout.plan} is not listed" in problems
        assert (
            f"conservation: {m}: items_processed is 32 but the batch records add up to 37"
            in problems
        )
        assert (
            f"state store mismatch: {m} (manifest, task manifest): items_in is 35, "
            "state store items 40" in problems
        )
        assert (
            f"state store mismatch: {m} (task batch-00007): the state store's plan has the task, "
            "the manifest does not list it"
        ) in problems
        assert any(
            p.startswith(f"state store mismatch: {m} (manifest, task manifest): state store ")
            for p in problems
        )

    def test_plan_rewritten_too_is_found_by_the_store(self, finished: RunConfig) -> None:
        layout = RunLayout(finished.run_dir)

        def drop_last(plan: dict[str, Any]) -> None:
            plan["items"] -= plan["batches"].pop()["items"]
            plan["n_batches"] -= 1

        self.edit(layout.plan, drop_last)

        def drop_from_manifest(m: dict[str, Any]) -> None:
            gone = m["batches"].pop()
            m["items_in"] -= gone["items"]
            m["items_processed"] -= gone["items_processed"]
            m["plan"].update(
                sha256=sha256_file(layout.plan), bytes=Path(layout.plan).stat().st_size
            )

        self.edit(layout.manifest, drop_from_manifest)
        problems = self.verify(finished)
        assert not any(p.startswith("conservation:") for p in problems)  # folder is consistent
        assert (
            f"state store mismatch: {layout.plan} (plan, task partition): items is 35, "
            "state store items 40" in problems
        )
        assert any("(task batch-00007): the state store's plan has the task" in p for p in problems)

    def test_edited_record_counts(self, finished: RunConfig) -> None:
        layout = RunLayout(finished.run_dir)
        record = layout.result_record(0)

        def one_less_dead(r: dict[str, Any]) -> None:  # still adds up: 4 + 1 = 5
            r.update(
                items_processed=4, items_dead_lettered=1, dead_letter_by_category={"permanent": 1}
            )

        self.edit(record, one_less_dead)
        problems = self.verify(finished)
        m = layout.manifest
        assert problems == [
            f"manifest mismatch: {m} (batch 00000): items_processed is 3, "
            f"its record {record} has 4",
            f"manifest mismatch: {m} (batch 00000): items_dead_lettered is 2, "
            f"its record {record} has 1",
            f"conservation: {m}: items_processed is 37 but the batch records add up to 38",
            f"conservation: {m}: items_dead_lettered is 3 but the batch records add up to 2",
            f"conservation: {m}: dead_letter/total is 3 but the batch records add up to 2",
            f"conservation: {m}: dead_letter/by_category is {{'permanent': 3}} but the batch "
            "records add up to {'permanent': 2}",
            f"dead letters: {layout.dead_letter(0)} (batch 00000): 2 rows, but its record "
            f"{record} says items_dead_lettered 1",
            f"state store mismatch: {record} (batch 00000, task batch-00000): "
            "items_dead_lettered is 1, state store items_dead 2",
        ]

    def test_record_counts_that_do_not_add_up(self, finished: RunConfig) -> None:
        layout = RunLayout(finished.run_dir)
        record = layout.result_record(4)
        self.edit(record, lambda r: r.update(items=6))
        problems = self.verify(finished)
        assert (
            f"conservation: {record} (batch 00004): items is 6 but the plan {layout.plan} "
            "gives the batch 5" in problems
        )
        assert (
            f"conservation: {record} (batch 00004): items 6 != items_processed 5 + "
            "items_dead_lettered 0" in problems
        )
        assert (
            f"state store mismatch: {record} (batch 00004, task batch-00004): items is 6, "
            "state store items 5" in problems
        )

    def test_deleted_dead_letter_file(self, finished: RunConfig) -> None:
        layout = RunLayout(finished.run_dir)
        Path(layout.dead_letter(3)).unlink()
        assert self.verify(finished) == [
            f"missing: {layout.dead_letter(3)} (batch 00003 dead letters)"
        ]

    def test_dead_letter_rows_changed_and_checksums_rewritten(self, finished: RunConfig) -> None:
        layout = RunLayout(finished.run_dir)
        path = layout.dead_letter(0)
        pl.read_parquet(path).head(1).write_parquet(path)
        facts = {"uri": path, "sha256": sha256_file(path), "bytes": Path(path).stat().st_size}
        self.edit(layout.result_record(0), lambda r: r.update(dead_letter=facts))
        self.edit(layout.manifest, lambda m: m["batches"][0].update(dead_letter=facts))
        assert verify_manifest(layout.manifest) == []
        problems = self.verify(finished)
        assert problems[0] == (
            f"dead letters: {path} (batch 00000): 1 rows, but its record "
            f"{layout.result_record(0)} says items_dead_lettered 2"
        )
        assert problems[1].startswith(f"state store mismatch: {layout.manifest} (manifest, ")
        assert len(problems) == 2

    def test_dead_letter_file_where_the_record_says_none(self, finished: RunConfig) -> None:
        layout = RunLayout(finished.run_dir)
        Path(layout.dead_letter(1)).write_bytes(Path(layout.dead_letter(0)).read_bytes())
        assert self.verify(finished) == [
            f"dead letters: {layout.dead_letter(1)} (batch 00001): exists, but its record "
            f"{layout.result_record(1)} says the batch dead-lettered nothing"
        ]

    def test_edited_manifest_differs_from_the_store(self, finished: RunConfig) -> None:
        layout = RunLayout(finished.run_dir)
        committed = sha256_file(layout.manifest)
        self.edit(layout.manifest, lambda m: m.update(code_version="something else"))
        assert self.verify(finished) == [
            f"state store mismatch: {layout.manifest} (manifest, task manifest): state store "
            f"{committed}, file {sha256_file(layout.manifest)}"
        ]

    def test_batch_result_against_its_task(self, finished: RunConfig) -> None:
        layout = RunLayout(finished.run_dir)
        result = layout.result(5)
        committed = sha256_file(result)
        pl.read_parquet(result).head(2).write_parquet(result)  # valid Parquet, 2 rows of 5
        facts = {"sha256": sha256_file(result), "bytes": Path(result).stat().st_size}
        self.edit(layout.result_record(5), lambda r: r.update(facts))
        self.edit(layout.manifest, lambda m: m["batches"][5].update(facts))
        assert verify_manifest(layout.manifest) == []
        problems = self.verify(finished)
        assert (
            f"state store mismatch: {result} (batch 00005 result, task batch-00005): state "
            f"store {committed}, file {sha256_file(result)}"
        ) in problems

    def test_unreachable_store_is_a_problem(self, finished: RunConfig) -> None:
        def unreachable() -> Any:
            raise StateStoreError("cannot reach DynamoDB table 't' (region r)")

        assert verify_run(finished, unreachable) == [
            "cannot cross-check against the state store: cannot reach DynamoDB table 't' (region r)"
        ]

    def test_botocore_error_is_a_problem(self, finished: RunConfig) -> None:
        from botocore.exceptions import EndpointConnectionError

        def unreachable() -> Any:
            raise EndpointConnectionError(endpoint_url="http://127.0.0.1:1")

        [line] = verify_run(finished, unreachable)
        assert line.startswith(
            "cannot cross-check against the state store: EndpointConnectionError: "
        )

    def test_store_without_rows_is_a_problem(self, finished: RunConfig, tmp_path: Path) -> None:
        empty = SqliteStateStore(tmp_path / "empty.sqlite", finished.run_id)
        assert verify_run(finished, lambda: empty) == [
            "cannot cross-check against the state store: it holds no tasks of run r"
        ]

    def test_store_lacking_a_row_is_a_problem(self, finished: RunConfig) -> None:
        import sqlite3

        layout = RunLayout(finished.run_dir)
        with sqlite3.connect(layout.state_db) as db:
            db.execute("DELETE FROM tasks WHERE task_id = 'final'")
        assert self.verify(finished) == [
            f"cannot cross-check against the state store: {layout.final} (final result): task "
            "final has no row"
        ]

    def test_redriven_run_verifies_ok(self, finished: RunConfig, tmp_path: Path) -> None:
        from orchestrator_ext.redrive import redrive

        layout = RunLayout(finished.run_dir)
        redrive(finished, tmp_path / "next.yaml")  # adds redriven_to to the manifest
        assert "redriven_to" in read_json(layout.manifest)
        assert self.verify(finished) == []
        self.edit(layout.manifest, lambda m: m["redriven_to"][0].update(items=99))
        assert self.verify(finished) == [
            f"manifest mismatch: {layout.manifest}: redriven_to differs from "
            f"{finished.run_dir}/redrive.json"
        ]


class TestRowsOut:
    """Every batch record and the manifest carry ``rows_out``; in concat mode the final
    holds exactly their sum, which ``verify_run`` checks too."""

    def test_records_and_manifest_carry_rows_out(self, run) -> None:
        config, _, manifest = run
        layout = RunLayout(config.run_dir)
        records = [read_json(layout.result_record(i)) for i in range(3)]
        assert [r["rows_out"] for r in records] == [9, 8, 10]
        assert [b["rows_out"] for b in manifest["batches"]] == [9, 8, 10]
        assert manifest["rows_out"] == 27 == manifest["final"]["rows"]
        assert manifest["output_contract"] == {
            "schema": [["doubled", "Int64"], ["id", "Int64"]],
            "declared": False,
            "rows": "any",
            "held": True,
        }
        jsonschema.validate(manifest, manifest_schema())

    def test_a_final_without_the_batches_rows_is_refused(self, run) -> None:
        config, _, _ = run
        final_record = RunLayout(config.run_dir).final_record
        write_json(final_record, {**read_json(final_record), "rows": 26})
        with pytest.raises(
            ConservationError,
            match=r"^rows not conserved: the final has 26 rows, the batches' rows_out add up "
            r"to 27 \(merge.mode concat\)$",
        ):
            build_manifest(config, **_inputs(config))

    def test_batch_schemas_that_differ_are_refused(self, run) -> None:
        config, _, _ = run
        record_file = RunLayout(config.run_dir).result_record(1)
        write_json(
            record_file,
            {**read_json(record_file), "schema": [["doubled", "String"], ["id", "Int64"]]},
        )
        with pytest.raises(ContractBroken, match=r"batch 00001's result has schema"):
            build_manifest(config, **_inputs(config))


class TestVerifyRowsOut:
    @pytest.fixture
    def finished(self, tmp_path: Path, make_config: Callable[..., dict[str, Any]]) -> RunConfig:
        return make_finished_run(tmp_path, make_config, prefail=False)[1]

    @staticmethod
    def verify(config: RunConfig) -> list[str]:
        return verify_run(config, lambda: open_store(config))

    def test_a_changed_rows_out_is_found(self, finished: RunConfig) -> None:
        layout = RunLayout(finished.run_dir)
        record = layout.result_record(1)
        write_json(record, {**read_json(record), "rows_out": 6})
        problems = self.verify(finished)
        m = layout.manifest
        assert problems == [
            f"manifest mismatch: {m} (batch 00001): rows_out is 5, its record {record} has 6",
            f"rows: {layout.result(1)} (batch 00001): 5 rows, but its record {record} says "
            "rows_out 6",
            f"rows: {m}: rows_out is 37 but the batch records add up to 38",
            f"rows: {m}: the final {layout.final} has rows 37 but the batch records' rows_out "
            "add up to 38 (merge.mode concat)",
            f"rows: {layout.final} (final result): 37 rows, but the batch records' rows_out add "
            "up to 38 (merge.mode concat)",
        ]

    def test_rows_out_changed_in_the_manifest_too_is_found_by_the_final(
        self, finished: RunConfig
    ) -> None:
        layout = RunLayout(finished.run_dir)
        record = layout.result_record(1)
        write_json(record, {**read_json(record), "rows_out": 6})
        manifest = read_json(layout.manifest)
        manifest["batches"][1]["rows_out"] = 6
        manifest["rows_out"] = 38
        write_json(layout.manifest, manifest)
        problems = [p for p in self.verify(finished) if p.startswith("rows: ")]
        assert problems == [
            f"rows: {layout.result(1)} (batch 00001): 5 rows, but its record {record} says "
            "rows_out 6",
            f"rows: {layout.manifest}: the final {layout.final} has rows 37 but the batch "
            "records' rows_out add up to 38 (merge.mode concat)",
            f"rows: {layout.final} (final result): 37 rows, but the batch records' rows_out add "
            "up to 38 (merge.mode concat)",
        ]


class TestPerItemManifest:
    def test_the_manifest_proves_one_row_per_item(
        self, tmp_path: Path, make_config: Callable[..., dict[str, Any]]
    ) -> None:
        pl.DataFrame({"id": list(range(30)), "value": list(range(30))}).write_parquet(
            tmp_path / "items.parquet"
        )
        config = load_config(
            make_config(
                run_id="r",
                batching={"max_items": 10},
                job={"function": jobs.module_ref("double_item"), "mode": "item",
                     "combine": None, "finalize": None, "rows": "per_item",
                     "params": {"bad_ids": BAD_IDS}},
                merge={"fan_in": 2, "mode": "concat"},
                tolerance={"max_dead_letter_fraction": 0.2},
            )
        )  # fmt: skip
        store = SqliteStateStore(RunLayout(config.run_dir).state_db, "r")
        try:
            manifest = jobs.run_in_process(config, store)
        finally:
            store.close()
        assert manifest["output_contract"]["rows"] == "per_item"
        assert manifest["output_contract"]["held"] is True
        assert all(b["rows_out"] == b["items_processed"] for b in manifest["batches"])
        assert manifest["rows_out"] == manifest["items_processed"] == 27
        assert verify_run(config, lambda: open_store(config)) == []
        # A record (and its manifest entry) claiming fewer rows breaks the proof.
        layout = RunLayout(config.run_dir)
        record = layout.result_record(2)
        write_json(record, {**read_json(record), "items_processed": 9, "items_dead_lettered": 1,
                            "dead_letter_by_category": {"permanent": 1}})  # fmt: skip
        with pytest.raises(ContractBroken, match=r"batch 00002 has rows_out 10 for "
                           r"items_processed 9 \(job.rows: per_item\)"):  # fmt: skip
            build_manifest(config, **_inputs(config))
        problems = verify_run(config, lambda: open_store(config))
        assert (
            f"rows: {record} (batch 00002): rows_out 10 != items_processed 9 (job.rows: per_item)"
            in problems
        )
