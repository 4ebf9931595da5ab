"""Models from other libraries by name - `torchvision:NAME`, `timm:NAME` - optionally converted to shift-wise
large kernels with a `+sw` suffix; and `shiftwise_backbone`, the Python entry point tools/train_cls.py
accepts for a converted model.

    create_foreign("torchvision:convnext_tiny")           # torchvision's model, random weights
    create_foreign("timm:resnet50d", num_classes=10)
    create_foreign("torchvision:convnext_tiny+sw51", image_size=224)   # to_shiftwise(..., 51, input_size=224)
    create_foreign("torchvision:mobilenet_v2+sw")                      # +sw alone: 51

    tools/train_cls.py fit --model.backbone swtasks.models.foreign.shiftwise_backbone \\
        --model.backbone.model torchvision:convnext_tiny --model.backbone.kernel_size 51 \\
        --model.backbone.num_classes 10 --model.num_classes 10 ...

The analysis tools (tools/erf.py, tools/benchmark.py) take the same names. torchvision and timm are imported
when such a model is built, never at import time. Weights: random unless ``weights`` is given (torchvision:
a weights name such as "DEFAULT"; timm: any true value, pretrained=True) - downloaded by those libraries.
"""

from __future__ import annotations

import re
from typing import Any

import torch.nn as nn

from .registry import ModelConfigError

__all__ = ["FOREIGN_PREFIXES", "create_foreign", "is_foreign", "shiftwise_backbone", "split_foreign"]

FOREIGN_PREFIXES = ("torchvision:", "timm:")
_SW = re.compile(r"\+sw(\d*)$")
DEFAULT_KERNEL = 51


def is_foreign(name: object) -> bool:
    """Whether `name` is a `torchvision:` / `timm:` model name (with or without a `+sw` suffix)."""
    return isinstance(name, str) and name.startswith(FOREIGN_PREFIXES)


def split_foreign(name: str) -> tuple[str, str, int | None]:
    """'torchvision:convnext_tiny+sw51' -> ('torchvision', 'convnext_tiny', 51); no suffix: kernel None."""
    if not is_foreign(name):
        raise ModelConfigError(f"{name!r} is not a foreign model name ({' or '.join(FOREIGN_PREFIXES)}NAME[+swK])")
    lib, _, arch = name.partition(":")
    kernel = None
    m = _SW.search(arch)
    if m:
        kernel = int(m.group(1)) if m.group(1) else DEFAULT_KERNEL
        arch = arch[: m.start()]
    if not arch:
        raise ModelConfigError(f"{name!r}: no model name after {lib}:")
    return lib, arch, kernel


def _torchvision(arch: str, num_classes: int, weights: str | None, kwargs: dict) -> nn.Module:
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models)
    if arch not in known:
        import difflib

        close = difflib.get_close_matches(arch, known, n=4, cutoff=0.5)
        raise ModelConfigError(f"unknown torchvision classification model {arch!r}"
                               + (f"; closest: {', '.join(close)}" if close else ""))
    if weights is None:
        return torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **kwargs)
    net = torchvision.models.get_model(arch, weights=weights, **kwargs)
    if num_classes != 1000:  # a pretrained model keeps its 1000-class head: replace its last Linear
        name, last = [(n, m) for n, m in net.named_modules() if isinstance(m, nn.Linear)][-1]
        parent, _, attr = name.rpartition(".")
        setattr(net.get_submodule(parent) if parent else net, attr,
                nn.Linear(last.in_features, num_classes, bias=last.bias is not None))
    return net


def _timm(arch: str, num_classes: int, weights: Any, kwargs: dict) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise ModelConfigError("timm: models need timm (pip install timm)") from None
    if not timm.is_model(arch):
        close = timm.list_models(f"*{arch}*")[:4]
        raise ModelConfigError(f"unknown timm model {arch!r}" + (f"; e.g. {', '.join(close)}" if close else ""))
    return timm.create_model(arch, pretrained=bool(weights), num_classes=num_classes, **kwargs)


def create_foreign(
    name: str,
    *,
    num_classes: int = 1000,
    image_size: int | tuple[int, int] | None = None,
    weights: Any = None,
    small_kernel: int | None = 3,
    shiftwise_kernel: int | None = None,
    shiftwise_init: str = "original",
    **kwargs: Any,
) -> nn.Module:
    """The torchvision / timm model `name` (see the module docstring). A `+swK` suffix (or
    ``shiftwise_kernel=K``) converts it with ``swtasks.layers.to_shiftwise(model, K, small_kernel=...,
    input_size=image_size, init=shiftwise_init)``; the replacements are kept as ``model.shiftwise_replaced``.
    ``kwargs`` go to the library's constructor (e.g. ``layer_scale=1.0`` for a torchvision ConvNeXt, whose
    random init otherwise scales every block by 1e-6). The model gets ``num_classes`` as an attribute."""
    lib, arch, kernel = split_foreign(name)
    kernel = shiftwise_kernel if shiftwise_kernel is not None else kernel
    try:
        if lib == "torchvision":
            net = _torchvision(arch, num_classes, weights, kwargs)
        else:
            net = _timm(arch, num_classes, weights, kwargs)
    except TypeError as e:  # an argument the constructor does not take
        raise ModelConfigError(f"{name}: {e}") from e
    if kernel is not None:
        from swtasks.layers import to_shiftwise

        net, replaced = to_shiftwise(net, kernel, small_kernel=small_kernel, input_size=image_size, inplace=True,
                                     init=shiftwise_init)
        net.shiftwise_replaced = replaced
    if not hasattr(net, "num_classes"):
        net.num_classes = num_classes
    return net


def shiftwise_backbone(
    model: str,
    kernel_size: int = DEFAULT_KERNEL,
    num_classes: int = 1000,
    image_size: int | None = 224,
    small_kernel: int | None = 3,
    weights: str | None = None,
) -> nn.Module:
    """A torchvision / timm classifier (``model``: 'torchvision:NAME' or 'timm:NAME') with its depthwise
    convolutions replaced by ShiftWiseConv2d emulating ``kernel_size`` kernels (clipped to the maps of an
    ``image_size`` input; None: not clipped). The entry point for ``--model.backbone`` of
    tools/train_cls.py (a class path: jsonargparse builds it; give ``--model.num_classes`` the same count)."""
    return create_foreign(model, num_classes=num_classes, image_size=image_size, weights=weights,
                          small_kernel=small_kernel, shiftwise_kernel=kernel_size)
