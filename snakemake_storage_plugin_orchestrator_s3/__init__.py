"""Storage plugin ``orchestrator-s3``: ``snakemake-storage-plugin-s3`` with a cache of what S3
said about each key, so that Snakemake's repeated questions cost one request per key
between job completions instead of several per question.

Differences from the s3 plugin (everything else is the s3 plugin's code):

- ``exists``, ``mtime`` and ``size`` of a key share one HeadObject, and the answer, present
  or missing, is kept in the provider's ``orchestrator_ext.storage_cache.StatCache``. When
  the answer may have changed is described there: this process's uploads and removals
  invalidate their keys, and every job completion reported by the orchestrator executors
  drops the answers about that job's outputs (under any other executor nothing is kept).
- A key is a folder only if its query carries Snakemake's ``directory()`` flag
  (``storage.orchestrator_s3(directory("s3://..."))``), or if this provider uploaded a local
  folder to it. A folder is answered from one listing of ``key/``; any other key is a plain
  object, and a missing object is missing (the s3 plugin followed every missing key with a
  HeadBucket and a listing of ``key/``, to see whether it was a folder).
- The bucket is checked (HeadBucket) once per provider and bucket, before the first upload
  to it, not before every upload.
- The boto3 resource is made on first use, so registering the provider costs nothing in a
  run or job that never touches S3.

Settings: the s3 plugin's settings class, so ``--storage-orchestrator-s3-*`` and
``SNAKEMAKE_STORAGE_ORCHESTRATOR_S3_*`` exist. ``provider_settings`` fills every setting
not given for this plugin from the s3 plugin's (``--storage-s3-*``,
``SNAKEMAKE_STORAGE_S3_*``, a profile's ``storage-s3-retries``), so a run configured for the
s3 plugin keeps working unchanged; ``rules/common.smk`` registers the provider with them.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields
from typing import Any

import botocore.exceptions
import snakemake_storage_plugin_s3 as s3_plugin
from snakemake_interface_common.exceptions import WorkflowError

from orchestrator_ext.storage_cache import ABSENT, ObjectStat, StatCache, register

__all__ = [
    "PLUGIN_NAME",
    "StorageObject",
    "StorageProvider",
    "StorageProviderSettings",
    "provider_settings",
]

#: The plugin's name for ``provider=`` (from the module name, as Snakemake derives it).
PLUGIN_NAME = "orchestrator-s3"
#: The plugin whose settings fill the ones not given for this one.
BASE_PLUGIN_NAME = "s3"
_MISSING_CODES = frozenset({"404", "NoSuchKey", "NotFound", "NoSuchBucket"})


@dataclass
class StorageProviderSettings(s3_plugin.StorageProviderSettings):
    """The s3 plugin's settings (endpoint_url, region, access_key, secret_key, token,
    signature_version, retries, max_requests_per_second), under this plugin's prefix."""


def _default(field: Any) -> Any:
    if field.default is not MISSING:
        return field.default
    if field.default_factory is not MISSING:
        return field.default_factory()
    return None


def provider_settings(
    storage_provider_settings: Mapping[str, Any] | None, tag: str | None = None
) -> dict[str, Any]:
    """Keyword arguments for ``storage <tag>: provider="orchestrator-s3", ...``: every
    setting given for this plugin, and for each one left at its default, the s3 plugin's
    value if that one was given.

    ``storage_provider_settings`` is Snakemake's ``workflow.storage_provider_settings``
    (plugin name -> tagged settings, from the command line, the profile and the
    ``SNAKEMAKE_STORAGE_*`` variables).
    """
    settings = storage_provider_settings or {}

    def of(plugin: str) -> Any:
        tagged = settings.get(plugin)
        return tagged.get_settings(tag) if tagged is not None else None

    own, base = of(PLUGIN_NAME), of(BASE_PLUGIN_NAME)
    result: dict[str, Any] = {}
    for field in fields(StorageProviderSettings):
        default = _default(field)
        value = getattr(own, field.name, default)
        if value == default:
            value = getattr(base, field.name, default)
        if value != default:
            result[field.name] = value
    return result


class StorageProvider(s3_plugin.StorageProvider):
    """The s3 plugin's provider with a ``StatCache`` and a record of folder keys."""

    def __post_init__(self) -> None:
        # Not the s3 plugin's __post_init__: it makes the boto3 resource (see s3c).
        self.stat_cache = register(StatCache(name=str(self.local_prefix)))
        self._folders: set[tuple[str, str]] = set()

    @functools.cached_property
    def s3c(self) -> Any:
        """The s3 plugin's boto3 resource, made on first use."""
        super().__post_init__()  # assigns self.s3c
        return self.__dict__.pop("s3c")

    def declare_folder(self, bucket: str, key: str) -> None:
        """Treat ``s3://bucket/key`` as a folder (answers from a listing of ``key/``)."""
        self._folders.add((bucket, key))

    def is_folder(self, bucket: str, key: str) -> bool:
        return (bucket, key) in self._folders

    def bucket_exists(self, bucket: str) -> bool:
        """Whether the bucket exists: one HeadBucket per bucket while it does."""
        if self.stat_cache.bucket_known(bucket):
            return True
        try:
            self.s3c.meta.client.head_bucket(Bucket=bucket)
        except Exception:  # the s3 plugin's semantics: any failure means "no"
            return False
        self.stat_cache.add_bucket(bucket)
        return True


class StorageObject(s3_plugin.StorageObject):
    """The s3 plugin's storage object, answering from the provider's cache."""

    provider: StorageProvider

    def __post_init__(self) -> None:
        super().__post_init__()
        flags = getattr(self.query, "flags", None) or {}
        if flags.get("directory") and self.is_valid_query():
            if "{" in self.key:
                raise WorkflowError(
                    f"{self.query}: storage plugin {PLUGIN_NAME} cannot tell which keys of a "
                    "directory() target with wildcards are folders; name the folder "
                    "without wildcards"
                )
            self.provider.declare_folder(self.bucket, self.key)

    # -- what S3 says, once per key between invalidations

    def is_dir(self) -> bool:
        return self.provider.is_folder(self.bucket, self.key)

    def bucket_exists(self) -> bool:
        return self.provider.bucket_exists(self.bucket)

    def stat(self) -> ObjectStat:
        """The cached answer for this key, asking S3 (once) if there is none."""
        cache = self.provider.stat_cache
        stat = cache.get(self.bucket, self.key)
        if stat is None:
            token = cache.token(self.bucket, self.key)
            stat = self._list_folder() if self.is_dir() else self._head()
            cache.put(self.bucket, self.key, stat, token)
        return stat

    def _head(self) -> ObjectStat:
        try:
            head = self.provider.s3c.meta.client.head_object(Bucket=self.bucket, Key=self.key)
        except botocore.exceptions.ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _MISSING_CODES:
                return ABSENT
            if code == "400":
                raise WorkflowError(
                    f"Bad request for S3 object {self.query}. This can happen if "
                    "the query contains unsupported characters (e.g. '..'), "
                    "if your credentials are invalid, or if your permissions are "
                    "insufficient."
                ) from exc
            raise
        return ObjectStat(
            exists=True, mtime=head["LastModified"].timestamp(), size=int(head["ContentLength"])
        )

    def _list_folder(self) -> ObjectStat:
        items = list(self.get_subkeys())
        if not items:
            return ABSENT
        return ObjectStat(
            exists=True,
            mtime=max(item.last_modified.timestamp() for item in items),
            size=sum(item.size for item in items),
        )

    def _present(self) -> ObjectStat:
        stat = self.stat()
        if not stat.exists:
            # Snakemake's managed_mtime / managed_size turn this into its not-found error.
            raise FileNotFoundError(f"not in storage: {self.query}")
        return stat

    def exists(self) -> bool:
        return self.stat().exists

    def mtime(self) -> float:
        return float(self._present().mtime)  # type: ignore[arg-type]

    def size(self) -> int:
        return int(self._present().size)  # type: ignore[arg-type]

    # -- writes: invalidate what they change

    def store_object(self) -> None:
        try:
            super().store_object()
        finally:
            if self.local_path().is_dir():
                self.provider.declare_folder(self.bucket, self.key)
            self.provider.stat_cache.invalidate(self.bucket, self.key, folder=self.is_dir())

    def remove(self) -> None:
        folder = self.is_dir()
        try:
            super().remove()
        finally:
            cache = self.provider.stat_cache
            cache.invalidate(self.bucket, self.key, folder=folder)
            # The s3 plugin deletes the bucket when this emptied it.
            cache.forget_bucket(self.bucket)
