"""Fine-tuning a backbone from a weights file: load it (classifier re-initialised when the class count
differs), freeze the first stages. See docs/classification.md, "Fine-tuning from published weights".

Loading is ``swtasks.checkpoint.load_into`` (weights-only reading, the backbone's keys of a Lightning
checkpoint selected by prefix, published layouts converted by the family adapter, every mismatch named);
this module only decides what to do about the classifier. Plain PyTorch: no lightning import.
"""

from __future__ import annotations

import os
import re

from torch import nn

from ..checkpoint import (
    CheckpointError,
    CheckpointMismatchError,
    classifier_name,
    format_mismatch,
    is_remote,
    load_into,
    name_opt_ins,
)
from .errors import InputError

__all__ = ["classifier_prefix", "freeze_stages", "load_weights", "stage_of"]

_STAGE = re.compile(r"^(?:downsample_layers|stages)\.(\d+)(?:\.|$)")


def classifier_prefix(net: nn.Module) -> str:
    """The state-dict prefix of the classifier (``get_classifier()``'s module name plus '.'; 'head.' when the
    backbone has no get_classifier)."""
    name = classifier_name(net)
    return name + "." if name else "head."


def load_weights(net: nn.Module, path: str | os.PathLike, *, trust_pickle: bool = False,
                 allow_download: bool = False) -> str:
    """Load ``path`` into ``net`` (any file ``create_model(checkpoint_path=...)`` reads). Keys outside the
    classifier must all fit; a classifier of another class count (or none in the file) stays freshly
    initialised. Returns a one-line description of what was loaded; raises InputError naming the file and
    every mismatched key otherwise."""
    path = os.fspath(path)
    if not is_remote(path) and not os.path.isfile(path):
        raise InputError(f"model.weights: {path} does not exist")
    head = classifier_prefix(net)
    try:
        report = load_into(net, path, prefix="backbone.", strict=False, trust_pickle=trust_pickle,
                           allow_download=allow_download)
    except (CheckpointError, CheckpointMismatchError) as e:
        text = name_opt_ins(str(e), trust="--model.trust_pickle true", download="--model.allow_download true")
        raise InputError(f"model.weights: {text}") from e
    bad_missing = [k for k in report.missing if not k.startswith(head)]
    bad_shape = [m for m in report.mismatched if not m[0].startswith(head)]
    if bad_missing or report.unexpected or bad_shape:
        msg = format_mismatch(
            f"model.weights: {path} ({report.selected})", type(net).__name__, bad_missing, report.unexpected, bad_shape
        )
        raise InputError(msg + "\n  hint: model.backbone and model.backbone_kwargs must describe the network the file was saved from")
    what = f"loaded {report.loaded} tensors from {path} ({report.selected}{', converted' if report.converted else ''})"
    head_shape = [m for m in report.mismatched if m[0].startswith(head)]
    head_missing = [k for k in report.missing if k.startswith(head)]
    if head_shape:
        k, file_shape, model_shape = head_shape[0]
        return (
            f"{what}; the classifier {head}* is re-initialised: the file's has {file_shape[0]} classes "
            f"({k} {tuple(file_shape)}), the model {model_shape[0]}"
        )
    if head_missing:
        return f"{what}; the file has no classifier: {head}* is newly initialised"
    return f"{what}, classifier included"


def stage_of(name: str) -> int | None:
    """Stage index of a backbone parameter in the downsample_layers/stages layout (the stem and
    ``downsample_layers.i`` belong to stage i), None outside it (final norm, head)."""
    m = _STAGE.match(name)
    return int(m.group(1)) if m else None


def freeze_stages(net: nn.Module, n: int) -> list[str]:
    """Freeze the stem and the first ``n`` stages (parameters without gradients; the modules are kept in
    eval mode by ``frozen_modules``); returns the frozen module names."""
    if n <= 0:
        return []
    names = [m for m, _ in net.named_children()]
    if "stages" not in names:
        raise InputError(
            f"model.freeze_stages={n}: {type(net).__name__} has no downsample_layers/stages layout to freeze"
        )
    num = len(net.stages)
    if n > num:
        raise InputError(f"model.freeze_stages={n}: {type(net).__name__} has only {num} stages")
    frozen = []
    for name, p in net.named_parameters():
        s = stage_of(name)
        if s is not None and s < n:
            p.requires_grad_(False)
    for prefix in ("downsample_layers", "stages"):
        group = getattr(net, prefix, None)
        if group is not None:
            frozen += [f"{prefix}.{i}" for i in range(min(n, len(group)))]
    return frozen


def frozen_modules(net: nn.Module, names: list[str]) -> list[nn.Module]:
    mods = dict(net.named_modules())
    return [mods[n] for n in names if n in mods]
