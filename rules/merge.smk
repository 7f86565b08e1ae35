# The merge tree: inner nodes per level, then the root written as the final result.


rule merge_level:
    input:
        unpack(get_merge_inputs),
    output:
        part=LAYOUT.merge_part("{level}", "{part}"),
        record=LAYOUT.merge_record("{level}", "{part}"),
    params:
        level=lambda wildcards: int(wildcards.level),
        mode=RUN.merge.mode,
    log:
        LAYOUT.log("merge_level", "L{level}-{part}"),
    script:
        "../scripts/merge_node.py"


rule merge_final:
    input:
        unpack(get_final_inputs),
    output:
        part=LAYOUT.final,
        record=LAYOUT.final_record,
    params:
        level=lambda wildcards: get_plan().root_level,
        mode=RUN.merge.mode,
        finalize=RUN.job.finalize,
    log:
        LAYOUT.log("merge_final", "final"),
    script:
        "../scripts/merge_node.py"
