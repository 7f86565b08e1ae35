"""Entry point of rule partition_items: cut the items into batches."""

from orchestrator_ext.jobstep import run_step
from orchestrator_ext.partition import partition_items

run_step(
    snakemake.log[0],  # noqa: F821 - injected by Snakemake
    partition_items,
    snakemake.config,  # noqa: F821
    batches_dir=snakemake.output.batches,  # noqa: F821
)
