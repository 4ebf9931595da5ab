"""Weights files: reading, extracting, selecting, comparing, reporting, writing. One home for every floor.

torch and the standard library only (safetensors when a ``.safetensors`` file is read or written), so the
model registry, the converters, the Lightning tools and the MMDetection/MMSegmentation loader all call the
same functions and accept the same files in the same way:

- :func:`read_checkpoint` unpickles *weights only*: tensors, containers, numbers, strings and a short
  allow-list of globals (:func:`allow_globals`; ``swtasks.mm`` adds the few types mmengine's own
  checkpoints hold). A file that needs anything else is refused with a message naming the file and the
  explicit opt-in (``trust_pickle=True``, ``--trust-pickle`` on the command line). A truncated or corrupt
  file is reported as such, with its name.
- :func:`extract_state_dict` finds the tensors inside the usual containers (``state_dict``, ``model``,
  ``model_ema``, ``module``, ...); :func:`select_weights` strips wrapper prefixes (``module.``,
  ``_orig_mod.``) and picks the keys that belong to a model (an explicit ``prefix`` such as ``backbone.``,
  or the prefix under which the checkpoint fits the model best).
- :func:`load_into` does all of it for a model, applies the model family's *checkpoint adapter* (a foreign
  layout converted, keys a file may lack, hints for the error message; the family registers it with
  ``swtasks.models.registry.register_family`` and ``create_model`` attaches it to the model as
  ``model.checkpoint_adapter``: this floor never looks anything up in the registry above it), compares, and either loads or raises
  :class:`CheckpointMismatchError` listing the missing, unexpected and mis-shaped keys.
- :func:`save_weights` writes the one file format of this toolkit, ``{"state_dict": ..., "meta": ...}``,
  atomically (converters, exports and re-parameterisations all write it); a ``.safetensors`` path gets the
  same content as safetensors (the tensors, and ``meta`` as JSON in the string metadata).

The one non-obvious decision: prefix selection is a *hint* plus detection, not an exact filter, because
the same backbone weights travel under ``backbone.`` (exports, detectors), ``model.`` or no prefix (plain
state dicts), ``ema.module.`` (EMA weights in a Lightning checkpoint) and behind ``module.`` (DDP).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import os.path as osp
import pickle
import re
import tempfile
import time
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from swtasks.errors import UserError

__all__ = [
    "DOWNLOAD_OPT_IN",
    "TRUST_OPT_IN",
    "LOADING_OPTIONS",
    "CheckpointAdapter",
    "CheckpointNotFoundError",
    "FileOptionsError",
    "NonFiniteWeightsError",
    "architecture_options",
    "check_finite",
    "download_dir",
    "name_opt_ins",
    "RECORDED_NOT_TAKEN",
    "refuse_loading_options",
    "fetch_remote",
    "file_num_classes",
    "is_loading_option",
    "is_remote",
    "CheckpointError",
    "CheckpointMismatchError",
    "LoadReport",
    "adapter_of",
    "allow_globals",
    "classifier_classes",
    "classifier_name",
    "atomic_torch_save",
    "compare_state_dicts",
    "extract_state_dict",
    "format_mismatch",
    "load_into",
    "meta_of",
    "load_state_dict",
    "read_checkpoint",
    "save_weights",
    "verify_checkpoint_file",
    "select_weights",
]

# Containers that hold a state dict, tried in this order.
CONTAINER_KEYS = ("state_dict", "model", "model_ema", "module", "model_state", "model_state_dict", "net")
# Prefixes that wrap a whole model (DDP, torch.compile); stripped when every key carries them.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Classifier keys a features-only model does not have (ignored when the model has no such module).
CLASSIFIER_ROOTS = ("head", "norm", "fc", "classifier", "head_drop")
_OUT_NORM = re.compile(r"^norm\d+\.")
_ST_EXTRA = "the safetensors package: pip install safetensors (part of the swtasks[export] extra)"


class CheckpointError(UserError, RuntimeError):
    """A file that cannot be read as weights: missing, truncated, corrupt, or holding Python objects
    beyond the allow-list. The message names the file."""


class CheckpointMismatchError(UserError, RuntimeError):
    """A checkpoint does not fit the model: lists the missing, unexpected and mis-shaped keys."""


class CheckpointConversionError(CheckpointMismatchError, ValueError):
    """A family's adapter refused to convert a file from its published layout (its documented ValueError)."""


class NonFiniteWeightsError(CheckpointError):
    """A weights file whose tensors hold NaN or infinite values (a diverged run's, or a damaged file): no
    loader that trains, evaluates or exports from it accepts it. The message names the file and the keys."""


class FileOptionsError(CheckpointError):
    """A file records options that a file may not set (how another file is loaded, code to run): refused."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint path that names no file."""


# ------------------------------------------------------------------------------------------------------
# remote files: refused unless the user opts in, then downloaded and read like a local file
# ------------------------------------------------------------------------------------------------------

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
#: the opt-ins, as the library and most command-line tools name them (see :func:`name_opt_ins`)
DOWNLOAD_OPT_IN = "allow_download=True (command line: --allow-download)"
TRUST_OPT_IN = "trust_pickle=True (command line: --trust-pickle)"


def name_opt_ins(text: str, *, trust: str | None = None, download: str | None = None) -> str:
    """``text`` (a CheckpointError's message) with the opt-ins named as the calling tool names them (e.g.
    ``--model.trust_pickle true`` in tools/train_cls.py): every message names an option that exists."""
    if trust:
        text = text.replace(TRUST_OPT_IN, trust)
    if download:
        text = text.replace(DOWNLOAD_OPT_IN, download)
    return text


def is_remote(path: Any) -> bool:
    """Whether ``path`` is a URL (``https://``, ``s3://``, ``open-mmlab://``, ... anything with a scheme,
    ``file://`` included) rather than a local path."""
    return isinstance(path, (str, os.PathLike)) and bool(_SCHEME.match(os.fspath(path)))


def download_dir() -> str:
    """Where :func:`fetch_remote` keeps downloads: ``$SWTASKS_CACHE/downloads`` (default
    ``~/.cache/swtasks/downloads``)."""
    root = os.environ.get("SWTASKS_CACHE") or osp.join(
        os.environ.get("XDG_CACHE_HOME") or osp.join(osp.expanduser("~"), ".cache"), "swtasks"
    )
    return osp.join(root, "downloads")


def fetch_remote(url: str, *, allow_download: bool = False, timeout: float = 60.0) -> str:
    """The local file for checkpoint URL ``url``: refused (CheckpointError naming the URL and the opt-in)
    unless ``allow_download``; then an ``http(s)://`` URL is downloaded once into :func:`download_dir`
    (atomically; the name keeps the URL's file name after a hash of the URL) and the local path returned,
    to be read weights-only like any local file. Other schemes (``s3://``, ``open-mmlab://``, ...) are
    refused with a hint to fetch the file by their own tools."""
    url = os.fspath(url)
    if not allow_download:
        raise CheckpointError(
            f"{url}: a remote checkpoint; swtasks reads local files only unless you opt in with "
            f"{DOWNLOAD_OPT_IN}, which downloads it to {download_dir()} and reads it weights-only"
        )
    if not url.lower().startswith(("http://", "https://")):
        raise CheckpointError(
            f"{url}: only http(s) URLs can be downloaded; fetch the file with its own tools and pass the local path"
        )
    import hashlib
    import urllib.parse
    import urllib.request

    name = osp.basename(urllib.parse.urlparse(url).path) or "checkpoint"
    name = re.sub(r"[^\w.+-]", "_", name)[-100:]
    local = osp.join(download_dir(), f"{hashlib.sha256(url.encode()).hexdigest()[:16]}-{name}")
    if osp.isfile(local):
        return local

    def write(f):
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (opted in)
                while chunk := response.read(1 << 20):
                    f.write(chunk)
        except OSError as e:  # URLError, HTTPError, timeouts
            raise CheckpointError(f"{url}: download failed: {getattr(e, 'reason', None) or e}") from None

    _atomic_write(local, write)
    return local


# ------------------------------------------------------------------------------------------------------
# options recorded in a file: architecture only
# ------------------------------------------------------------------------------------------------------

#: options that decide what is loaded or how, or which code runs: never taken from a file's meta or
#: hyper-parameters (a file could otherwise switch on the opt-in for another file)
LOADING_OPTIONS = frozenset({
    "allow_download", "backbone", "checkpoint", "checkpoint_path", "class_path", "_class_path", "init_cfg",
    "_instantiator", "pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "trust_pickle", "weights",
})
#: loading options a Lightning checkpoint records in every file and that are dropped unread: the opt-ins (inert
#: without a file to load) and LightningCLI's own ``_instantiator`` (nothing here instantiates from a file)
RECORDED_NOT_TAKEN = ("trust_pickle", "allow_download", "_instantiator")
# words that mark an option as a path, a location or a loading switch (an option name's words are the parts
# between underscores: `checkpoint_path`, `weights_file`, `pretrained`; not `weight_decay`, `num_classes`)
_LOADING_WORDS = frozenset({
    "cache", "checkpoint", "ckpt", "dir", "directory", "dirs", "download", "file", "filename", "files",
    "import", "imports", "load", "path", "paths", "pickle", "pretrained", "root", "uri", "url", "urls", "weights",
})


def is_loading_option(name: str) -> bool:
    """Whether an option name is a loading option or names a path, a file, a URL, a checkpoint, weights,
    pickling or a cache: such options are never recorded in, nor taken from, a file."""
    words = name.lower().replace("drop_path", "droppath").strip("_").split("_")  # stochastic depth: no path
    return name in LOADING_OPTIONS or bool(_LOADING_WORDS.intersection(words))


_loading_name = is_loading_option
_PLAIN = (bool, int, float, str, type(None))


def _plain(value: Any, depth: int = 0) -> bool:
    if isinstance(value, _PLAIN):
        return not (isinstance(value, str) and (len(value) > 4096 or is_remote(value)))
    if depth > 4:
        return False
    if isinstance(value, (list, tuple)):
        return len(value) <= 64 and all(_plain(v, depth + 1) for v in value)
    if isinstance(value, Mapping):
        return len(value) <= 64 and all(
            isinstance(k, str) and not _loading_name(k) and _plain(v, depth + 1)
            for k, v in value.items()
        )
    return False


def architecture_options(options: Any, *, source: str, field: str = "meta['overrides']") -> dict[str, Any]:
    """The architecture options a file records (its ``meta['overrides']``, a Lightning checkpoint's
    ``backbone_kwargs``), checked against the one rule for options read from a file.

    Allowed: option names that are identifiers, none of :data:`LOADING_OPTIONS` and none naming a path, a
    file, a URL, a checkpoint, weights, pickling or loading; values of plain data (numbers, booleans, short
    strings that are not URLs, and lists/tuples/dicts of those). Whether the model accepts a name is then
    checked by the model itself (``create_model`` names unknown overrides). Anything else is refused
    with one :class:`FileOptionsError` naming the file, the field and every refused option: nothing read
    from a file may decide how another file is loaded.
    """
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise FileOptionsError(f"{source}: {field} is a {type(options).__name__}, not a mapping of options")
    refused = sorted(
        str(k) for k, v in options.items()
        if not (isinstance(k, str) and k.isidentifier()) or _loading_name(k) or not _plain(v)
    )
    if refused:
        raise FileOptionsError(
            f"{source}: its {field} carry options that a file may not set: {', '.join(refused)} (a file may "
            "record architecture options only; loading options come from the command line); nothing was loaded"
        )
    return dict(options)


def refuse_loading_options(options: Mapping, *, source: str, field: str) -> None:
    """Refuse (FileOptionsError naming them) the :data:`LOADING_OPTIONS` that ``options`` (a Lightning
    checkpoint's ``hyper_parameters``, a file's ``meta``) set to anything but an inert value (None, False,
    empty): a file may record that a run once loaded a file, never make this run load one. ``backbone``
    must be a name (a string), not something to build. Callers take the options they need afterwards and
    never the loading ones."""
    refused = sorted(
        k for k, v in options.items()
        if k in LOADING_OPTIONS and k != "backbone" and v not in (None, False, "")
    )
    if "backbone" in options and not isinstance(options["backbone"], (str, type(None))):
        refused.append("backbone (not a registry name)")
    if refused:
        raise FileOptionsError(
            f"{source}: its {field} carry options that a file may not set: {', '.join(refused)} (a checkpoint "
            "records the model, not what to load or run); nothing was loaded"
        )


def file_num_classes(value: Any, *, source: str, field: str = "meta['num_classes']") -> int | None:
    """A class count recorded in a file: None, or an integer in [0, 1_000_000] (else FileOptionsError)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 1_000_000:
        raise FileOptionsError(f"{source}: {field} is {value!r}, not a class count")
    return int(value)


# ------------------------------------------------------------------------------------------------------
# numerical health
# ------------------------------------------------------------------------------------------------------


def check_finite(state_dict: Mapping[str, Any], source: str, limit: int = 5) -> None:
    """Raise :class:`NonFiniteWeightsError` naming ``source`` and the tensors that hold NaN or infinite
    values (how many of each, the first ``limit`` keys)."""
    bad = []
    for k, v in state_dict.items():
        if isinstance(v, torch.Tensor) and (v.is_floating_point() or v.is_complex()) and v.numel():
            finite = torch.isfinite(v)
            if not bool(finite.all()):
                n_nan = int(torch.isnan(v).sum())
                n_inf = int((~finite).sum()) - n_nan
                what = ", ".join(p for p in (f"{n_nan} NaN" if n_nan else "", f"{n_inf} inf" if n_inf else "") if p)
                bad.append(f"{k} ({what} of {v.numel()})")
    if bad:
        shown = ", ".join(bad[:limit]) + (f", ... ({len(bad) - limit} more tensors)" if len(bad) > limit else "")
        raise NonFiniteWeightsError(
            f"{source}: non-finite weights (NaN or inf) in {len(bad)} tensor{'s' if len(bad) > 1 else ''}: "
            f"{shown}; the file is from a diverged run or damaged: use an earlier checkpoint"
        )


# ------------------------------------------------------------------------------------------------------
# reading
# ------------------------------------------------------------------------------------------------------

def allow_globals(*objects: Any) -> None:
    """Add classes/functions (or ``(function, "qualified.name")`` pairs) that weights-only reading may
    reconstruct, for every later ``torch.load(weights_only=True)`` of the process (torch's own allow-list).
    Use for plain data types a trusted framework writes into its own checkpoints, never for arbitrary code."""
    torch.serialization.add_safe_globals(list(objects))


# argparse.Namespace: the published shift-wise (and ConvNeXt-style) checkpoints pickle their `args`.
allow_globals(argparse.Namespace)


_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = b"\x80"  # torch's legacy (non-zip) format starts with a pickle protocol opcode


def verify_checkpoint_file(path: str | os.PathLike) -> None:
    """Raise :class:`CheckpointError` naming ``path`` unless it is a complete PyTorch checkpoint.

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
        raise CheckpointError(f"{path}: cannot read the checkpoint ({e.strerror})") from None
    if size == 0:
        raise CheckpointError(f"{path}: the checkpoint is an empty file (0 bytes); {hint}")
    if head == _ZIP_MAGIC:
        try:
            with zipfile.ZipFile(path) as zf:
                bad = zf.testzip()
        except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
            raise CheckpointError(
                f"{path}: truncated or corrupt checkpoint ({size} bytes; {e}); {hint}"
            ) from None
        if bad is not None:
            raise CheckpointError(
                f"{path}: corrupt checkpoint: its member {bad!r} fails the CRC-32 check; {hint}"
            )
    elif not head.startswith(_PICKLE_PROTO):
        raise CheckpointError(
            f"{path}: not a PyTorch checkpoint (the file starts with {head!r}, neither a zip archive nor a "
            "pickle)"
        )


def read_checkpoint(
    path: str | os.PathLike,
    *,
    trust_pickle: bool = False,
    map_location: Any = "cpu",
    allow_download: bool = False,
    trust_option: str = TRUST_OPT_IN,
) -> Any:
    """Load a weights file on ``map_location`` (default CPU), weights-only unless ``trust_pickle``.

    ``.safetensors`` files come back as ``{"state_dict": tensors, "meta": dict}``. A path is a local file:
    a URL (anything with a scheme, ``https://``, ``s3://``, ``open-mmlab://``, ...) is refused unless
    ``allow_download`` (see :func:`fetch_remote`), and then downloaded to a local file that is read like
    any other (weights-only unless ``trust_pickle``). Raises :class:`CheckpointNotFoundError` (a
    FileNotFoundError) for a missing file and CheckpointError for a truncated/corrupt file or one that
    holds objects outside the allow-list (the message names the file, the refused global and the opt-in,
    ``trust_option``: the name the calling tool gives it).
    """
    path = os.fspath(path)
    if is_remote(path):
        path = fetch_remote(path, allow_download=allow_download)
    if not os.path.isfile(path):
        raise CheckpointNotFoundError(f"checkpoint file not found: {path}")
    if path.endswith(".safetensors"):
        return _read_safetensors(path, map_location)
    verify_checkpoint_file(path)  # torch.load checks no CRC: a flipped byte would load silently
    try:
        if trust_pickle:
            return torch.load(path, map_location=map_location, weights_only=False)
        return torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, AttributeError, TypeError,
            ValueError, ImportError, KeyError, IndexError, UnicodeDecodeError) as err:
        if not trust_pickle and _is_weights_only_refusal(err):
            raise CheckpointError(
                f"{path}: holds Python objects that a weights-only load refuses ({_refused_global(err)}); "
                f"loading it would run code from the file. Only if you trust the file: {trust_option}"
            ) from err
        if not trust_pickle and _unsupported_opcode(err):
            raise CheckpointError(
                f"{path}: not a readable checkpoint: it holds a pickle instruction (opcode "
                f"{_unsupported_opcode(err)}) that a weights-only load does not run: a truncated or corrupt file, "
                f"or one written to run code when loaded. Only if you trust the file: {trust_option}"
            ) from err
        raise CheckpointError(
            f"{path}: not a readable checkpoint (truncated, corrupt or not a PyTorch file?): {_reason(err)}"
        ) from err


def _is_weights_only_refusal(err: BaseException) -> bool:
    """Whether ``torch.load(weights_only=True)`` refused the file for what it would construct or call,
    whatever torch's wording and case ("Unsupported global: GLOBAL posix.system", "Trying to call reduce for
    unrecognized function", ...). A pickle opcode the weights-only unpickler does not know ("Unsupported
    operand") is not counted: garbage bytes give it too (see :func:`_unsupported_opcode`)."""
    text = str(err).lower()
    return any(w in text for w in ("unsupported global", "unrecognized function", "trying to call", "not an allowed global"))


def _unsupported_opcode(err: BaseException) -> str | None:
    m = re.search(r"unsupported operand (\S+)", str(err), re.IGNORECASE)
    return m.group(1) if m else None


def _reason(err: BaseException) -> str:
    m = re.search(r"WeightsUnpickler error:\s*([^\n]+(?:\n\n[^\n]+)?)", str(err))
    return " ".join(m.group(1).split()) if m else f"{type(err).__name__}: {_first_line(err)}"


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _refused_global(err: BaseException) -> str:
    text = str(err)
    m = re.search(r"GLOBAL ([\w.]+)", text, re.IGNORECASE)
    if m:
        return f"global {m.group(1)}"
    m = re.search(r"(?:function|callable|global)\s*[:=]?\s*<?([\w.]+\.[\w]+)", text, re.IGNORECASE)
    if m:
        return f"global {m.group(1)}"
    m = re.search(r"WeightsUnpickler error: ([^\n]+)", text)
    return m.group(1).strip() if m else _first_line(err)


def _read_safetensors(path: str, map_location: Any) -> dict:
    try:
        from safetensors import safe_open
    except ImportError as e:  # an optional dependency
        raise CheckpointError(f"{path}: reading .safetensors files needs {_ST_EXTRA}") from e
    # a device name or torch.device opens the tensors there; other map_locations (functions, dicts: the
    # remapping forms of torch.load) have no safetensors equivalent, so the tensors are read on the CPU
    device = str(map_location) if isinstance(map_location, (str, torch.device)) else "cpu"
    try:
        with safe_open(path, framework="pt", device=device) as f:
            sd = {k: f.get_tensor(k) for k in f.keys()}
            metadata = f.metadata() or {}
    except Exception as err:  # safetensors raises its own error types for bad headers
        raise CheckpointError(f"{path}: not a readable safetensors file: {_first_line(err)}") from err
    meta = metadata.get("meta")
    try:
        meta = json.loads(meta) if meta else {}
    except ValueError as err:
        raise CheckpointError(f"{path}: the 'meta' string metadata is not JSON: {err}") from err
    return {"state_dict": sd, "meta": meta}


# ------------------------------------------------------------------------------------------------------
# extracting and selecting
# ------------------------------------------------------------------------------------------------------


def _tensor_mapping(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def extract_state_dict(obj: Any, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The tensors of a loaded checkpoint: a plain state dict, or one under ``state_dict`` / ``model`` /
    ``model_ema`` / ``module`` / ... (Lightning, mmengine, ConvNeXt-style, this toolkit's files). Keys are
    returned unchanged (see :func:`select_weights` for prefixes)."""
    if isinstance(obj, nn.Module):
        return dict(obj.state_dict())
    if _tensor_mapping(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in CONTAINER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                tensors = {k: v for k, v in inner.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
                if tensors and len(tensors) >= len(inner) / 2:
                    return tensors
        tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
        if tensors and len(tensors) >= len(obj) / 2:
            return tensors
        top = ", ".join(repr(k) for k in list(obj)[:8])
        raise CheckpointMismatchError(
            f"{source}: no state dict found (looked for a mapping of tensors at the top level and under "
            f"{', '.join(repr(k) for k in CONTAINER_KEYS)}); top-level keys: {top}"
        )
    raise CheckpointMismatchError(f"{source}: expected a dict of tensors, got {type(obj).__name__}")


def load_state_dict(path: str | os.PathLike, *, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """:func:`read_checkpoint` + :func:`extract_state_dict` (keys unchanged)."""
    return extract_state_dict(read_checkpoint(path, trust_pickle=trust_pickle), source=os.fspath(path))


def classifier_name(model: nn.Module) -> str | None:
    """The module name of ``model.get_classifier()``: the part of a checkpoint that may differ between a
    pre-training run and a fine-tuning one. None for a model without get_classifier, a features_only model,
    or a classifier that is not a named submodule."""
    get = getattr(model, "get_classifier", None)
    if not callable(get) or getattr(model, "features_only", False):
        return None
    clf = get()
    if not isinstance(clf, nn.Module):
        return None
    return next((name for name, module in model.named_modules() if module is clf and name), None)


def classifier_classes(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint") -> int | None:
    """The class count of the classifier that ``state_dict`` holds for ``model``'s architecture (the first
    dimension of its ``<classifier>.weight``), or None when the model has no classifier or the file none."""
    clf = classifier_name(model)
    if not clf:
        return None
    try:
        weights, _ = select_weights(state_dict, model.state_dict().keys(), source=source)
    except CheckpointMismatchError:
        return None
    w = weights.get(f"{clf}.weight")
    return int(w.shape[0]) if isinstance(w, torch.Tensor) and w.dim() >= 1 else None


def meta_of(obj: Any) -> dict:
    """The ``meta`` dict of a loaded file written by :func:`save_weights` ({} for other files)."""
    meta = obj.get("meta") if isinstance(obj, Mapping) else None
    return dict(meta) if isinstance(meta, Mapping) else {}


def read_meta(path: str | os.PathLike, *, trust_pickle: bool = False) -> dict:
    """The ``meta`` dict of a file written by :func:`save_weights` ({} for other files)."""
    return meta_of(read_checkpoint(path, trust_pickle=trust_pickle))


def _strip_wrappers(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    changed = True
    while changed and sd:
        changed = False
        for w in WRAPPER_PREFIXES:
            if all(k.startswith(w) for k in sd):
                sd = {k[len(w) :]: v for k, v in sd.items()}
                changed = True
    return sd


def _under(sd: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def detect_prefix(sd: Mapping[str, torch.Tensor], model_keys: Iterable[str]) -> tuple[str, int]:
    """The prefix p maximising the number of model keys k with p + k in ``sd`` (ties: the shortest);
    when no key matches exactly, the prefix under which most keys share a model key's first component."""
    model_keys = set(model_keys)
    roots = {k.split(".", 1)[0] for k in model_keys}
    exact: Counter[str] = Counter()
    rooted: Counter[str] = Counter()
    for key in sd:
        cut = 0
        while True:
            rest = key[cut:]
            if rest in model_keys:
                exact[key[:cut]] += 1
            if rest.split(".", 1)[0] in roots and "." in rest:
                rooted[key[:cut]] += 1
            nxt = key.find(".", cut)
            if nxt < 0:
                break
            cut = nxt + 1
    counts = exact or rooted
    if not counts:
        return "", 0
    return max(counts.items(), key=lambda kv: (kv[1], -len(kv[0])))


def select_weights(
    sd: Mapping[str, torch.Tensor],
    model_keys: Iterable[str],
    prefix: str | None = None,
    source: str = "checkpoint",
) -> tuple[dict[str, torch.Tensor], str]:
    """The keys of ``sd`` that belong to a model with ``model_keys``, prefix removed; returns (weights, how).

    Wrapper prefixes on every key (``module.``, ``_orig_mod.``) are stripped first. ``prefix`` given: the
    keys under it, also behind an outer wrapper (``model.backbone.`` for ``backbone.``); otherwise, or when
    the detected prefix fits clearly more keys, the detected one. Raises CheckpointMismatchError naming the
    prefix and example keys when nothing fits.
    """
    model_keys = set(model_keys)
    sd = _strip_wrappers(dict(sd))

    def score(d):
        return sum(k in model_keys for k in d)

    candidates: list[tuple[dict, str]] = []
    if prefix:
        under = _under(sd, prefix)
        if under:
            candidates.append((under, f"keys under prefix {prefix!r}"))
        else:
            lead = Counter(
                k[: k.find(prefix)] for k in sd if k.find(prefix) > 0 and k[k.find(prefix) - 1] == "."
            )
            if lead:
                outer = lead.most_common(1)[0][0]
                candidates.append((_under(sd, outer + prefix), f"keys under prefix {outer + prefix!r}"))
    auto, hits = detect_prefix(sd, model_keys)
    if hits:
        candidates.append((_under(sd, auto) if auto else dict(sd), f"keys under detected prefix {auto!r}"))
    if not candidates:
        sample = ", ".join(repr(k) for k in list(sd)[:6])
        want = ", ".join(repr(k) for k in sorted(model_keys)[:3])
        hint = f" under prefix {prefix!r}" if prefix else ""
        raise CheckpointMismatchError(
            f"{source}: no key fits the model{hint}: checkpoint keys look like {sample} "
            f"(the model expects keys like {want})"
        )
    best = max(candidates, key=lambda c: score(c[0]))
    if prefix and candidates[0][1].startswith("keys under prefix") and score(candidates[0][0]) >= score(best[0]):
        best = candidates[0]
    return best


# ------------------------------------------------------------------------------------------------------
# comparing and loading
# ------------------------------------------------------------------------------------------------------


@dataclass
class CheckpointAdapter:
    """What a model family knows about weights files (registered with the family; see
    ``swtasks.models.registry.register_family``).

    detect(state_dict) -> bool: whether a state dict is in the family's published (foreign) layout.
    convert(state_dict, model) -> state_dict: that layout turned into this toolkit's for ``model``; keys it
        does not know pass through, so the comparison reports them.
    optional(key) -> bool: model keys a file may lack (e.g. buffers the layer regenerates).
    extra(key) -> bool: file keys the model may lack but that load anyway (e.g. sparsity masks).
    hints(state_dict, model_state, mismatched) -> list[str]: extra lines for a mismatch message.
    source: the name of the published layout for ``tools/convert_checkpoint.py --source``.
    """

    detect: Callable[[Mapping], bool] | None = None
    convert: Callable[[dict, nn.Module], dict] | None = None
    optional: Callable[[str], bool] | None = None
    extra: Callable[[str], bool] | None = None
    hints: Callable[[Mapping, Mapping, list], list[str]] | None = None
    source: str | None = None


@dataclass
class LoadReport:
    source: str
    selected: str
    loaded: int
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    converted: bool = False

    @property
    def fits(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)


def compare_state_dicts(
    model_sd: Mapping[str, torch.Tensor],
    ckpt_sd: Mapping[str, torch.Tensor],
    *,
    optional: Callable[[str], bool] | None = None,
    extra: Callable[[str], bool] | None = None,
) -> tuple[list[str], list[str], list[tuple[str, tuple, tuple]]]:
    """(missing, unexpected, mis-shaped) keys of ``ckpt_sd`` against ``model_sd``. ``num_batches_tracked``
    and keys accepted by ``optional`` may be missing; keys accepted by ``extra`` may be unexpected."""
    missing = [
        k
        for k in model_sd
        if k not in ckpt_sd and not k.endswith("num_batches_tracked") and not (optional and optional(k))
    ]
    unexpected = [k for k in ckpt_sd if k not in model_sd and not (extra and extra(k))]
    mismatched = [
        (k, tuple(ckpt_sd[k].shape), tuple(model_sd[k].shape))
        for k in model_sd
        if k in ckpt_sd and tuple(ckpt_sd[k].shape) != tuple(model_sd[k].shape)
    ]
    return missing, unexpected, mismatched


def _fmt(keys: list[str], limit: int) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def format_mismatch(source: str, target: str, missing, unexpected, mismatched, limit: int = 20) -> str:
    lines = [f"{source} does not fit {target}:"]
    if missing:
        lines.append(f"  missing keys ({len(missing)}): {_fmt(list(missing), limit)}")
    if unexpected:
        lines.append(f"  unexpected keys ({len(unexpected)}): {_fmt(list(unexpected), limit)}")
    if mismatched:
        rows = [f"{k} (checkpoint {s}, model {m})" for k, s, m in mismatched]
        lines.append(f"  mis-shaped keys ({len(rows)}): {_fmt(rows, limit)}")
    return "\n".join(lines)


def adapter_of(model: nn.Module) -> CheckpointAdapter | None:
    """The checkpoint adapter a model carries (``create_model`` attaches its family's as
    ``model.checkpoint_adapter``), or None."""
    adapter = getattr(model, "checkpoint_adapter", None)
    return adapter if isinstance(adapter, CheckpointAdapter) else None


def load_into(
    model: nn.Module,
    checkpoint: str | os.PathLike | Mapping[str, Any],
    *,
    prefix: str | None = None,
    strict: bool = True,
    exclude: Iterable[str] = (),
    adapter: CheckpointAdapter | None = None,
    trust_pickle: bool = False,
    source: str | None = None,
    allow_download: bool = False,
    allow_nonfinite: bool = False,
) -> LoadReport:
    """Load a weights file (or a loaded checkpoint / state dict) into ``model``; return a LoadReport.

    Steps: read (weights-only unless ``trust_pickle``), extract, select the model's keys (``prefix`` as a
    hint, see :func:`select_weights`), convert a foreign layout with the family's adapter (by default the
    one registered for ``model.pretrained_cfg['architecture']``), compare, load. Not counted as
    mismatches: classifier keys (``head.*``, ``norm.*``, ``fc.*``, ...) of a file when the model has no such
    module (features-only backbones), missing per-output norms ``norm<i>.*`` of a features-only model (new
    layers), keys starting with an ``exclude`` prefix (dropped from the file and allowed to be missing).
    With ``strict`` any other difference raises CheckpointMismatchError listing every missing, unexpected
    and mis-shaped key; otherwise the fitting tensors load and the report lists the rest. Tensors holding
    NaN or inf raise :class:`NonFiniteWeightsError` naming them (``allow_nonfinite=True`` loads them
    anyway, e.g. to inspect a diverged run). A URL is read only with ``allow_download`` (:func:`fetch_remote`).
    """
    if isinstance(checkpoint, (str, os.PathLike)):
        source = source or os.fspath(checkpoint)
        obj = read_checkpoint(checkpoint, trust_pickle=trust_pickle, allow_download=allow_download)
    else:
        source = source or "state dict"
        obj = checkpoint
    sd = extract_state_dict(obj, source=source)
    own = model.state_dict()
    weights, how = select_weights(sd, own.keys(), prefix=prefix, source=source)
    adapter = adapter if adapter is not None else adapter_of(model)
    converted = bool(adapter and adapter.detect and adapter.convert and adapter.detect(weights))
    if converted:
        try:
            weights = adapter.convert(weights, model)
        except (ValueError, KeyError) as err:  # an adapter refuses a file it cannot convert (its documented error)
            if isinstance(err, UserError):
                raise
            raise CheckpointConversionError(f"{source}: cannot convert from the published layout: {err}") from err
    exclude = tuple(exclude)
    own_roots = {k.split(".", 1)[0] for k in own}
    features_only = bool(getattr(model, "features_only", False))
    ignored = sorted(
        {k.split(".", 1)[0] + ".*" for k in weights if k.split(".", 1)[0] in CLASSIFIER_ROOTS
         and k.split(".", 1)[0] not in own_roots}
    )
    weights = {
        k: v
        for k, v in weights.items()
        if not k.startswith(exclude) and k.split(".", 1)[0] + ".*" not in ignored
        and not (features_only and _OUT_NORM.match(k) and k not in own)
    }

    def optional(k: str) -> bool:
        return (
            k.startswith(exclude)
            or (features_only and bool(_OUT_NORM.match(k)))
            or bool(adapter and adapter.optional and adapter.optional(k))
        )

    extra = adapter.extra if adapter is not None else None
    missing, unexpected, mismatched = compare_state_dicts(own, weights, optional=optional, extra=extra)
    new_layers = sorted({k.split(".", 1)[0] for k in own if k not in weights and optional(k)})
    report = LoadReport(
        source=source, selected=how, loaded=0, missing=missing, unexpected=unexpected,
        mismatched=mismatched, ignored=ignored, new=new_layers, converted=converted,
    )
    if not report.fits and strict:
        msg = format_mismatch(f"checkpoint {source} ({how})", type(model).__name__, missing, unexpected, mismatched)
        extra_lines = adapter.hints(weights, own, mismatched) if adapter and adapter.hints else []
        clf = classifier_name(model)
        if clf and mismatched and not (missing or unexpected) and all(
            k.startswith(clf + ".") for k, _, _ in mismatched
        ):
            n = next(s[0] for k, s, _ in mismatched if len(s) >= 1)
            extra_lines.append(
                f"  hint: only the classifier differs: the file has {n} classes (command line: "
                f"--num-classes {n}; Python: create_model(..., num_classes={n}), then reset_classifier(k) to "
                "fine-tune), or exclude the classifier"
            )
        raise CheckpointMismatchError("\n".join([msg, *extra_lines]))
    bad = {k for k, _, _ in mismatched}
    to_load = {k: v for k, v in weights.items() if k not in bad and (k in own or (extra and extra(k)))}
    if not allow_nonfinite:
        check_finite(to_load, source)
    model.load_state_dict(to_load, strict=False)
    report.loaded = len(to_load)
    return report


# ------------------------------------------------------------------------------------------------------
# writing
# ------------------------------------------------------------------------------------------------------


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a hidden temporary file in the target directory, flush + fsync, then ``os.replace``
    onto ``path``. On any error the temporary file is removed and ``path`` keeps its previous content (or
    stays absent). A process killed outright leaves only its hidden ``.<name>.*.tmp`` file, never a
    truncated ``path``; the next successful save of the same ``path`` deletes such leftovers."""
    _atomic_write(path, lambda f: torch.save(obj, f))


def _atomic_write(path: str | os.PathLike, write: Callable[[Any], None]) -> None:
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    started = time.time()
    # the temporary name does not end in .ckpt/.pth, so "last"/"best" scans never pick it up
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
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
    pattern = os.path.join(glob.escape(directory), f".{glob.escape(os.path.basename(path))}.*.tmp")
    for stale in glob.glob(pattern):  # temporaries of saves that were killed before this one began
        try:
            if os.path.getmtime(stale) < started:
                os.unlink(stale)
        except OSError:
            pass


def save_weights(path: str | os.PathLike, state_dict: Mapping[str, torch.Tensor], meta: Mapping | None = None) -> None:
    """Write ``{"state_dict": ..., "meta": ...}`` atomically: the toolkit's one weights format. A path ending
    in ``.safetensors`` is written as safetensors (tensors only, ``meta`` as JSON string metadata; tensors
    that share memory are copied)."""
    sd = {k: v.detach() for k, v in state_dict.items()}
    meta = dict(meta or {})
    if os.fspath(path).endswith(".safetensors"):
        try:
            from safetensors.torch import save as st_save
        except ImportError as e:
            raise CheckpointError(f"{path}: writing .safetensors files needs {_ST_EXTRA}") from e
        blob = st_save({k: v.contiguous().clone() for k, v in sd.items()}, metadata={"meta": json.dumps(meta, default=str)})
        _atomic_write(path, lambda f: f.write(blob))
        return
    atomic_torch_save({"state_dict": sd, "meta": meta}, path)
