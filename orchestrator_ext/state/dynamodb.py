"""DynamoDB state backend: the store (``DynamoStateStore``) and every request it sends.

The table's layout (task rows, the audit log, the coordinator lease, run facts, all in one
item collection per run) is described in ``state.dynamodb_items``; the request arguments
are built in ``state.dynamodb_requests``, the client and its settings in
``state.dynamodb_client``, the table itself is created in ``state.dynamodb_table``. Every
call a run makes to DynamoDB is sent from this module, so the IAM policy of
``orchestrator iam-policy`` is checked against it (``tests/test_iam.py``).

Writes: every ``_update`` is a TransactWriteItems holding an Update conditional on
``version`` (which it bumps) and, if there is one, the transition's Put, so the row and its
log entry land together or not at all. A transaction is used even for a lone update because
botocore fills in its ``ClientRequestToken`` once per call: a retry after a lost response is
then a no-op on the server instead of a spurious version conflict for the writer that did
commit. ``ensure_tasks`` reads the run's existing task ids (one Query) and writes only the
missing rows with BatchWriteItem (at most 25 puts per request, the AWS limit) -- it runs in
the partition step, before any batch job of the run can start, so no attempt races it. The
coordinator lease is taken with a put conditional on there being no holder, taken over with
a put conditional on the old holder's ``token``, released by an update that removes the
holder (the row stays). A fact is claimed with a put conditional on the row holding no
``value`` and forgotten by an update that removes ``value``, so the policy needs no
DeleteItem.

Reads are strongly consistent: the fence reads a row and writes conditionally on what it
read, and an eventually consistent read would turn into spurious conflicts.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from orchestrator_ext.aws import translated_errors
from orchestrator_ext.errors import StateConflict, StateStoreError
from orchestrator_ext.state import StateStore
from orchestrator_ext.state.dynamodb_client import DynamoSettings, make_client, table_resource
from orchestrator_ext.state.dynamodb_items import (
    COORDINATOR_KEY,
    PARTITION_KEY,
    SORT_KEY,
    Item,
    build_new_task_items,
    build_task_item,
    build_transition_item,
    fact_sort_key,
    from_item,
    item_key,
    merge_transitions,
    parse_coordinator_item,
    parse_task_item,
    parse_transition_item,
    validate_task_id,
)
from orchestrator_ext.state.dynamodb_requests import (
    build_batch_write_requests,
    build_coordinator_clear,
    build_coordinator_put,
    build_fact_claim,
    build_fact_forget,
    build_tasks_query,
    build_transitions_query,
    build_update,
    cancellation_codes,
)
from orchestrator_ext.state.dynamodb_table import check_table_description, create_table
from orchestrator_ext.state.records import RowUpdate, TaskRecord, Transition, now_iso

if TYPE_CHECKING:
    from orchestrator_ext.config import RunConfig

# Imported from here by modules and tests of other parts (cli, coordinator, bench, tests).
__all__ = [
    "COORDINATOR_KEY",
    "DynamoSettings",
    "DynamoStateStore",
    "build_insert_transaction",
    "build_update_transaction",
    "create_table",
    "make_client",
    "send_batch_write",
]

logger = logging.getLogger(__name__)


def _put_new(table: str, item: Item) -> dict[str, Any]:
    return {
        "Put": {
            "TableName": table,
            "Item": item,
            "ConditionExpression": "attribute_not_exists(#pk)",
            "ExpressionAttributeNames": {"#pk": PARTITION_KEY},
        }
    }


def build_update_transaction(table: str, run_id: str, update: RowUpdate) -> dict[str, Any]:
    """TransactWriteItems arguments: the conditional update, then the transition's put."""
    items: list[dict[str, Any]] = [
        {
            "Update": build_update(
                table, run_id, update.task_id, update.expected_version, update.changes
            )
        }
    ]
    if update.transition is not None:
        seq = update.expected_version + 1
        items.append(_put_new(table, build_transition_item(run_id, update.transition, seq)))
    return {"TransactItems": items}


def build_insert_transaction(
    table: str, run_id: str, record: TaskRecord, transition: Transition
) -> dict[str, Any]:
    """TransactWriteItems arguments creating a row (if absent) with its first transition."""
    return {
        "TransactItems": [
            _put_new(table, build_task_item(run_id, record)),
            _put_new(table, build_transition_item(run_id, transition, record.version)),
        ]
    }


class _Unprocessed(Exception):
    """BatchWriteItem left items unprocessed (throttling); retried with backoff."""

    def __init__(self, request: dict[str, Any]) -> None:
        super().__init__("unprocessed items left")
        self.request = request


def send_batch_write(client: Any, request: dict[str, Any], tries: int) -> None:
    """Send one BatchWriteItem request, resending its UnprocessedItems with exponential
    backoff and full jitter until none are left.

    Raises:
        StateStoreError: items were still unprocessed after ``tries`` tries.
    """
    pending = request
    retrying = Retrying(
        stop=stop_after_attempt(tries),
        wait=wait_random_exponential(multiplier=0.05, max=5),
        retry=retry_if_exception_type(_Unprocessed),
        reraise=True,
    )
    try:
        for attempt in retrying:
            with attempt:
                unprocessed = client.batch_write_item(**pending).get("UnprocessedItems") or {}
                if any(unprocessed.values()):
                    pending = {"RequestItems": unprocessed}
                    raise _Unprocessed(pending)
    except _Unprocessed as exc:
        left = sum(len(v) for v in exc.request["RequestItems"].values())
        raise StateStoreError(
            f"DynamoDB left {left} items unprocessed after {tries} tries (throttled): "
            "retry later, or check the table's capacity"
        ) from None


class DynamoStateStore(StateStore):
    """State of one run in a DynamoDB table (layout: ``state.dynamodb_items``)."""

    def __init__(
        self,
        client: Any,
        table: str,
        run_id: str,
        settings: DynamoSettings | None = None,
        configfile: str | None = None,
    ) -> None:
        self._client = client
        self.table = table
        self.run_id = run_id
        self.settings = settings or DynamoSettings()
        self._resource = table_resource(client, table, configfile)

    @classmethod
    def from_config(
        cls,
        config: RunConfig,
        settings: DynamoSettings | None = None,
        configfile: str | None = None,
    ) -> DynamoStateStore:
        """Open the run's store on ``state.table``; no request is sent until first use.

        ``state.region`` and ``state.endpoint_url`` override boto3's standard lookup when
        set. ``configfile`` only appears in error messages (``orchestrator init --configfile``).

        Raises:
            StateStoreError: the config names no table, or no region is configured.
        """
        if not config.state.table:
            raise StateStoreError("state.backend is 'dynamodb' but state.table is not set")
        client = make_client(config.state.region, config.state.endpoint_url, settings)
        return cls(client, config.state.table, config.run_id, settings, configfile)

    def check(self) -> None:
        """Check the table exists and has the expected layout (``check_table_description``).

        Raises:
            StateStoreError: one line naming the table and what to do.
        """
        with translated_errors(self._resource):
            description = self._client.describe_table(TableName=self.table)["Table"]
        check_table_description(description, self._resource.where)

    def close(self) -> None:
        self._client.close()

    def _query(self, request: dict[str, Any]) -> Iterator[dict[str, Any]]:
        with translated_errors(self._resource):
            for page in self._client.get_paginator("query").paginate(**request):
                yield from page.get("Items", [])

    def _transact(self, request: dict[str, Any]) -> None:
        with translated_errors(self._resource):
            self._client.transact_write_items(**request)

    def ensure_tasks(self, task_ids: list[str], items: dict[str, int] | None = None) -> None:
        for task_id in task_ids:
            validate_task_id(task_id)
        existing = {
            from_item(i)[SORT_KEY]
            for i in self._query(
                build_tasks_query(self.table, self.run_id, True, self.settings.page_size)
            )
        }
        new_items = build_new_task_items(self.run_id, task_ids, existing, items or {}, now_iso())
        requests = build_batch_write_requests(self.table, new_items)
        with translated_errors(self._resource):
            for request in requests:
                send_batch_write(self._client, request, self.settings.batch_write_tries)
        logger.debug("ensure_tasks: %d new of %d", len(new_items) // 2, len(task_ids))

    def _insert_if_absent(self, record: TaskRecord, transition: Transition) -> bool:
        from botocore.exceptions import ClientError

        try:
            self._transact(build_insert_transaction(self.table, self.run_id, record, transition))
        except ClientError as exc:
            codes = cancellation_codes(exc.response)
            # the row exists, or another writer is creating it right now: not inserted here
            if codes and (codes[0] == "ConditionalCheckFailed" or "TransactionConflict" in codes):
                return False
            raise
        return True

    def get(self, task_id: str) -> TaskRecord | None:
        with translated_errors(self._resource):
            response = self._client.get_item(
                TableName=self.table, Key=item_key(self.run_id, task_id), ConsistentRead=True
            )
        item = response.get("Item")
        return parse_task_item(item) if item else None

    def all_tasks(self) -> list[TaskRecord]:
        return [
            parse_task_item(i)
            for i in self._query(
                build_tasks_query(self.table, self.run_id, False, self.settings.page_size)
            )
        ]

    def transitions(self, task_id: str | None = None) -> list[Transition]:
        entries = [
            parse_transition_item(i)
            for i in self._query(
                build_transitions_query(self.table, self.run_id, task_id, self.settings.page_size)
            )
        ]
        return entries if task_id is not None else merge_transitions(entries)

    def _write(self, update: RowUpdate) -> None:
        from botocore.exceptions import ClientError

        task_id, expected_version = update.task_id, update.expected_version
        try:
            self._transact(build_update_transaction(self.table, self.run_id, update))
        except ClientError as exc:
            codes = cancellation_codes(exc.response)
            if codes and codes[0] == "ConditionalCheckFailed":
                raise StateConflict(
                    f"task {task_id}: state changed underneath this writer (expected version "
                    f"{expected_version}); re-read before writing"
                ) from None
            if "TransactionConflict" in codes:
                raise StateConflict(
                    f"task {task_id}: another write to it was in flight (expected version "
                    f"{expected_version}); re-read before writing"
                ) from None
            if len(codes) > 1 and codes[1] == "ConditionalCheckFailed":
                raise StateConflict(
                    f"task {task_id}: a transition for version {expected_version + 1} is "
                    "already recorded; re-read before writing"
                ) from None
            raise

    # -- run facts (StateStore.claim_fact) ----------------------------------------------

    def claim_fact(self, name: str, value: str) -> str:
        request = build_fact_claim(self.table, self.run_id, name, value, now_iso())
        if self._conditional("put_item", request) is not None:
            return value
        recorded = self.get_fact(name)
        if recorded is None:  # forgotten between the refused put and the read: claim again
            return self.claim_fact(name, value)
        return recorded

    def get_fact(self, name: str) -> str | None:
        with translated_errors(self._resource):
            response = self._client.get_item(
                TableName=self.table,
                Key=item_key(self.run_id, fact_sort_key(name)),
                ConsistentRead=True,
            )
        value = from_item(response.get("Item", {})).get("value")
        return str(value) if value is not None else None

    def forget_fact(self, name: str) -> None:
        # An UpdateItem without a condition (granted: orchestrator_ext.iam).
        self._conditional(
            "update_item", build_fact_forget(self.table, self.run_id, name, now_iso())
        )

    # -- the coordinator lease (orchestrator_ext.coordinator) ---------------------------

    def read_coordinator(self) -> dict[str, Any] | None:
        """The run's coordinator lease, or None if it has no holder."""
        with translated_errors(self._resource):
            response = self._client.get_item(
                TableName=self.table,
                Key=item_key(self.run_id, COORDINATOR_KEY),
                ConsistentRead=True,
            )
        item = response.get("Item")
        return parse_coordinator_item(item) if item else None

    def put_coordinator(self, lease: dict[str, Any], expected_token: str | None) -> bool:
        """Write the lease if the run has no holder (``expected_token`` None) or the holder
        still has ``expected_token``; False if not."""
        request = build_coordinator_put(self.table, self.run_id, lease, expected_token)
        return self._conditional("put_item", request) is not None

    def clear_coordinator(self, holder: tuple[str, int] | None) -> dict[str, Any] | None:
        """Remove the lease's holder (only ``holder`` = (host, pid), if given); return the
        lease removed, or None if there was none (or another holder has it)."""
        request = build_coordinator_clear(self.table, self.run_id, holder, now_iso())
        response = self._conditional("update_item", request)
        if response is None:
            return None
        return parse_coordinator_item(response.get("Attributes", {}))

    def _conditional(self, operation: str, request: dict[str, Any]) -> dict[str, Any] | None:
        """Send a single conditional write; None if its condition failed."""
        from botocore.exceptions import ClientError

        try:
            with translated_errors(self._resource):
                response: dict[str, Any] = getattr(self._client, operation)(**request)
                return response
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return None
            raise
