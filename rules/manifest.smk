# The manifest: every output with its checksum and the item-conservation equation.


rule write_manifest:
    input:
        unpack(get_manifest_inputs),
    output:
        manifest=LAYOUT.manifest,
    log:
        LAYOUT.job_log("write_manifest"),
    # Runs where Snakemake runs: it only reads the plan and small JSON records (checksums
    # come from the records), and on Slurm a job of its own waits a status poll or more
    # (about 19 s of a 76 s run in bench/slurm.py).
    localrule: True
    conda:
        "../environment.yml"
    params:
        plan_uri=URIS.plan,
    script:
        "../scripts/write_manifest.py"
