"""Arguments of the DynamoDB requests the state store sends, built by pure functions (named
``build_*``), so they are unit-tested without a server. Sending them is ``state.dynamodb``'s
job; the items they carry are ``state.dynamodb_items``'."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from orchestrator_ext.state.dynamodb_items import (
    COORDINATOR_KEY,
    LEASE_FIELDS,
    PARTITION_KEY,
    SORT_KEY,
    TASKS_END,
    TRANSITION_PREFIX,
    Item,
    fact_sort_key,
    item_key,
    to_attribute,
    to_item,
)

#: AWS rejects a BatchWriteItem with more than 25 requests (our local server does not).
BATCH_WRITE_LIMIT = 25


def build_update(
    table: str, run_id: str, task_id: str, expected_version: int, changes: dict[str, Any]
) -> dict[str, Any]:
    """The ``Update`` of a transaction: SET the non-None changes, REMOVE the None ones, bump
    ``version``, all conditional on the row existing with ``expected_version``.

    Raises:
        ValueError: ``changes`` touches the key or the version.
    """
    forbidden = {PARTITION_KEY, SORT_KEY, "version"} & set(changes)
    if forbidden:
        raise ValueError(f"changes may not set {sorted(forbidden)}: they are managed here")
    names: dict[str, str] = {"#pk": PARTITION_KEY, "#version": "version"}
    values: Item = {
        ":expected": to_attribute(expected_version),
        ":next": to_attribute(expected_version + 1),
    }
    sets, removes = ["#version = :next"], []
    for i, (name, value) in enumerate(changes.items()):
        names[f"#f{i}"] = name
        if value is None:
            removes.append(f"#f{i}")
        else:
            values[f":v{i}"] = to_attribute(value)
            sets.append(f"#f{i} = :v{i}")
    expression = "SET " + ", ".join(sets)
    if removes:
        expression += " REMOVE " + ", ".join(removes)
    return {
        "TableName": table,
        "Key": item_key(run_id, task_id),
        "UpdateExpression": expression,
        "ConditionExpression": "attribute_exists(#pk) AND #version = :expected",
        "ExpressionAttributeNames": names,
        "ExpressionAttributeValues": values,
    }


def build_batch_write_requests(
    table: str, items: Iterable[Item], chunk_size: int = BATCH_WRITE_LIMIT
) -> list[dict[str, Any]]:
    """BatchWriteItem arguments putting ``items``, at most ``chunk_size`` puts per request.

    Raises:
        ValueError: ``chunk_size`` is outside 1..25 (AWS rejects larger requests).
    """
    if not 1 <= chunk_size <= BATCH_WRITE_LIMIT:
        raise ValueError(f"chunk_size must be between 1 and {BATCH_WRITE_LIMIT}, got {chunk_size}")
    puts = [{"PutRequest": {"Item": item}} for item in items]
    return [
        {"RequestItems": {table: puts[i : i + chunk_size]}} for i in range(0, len(puts), chunk_size)
    ]


def _run_query(
    table: str, run_id: str, condition: str, bound: str, page_size: int | None
) -> dict[str, Any]:
    """Query arguments for the run's items whose sort key meets ``condition`` on ``:bound``."""
    query: dict[str, Any] = {
        "TableName": table,
        "KeyConditionExpression": f"#pk = :run AND {condition}",
        "ExpressionAttributeNames": {"#pk": PARTITION_KEY, "#sk": SORT_KEY},
        "ExpressionAttributeValues": {":run": to_attribute(run_id), ":bound": to_attribute(bound)},
        "ConsistentRead": True,
    }
    if page_size is not None:
        query["Limit"] = page_size
    return query


def build_tasks_query(
    table: str, run_id: str, keys_only: bool = False, page_size: int | None = None
) -> dict[str, Any]:
    """Query arguments for the run's task rows (the audit log is outside the key range)."""
    query = _run_query(table, run_id, "#sk < :bound", TASKS_END, page_size)
    if keys_only:
        query["ProjectionExpression"] = "#sk"
    return query


def build_transitions_query(
    table: str, run_id: str, task_id: str | None, page_size: int | None = None
) -> dict[str, Any]:
    """Query arguments for the audit log of the run, or of one task."""
    prefix = TRANSITION_PREFIX if task_id is None else f"{TRANSITION_PREFIX}{task_id}#"
    return _run_query(table, run_id, "begins_with(#sk, :bound)", prefix, page_size)


def build_coordinator_put(
    table: str, run_id: str, lease: dict[str, Any], expected_token: str | None
) -> dict[str, Any]:
    """PutItem arguments writing the coordinator lease: if the run has no holder
    (``expected_token`` None), or else only if the holder is still the one with that token."""
    values = {k: lease.get(k) for k in LEASE_FIELDS}
    values.update({PARTITION_KEY: run_id, SORT_KEY: COORDINATOR_KEY, "item_type": "coordinator"})
    request: dict[str, Any] = {
        "TableName": table,
        "Item": to_item(values),
        "ExpressionAttributeNames": {"#token": "token"},
    }
    if expected_token is None:
        request["ConditionExpression"] = "attribute_not_exists(#token)"
    else:
        request["ConditionExpression"] = "#token = :old"
        request["ExpressionAttributeValues"] = {":old": to_attribute(expected_token)}
    return request


def build_coordinator_clear(
    table: str, run_id: str, holder: tuple[str, int] | None, at: str
) -> dict[str, Any]:
    """UpdateItem arguments removing the lease's holder (the row stays, with
    ``released_at``), only if there is one and, given ``holder`` = (host, pid), it is that."""
    names = {f"#f{i}": name for i, name in enumerate(LEASE_FIELDS)}
    names.update({"#token": "token", "#released": "released_at"})
    values: Item = {":at": to_attribute(at)}
    condition = "attribute_exists(#token)"
    if holder is not None:
        names.update({"#host": "host", "#pid": "pid"})
        values.update({":host": to_attribute(holder[0]), ":pid": to_attribute(holder[1])})
        condition += " AND #host = :host AND #pid = :pid"
    return {
        "TableName": table,
        "Key": item_key(run_id, COORDINATOR_KEY),
        "UpdateExpression": f"REMOVE {', '.join(f'#f{i}' for i in range(len(LEASE_FIELDS)))} "
        "SET #released = :at",
        "ConditionExpression": condition,
        "ExpressionAttributeNames": names,
        "ExpressionAttributeValues": values,
        "ReturnValues": "ALL_OLD",
    }


def build_fact_claim(table: str, run_id: str, name: str, value: str, at: str) -> dict[str, Any]:
    """PutItem arguments recording fact ``name`` = ``value`` only if none is recorded."""
    values = {
        PARTITION_KEY: run_id,
        SORT_KEY: fact_sort_key(name),
        "item_type": "fact",
        "value": value,
        "recorded_at": at,
    }
    return {
        "TableName": table,
        "Item": to_item(values),
        "ConditionExpression": "attribute_not_exists(#value)",
        "ExpressionAttributeNames": {"#value": "value"},
    }


def build_fact_forget(table: str, run_id: str, name: str, at: str) -> dict[str, Any]:
    """UpdateItem arguments removing fact ``name``'s value (the row stays, with
    ``forgotten_at``); unconditional, so forgetting is idempotent."""
    return {
        "TableName": table,
        "Key": item_key(run_id, fact_sort_key(name)),
        "UpdateExpression": "REMOVE #value SET #forgotten = :at",
        "ExpressionAttributeNames": {"#value": "value", "#forgotten": "forgotten_at"},
        "ExpressionAttributeValues": {":at": to_attribute(at)},
    }


def cancellation_codes(response: dict[str, Any]) -> list[str]:
    """The per-item reason codes of a cancelled transaction ("None" for items that were fine)."""
    return [str(r.get("Code", "None")) for r in response.get("CancellationReasons", [])]
