"""Unit tests for orchestrator_ext.task: task ids, kinds, rules, log names, tree positions."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from orchestrator_ext import task
from orchestrator_ext.layout import RunLayout, level_sizes

ROOT = Path(__file__).resolve().parents[1]


class TestNames:
    def test_zero_padded(self) -> None:
        assert task.batch_name(42) == "batch-00042"
        assert task.part_name(3) == "part-00003"
        assert task.batch_id(7) == "batch-00007"
        assert task.merge_id(2, 11) == "merge-L2-part-00011"

    def test_node_id_by_tree_position(self) -> None:
        assert task.node_id(0, 4, 2) == "batch-00004"
        assert task.node_id(1, 3, 2) == "merge-L1-part-00003"
        assert task.node_id(2, 0, 2) == task.FINAL


class TestParse:
    @pytest.mark.parametrize(
        ("task_id", "kind", "rule", "log_name", "level", "index"),
        [
            ("batch-00042", "batch", "process_batch", "00042", 0, 42),
            ("merge-L2-part-00003", "merge", "merge_level", "L2-00003", 2, 3),
            ("final", "final", "merge_final", "final", None, None),
            ("manifest", "manifest", "write_manifest", "manifest", None, None),
            ("partition", "partition", "partition_items", "partition", None, None),
        ],
    )
    def test_every_stage(
        self, task_id: str, kind: str, rule: str, log_name: str, level: int | None,
        index: int | None,
    ) -> None:  # fmt: skip
        parsed = task.parse(task_id)
        assert parsed is not None
        assert (parsed.kind, parsed.stage.rule, parsed.log_name) == (kind, rule, log_name)
        assert (parsed.level, parsed.index) == (level, index)
        assert task.kind(task_id) == kind

    @pytest.mark.parametrize("task_id", ["batch-x", "merge-L1", "dashboard", "~coordinator", ""])
    def test_unknown_ids(self, task_id: str) -> None:
        assert task.parse(task_id) is None
        assert task.kind(task_id) == task_id


class TestForJob:
    def test_rules_with_tasks(self) -> None:
        assert task.for_job("process_batch", {"batch": "00007"}) == "batch-00007"
        assert task.for_job("merge_level", {"level": "1", "part": "00002"}) == (
            "merge-L1-part-00002"
        )
        assert task.for_job("merge_final", {}) == task.FINAL
        assert task.for_job("write_manifest", {}) == task.MANIFEST
        assert task.for_job("partition_items", {}) == task.PARTITION

    def test_rules_without_tasks(self) -> None:
        assert task.for_job("report_dashboard", {}) is None
        assert task.for_job("all", {}) is None

    def test_job_and_parse_agree(self) -> None:
        """The log a rule declares (a pattern over its wildcards) is the log ``parse`` finds
        for the task of that job: history and rules cannot disagree."""
        layout = RunLayout("out/r")
        wildcards = {"batch": "00005", "level": "2", "part": "00001"}
        for stage in task.STAGES.values():
            task_id = task.for_job(stage.rule, wildcards)
            assert task_id is not None
            parsed = task.parse(task_id)
            assert parsed is not None and parsed.stage == stage
            declared = layout.job_log(stage.rule).format(**wildcards)
            assert declared == layout.log(stage.rule, parsed.log_name)

    def test_unknown_rule_names_the_known_ones(self) -> None:
        with pytest.raises(KeyError, match="no stage is run by rule 'proces_batch'"):
            task.stage_of_rule("proces_batch")


class TestRulesDeclareStageLogs:
    def test_every_rule_with_a_log_is_a_stage(self) -> None:
        """Every rule's ``log:`` comes from ``task`` (via ``LAYOUT.job_log``) under its own
        rule name: renaming a rule without its stage fails here."""
        declared: dict[str, str] = {}
        for path in sorted((ROOT / "rules").glob("*.smk")):
            text = path.read_text()
            for rule, body in re.findall(
                r"^(?:rule|checkpoint) (\w+):\n((?:[ \t]+.*\n|\n)*)", text, re.M
            ):
                if "log:" in body:
                    match = re.search(r'LAYOUT\.job_log\("(\w+)"\)', body)
                    assert match, f"{path.name}: rule {rule} declares its log by hand"
                    declared[rule] = match.group(1)
        assert declared, "no rule with a log found"
        assert all(rule == named for rule, named in declared.items()), declared
        assert set(declared) == {s.rule for s in [*task.STAGES.values(), task.DASHBOARD]}


class TestAllIds:
    @pytest.mark.parametrize(
        ("n", "fan_in", "inner"),
        [(1, 16, 0), (16, 16, 0), (17, 16, 2), (40, 16, 3), (10000, 16, 625 + 40 + 3)],
    )
    def test_counts(self, n: int, fan_in: int, inner: int) -> None:
        tasks = task.all_ids(level_sizes(n, fan_in))
        assert len(tasks) == n + inner + 2
        assert len(set(tasks)) == len(tasks)
        assert sum(task.kind(t) == "batch" for t in tasks) == n
        assert sum(task.kind(t) == "merge" for t in tasks) == inner
        assert tasks[-2:] == [task.FINAL, task.MANIFEST]

    def test_root_is_final_not_a_merge_task(self) -> None:
        tasks = task.all_ids(level_sizes(17, 16))
        assert "merge-L1-part-00000" in tasks
        assert "merge-L1-part-00001" in tasks
        assert "merge-L2-part-00000" not in tasks
