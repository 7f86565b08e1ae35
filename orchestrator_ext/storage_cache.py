"""What S3 said about objects, kept until it may have changed: the cache behind the
``orchestrator-s3`` storage provider (``snakemake_storage_plugin_orchestrator_s3``).

Why: Snakemake switches its own IOCache off while jobs run, and then asks the storage plugin
about the same keys over and over: exists, then mtime, then size, in every scheduling round,
before and after every job. ``snakemake-storage-plugin-s3`` sends one HeadObject per
question (plus a HeadBucket and a listing of ``key/`` for every missing key), about 125
requests per batch of a run in S3 (``bench/requests.py``). The provider answers exists,
mtime and size of a key from one HeadObject (a folder: one listing of ``key/``), and keeps
that answer, present or missing, here.

**Invariant: an answer held in a cache was obtained from S3 after the last event of the run
that could have changed the object.** The events that write objects of a run, and what
makes a cached answer go away:

1. This process stores or removes an object (the provider's ``store_object`` /
   ``remove``, i.e. Snakemake uploading a finished job's outputs or deleting stale ones):
   the provider invalidates that key (a folder: every key under it) once the write is done.
2. A job writes its outputs, in another process, possibly on another machine (a Slurm job
   stores its own outputs). Snakemake only looks at what a job wrote after it learns that
   the job finished, and it learns that from the executor. The orchestrator executors
   (``orchestrator_ext.executor.DropsStorageCache``, used by ``orchestrator-local`` and
   ``orchestrator-slurm``) call ``drop_keys()`` with the finished job's storage outputs in
   ``report_job_success`` and ``report_job_error``, before they tell Snakemake, so every
   answer about them obtained while the job ran is gone by then. This relies on what the
   workflow guarantees: a job writes no S3 target of the run but its own declared outputs
   (a job that cannot name its outputs gets ``drop_all()``). Jobs of local rules under a
   remote executor run through Snakemake's stock local executor, on this machine; their
   outputs reach S3 only through 1.
3. A request that was already in flight when 1 or 2 happened (the Slurm executor reports
   from its own thread) may carry an answer from before the write: every invalidation
   advances the cache's generation, and an answer is only kept if the generation did not
   change between sending the request and receiving the answer (``generation`` /
   ``put``).

Point 2 holds only while the jobs are run by an executor that calls ``drop_keys``, so caches
keep nothing until such an executor calls ``enable()`` (``DropsStorageCache.__post_init__``);
under any other executor (``snakemake --executor slurm``, a dry run) every question goes to
S3 (one HeadObject per question, no more).

Not covered (Snakemake's own IOCache, while it is on, has the same blind spot): a write by
something outside the run, such as a person deleting an object mid-run, is not seen by this
coordinator (a rerun sees it). Which buckets exist is kept for the
life of the provider (one HeadBucket per bucket, before its first upload); ``remove``
forgets it, because the s3 plugin deletes a bucket it emptied.

Caches register themselves in a module-level registry (weak references: a cache lives as
long as its provider); ``drop_all`` clears every registered cache of this process.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass


@dataclass(frozen=True)
class ObjectStat:
    """What one HeadObject (or, for a folder, one listing) said about a key."""

    exists: bool
    mtime: float | None = None
    size: int | None = None


#: The answer for a key that is not there.
ABSENT = ObjectStat(exists=False)


class StatCache:
    """Thread-safe answers per (bucket, key), with a generation guard for requests in
    flight (see the module docstring)."""

    def __init__(self, name: str = "") -> None:
        self.name = name
        self._lock = threading.Lock()
        self._stats: dict[tuple[str, str], ObjectStat] = {}
        self._buckets: set[str] = set()
        # Invalidations: of everything (clear, a folder) and per key. Per key, so that one
        # job's outputs being written does not void the answers in flight about others.
        self._generation = 0
        self._key_generations: dict[tuple[str, str], int] = {}
        #: Answers served from the cache / requests the cache did not spare (diagnostics).
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._stats)

    def token(self, bucket: str, key: str) -> tuple[int, int]:
        """Take this before asking S3 about a key; hand it to ``put`` with the answer."""
        with self._lock:
            return self._generation, self._key_generations.get((bucket, key), 0)

    def get(self, bucket: str, key: str) -> ObjectStat | None:
        """The cached answer for a key, or None (always None until ``enable()``)."""
        with self._lock:
            stat = self._stats.get((bucket, key)) if _enabled else None
            if stat is None:
                self.misses += 1
            else:
                self.hits += 1
            return stat

    def put(self, bucket: str, key: str, stat: ObjectStat, token: tuple[int, int]) -> bool:
        """Keep an answer unless the key (or everything) was invalidated since ``token``
        was taken (the answer may then predate a write), or if caching is not enabled.
        Returns whether it was kept."""
        with self._lock:
            now = (self._generation, self._key_generations.get((bucket, key), 0))
            if not _enabled or token != now:
                return False
            self._stats[(bucket, key)] = stat
            return True

    def invalidate(self, bucket: str, key: str, *, folder: bool = False) -> None:
        """Forget a key (with ``folder``: also every key under ``key/``) after a write."""
        with self._lock:
            self._key_generations[(bucket, key)] = self._key_generations.get((bucket, key), 0) + 1
            self._stats.pop((bucket, key), None)
            if folder:
                self._generation += 1
                prefix = key.rstrip("/") + "/"
                for cached in [k for k in self._stats if k[0] == bucket]:
                    if cached[1].startswith(prefix):
                        del self._stats[cached]

    def clear(self) -> None:
        """Forget every object answer (bucket existence stays; see the module docstring)."""
        with self._lock:
            self._generation += 1
            self._stats.clear()

    def bucket_known(self, bucket: str) -> bool:
        """Whether the bucket is known to exist."""
        with self._lock:
            return bucket in self._buckets

    def add_bucket(self, bucket: str) -> None:
        """Record that the bucket exists (HeadBucket said so, or it was just created)."""
        with self._lock:
            self._buckets.add(bucket)

    def forget_bucket(self, bucket: str) -> None:
        with self._lock:
            self._buckets.discard(bucket)


_REGISTRY: weakref.WeakSet[StatCache] = weakref.WeakSet()
_REGISTRY_LOCK = threading.Lock()
_enabled = False


def enable() -> None:
    """Let caches keep answers: called by an executor that will call ``drop_keys`` (or
    ``drop_all``) whenever a job finishes. Stays on for the life of the process."""
    global _enabled
    _enabled = True


def enabled() -> bool:
    """Whether caches keep answers in this process."""
    return _enabled


def register(cache: StatCache) -> StatCache:
    """Have ``drop_all`` clear ``cache`` (held weakly); returns it."""
    with _REGISTRY_LOCK:
        _REGISTRY.add(cache)
    return cache


def registered() -> list[StatCache]:
    """The caches of this process that are still alive."""
    with _REGISTRY_LOCK:
        return list(_REGISTRY)


def drop_all() -> int:
    """Clear every registered cache (a job finished: it may have written objects). Returns
    how many caches were cleared."""
    caches = registered()
    for cache in caches:
        cache.clear()
    return len(caches)


def drop_keys(keys: list[tuple[str, str, bool]]) -> int:
    """Forget ``(bucket, key, is_folder)`` in every registered cache (a job that wrote them
    finished). Returns how many caches were touched."""
    caches = registered()
    for cache in caches:
        for bucket, key, folder in keys:
            cache.invalidate(bucket, key, folder=folder)
    return len(caches)
