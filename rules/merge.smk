# The merge tree: inner nodes per level, then the root written as the final result.


rule merge_level:
    input:
        unpack(get_merge_inputs),
    output:
        part=LAYOUT.merge_part("{level}", "{part}"),
        record=LAYOUT.merge_record("{level}", "{part}"),
    log:
        LAYOUT.job_log("merge_level"),
    conda:
        "../environment.yml"
    resources:
        mem_mb=get_mem_mb,
        runtime=get_runtime,
    params:
        level=lambda wildcards: int(wildcards.level),
        mode=RUN.merge.mode,
        uri=lambda wildcards: URIS.merge_part(wildcards.level, wildcards.part),
    script:
        "../scripts/merge_node.py"


rule merge_final:
    input:
        unpack(get_final_inputs),
    output:
        part=LAYOUT.final,
        record=LAYOUT.final_record,
    log:
        LAYOUT.job_log("merge_final"),
    conda:
        "../environment.yml"
    resources:
        mem_mb=get_mem_mb,
        runtime=get_runtime,
    params:
        mode=RUN.merge.mode,
        finalize=RUN.job.finalize,
        uri=lambda wildcards: URIS.final,
    script:
        "../scripts/merge_node.py"
