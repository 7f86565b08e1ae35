"""orchestrator_ext.scheduler: Snakemake's scheduler stats a waiting job's inputs once."""

from __future__ import annotations

import asyncio
import sys
import types
from typing import Any

import pytest

from orchestrator_ext import scheduler


class FakeFile:
    """An input file that counts how often the scheduler asks about it."""

    def __init__(self, name: str, size: int | None, calls: list[str]) -> None:
        self.name, self._size, self._calls = name, size, calls

    async def exists(self) -> bool:
        self._calls.append(self.name)
        return self._size is not None

    async def size(self) -> int:
        assert self._size is not None
        return self._size

    def __hash__(self) -> int:
        return hash(self.name)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FakeFile) and other.name == self.name

    def __repr__(self) -> str:
        return self.name


def job(*files: FakeFile) -> Any:
    return types.SimpleNamespace(input=list(files))


def patched_module() -> Any:
    """A fresh copy of Snakemake's JobScheduler class, patched, in a module of its own."""
    from snakemake.scheduling import job_scheduler

    cls = type(
        "JobScheduler", (), {"update_input_sizes": job_scheduler.JobScheduler.update_input_sizes}
    )
    module = types.SimpleNamespace(JobScheduler=cls)
    scheduler.cached_input_sizes(module)
    return module


def new_scheduler(module: Any) -> Any:
    instance = module.JobScheduler()
    instance._input_sizes = {}
    return instance


def test_a_waiting_jobs_inputs_are_statted_once_across_rounds() -> None:
    calls: list[str] = []
    a, b = FakeFile("a", 10, calls), FakeFile("b", 20, calls)
    instance = new_scheduler(patched_module())
    for _ in range(5):
        asyncio.run(instance.update_input_sizes([job(a), job(a, b)]))
    assert sorted(calls) == ["a", "b"]
    assert instance._input_sizes == {a: 10, b: 20}


def test_a_missing_file_is_asked_about_again_until_it_exists() -> None:
    calls: list[str] = []
    late = FakeFile("late", None, calls)
    instance = new_scheduler(patched_module())
    asyncio.run(instance.update_input_sizes([job(late)]))
    late._size = 7
    asyncio.run(instance.update_input_sizes([job(late)]))
    asyncio.run(instance.update_input_sizes([job(late)]))
    assert calls == ["late", "late"]
    assert instance._input_sizes == {late: 7}


def test_the_sizes_equal_snakemakes_own_on_a_fresh_scheduler() -> None:
    from snakemake.scheduling import job_scheduler

    calls: list[str] = []
    files = [FakeFile(f"f{i}", None if i % 3 == 0 else i * 100, calls) for i in range(9)]
    jobs = [job(*files[i : i + 3]) for i in range(0, 9, 3)]
    original = types.SimpleNamespace(_input_sizes={})
    asyncio.run(job_scheduler.JobScheduler.update_input_sizes(original, jobs))
    instance = new_scheduler(patched_module())
    asyncio.run(instance.update_input_sizes(jobs))
    assert instance._input_sizes == original._input_sizes


def test_past_the_bound_only_the_sizes_of_files_no_waiting_job_reads_are_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(scheduler, "MAX_CACHED", 3)
    calls: list[str] = []
    files = [FakeFile(f"f{i}", i, calls) for i in range(5)]
    instance = new_scheduler(patched_module())
    asyncio.run(instance.update_input_sizes([job(f) for f in files[:3]]))
    asyncio.run(instance.update_input_sizes([job(files[2]), job(files[3]), job(files[4])]))
    assert instance._input_sizes == {files[2]: 2, files[3]: 3, files[4]: 4}


def test_patching_twice_wraps_once() -> None:
    module = patched_module()
    first = module.JobScheduler.update_input_sizes
    scheduler.cached_input_sizes(module)
    assert module.JobScheduler.update_input_sizes is first


def test_install_patches_the_loaded_snakemake_scheduler(monkeypatch: pytest.MonkeyPatch) -> None:
    from snakemake.scheduling import job_scheduler

    monkeypatch.setattr(
        job_scheduler.JobScheduler,
        "update_input_sizes",
        job_scheduler.JobScheduler.update_input_sizes,
    )
    scheduler.install()
    patched = job_scheduler.JobScheduler.update_input_sizes
    assert patched.cached_input_sizes is True
    assert patched.__wrapped__.__qualname__ == "JobScheduler.update_input_sizes"


def test_a_scheduler_without_the_size_cache_is_left_to_its_own_method() -> None:
    calls: list[str] = []
    a = FakeFile("a", 1, calls)
    seen: list[Any] = []

    async def own(self: Any, jobs: Any) -> None:
        seen.append(jobs)

    module = types.SimpleNamespace(
        JobScheduler=type("JobScheduler", (), {"update_input_sizes": own})
    )
    scheduler.cached_input_sizes(module)
    asyncio.run(module.JobScheduler().update_input_sizes([job(a)]))
    assert len(seen) == 1 and calls == []


def test_install_leaves_a_snakemake_without_the_method_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    module = types.SimpleNamespace(JobScheduler=type("JobScheduler", (), {}))
    monkeypatch.setitem(sys.modules, "snakemake.scheduling.job_scheduler", module)
    scheduler.install()
    assert not hasattr(module.JobScheduler, "update_input_sizes")
