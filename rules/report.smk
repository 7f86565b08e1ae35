# The run dashboard: one self-contained HTML page, also shown by `snakemake --report`.


rule report_dashboard:
    input:
        manifest=LAYOUT.manifest,
    output:
        dashboard=as_target(
            report(
                f"{URIS.run_dir}/report/dashboard.html",
                caption="../report/dashboard.rst",
                category="Run summary",
            )
        ),
    log:
        LAYOUT.job_log("report_dashboard"),
    localrule: True
    conda:
        "../environment.yml"
    script:
        "../scripts/report_dashboard.py"
