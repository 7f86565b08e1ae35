"""Entry point of rule process_batch: run the job over one batch."""

from orchestrator_ext.jobstep import run_step
from orchestrator_ext.process import process_batch

sm = snakemake  # noqa: F821 - injected by Snakemake
run_step(
    sm.log[0],
    process_batch,
    sm.config,
    batch=sm.wildcards.batch,
    batch_file=sm.input.batch,
    batch_sha256=None,
    plan_file=sm.input.plan,
    result_file=sm.output.result,
    dead_letter_file=sm.output.dead_letter,
    record_file=sm.output.record,
    uris=dict(sm.params.uris),
)
