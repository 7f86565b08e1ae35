# Run the job over one batch; publishes its result and record. Its dead letters, if any, are
# written by the job itself (to the run folder or S3) and named in the record: most batches
# have none, and an always-declared empty file cost three S3 requests per batch.


rule process_batch:
    input:
        # The batch's copy; none for row ranges, which the plan names (batching.row_ranges).
        unpack(get_batch_input),
        plan=LAYOUT.plan,
    output:
        result=LAYOUT.result("{batch}"),
        record=LAYOUT.result_record("{batch}"),
    log:
        LAYOUT.job_log("process_batch"),
    conda:
        "../environment.yml"
    # job.workers: the cores the job uses (Slurm: cpus-per-task); polars sized to them.
    threads: RUN.job.cores
    resources:
        mem_mb=get_mem_mb,
        runtime=get_runtime,
    params:
        # A change of the job reprocesses every batch (params rerun trigger). Its sha256,
        # not the job itself: Snakemake keeps params in .snakemake/metadata, and
        # job.params may hold credentials.
        job=ox.config_sha256(RUN.raw["job"]),
        python=ox.CommandArgument(sys.executable),
        # The config travels in a 0600 file, never on the command line (job_config_file).
        config=lambda wildcards: ox.CommandArgument(ox.job_config_file(RUN)),
        batch_file=lambda wildcards, input: input.get("batch", ""),
    shell:
        "POLARS_MAX_THREADS={threads} {params.python} -m orchestrator_ext.jobstep process-batch"
        " --batch {wildcards.batch} --batch-file={params.batch_file:q} --plan-file {input.plan:q}"
        " --result {output.result:q} --record {output.record:q} --log {log:q}"
        " --config-file {params.config:q} >> {log:q} 2>&1"
