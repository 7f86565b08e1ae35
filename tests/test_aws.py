"""Tests of orchestrator_ext.aws: one-line setup errors for any AWS service, without a server
(botocore's own exceptions stand in for the service's answers)."""

from __future__ import annotations

import pytest
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
)

from orchestrator_ext.aws import AwsResource, display_endpoint, translated_errors


class SetupError(Exception):
    pass


class Unreachable(SetupError):
    pass


def _resource(**overrides: object) -> AwsResource:
    fields: dict[str, object] = {
        "where": "Thing 't' at http://h:1",
        "error": SetupError,
        "missing_codes": frozenset({"NoSuchThing"}),
        "missing_message": "Thing 't' does not exist: create it",
        "endpoint_settings": "AWS_ENDPOINT_URL",
    }
    return AwsResource(**{**fields, **overrides})  # type: ignore[arg-type]


def _client_error(code: str, message: str = "") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message}}, "Op")


def _raised(resource: AwsResource, exc: BaseException) -> BaseException:
    with pytest.raises(BaseException) as info, translated_errors(resource):
        raise exc
    return info.value


class TestDisplayEndpoint:
    def test_drops_user_info_and_query(self) -> None:
        assert (
            display_endpoint("http://key:secret@127.0.0.1:5555/p?x=1") == "http://127.0.0.1:5555/p"
        )
        assert display_endpoint("https://s3.amazonaws.com") == "https://s3.amazonaws.com"

    def test_default_and_schemeless(self) -> None:
        assert display_endpoint(None) == "(default)" and display_endpoint("") == "(default)"
        assert display_endpoint("localhost") == "localhost"


class TestTranslatedErrors:
    def test_a_missing_resource_is_its_message(self) -> None:
        error = _raised(_resource(), _client_error("NoSuchThing"))
        assert type(error) is SetupError and str(error) == "Thing 't' does not exist: create it"
        assert error.__cause__ is None and error.__suppress_context__

    @pytest.mark.parametrize("code", ["AccessDenied", "AccessDeniedException", "403"])
    def test_refused_access_names_the_code_and_the_policy(self, code: str) -> None:
        error = _raised(_resource(), _client_error(code, "not  for\nyou"))
        assert str(error) == (
            f"Thing 't' at http://h:1 refused access ({code}): check the credentials and the "
            "IAM policy (`orchestrator iam-policy`)"
        )

    def test_the_service_message_is_quoted_on_one_line_if_asked(self) -> None:
        error = _raised(_resource(quote_message=True), _client_error("AccessDenied", "not\n for"))
        assert "refused access (AccessDenied: not for): check" in str(error)
        bare = _raised(_resource(quote_message=True), _client_error("AccessDenied"))
        assert "refused access (AccessDenied): check" in str(bare)

    @pytest.mark.parametrize(
        "exc", [NoCredentialsError(), PartialCredentialsError(provider="env", cred_var="key")]
    )
    def test_missing_credentials_name_the_settings(self, exc: Exception) -> None:
        error = _raised(_resource(credential_settings="KEY and SECRET"), exc)
        assert str(error) == (
            "no AWS credentials found for Thing 't' at http://h:1: set KEY and SECRET, "
            "AWS_PROFILE, or run where an instance role applies"
        )
        default = _raised(_resource(), exc)
        assert "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE" in str(default)

    @pytest.mark.parametrize(
        "exc",
        [EndpointConnectionError(endpoint_url="http://h:1"), ConnectTimeoutError(endpoint_url="x")],
    )
    def test_an_unreachable_endpoint_may_raise_its_own_class(self, exc: Exception) -> None:
        error = _raised(_resource(), exc)
        assert type(error) is SetupError
        assert str(error) == (
            f"cannot reach Thing 't' at http://h:1 ({type(exc).__name__}): check "
            "AWS_ENDPOINT_URL and the network"
        )
        assert type(_raised(_resource(unreachable_error=Unreachable), exc)) is Unreachable

    def test_other_errors_pass_unchanged(self) -> None:
        for exc in (_client_error("ConditionalCheckFailedException"), ValueError("x")):
            assert _raised(_resource(), exc) is exc

    def test_a_clean_block_is_left_alone(self) -> None:
        with translated_errors(_resource()):
            value = 1
        assert value == 1
