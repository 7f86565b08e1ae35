"""AWS setup errors in one line: what every service client of this package (S3, DynamoDB)
shows when it is set up wrong.

A missing resource, an unreachable endpoint, missing or refused credentials mean "this is
set up wrong" and become one line of the package's own error, naming the resource and what
to check; every other botocore error (conflicts, throttling, a missing key) passes through
unchanged for the caller to handle. Credentials never appear in a message: endpoints are
shown by ``display_endpoint``, without user info or query string.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

#: Error codes meaning the principal may not use the resource (S3's and DynamoDB's): a
#: setup problem, not a race.
ACCESS_CODES = frozenset(
    {
        # S3
        "AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch",
        "ExpiredToken", "InvalidToken", "403",
        # DynamoDB
        "AccessDeniedException", "UnrecognizedClientException", "InvalidSignatureException",
        "MissingAuthenticationTokenException", "ExpiredTokenException", "InvalidClientTokenId",
    }
)  # fmt: skip
#: The standard credential variables, as a message names them.
STANDARD_CREDENTIALS = "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"


def display_endpoint(url: str | None) -> str:
    """The endpoint for messages: scheme, host, port and path only (never user info)."""
    if not url:
        return "(default)"
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname or ''}{port}{parts.path}" if parts.scheme else url


@dataclass(frozen=True)
class AwsResource:
    """One AWS resource as setup errors about it name it, and what they raise.

    Attributes:
        where: the resource in a message, e.g. ``S3 bucket 'b' at http://host:9000``.
        error: the exception raised for a setup problem.
        missing_codes: error codes meaning the resource does not exist.
        missing_message: the whole line shown when it does not exist.
        endpoint_settings: where its endpoint is configured, for "cannot reach".
        credential_settings: the credential variables to name when none are found (the
            profile and instance roles are always named after them).
        unreachable_error: raised instead of ``error`` when the endpoint cannot be reached
            (e.g. a transient subclass), if given.
        quote_message: whether "refused access" quotes the service's message too.
    """

    where: str
    error: type[Exception]
    missing_codes: frozenset[str]
    missing_message: str
    endpoint_settings: str
    credential_settings: str = STANDARD_CREDENTIALS
    unreachable_error: type[Exception] | None = None
    quote_message: bool = False


@contextlib.contextmanager
def translated_errors(resource: AwsResource) -> Iterator[None]:
    """Turn setup problems with ``resource`` (missing, unreachable, no or refused
    credentials) into one line of ``resource.error``; other errors pass unchanged.

    Raises:
        resource.error: a setup problem (``resource.unreachable_error`` for an unreachable
            endpoint, if set).
    """
    from botocore.exceptions import (
        ClientError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    try:
        yield
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        if code in resource.missing_codes:
            raise resource.error(resource.missing_message) from None
        if code in ACCESS_CODES:
            message = " ".join(str(error.get("Message", "")).split())
            said = f": {message}" if resource.quote_message and message else ""
            raise resource.error(
                f"{resource.where} refused access ({code}{said}): check the credentials and "
                "the IAM policy (`orchestrator iam-policy`)"
            ) from None
        raise
    except (NoCredentialsError, PartialCredentialsError):
        raise resource.error(
            f"no AWS credentials found for {resource.where}: set "
            f"{resource.credential_settings}, AWS_PROFILE, or run where an instance role applies"
        ) from None
    except (EndpointConnectionError, ConnectTimeoutError) as exc:
        raise (resource.unreachable_error or resource.error)(
            f"cannot reach {resource.where} ({type(exc).__name__}): check "
            f"{resource.endpoint_settings} and the network"
        ) from None
