"""Entry point of rule report_dashboard: write the run's HTML dashboard."""

from orchestrator_ext.jobstep import run_step
from orchestrator_ext.report import write_dashboard

sm = snakemake  # noqa: F821 - injected by Snakemake
run_step(sm.log[0], write_dashboard, sm.config, path=sm.output.dashboard)
