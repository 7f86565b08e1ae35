"""Items of the DynamoDB state table: its key layout, and records to items and back.

One table is shared by runs, one item collection per run:

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
  ``tasks()``, ``transitions()`` and the status counts never see it.
- **Run facts** (``StateStore.claim_fact``): sort key ``~fact#<name>`` (e.g.
  ``~fact#output_schema``), after ``~`` and outside ``~transition#``, so kept out of the
  task and log queries like the lease.

The wire format is boto3's own (``TypeSerializer`` / ``TypeDeserializer``). Numbers come
back as ``Decimal``; ``from_item`` turns the integral ones into ``int`` exactly (every number
this package stores is an integer) and leaves any other as the exact ``Decimal``.
"""

from __future__ import annotations

import decimal
import heapq
import itertools
import numbers
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

from orchestrator_ext import task
from orchestrator_ext.state.records import TaskRecord, TaskStatus, Transition

PARTITION_KEY = "run_id"
SORT_KEY = "task_id"
#: Sort-key prefix of the audit log; ``~`` sorts after every allowed first character of a task.
TRANSITION_PREFIX = "~transition#"
#: Upper bound (exclusive) of the task rows' sort keys.
TASKS_END = "~"
#: Sort key of the run's coordinator lease: after ``~``, outside the task rows and the log.
COORDINATOR_KEY = "~coordinator"
#: Attributes of the coordinator row that make up the lease.
LEASE_FIELDS = ("host", "pid", "workdir", "started_at", "token")
#: Sort-key prefix of the run's facts: after ``~``, outside the task rows and the log.
FACT_PREFIX = "~fact#"
_TRANSITION_FIELDS = ("from_status", "to_status", "attempt", "at", "host", "slurm_job_id", "detail")

Item = dict[str, dict[str, Any]]

_SERIALIZER = TypeSerializer()
_DESERIALIZER = TypeDeserializer()


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


def to_attribute(value: str | int) -> dict[str, Any]:
    """One value in DynamoDB's typed form (integers, numpy's included, as N; strings as S).

    Raises:
        TypeError: the value is neither a string nor an integer (bools are refused too).
        ValueError: an integer of more digits than a DynamoDB number holds (38).
    """
    if isinstance(value, bool) or not isinstance(value, str | numbers.Integral):
        raise TypeError(f"cannot store {type(value).__name__} {value!r}: only str and int")
    try:
        # int(): numpy's integers are Integral, but Decimal refuses them
        typed: dict[str, Any] = _SERIALIZER.serialize(
            value if isinstance(value, str) else int(value)
        )
    except decimal.DecimalException:  # rounded or overflowed: it would not be exact
        raise ValueError(
            f"cannot store {value}: a DynamoDB number holds at most 38 digits"
        ) from None
    return typed


def to_item(values: dict[str, Any]) -> Item:
    """A DynamoDB item from a plain dict; None values are left out."""
    return {k: to_attribute(v) for k, v in values.items() if v is not None}


def _plain(value: Any) -> Any:
    if isinstance(value, decimal.Decimal) and value == value.to_integral_value():
        return int(value)  # exact: a Decimal holds every digit it was sent
    return value


def from_item(item: Item) -> dict[str, Any]:
    """A plain dict from a DynamoDB item (integral N as int, S as str, NULL as None)."""
    return {k: _plain(_DESERIALIZER.deserialize(typed)) for k, typed in item.items()}


def item_key(run_id: str, sort_key: str) -> Item:
    """The primary key of the run's item ``sort_key``."""
    return {PARTITION_KEY: to_attribute(run_id), SORT_KEY: to_attribute(sort_key)}


def transition_sort_key(task_id: str, seq: int) -> str:
    """Sort key of the transition that the write producing row version ``seq`` appended."""
    return f"{TRANSITION_PREFIX}{task_id}#{seq:012d}"


def fact_sort_key(name: str) -> str:
    """Sort key of the run's fact ``name``.

    Raises:
        ValueError: the name is empty.
    """
    if not name:
        raise ValueError("a fact needs a name")
    return f"{FACT_PREFIX}{name}"


def build_task_item(run_id: str, record: TaskRecord) -> Item:
    """The item of a task row."""
    validate_task_id(record.task_id)
    values = record.to_dict()
    values[PARTITION_KEY] = run_id
    return to_item(values)


def build_transition_item(run_id: str, transition: Transition, seq: int) -> Item:
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


def build_new_task_items(
    run_id: str,
    task_ids: list[str],
    existing: set[str],
    items: dict[str, int],
    at: str,
) -> list[Item]:
    """Items for the tasks not in ``existing``: each PENDING row and its creation transition.

    Duplicates in ``task_ids`` are written once (BatchWriteItem refuses duplicate keys).
    """
    out: list[Item] = []
    for task_id in dict.fromkeys(task_ids):
        if task_id in existing:
            continue
        record = TaskRecord(
            task_id=task_id,
            status=TaskStatus.PENDING,
            kind=task.kind(task_id),
            items=items.get(task_id),
            updated_at=at,
        )
        out.append(build_task_item(run_id, record))
        out.append(build_transition_item(run_id, Transition(task_id, None, "PENDING", 0, at), 0))
    return out


def parse_task_item(item: Item) -> TaskRecord:
    """A task row as a ``TaskRecord``."""
    return TaskRecord.from_record(from_item(item))


def parse_transition_item(item: Item) -> Transition:
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


def parse_coordinator_item(item: Item) -> dict[str, Any] | None:
    """The lease a coordinator row holds, or None if it has no holder."""
    values = from_item(item)
    if "token" not in values:
        return None
    lease = {k: values[k] for k in LEASE_FIELDS if k in values}
    return {"run_id": values[PARTITION_KEY], **lease}


def merge_transitions(entries: list[Transition]) -> list[Transition]:
    """Interleave per-task logs (each already in version order) by time.

    Each task's own order is kept even if hosts' clocks disagree; across tasks, entries are
    ordered by their timestamps (ties: task id order).
    """
    by_task = [list(group) for _, group in itertools.groupby(entries, key=lambda t: t.task_id)]
    return list(heapq.merge(*by_task, key=lambda t: t.at))
