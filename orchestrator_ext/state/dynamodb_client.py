"""How the state store talks to DynamoDB: the client's settings, the client, and what a
setup error (no table, no endpoint, no credentials, access refused) says about the table."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestrator_ext.aws import AwsResource, display_endpoint
from orchestrator_ext.errors import StateStoreError


@dataclass(frozen=True)
class DynamoSettings:
    """How the DynamoDB client talks to the service.

    Attributes:
        retry_mode: botocore retry mode, ``standard`` or ``adaptive``: retries throttling,
            5xx and connection errors with exponential backoff.
        max_attempts: total tries per call, the first one included.
        connect_timeout_s: seconds to wait for a connection.
        read_timeout_s: seconds to wait for a response.
        page_size: items per Query page (None: DynamoDB's 1 MB pages); every read of many
            rows follows the pages to the end.
        batch_write_tries: tries of a BatchWriteItem while it returns UnprocessedItems, with
            exponential backoff and jitter; then ``ensure_tasks`` fails.
    """

    retry_mode: str = "standard"
    max_attempts: int = 8
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 20.0
    page_size: int | None = None
    batch_write_tries: int = 10

    def __post_init__(self) -> None:
        validate_dynamo_settings(self)


def validate_dynamo_settings(settings: DynamoSettings) -> None:
    """Check the client settings.

    Raises:
        ValueError: naming the bad setting and what is accepted.
    """
    if settings.retry_mode not in ("standard", "adaptive"):
        raise ValueError(
            f"retry_mode must be 'standard' or 'adaptive', got {settings.retry_mode!r}"
        )
    if settings.max_attempts < 1 or settings.batch_write_tries < 1:
        raise ValueError("max_attempts and batch_write_tries must be at least 1")
    if settings.page_size is not None and settings.page_size < 1:
        raise ValueError(f"page_size must be at least 1 or None, got {settings.page_size}")
    if settings.connect_timeout_s <= 0 or settings.read_timeout_s <= 0:
        raise ValueError("connect_timeout_s and read_timeout_s must be positive")


def make_client(
    region: str | None = None,
    endpoint_url: str | None = None,
    settings: DynamoSettings | None = None,
) -> Any:
    """A low-level DynamoDB client from boto3's standard configuration.

    ``region`` and ``endpoint_url`` override boto3's own lookup (``AWS_REGION``,
    ``AWS_ENDPOINT_URL_DYNAMODB``, ``AWS_ENDPOINT_URL``, profiles) only when given.

    Raises:
        StateStoreError: no region is configured anywhere.
    """
    import boto3
    from botocore.config import Config
    from botocore.exceptions import NoRegionError

    settings = settings or DynamoSettings()
    config = Config(
        retries={"mode": settings.retry_mode, "max_attempts": settings.max_attempts},
        connect_timeout=settings.connect_timeout_s,
        read_timeout=settings.read_timeout_s,
    )
    # A session per client: boto3's default session is not thread-safe; clients are.
    session = boto3.session.Session()
    try:
        return session.client(
            "dynamodb", region_name=region, endpoint_url=endpoint_url, config=config
        )
    except NoRegionError:
        raise StateStoreError(
            "no AWS region for the DynamoDB state table: set state.region in the config, "
            "or AWS_REGION / AWS_DEFAULT_REGION"
        ) from None


def missing_table_message(
    table: str, region: str | None, endpoint: str | None, configfile: str | None = None
) -> str:
    """The one line shown when the table does not exist."""
    return (
        f"DynamoDB table {table!r} not found in region {region} at endpoint "
        f"{display_endpoint(endpoint)}: run `orchestrator init --configfile "
        f"{configfile or '<your config file>'}` to create it"
    )


def table_resource(client: Any, table: str, configfile: str | None = None) -> AwsResource:
    """The state table as setup errors name it (``orchestrator_ext.aws.translated_errors``):
    its name, the client's region and endpoint, and ``configfile`` for ``orchestrator init``.
    """
    region, endpoint = client.meta.region_name, client.meta.endpoint_url
    return AwsResource(
        where=f"DynamoDB table {table!r} (region {region}, endpoint {display_endpoint(endpoint)})",
        error=StateStoreError,
        missing_codes=frozenset({"ResourceNotFoundException"}),
        missing_message=missing_table_message(table, region, endpoint, configfile),
        endpoint_settings="state.endpoint_url, AWS_ENDPOINT_URL_DYNAMODB / AWS_ENDPOINT_URL",
        quote_message=True,
    )
