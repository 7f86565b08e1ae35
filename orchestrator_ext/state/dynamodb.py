"""DynamoDB state backend: one table shared by runs, one item collection per run.

Table layout (on-demand capacity, created by ``orchestrator init``):

- partition key ``run_id`` (S), sort key ``task_id`` (S). Every item of a run shares the
  run's partition key, so an IAM condition on ``dynamodb:LeadingKeys`` confines a principal
  to one run.
- **Task rows**: sort key = the task id (``partition``, ``batch-00042``,
  ``merge-L1-part-00003``, ``final``, ``manifest``), with the attributes of ``TaskRecord``.
  Integers are stored as N, strings as S; an attribute whose value is None is absent (an
  update REMOVEs it).
- **Transitions** (the append-only audit log): sort key
  ``~transition#<task_id>#<seq:012d>``, where ``seq`` is the row version the transition's
  write produced (0 for the PENDING row's creation). ``~`` sorts after every character a task
  id may start with, so ``tasks()`` is one Query ``task_id < "~"`` and never reads the log.
  Keying by version instead of by time or a random id means: a task's log is ordered exactly
  (the version fence serialises the writes, clocks of different hosts do not matter), one
  task's log is one Query on a prefix, and a transition can be written only once (its put is
  conditional on ``attribute_not_exists``), so the log cannot be rewritten through this API.
  The task's own id is kept in the attribute ``of_task``.
- **The coordinator lease** (``orchestrator_ext.coordinator``): sort key ``~coordinator``,
  outside both ranges above (it sorts after ``~`` and is not under ``~transition#``), so
  ``tasks()``, ``transitions()`` and the status counts never see it. Taken with a put
  conditional on there being no holder, taken over with a put conditional on the old
  holder's ``token``, released by an update that removes the holder (the row stays).
- **Run facts** (``StateStore.claim_fact``): sort key ``~fact#<name>`` (e.g.
  ``~fact#output_schema``), after ``~`` and outside ``~transition#``, so kept out of the
  task and log queries like the lease. Claimed with a put conditional on the row holding no
  ``value``, forgotten by an update that removes ``value`` (the row stays), so the policy of
  ``orchestrator iam-policy`` needs no DeleteItem.

Writes: every ``_update`` is a TransactWriteItems holding an Update conditional on
``version`` (which it bumps) and, if there is one, the transition's Put, so the row and its
log entry land together or not at all. A transaction is used even for a lone update because
botocore fills in its ``ClientRequestToken`` once per call: a retry after a lost response is
then a no-op on the server instead of a spurious version conflict for the writer that did
commit. ``ensure_tasks`` reads the run's existing task ids (one Query) and writes only the
missing rows with BatchWriteItem (at most 25 puts per request, the AWS limit) -- it runs in
the partition step, before any batch job of the run can start, so no attempt races it.

Reads are strongly consistent: the fence reads a row and writes conditionally on what it
read, and an eventually consistent read would turn into spurious conflicts.

Building requests (pure functions named ``build_*`` / ``parse_*``) is kept apart from
sending them (``DynamoStateStore``, ``create_table``, ``check_table``), so the builders are
unit-tested without a server.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import numbers
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from orchestrator_ext.errors import StateConflict, StateStoreError
from orchestrator_ext.state import (
    StateStore,
    TaskRecord,
    TaskStatus,
    Transition,
    now_iso,
    task_kind,
)

if TYPE_CHECKING:
    from orchestrator_ext.config import RunConfig

logger = logging.getLogger(__name__)

PARTITION_KEY = "run_id"
SORT_KEY = "task_id"
#: Sort-key prefix of the audit log; ``~`` sorts after every allowed first character of a task.
TRANSITION_PREFIX = "~transition#"
#: Upper bound (exclusive) of the task rows' sort keys.
TASKS_END = "~"
#: Sort key of the run's coordinator lease: after ``~``, outside the task rows and the log.
COORDINATOR_KEY = "~coordinator"
_LEASE_FIELDS = ("host", "pid", "workdir", "started_at", "token")
#: Sort-key prefix of the run's facts: after ``~``, outside the task rows and the log.
FACT_PREFIX = "~fact#"
#: AWS rejects a BatchWriteItem with more than 25 requests (our local server does not).
BATCH_WRITE_LIMIT = 25
_TRANSITION_FIELDS = ("from_status", "to_status", "attempt", "at", "host", "slurm_job_id", "detail")
#: Error codes meaning the principal may not use the table: a setup problem, not a race.
_ACCESS_CODES = frozenset(
    {
        "AccessDeniedException",
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "MissingAuthenticationTokenException",
        "ExpiredTokenException",
        "InvalidClientTokenId",
    }
)


@dataclass(frozen=True)
class DynamoSettings:
    """How the DynamoDB client talks to the service."""

    retry_mode: str = field(
        default="standard",
        metadata={
            "help": "botocore retry mode, 'standard' or 'adaptive' (default 'standard'): "
            "retries throttling, 5xx and connection errors with exponential backoff."
        },
    )
    max_attempts: int = field(
        default=8,
        metadata={"help": "Total tries per call, first one included (default 8)."},
    )
    connect_timeout_s: float = field(
        default=5.0, metadata={"help": "Seconds to wait for a connection (default 5)."}
    )
    read_timeout_s: float = field(
        default=20.0, metadata={"help": "Seconds to wait for a response (default 20)."}
    )
    page_size: int | None = field(
        default=None,
        metadata={
            "help": "Items per Query page (default None: DynamoDB's 1 MB pages); "
            "every read of many rows follows the pages to the end."
        },
    )
    batch_write_tries: int = field(
        default=10,
        metadata={
            "help": "Tries of a BatchWriteItem while it returns UnprocessedItems, with "
            "exponential backoff and jitter (default 10); then ensure_tasks fails."
        },
    )

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


# -- pure builders ------------------------------------------------------------------------


def validate_task_id(task_id: str) -> None:
    """Refuse task ids that would collide with the audit log's keys.

    Raises:
        ValueError: the id is empty, starts with ``~`` (or a character sorting after it) or
            contains ``#``.
    """
    if not task_id or task_id[0] >= TASKS_END or "#" in task_id:
        raise ValueError(
            f"task id {task_id!r} is invalid: it must be non-empty, "
            "not start with '~' and not contain '#'"
        )


def to_attribute(value: str | int) -> dict[str, str]:
    """One value in DynamoDB's typed form (integers, numpy's included, as N; strings as S).

    Raises:
        TypeError: the value is neither a string nor an integer (bools are refused too).
    """
    if isinstance(value, str):
        return {"S": value}
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return {"N": str(int(value))}
    raise TypeError(f"cannot store {type(value).__name__} {value!r}: only str and int")


def to_item(values: dict[str, Any]) -> dict[str, dict[str, str]]:
    """A DynamoDB item from a plain dict; None values are left out."""
    return {k: to_attribute(v) for k, v in values.items() if v is not None}


def from_item(item: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A plain dict from a DynamoDB item (N as int, S as str)."""
    out: dict[str, Any] = {}
    for key, typed in item.items():
        ((kind, value),) = typed.items()
        out[key] = int(value) if kind == "N" else value
    return out


def transition_sort_key(task_id: str, seq: int) -> str:
    """Sort key of the transition that the write producing row version ``seq`` appended."""
    return f"{TRANSITION_PREFIX}{task_id}#{seq:012d}"


def build_task_item(run_id: str, record: TaskRecord) -> dict[str, dict[str, str]]:
    """The item of a task row."""
    validate_task_id(record.task_id)
    values = record.to_dict()
    values[PARTITION_KEY] = run_id
    return to_item(values)


def build_transition_item(
    run_id: str, transition: Transition, seq: int
) -> dict[str, dict[str, str]]:
    """The item of one audit-log entry (``seq``: the row version its write produced)."""
    values = {k: getattr(transition, k) for k in _TRANSITION_FIELDS}
    values.update(
        {
            PARTITION_KEY: run_id,
            SORT_KEY: transition_sort_key(transition.task_id, seq),
            "of_task": transition.task_id,
            "seq": seq,
            "item_type": "transition",
        }
    )
    return to_item(values)


def _key(run_id: str, sort_key: str) -> dict[str, dict[str, str]]:
    return {PARTITION_KEY: {"S": run_id}, SORT_KEY: {"S": sort_key}}


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
    values: dict[str, dict[str, str]] = {
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
        "Key": _key(run_id, task_id),
        "UpdateExpression": expression,
        "ConditionExpression": "attribute_exists(#pk) AND #version = :expected",
        "ExpressionAttributeNames": names,
        "ExpressionAttributeValues": values,
    }


def _put_new(table: str, item: dict[str, dict[str, str]]) -> dict[str, Any]:
    return {
        "Put": {
            "TableName": table,
            "Item": item,
            "ConditionExpression": "attribute_not_exists(#pk)",
            "ExpressionAttributeNames": {"#pk": PARTITION_KEY},
        }
    }


def build_update_transaction(
    table: str,
    run_id: str,
    task_id: str,
    expected_version: int,
    changes: dict[str, Any],
    transition: Transition | None,
) -> dict[str, Any]:
    """TransactWriteItems arguments: the conditional update, then the transition's put."""
    items: list[dict[str, Any]] = [
        {"Update": build_update(table, run_id, task_id, expected_version, changes)}
    ]
    if transition is not None:
        items.append(
            _put_new(table, build_transition_item(run_id, transition, expected_version + 1))
        )
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


def build_batch_write_requests(
    table: str, items: Iterable[dict[str, Any]], chunk_size: int = BATCH_WRITE_LIMIT
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


def build_new_task_items(
    run_id: str,
    task_ids: list[str],
    existing: set[str],
    items: dict[str, int],
    at: str,
) -> list[dict[str, Any]]:
    """Items for the tasks not in ``existing``: each PENDING row and its creation transition.

    Duplicates in ``task_ids`` are written once (BatchWriteItem refuses duplicate keys).
    """
    out: list[dict[str, Any]] = []
    for task_id in dict.fromkeys(task_ids):
        if task_id in existing:
            continue
        record = TaskRecord(
            task_id=task_id,
            status=TaskStatus.PENDING,
            kind=task_kind(task_id),
            items=items.get(task_id),
            updated_at=at,
        )
        out.append(build_task_item(run_id, record))
        out.append(build_transition_item(run_id, Transition(task_id, None, "PENDING", 0, at), 0))
    return out


def build_tasks_query(
    table: str, run_id: str, keys_only: bool = False, page_size: int | None = None
) -> dict[str, Any]:
    """Query arguments for the run's task rows (the audit log is outside the key range)."""
    query: dict[str, Any] = {
        "TableName": table,
        "KeyConditionExpression": "#pk = :run AND #sk < :end",
        "ExpressionAttributeNames": {"#pk": PARTITION_KEY, "#sk": SORT_KEY},
        "ExpressionAttributeValues": {":run": {"S": run_id}, ":end": {"S": TASKS_END}},
        "ConsistentRead": True,
    }
    if keys_only:
        query["ProjectionExpression"] = "#sk"
    if page_size is not None:
        query["Limit"] = page_size
    return query


def build_transitions_query(
    table: str, run_id: str, task_id: str | None, page_size: int | None = None
) -> dict[str, Any]:
    """Query arguments for the audit log of the run, or of one task."""
    prefix = TRANSITION_PREFIX if task_id is None else f"{TRANSITION_PREFIX}{task_id}#"
    query: dict[str, Any] = {
        "TableName": table,
        "KeyConditionExpression": "#pk = :run AND begins_with(#sk, :prefix)",
        "ExpressionAttributeNames": {"#pk": PARTITION_KEY, "#sk": SORT_KEY},
        "ExpressionAttributeValues": {":run": {"S": run_id}, ":prefix": {"S": prefix}},
        "ConsistentRead": True,
    }
    if page_size is not None:
        query["Limit"] = page_size
    return query


def build_coordinator_put(
    table: str, run_id: str, lease: dict[str, Any], expected_token: str | None
) -> dict[str, Any]:
    """PutItem arguments writing the coordinator lease: if the run has no holder
    (``expected_token`` None), or else only if the holder is still the one with that token."""
    values = {k: lease.get(k) for k in _LEASE_FIELDS}
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
    names = {f"#f{i}": name for i, name in enumerate(_LEASE_FIELDS)}
    names.update({"#token": "token", "#released": "released_at"})
    values: dict[str, dict[str, str]] = {":at": to_attribute(at)}
    condition = "attribute_exists(#token)"
    if holder is not None:
        names.update({"#host": "host", "#pid": "pid"})
        values.update({":host": to_attribute(holder[0]), ":pid": to_attribute(holder[1])})
        condition += " AND #host = :host AND #pid = :pid"
    return {
        "TableName": table,
        "Key": _key(run_id, COORDINATOR_KEY),
        "UpdateExpression": f"REMOVE {', '.join(f'#f{i}' for i in range(len(_LEASE_FIELDS)))} "
        "SET #released = :at",
        "ConditionExpression": condition,
        "ExpressionAttributeNames": names,
        "ExpressionAttributeValues": values,
        "ReturnValues": "ALL_OLD",
    }


def fact_sort_key(name: str) -> str:
    """Sort key of the run's fact ``name``.

    Raises:
        ValueError: the name is empty.
    """
    if not name:
        raise ValueError("a fact needs a name")
    return f"{FACT_PREFIX}{name}"


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
        "Key": _key(run_id, fact_sort_key(name)),
        "UpdateExpression": "REMOVE #value SET #forgotten = :at",
        "ExpressionAttributeNames": {"#value": "value", "#forgotten": "forgotten_at"},
        "ExpressionAttributeValues": {":at": to_attribute(at)},
    }


def parse_coordinator_item(item: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The lease a coordinator row holds, or None if it has no holder."""
    values = from_item(item)
    if "token" not in values:
        return None
    lease = {k: values[k] for k in _LEASE_FIELDS if k in values}
    return {"run_id": values[PARTITION_KEY], **lease}


def build_create_table_request(name: str) -> dict[str, Any]:
    """CreateTable arguments: the layout above, on-demand capacity."""
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


def parse_task_item(item: dict[str, dict[str, Any]]) -> TaskRecord:
    """A task row as a ``TaskRecord``."""
    return TaskRecord.from_record(from_item(item))


def parse_transition_item(item: dict[str, dict[str, Any]]) -> Transition:
    """An audit-log item as a ``Transition``."""
    values = from_item(item)
    return Transition(
        task_id=values["of_task"],
        from_status=values.get("from_status"),
        to_status=values["to_status"],
        attempt=int(values["attempt"]),
        at=values["at"],
        host=values.get("host"),
        slurm_job_id=values.get("slurm_job_id"),
        detail=values.get("detail"),
    )


def merge_transitions(entries: list[Transition]) -> list[Transition]:
    """Interleave per-task logs (each already in version order) by time.

    Each task's own order is kept even if hosts' clocks disagree; across tasks, entries are
    ordered by their timestamps (ties: task id order).
    """
    by_task = [list(group) for _, group in itertools.groupby(entries, key=lambda t: t.task_id)]
    return list(heapq.merge(*by_task, key=lambda t: t.at))


def cancellation_codes(response: dict[str, Any]) -> list[str]:
    """The per-item reason codes of a cancelled transaction ("None" for items that were fine)."""
    return [str(r.get("Code", "None")) for r in response.get("CancellationReasons", [])]


def display_endpoint(url: str | None) -> str:
    """The endpoint for messages, without any user info or query string."""
    if not url:
        return "(default)"
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}" if parts.scheme else url


def missing_table_message(
    table: str, region: str | None, endpoint: str | None, configfile: str | None = None
) -> str:
    """The one line shown when the table does not exist."""
    return (
        f"DynamoDB table {table!r} not found in region {region} at endpoint "
        f"{display_endpoint(endpoint)}: run `orchestrator init --configfile "
        f"{configfile or '<your config file>'}` to create it"
    )


# -- doing --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Target:
    """What error messages name: the table, its region and endpoint, the config file."""

    table: str
    region: str | None
    endpoint: str | None
    configfile: str | None = None

    def where(self) -> str:
        return (
            f"DynamoDB table {self.table!r} (region {self.region}, endpoint "
            f"{display_endpoint(self.endpoint)})"
        )


def _target_of(client: Any, table: str, configfile: str | None) -> _Target:
    return _Target(table, client.meta.region_name, client.meta.endpoint_url, configfile)


@contextlib.contextmanager
def _translated_errors(target: _Target) -> Iterator[None]:
    """Turn setup problems (no table, no endpoint, no credentials, access refused) into one
    line of StateStoreError; conflicts, throttling and the like pass through unchanged."""
    from botocore.exceptions import (
        ClientError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
    )

    try:
        yield
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = error.get("Code", "")
        if code == "ResourceNotFoundException":
            raise StateStoreError(
                missing_table_message(
                    target.table, target.region, target.endpoint, target.configfile
                )
            ) from None
        if code in _ACCESS_CODES:
            message = " ".join(str(error.get("Message", "")).split())
            raise StateStoreError(
                f"{target.where()} refused access ({code}: {message}); check the credentials "
                "and the IAM policy (`orchestrator iam-policy`)"
            ) from None
        raise
    except NoCredentialsError:
        raise StateStoreError(
            f"no AWS credentials found for {target.where()}: set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or run where an instance role applies"
        ) from None
    except (EndpointConnectionError, ConnectTimeoutError) as exc:
        reason = type(exc).__name__
        raise StateStoreError(
            f"cannot reach {target.where()} ({reason}): check state.endpoint_url, "
            "AWS_ENDPOINT_URL_DYNAMODB / AWS_ENDPOINT_URL and the network"
        ) from None


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


def create_table(client: Any, name: str) -> bool:
    """Create the state table (on-demand) unless it exists; wait until it is active.

    Returns:
        True if this call created the table, False if it already existed.

    Raises:
        StateStoreError: the endpoint is unreachable, credentials are missing or refused.
    """
    from botocore.exceptions import ClientError

    target = _target_of(client, name, None)
    with _translated_errors(target):
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
    target = _target_of(client, name, configfile)
    with _translated_errors(target):
        table = client.describe_table(TableName=name)["Table"]
    keys = {(k["AttributeName"], k["KeyType"]) for k in table.get("KeySchema", [])}
    types = {a["AttributeName"]: a["AttributeType"] for a in table.get("AttributeDefinitions", [])}
    expected = {(PARTITION_KEY, "HASH"), (SORT_KEY, "RANGE")}
    if keys != expected or types.get(PARTITION_KEY) != "S" or types.get(SORT_KEY) != "S":
        raise StateStoreError(
            f"{target.where()} has key schema {sorted(keys)}, expected partition key "
            f"{PARTITION_KEY} (S) and sort key {SORT_KEY} (S): use another table name, or "
            "let `orchestrator init` create one"
        )
    status = table.get("TableStatus", "ACTIVE")
    if status not in ("ACTIVE", "UPDATING"):
        raise StateStoreError(f"{target.where()} is {status}, not ACTIVE: wait and retry")


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
    """State of one run in a DynamoDB table (layout in the module docstring)."""

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
        self._target = _target_of(client, table, configfile)

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
        """Check the table exists and has the expected layout (see ``check_table``)."""
        check_table(self._client, self.table, self._target.configfile)

    def close(self) -> None:
        self._client.close()

    def _query(self, request: dict[str, Any]) -> Iterator[dict[str, Any]]:
        with _translated_errors(self._target):
            for page in self._client.get_paginator("query").paginate(**request):
                yield from page.get("Items", [])

    def _transact(self, request: dict[str, Any]) -> None:
        with _translated_errors(self._target):
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
        with _translated_errors(self._target):
            for request in requests:
                send_batch_write(self._client, request, self.settings.batch_write_tries)
        logger.debug("ensure_tasks: %d new of %d", len(new_items) // 2, len(task_ids))

    def _insert_if_absent(self, record: TaskRecord, transition: Transition) -> bool:
        from botocore.exceptions import ClientError

        record = TaskRecord(**{**asdict(record), "updated_at": now_iso()})
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
        with _translated_errors(self._target):
            response = self._client.get_item(
                TableName=self.table, Key=_key(self.run_id, task_id), ConsistentRead=True
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

    def _update(
        self,
        task_id: str,
        expected_version: int,
        changes: dict[str, Any],
        transition: Transition | None,
    ) -> None:
        from botocore.exceptions import ClientError

        changes = {**changes, "updated_at": now_iso()}
        request = build_update_transaction(
            self.table, self.run_id, task_id, expected_version, changes, transition
        )
        try:
            self._transact(request)
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
        with _translated_errors(self._target):
            response = self._client.get_item(
                TableName=self.table,
                Key=_key(self.run_id, fact_sort_key(name)),
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
        with _translated_errors(self._target):
            response = self._client.get_item(
                TableName=self.table, Key=_key(self.run_id, COORDINATOR_KEY), ConsistentRead=True
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
            with _translated_errors(self._target):
                return getattr(self._client, operation)(**request)  # type: ignore[no-any-return]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return None
            raise
