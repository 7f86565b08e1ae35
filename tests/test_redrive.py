"""Unit tests for orchestrator_ext.redrive and ``orchestrator redrive``."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import polars as pl
import pytest
import yaml
from ops_fixtures import BAD_IDS, make_finished_run, upload_run

from orchestrator_ext.cli import EXIT_USER_ERROR, main
from orchestrator_ext.config import load_config, read_config_file
from orchestrator_ext.layout import RunLayout
from orchestrator_ext.manifest import manifest_schema
from orchestrator_ext.redrive import REDRIVE_FILE, RedriveError, collect_dead_items, redrive
from orchestrator_ext.state.sqlite import SqliteStateStore
from orchestrator_ext.storage import sha256_file

try:
    import jobs_for_tests as jobs
except ModuleNotFoundError:  # tests/ imported as a package
    from tests import jobs_for_tests as jobs


@pytest.fixture
def finished(tmp_path: Path, make_config: Callable[..., dict[str, Any]]):
    return make_finished_run(tmp_path, make_config, prefail=False)


class TestCollectDeadItems:
    def test_original_rows_in_batch_order(self, finished, tmp_path: Path) -> None:
        _, config = finished
        items, by_category = collect_dead_items(config)
        original = pl.read_parquet(tmp_path / "items.parquet")
        assert items.equals(original.filter(pl.col("id").is_in(list(BAD_IDS))))
        assert items.columns == ["id", "value", "label"]
        assert by_category == {"permanent": 3}

    def test_dead_letters_of_another_run_are_refused(self, finished) -> None:
        _, config = finished
        path = RunLayout(config.run_dir).dead_letter(0)
        frame = pl.read_parquet(path).with_columns(pl.lit(999).alias("id"))
        frame.write_parquet(path)
        with pytest.raises(RedriveError, match="not in .*batch-00000.parquet"):
            collect_dead_items(config)


class TestRedrive:
    def test_writes_input_config_and_both_links(self, finished, tmp_path: Path) -> None:
        _, config = finished
        plan = redrive(config, tmp_path / "next.yaml")
        assert plan.run_id == "r-redrive-1" and plan.items == 3
        new_raw = read_config_file(tmp_path / "next.yaml")
        new = load_config(new_raw)
        assert new.run_id == "r-redrive-1"
        assert new.input.uri == str(tmp_path / "r-redrive-1-items.parquet")
        assert new.job == config.job and new.output_root == config.output_root
        assert (tmp_path / "next.yaml").read_text().startswith("# Redrive of run r: 3 ")
        assert pl.read_parquet(new.input.uri).get_column("id").to_list() == list(BAD_IDS)

        link = json.loads((Path(new.run_dir) / REDRIVE_FILE).read_text())["redrive_of"]
        assert link["run_id"] == "r" and link["items"] == 3
        assert link["items_sha256"] == plan.items_sha256
        back = json.loads((Path(config.run_dir) / REDRIVE_FILE).read_text())["redriven_to"]
        assert [b["run_id"] for b in back] == ["r-redrive-1"]

    def test_second_redrive_gets_the_next_id_and_is_appended(self, finished, tmp_path) -> None:
        _, config = finished
        redrive(config, tmp_path / "a.yaml")
        second = redrive(config, tmp_path / "b.yaml", category="permanent")
        assert second.run_id == "r-redrive-2"
        back = json.loads((Path(config.run_dir) / REDRIVE_FILE).read_text())["redriven_to"]
        assert [b["run_id"] for b in back] == ["r-redrive-1", "r-redrive-2"]

    def test_the_redrive_run_processes_the_items_after_a_fix(self, finished, tmp_path) -> None:
        _, config = finished
        plan = redrive(config, tmp_path / "next.yaml", run_id="fixed")
        raw = read_config_file(plan.config)
        raw["job"]["params"]["bad_ids"] = []  # the fix
        new = load_config(raw)
        store = SqliteStateStore(RunLayout(new.run_dir).state_db, new.run_id)
        try:
            manifest = jobs.run_in_process(new, store)
        finally:
            store.close()
        assert manifest["items_in"] == 3 and manifest["items_dead_lettered"] == 0
        # Both manifests name each other; the recorded checksum of the old one still holds.
        old_manifest = RunLayout(config.run_dir).manifest
        assert manifest["redrive_of"]["run_id"] == "r"
        assert manifest["redrive_of"]["manifest_sha256"] == sha256_file(old_manifest)
        old = json.loads(Path(old_manifest).read_text())
        assert [link["run_id"] for link in old["redriven_to"]] == ["fixed"]
        jsonschema.validate(old, manifest_schema())

    @pytest.mark.parametrize(
        ("setup", "message"),
        [
            ("no_manifest", "has no manifest"),
            ("out_exists", "already exists"),
            ("same_id", "must differ"),
            ("wrong_category", "no dead-lettered items of category 'transient'"),
        ],
    )
    def test_refusals_write_nothing(self, finished, tmp_path, setup: str, message: str) -> None:
        _, config = finished
        out, kwargs = tmp_path / "next.yaml", {}
        if setup == "no_manifest":
            os.remove(RunLayout(config.run_dir).manifest)
        elif setup == "out_exists":
            out.write_text("keep me")
        elif setup == "same_id":
            kwargs["run_id"] = "r"
        else:
            kwargs["category"] = "transient"
        with pytest.raises(RedriveError, match=message):
            redrive(config, out, **kwargs)
        assert not (Path(config.run_dir) / REDRIVE_FILE).exists()
        assert setup == "out_exists" or not out.exists()

    def test_nothing_dead_lettered(self, tmp_path, make_config) -> None:
        _, config = make_finished_run(tmp_path, make_config, bad_ids=(), prefail=False)
        with pytest.raises(RedriveError, match="no dead-lettered items"):
            redrive(config, tmp_path / "next.yaml")

    def test_run_in_s3(self, finished, make_config, tmp_path, aws_env) -> None:
        """A finished run whose folder is in S3 (the local S3 server) is redriven from S3:
        dead letters and batch files read there, both links and the manifest's
        ``redriven_to`` written there; the new input holds the bad items' original rows."""
        import uuid

        from orchestrator_ext.s3 import make_s3_client

        _, local = finished
        client = make_s3_client()
        bucket = f"redrive-{uuid.uuid4().hex[:10]}"
        client.create_bucket(Bucket=bucket)
        upload_run(local.run_dir, client, bucket, "p")
        config = load_config(
            {**local.raw, "output_root": f"s3://{bucket}/p",
             "state": {"backend": "dynamodb", "table": "t"}}
        )  # fmt: skip
        plan = redrive(config, tmp_path / "next.yaml")
        assert plan.run_id == "r-redrive-1" and plan.items == 3
        original = pl.read_parquet(tmp_path / "items.parquet")
        expected = original.filter(pl.col("id").is_in(list(BAD_IDS)))
        assert pl.read_parquet(plan.items_file).equals(expected)

        def get(key: str) -> dict[str, Any]:
            return json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())

        assert [b["run_id"] for b in get("p/r/redrive.json")["redriven_to"]] == ["r-redrive-1"]
        assert [b["run_id"] for b in get("p/r/manifest.json")["redriven_to"]] == ["r-redrive-1"]
        link = get("p/r-redrive-1/redrive.json")["redrive_of"]
        assert link["run_dir"] == f"s3://{bucket}/p/r" and link["items"] == 3
        # The next redrive sees the new run's folder in S3 and takes the next id.
        assert redrive(config, tmp_path / "again.yaml").run_id == "r-redrive-2"


class TestRedriveCommand:
    def test_json(self, finished, tmp_path, capsys) -> None:
        configfile, _ = finished
        args = ["redrive", "--json", "--out", str(tmp_path / "n.yaml"), "--run-id", "again",
                "--configfile", str(configfile)]  # fmt: skip
        assert main(args) == 0
        data = json.loads(capsys.readouterr().out)
        assert data["run_id"] == "again" and data["items"] == 3
        assert yaml.safe_load((tmp_path / "n.yaml").read_text())["run_id"] == "again"

    def test_tells_the_next_step(self, finished, tmp_path, capsys) -> None:
        configfile, _ = finished
        out = tmp_path / "n.yaml"
        assert main(["redrive", "--out", str(out), "--configfile", str(configfile)]) == 0
        assert f"--configfile {out}" in capsys.readouterr().out

    def test_existing_out_is_one_line(self, finished, tmp_path, capsys) -> None:
        configfile, _ = finished
        out = tmp_path / "n.yaml"
        out.write_text("x")
        code = main(["redrive", "--out", str(out), "--configfile", str(configfile)])
        assert code == EXIT_USER_ERROR
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "already exists" in err[0]
