"""Put shift-wise large kernels into any network: `to_shiftwise` replaces its depthwise convolutions.

    from swtasks.layers import to_shiftwise, reparameterize_shiftwise
    net, replaced = to_shiftwise(torchvision.models.convnext_tiny(weights="DEFAULT"), 51, input_size=224)
    ...fine-tune net...
    reparameterize_shiftwise(net)        # every converted layer folded into its deploy form

What is converted. Every `nn.Conv2d` (the class itself or a subclass that keeps its forward) that is a
depthwise "same" convolution: groups == in_channels == out_channels >= `min_channels`, a square odd kernel
>= 3, stride 1, dilation 1, zero padding of kernel_size // 2; `where(name, module) -> bool` narrows that set
further (convolutions outside it are never converted: `ShiftWiseConv2d` is depthwise, stride 1 and keeps the
map size). With `input_size` the map size at each such layer is measured with one forward pass and the big
kernel clipped to 2 * max(H, W) - 1 (a bigger kernel only adds taps that never touch the map; the paper's
last stage, 13 on a 7x7 map, is this rule), and never below `small_kernel`.

What a converted layer computes. `ShiftWiseConv2d(C, K, small_kernel, ghost_ratio, n_path, n_rep)`:
    rep channels:   y = BN_h(cross_h(x)) + BN_v(cross_v(x)) + BN_s(conv_kxk(x)) + x
    ghost channels: y = x (pass-through; none with the default ghost_ratio=0.0 used here)
with the horizontal / vertical k x L strips and the k x k centre tile assembled from shared, shuffled small
kernels (docs/operator.md). It is not a dense K x K depthwise kernel: the footprint is a cross of width k and
length L = k * ceil(K / k), and the layer carries its own residual (+x) and three BatchNorms.

How it starts (init="original", the default). The centre branch is set to the original kernel and the
strips are switched off, so in eval mode a converted layer computes exactly what the depthwise
convolution computed (bias included) when the original kernel fits in k x k:
  - the small kernels picked for the centre tile (``ident``) hold (original - identity) / (n_rep * n_path),
    so that the centre tile minus the layer's own +x is the original kernel (a bigger original kernel is
    cropped to its centre k x k: approximate, `Replacement.exact` is False);
  - BN_h and BN_v have weight 0 (their outputs are 0; their gradients are not, so the long strips turn on as
    soon as training asks for them - the zero-init-residual idea);
  - BN_s is the identity in eval: weight sqrt(running_var + eps), bias running_mean + conv bias. Without
    `calibrate` the running statistics are the defaults (0, 1); with `calibrate` (a batch or an iterable of
    batches run through the model in eval mode) they are the centre branch's measured mean and variance, so
    that in *training* mode too (BN_s normalising with batch statistics) the layer starts close to the
    original, and the running statistics do not drift away from it during the first steps.
The small kernels not picked for the centre (the rest of the strips) keep ShiftWiseConv2d's random init.
init="fresh" keeps ShiftWiseConv2d's own initialisation everywhere (a network trained from scratch).

Measured (random torchvision weights, eval mode; the table is in docs/models.md): mobilenet_v2 (3x3 kernels)
converts exactly (logits relative error 1.3e-6); convnext_tiny (7x7 kernels) with small_kernel=3 keeps only
the centre 3x3 of each kernel (logits error 0.72 with layer scale 1), with small_kernel=None (7) it is exact.

`reparameterize_shiftwise(model)` folds every ShiftWiseConv2d of any model (eval semantics; verify it with
`swtasks.models.deploy.reparameterize_verified(model, fold=lambda: reparameterize_shiftwise(model))`).

Imports torch only (plain PyTorch, like the rest of swtasks.layers).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from swtasks.errors import UserError

from ..ops.shiftwise import rep_channel_count
from .shiftwise import ShiftWiseConv2d

__all__ = [
    "NothingToConvertError",
    "Replacement",
    "ShiftwiseConversionError",
    "count_depthwise",
    "reparameterize_shiftwise",
    "to_shiftwise",
]

INITS = ("original", "fresh")


class ShiftwiseConversionError(UserError, ValueError):
    """A bad argument of `to_shiftwise`, or a model it cannot convert."""


class NothingToConvertError(ShiftwiseConversionError):
    """The model holds no depthwise convolution that `to_shiftwise` can replace."""


@dataclass(frozen=True)
class Replacement:
    """One converted layer: its module name, channels, old and new kernel sizes, the map size (H, W) it saw
    (None without `input_size` or when the probe did not reach it), and whether the converted layer starts
    out computing exactly what the old one did (eval mode)."""

    name: str
    channels: int
    old_kernel: int
    new_kernel: int
    map_size: tuple[int, int] | None = None
    exact: bool = False

    def __str__(self) -> str:
        size = "" if self.map_size is None else f" on a {self.map_size[0]}x{self.map_size[1]} map"
        return f"{self.name}: {self.channels} channels, {self.old_kernel}x{self.old_kernel} -> {self.new_kernel}{size}"


def _ineligible(m: nn.Module, ghost_ratio: float) -> str | None:
    """Why `m` cannot become a ShiftWiseConv2d (None: it can)."""
    if not isinstance(m, nn.Conv2d) or type(m).forward is not nn.Conv2d.forward:
        return "not a plain nn.Conv2d"
    c = m.in_channels
    if not (m.groups == c == m.out_channels):
        return "not depthwise"
    k = m.kernel_size
    if k[0] != k[1] or k[0] % 2 == 0 or k[0] < 3:
        return f"kernel {k[0]}x{k[1]} (square, odd, >= 3 only)"
    if tuple(m.stride) != (1, 1) or tuple(m.dilation) != (1, 1):
        return "stride or dilation other than 1"
    if m.padding_mode != "zeros" or (m.padding != "same" and tuple(m.padding) != (k[0] // 2, k[0] // 2)):
        return "padding other than zeros of kernel_size // 2"
    if rep_channel_count(c, ghost_ratio) < 2:
        return f"{c} channels (with ghost_ratio={ghost_ratio}, fewer than 2 go through the operator)"
    return None


def _check_args(kernel_size, small_kernel, min_channels, init, ghost_ratio) -> None:
    checked = (("kernel_size", kernel_size), ("small_kernel", small_kernel), ("min_channels", min_channels))
    for name, v in checked:
        if v is None and name == "small_kernel":
            continue
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ShiftwiseConversionError(f"{name} must be a positive int, got {v!r}")
    for name, v in (("kernel_size", kernel_size), ("small_kernel", small_kernel)):
        if v is not None and v % 2 == 0:
            raise ShiftwiseConversionError(f"{name} must be odd, got {v}")
    if small_kernel is not None and small_kernel > kernel_size:
        raise ShiftwiseConversionError(f"small_kernel={small_kernel} is larger than kernel_size={kernel_size}")
    if init not in INITS:
        raise ShiftwiseConversionError(f"init must be one of {INITS}, got {init!r}")
    if not 0.0 <= float(ghost_ratio) < 1.0:
        raise ShiftwiseConversionError(f"ghost_ratio must be in [0, 1), got {ghost_ratio}")


def _size2(size) -> tuple[int, int]:
    if isinstance(size, int) and not isinstance(size, bool):
        return (size, size)
    try:
        h, w = (int(s) for s in size)
    except (TypeError, ValueError):
        raise ShiftwiseConversionError(f"input_size must be an int or (H, W), got {size!r}") from None
    return h, w


def _ref(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(iter(model.parameters()), None)
    return (p.device, p.dtype) if p is not None else (torch.device("cpu"), torch.float32)


def _in_channels(model: nn.Module) -> int:
    c = getattr(model, "in_chans", None)
    if isinstance(c, int):
        return c
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return first.in_channels if first is not None else 3


@torch.no_grad()
def _map_sizes(model: nn.Module, names: list[str], input_size) -> dict[str, tuple[int, int]]:
    """The (H, W) of the input each named module sees, from one eval forward of zeros at `input_size`."""
    h, w = _size2(input_size)
    device, dtype = _ref(model)
    sizes: dict[str, tuple[int, int]] = {}
    handles = []
    for name in names:
        def hook(mod, args, name=name):
            if args and isinstance(args[0], torch.Tensor) and args[0].dim() == 4:
                sizes.setdefault(name, (int(args[0].shape[-2]), int(args[0].shape[-1])))

        handles.append(model.get_submodule(name).register_forward_pre_hook(hook))
    was = model.training
    model.eval()
    try:
        model(torch.zeros(1, _in_channels(model), h, w, device=device, dtype=dtype))
    except Exception as e:  # noqa: BLE001 - a model that cannot run this input: a user error, one line
        raise ShiftwiseConversionError(f"input_size {h}x{w}: a forward pass of {type(model).__name__} to measure "
                                       f"the map sizes failed ({type(e).__name__}: {e})") from e
    finally:
        model.train(was)
        for hd in handles:
            hd.remove()
    return sizes


def _centre_fit(w: torch.Tensor, k: int) -> tuple[torch.Tensor, bool]:
    """(C, k0, k0) -> (C, k, k): zero-padded when k0 <= k (exact), else its centre k x k crop."""
    k0 = w.shape[-1]
    if k0 <= k:
        p = (k - k0) // 2
        return F.pad(w, (p, p, p, p)), True
    o = (k0 - k) // 2
    return w[:, o : o + k, o : o + k], False


@torch.no_grad()
def _init_from(sw: ShiftWiseConv2d, conv: nn.Conv2d) -> bool:
    """Start `sw` (ghost_ratio as built) at the depthwise `conv` (see the module docstring); True if exact."""
    k, R = sw.small_kernel, sw.rep_channels
    rep = sw.rep_idx
    target, exact = _centre_fit(conv.weight.detach()[:, 0].to(sw.weight.dtype), k)
    target = target.index_select(0, rep).clone()
    target[:, k // 2, k // 2] -= 1.0  # the layer adds x itself
    value = target / (sw.n_rep * sw.n_path)
    ident = sw.ident  # (n_rep, R): kernel index of channel c's centre pick in group g
    for g in range(ident.shape[0]):
        sw.weight[:, ident[g]] = value.unsqueeze(0).expand(sw.n_path, R, k, k)
    for bn in (sw.bn_h, sw.bn_v):
        bn.weight.zero_()
        bn.bias.zero_()
    bias = conv.bias.detach().to(sw.bn_s.bias.dtype).index_select(0, rep) if conv.bias is not None else 0.0
    sw.bn_s.reset_running_stats()
    sw.bn_s.weight.copy_(torch.sqrt(sw.bn_s.running_var + sw.bn_s.eps))
    sw.bn_s.bias.copy_(sw.bn_s.running_mean + bias)
    sw._conv_bias = bias  # kept for calibrate (not a parameter: gone with the module's state)
    return exact and sw.ghost_channels == 0


@torch.no_grad()
def _calibrate(model: nn.Module, layers: list[ShiftWiseConv2d], batches) -> None:
    """Set each layer's BN_s running statistics to its centre branch's mean / variance over `batches` (run in
    eval mode, where every layer still computes the original), keeping BN_s the identity in eval."""
    if isinstance(batches, torch.Tensor):
        batches = [batches]
    stats: dict[int, list[torch.Tensor]] = {}

    def hook(mod, args):
        x = args[0]
        x_r = x if mod.ghost_channels == 0 else x.index_select(1, mod.rep_idx)
        w_s = mod.cross_kernels()[2].to(x_r.dtype)
        o = F.conv2d(x_r, w_s.unsqueeze(1), padding=mod.small_kernel // 2, groups=mod.rep_channels).double()
        s = [o.sum((0, 2, 3)), (o * o).sum((0, 2, 3)), torch.tensor(float(o.numel() // o.shape[1]), dtype=o.dtype)]
        prev = stats.get(id(mod))
        stats[id(mod)] = s if prev is None else [a + b.to(a.device) for a, b in zip(prev, s)]

    handles = [m.register_forward_pre_hook(hook) for m in layers]
    device, dtype = _ref(model)
    was = model.training
    model.eval()
    n = 0
    try:
        for x in batches:
            model(x.to(device=device, dtype=dtype))
            n += 1
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    if n == 0:
        raise ShiftwiseConversionError("calibrate gave no batch")
    for m in layers:
        total, sq, count = stats[id(m)]
        mean = total / count
        var = (sq / count - mean * mean).clamp_min(0)
        bn = m.bn_s
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
        bn.weight.copy_(torch.sqrt(var + bn.eps))
        bn.bias.copy_(mean + m._conv_bias)


def to_shiftwise(
    model: nn.Module,
    kernel_size: int = 51,
    *,
    small_kernel: int | None = 3,
    min_channels: int = 1,
    where: Callable[[str, nn.Module], bool] | None = None,
    inplace: bool = False,
    input_size: int | tuple[int, int] | None = None,
    init: str = "original",
    calibrate: torch.Tensor | Iterable[torch.Tensor] | None = None,
    ghost_ratio: float = 0.0,
    n_path: int = 2,
    n_rep: int = 4,
    **operator_options,
) -> tuple[nn.Module, list[Replacement]]:
    """Replace the depthwise convolutions of `model` by `ShiftWiseConv2d` emulating a `kernel_size` kernel.

    Returns ``(model, replaced)``: the converted model (`model` itself with ``inplace=True``, else a deep
    copy) and one :class:`Replacement` per converted layer, in module order. Which layers, what they compute
    and how they start: the module docstring. ``input_size`` (int or (H, W)) clips each layer's kernel to
    its map (2 * max(H, W) - 1). ``ghost_ratio`` (default 0: every channel goes through the operator, which
    lets the init be exact; the paper's networks use 0.23, ghost channels are then a pass-through),
    ``n_path``, ``n_rep`` and ``operator_options`` (backend, variant, dot_precision, deterministic) go to
    ShiftWiseConv2d. ``small_kernel=None`` uses each layer's own kernel size as the small kernel (every
    layer then starts exactly at the original). A model with nothing to convert raises NothingToConvertError (a UserError).
    """
    _check_args(kernel_size, small_kernel, min_channels, init, ghost_ratio)
    if not isinstance(model, nn.Module):
        raise ShiftwiseConversionError(f"model must be an nn.Module, got {type(model).__name__}")
    chosen = []
    for name, m in model.named_modules():
        if not name or _ineligible(m, ghost_ratio) is not None or m.in_channels < min_channels:
            continue
        if where is not None and not where(name, m):
            continue
        chosen.append(name)
    if not chosen:
        convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
        raise NothingToConvertError(
            f"{type(model).__name__} has no depthwise convolution to convert ({convs} nn.Conv2d, none with groups "
            f"== in == out channels >= {min_channels}, a square odd kernel >= 3, stride 1, 'same' zero padding"
            + (", selected by where" if where is not None else "") + ")"
        )
    if not inplace:
        model = copy.deepcopy(model)
    sizes = _map_sizes(model, chosen, input_size) if input_size is not None else {}
    replaced: list[Replacement] = []
    new_layers: list[ShiftWiseConv2d] = []
    for name in chosen:
        conv = model.get_submodule(name)
        size = sizes.get(name)
        k0 = conv.kernel_size[0]
        k_small = k0 if small_kernel is None else small_kernel
        k_new = kernel_size if size is None else min(kernel_size, 2 * max(size) - 1)
        k_new = max(k_new, k_small)
        sw = ShiftWiseConv2d(conv.in_channels, k_new, small_kernel=k_small, ghost_ratio=ghost_ratio,
                             n_path=n_path, n_rep=n_rep, **operator_options)
        sw = sw.to(device=conv.weight.device, dtype=conv.weight.dtype)
        sw.train(conv.training)
        exact = _init_from(sw, conv) if init == "original" else False
        # a crop loses nothing when the map is so small that the outer taps never touch it
        exact = exact or (init == "original" and size is not None and 2 * max(size) - 1 <= k_small
                          and sw.ghost_channels == 0)
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, sw)
        new_layers.append(sw)
        replaced.append(Replacement(name, conv.in_channels, conv.kernel_size[0], k_new, size, exact))
    if calibrate is not None and init == "original":
        _calibrate(model, new_layers, calibrate)
    for sw in new_layers:
        sw.__dict__.pop("_conv_bias", None)
    return model, replaced


@torch.no_grad()
def reparameterize_shiftwise(model: nn.Module) -> int:
    """Fold every ShiftWiseConv2d of `model` (in place, eval semantics: the BNs' running statistics) into its
    deploy form; returns how many were folded (0: none left in training form)."""
    layers = [m for m in model.modules() if isinstance(m, ShiftWiseConv2d) and not m.deploy]
    for m in layers:
        m.reparameterize()
    return len(layers)


def count_depthwise(model: nn.Module, ghost_ratio: float = 0.0) -> int:
    """How many layers `to_shiftwise` (default selection) would convert."""
    return sum(1 for n, m in model.named_modules() if n and _ineligible(m, ghost_ratio) is None)

