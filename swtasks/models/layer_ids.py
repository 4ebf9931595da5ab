"""Layer ids for layer-wise learning-rate decay of four-stage backbones (the network spec's rule).

Parameter names are relative to the backbone and follow the ConvNeXt / UniRepLKNet / ShiftWiseNet layout
(``downsample_layers.{i}``, ``stages.{s}.{block}``). Layer-wise ids:

- ``downsample_layers.0`` (the stem) -> 0; ``stages.0`` -> 1; ``downsample_layers.1`` / ``stages.1`` -> 2;
  ``downsample_layers.2`` -> 3; ``stages.2.{b}`` -> 3 + b // 3 (capped at num_layers);
  ``downsample_layers.3`` / ``stages.3`` -> num_layers;
- any other name -> None (callers give it num_layers + 1: the final norm, the head, a detector's neck).

The lr scale of id i is ``decay ** (num_layers + 1 - i)``. Plain Python: the classification optimiser and
the MMDetection/MMSegmentation constructor both use it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

__all__ = ["default_num_layers", "layer_id", "stage_id"]

_STAGE = re.compile(r"^stages\.(\d+)(?:\.(\d+))?(?:\.|$)")
_DOWN = re.compile(r"^downsample_layers\.(\d+)(?:\.|$)")


def layer_id(name: str, num_layers: int = 12) -> int | None:
    """Layer-wise id of the backbone parameter ``name``, or None outside the layout."""
    m = _DOWN.match(name)
    if m:
        i = int(m.group(1))
        return (0, 2, 3)[i] if i < 3 else num_layers
    m = _STAGE.match(name)
    if not m:
        return None
    s = int(m.group(1))
    if s < 2:
        return s + 1
    if s == 2:
        b = int(m.group(2)) if m.group(2) is not None else 0
        return min(3 + b // 3, num_layers)
    return num_layers


def stage_id(name: str, num_layers: int = 4) -> int | None:
    """Stage-wise id: downsampling layers -> 0, ``stages.{s}`` -> s + 1 (capped), None outside the layout."""
    if _DOWN.match(name):
        return 0
    m = _STAGE.match(name)
    return min(int(m.group(1)) + 1, num_layers) if m else None


def default_num_layers(depths: Sequence[int] | None = None, names: Iterable[str] = ()) -> int:
    """12 (the ConvNeXt / UniRepLKNet convention), raised when stage 3 is deep enough to need more ids.

    Stage 3's depth comes from ``depths`` or, without it, from the parameter ``names``.
    """
    if depths is not None and len(depths) >= 3:
        depth3 = int(depths[2])
    else:
        depth3 = 0
        for name in names:
            m = _STAGE.match(name)
            if m and int(m.group(1)) == 2 and m.group(2) is not None:
                depth3 = max(depth3, int(m.group(2)) + 1)
    return max(12, 3 + (depth3 - 1) // 3 + 1) if depth3 else 12
