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

from ..checkpoint import (
    RECORDED_NOT_TAKEN,
    CheckpointError,
    FileOptionsError,
    architecture_options,
    atomic_torch_save,
    is_remote,
    name_opt_ins,
    read_checkpoint,
    refuse_loading_options,
)
from .errors import DataNotFoundError, InputError

__all__ = ["AtomicCheckpointIO", "model_options_from_file", "read_lightning_checkpoint"]

# how train_cls.py names the opt-ins for --ckpt_path (messages name the options that exist there)
_CKPT_OPT_INS = {"trust": "--trust_pickle true", "download": "--allow_download true"}
_MODULE_CLASS_PATHS = ("swtasks.cls.module.ClassificationModule", "swtasks.cls.ClassificationModule")


def read_lightning_checkpoint(
    path: str | os.PathLike,
    *,
    trust_pickle: bool = False,
    map_location: Any = "cpu",
    allow_download: bool = False,
    opt_ins: dict[str, str] | None = None,
    for_trainer: bool = False,
) -> dict:
    """A Lightning checkpoint, read weights-only; InputError naming the file when it is missing, truncated,
    corrupt, holds untrusted objects, is remote without ``allow_download`` or is no Lightning checkpoint.
    ``opt_ins``: how the calling tool names the opt-ins (default: tools/train_cls.py's ``--trust_pickle
    true`` and ``--allow_download true``; see swtasks.checkpoint.name_opt_ins). ``for_trainer``: the file is
    to be restored by Lightning's trainer (``--ckpt_path``), which needs the training state it records."""
    path = os.fspath(path)
    if not is_remote(path) and not os.path.isfile(path):
        raise DataNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = read_checkpoint(path, trust_pickle=trust_pickle, map_location=map_location,
                               allow_download=allow_download)
    except CheckpointError as e:
        raise InputError(name_opt_ins(str(e), **(_CKPT_OPT_INS if opt_ins is None else opt_ins))) from e
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise InputError(f"{path} is not a Lightning checkpoint (no 'state_dict'); for a weights file use --model.weights")
    if for_trainer and "pytorch-lightning_version" not in ckpt:
        raise InputError(
            f"{path} is a weights file, not a Lightning checkpoint of tools/train_cls.py (no training state to "
            "resume or evaluate); start from its weights with --model.weights"
        )
    return ckpt


def model_options_from_file(hparams: Any, *, source: str) -> dict[str, Any]:
    """The ClassificationModule options recorded in a Lightning checkpoint's ``hyper_parameters``, under the
    one rule for options read from a file (``swtasks.checkpoint.architecture_options``): the backbone is a
    registry name, ``backbone_kwargs`` are architecture options, every value is plain data, and no option
    loads another file or picks code: ``weights`` and ``trust_pickle`` are never taken (a file whose
    ``weights`` names a file is refused, naming it), nor a class path other than ClassificationModule's."""
    if not hparams:
        return {}
    if not isinstance(hparams, dict):
        raise FileOptionsError(f"{source}: hyper_parameters is a {type(hparams).__name__}, not a mapping")
    hp = dict(hparams)
    class_path = hp.pop("_class_path", None)
    if class_path is not None and class_path not in _MODULE_CLASS_PATHS:
        raise FileOptionsError(
            f"{source}: its hyper_parameters name the class {class_path!r}; tools/train_cls.py builds "
            "ClassificationModule only (a file may not pick the code that runs)"
        )
    for k in RECORDED_NOT_TAKEN:  # recorded by every run, never taken
        hp.pop(k, None)
    refuse_loading_options(hp, source=source, field="hyper_parameters")
    hp.pop("weights", None)
    hp["backbone_kwargs"] = architecture_options(
        hp.get("backbone_kwargs"), source=source, field="hyper_parameters['backbone_kwargs']"
    ) or None
    opts = architecture_options(  # the remaining options: plain data, no loading names
        {k: v for k, v in hp.items() if k not in ("backbone", "backbone_kwargs")},
        source=source, field="hyper_parameters",
    )
    return {**opts, **{k: hp[k] for k in ("backbone", "backbone_kwargs") if k in hp}}


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning CheckpointIO writing local checkpoints atomically and reading every checkpoint weights-only:
    a remote one (a URL) only with ``allow_download`` (downloaded first, then read as a local file), full
    unpickling only with ``trust_pickle``."""

    def __init__(self, *, trust_pickle: bool = False, allow_download: bool = False):
        super().__init__()
        self.trust_pickle = trust_pickle
        self.allow_download = allow_download

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
        location = map_location if map_location is not None else (lambda storage, loc: storage)
        # weights_only=False from Lightning's own callers is no opt-in of the user's: only trust_pickle is
        return read_lightning_checkpoint(path, trust_pickle=self.trust_pickle, map_location=location,
                                         allow_download=self.allow_download, for_trainer=True)
