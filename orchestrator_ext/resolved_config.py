"""A run's resolved config: ``{run_dir}/config.json``, the config the run really used
(validated, defaults filled) and its sha256, written when the coordinator starts.

Every ``orchestrator`` command that names a run by its folder (``orchestrator status
results/my-run``, or an ``s3://`` prefix) reads it, so the tools see the run as Snakemake
ran it; a file whose sha256 no longer matches is refused. Locally it is readable by its
owner only (``job.params`` may hold credentials); in S3 it is encrypted like every object
the package writes.
"""

from __future__ import annotations

import json
from typing import Any

from orchestrator_ext.config import RunConfig, config_sha256, load_config
from orchestrator_ext.errors import ConfigError, MissingOutput
from orchestrator_ext.layout import RunLayout
from orchestrator_ext.location import location_of


def resolved_document(run: RunConfig) -> dict[str, Any]:
    """What ``{run_dir}/config.json`` holds: the validated config and its sha256."""
    return {"sha256": run.sha256, "config": run.raw}


def publish_resolved_config(run: RunConfig) -> str:
    """Write the config this run uses to ``{run_dir}/config.json``, so that every tool
    reads the run as Snakemake ran it.

    Returns:
        Where it was written.
    """
    uri = RunLayout(run.run_dir).resolved_config
    text = json.dumps(resolved_document(run), indent=2, sort_keys=True) + "\n"
    location_of(uri).write_bytes(uri, text.encode(), private=True)
    return uri


def read_resolved_config(run_dir: str) -> RunConfig:
    """The config a run used, from its folder (a path or an ``s3://`` prefix).

    Raises:
        ConfigError: the folder has no ``config.json`` (not a run folder, or its
            coordinator never started), or the file was changed after it was written.
    """
    uri = RunLayout(run_dir.rstrip("/")).resolved_config
    try:
        text = location_of(uri).read_bytes(uri).decode()
    except MissingOutput:
        raise ConfigError(
            f"{run_dir} is not a run folder: it has no config.json (written when "
            "snakemake starts the run); name the run's config with --configfile instead"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read {uri}: {exc.strerror or exc}") from None
    try:
        document = json.loads(text)
        raw, recorded = document["config"], document["sha256"]
    except (ValueError, TypeError, KeyError):
        raise ConfigError(
            f"{uri} is not a config the run wrote (not JSON with 'config' and 'sha256')"
        ) from None
    if config_sha256(raw) != recorded:
        raise ConfigError(
            f"{uri} was changed after the run wrote it (its sha256 does not match its "
            "config); name the run's config with --configfile instead"
        )
    return load_config(raw)
