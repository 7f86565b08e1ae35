"""Snakemake's own checks for storage plugins (``TestStorageBase`` of
snakemake-interface-storage-plugins) run on ``orchestrator-s3`` against the local AWS
endpoint: store, exists, mtime, size, checksum, inventory, retrieve and remove of a file
and of a folder, a missing object, query validation and example queries.

Twice: as under any executor (the stat cache keeps nothing) and as under the orchestrator
executors (it keeps answers until a write or a finished job drops them).
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from snakemake_interface_storage_plugins.tests import TestStorageBase

from orchestrator_ext import storage_cache
from snakemake_storage_plugin_orchestrator_s3 import StorageProvider, StorageProviderSettings


class TestOrchestratorS3(TestStorageBase):
    __test__ = True
    retrieve_only = False
    store_only = False
    delete = True
    files_only = False  # folders too: a stored local folder becomes a folder key

    @pytest.fixture(autouse=True)
    def _endpoint(self, moto_endpoint: str) -> None:
        # The base class asks for settings and queries without fixtures: keep what they
        # need on the instance (pytest makes one per test). A bucket of its own per test:
        # the s3 plugin deletes a bucket that ``remove`` emptied.
        self.endpoint = moto_endpoint
        self.bucket = f"base-{uuid.uuid4().hex[:16]}"

    def get_storage_provider_cls(self) -> type[StorageProvider]:
        return StorageProvider

    def get_storage_provider_settings(self) -> StorageProviderSettings:
        return StorageProviderSettings(
            endpoint_url=self.endpoint, access_key="testing", secret_key="testing"
        )

    def get_query(self, tmp_path: Any) -> str:
        return f"s3://{self.bucket}/testdir1/testdir2/test-file.txt"

    def get_query_not_existing(self, tmp_path: Any) -> str:
        return f"s3://{self.bucket}-missing/{uuid.uuid4().hex}"


class TestOrchestratorS3Caching(TestOrchestratorS3):
    @pytest.fixture(autouse=True)
    def _caching(self, monkeypatch: pytest.MonkeyPatch) -> None:
        # As under orchestrator-local / orchestrator-slurm (DropsStorageCache enables it).
        monkeypatch.setattr(storage_cache, "_enabled", True)
