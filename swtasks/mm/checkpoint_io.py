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
  ``swtasks.io.atomic_torch_save``: a hidden temporary file in the same directory, fsync, ``os.replace``.
  A kill at any moment leaves either the previous state or the complete new file.
- mmengine's local checkpoint loader (``--resume``, ``load_from``, the test tools, mmengine's own
  ``Pretrained`` initialiser) first runs :func:`verify_checkpoint_file`, which raises
  :class:`CheckpointFileError` naming the file for an empty, truncated, non-PyTorch or CRC-corrupt file;
  the tools print it as one line.
"""

from __future__ import annotations

import os
import os.path as osp
import zipfile

from swtasks.io import atomic_torch_save

__all__ = ["CheckpointFileError", "atomic_save_checkpoint", "install", "verify_checkpoint_file"]

_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = b"\x80"  # torch's legacy (non-zip) format starts with a pickle protocol opcode


class CheckpointFileError(RuntimeError):
    """A checkpoint file that cannot be what it claims (empty, truncated, corrupt); names the file."""


def verify_checkpoint_file(path: str | os.PathLike) -> None:
    """Raise :class:`CheckpointFileError` naming ``path`` unless it is a complete PyTorch checkpoint.

    The zip format (every ``torch.save`` since 1.6) is checked completely: the central directory (absent
    from a truncated file) and the CRC-32 of every member (``torch.load`` skips it), at the cost of one
    read of the file. A legacy-format file is only checked for its first byte.
    """
    path = os.fspath(path)
    hint = "it was probably written by a process that was killed, or damaged in a copy"
    try:
        size = osp.getsize(path)
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise CheckpointFileError(f"{path}: cannot read the checkpoint ({e.strerror})") from None
    if size == 0:
        raise CheckpointFileError(f"{path}: the checkpoint is an empty file (0 bytes); {hint}")
    if head == _ZIP_MAGIC:
        try:
            with zipfile.ZipFile(path) as zf:
                bad = zf.testzip()
        except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
            raise CheckpointFileError(
                f"{path}: truncated or corrupt checkpoint ({size} bytes; {e}); {hint}"
            ) from None
        if bad is not None:
            raise CheckpointFileError(
                f"{path}: corrupt checkpoint: its member {bad!r} fails the CRC-32 check; {hint}"
            )
    elif not head.startswith(_PICKLE_PROTO):
        raise CheckpointFileError(
            f"{path}: not a PyTorch checkpoint (the file starts with {head!r}, neither a zip archive nor a "
            "pickle)"
        )


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
