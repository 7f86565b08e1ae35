"""Entry point of rule report_dashboard: write the run's HTML dashboard."""

from orchestrator_ext.jobstep import run_step
from orchestrator_ext.report import write_dashboard

sm = snakemake  # noqa: F821 - injected by Snakemake
# validated: the Snakefile filled and checked the config (load_run_config).
run_step(sm.log[0], write_dashboard, sm.config, validated=True, path=sm.output.dashboard)
