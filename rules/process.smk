# Run the job over one batch; publishes its result, dead letters and record.


rule process_batch:
    input:
        batch=LAYOUT.batch("{batch}"),
        plan=LAYOUT.plan,
    output:
        result=LAYOUT.result("{batch}"),
        dead_letter=LAYOUT.dead_letter("{batch}"),
        record=LAYOUT.result_record("{batch}"),
    log:
        LAYOUT.log("process_batch", "{batch}"),
    conda:
        "../environment.yml"
    resources:
        mem_mb=get_mem_mb,
        runtime=get_runtime,
    params:
        job=RUN.raw["job"],
        # Where the outputs are (s3:// for a run in S3), for the record.
        uris=lambda wildcards: {
            "result": URIS.result(wildcards.batch),
            "dead_letter": URIS.dead_letter(wildcards.batch),
        },
    script:
        "../scripts/process_batch.py"
