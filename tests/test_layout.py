"""Unit tests for orchestrator_ext.layout (pure functions: run paths and the merge tree)."""

from __future__ import annotations

import pytest

from orchestrator_ext.layout import RunLayout, children, level_sizes, root_level


class TestLevelSizes:
    @pytest.mark.parametrize(
        ("n", "fan_in", "expected"),
        [
            (1, 16, [1, 1]),
            (2, 2, [2, 1]),
            (16, 16, [16, 1]),
            (17, 16, [17, 2, 1]),
            (40, 16, [40, 3, 1]),
            (256, 16, [256, 16, 1]),
            (257, 16, [257, 17, 2, 1]),
            (10000, 16, [10000, 625, 40, 3, 1]),
            (5, 2, [5, 3, 2, 1]),
        ],
    )
    def test_sizes(self, n: int, fan_in: int, expected: list[int]) -> None:
        assert level_sizes(n, fan_in) == expected

    def test_no_batches(self) -> None:
        with pytest.raises(ValueError, match="at least one batch, got 0"):
            level_sizes(0, 16)

    def test_fan_in_too_small(self) -> None:
        with pytest.raises(ValueError, match="fan_in must be at least 2, got 1"):
            level_sizes(10, 1)


class TestRootLevel:
    @pytest.mark.parametrize(
        ("n", "fan_in", "expected"),
        [(1, 16, 1), (16, 16, 1), (17, 16, 2), (256, 16, 2), (257, 16, 3), (10000, 16, 4)],
    )
    def test_root_level(self, n: int, fan_in: int, expected: int) -> None:
        assert root_level(n, fan_in) == expected


class TestChildren:
    def test_single_batch(self) -> None:
        assert list(children(1, 0, 1, 16)) == [0]

    def test_exactly_fan_in(self) -> None:
        assert list(children(1, 0, 16, 16)) == list(range(16))

    def test_fan_in_plus_one(self) -> None:
        assert list(children(1, 0, 17, 16)) == list(range(16))
        assert list(children(1, 1, 17, 16)) == [16]
        assert list(children(2, 0, 17, 16)) == [0, 1]

    def test_last_node_is_partial(self) -> None:
        assert list(children(1, 624, 10000, 16)) == list(range(9984, 10000))
        assert list(children(3, 2, 10000, 16)) == list(range(32, 40))

    @pytest.mark.parametrize(
        ("n", "fan_in"), [(1, 16), (2, 2), (16, 16), (17, 16), (40, 3), (257, 16), (10000, 16)]
    )
    def test_every_node_is_a_child_of_exactly_one_parent(self, n: int, fan_in: int) -> None:
        sizes = level_sizes(n, fan_in)
        for level in range(1, len(sizes)):
            seen: list[int] = []
            for index in range(sizes[level]):
                kids = children(level, index, n, fan_in)
                assert 1 <= len(kids) <= fan_in
                seen.extend(kids)
            assert sorted(seen) == list(range(sizes[level - 1])), f"level {level}"

    def test_every_batch_under_one_level_1_node(self) -> None:
        n, fan_in = 10000, 16
        owners = [0] * n
        for index in range(level_sizes(n, fan_in)[1]):
            for batch in children(1, index, n, fan_in):
                owners[batch] += 1
        assert set(owners) == {1}

    @pytest.mark.parametrize(("level", "index"), [(0, 0), (3, 0), (1, 3), (1, -1)])
    def test_no_such_node(self, level: int, index: int) -> None:
        with pytest.raises(ValueError, match=f"no merge node L{level}/{index}"):
            children(level, index, 40, 16)


class TestRunLayout:
    def test_paths(self) -> None:
        layout = RunLayout("out/demo")
        assert layout.batches_dir == "out/demo/batches"
        assert layout.plan == "out/demo/batches/plan.json"
        assert layout.batch(3) == "out/demo/batches/batch-00003.parquet"
        assert layout.result(3) == "out/demo/results/batch-00003.parquet"
        assert layout.result_record(3) == "out/demo/results/batch-00003.json"
        assert layout.dead_letter(3) == "out/demo/dead_letter/batch-00003.parquet"
        assert layout.merge_part(2, 5) == "out/demo/merge/L2/part-00005.parquet"
        assert layout.merge_record(2, 5) == "out/demo/merge/L2/part-00005.json"
        assert layout.final == "out/demo/final/result.parquet"
        assert layout.final_record == "out/demo/final/result.json"
        assert layout.manifest == "out/demo/manifest.json"
        assert layout.state_db == "out/demo/state.sqlite"
        assert layout.log("process_batch", "00003") == "out/demo/logs/process_batch/00003.log"

    def test_wildcard_strings_are_used_as_given(self) -> None:
        layout = RunLayout("r")
        assert layout.batch("00003") == layout.batch(3)
        assert layout.result("00012") == layout.result(12)
        assert layout.merge_part("1", "00004") == layout.merge_part(1, 4)

    def test_node(self) -> None:
        layout = RunLayout("r")
        assert layout.node(0, 7, 40, 16) == (layout.result(7), layout.result_record(7))
        assert layout.node(1, 2, 40, 16) == (layout.merge_part(1, 2), layout.merge_record(1, 2))
        assert layout.node(2, 0, 40, 16) == (layout.final, layout.final_record)
        assert layout.node(1, 0, 16, 16) == (layout.final, layout.final_record)
