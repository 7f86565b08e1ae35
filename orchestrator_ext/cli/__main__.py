"""``python -m orchestrator_ext.cli``: the ``orchestrator`` command, for an environment whose
scripts are not on ``PATH``."""

import sys

from orchestrator_ext.cli import main

sys.exit(main())
