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
        mode=RUN.merge.mode,
        uri=lambda wildcards: URIS.merge_part(wildcards.level, wildcards.part),
        python=ox.CommandArgument(sys.executable),
        # The config travels in a 0600 file, as for process_batch (job_config_file).
        config=lambda wildcards: ox.CommandArgument(ox.job_config_file(RUN)),
    # A command, like process_batch: started warm by orchestrator-local (warm_jobs.py).
    shell:
        "{params.python} -m orchestrator_ext.jobstep merge-node --level {wildcards.level}"
        " --index {wildcards.part} --data {input.data:q} --records {input.records:q}"
        " --output {output.part:q} --record {output.record:q} --uri {params.uri:q}"
        " --log {log:q} --config-file {params.config:q} >> {log:q} 2>&1"


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
        python=ox.CommandArgument(sys.executable),
        config=lambda wildcards: ox.CommandArgument(ox.job_config_file(RUN)),
    shell:
        "{params.python} -m orchestrator_ext.jobstep merge-node --index 0"
        " --data {input.data:q} --records {input.records:q} --output {output.part:q}"
        " --record {output.record:q} --uri {params.uri:q} --log {log:q}"
        " --config-file {params.config:q} >> {log:q} 2>&1"
