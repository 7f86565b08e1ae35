"""Entry point of rules merge_level and merge_final: merge one node of the tree."""

from orchestrator_ext import task
from orchestrator_ext.jobstep import run_step
from orchestrator_ext.merge import merge_node

sm = snakemake  # noqa: F821 - injected by Snakemake
is_root = sm.rule == "merge_final"
# The root's level follows from its children's records (a param may not read the plan).
level = None if is_root else int(sm.params.level)
index = int(sm.wildcards.get("part", 0))
run_step(
    sm.log[0],
    merge_node,
    sm.config,
    task_id=task.FINAL if is_root else task.merge_id(int(sm.params.level), index),
    level=level,
    index=index,
    children=list(zip(sm.input.data, sm.input.records, strict=True)),
    output_file=sm.output.part,
    record_file=sm.output.record,
    is_root=is_root,
    uri=sm.params.uri,
)
