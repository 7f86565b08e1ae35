"""Unit tests for the shipped example jobs (orchestrator_ext.jobs.*) and the job loader."""

from __future__ import annotations

import hashlib
import math
import sys
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from orchestrator_ext.config import JobSpec
from orchestrator_ext.errors import JobLoadError, PermanentError
from orchestrator_ext.example_data import make_records
from orchestrator_ext.job import (
    JobContext,
    code_version,
    job_context,
    load_callable,
    resolve_job,
)
from orchestrator_ext.jobs import (
    checksum,
    grouped_stats,
    hash_chain,
    text_metrics,
    wait,
    word_count,
)


def ctx(**params: object) -> JobContext:
    return JobContext(run_id="r", batch_id="00000", attempt=1, params=dict(params))


def chunks(frame: pl.DataFrame, bounds: list[int]) -> list[pl.DataFrame]:
    edges = [0, *bounds, frame.height]
    return [frame.slice(lo, hi - lo) for lo, hi in zip(edges, edges[1:], strict=False)]


class TestGroupedStatsPartial:
    def test_small_example(self) -> None:
        batch = pl.DataFrame({"group": ["a", "b", "a", "a"], "value": [1, 10, 2, -3]})
        out = grouped_stats.partial(batch, ctx())
        assert out.to_dicts() == [
            {"group": "a", "count": 3, "sum": 0, "sum_sq": 14, "min": -3, "max": 2},
            {"group": "b", "count": 1, "sum": 10, "sum_sq": 100, "min": 10, "max": 10},
        ]

    def test_other_columns(self) -> None:
        batch = pl.DataFrame({"k": ["x", "x"], "n": [3, 4]})
        out = grouped_stats.partial(batch, ctx(group_column="k", value_column="n"))
        assert out.row(0, named=True)["sum_sq"] == 25

    def test_float_values_are_refused(self) -> None:
        batch = pl.DataFrame({"group": ["a"], "value": [1.5]})
        with pytest.raises(PermanentError, match="needs an integer 'value' column, got Float64"):
            grouped_stats.partial(batch, ctx())


class TestGroupedStatsCombine:
    @pytest.mark.parametrize(
        "bounds", [[1], [10, 11, 500], [250, 500, 750], list(range(50, 2000, 50))]
    )
    def test_chunks_then_combine_equals_one_pass(self, bounds: list[int]) -> None:
        records = make_records(2000, seed=11).select("group", "value")
        one_pass = grouped_stats.partial(records, ctx())
        partials = pl.concat([grouped_stats.partial(c, ctx()) for c in chunks(records, bounds)])
        assert partials.height > one_pass.height  # groups really were split across chunks
        assert_frame_equal(grouped_stats.combine(partials, ctx()), one_pass, check_exact=True)

    def test_combine_is_associative(self) -> None:
        parts = [
            grouped_stats.partial(c, ctx())
            for c in chunks(make_records(900, seed=2).select("group", "value"), [300, 600])
        ]
        left = grouped_stats.combine(
            pl.concat([grouped_stats.combine(pl.concat(parts[:2]), ctx()), parts[2]]), ctx()
        )
        right = grouped_stats.combine(
            pl.concat([parts[0], grouped_stats.combine(pl.concat(parts[1:]), ctx())]), ctx()
        )
        assert_frame_equal(left, right, check_exact=True)


class TestGroupedStatsFinalize:
    def test_mean_and_population_std(self) -> None:
        values = [2, 4, 4, 4, 5, 5, 7, 9]
        batch = pl.DataFrame({"group": ["g"] * len(values), "value": values})
        out = grouped_stats.finalize(grouped_stats.partial(batch, ctx()), ctx())
        row = out.row(0, named=True)
        assert row["mean"] == 5.0
        assert row["std"] == 2.0

    def test_constant_group_has_zero_std(self) -> None:
        batch = pl.DataFrame({"group": ["g"] * 3, "value": [7, 7, 7]})
        out = grouped_stats.finalize(grouped_stats.partial(batch, ctx()), ctx())
        assert out.get_column("std").to_list() == [0.0]


class TestWordCount:
    def test_counts_lowercased_words(self) -> None:
        batch = pl.DataFrame({"text": ["The cat, the DOG!", "don't stop", None, "cat"]})
        out = word_count.count_words(batch, ctx())
        assert dict(out.iter_rows()) == {"the": 2, "cat": 2, "dog": 1, "don't": 1, "stop": 1}
        assert out.get_column("word").to_list() == sorted(out.get_column("word").to_list())

    def test_unicode_words(self) -> None:
        out = word_count.count_words(
            pl.DataFrame({"body": ["Größe größe 42"]}), ctx(text_column="body")
        )
        assert dict(out.iter_rows()) == {"größe": 2, "42": 1}

    def test_chunks_then_combine_equals_one_pass(self) -> None:
        records = make_records(600, seed=5).select("text")
        partials = pl.concat(
            [word_count.count_words(c, ctx()) for c in chunks(records, [100, 101, 400])]
        )
        assert_frame_equal(
            word_count.combine(partials, ctx()),
            word_count.count_words(records, ctx()),
            check_exact=True,
        )


class TestTextMetrics:
    def test_metrics(self) -> None:
        batch = pl.DataFrame({"id": [1, 2], "text": ["hello  world", "a\nb c\n"]})
        out = text_metrics.measure(batch, ctx())
        assert out.select("id", "words", "chars", "lines").rows() == [(1, 2, 12, 1), (2, 3, 6, 3)]
        assert out.get_column("sha256").to_list() == [
            hashlib.sha256(b"hello  world").hexdigest(),
            hashlib.sha256(b"a\nb c\n").hexdigest(),
        ]

    def test_null_text_is_permanent(self) -> None:
        batch = pl.DataFrame({"id": [1, 2, 3], "text": ["ok", None, None]})
        with pytest.raises(PermanentError, match="2 item\\(s\\) have no 'text'"):
            text_metrics.measure(batch, ctx())


class TestChecksum:
    def test_real_files(self, tmp_path: Path) -> None:
        data = b"some bytes\n" * 1000
        path = tmp_path / "f.bin"
        path.write_bytes(data)
        out = checksum.checksum_file({"id": "a", "path": str(path)}, ctx())
        assert out == {
            "id": "a",
            "path": str(path),
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }

    def test_empty_file(self, tmp_path: Path) -> None:
        path = tmp_path / "empty"
        path.write_bytes(b"")
        out = checksum.checksum_file(
            {"key": 7, "file": str(path)}, ctx(path_column="file", id_column="key")
        )
        assert (out["id"], out["bytes"], out["sha256"]) == (7, 0, hashlib.sha256().hexdigest())

    def test_missing_file(self, tmp_path: Path) -> None:
        with pytest.raises(FileNotFoundError):
            checksum.checksum_file({"id": "a", "path": str(tmp_path / "nope")}, ctx())


class TestHashChain:
    def test_matches_the_definition(self) -> None:
        # Spelled out independently: payload = sha256(str(id)) repeated to 256 bytes, then
        # rounds of sha256(previous digest + payload).
        seed = hashlib.sha256(b"42").digest()
        payload = (seed * 8)[:256]
        digest = b""
        for _ in range(3):
            digest = hashlib.sha256(digest + payload).digest()
        assert hash_chain.hash_chain(42, rounds=3) == digest.hex()

    def test_item_job_uses_params(self) -> None:
        ctx = JobContext(run_id="r", batch_id="00000", attempt=1, params={"rounds": 5})
        row = hash_chain.hash_chain_item({"id": 7}, ctx)
        assert row == {"id": 7, "digest": hash_chain.hash_chain(7, rounds=5)}
        assert row["digest"] != hash_chain.hash_chain(7, rounds=4)


class TestWait:
    def test_waits_and_names_the_item(self, monkeypatch: pytest.MonkeyPatch) -> None:
        waited: list[float] = []
        monkeypatch.setattr(wait.time, "sleep", waited.append)
        ctx = JobContext(run_id="r", batch_id="00000", attempt=1, params={"wait_s": 0.25})
        assert wait.wait_item({"id": "a7"}, ctx) == {"id": "a7", "waited_s": 0.25}
        assert waited == [0.25]


class TestLoadCallable:
    def test_loads(self) -> None:
        assert load_callable("orchestrator_ext.jobs.word_count:combine") is word_count.combine

    @pytest.mark.parametrize("reference", ["no_colon", ":fn", "module:"])
    def test_malformed(self, reference: str) -> None:
        with pytest.raises(JobLoadError, match="must look like 'package.module:callable'"):
            load_callable(reference)

    def test_missing_module(self) -> None:
        with pytest.raises(JobLoadError) as info:
            load_callable("no_such_pkg.mod:fn")
        message = str(info.value)
        assert message.startswith(
            "job.function 'no_such_pkg.mod:fn': cannot import module 'no_such_pkg.mod': "
            "no module named 'no_such_pkg' on the Python path or in the working directory "
        )
        assert "\n" not in message

    def test_missing_submodule(self) -> None:
        with pytest.raises(JobLoadError, match="no module named 'orchestrator_ext.nope'"):
            load_callable("orchestrator_ext.nope:fn")

    def test_missing_attribute(self) -> None:
        with pytest.raises(
            JobLoadError,
            match=r"^job.combine 'math:nope': module 'math' has no attribute 'nope'; correct",
        ):
            load_callable("math:nope", "job.combine")

    def test_not_callable(self) -> None:
        assert not callable(math.pi)
        with pytest.raises(
            JobLoadError, match=r"'pi' in module 'math' is a float, not a callable; name a function"
        ):
            load_callable("math:pi")

    @pytest.mark.parametrize(
        ("source", "reason"),
        [
            ("raise RuntimeError('no licence\\nfile')\n", "RuntimeError: no licence file"),
            ("x = undefined_name\n", "NameError: name 'undefined_name' is not defined"),
            ("def f(:\n    pass\n", "SyntaxError: "),
            ("import sys\nsys.exit(3)\n", "SystemExit: 3"),
            ("import no_such_dependency_xyz\n", "ModuleNotFoundError: No module named"),
        ],
    )
    def test_module_that_raises_at_import(
        self, user_module: Callable[[str, str], str], source: str, reason: str
    ) -> None:
        name = user_module("broken", source)
        with pytest.raises(JobLoadError) as info:
            load_callable(f"{name}:fn")
        message = str(info.value)
        assert message.startswith(
            f"job.function '{name}:fn': importing module '{name}' failed: {reason}"
        )
        assert "\n" not in message
        assert name not in sys.modules

    def test_module_in_working_directory(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # As in a Snakemake script: job, whose sys.path[0] is .snakemake/scripts.
        monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".")])
        monkeypatch.delitem(sys.modules, "mylab_jobs_cwd", raising=False)
        (tmp_path / "mylab_jobs_cwd.py").write_text("def run(batch, ctx):\n    return batch\n")
        monkeypatch.chdir(tmp_path)
        fn = load_callable("mylab_jobs_cwd:run")
        assert fn.__module__ == "mylab_jobs_cwd"
        assert str(tmp_path) in sys.path
        sys.modules.pop("mylab_jobs_cwd", None)

    def test_working_directory_not_added_when_it_does_not_help(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".")])
        monkeypatch.chdir(tmp_path)
        with pytest.raises(JobLoadError, match="no module named 'absent_here'"):
            load_callable("absent_here:run")
        assert str(tmp_path) not in sys.path


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str, str], str]:
    """Factory: write a module with this source on sys.path; returns its (unique) name."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def make(stem: str, source: str) -> str:
        name = f"{stem}_{tmp_path.name}".replace("-", "_")
        (tmp_path / f"{name}.py").write_text(source)
        return name

    return make


class TestResolveJob:
    def test_resolves_every_callable(self) -> None:
        resolved = resolve_job(
            JobSpec(
                function="orchestrator_ext.jobs.grouped_stats:partial",
                combine="orchestrator_ext.jobs.grouped_stats:combine",
                finalize="orchestrator_ext.jobs.grouped_stats:finalize",
            )
        )
        assert resolved.function is grouped_stats.partial
        assert resolved.combine is grouped_stats.combine
        assert resolved.finalize is grouped_stats.finalize

    def test_without_combine_and_finalize(self) -> None:
        resolved = resolve_job(JobSpec(function="orchestrator_ext.jobs.word_count:count_words"))
        assert (resolved.combine, resolved.finalize) == (None, None)

    def test_function_missing(self) -> None:
        with pytest.raises(JobLoadError, match=r"^job.function 'no_such_pkg:fn': cannot import"):
            resolve_job(JobSpec(function="no_such_pkg:fn"))

    def test_combine_missing(self) -> None:
        spec = JobSpec(function="orchestrator_ext.jobs.grouped_stats:partial", combine="math:nope")
        with pytest.raises(
            JobLoadError, match=r"^job.combine 'math:nope': module 'math' has no attribute 'nope'"
        ):
            resolve_job(spec)

    def test_finalize_missing(self) -> None:
        spec = JobSpec(
            function="orchestrator_ext.jobs.grouped_stats:partial",
            combine="orchestrator_ext.jobs.grouped_stats:combine",
            finalize="no_such_pkg.post:finalize",
        )
        with pytest.raises(
            JobLoadError, match=r"^job.finalize 'no_such_pkg.post:finalize': cannot import module"
        ):
            resolve_job(spec)


class TestJobContext:
    def test_scratch_dir_lives_for_the_block(self) -> None:
        with job_context("r", "00003", 2, {"a": 1}) as context:
            assert context.scratch_dir.is_dir()
            assert (context.run_id, context.batch_id, context.attempt) == ("r", "00003", 2)
            assert context.params == {"a": 1}
            scratch = context.scratch_dir
        assert not scratch.exists()


class TestCodeVersion:
    def test_hashes_the_job_module(self) -> None:
        source = Path(grouped_stats.__file__).read_bytes()
        digest = hashlib.sha256(source).hexdigest()[:12]
        version = code_version("orchestrator_ext.jobs.grouped_stats:partial")
        assert version.endswith(f"orchestrator_ext.jobs.grouped_stats sha256:{digest}")

    def test_unknown_module(self) -> None:
        assert code_version("no_such_pkg.mod:fn").endswith("; no_such_pkg.mod")
