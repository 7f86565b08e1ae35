"""Entry point of rule write_manifest: assemble and publish manifest.json."""

from orchestrator_ext.jobstep import run_step
from orchestrator_ext.manifest import write_run_manifest

sm = snakemake  # noqa: F821 - injected by Snakemake
run_step(
    sm.log[0],
    write_run_manifest,
    sm.config,
    plan_file=sm.input.plan,
    batch_records=list(sm.input.batch_records),
    merge_records=list(sm.input.merge_records),
    final_record=sm.input.final_record,
    manifest_file=sm.output.manifest,
    plan_uri=sm.params.plan_uri,
)
