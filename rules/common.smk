# Config validation, wildcard constraints and every input function of the workflow.
# Parsing does no I/O beyond reading config: cluster jobs re-parse this file.
import sys

from snakemake_storage_plugin_orchestrator_s3 import provider_settings

import orchestrator_ext.workflow as ox
from orchestrator_ext import scheduler
from orchestrator_ext.plan_cache import PlanCache

# Snakemake stats every waiting job's input files on every scheduling round; once is
# enough (orchestrator_ext/scheduler.py).
scheduler.install()

RUN = ox.load_run_config(config)
# Where the files are (s3:// URIs for a run in S3): what records and the manifest store.
URIS = ox.RunLayout(RUN.run_dir)

# A run in S3 (output_root: s3://bucket/prefix) has every file target moved by the storage
# plugin orchestrator-s3: snakemake-storage-plugin-s3 with a cache of what S3 said about
# each key, dropped whenever a job finishes (orchestrator_ext/storage_cache.py). Named
# explicitly: with both plugins installed, storage(...) could not infer which one. Its
# settings are the s3 plugin's (--storage-s3-*, SNAKEMAKE_STORAGE_S3_*, the profiles'
# storage-s3-retries), unless given as --storage-orchestrator-s3-*.
if URIS.is_remote:

    storage orchestrator_s3:
        **provider_settings(workflow.storage_provider_settings, "orchestrator_s3"),
        provider="orchestrator-s3",


# File targets; in S3, jobs see local copies under .snakemake/storage/orchestrator_s3/.
# Logs stay local in both cases (RunLayout.log).
LAYOUT = (
    ox.RunLayout(RUN.run_dir, wrap=storage.orchestrator_s3) if URIS.is_remote else URIS
)
# Inputs a job needs to exist but never reads: not downloaded for the job.
PRESENT = (
    ox.RunLayout(
        RUN.run_dir, wrap=lambda path: storage.orchestrator_s3(path, retrieve=False)
    )
    if URIS.is_remote
    else URIS
)


def as_target(path):
    """A flagged path (e.g. directory(...)) as a file target: Snakemake wants storage()
    outermost (directory(storage(...)) is a syntax error). The provider sees the
    directory() flag: only such targets are folders in S3, listed instead of HEADed."""
    return storage.orchestrator_s3(path) if URIS.is_remote else path


wildcard_constraints:
    batch=r"\d{5}",
    level=r"[1-9][0-9]*",
    part=r"\d{5}",


# The plan, read once per process (orchestrator_ext/plan_cache.py). The checkpoint is looked
# up on call: it is declared in partition.smk, included after this file.
PLAN = PlanCache(
    lambda: checkpoints.partition_items.get(), LAYOUT, RUN, workflow.is_main_process
)


def get_plan():
    """Shape of the partition plan; only callable once the checkpoint has run."""
    return PLAN.get()


def get_mem_mb(wildcards, attempt):
    """Memory of this attempt: resources.mem_mb, escalated per attempt and capped."""
    return RUN.resources.for_attempt(attempt)[0]


def get_runtime(wildcards, attempt):
    """Wall time (minutes) of this attempt, escalated like the memory."""
    return RUN.resources.for_attempt(attempt)[1]


def get_batch_input(wildcards):
    """The batch's copy, or nothing for row ranges of the input (batching.row_ranges)."""
    return {} if RUN.batching.row_ranges else {"batch": LAYOUT.batch(wildcards.batch)}


def get_children(level, index):
    plan = get_plan()
    nodes = [
        LAYOUT.node(level - 1, i, plan.n_batches, plan.fan_in)
        for i in plan.children(level, index)
    ]
    return {"data": [d for d, _ in nodes], "records": [r for _, r in nodes]}


def get_merge_inputs(wildcards):
    return get_children(int(wildcards.level), int(wildcards.part))


def get_final_inputs(wildcards):
    return get_children(get_plan().root_level, 0)


def get_manifest_inputs(wildcards):
    """Every file the manifest lists, so that a deleted one is rebuilt with its merge path."""
    plan = get_plan()
    nodes = plan.inner_nodes()
    # The manifest job reads the plan and the records; the data files only have to exist.
    return {
        "plan": LAYOUT.plan,
        "results": [PRESENT.result(b) for b in plan.batch_ids],
        "batch_records": [LAYOUT.result_record(b) for b in plan.batch_ids],
        "merge_parts": [PRESENT.merge_part(l, i) for l, i in nodes],
        "merge_records": [LAYOUT.merge_record(l, i) for l, i in nodes],
        "final": PRESENT.final,
        "final_record": LAYOUT.final_record,
    }


def get_final_output(wildcards):
    """The manifest and every file it lists. Naming them all as targets makes Snakemake
    rebuild a deleted batch result (and only its merge path) even though the final result
    is still present."""
    inputs = get_manifest_inputs(wildcards)
    files = [f for v in inputs.values() for f in _as_list(v)]
    return [LAYOUT.manifest, *files, rules.report_dashboard.output.dashboard]


def _as_list(value):
    return value if isinstance(value, list) else [value]


# One coordinator per run (see orchestrator_ext/coordinator.py; the profiles set nolock).
onstart:
    ox.acquire_coordinator(RUN)
    ox.publish_resolved_config(RUN)


onsuccess:
    ox.release_coordinator(RUN)


onerror:
    ox.release_coordinator(RUN)
