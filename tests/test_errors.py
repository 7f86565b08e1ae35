"""Unit tests for orchestrator_ext.errors: categories and one-line descriptions."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

from orchestrator_ext.errors import (
    BatchFailed,
    Category,
    ConfigError,
    OrchestratorError,
    PermanentError,
    TransientError,
    classify,
    classify_exit_code,
    classify_slurm_state,
    describe,
    describe_exit_code,
    exit_signal,
)


def client_error(code: str, status: int, operation: str = "PutItem") -> ClientError:
    return ClientError(
        {
            "Error": {"Code": code, "Message": f"{code} happened"},
            "ResponseMetadata": {"HTTPStatusCode": status},
        },
        operation,
    )


class TestClassify:
    @pytest.mark.parametrize(
        ("exc", "category"),
        [
            (MemoryError(), Category.RESOURCE),
            (TimeoutError("timed out"), Category.TRANSIENT),
            (ConnectionError("reset"), Category.TRANSIENT),
            (ConnectionResetError("reset by peer"), Category.TRANSIENT),
            (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), Category.TRANSIENT),
            (ReadTimeoutError(endpoint_url="http://127.0.0.1:1"), Category.TRANSIENT),
            (client_error("ThrottlingException", 400), Category.TRANSIENT),
            (client_error("SlowDown", 503, "PutObject"), Category.TRANSIENT),
            (client_error("SomethingOdd", 503), Category.TRANSIENT),
            (client_error("InternalServerError", 500), Category.TRANSIENT),
            (client_error("ValidationException", 400), Category.PERMANENT),
            (client_error("AccessDenied", 403, "GetObject"), Category.PERMANENT),
            (client_error("NoSuchKey", 404, "GetObject"), Category.PERMANENT),
            (ValueError("bad value"), Category.PERMANENT),
            (KeyError("col"), Category.PERMANENT),
            (ZeroDivisionError(), Category.PERMANENT),
            (FileNotFoundError("x"), Category.PERMANENT),
            (TransientError("retry me"), Category.TRANSIENT),
            (PermanentError("bad item"), Category.PERMANENT),
            (BatchFailed("too many"), Category.PERMANENT),
        ],
        ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
    )
    def test_category(self, exc: BaseException, category: Category) -> None:
        assert classify(exc) is category

    def test_category_values(self) -> None:
        assert [str(c) for c in Category] == ["transient", "resource", "permanent"]

    def test_response_attribute_that_is_not_a_dict(self) -> None:
        exc = RuntimeError("odd")
        exc.response = "not a dict"  # type: ignore[attr-defined]
        assert classify(exc) is Category.PERMANENT


class TestDescribe:
    def test_type_and_message(self) -> None:
        assert describe(ValueError("bad value")) == "ValueError: bad value"

    def test_folds_newlines(self) -> None:
        assert describe(RuntimeError("line one\n  line two\n")) == "RuntimeError: line one line two"

    def test_no_message(self) -> None:
        assert describe(MemoryError()) == "MemoryError"

    def test_client_error_is_one_line(self) -> None:
        text = describe(client_error("ThrottlingException", 400))
        assert text.startswith("ClientError: ")
        assert "ThrottlingException" in text
        assert "\n" not in text


class TestOrchestratorError:
    def test_str_is_the_message_only(self) -> None:
        assert str(ConfigError("invalid config at 'x': y")) == "invalid config at 'x': y"

    def test_no_args(self) -> None:
        assert str(OrchestratorError()) == "OrchestratorError"

    def test_is_a_workflow_error(self) -> None:
        from snakemake_interface_common.exceptions import WorkflowError

        assert issubclass(ConfigError, WorkflowError)


class TestClassifySlurmState:
    @pytest.mark.parametrize(
        "state", ["OUT_OF_MEMORY", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "out_of_memory+"]
    )
    def test_resource_states(self, state: str) -> None:
        assert classify_slurm_state(state) is Category.RESOURCE

    @pytest.mark.parametrize("state", ["FAILED", "CANCELLED by 0", "COMPLETED", ""])
    def test_states_that_say_nothing_about_the_cause(self, state: str) -> None:
        assert classify_slurm_state(state) is None


class TestClassifyExitCode:
    @pytest.mark.parametrize("code", [137, 143])
    def test_killed_by_the_system_is_resource(self, code: int) -> None:
        assert classify_exit_code(code) is Category.RESOURCE

    @pytest.mark.parametrize("code", [None, 0, 1, 2])
    def test_other_codes_say_nothing(self, code: int | None) -> None:
        assert classify_exit_code(code) is None

    @pytest.mark.parametrize("code", [-9, -15, -24, 124])
    def test_killed_from_outside_or_timed_out_is_resource(self, code: int) -> None:
        assert classify_exit_code(code) is Category.RESOURCE

    @pytest.mark.parametrize("code", [-11, 139, -6, 134, -7, -8, -4])
    def test_a_crash_is_permanent(self, code: int) -> None:
        # SIGSEGV, SIGABRT, SIGBUS, SIGFPE, SIGILL, from subprocess (negative) or a shell.
        assert classify_exit_code(code) is Category.PERMANENT

    @pytest.mark.parametrize("code", [-1, 129, -2])
    def test_a_hang_up_or_interrupt_is_transient(self, code: int) -> None:
        assert classify_exit_code(code) is Category.TRANSIENT

    def test_signal_of_an_exit_code(self) -> None:
        assert exit_signal(-11) is exit_signal(139) is exit_signal(11 + 128)
        assert exit_signal(-11).name == "SIGSEGV"
        assert exit_signal(1) is exit_signal(128) is exit_signal(None) is None
        assert describe_exit_code(-11) == "killed by SIGSEGV (exit -11)"
        assert describe_exit_code(137) == "killed by SIGKILL (exit 137)"
        assert describe_exit_code(3) == "exited with status 3"


class TestTypeAndMessage:
    @pytest.mark.parametrize(
        ("error_type", "message", "line"),
        [
            (
                "BatchFailed",
                "BatchFailed: batch 00006: too many",
                "BatchFailed: batch 00006: too many",
            ),
            ("RuntimeExceeded", "exceeded its runtime", "RuntimeExceeded: exceeded its runtime"),
            ("KeyError", "KeyError", "KeyError"),
            ("KeyError", None, "KeyError"),
            (None, "lost: no record", "lost: no record"),
            ("ValueError", "ValueErrors: all\n of them", "ValueError: ValueErrors: all of them"),
        ],
    )
    def test_the_type_once_and_one_line(
        self, error_type: str | None, message: str | None, line: str
    ) -> None:
        from orchestrator_ext.errors import type_and_message

        assert type_and_message(error_type, message) == line
