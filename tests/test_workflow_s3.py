"""End to end with every file target in S3: the local executor, the storage plugin
orchestrator-s3 (snakemake-storage-plugin-s3 with a cache) and the real boto3 against the
local AWS endpoint, task state in DynamoDB there too.

S3 settings reach Snakemake, its jobs and the package the way they reach cluster jobs: as
``SNAKEMAKE_STORAGE_S3_*`` environment variables (no ``AWS_ENDPOINT_URL``; DynamoDB gets
its own ``AWS_ENDPOINT_URL_DYNAMODB``).

The tests share one run and are order dependent: the last one changes the run.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from conftest import ORCHESTRATOR, base_config, run_snakemake, set_storage_env, write_config

from orchestrator_ext import s3
from orchestrator_ext.config import load_config
from orchestrator_ext.example_data import make_records
from orchestrator_ext.layout import RunLayout
from orchestrator_ext.manifest import listed_files
from orchestrator_ext.state.dynamodb import DynamoStateStore, create_table, make_client

pytestmark = pytest.mark.workflow

N_ITEMS = 600
N_PARTS = 3
# Items that fail permanently (injected faults), dead-lettered by batch 2 of 6.
BAD_IDS = [250]


@dataclass
class S3Run:
    workdir: Path
    bucket: str
    client: Any
    config: dict[str, Any]
    configfile: Path
    layout: RunLayout  # s3:// locations
    local: RunLayout  # the same config run locally
    first: subprocess.CompletedProcess[str]

    def read(self, uri: str) -> bytes:
        return s3.read_bytes(self.client, uri)

    def manifest(self) -> dict[str, Any]:
        return json.loads(self.read(self.layout.manifest))

    def verify(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [ORCHESTRATOR, "manifest", "verify", "--configfile", str(self.configfile)],
            capture_output=True,
            text=True,
            timeout=120,
        )


@pytest.fixture(scope="module")
def s3_run(moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Run]:
    workdir = tmp_path_factory.mktemp("s3run")
    bucket = f"orchestrator-e2e-{uuid.uuid4().hex[:12]}"
    with pytest.MonkeyPatch.context() as mp:
        set_storage_env(mp, moto_endpoint, moto_endpoint)

        client = s3.make_s3_client()
        client.create_bucket(Bucket=bucket)
        items = make_records(N_ITEMS, seed=5)
        (workdir / "local-input").mkdir()
        size = -(-N_ITEMS // N_PARTS)
        for i in range(N_PARTS):
            part = items.slice(i * size, size)
            part.write_parquet(workdir / "local-input" / f"part-{i}.parquet")
            out = io.BytesIO()
            part.write_parquet(out)
            client.put_object(Bucket=bucket, Key=f"input/part-{i}.parquet", Body=out.getvalue())
        table = f"orchestrator-e2e-{uuid.uuid4().hex[:12]}"
        create_table(make_client(), table)

        # 600 items, 100 per batch, fan-in 3: levels [6, 2, 1].
        config = base_config(
            workdir,
            run_id="s3run",
            output_root=f"s3://{bucket}/run-prefix",
            input={"uri": f"s3://{bucket}/input/*.parquet", "format": "parquet"},
            state={"backend": "dynamodb", "table": table},
            faults={"enabled": True, "permanent_ids": BAD_IDS},
            tolerance={"max_dead_letter_fraction": 0.05},
        )
        configfile = write_config(workdir / "s3.yaml", config)
        first = run_snakemake(workdir, configfile)

        local_config = {
            **config,
            "output_root": str(workdir / "local-out"),
            "input": {"uri": str(workdir / "local-input" / "*.parquet"), "format": "parquet"},
            "state": {"backend": "sqlite"},
        }
        run_snakemake(workdir, write_config(workdir / "local.yaml", local_config))
        yield S3Run(
            workdir=workdir,
            bucket=bucket,
            client=client,
            config=config,
            configfile=configfile,
            layout=RunLayout(f"s3://{bucket}/run-prefix/s3run"),
            local=RunLayout(str(workdir / "local-out" / "s3run")),
            first=first,
        )


def _final_frame(run: S3Run) -> pl.DataFrame:
    return pl.read_parquet(io.BytesIO(run.read(run.layout.final)))


class TestS3Run:
    def test_result_equals_the_local_run(self, s3_run: S3Run) -> None:
        local_final = Path(s3_run.local.final)
        assert _final_frame(s3_run).equals(pl.read_parquet(local_final))
        assert s3_run.read(s3_run.layout.final) == local_final.read_bytes()

    def test_every_file_target_is_in_s3_and_logs_stay_local(self, s3_run: S3Run) -> None:
        keys = {o.key for o in s3.list_objects(s3_run.client, s3_run.bucket, "run-prefix/")}
        prefix = "run-prefix/s3run/"
        for rel in (
            "batches/plan.json", "batches/batch-00005.parquet", "results/batch-00005.parquet",
            "results/batch-00005.json", "dead_letter/batch-00002.parquet",
            "merge/L1/part-00001.parquet", "merge/L1/part-00001.json",
            "final/result.parquet", "final/result.json", "manifest.json",
        ):  # fmt: skip
            assert prefix + rel in keys
        assert not any("/logs/" in key for key in keys)
        assert (s3_run.workdir / "logs" / "s3run" / "process_batch" / "00005.log").is_file()
        assert (s3_run.workdir / "logs" / "s3run" / "partition_items" / "partition.log").is_file()
        assert not (s3_run.workdir / "s3:").exists(), "no local folder named after the URI"

    def test_records_and_manifest_hold_s3_uris(self, s3_run: S3Run) -> None:
        manifest = s3_run.manifest()
        run_prefix = f"s3://{s3_run.bucket}/run-prefix/s3run/"
        files = listed_files(manifest)
        # Plan, 6 results, the one dead-letter file (batch 2), 2 merge parts, final.
        assert len(files) == 1 + 6 + 1 + 2 + 1
        assert all(uri.startswith(run_prefix) for _, uri, _ in files), files
        assert manifest["plan"]["uri"] == run_prefix + "batches/plan.json"
        assert all(c.startswith(run_prefix) for m in manifest["merges"] for c in m["children"])
        assert [f["path"] for f in manifest["input"]["files"]] == [
            f"s3://{s3_run.bucket}/input/part-{i}.parquet" for i in range(N_PARTS)
        ]
        assert manifest["items_in"] == N_ITEMS == manifest["items_processed"] + len(BAD_IDS)
        record = json.loads(s3_run.read(s3_run.layout.result_record(3)))
        assert record["uri"] == s3_run.layout.result(3)
        assert record["dead_letter"] is None, "batch 3 dead-lettered nothing"

    def test_dead_letters_are_uploaded_by_the_job_only_where_there_are_some(
        self, s3_run: S3Run
    ) -> None:
        keys = [o.key for o in s3.list_objects(s3_run.client, s3_run.bucket, "run-prefix/")]
        assert [k for k in keys if "/dead_letter/" in k] == [
            "run-prefix/s3run/dead_letter/batch-00002.parquet"
        ]
        record = json.loads(s3_run.read(s3_run.layout.result_record(2)))
        uri = s3_run.layout.dead_letter(2)
        assert record["dead_letter"]["uri"] == uri
        assert record["dead_letter"]["sha256"] == s3.sha256_object(s3_run.client, uri)
        head = s3_run.client.head_object(
            Bucket=s3_run.bucket, Key="run-prefix/s3run/dead_letter/batch-00002.parquet"
        )
        assert head["ServerSideEncryption"] == "AES256"
        dead = pl.read_parquet(io.BytesIO(s3_run.read(uri)))
        assert dead["id"].to_list() == BAD_IDS and set(dead["category"]) == {"permanent"}

    def test_task_state_is_in_dynamodb(self, s3_run: S3Run) -> None:
        store = DynamoStateStore.from_config(load_config(s3_run.config))
        try:
            tasks = store.tasks()
        finally:
            store.close()
        assert len(tasks) == 1 + 6 + 2 + 1 + 1
        assert {str(t.status) for t in tasks} == {"SUCCEEDED"}

    def test_manifest_verify_passes_against_s3(self, s3_run: S3Run) -> None:
        result = s3_run.verify()
        assert result.returncode == 0, result.stderr
        assert f"ok: every file listed in {s3_run.layout.manifest}" in result.stdout

    def test_second_invocation_has_nothing_to_do(self, s3_run: S3Run) -> None:
        # Without local copies, only plan.json is fetched (to expand the DAG), nothing else.
        shutil.rmtree(s3_run.workdir / ".snakemake" / "storage", ignore_errors=True)
        again = run_snakemake(s3_run.workdir, s3_run.configfile)
        out = again.stdout + again.stderr
        assert "Nothing to be done" in out
        retrieved = [line for line in out.splitlines() if "Retrieving from storage" in line]
        assert retrieved == [f"Retrieving from storage: {s3_run.layout.plan}"]

    # Changes the run: keep it last.
    def test_deleted_result_is_rebuilt_and_tampering_is_found(self, s3_run: S3Run) -> None:
        before = s3_run.manifest()
        s3_run.client.delete_object(
            Bucket=s3_run.bucket, Key="run-prefix/s3run/results/batch-00004.parquet"
        )
        rerun = run_snakemake(s3_run.workdir, s3_run.configfile)
        stats = rerun.stdout + rerun.stderr
        for rule, count in (("process_batch", 1), ("merge_level", 1), ("merge_final", 1)):
            assert any(line.split() == [rule, str(count)] for line in stats.splitlines()), stats
        after = s3_run.manifest()
        assert after["final"]["sha256"] == before["final"]["sha256"]
        assert s3_run.verify().returncode == 0

        uri = s3_run.layout.result(0)
        s3_run.client.put_object(
            Bucket=s3_run.bucket, Key="run-prefix/s3run/results/batch-00000.parquet", Body=b"x"
        )
        result = s3_run.verify()
        assert result.returncode == 1
        assert f"checksum mismatch: {uri} (batch 00000 result)" in result.stderr


def test_missing_output_bucket_is_one_clear_line(
    moto_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_storage_env(monkeypatch, moto_endpoint, moto_endpoint)
    table = f"orchestrator-e2e-{uuid.uuid4().hex[:12]}"
    create_table(make_client(), table)
    make_records(50, seed=1).write_parquet(tmp_path / "items.parquet")
    bucket = f"no-such-bucket-{uuid.uuid4().hex[:8]}"
    config = base_config(
        tmp_path,
        output_root=f"s3://{bucket}/prefix",
        state={"backend": "dynamodb", "table": table},
    )
    result = run_snakemake(tmp_path, write_config(tmp_path / "c.yaml", config), check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert bucket in output and "does not exist" in output
    assert "Traceback" not in output
    # Nothing was created behind the user's back: the bucket is still absent.
    names = [b["Name"] for b in s3.make_s3_client().list_buckets()["Buckets"]]
    assert bucket not in names


def test_row_ranges_of_a_local_input_in_an_s3_run(
    moto_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """batching.row_ranges with every file target in S3: only plan.json is in the batch
    folder, the batch jobs read their rows from the local input, and the result is the
    polars query's."""
    set_storage_env(monkeypatch, moto_endpoint, moto_endpoint)
    client = s3.make_s3_client()
    bucket = f"orchestrator-ranges-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    table = f"orchestrator-ranges-{uuid.uuid4().hex[:12]}"
    create_table(make_client(), table)
    items = make_records(310, seed=17)
    (tmp_path / "input").mkdir()
    items.slice(0, 200).write_parquet(tmp_path / "input" / "a.parquet", row_group_size=32)
    items.slice(200).write_parquet(tmp_path / "input" / "b.parquet", row_group_size=32)
    config = base_config(
        tmp_path,
        run_id="ranges",
        output_root=f"s3://{bucket}/p",
        input={"uri": "input/*.parquet", "format": "parquet"},
        batching={"max_items": 70, "row_ranges": True},
        state={"backend": "dynamodb", "table": table},
    )
    configfile = write_config(tmp_path / "ranges.yaml", config)
    run_snakemake(tmp_path, configfile)

    layout = RunLayout(f"s3://{bucket}/p/ranges")
    listed = client.list_objects_v2(Bucket=bucket, Prefix="p/ranges/batches/")["Contents"]
    names = [o["Key"].rsplit("/", 1)[-1] for o in listed]
    assert "plan.json" in names and not [n for n in names if n.endswith(".parquet")], names
    final = pl.read_parquet(io.BytesIO(s3.read_bytes(client, layout.final)))
    v = pl.col("value")
    expected = items.group_by("group").agg(
        pl.len().cast(pl.Int64).alias("count"), v.sum().alias("sum"), v.min().alias("min"),
        v.max().alias("max"),
    )  # fmt: skip
    assert final.select(expected.columns).sort("group").equals(expected.sort("group"))
