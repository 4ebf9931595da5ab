"""The one exception type for user errors, at the ground floor so that every floor can raise it.

A :class:`UserError` is a problem with what the user gave: a file, a config value, a data folder, a model
name, a checkpoint that cannot be read or does not fit. The command-line tools print it as one line
``PROG: error: ...`` and exit with status 2 (``SWTASKS_DEBUG=1`` shows its traceback); any other exception
is a bug and keeps its traceback. The specific errors of the toolkit (``CheckpointError``,
``ModelConfigError``, the classification ``InputError``, the mm ``DataCheckError``, ...) derive from it,
next to the built-in type they have always been (``ValueError``, ``RuntimeError``) so existing ``except``
clauses keep working.
"""

from __future__ import annotations

__all__ = ["EXIT_USER_ERROR", "EXIT_PREEMPTED", "UserError"]

#: exit status of a tool stopped by a user error (argparse's own status for bad arguments)
EXIT_USER_ERROR = 2
#: exit status of a training run stopped by SIGTERM after saving a resumable checkpoint (a scheduler's
#: pre-emption or time limit): distinct from success (0), a user error (2) and a crash (1). 143 is what a
#: shell reports for a process killed by SIGTERM (128 + 15), the status schedulers already expect.
EXIT_PREEMPTED = 143


class UserError(Exception):
    """A problem with the user's input; printed as one line by the tools (exit status 2)."""
