"""Effective receptive fields of MMDetection / MMSegmentation models: their config files built here (this floor
imports mmengine and the mm frameworks) and measured by swtasks.analysis.erf, as `(label, extractor)` pairs:

    from swtasks.analysis import erf
    from swtasks.mm.erf import mm_extractor

    erf.run_erf([("det", mm_extractor("configs/det/demo.py", "det.pth"))], images=8, image_size=(512, 768))
"""

from __future__ import annotations

import os
from pathlib import Path

from mmengine.config import Config

from swtasks.analysis.erf import LayerOutput
from swtasks.analysis.errors import AnalysisError, AnalysisInputNotFound
from swtasks.checkpoint import load_into

from .deploy import build_model

__all__ = ["mm_extractor"]


def mm_extractor(config: str | os.PathLike, checkpoint: str | os.PathLike | None = None, *, part: str = "auto",
                 layer: str | None = None, index: int | None = None, trust_pickle: bool = False,
                 allow_download: bool = False) -> LayerOutput:
    """The model of an MMDetection / MMSegmentation config (no pretrained init; `checkpoint` loaded strictly),
    as `swtasks.analysis.erf` measures it: at its backbone's outputs (``part='backbone'``), its backbone+neck outputs (``'neck'``,
    ``extract_feat``; ``'auto'``: the neck when there is one), or at module `layer` (a name in the whole
    model, e.g. ``neck.fpn_convs.0`` or ``backbone.stages.2``, reached through extract_feat)."""
    if part not in ("auto", "backbone", "neck"):
        raise AnalysisError(f"part must be 'auto', 'backbone' or 'neck', got {part!r}")
    if not Path(config).is_file():
        raise AnalysisInputNotFound(f"config file not found: {config}")
    model = build_model(Config.fromfile(str(config)))
    if checkpoint is not None:
        load_into(model, checkpoint, trust_pickle=trust_pickle, allow_download=allow_download)
    has_neck = getattr(model, "neck", None) is not None
    if part == "neck" and not has_neck:
        raise AnalysisError(f"{config}: the model has no neck; use part 'backbone'")
    use_neck = layer is not None or part == "neck" or (part == "auto" and has_neck)
    forward = model.extract_feat if use_neck else model.backbone
    if layer is None:
        # the backbone's / neck's outputs: the model module is the hook target, the outputs are returned whole
        return LayerOutput(model, "backbone" if not use_neck else ("neck" if has_neck else "backbone"),
                           forward, index)
    return LayerOutput(model, layer, forward, index)
