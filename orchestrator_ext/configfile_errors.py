"""A config file that is not valid YAML is reported with its name and line.

Snakemake reads ``--configfile`` before it parses the Snakefile, and on a YAML syntax error
says only "Config file is not valid JSON or YAML" (``snakemake.common.configfile``): neither
the file nor the line. Snakemake imports every installed executor plugin while it builds its
argument parser, before it reads config files, so our executor plugins call ``install()``
on import: it wraps the loader Snakemake's settings use and, when that loader refuses a file,
reads the file again with ``config.read_config_file`` for a message naming file, line and
column. A file Snakemake accepts is loaded by Snakemake's own code, unchanged.
"""

from __future__ import annotations

from typing import Any


def install() -> bool:
    """Wrap ``snakemake.settings.types.load_configfile`` (once); return True if wrapped now."""
    from snakemake.settings import types

    original = types.load_configfile
    if getattr(original, "names_the_file", False):
        return False

    def load_configfile(path: Any) -> Any:
        from snakemake_interface_common.exceptions import WorkflowError

        from orchestrator_ext.config import read_config_file
        from orchestrator_ext.errors import ConfigError

        try:
            return original(path)
        except WorkflowError:
            try:
                read_config_file(path)
            except ConfigError as exc:
                # lineno/snakefile: Snakemake prints them as where the error is (the file
                # and line of the YAML problem), instead of this frame.
                line = getattr(exc.__context__, "problem_mark", None)
                raise WorkflowError(
                    str(exc), snakefile=str(path), lineno=line.line + 1 if line else None
                ) from None
            raise

    load_configfile.names_the_file = True  # type: ignore[attr-defined]
    types.load_configfile = load_configfile
    return True
