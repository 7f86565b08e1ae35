"""The one error of ``orchestrator cost``."""

from __future__ import annotations

from orchestrator_ext.errors import OrchestratorError


class CostError(OrchestratorError):
    """Raised when a cost estimate lacks an input (item count, a readable price file)."""
