"""What the state store holds: a task's row (``TaskRecord``), an entry of the audit log
(``Transition``), one attempt's hold on a task (``Attempt``) and one conditional write
(``RowUpdate``). Plain data, shared by the store's interface and its backends."""

from __future__ import annotations

import enum
import socket
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any


class TaskStatus(enum.StrEnum):
    """Life cycle of a task. FAILED may be retried; DEAD will not be. SUPERSEDED: a later
    plan (a re-partition) no longer names the task; its row and history are kept, but
    ``StateStore.tasks`` leaves it out."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    DEAD = "DEAD"
    SUPERSEDED = "SUPERSEDED"


@dataclass(frozen=True)
class Attempt:
    """One attempt's hold on a task: needed to commit or fail it."""

    task_id: str
    attempt: int


#: Fields of ``TaskRecord`` holding integers (a backend may return them as other numbers).
_INTEGER_FIELDS = ("attempt", "version", "items", "items_done", "items_dead")


@dataclass
class TaskRecord:
    """One task's current state, as stored."""

    task_id: str
    status: TaskStatus
    attempt: int = 0
    version: int = 0
    kind: str = ""
    host: str | None = None
    slurm_job_id: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    updated_at: str | None = None
    items: int | None = None
    items_done: int | None = None
    items_dead: int | None = None
    output_sha256: str | None = None
    error_category: str | None = None
    error_type: str | None = None
    error_message: str | None = None

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> TaskRecord:
        """Build from a backend's row, ignoring unknown keys and coercing the status."""
        known = {k: record[k] for k in cls.__dataclass_fields__ if k in record}
        known["status"] = TaskStatus(known["status"])
        for key in _INTEGER_FIELDS:
            if known.get(key) is not None:
                known[key] = int(known[key])
        return cls(**known)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (status as its string) for JSON output."""
        data = asdict(self)
        data["status"] = str(self.status)
        return data


@dataclass
class Transition:
    """One entry of the append-only audit log."""

    task_id: str
    from_status: str | None
    to_status: str
    attempt: int
    at: str
    host: str | None = None
    slurm_job_id: str | None = None
    detail: str | None = None


@dataclass(frozen=True)
class RowUpdate:
    """One conditional write of a task row: set ``changes`` (None removes a value) if the
    row still has ``expected_version``, bump the version and append ``transition`` (if any),
    all at once."""

    task_id: str
    expected_version: int
    changes: dict[str, Any]
    transition: Transition | None = None


def now_iso() -> str:
    """Current UTC time, ISO 8601 with microseconds."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


def current_host() -> str:
    """Short host name of this process's machine."""
    return socket.gethostname()
