"""The DynamoDB state table itself: creating it (``orchestrator init``, on-demand capacity),
waiting until it is active, and checking that an existing one has the expected layout."""

from __future__ import annotations

import logging
from typing import Any

from orchestrator_ext.aws import translated_errors
from orchestrator_ext.errors import StateStoreError
from orchestrator_ext.state.dynamodb_client import table_resource
from orchestrator_ext.state.dynamodb_items import PARTITION_KEY, SORT_KEY

logger = logging.getLogger(__name__)


def build_create_table_request(name: str) -> dict[str, Any]:
    """CreateTable arguments: the layout of ``state.dynamodb_items``, on-demand capacity."""
    return {
        "TableName": name,
        "AttributeDefinitions": [
            {"AttributeName": PARTITION_KEY, "AttributeType": "S"},
            {"AttributeName": SORT_KEY, "AttributeType": "S"},
        ],
        "KeySchema": [
            {"AttributeName": PARTITION_KEY, "KeyType": "HASH"},
            {"AttributeName": SORT_KEY, "KeyType": "RANGE"},
        ],
        "BillingMode": "PAY_PER_REQUEST",
    }


def create_table(client: Any, name: str) -> bool:
    """Create the state table (on-demand) unless it exists; wait until it is active.

    Returns:
        True if this call created the table, False if it already existed.

    Raises:
        StateStoreError: the endpoint is unreachable, credentials are missing or refused.
    """
    from botocore.exceptions import ClientError

    with translated_errors(table_resource(client, name)):
        try:
            client.create_table(**build_create_table_request(name))
            created = True
            logger.info("created DynamoDB table %s", name)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ResourceInUseException":
                raise
            created = False
        client.get_waiter("table_exists").wait(
            TableName=name, WaiterConfig={"Delay": 2, "MaxAttempts": 90}
        )
    check_table(client, name)
    return created


def check_table(client: Any, name: str, configfile: str | None = None) -> None:
    """Check the state table exists, is usable and has the expected keys.

    Raises:
        StateStoreError: one line naming the table, region and endpoint, and what to do
            (for a missing table: run ``orchestrator init --configfile F``).
    """
    resource = table_resource(client, name, configfile)
    with translated_errors(resource):
        description = client.describe_table(TableName=name)["Table"]
    check_table_description(description, resource.where)


def check_table_description(table: dict[str, Any], where: str) -> None:
    """Check a DescribeTable answer: the expected keys, and a usable status.

    Args:
        table: the answer's ``Table``.
        where: the table as messages name it.

    Raises:
        StateStoreError: the key schema is another, or the table is not (yet) usable.
    """
    keys = {(k["AttributeName"], k["KeyType"]) for k in table.get("KeySchema", [])}
    types = {a["AttributeName"]: a["AttributeType"] for a in table.get("AttributeDefinitions", [])}
    expected = {(PARTITION_KEY, "HASH"), (SORT_KEY, "RANGE")}
    if keys != expected or types.get(PARTITION_KEY) != "S" or types.get(SORT_KEY) != "S":
        raise StateStoreError(
            f"{where} has key schema {sorted(keys)}, expected partition key "
            f"{PARTITION_KEY} (S) and sort key {SORT_KEY} (S): use another table name, or "
            "let `orchestrator init` create one"
        )
    status = table.get("TableStatus", "ACTIVE")
    if status not in ("ACTIVE", "UPDATING"):
        raise StateStoreError(f"{where} is {status}, not ACTIVE: wait and retry")
