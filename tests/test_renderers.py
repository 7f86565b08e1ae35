"""The text of report, redrive, verify, init and unlock, each rendered beside its data."""

from __future__ import annotations

from orchestrator_ext.cli.operate import render_init
from orchestrator_ext.coordinator import render_unlock
from orchestrator_ext.redrive import RedrivePlan, render_redrive
from orchestrator_ext.report.write import render_report_written
from orchestrator_ext.verify import render_verified


class TestRenderReportWritten:
    def test_size_in_megabytes(self) -> None:
        line = render_report_written("out/r/report.html", 2_345_678)
        assert line == (
            "wrote out/r/report.html (2.3 MB): open it in a browser; it needs no network"
        )


class TestRenderRedrive:
    def test_counts_by_category_and_next_step(self) -> None:
        plan = RedrivePlan(
            from_run_id="r", run_id="r-redrive-1", config="new.yaml",
            items_file="r-redrive-1-items.parquet", items=3, items_sha256="0" * 64,
            by_category={"permanent": 2, "transient": 1},
        )  # fmt: skip
        assert render_redrive(plan).splitlines() == [
            "wrote new.yaml for run r-redrive-1: 3 items (2 permanent, 1 transient) in "
            "r-redrive-1-items.parquet",
            "fix the cause, then: snakemake --profile profiles/local --configfile new.yaml",
        ]


class TestRenderVerified:
    def test_names_the_manifest(self) -> None:
        assert render_verified("s3://b/r/manifest.json").startswith(
            "ok: every file listed in s3://b/r/manifest.json matches its sha256"
        )


class TestRenderInit:
    def test_sqlite_run(self) -> None:
        report = {"run_id": "r", "state": "sqlite (nothing to set up)"}
        assert render_init(report) == ["state: sqlite (nothing to set up)"]

    def test_table_and_bucket_in_order(self) -> None:
        report = {
            "run_id": "r",
            "table": {"name": "orch-state", "created": False},
            "bucket": {"name": "b", "reachable": True, "default_encryption": "AES256"},
        }
        assert render_init(report) == [
            "state table orch-state: exists (on-demand capacity)",
            "bucket b: reachable; default encryption: AES256",
        ]

    def test_created_table_and_unencrypted_bucket(self) -> None:
        report = {
            "run_id": "r",
            "table": {"name": "t", "created": True},
            "bucket": {"name": "b", "reachable": True, "default_encryption": None},
        }
        lines = render_init(report)
        assert lines[0] == "state table t: created (on-demand capacity)"
        assert lines[1].endswith("NONE -- enable SSE-S3 or SSE-KMS default encryption")


class TestRenderUnlock:
    def test_removed_lease_names_its_holder(self) -> None:
        held = {"pid": 7, "host": "n1", "workdir": "/w", "started_at": "T"}
        assert render_unlock("r", held) == (
            "removed the lease of snakemake pid 7 on host n1 (working directory /w) since T"
        )

    def test_no_lease(self) -> None:
        assert render_unlock("r", None) == "run r has no coordinator lease"
