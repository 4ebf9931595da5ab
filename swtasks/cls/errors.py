"""Errors the classification toolkit raises for bad user input (configs, data folders, names).

`tools/train_cls.py` prints these as one clear line instead of a traceback; everything else (bugs)
keeps its traceback.
"""

from __future__ import annotations


class InputError(ValueError):
    """A problem with what the user gave us: a config value, a data folder, a model name."""


class DataNotFoundError(InputError, FileNotFoundError):
    """A data directory or file the configuration points to does not exist."""
