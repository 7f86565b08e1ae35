# Config validation, wildcard constraints and every input function of the workflow.
# Parsing does no I/O beyond reading config: cluster jobs re-parse this file.
import orchestrator_ext.workflow as ox

RUN = ox.load_config(config)
LAYOUT = ox.RunLayout(RUN.run_dir)


wildcard_constraints:
    batch=r"\d{5}",
    level=r"[1-9][0-9]*",
    part=r"\d{5}",


def get_plan():
    """Shape of the partition plan; only callable once the checkpoint has run."""
    checkpoints.partition_items.get()
    return ox.read_plan_shape(LAYOUT.plan)


def get_node_files(level, index):
    """Data and record file of a merge-tree node (level 0 = batch results)."""
    plan = get_plan()
    return LAYOUT.node(level, index, plan.n_batches, plan.fan_in)


def get_children(level, index):
    plan = get_plan()
    nodes = [get_node_files(level - 1, i) for i in plan.children(level, index)]
    return {"data": [d for d, _ in nodes], "records": [r for _, r in nodes]}


def get_merge_inputs(wildcards):
    return get_children(int(wildcards.level), int(wildcards.part))


def get_final_inputs(wildcards):
    return get_children(get_plan().root_level, 0)


def get_manifest_inputs(wildcards):
    """Every file the manifest lists, so that a deleted one is rebuilt with its merge path."""
    plan = get_plan()
    nodes = plan.inner_nodes()
    return {
        "plan": LAYOUT.plan,
        "results": [LAYOUT.result(b) for b in plan.batch_ids],
        "batch_records": [LAYOUT.result_record(b) for b in plan.batch_ids],
        "dead_letters": [LAYOUT.dead_letter(b) for b in plan.batch_ids],
        "merge_parts": [LAYOUT.merge_part(l, i) for l, i in nodes],
        "merge_records": [LAYOUT.merge_record(l, i) for l, i in nodes],
        "final": LAYOUT.final,
        "final_record": LAYOUT.final_record,
    }


def get_final_output(wildcards):
    """The manifest and every file it lists. Naming them all as targets makes Snakemake
    rebuild a deleted batch result (and only its merge path) even though the final result
    is still present."""
    inputs = get_manifest_inputs(wildcards)
    return [LAYOUT.manifest, *(f for v in inputs.values() for f in _as_list(v))]


def _as_list(value):
    return value if isinstance(value, list) else [value]
