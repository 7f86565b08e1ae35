"""Unit tests for orchestrator_ext.cli.parser: subcommands, shared run arguments, types."""

from __future__ import annotations

import pytest

from orchestrator_ext.cli import inspect, operate
from orchestrator_ext.cli.parser import build_parser

#: Every subcommand that names a run, and the command body it runs.
RUN_COMMANDS = {
    ("status",): inspect.cmd_status,
    ("errors",): inspect.cmd_errors,
    ("audit",): inspect.cmd_audit,
    ("report",): inspect.cmd_report,
    ("cost",): inspect.cmd_cost,
    ("plan",): inspect.cmd_plan,
    ("iam-policy",): operate.cmd_iam_policy,
    ("redrive", "--out", "x.yaml"): operate.cmd_redrive,
    ("init",): operate.cmd_init,
    ("unlock",): operate.cmd_unlock,
    ("manifest", "verify"): operate.cmd_manifest_verify,
}


class TestRunCommands:
    @pytest.mark.parametrize("words", list(RUN_COMMANDS))
    def test_each_takes_the_run_arguments_and_runs_its_body(self, words: tuple[str]) -> None:
        args = build_parser().parse_args([*words, "results/r", "--config", "run_id=x", "--json"])
        assert args.func is RUN_COMMANDS[words]
        assert args.run == "results/r" and args.config == ["run_id=x"] and args.json

    @pytest.mark.parametrize("words", list(RUN_COMMANDS))
    def test_configfiles_default_to_none(self, words: tuple[str]) -> None:
        args = build_parser().parse_args([*words, "--configfile", "a.yaml", "b.yaml"])
        assert args.configfile == ["a.yaml", "b.yaml"] and args.run is None
        assert build_parser().parse_args(list(words)).configfile is None

    def test_example_data_names_no_run(self) -> None:
        args = build_parser().parse_args(["example-data", "--items", "10"])
        assert args.func is operate.cmd_example_data
        assert (args.items, args.seed, args.out) == (10, 0, "data/records.parquet")
        assert not hasattr(args, "configfile")


class TestArgumentTypes:
    @pytest.mark.parametrize(
        ("argv", "message"),
        [(["status", "--interval", "0"], "--interval: must be positive, got 0"),
         (["status", "--count", "0"], "--count: must be at least 1, got 0"),
         (["errors", "--limit", "-1"], "--limit: must be 0 or more, got -1"),
         (["cost", "--items", "x"], "--items: invalid _positive_int value: 'x'"),
         (["plan", "--overhead-seconds", "-1"], "--overhead-seconds: must be 0 or more, got -1"),
         (["plan", "--overhead-seconds", "nan"], "--overhead-seconds: must be 0 or more"),
         (["plan", "--executor", "k8s"], "--executor: invalid choice: 'k8s'")],
    )  # fmt: skip
    def test_out_of_range_is_a_usage_error(
        self, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        with pytest.raises(SystemExit) as info:
            build_parser().parse_args(argv)
        assert info.value.code == 2
        assert message in capsys.readouterr().err

    def test_in_range_values_are_converted(self) -> None:
        args = build_parser().parse_args(["status", "--interval", "0.5", "--slowest", "0"])
        assert (args.interval, args.slowest, args.count) == (0.5, 0, None)

    def test_plan_defaults_to_the_local_executor(self) -> None:
        args = build_parser().parse_args(["plan", "--overhead-seconds", "0"])
        assert (args.executor, args.overhead_seconds, args.items, args.batch_seconds) == (
            "local", 0.0, None, None,
        )  # fmt: skip


class TestHelp:
    def test_every_command_is_listed_in_order(self, capsys: pytest.CaptureFixture[str]) -> None:
        with pytest.raises(SystemExit):
            build_parser().parse_args(["--help"])
        out = capsys.readouterr().out
        names = ["status", "errors", "audit", "report", "cost", "plan", "iam-policy",
                 "redrive", "init", "unlock", "manifest", "example-data"]  # fmt: skip
        assert f"{{{','.join(names)}}}" in out

    def test_description_keeps_its_line_breaks(self, capsys: pytest.CaptureFixture[str]) -> None:
        with pytest.raises(SystemExit):
            build_parser().parse_args(["cost", "--help"])
        assert "\n  currency: EUR\n  s3: {put_per_1000" in capsys.readouterr().out
