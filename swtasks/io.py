"""Atomic file writes (torch and the standard library only): a crash or kill while saving never leaves a
truncated checkpoint behind. Used by every tool and API that writes a checkpoint."""

from __future__ import annotations

import glob
import os
import tempfile
import time
from typing import Any

import torch


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a hidden temporary file in the target directory, flush + fsync, then
    ``os.replace`` onto ``path`` (atomic on POSIX and Windows). On any error the temporary file is
    removed and ``path`` keeps its previous content (or stays absent). A process killed outright
    (SIGKILL, power loss) leaves only its hidden ``.<name>.*.tmp`` file, never a truncated ``path``; the
    next successful save of the same ``path`` deletes such leftovers."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    started = time.time()
    # the temporary name does not end in .ckpt, so "last"/"best" scans never pick it up
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # persist the rename itself
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    _remove_stale_temporaries(path, started)


def _remove_stale_temporaries(path: str, before: float) -> None:
    """Delete temporaries of ``path`` left by saves that were killed (created before this save began)."""
    pattern = os.path.join(
        glob.escape(os.path.dirname(os.path.abspath(path))), f".{glob.escape(os.path.basename(path))}.*.tmp"
    )
    for stale in glob.glob(pattern):
        try:
            if os.path.getmtime(stale) < before:
                os.unlink(stale)
        except OSError:  # already gone, or not ours to delete
            pass
