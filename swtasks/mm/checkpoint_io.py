"""mmengine Runner checkpoints: written atomically, checked when read.

What mmengine 0.10 does by itself: ``save_checkpoint`` serialises into memory and then writes the bytes
with ``open(path, 'wb')`` (``LocalBackend.put``): a process killed during that write leaves a truncated
``iter_N.pth``. ``CheckpointHook`` writes ``<work_dir>/last_checkpoint`` (the path ``--resume`` picks)
only after the checkpoint itself, so it never names a checkpoint that was not written to the end - but the
file it names could be truncated. Reading, ``torch.load`` does not check the zip members' CRC-32: a
checkpoint with a flipped byte in a tensor loads silently, and a truncated one fails with a miniz error
that does not name the file.

:func:`install` (idempotent; the entry points ``tools/{train,test}_{det,seg}.py`` call it) changes two
things, for local paths only (other backends keep mmengine's behaviour):

- ``mmengine.runner.checkpoint.save_checkpoint`` (and the Runner's reference to it) writes through
  ``swtasks.checkpoint.atomic_torch_save``: a hidden temporary file in the same directory, fsync, ``os.replace``.
  A kill at any moment leaves either the previous state or the complete new file.
- mmengine's checkpoint loaders (``--resume``, ``load_from``, the test tools, mmengine's own
  ``Pretrained`` initialiser, a backbone's ``init_cfg``) read through :func:`swtasks.checkpoint.read_checkpoint`:
  weights-only (plus the plain data types mmengine's checkpoints hold, allowed when ``swtasks.mm`` is
  imported), CRC-checked, a URL (``https://``, ``open-mmlab://``, ``s3://``, ... every remote scheme
  mmengine knows) refused unless the run opted in, and a state dict holding NaN or inf refused. Each
  failure is a :class:`swtasks.checkpoint.CheckpointError` naming the file; the tools print it as one line.

The opt-ins hold for the duration of :func:`checkpoint_loading` (the tools' ``--trust-pickle`` and
``--allow-download``); outside it every read is weights-only and local.
"""

from __future__ import annotations

import contextlib
import os
import os.path as osp
from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch

from swtasks.checkpoint import (
    DOWNLOAD_OPT_IN,
    CheckpointError,
    atomic_torch_save,
    check_finite,
    fetch_remote,
    read_checkpoint,
    verify_checkpoint_file,  # noqa: F401  (re-exported: the check this module's loaders run)
)

__all__ = ["LoadingOptions", "atomic_save_checkpoint", "checkpoint_loading", "install", "loading_options"]


@dataclass(frozen=True)
class LoadingOptions:
    """The user's opt-ins for the checkpoints a Runner reads (from the command line, never from a file)."""

    trust_pickle: bool = False
    allow_download: bool = False


_OPTIONS = LoadingOptions()


def loading_options() -> LoadingOptions:
    """The opt-ins in force (see :func:`checkpoint_loading`)."""
    return _OPTIONS


@contextlib.contextmanager
def checkpoint_loading(trust_pickle: bool = False, allow_download: bool = False):
    """The opt-ins for the checkpoints read inside the block (``--resume``, ``load_from``, test, a backbone's
    ``init_cfg``): default weights-only and local files only. ``trust_pickle=True`` (``--trust-pickle``)
    allows full unpickling, also for torch.load calls of mmengine that do not go through the loaders
    (``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``); ``allow_download=True`` (``--allow-download``) lets an http(s)
    URL be downloaded and then read like a local file."""
    global _OPTIONS
    key = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"
    old_env, old_options = os.environ.get(key), _OPTIONS
    _OPTIONS = replace(_OPTIONS, trust_pickle=trust_pickle, allow_download=allow_download)
    if trust_pickle:
        os.environ[key] = "1"
    try:
        yield _OPTIONS
    finally:
        _OPTIONS = old_options
        if trust_pickle:
            if old_env is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old_env

_ORIGINAL_SAVE = None


def atomic_save_checkpoint(checkpoint, filename, file_client_args=None, backend_args=None):
    """mmengine's ``save_checkpoint``, atomic for local paths (same arguments)."""
    from mmengine.fileio import get_file_backend
    from mmengine.fileio.backends import LocalBackend

    name = str(filename)
    if (
        file_client_args is None
        and not name.startswith("pavi://")
        and isinstance(get_file_backend(name, backend_args=backend_args), LocalBackend)
    ):
        atomic_torch_save(checkpoint, name)
        return
    _ORIGINAL_SAVE(checkpoint, filename, file_client_args=file_client_args, backend_args=backend_args)


def load_from_local(filename, map_location):
    """mmengine's local checkpoint loader, through :func:`swtasks.checkpoint.read_checkpoint` (weights-only
    unless ``--trust-pickle``; CRC-checked; named errors) and refusing non-finite weights (mmengine logs
    the loader's name after its ``load_from_`` prefix: "local")."""
    path = osp.expanduser(str(filename))
    opts = loading_options()
    obj = read_checkpoint(path, trust_pickle=opts.trust_pickle, map_location=map_location,
                          allow_download=opts.allow_download)
    weights = obj.get("state_dict", obj) if isinstance(obj, Mapping) else None
    if isinstance(weights, Mapping):
        check_finite({k: v for k, v in weights.items() if isinstance(v, torch.Tensor)}, path)
    return obj


def require_fit(model, state_dict, source: str) -> None:
    """The checkpoint's model weights must fit ``model`` exactly (mmengine loads with strict=False and only
    logs the differences: a checkpoint of another model would run as a partly random one). The data
    preprocessor's buffers and a DDP ``module.`` prefix are ignored. Raises CheckpointMismatchError naming keys
    (the test tools and tools/infer_*.py)."""
    from swtasks.checkpoint import CheckpointMismatchError, compare_state_dicts, format_mismatch

    sd = state_dict
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    own = {k: v for k, v in model.state_dict().items() if not k.startswith("data_preprocessor.")}
    theirs = {k: v for k, v in sd.items() if not k.startswith("data_preprocessor.")}
    missing, unexpected, mismatched = compare_state_dicts(own, theirs)
    if missing or unexpected or mismatched:
        msg = format_mismatch(f"checkpoint {source}", f"the model of the config ({type(model).__name__})",
                              missing, unexpected, mismatched, limit=5)
        raise CheckpointMismatchError(msg.replace("\n", "; ") + "; was it written by a run of this config?")


def load_from_remote(filename, map_location):
    """Every remote scheme mmengine knows (http(s), open-mmlab, torchvision, mmcls, pavi, s3, ...): refused
    unless ``--allow-download``; then an http(s) URL is downloaded and read like a local file."""
    opts = loading_options()
    if not opts.allow_download:
        raise CheckpointError(
            f"{filename}: a remote checkpoint; the mm tools read local files only unless you opt in with "
            f"{DOWNLOAD_OPT_IN}"
        )
    return load_from_local(fetch_remote(str(filename), allow_download=True), map_location)


def install() -> None:
    """Make mmengine's checkpoint writes atomic and its local reads checked (see the module docstring)."""
    global _ORIGINAL_SAVE
    import mmengine.runner.checkpoint as mm_checkpoint
    import mmengine.runner.runner as mm_runner

    if _ORIGINAL_SAVE is None:
        _ORIGINAL_SAVE = mm_checkpoint.save_checkpoint
    mm_checkpoint.save_checkpoint = atomic_save_checkpoint
    mm_runner.save_checkpoint = atomic_save_checkpoint
    loader = mm_checkpoint.CheckpointLoader
    loader.register_scheme(prefixes="", loader=load_from_local, force=True)
    remote = [p for p in loader._schemes if p and loader._schemes[p] is not load_from_remote]
    if remote:
        loader.register_scheme(prefixes=remote, loader=load_from_remote, force=True)
