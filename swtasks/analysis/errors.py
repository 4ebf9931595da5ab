"""The user errors of the analysis floor (docs/analysis.md): a bad model list, mode, size, data source or
input file. Each derives from :class:`swtasks.errors.UserError` (the tools print it as one line, exit
status 2) and from the built-in type these functions raised before, so existing ``except`` clauses keep
working; any other exception from an analysis is a bug and keeps its traceback."""

from __future__ import annotations

from swtasks.errors import UserError

__all__ = ["AnalysisError", "AnalysisInputNotFound", "MissingPackageError"]


class AnalysisError(UserError, ValueError):
    """A bad argument of an analysis function or tool: a model list, a mode, a size, an image source."""


class AnalysisInputNotFound(AnalysisError, FileNotFoundError):
    """A file or folder an analysis reads does not exist, or holds nothing it can use."""


class MissingPackageError(UserError, ImportError):
    """An optional package that an analysis needs is not installed; the message says how to install it."""
