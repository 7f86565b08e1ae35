"""Running a package function as the body of a Snakemake job.

Scripts under ``scripts/`` call ``run_step``: it sends the job's output (stdout, stderr,
logging) to the rule's log file, runs the function, and turns the package's own errors into
one clear line and a non-zero exit instead of a traceback. Unexpected errors keep their
traceback in the log, because that is a bug worth reading. Each attempt's log keeps a name
of its own (``attempt_log``).
"""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from orchestrator_ext import attempt_log
from orchestrator_ext.errors import OrchestratorError, configure_error_rules

EXIT_FAILED = 1


def setup_logging(log_path: str | None) -> None:
    """Send the job's output to ``log_path`` (appending): stdout and stderr, and the
    package's logging.

    Both at the file-descriptor level (``os.dup2`` onto 1 and 2), so that what C extensions
    and subprocesses of the user's job write lands in the log too, and as ``sys.stdout`` and
    ``sys.stderr``, line-buffered so that the two keep their order and a killed job loses
    nothing it printed. A crash (SIGSEGV, SIGABRT, ...) leaves the Python traceback of every
    thread there (``faulthandler``).
    """
    if log_path:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # a closed or odd stream: nothing to keep
                stream.flush()
        fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            os.dup2(fd, 1)
            os.dup2(fd, 2)
        finally:
            os.close(fd)
        # The streams live for the job; fds 1 and 2 stay open for its subprocesses.
        sys.stdout = open(1, "w", buffering=1, closefd=False, errors="backslashreplace")  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False, errors="backslashreplace")  # noqa: SIM115
    faulthandler.enable(file=sys.stderr, all_threads=True)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )


def run_step(
    log_path: str | None, fn: Callable[..., Any], raw_config: dict[str, Any], **kwargs: Any
) -> Any:
    """Run ``fn(config, store, **kwargs)`` as a job body.

    ``raw_config`` is the config the Snakefile validated and filled with defaults
    (``load_run_config``; ``RunConfig.raw``), so it is not checked again here. Opens the
    run's state store, and on the package's own errors prints one line and exits non-zero
    instead of showing a traceback.
    """
    from orchestrator_ext.config import run_config_from
    from orchestrator_ext.state import open_state_store

    setup_logging(log_path)
    try:
        config = run_config_from(raw_config)
        rules = config.error_rules
        configure_error_rules(rules.transient, rules.resource, rules.permanent)
        store = open_state_store(config)
        if log_path:
            # Snakemake removes the log before the next attempt: this one keeps a name.
            store.on_attempt = lambda attempt: attempt_log.keep(log_path, attempt.attempt)
        try:
            return fn(config, store, **kwargs)
        finally:
            store.close()
    except OrchestratorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_FAILED)


def process_batch_main(argv: list[str] | None = None) -> None:
    """``python -m orchestrator_ext.jobstep process-batch ...``: the body of rule
    process_batch, run as a plain command.

    The rule runs the most numerous job of a run, so it uses ``shell:`` rather than
    ``script:``: Snakemake plans a ``script:`` job noticeably slower (it reads and caches the
    script for every job) and starts it through a generated wrapper; a command line costs
    neither. Config arrives in a JSON file (``--config-file``, mode 0600; never on the
    command line, see ``workflow.job_config_file``), validated with defaults filled in
    (``RunConfig.raw``: the Snakefile validated it, in the job's own Snakemake process too on
    a cluster, so the job does not again); the record's URIs and where dead letters go (the
    run folder or S3; not a Snakemake output) follow from it.
    """
    import argparse
    import json

    from orchestrator_ext.layout import RunLayout
    from orchestrator_ext.process import process_batch

    parser = argparse.ArgumentParser(prog="python -m orchestrator_ext.jobstep process-batch")
    for name in ("config-file", "log", "batch", "plan-file", "result", "record"):
        parser.add_argument(f"--{name}", required=True)
    # Empty for a batch of row ranges (batching.row_ranges): its items are named in the plan.
    parser.add_argument("--batch-file", default="")
    args = parser.parse_args(argv)
    # A file, not an argument: the config may hold secrets (workflow.job_config_file).
    with open(args.config_file) as handle:
        raw_config = json.load(handle)
    run = RunLayout(f"{raw_config['output_root'].rstrip('/')}/{raw_config['run_id']}")
    run_step(
        args.log,
        process_batch,
        raw_config,
        batch=args.batch,
        batch_file=args.batch_file or None,
        plan_file=args.plan_file,
        result_file=args.result,
        dead_letter_uri=run.dead_letter(args.batch),
        record_file=args.record,
        uris={"result": run.result(args.batch)},
    )


def merge_node_main(argv: list[str] | None = None) -> None:
    """``python -m orchestrator_ext.jobstep merge-node ...``: the body of rules merge_level
    and merge_final, run as a plain command like process_batch (a ``script:`` job cost about
    a second of CPU each: a fresh interpreter importing Snakemake's script wrapper).

    ``--data`` and ``--records`` list the children in order; without ``--level`` the node is
    the root (its level follows from its children's records), which writes the final.
    """
    import argparse
    import json

    from orchestrator_ext import task
    from orchestrator_ext.merge import merge_node

    parser = argparse.ArgumentParser(prog="python -m orchestrator_ext.jobstep merge-node")
    for name in ("config-file", "log", "index", "output", "record", "uri"):
        parser.add_argument(f"--{name}", required=True)
    parser.add_argument("--level", type=int, default=None)
    parser.add_argument("--data", nargs="+", required=True)
    parser.add_argument("--records", nargs="+", required=True)
    args = parser.parse_args(argv)
    if len(args.data) != len(args.records):
        parser.error("--data and --records must name the same number of children")
    with open(args.config_file) as handle:
        raw_config = json.load(handle)
    is_root = args.level is None
    index = int(args.index)
    run_step(
        args.log,
        merge_node,
        raw_config,
        task_id=task.FINAL if is_root else task.merge_id(args.level, index),
        level=args.level,
        index=index,
        children=list(zip(args.data, args.records, strict=True)),
        output_file=args.output,
        record_file=args.record,
        is_root=is_root,
        uri=args.uri,
    )


#: The steps a job command can run: ``python -m orchestrator_ext.jobstep STEP ARGS...``.
STEPS = {"process-batch": process_batch_main, "merge-node": merge_node_main}


def main(argv: list[str]) -> None:
    """Run the step ``argv[0]`` names with the arguments after it."""
    step = STEPS.get(argv[0]) if argv else None
    if step is None:
        sys.exit(f"usage: python -m orchestrator_ext.jobstep {{{','.join(STEPS)}}} --help")
    step(argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
