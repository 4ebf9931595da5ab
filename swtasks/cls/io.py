"""Checkpoint files of the Lightning tools: written atomically (a crash or kill while saving never leaves a
truncated ``.ckpt``), read weights-only (``swtasks.checkpoint.read_checkpoint``: a truncated, corrupt or
untrusted file is one error naming it)."""

from __future__ import annotations

import os
from typing import Any

from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ..checkpoint import CheckpointError, atomic_torch_save, read_checkpoint
from .errors import DataNotFoundError, InputError

__all__ = ["AtomicCheckpointIO", "read_lightning_checkpoint"]


def read_lightning_checkpoint(path: str | os.PathLike, *, trust_pickle: bool = False, map_location: Any = "cpu") -> dict:
    """A Lightning checkpoint, read weights-only; InputError naming the file when it is missing, truncated,
    corrupt, holds untrusted objects or is no Lightning checkpoint."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = read_checkpoint(path, trust_pickle=trust_pickle, map_location=map_location)
    except CheckpointError as e:
        raise InputError(str(e)) from e
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise InputError(f"{path} is not a Lightning checkpoint (no 'state_dict'); for a weights file use --model.weights")
    return ckpt


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning CheckpointIO writing local checkpoints atomically and reading them weights-only (remote URLs
    use Lightning's default)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(
                f"`Trainer.save_checkpoint(..., storage_options=...)` with `storage_options` arg is not supported for"
                f" `{self.__class__.__name__}`. Please implement your custom `CheckpointIO` to define how you'd like to"
                " use `storage_options`."
            )
        if not isinstance(get_filesystem(path), LocalFileSystem):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path: _PATH, map_location: Any | None = None, weights_only: bool | None = None) -> dict:
        if not isinstance(get_filesystem(path), LocalFileSystem):
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        location = map_location if map_location is not None else (lambda storage, loc: storage)
        return read_lightning_checkpoint(path, trust_pickle=weights_only is False, map_location=location)
