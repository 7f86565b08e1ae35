# Partition the items into batches. A checkpoint: the DAG below it depends on the plan.


checkpoint partition_items:
    output:
        batches=as_target(directory(URIS.batches_dir)),
    log:
        LAYOUT.job_log("partition_items"),
    conda:
        "../environment.yml"
    params:
        # Changes to these re-trigger partitioning (Snakemake's params rerun trigger).
        source=RUN.raw["input"],
        # The input's files with sizes and mtimes (or ETags): a file rewritten, added or
        # removed re-partitions. A function, so only a process that plans the partition
        # lists the input.
        input_files=lambda wildcards: ox.input_fingerprint(RUN),
        batching=RUN.raw["batching"],
        fan_in=RUN.merge.fan_in,
    script:
        "../scripts/partition_items.py"
