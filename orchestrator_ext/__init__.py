"""orchestrator_ext: batch orchestration around Snakemake 9.

Modules, one per concept: ``config`` (run configuration), ``layout`` (file layout, merge
tree), ``partition``, ``process``, ``merge``, ``manifest``, ``state`` (task state backends),
``errors`` (categories and classification), ``storage`` (atomic writes, checksums),
``job`` (the job API), ``cli`` (the ``orchestrator`` command), ``jobs`` (example jobs).
"""

__version__ = "0.1.0"
