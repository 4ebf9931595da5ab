"""Export the backbone of a classification checkpoint as a plain state dict (for MMDetection /
MMSegmentation ``init_cfg`` or ``swtasks.create_model(checkpoint_path=...)``).

File layout: ``{"state_dict": {"backbone.<key>": tensor, ...}, "meta": {...}}``. The keys keep the
``backbone.`` prefix so that the MM configs' ``init_cfg=dict(type='Pretrained', checkpoint=FILE,
prefix='backbone.')`` selects them (mmengine strips the prefix); ``swtasks.create_model(...,
checkpoint_path=FILE)`` strips it too. Small-kernel sparsity masks are folded into the weights
(``swtasks.sparse.fold_masks``: pruned small kernels are exact zeros; ``swtasks.sparse.masks_from_weights``
recovers the pattern), so the file loads into a
freshly created backbone; with ``reparameterize=True`` it holds the deploy structure (create the model
with ``deploy=True`` to load it).
"""

from __future__ import annotations

import os
from typing import Any

from ..checkpoint import file_num_classes, load_into, save_weights
from ..sparse import fold_masks
from .errors import InputError
from .io import model_options_from_file, read_lightning_checkpoint
from .module import BACKBONE_PREFIX, EMA_PREFIX


def export_backbone(
    checkpoint: str | os.PathLike,
    output: str | os.PathLike,
    *,
    ema: bool = False,
    reparameterize: bool = False,
    drop_head: bool = False,
    trust_pickle: bool = False,
    allow_download: bool = False,
) -> dict[str, Any]:
    """Write the exported backbone to ``output``; returns the file's ``meta`` dict. ``reparameterize`` folds
    into the deploy structure and verifies the outputs (swtasks.models.deploy.reparameterize_verified)."""
    import swtasks
    from swtasks.models.deploy import reparameterize_verified

    ckpt = read_lightning_checkpoint(checkpoint, trust_pickle=trust_pickle, allow_download=allow_download, opt_ins={})  # the library's names
    hp = model_options_from_file(ckpt.get("hyper_parameters"), source=os.fspath(checkpoint))
    name = hp.get("backbone")
    if not isinstance(name, str):
        raise InputError("the checkpoint's hyper-parameters name no registry backbone (model.backbone)")
    n = file_num_classes(hp.get("num_classes", 1000), source=os.fspath(checkpoint),
                         field="hyper_parameters['num_classes']")
    num_classes = 1000 if n is None else n
    kwargs = dict(hp.get("backbone_kwargs") or {})
    model = swtasks.create_model(name, num_classes=num_classes, **kwargs)
    prefix = EMA_PREFIX if ema else BACKBONE_PREFIX
    if not any(k.startswith(prefix) for k in ckpt["state_dict"]):
        what = "EMA weights (the run had no model.ema_decay)" if ema else "'backbone.' weights"
        raise InputError(f"the checkpoint holds no {what}")
    load_into(model, ckpt, prefix=prefix, source=os.fspath(checkpoint))
    model.eval()
    folded = fold_masks(model)
    verified = None
    if reparameterize:
        try:
            verified = reparameterize_verified(model)["relative_error"]
        except ValueError as e:
            raise InputError(f"{name}: {e}") from e
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if drop_head:
        sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
    meta = {
        "architecture": name,
        "backbone": name,
        "num_classes": 0 if drop_head else num_classes,
        "backbone_kwargs": kwargs,
        "ema": bool(ema),
        "deploy": bool(reparameterize),
        "verified_relative_error": verified,
        "folded_sparsity_masks": folded,
        "source": os.path.abspath(os.fspath(checkpoint)),
        "epoch": ckpt.get("epoch"),
        "global_step": ckpt.get("global_step"),
        "data_config": ckpt.get("data_config"),
        "key_prefix": BACKBONE_PREFIX,
    }
    save_weights(output, {BACKBONE_PREFIX + k: v for k, v in sd.items()}, meta)
    return meta
