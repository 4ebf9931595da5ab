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
- mmengine's local checkpoint loader (``--resume``, ``load_from``, the test tools, mmengine's own
  ``Pretrained`` initialiser) first runs :func:`swtasks.checkpoint.verify_checkpoint_file`, which
  raises :class:`swtasks.checkpoint.CheckpointError` naming the file for an empty, truncated, non-PyTorch or CRC-corrupt file;
  the tools print it as one line.
"""

from __future__ import annotations

import os.path as osp

from swtasks.checkpoint import atomic_torch_save, verify_checkpoint_file

__all__ = ["atomic_save_checkpoint", "install"]

_ORIGINAL_SAVE = None
_ORIGINAL_LOCAL_LOADER = None


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
    """mmengine's local checkpoint loader after :func:`verify_checkpoint_file` (mmengine logs the loader's
    name after its ``load_from_`` prefix: "local")."""
    path = osp.expanduser(str(filename))
    if osp.isfile(path):
        verify_checkpoint_file(path)
    return _ORIGINAL_LOCAL_LOADER(filename, map_location)


def install() -> None:
    """Make mmengine's checkpoint writes atomic and its local reads checked (see the module docstring)."""
    global _ORIGINAL_SAVE, _ORIGINAL_LOCAL_LOADER
    import mmengine.runner.checkpoint as mm_checkpoint
    import mmengine.runner.runner as mm_runner

    if _ORIGINAL_SAVE is None:
        _ORIGINAL_SAVE = mm_checkpoint.save_checkpoint
        _ORIGINAL_LOCAL_LOADER = mm_checkpoint.CheckpointLoader._schemes[""]
    mm_checkpoint.save_checkpoint = atomic_save_checkpoint
    mm_runner.save_checkpoint = atomic_save_checkpoint
    mm_checkpoint.CheckpointLoader.register_scheme(prefixes="", loader=load_from_local, force=True)
