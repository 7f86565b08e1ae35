"""The exit codes of ``orchestrator`` besides 0 (argparse itself exits 2 on bad usage)."""

from __future__ import annotations

#: A package error (bad config, missing run, unknown task): one line on stderr.
EXIT_USER_ERROR = 2
#: ``manifest verify`` found a mismatch or a missing file.
EXIT_VERIFY_FAILED = 1
#: The reader of stdout went away (``orchestrator audit | head``): 128 + SIGPIPE, as a shell
#: reports it.
EXIT_BROKEN_PIPE = 141
