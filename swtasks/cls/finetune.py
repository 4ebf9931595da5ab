"""Fine-tuning a backbone from a weights file: load it (classifier re-initialised when the class count
differs), freeze the first stages (the model's own ``freeze_stages``). See docs/classification.md, "Fine-tuning from published weights".

Loading is ``swtasks.checkpoint.load_into`` (weights-only reading, the backbone's keys of a Lightning
checkpoint selected by prefix, published layouts converted by the family adapter, every mismatch named);
this module only decides what to do about the classifier. Plain PyTorch: no lightning import.
"""

from __future__ import annotations

import os

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

__all__ = ["classifier_prefix", "freeze_stages", "load_weights"]


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


def freeze_stages(net: nn.Module, n: int) -> None:
    """``--model.freeze_stages n``: the network's own ``freeze_stages(n)`` for n >= 1 (the stem and the first
    n stages: parameters without gradients, modules in eval mode so their BatchNorm statistics stay fixed in
    training too; swtasks.models.common.StageFreezing, the rule the mm backbones' ``frozen_stages`` applies);
    0 freezes nothing."""
    if n <= 0:
        return
    if not callable(getattr(net, "freeze_stages", None)):
        raise InputError(
            f"model.freeze_stages={n}: {type(net).__name__} has no freeze_stages() method (the swtasks "
            "registry's models have one)"
        )
    num = getattr(net, "num_stages", 4)
    if n > num:
        raise InputError(f"model.freeze_stages={n}: {type(net).__name__} has only {num} stages")
    net.freeze_stages(n)
