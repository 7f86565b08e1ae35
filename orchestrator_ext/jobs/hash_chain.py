"""A chain of sha256 rounds per item (a concat job in item mode): pure CPU, no I/O.

The CPU-bound workload of ``bench/cpu.py``, where the same function runs under every tool
compared. Each item's 256-byte payload is derived from its id; every round hashes the
previous digest followed by the payload.

Config::

    job:
      function: orchestrator_ext.jobs.hash_chain:hash_chain_item
      mode: item
      params: {rounds: 200, payload_bytes: 256}
"""

from __future__ import annotations

import hashlib
from typing import Any

from orchestrator_ext.job import JobContext

ROUNDS = 200
PAYLOAD_BYTES = 256


def payload_for(item_id: int, size: int = PAYLOAD_BYTES) -> bytes:
    """``size`` bytes derived from the id (its sha256 digests, repeated as needed)."""
    seed = hashlib.sha256(str(item_id).encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def hash_chain(item_id: int, rounds: int = ROUNDS, size: int = PAYLOAD_BYTES) -> str:
    """Hex digest after ``rounds`` rounds of ``sha256(previous digest + payload)``."""
    payload = payload_for(item_id, size)
    digest = b""
    sha256 = hashlib.sha256
    for _ in range(rounds):
        digest = sha256(digest + payload).digest()
    return digest.hex()


def hash_chain_item(item: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """``{id, digest}`` of one item."""
    params = ctx.params
    item_id = item[params.get("id_column", "id")]
    rounds = params.get("rounds", ROUNDS)
    return {
        "id": item_id,
        "digest": hash_chain(item_id, rounds, params.get("payload_bytes", PAYLOAD_BYTES)),
    }
