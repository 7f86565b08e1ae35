"""The caching S3 storage provider (``orchestrator-s3``) against the local AWS endpoint (real
boto3 over HTTP): one request per key answers exists, mtime and size, present or missing;
uploads and removals invalidate; a finished job drops every cache."""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from snakemake.io import directory
from snakemake_interface_common.exceptions import WorkflowError
from snakemake_interface_common.plugin_registry.plugin import TaggedSettings
from snakemake_storage_plugin_s3 import StorageProviderSettings as S3Settings

from orchestrator_ext import storage_cache
from orchestrator_ext.executor import DropsStorageCache
from orchestrator_ext.storage_cache import ABSENT, ObjectStat, StatCache
from snakemake_storage_plugin_orchestrator_s3 import (
    StorageProvider,
    StorageProviderSettings,
    provider_settings,
)


class Requests(Counter):
    """S3 operations a provider sent (one per API call, as botocore's before-call sees it)."""

    def __init__(self, provider: StorageProvider) -> None:
        super().__init__()
        provider.s3c.meta.client.meta.events.register("before-call.s3", self._count)

    def _count(self, model: Any, **kwargs: Any) -> None:
        self[model.name] += 1

    def take(self) -> dict[str, int]:
        """The counts since the last take, then start again."""
        seen = dict(self)
        self.clear()
        return seen


@pytest.fixture(autouse=True)
def caching(monkeypatch: pytest.MonkeyPatch) -> None:
    """As under the orchestrator executors (``DropsStorageCache`` enables caching)."""
    monkeypatch.setattr(storage_cache, "_enabled", True)


@pytest.fixture
def provider(moto_endpoint: str, tmp_path: Path) -> StorageProvider:
    settings = StorageProviderSettings(
        endpoint_url=moto_endpoint, access_key="testing", secret_key="testing"
    )
    return StorageProvider(
        local_prefix=tmp_path / "storage", logger=logging.getLogger("test"), settings=settings
    )


@pytest.fixture
def bucket(provider: StorageProvider) -> str:
    name = f"cache-{uuid.uuid4().hex[:16]}"
    provider.s3c.meta.client.create_bucket(Bucket=name)
    return name


@pytest.fixture
def requests(provider: StorageProvider, bucket: str) -> Requests:
    return Requests(provider)


def _put(provider: StorageProvider, bucket: str, key: str, body: bytes) -> None:
    provider.s3c.meta.client.put_object(Bucket=bucket, Key=key, Body=body)


def _local(obj: Any, body: bytes) -> Any:
    obj.local_path().parent.mkdir(parents=True, exist_ok=True)
    obj.local_path().write_bytes(body)
    return obj


class TestAnswers:
    def test_one_head_object_answers_exists_mtime_and_size(
        self, provider: StorageProvider, bucket: str, requests: Requests
    ) -> None:
        _put(provider, bucket, "p/a.json", b"12345")
        requests.take()
        obj = provider.object(f"s3://{bucket}/p/a.json")
        head = provider.s3c.meta.client.head_object(Bucket=bucket, Key="p/a.json")
        requests.take()
        assert obj.exists() and obj.size() == 5
        assert obj.mtime() == head["LastModified"].timestamp()
        for _ in range(3):
            assert obj.exists() and obj.mtime() and obj.size() == 5
        assert requests.take() == {"HeadObject": 1}

    def test_answers_are_shared_by_every_object_of_the_key(
        self, provider: StorageProvider, bucket: str, requests: Requests
    ) -> None:
        # Snakemake copies storage objects and makes new ones when it applies wildcards.
        _put(provider, bucket, "p/a.json", b"x")
        requests.take()
        assert provider.object(f"s3://{bucket}/p/a.json").exists()
        assert provider.object(f"s3://{bucket}/p/a.json").size() == 1
        assert requests.take() == {"HeadObject": 1}

    def test_missing_key_is_one_head_object_and_is_kept(
        self, provider: StorageProvider, bucket: str, requests: Requests
    ) -> None:
        obj = provider.object(f"s3://{bucket}/p/missing.parquet")
        assert not obj.exists()
        assert not obj.exists()
        # No HeadBucket, no listing of "key/" for a plain key.
        assert requests.take() == {"HeadObject": 1}
        with pytest.raises(FileNotFoundError):
            obj.mtime()
        with pytest.raises(FileNotFoundError):
            obj.size()
        assert requests.take() == {}

    def test_missing_bucket_is_missing(self, provider: StorageProvider) -> None:
        assert not provider.object(f"s3://no-such-{uuid.uuid4().hex[:12]}/k").exists()


class TestFolders:
    def test_directory_target_is_answered_from_one_listing(
        self, provider: StorageProvider, bucket: str, requests: Requests
    ) -> None:
        for name, body in (("plan.json", b"{}"), ("batch-00000.parquet", b"abc")):
            _put(provider, bucket, f"p/batches/{name}", body)
        requests.take()
        folder = provider.object(directory(f"s3://{bucket}/p/batches"))
        assert folder.is_dir()
        assert folder.exists() and folder.size() == 5 and folder.mtime() > 0
        assert requests.take() == {"ListObjects": 1}
        # Known by the provider, so also for copies made without the flag.
        assert provider.object(f"s3://{bucket}/p/batches").exists()
        assert not provider.object(f"s3://{bucket}/p/batches/plan.json").is_dir()
        assert requests.take() == {}

    def test_empty_directory_target_is_missing(
        self, provider: StorageProvider, bucket: str, requests: Requests
    ) -> None:
        assert not provider.object(directory(f"s3://{bucket}/p/none")).exists()
        assert requests.take() == {"ListObjects": 1}

    def test_directory_target_with_wildcards_is_refused(self, provider: StorageProvider) -> None:
        with pytest.raises(WorkflowError, match="wildcards"):
            provider.object(directory("s3://bucket/p/{sample}/out"))

    def test_storing_a_folder_invalidates_every_key_under_it(
        self, provider: StorageProvider, bucket: str, requests: Requests
    ) -> None:
        plan = provider.object(f"s3://{bucket}/p/batches/plan.json")
        folder = provider.object(directory(f"s3://{bucket}/p/batches"))
        other = provider.object(f"s3://{bucket}/p/other.json")
        assert not plan.exists() and not folder.exists() and not other.exists()
        requests.take()
        folder.local_path().mkdir(parents=True)
        (folder.local_path() / "plan.json").write_bytes(b"{}")
        folder.store_object()
        assert requests.take() == {"HeadBucket": 1, "PutObject": 1}
        assert plan.exists() and folder.exists() and not other.exists()
        assert requests.take() == {"HeadObject": 1, "ListObjects": 1}


class TestWritesInvalidate:
    def test_store_object_invalidates_the_key(
        self, provider: StorageProvider, bucket: str, requests: Requests
    ) -> None:
        obj = provider.object(f"s3://{bucket}/p/result.json")
        assert not obj.exists()
        _local(obj, b"first").store_object()
        assert obj.exists() and obj.size() == 5
        first = obj.mtime()
        time.sleep(1.1)  # Last-Modified has whole seconds
        _local(obj, b"second!").store_object()
        assert obj.size() == 7 and obj.mtime() > first
        # The bucket is checked once per provider, not before every upload.
        assert requests.take() == {"HeadObject": 3, "HeadBucket": 1, "PutObject": 2}

    def test_remove_invalidates_the_key(
        self, provider: StorageProvider, bucket: str, requests: Requests
    ) -> None:
        _put(provider, bucket, "p/keep.json", b"k")  # so the s3 plugin keeps the bucket
        _put(provider, bucket, "p/gone.json", b"g")
        obj = provider.object(f"s3://{bucket}/p/gone.json")
        assert obj.exists()
        obj.remove()
        assert not obj.exists()
        assert provider.object(f"s3://{bucket}/p/keep.json").exists()

    def test_a_store_during_a_request_keeps_its_answer_out(self) -> None:
        cache = StatCache()
        token = cache.token("b", "k")  # a HeadObject is sent ...
        other = cache.token("b", "other")
        cache.invalidate("b", "k")  # ... the key is written meanwhile ...
        assert not cache.put("b", "k", ABSENT, token)  # ... its answer is stale
        assert cache.get("b", "k") is None
        assert cache.put("b", "other", ABSENT, other), "another key's answer is still good"
        assert cache.put("b", "k", ObjectStat(True, 1.0, 1), cache.token("b", "k"))
        assert cache.get("b", "k") == ObjectStat(True, 1.0, 1)

    def test_clear_and_folders_void_every_answer_in_flight(self) -> None:
        cache = StatCache()
        token = cache.token("b", "k")
        cache.clear()
        assert not cache.put("b", "k", ABSENT, token)
        token = cache.token("b", "p/batches/x.parquet")
        cache.invalidate("b", "p/batches", folder=True)
        assert not cache.put("b", "p/batches/x.parquet", ABSENT, token)


def _job_info(bucket: str, key: str, directory: bool = False, rule: str = "process_batch") -> Any:
    """A finished job as an executor sees it: one storage output and one local log."""
    from types import SimpleNamespace

    stored = SimpleNamespace(bucket=bucket, key=key)
    outputs = [
        SimpleNamespace(is_storage=True, storage_object=stored, is_directory=directory),
        SimpleNamespace(is_storage=False),
    ]
    job = SimpleNamespace(is_group=lambda: False, output=outputs, rule=SimpleNamespace(name=rule))
    return SimpleNamespace(job=job)


class TestJobCompletionDropsCaches:
    def test_drop_all_forgets_objects_written_elsewhere(
        self, provider: StorageProvider, bucket: str, requests: Requests
    ) -> None:
        obj = provider.object(f"s3://{bucket}/p/from-a-job.json")
        assert not obj.exists()
        _put(provider, bucket, "p/from-a-job.json", b"job")  # a job on another machine
        assert not obj.exists()  # not asked again until a job finishes ...
        assert provider.stat_cache in storage_cache.registered()
        assert storage_cache.drop_all() >= 1
        assert obj.exists() and obj.size() == 3  # ... and then it is
        assert requests.take() == {"PutObject": 1, "HeadObject": 2}

    def test_drop_all_keeps_bucket_existence(
        self, provider: StorageProvider, bucket: str, requests: Requests
    ) -> None:
        assert provider.bucket_exists(bucket)
        storage_cache.drop_all()
        assert provider.bucket_exists(bucket)
        assert requests.take() == {"HeadBucket": 1}

    @pytest.mark.parametrize("report", ["report_job_success", "report_job_error"])
    def test_executors_drop_caches_before_snakemake_hears_of_the_job(
        self, provider: StorageProvider, bucket: str, report: str
    ) -> None:
        seen: list[int] = []

        class Base:
            def report_job_success(self, job_info: Any) -> None:
                seen.append(len(provider.stat_cache))

            def report_job_error(self, job_info: Any, msg: Any = None, **kwargs: Any) -> None:
                seen.append(len(provider.stat_cache))

        class Executor(DropsStorageCache, Base):
            pass

        provider.object(f"s3://{bucket}/p/x.json").exists()
        provider.object(f"s3://{bucket}/p/other.json").exists()
        assert len(provider.stat_cache) == 2
        getattr(Executor(), report)(_job_info(bucket, "p/x.json"))
        assert seen == [1], "only the finished job's output is forgotten"
        assert provider.stat_cache.get(bucket, "p/other.json") is not None

    def test_a_job_without_nameable_outputs_drops_everything(
        self, provider: StorageProvider, bucket: str
    ) -> None:
        provider.object(f"s3://{bucket}/p/x.json").exists()
        from orchestrator_ext.executor import _drop_outputs

        _drop_outputs(object())
        assert len(provider.stat_cache) == 0

    def test_the_partition_drops_everything(self, provider: StorageProvider, bucket: str) -> None:
        # A new plan removes the old plan's results, which are no output of the partition.
        from orchestrator_ext.executor import PARTITION_RULE, _drop_outputs

        provider.object(f"s3://{bucket}/p/results/batch-00001.json").exists()
        _drop_outputs(_job_info(bucket, "p/batches", directory=True, rule=PARTITION_RULE))
        assert len(provider.stat_cache) == 0

    def test_a_folder_output_drops_the_keys_under_it(
        self, provider: StorageProvider, bucket: str
    ) -> None:
        from orchestrator_ext.executor import _drop_outputs

        provider.stat_cache.put(
            bucket,
            "p/batches/b-1.parquet",
            ABSENT,
            provider.stat_cache.token(bucket, "p/batches/b-1.parquet"),
        )
        provider.stat_cache.put(
            bucket, "p/keep.json", ABSENT, provider.stat_cache.token(bucket, "p/keep.json")
        )
        _drop_outputs(_job_info(bucket, "p/batches", directory=True))
        assert provider.stat_cache.get(bucket, "p/batches/b-1.parquet") is None
        assert provider.stat_cache.get(bucket, "p/keep.json") is not None

    def test_nothing_is_kept_until_such_an_executor_exists(
        self, provider: StorageProvider, bucket: str, requests: Requests, monkeypatch
    ) -> None:
        monkeypatch.setattr(storage_cache, "_enabled", False)
        obj = provider.object(f"s3://{bucket}/p/x.json")
        assert not obj.exists() and not obj.exists()
        assert requests.take() == {"HeadObject": 2}
        assert len(provider.stat_cache) == 0

        class Base:
            def __post_init__(self, test_mode: bool = False) -> None:
                self.test_mode = test_mode

        class Executor(DropsStorageCache, Base):
            pass

        assert Executor().__post_init__(test_mode=True) is None
        assert storage_cache.enabled()
        assert not obj.exists() and not obj.exists()
        assert requests.take() == {"HeadObject": 1}

    def test_both_orchestrator_executors_drop_caches(self) -> None:
        from snakemake_executor_plugin_orchestrator_local import Executor as Local
        from snakemake_executor_plugin_orchestrator_slurm import Executor as Slurm

        for executor in (Local, Slurm):
            assert executor.__post_init__ is DropsStorageCache.__post_init__
            assert executor.report_job_success is DropsStorageCache.report_job_success
            assert executor.report_job_error is DropsStorageCache.report_job_error


class TestSettings:
    @staticmethod
    def _tagged(settings: Any) -> TaggedSettings:
        tagged = TaggedSettings()
        tagged.register_settings(settings)
        return tagged

    def test_s3_plugin_settings_apply_unless_given_for_this_plugin(self) -> None:
        given = {
            "s3": self._tagged(S3Settings(endpoint_url="http://s3.example", retries=20)),
            "orchestrator-s3": self._tagged(StorageProviderSettings(region="eu-west-1")),
        }
        assert provider_settings(given, "orchestrator_s3") == {
            "endpoint_url": "http://s3.example",
            "retries": 20,
            "region": "eu-west-1",
        }
        given["orchestrator-s3"] = self._tagged(StorageProviderSettings(retries=3))
        assert provider_settings(given)["retries"] == 3

    def test_nothing_given_is_nothing(self) -> None:
        assert provider_settings(None) == {}
        assert provider_settings({"s3": self._tagged(S3Settings())}) == {}

    def test_boto3_resource_is_made_on_first_use(self, tmp_path: Path) -> None:
        provider = StorageProvider(
            local_prefix=tmp_path / "s", logger=logging.getLogger("test"), settings=S3Settings()
        )
        assert "s3c" not in vars(provider)
        assert provider.s3c is provider.s3c
