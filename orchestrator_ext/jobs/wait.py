"""An I/O-bound item job: each item waits ``params.wait_s`` seconds, as a call to a web API,
a GET from S3 or a subprocess does, and returns its id and how long it waited.

The I/O-bound workload of ``bench/workers.py`` (``job.pool: thread``: the waits overlap).

Config::

    job:
      function: orchestrator_ext.jobs.wait:wait_item
      mode: item
      workers: 32
      pool: thread
      params: {wait_s: 0.01}
"""

from __future__ import annotations

import time
from typing import Any

from orchestrator_ext.job import JobContext


def wait_item(item: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """``{id, waited_s}`` after waiting ``params.wait_s`` (default 0.01) seconds."""
    wait_s = float(ctx.params.get("wait_s", 0.01))
    time.sleep(wait_s)
    return {"id": item[ctx.params.get("id_column", "id")], "waited_s": wait_s}
