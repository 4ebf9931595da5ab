"""Errors the classification toolkit raises for bad user input (configs, data folders, names) and for a
training run that cannot go on (a non-finite loss).

`tools/train_cls.py` prints these as one clear line instead of a traceback; everything else (bugs)
keeps its traceback.
"""

from __future__ import annotations

import re

from ..errors import UserError


class InputError(UserError, ValueError):
    """A problem with what the user gave us: a config value, a data folder, a model name."""


class DataNotFoundError(InputError, FileNotFoundError):
    """A data directory or file the configuration points to does not exist."""


class NonFiniteLossError(UserError, FloatingPointError):
    """The training loss became NaN or infinite; ``checkpoint`` names the saved last good state."""

    def __init__(self, message: str, checkpoint: str | None = None):
        super().__init__(message)
        self.checkpoint = checkpoint

    def __str__(self) -> str:
        base = super().__str__()
        return base if not self.checkpoint else f"{base}; the last good state is in {self.checkpoint}"


# every user error of the toolkit (InputError, NonFiniteLossError, the checkpoint and model errors, ...)
USER_ERRORS = (UserError,)

_WORKER = re.compile(r"^Caught \w+ in DataLoader worker process \d+\.\nOriginal Traceback")


def one_line(err: BaseException) -> str:
    """The user-facing message of ``err``. An error raised in a DataLoader worker comes back wrapped in the
    worker's traceback ('Caught InputError in DataLoader worker process 0. Original Traceback ...'): only
    the original message is kept."""
    text = str(err)
    if _WORKER.match(text):
        name = f"{type(err).__module__}.{type(err).__qualname__}: "
        cut = text.rfind("\n" + name)
        if cut >= 0:
            return text[cut + 1 + len(name) :].strip()
        return text.strip().splitlines()[-1]
    return text
