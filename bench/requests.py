"""Requests per batch attempt: every AWS request of a real run in S3 with DynamoDB state.

Runs ``snakemake --profile profiles/local`` on ``workflow/Snakefile`` against the local
S3/DynamoDB server (moto, ``tests/services/setup.sh moto``) with every file in S3
(``output_root: s3://bucket/prefix``) and task state in DynamoDB, configured through the
environment the way a cluster user does (``SNAKEMAKE_STORAGE_S3_*`` for the storage plugin,
``AWS_ENDPOINT_URL_DYNAMODB`` for the state table), and counts every HTTP request that
botocore sends, in every process of the run.

Counting uses botocore's event system only; it changes no client's behaviour. A
``sitecustomize.py`` on ``PYTHONPATH`` (in a temporary folder, for the benchmarked run only)
wraps ``botocore.session.Session.__init__`` so that every session registers two handlers,
which every client made from it copies: ``before-parameter-build`` notes what a call is
about (S3 bucket and key or prefix; DynamoDB task key and the number of items a write
holds) in the call's context, and ``response-received``, emitted once per HTTP attempt,
appends one JSON line to the file named by ``BENCH_REQUESTS_LOG``: pid, thread, the
process's role from ``sys.argv`` (Snakemake's process, ``process-batch --batch N``, a
``script:`` job), service, operation, attempt number (a botocore retry is a second line of
the same call with attempt 2), HTTP status, and the call stack's Snakemake/package frames.

Requests are attributed to a batch when they are made by the ``orchestrator_ext.jobstep
process-batch --batch N`` process of batch N ("in the job"), or by Snakemake's main process
(the S3 storage plugin: existence, mtime and size checks, downloads, uploads) for a key
naming batch N's files (``batches/``, ``results/``, ``dead_letter/batch-0000N...``); the
plugin's requests are also broken down by the Snakemake step that made them (from the call
stack) and by file. Everything else (partition, merges, manifest, report, ``plan.json``)
is reported as run totals.

Usage (from the repository root, moto running on 127.0.0.1:5555)::

    .venv/bin/python bench/requests.py                  # 8 batches of 4,000 items, ~30 s
    .venv/bin/python bench/requests.py --batches 16 --mode concat --no-docs
    .venv/bin/python bench/requests.py --keep /tmp/req  # keep requests.jsonl, bucket, table
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402 - bench/ is not a package

NAME = "requests"
TARGET_DDB_WRITES = 4
TARGET_S3_REQUESTS = 8
DDB_WRITES = frozenset(
    {"PutItem", "UpdateItem", "DeleteItem", "TransactWriteItems", "BatchWriteItem"}
)
LOG_ENV = "BENCH_REQUESTS_LOG"
BATCH_KEY = re.compile(r"(batches|results|dead_letter)/batch-(\d{5})")
BATCH_TASK = re.compile(r"^batch-(\d{5})$")
SNAKEFILE = common.REPO / "workflow" / "Snakefile"
PROFILE = common.REPO / "profiles" / "local"
RUN_ID = "bench"
PREFIX = "run-prefix"

# The counting hook, written as sitecustomize.py into a temporary folder on PYTHONPATH.
# It installs itself when botocore.session is first imported (so processes that never
# touch AWS do not pay for importing botocore) and only observes: handlers return None.
HOOK = r'''
"""bench/requests.py: log every botocore HTTP request of this process (observe only)."""
import os
import sys

_LOG = os.environ.get("BENCH_REQUESTS_LOG")


def _role():
    argv = sys.argv
    if "process-batch" in argv:
        batch = argv[argv.index("--batch") + 1] if "--batch" in argv[:-1] else None
        return "process_batch", batch
    base = os.path.basename(argv[0]) if argv and argv[0] else "python"
    if base in ("snakemake", "__main__.py") or argv[0].endswith("snakemake/__main__.py"):
        return "snakemake", None
    # Snakemake's script: jobs run .snakemake/scripts/tmpXXXXXXXX.<name>.py
    parts = base.split(".")
    if len(parts) >= 3 and parts[0].startswith("tmp") and parts[-1] == "py":
        return "script:" + ".".join(parts[1:-1]), None
    return base, None


def _items_written(operation, params):
    if operation == "TransactWriteItems":
        return len(params.get("TransactItems", []))
    if operation == "BatchWriteItem":
        return sum(len(v) for v in params.get("RequestItems", {}).values())
    if operation in ("PutItem", "UpdateItem", "DeleteItem"):
        return 1
    return 0


def _task_key(operation, params):
    key = params.get("Key") or params.get("Item")
    if key is None and params.get("TransactItems"):
        first = next(iter(params["TransactItems"][0].values()))
        key = first.get("Key") or first.get("Item")
    if key is None and params.get("RequestItems"):
        first = next(iter(params["RequestItems"].values()))[0]
        one = next(iter(first.values()))
        key = one.get("Item") or one.get("Key")
    if isinstance(key, dict):
        value = key.get("task_id")
        if isinstance(value, dict):
            return value.get("S")
    return None


def _params(params, model, context, **kwargs):
    try:
        service = model.service_model.service_name
        info = {"service": service}
        if service == "s3":
            info["bucket"] = params.get("Bucket")
            info["key"] = params.get("Key") or params.get("Prefix")
        elif service == "dynamodb":
            info["task"] = _task_key(model.name, params)
            info["items"] = _items_written(model.name, params)
        context["bench_requests"] = info
    except Exception:  # observing must never break the run
        pass


_FD = {}


_OWN = ("snakemake", "orchestrator_ext", "Snakefile", ".smk")


def _stack():
    """The calling frames of Snakemake, its plugins and the package (innermost last)."""
    frames = []
    frame = sys._getframe(1)
    while frame is not None:
        name = frame.f_code.co_filename
        if any(part in name for part in _OWN) and "sitecustomize" not in name:
            module = frame.f_globals.get("__name__", "?")
            frames.append(f"{module}.{frame.f_code.co_name}:{frame.f_lineno}")
        frame = frame.f_back
    return frames[::-1][-30:]


def _write(line):
    pid = os.getpid()
    fd = _FD.get(pid)
    if fd is None:
        fd = _FD[pid] = os.open(_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, line.encode())


def _response_received(event_name, context, response_dict=None, exception=None, **kwargs):
    try:
        import json
        import threading
        import time

        _, service_id, operation = event_name.split(".", 2)
        info = dict(context.get("bench_requests") or {})
        retries = context.get("retries") or {}
        role, batch = _role()
        info.update(
            t=time.time(),
            pid=os.getpid(),
            role=role,
            batch=batch,
            service=info.get("service") or service_id,
            op=operation,
            attempt=retries.get("attempt", 1),
            call=retries.get("invocation-id"),
            status=(response_dict or {}).get("status_code"),
            error=type(exception).__name__ if exception is not None else None,
            thread=threading.get_ident(),
            stack=_stack(),
        )
        _write(json.dumps(info, default=str) + "\n")
    except Exception:
        pass


def _install(module):
    original = module.Session.__init__

    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.register(
            "before-parameter-build", _params, unique_id="bench-requests-params"
        )
        self.register(
            "response-received", _response_received, unique_id="bench-requests-response"
        )

    module.Session.__init__ = __init__


if _LOG:
    import importlib.abc
    import importlib.util

    class _Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name != "botocore.session":
                return None
            sys.meta_path.remove(self)
            spec = importlib.util.find_spec(name)
            if spec is None or spec.loader is None:
                return spec
            exec_module = spec.loader.exec_module

            def exec_and_install(module):
                exec_module(module)
                _install(module)

            spec.loader.exec_module = exec_and_install
            return spec

    if "botocore.session" in sys.modules:
        _install(sys.modules["botocore.session"])
    else:
        sys.meta_path.insert(0, _Finder())
'''


# --------------------------------------------------------------------------------------------
# the run


def endpoint_up(endpoint: str) -> bool:
    try:
        urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2)
        return True
    except OSError:
        return False


def clients(endpoint: str) -> tuple[Any, Any]:
    import boto3

    session = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
    )
    return (
        session.client("s3", endpoint_url=endpoint),
        session.client("dynamodb", endpoint_url=endpoint),
    )


def job_section(mode: str) -> tuple[dict[str, Any], dict[str, Any]]:
    if mode == "concat":
        job = {
            "function": "orchestrator_ext.jobs.text_metrics:measure",
            "params": {"text_column": "text"},
        }
        return job, {"fan_in": 4, "mode": "concat"}
    job = {
        "function": "orchestrator_ext.jobs.grouped_stats:partial",
        "combine": "orchestrator_ext.jobs.grouped_stats:combine",
        "finalize": "orchestrator_ext.jobs.grouped_stats:finalize",
        "params": {"group_column": "group", "value_column": "value"},
    }
    return job, {"fan_in": 4, "mode": "reduce"}


def prepare(workdir: Path, args: argparse.Namespace, s3: Any) -> tuple[Path, str, str]:
    """Bucket with the input, config, state table (none of this is counted)."""
    from orchestrator_ext.example_data import make_records

    suffix = uuid.uuid4().hex[:10]
    bucket, table = f"bench-requests-{suffix}", f"bench-requests-{suffix}"
    s3.create_bucket(Bucket=bucket)
    out = io.BytesIO()
    make_records(args.items, seed=11).write_parquet(out)
    s3.put_object(Bucket=bucket, Key="input/items.parquet", Body=out.getvalue())
    job, merge = job_section(args.mode)
    config = {
        "run_id": RUN_ID,
        "output_root": f"s3://{bucket}/{PREFIX}",
        "input": {
            "uri": f"s3://{bucket}/input/items.parquet",
            "format": "parquet",
            "id_column": "id",
        },
        "batching": {"max_items": math.ceil(args.items / args.batches)},
        "job": job,
        "merge": merge,
        "state": {
            "backend": "dynamodb",
            "table": table,
            "region": "us-east-1",
            "endpoint_url": args.endpoint,
        },
    }
    configfile = workdir / "config.yaml"
    configfile.write_text(yaml.safe_dump(config, sort_keys=False))
    init = subprocess.run(
        [str(common.BIN / "orchestrator"), "init", "--configfile", str(configfile)],
        cwd=workdir,
        env=common.aws_env(args.endpoint),
        capture_output=True,
        text=True,
    )
    if init.returncode != 0:
        raise SystemExit(f"orchestrator init failed:\n{init.stdout}{init.stderr}")
    return configfile, bucket, table


def cleanup(s3: Any, ddb: Any, bucket: str, table: str) -> None:
    """Empty and drop the bucket, drop the table (best effort)."""
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                s3.delete_objects(Bucket=bucket, Delete={"Objects": keys})
        s3.delete_bucket(Bucket=bucket)
    except Exception as exc:  # noqa: BLE001 - cleanup is best effort
        print(f"warning: could not remove bucket {bucket}: {exc}", file=sys.stderr)
    try:
        ddb.delete_table(TableName=table)
    except Exception as exc:  # noqa: BLE001
        print(f"warning: could not remove table {table}: {exc}", file=sys.stderr)


def run(workdir: Path, configfile: Path, endpoint: str) -> tuple[list[dict[str, Any]], Any, str]:
    """The benchmarked run with the counting hook; returns the logged requests."""
    hook_dir = workdir / "hook"
    hook_dir.mkdir()
    (hook_dir / "sitecustomize.py").write_text(HOOK)
    log = workdir / "requests.jsonl"
    pythonpath = os.pathsep.join(p for p in (str(hook_dir), os.environ.get("PYTHONPATH")) if p)
    env = common.aws_env(endpoint, PYTHONPATH=pythonpath, **{LOG_ENV: str(log)})
    cmd = [
        common.SNAKEMAKE,
        "--snakefile", str(SNAKEFILE),
        "--directory", str(workdir),
        "--profile", str(PROFILE),
        "--configfile", str(configfile),
        "--cores", "2",
    ]  # fmt: skip
    sample, output = common.timed_run(cmd, cwd=workdir, env=env, what="the benchmarked run")
    if not log.exists():
        raise SystemExit("no request was logged: the hook did not load (PYTHONPATH?)")
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return records, sample, output


# --------------------------------------------------------------------------------------------
# attribution

#: Which step of Snakemake made a storage-plugin request, from its call stack: the first
#: (frame substring, label) whose substring occurs in the stack, innermost rules first.
STEPS = [
    ("store_object", "upload of an output (store_object: HeadBucket, PutObject)"),
    ("handle_storage", "after the upload: mtime + exists of each output (dag.handle_storage)"),
    (
        "persistence.finished",
        "metadata: outputs' exists + mtime, inputs' size for checksums (persistence.finished)",
    ),
    ("update_input_sizes", "scheduler: exists + size of every ready job's inputs, every round"),
    ("job_selector", "scheduler: exists + size of every ready job's inputs, every round"),
    ("retrieve_storage_inputs", "input retrieval: exists + newer-than-local check"),
    ("retrieve_from_storage", "input retrieval: exists + newer-than-local check"),
    ("wait_for_files", "job start: inputs present (io.wait_for_files)"),
    ("existing_output", "job start: stale outputs (existing_output, remove_existing_output)"),
    (
        "remove_existing_output",
        "job start: stale outputs (existing_output, remove_existing_output)",
    ),
    (
        "snakemake.jobs.get_mtime",
        "after a job: exists + mtime of other jobs' outputs (Job.output_mintime)",
    ),
    ("local_plan_file", "our input functions: plan.json fresh? (orchestrator_ext/plan_cache.py)"),
    ("inventory", "DAG build: inventory of the bucket (one listing)"),
    ("snakemake.dag.", "DAG (re)evaluation: missing / outdated outputs, needrun"),
]
UPLOAD = STEPS[0][1]


def step_of(record: dict[str, Any]) -> str:
    """The Snakemake step a request of the main process belongs to (see ``STEPS``)."""
    stack = " ".join(record.get("stack") or ())
    for needle, label in STEPS:
        if needle in stack:
            return label
    if record["op"] == "PutObject" or (record["op"] == "HeadBucket" and not stack):
        return UPLOAD  # s3transfer's worker threads carry no Snakemake frame
    return "other"


def batch_of(record: dict[str, Any]) -> tuple[int | None, str]:
    """(batch, "job" | "plugin") for a request of a batch, else (None, "")."""
    if record["role"] == "process_batch" and record.get("batch"):
        return int(record["batch"]), "job"
    if record["role"] != "snakemake":
        return None, ""
    if record["service"] == "s3":
        match = BATCH_KEY.search(record.get("key") or "")
        if match:
            return int(match[2]), "plugin"
    elif record["service"] == "dynamodb":  # e.g. the executor reading a failed job's state
        match = BATCH_TASK.match(record.get("task") or "")
        if match:
            return int(match[1]), "plugin"
    return None, ""


def other_label(record: dict[str, Any]) -> str:
    """What a request not attributed to a batch belongs to."""
    role = record["role"]
    if role != "snakemake":
        return f"job {role}"
    if record["service"] != "s3":
        return "Snakemake's process (DynamoDB)"
    key = (record.get("key") or "").rstrip("/")
    if key.endswith("batches/plan.json"):
        return "storage plugin: batches/plan.json"
    if "/batches" in key:
        return "storage plugin: batches/ (the checkpoint's folder)"
    for part in ("merge/", "final/", "manifest.json", "report/"):
        if part in key:
            return f"storage plugin: {part}"
    return "storage plugin: other keys"


def borrow_keys(records: list[dict[str, Any]]) -> None:
    """Give a bucket-level request (HeadBucket) the key of the next keyed S3 request of its
    thread: the storage plugin checks the bucket right before it lists a missing object's
    "folder" (``exists``) or uploads an object (``store_object``)."""
    threads: dict[tuple[int, int], list[dict[str, Any]]] = defaultdict(list)
    for rec in records:
        threads[(rec["pid"], rec.get("thread", 0))].append(rec)
    for recs in threads.values():
        pending: list[dict[str, Any]] = []
        for rec in recs:
            if rec["service"] != "s3":
                continue
            if rec.get("key"):
                for bucket_level in pending:
                    bucket_level["key"] = rec["key"]
                    bucket_level["key_borrowed"] = True
                pending = []
            elif rec["op"] == "HeadBucket":
                pending.append(rec)


def file_kind(record: dict[str, Any]) -> str:
    """Which of a batch's files an S3 request is about."""
    key = (record.get("key") or "").rstrip("/")
    match = BATCH_KEY.search(key)
    if match is None:
        return "?"
    return f"{match[1]}/batch-N{key[match.end() :]}"


def op_name(record: dict[str, Any]) -> str:
    return f"{'DynamoDB' if record['service'] == 'dynamodb' else 'S3'} {record['op']}"


def analyse(records: list[dict[str, Any]], n_batches: int) -> dict[str, Any]:
    """Per-batch counters (in the job, by the plugin), per-step counters, the rest."""
    borrow_keys(records)
    sides: dict[int, dict[str, Counter[str]]] = defaultdict(
        lambda: {"job": Counter(), "plugin": Counter()}
    )
    steps: dict[int, dict[str, Counter[str]]] = defaultdict(lambda: defaultdict(Counter))
    files: dict[int, Counter[str]] = defaultdict(Counter)
    pids: dict[int, set[int]] = defaultdict(set)
    other: dict[str, Counter[str]] = defaultdict(Counter)
    plan_steps: Counter[str] = Counter()
    for rec in records:
        batch, where = batch_of(rec)
        op = op_name(rec)
        if batch is None:
            label = other_label(rec)
            other[label][op] += 1
            other[label]["retries"] += rec.get("attempt", 1) > 1
            if label == "storage plugin: batches/plan.json":
                plan_steps[step_of(rec)] += 1
            continue
        side = sides[batch][where]
        if where == "job":
            pids[batch].add(rec["pid"])
        elif rec["service"] == "s3":
            steps[batch][step_of(rec)][rec["op"]] += 1
            files[batch][file_kind(rec)] += 1
        side[op] += 1
        side["retries"] += rec.get("attempt", 1) > 1
        if rec["service"] == "dynamodb":
            if rec["op"] in DDB_WRITES:
                side["ddb_writes"] += 1
                side["ddb_items_written"] += rec.get("items") or 0
            else:
                side["ddb_reads"] += 1
        else:
            side["s3"] += 1
    batches = []
    for b in range(n_batches):
        # Figures are per batch attempt: a batch run twice has its counts halved.
        attempts = max(1, len(pids.get(b, ())))
        per_side = sides.get(b, {"job": Counter(), "plugin": Counter()})
        batches.append(
            {
                "batch": b,
                "attempts": len(pids.get(b, ())),
                **{
                    where: {k: v / attempts for k, v in sorted(per_side[where].items()) if v}
                    for where in ("job", "plugin")
                },
                "plugin_s3_by_file": {
                    kind: n / attempts for kind, n in sorted(files.get(b, Counter()).items())
                },
                "plugin_s3_by_step": {
                    step: {op: n / attempts for op, n in sorted(ops.items())}
                    for step, ops in sorted(steps.get(b, {}).items())
                },
            }
        )
    return {
        "batches": batches,
        "other": {k: {op: n for op, n in sorted(v.items()) if n} for k, v in sorted(other.items())},
        "plan_json_by_step": dict(plan_steps.most_common()),
        "totals": dict(sorted(Counter(op_name(r) for r in records).items())),
        "requests": len(records),
        "retries": sum(1 for r in records if r.get("attempt", 1) > 1),
        "requests_by_role": dict(sorted(Counter(r["role"] for r in records).items())),
    }


def stats(values: list[float]) -> list[float]:
    """[median, max]."""
    return [statistics.median(values), max(values)] if values else [0.0, 0.0]


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    """Median and max over the batches of every per-attempt figure: in the job, by the
    plugin, in total; and of the plugin's S3 requests per Snakemake step."""
    batches = result["batches"]
    keys = {k for b in batches for where in ("job", "plugin") for k in b[where]}
    keys |= {"ddb_writes", "ddb_items_written", "ddb_reads", "s3", "retries"}
    rows = {}
    for key in sorted(keys):
        job = [b["job"].get(key, 0) for b in batches]
        plugin = [b["plugin"].get(key, 0) for b in batches]
        total = [j + p for j, p in zip(job, plugin, strict=True)]
        rows[key] = {"job": stats(job), "plugin": stats(plugin), "total": stats(total)}
    labels = {step for b in batches for step in b["plugin_s3_by_step"]}
    steps = {}
    for label in sorted(labels):
        per_batch = [b["plugin_s3_by_step"].get(label, {}) for b in batches]
        ops = sorted({op for p in per_batch for op in p})
        steps[label] = {
            "requests": stats([sum(p.values()) for p in per_batch]),
            "ops": {op: stats([p.get(op, 0) for p in per_batch]) for op in ops},
        }
    plan = result["other"].get("storage plugin: batches/plan.json", {})
    kinds = sorted({kind for b in batches for kind in b["plugin_s3_by_file"]})
    return {
        "rows": rows,
        "steps": steps,
        "files": {
            kind: stats([b["plugin_s3_by_file"].get(kind, 0) for b in batches]) for kind in kinds
        },
        "plan_json_per_batch": sum(v for k, v in plan.items() if k != "retries")
        / max(1, len(batches)),
    }


# --------------------------------------------------------------------------------------------
# reporting


def fmt(value: float) -> str:
    return f"{value:g}" if value == int(value) else f"{value:.1f}"


def cell(pair: list[float]) -> str:
    median, top = pair
    return fmt(median) if median == top else f"{fmt(median)} (max {fmt(top)})"


def verdict(pair: list[float], target: int) -> str:
    if pair[1] <= target:
        return "met"
    return f"**not met** (median {fmt(pair[0])}, max {fmt(pair[1])})"


def render_table(rows: dict[str, Any]) -> list[str]:
    lines = [
        "| per batch attempt | in the job | by the storage plugin | total | target |",
        "|---|---:|---:|---:|---|",
    ]

    def row(label: str, key: str, target: str = "") -> None:
        r = rows[key]
        lines.append(
            f"| {label} | {cell(r['job'])} | {cell(r['plugin'])} | {cell(r['total'])} | {target} |"
        )

    ddb_writes = sorted(k for k in rows if k.startswith("DynamoDB ") and k[9:] in DDB_WRITES)
    ddb_reads = sorted(k for k in rows if k.startswith("DynamoDB ") and k[9:] not in DDB_WRITES)
    s3_ops = sorted(k for k in rows if k.startswith("S3 "))
    writes = rows["ddb_writes"]["total"]
    row(
        "**DynamoDB writes**",
        "ddb_writes",
        f"<= {TARGET_DDB_WRITES}: {verdict(writes, TARGET_DDB_WRITES)}",
    )
    for key in ddb_writes:
        row(f"&nbsp;&nbsp;{key[9:]}", key)
    row("&nbsp;&nbsp;items they wrote", "ddb_items_written")
    row("**DynamoDB reads**", "ddb_reads")
    for key in ddb_reads:
        row(f"&nbsp;&nbsp;{key[9:]}", key)
    s3 = rows["s3"]["total"]
    row("**S3 requests**", "s3", f"<= {TARGET_S3_REQUESTS}: {verdict(s3, TARGET_S3_REQUESTS)}")
    for key in s3_ops:
        row(f"&nbsp;&nbsp;{key[3:]}", key)
    row("retries (included above)", "retries")
    return lines


def render_steps(summary: dict[str, Any]) -> list[str]:
    lines = [
        "| the storage plugin's S3 requests per batch attempt, by Snakemake step | requests "
        "| of which |",
        "|---|---:|---|",
    ]
    steps = sorted(summary["steps"].items(), key=lambda kv: (-kv[1]["requests"][0], kv[0]))
    for label, step in steps:
        mix = ", ".join(f"{op} {cell(pair)}" for op, pair in step["ops"].items())
        lines.append(f"| {label} | {cell(step['requests'])} | {mix} |")
    return lines


def render_other(result: dict[str, Any]) -> list[str]:
    lines = ["| rest of the run (run totals) | requests |", "|---|---|"]
    for label, ops in result["other"].items():
        text = ", ".join(f"{op} {n}" for op, n in ops.items())
        lines.append(f"| {label} | {text} |")
    return lines


def render(
    args: argparse.Namespace,
    result: dict[str, Any],
    summary: dict[str, Any],
    sample: Any,
    facts: dict[str, str],
) -> str:
    rows = summary["rows"]
    attempts = [b["attempts"] for b in result["batches"]]
    command = f"bench/requests.py --batches {args.batches} --items {args.items}"
    if args.mode != "reduce":
        command += f" --mode {args.mode}"
    plan = summary["plan_json_per_batch"]
    s3_total, writes = rows["s3"]["total"], rows["ddb_writes"]["total"]
    lines = [
        "## Requests per batch attempt (S3 and DynamoDB)",
        "",
        f"`{command}`: one run of `snakemake --profile profiles/local` on "
        f"`workflow/Snakefile` over {args.items:,} items in {args.batches} batches "
        f"({args.mode} job, fan-in 4), every file in S3 and task state in DynamoDB on the "
        "local moto server, configured as on a cluster (`SNAKEMAKE_STORAGE_S3_*`, "
        "`AWS_ENDPOINT_URL_DYNAMODB`). Every HTTP request botocore sent, in every process of "
        "the run, was logged by botocore event handlers (`before-parameter-build` and "
        "`response-received`, registered on every botocore session by a `sitecustomize.py` "
        "on the run's `PYTHONPATH`; they only observe). A batch's requests are those of its "
        "`jobstep process-batch` process (*in the job*) plus those Snakemake's own process "
        "sent for keys naming the batch's files (`batches/`, `results/`, `dead_letter/"
        "batch-N...`): the S3 storage plugin's existence, mtime and size checks and its "
        "uploads (*by the storage plugin*; a `HeadBucket` counts for the key the plugin "
        "touched next). Cells: median over the batches, and the maximum when it differs; a "
        f"retry counts as a request. Attempts per batch: {min(attempts)} to {max(attempts)}. "
        f"The run took {sample.wall_s:.0f} s and sent {result['requests']:,} requests "
        f"({result['retries']} retries).",
        "",
        *render_table(rows),
        "",
        "Where the storage plugin's requests come from (Snakemake step, from each request's "
        "call stack):",
        "",
        *render_steps(summary),
        "",
        "The same by file: "
        + ", ".join(f"`{kind}` {cell(pair)}" for kind, pair in summary["files"].items())
        + ".",
        "",
        *render_other(result),
        "",
        f"- DynamoDB writes per batch attempt, target at most {TARGET_DDB_WRITES}: "
        f"{cell(writes)}, {verdict(writes, TARGET_DDB_WRITES)}.",
        f"- S3 requests per batch attempt, target at most {TARGET_S3_REQUESTS}: "
        f"{cell(s3_total)}, {verdict(s3_total, TARGET_S3_REQUESTS)}. Not counted there: "
        f"`plan.json`, an input of every batch job, adds {fmt(round(plan, 1))} requests per "
        "batch (run total / batches; "
        + "; ".join(f"{step} {n}" for step, n in result["plan_json_by_step"].items())
        + ").",
        "",
        common.machine_line(facts),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=8, help="batches of the run (default 8)")
    parser.add_argument("--items", type=int, default=4000, help="input items (default 4000)")
    parser.add_argument(
        "--mode",
        choices=("reduce", "concat"),
        default="reduce",
        help="reduce: grouped_stats, as config/config.yaml (default); concat: text_metrics",
    )
    parser.add_argument(
        "--endpoint", default="http://127.0.0.1:5555", help="local S3 + DynamoDB server"
    )
    parser.add_argument("--no-docs", action="store_true", help="do not touch docs/benchmarks.md")
    parser.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="run in this folder and keep it (requests.jsonl: one line per request, with "
        "its call stack), and keep the bucket and the table",
    )
    args = parser.parse_args(argv)
    if args.batches < 1 or args.items < args.batches:
        parser.error("need at least one batch and at least one item per batch")
    if not endpoint_up(args.endpoint):
        raise SystemExit(
            f"no local S3/DynamoDB server at {args.endpoint}: run `bash tests/services/setup.sh "
            "moto` first"
        )

    facts = common.machine_facts()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        workdir = args.keep.resolve()
    else:
        workdir = Path(tempfile.mkdtemp(prefix="bench-requests-"))
    s3, ddb = clients(args.endpoint)
    bucket = table = ""
    try:
        t0 = time.perf_counter()
        configfile, bucket, table = prepare(workdir, args, s3)
        print(f"prepared bucket and table {bucket} in {time.perf_counter() - t0:.1f} s")
        records, sample, _ = run(workdir, configfile, args.endpoint)
        body = s3.get_object(Bucket=bucket, Key=f"{PREFIX}/{RUN_ID}/batches/plan.json")["Body"]
        n_batches = json.loads(body.read())["n_batches"]
    finally:
        if not args.keep:
            if bucket:
                cleanup(s3, ddb, bucket, table)
            shutil.rmtree(workdir, ignore_errors=True)
    if n_batches != args.batches:
        print(f"warning: the partition made {n_batches} batches, not {args.batches}")
    result = analyse(records, n_batches)
    summary = summarise(result)
    section = render(args, result, summary, sample, facts)
    print(section)
    if args.keep:
        print(f"kept {workdir} (requests.jsonl), bucket and table {bucket}")
    if not args.no_docs:
        path = common.save_results(
            NAME,
            {
                "machine": facts,
                "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                "wall_s": sample.wall_s,
                "targets": {"ddb_writes": TARGET_DDB_WRITES, "s3_requests": TARGET_S3_REQUESTS},
                "summary": summary,
                **result,
            },
        )
        print(f"wrote {path.relative_to(common.REPO)}")
        common.write_section(NAME, section)
        print(f"wrote {common.DOCS.relative_to(common.REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
