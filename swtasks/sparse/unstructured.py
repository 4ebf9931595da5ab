"""Unstructured (per-weight) dynamic sparsity, SLaK's: one mask bit per weight of every conv and linear layer.

swtasks.sparse.kernel masks whole small kernels of the shift-wise operator; SLaK masks single weights of
every layer with a 2-D or 4-D weight (stem, downsampling, the decomposed large kernels, the pointwise
Linears, the classifier). Both are kinds of swtasks.sparse.base's `DynamicSparsity` (schedule, counters,
generator, rank-0 broadcast, random regrowth, optimiser-state reset, saved state); what differs:

- the mask is a buffer of the masked layer (`weight_mask`), so it is saved in and restored from ordinary
  checkpoints, but plain nn.Conv2d / nn.Linear cannot apply it in their forward without renaming their
  parameters (parametrisations): the masks are applied to the weights in place after every optimiser step,
  as the published code does. Between two steps a masked weight gets a gradient (and optimiser moments);
  the step after is masked again, and a weight that re-enters the mask starts from zero with zeroed
  optimiser state;
- no path alignment (there are no paths).

Masks: a bool buffer `weight_mask` on each masked module (`stages.0.0.pwconv1.weight_mask`). A model that
calls `accept_weight_masks(model)` (SLaK does in its constructor) creates such buffers when a state dict it
loads has them and drops them when the state dict has the layer's weight but no mask, so a sparse
checkpoint restores its pattern with a plain `load_state_dict` (strict or not) and a dense one clears it.

Schedule (the published SLaK recipe, with its bugs left out):

- `init_masks(batch, loss_fn)`: layer densities from SNIP (|w * dL/dw| on one batch, one global threshold
  keeping 1 - sparsity of all weights), or ERK (`init='erk'`: density proportional to (sum of the weight's
  dimensions) / (its size), scaled to the target, layers that would exceed 1 dense), or uniform; positions
  inside a layer at random (exactly round(density * n) of them, where the published code draws each weight
  with that probability); layers at density >= `dense_threshold` (0.99) keep no mask.
- `step(optimizer)` after every optimiser step: re-masks the weights; every `update_interval` steps each
  masked layer drops its ceil(rate * active) smallest-magnitude active weights and regrows as many at random
  among its inactive positions (just-dropped ones included, as published: they keep their value), with the
  rate on a cosine from `prune_rate` to `final_prune_rate` over `total_steps`. The published random growth
  draws with a probability (the count drifts); here the count is exact, so the density stays fixed.
- Distributed: a private generator seeded identically on every rank, and rank 0's masks broadcast whenever
  they change. Call `init_masks` before wrapping the model in DistributedDataParallel.
- `state_dict()` / `load_state_dict()`: masks, counters and the generator.

Fine-tuning with a fixed pattern (detection, segmentation): `masks_from_zero_weights(model)` masks the zero
weights of a loaded sparse checkpoint; `apply_weight_masks(model)` re-applies them (call it after each
optimiser step, or before each forward as the published dense-task backbone does).

Imports torch and swtasks.sparse.base only (no models): the model floor may import this module.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Iterable, Mapping

import torch
from torch import nn

from .base import DynamicSparsity, SparsityError, loss_gradients

__all__ = [
    "MASK_SUFFIX",
    "UnstructuredSparsity",
    "accept_weight_masks",
    "apply_weight_masks",
    "erk_densities",
    "maskable_layers",
    "masks_from_zero_weights",
    "set_weight_mask",
    "weight_masks",
    "weight_snip_scores",
]

MASK_NAME = "weight_mask"
MASK_SUFFIX = "." + MASK_NAME
_MASKABLE = (nn.modules.conv._ConvNd, nn.Linear)


def _is_maskable(m: nn.Module) -> bool:
    return isinstance(m, _MASKABLE) and isinstance(getattr(m, "weight", None), nn.Parameter)


def maskable_layers(
    model: nn.Module, include: Iterable[str] | Callable[[str, nn.Module], bool] | None = None
) -> dict[str, nn.Module]:
    """The conv and linear layers of `model` whose weights can be masked, by qualified name (SLaK's rule:
    every 2-D and 4-D weight). `include`: fnmatch patterns on the layer names (e.g. `['*.large_kernel.*']`,
    the published `--only-L`), or a predicate (name, module) -> bool; None: all."""
    if include is None:
        keep = None
    elif callable(include):
        keep = include
    else:
        patterns = list(include)

        def keep(name, _module):
            return any(fnmatch.fnmatchcase(name, p) for p in patterns)

    return {n: m for n, m in model.named_modules() if _is_maskable(m) and (keep is None or keep(n, m))}


def set_weight_mask(layer: nn.Module, mask: torch.Tensor | None) -> None:
    """Give `layer` the mask (bool, shaped like its weight) as its `weight_mask` buffer, or remove it."""
    if mask is None:
        layer._buffers.pop(MASK_NAME, None)
        return
    if tuple(mask.shape) != tuple(layer.weight.shape):
        raise ValueError(f"weight mask of shape {tuple(mask.shape)} for a weight of shape {tuple(layer.weight.shape)}")
    current = layer._buffers.get(MASK_NAME)
    mask = mask.detach().to(device=layer.weight.device, dtype=torch.bool)
    if current is not None and current.shape == mask.shape:
        current.copy_(mask)
    else:
        layer.register_buffer(MASK_NAME, mask.clone())


def weight_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """The `weight_mask` buffers of `model`, by layer name."""
    return {n: m._buffers[MASK_NAME] for n, m in model.named_modules() if m._buffers.get(MASK_NAME) is not None}


@torch.no_grad()
def apply_weight_masks(model: nn.Module) -> None:
    """Zero, in place, every weight outside its layer's mask."""
    for _, m in model.named_modules():
        mask = m._buffers.get(MASK_NAME)
        if mask is not None:
            m.weight.mul_(mask)


@torch.no_grad()
def masks_from_zero_weights(model: nn.Module, include=None) -> dict[str, torch.Tensor]:
    """Mask the exactly-zero weights of every maskable layer that has some (the pattern of a loaded sparse
    checkpoint, e.g. a published SLaK file); layers without zeros keep no mask. Returns the masks set."""
    out = {}
    for name, layer in maskable_layers(model, include).items():
        mask = layer.weight != 0
        set_weight_mask(layer, None if bool(mask.all()) else mask)
        if not bool(mask.all()):
            out[name] = layer._buffers[MASK_NAME]
    return out


def _load_masks_hook(module, state_dict, prefix, local_metadata, strict, missing, unexpected, errors) -> None:
    for name, layer in module.named_modules():
        if not _is_maskable(layer):
            continue
        base = prefix + (name + "." if name else "")
        key = base + MASK_NAME
        if key in state_dict:
            if layer._buffers.get(MASK_NAME) is None:
                layer.register_buffer(MASK_NAME, torch.zeros(layer.weight.shape, dtype=torch.bool,
                                                             device=layer.weight.device))
        elif base + "weight" in state_dict and layer._buffers.get(MASK_NAME) is not None:
            layer._buffers.pop(MASK_NAME)


def accept_weight_masks(model: nn.Module) -> nn.Module:
    """Let `model.load_state_dict` create the `weight_mask` buffers a state dict has (and drop the ones it
    lacks for weights it has). Idempotent; returns the model."""
    if not getattr(model, "_accepts_weight_masks", False):
        model.register_load_state_dict_pre_hook(_load_masks_hook)
        model._accepts_weight_masks = True
    return model


# ------------------------------------------------------------------------------------------------------
# layer densities
# ------------------------------------------------------------------------------------------------------


def weight_snip_scores(
    model: nn.Module, batch, loss_fn: Callable, layers: Mapping[str, nn.Module]
) -> dict[str, torch.Tensor]:
    """|w * dL/dw| of every weight of `layers` on one batch ((inputs, targets) with loss_fn(model(x), y), or
    inputs alone with loss_fn(model(x))). `.grad` is not touched and the model's buffers (BatchNorm
    statistics, masks) are put back afterwards."""
    grads = loss_gradients(model, batch, loss_fn, [layer.weight for layer in layers.values()])
    scores = {}
    for (name, layer), g in zip(layers.items(), grads):
        w = layer.weight.detach().float()
        scores[name] = torch.zeros_like(w) if g is None else (w * g.float()).abs()
    return scores


def erk_densities(shapes: Mapping[str, Iterable[int]], density: float, power: float = 1.0) -> dict[str, float]:
    """Erdos-Renyi-Kernel layer densities with the overall `density`: each layer's density is
    eps * (sum(shape) / prod(shape)) ** power, with eps chosen so that the kept weights total density * all;
    layers that would exceed 1 are dense and eps is solved again for the rest."""
    shapes = {n: tuple(int(s) for s in shape) for n, shape in shapes.items()}
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    raw = {n: (sum(s) / sizes[n]) ** power for n, s in shapes.items()}
    dense: set[str] = set()
    while True:
        rest = [n for n in shapes if n not in dense]
        budget = density * sum(sizes.values()) - sum(sizes[n] for n in dense)
        divisor = sum(raw[n] * sizes[n] for n in rest)
        eps = budget / divisor if divisor > 0 else 0.0
        over = [n for n in rest if eps * raw[n] > 1.0]
        if not over:
            break
        dense.update(over)
    return {n: 1.0 if n in dense else max(0.0, eps * raw[n]) for n in shapes}


# ------------------------------------------------------------------------------------------------------
# the schedule
# ------------------------------------------------------------------------------------------------------


class UnstructuredSparsity(DynamicSparsity):
    """Dynamic per-weight sparsity of a model's conv and linear layers (see the module docstring).

    ```python
    sparsity = UnstructuredSparsity(model, sparsity=0.4, total_steps=len(loader) * epochs,
                                    update_interval=2000, prune_rate=0.5)   # SLaK-T's published settings
    sparsity.init_masks(next(iter(loader)), F.cross_entropy)
    for x, y in loader:
        F.cross_entropy(model(x), y).backward(); optimizer.step(); optimizer.zero_grad()
        sparsity.step(optimizer)
    ```

    The keywords of swtasks.sparse.base.DynamicSparsity (`total_steps`, `final_prune_rate`, `dense_threshold`,
    `seed`), SLaK's published defaults for the others (`align_interval` must be None: there are no paths to
    align), plus `init` ('snip', 'erk', 'uniform') and `include` (which layers; default all). Layers that
    already carry masks (a sparse checkpoint was loaded) are adopted.
    """

    kind = "unstructured"
    _layers_wanted = "conv or linear layer"

    def __init__(
        self,
        model: nn.Module,
        *,
        sparsity: float = 0.4,
        update_interval: int | None = 2000,
        prune_rate: float = 0.5,
        init: str = "snip",
        include: Iterable[str] | Callable[[str, nn.Module], bool] | None = None,
        align_interval: int | None = None,
        **schedule,
    ):
        if init not in ("snip", "erk", "uniform"):
            raise SparsityError(f"init must be 'snip', 'erk' or 'uniform', got {init!r}")
        if align_interval is not None:
            raise SparsityError("align_interval: unstructured sparsity has no paths to align; give None")
        self.init = init
        self._include = include
        super().__init__(model, sparsity=sparsity, update_interval=update_interval, prune_rate=prune_rate,
                         align_interval=None, **schedule)
        accept_weight_masks(self.model)

    # ------------------------------------------------------------------ the layer-level pieces

    def _find_layers(self, model):
        return maskable_layers(model, self._include)

    def _mask(self, layer):
        return layer._buffers.get(MASK_NAME)

    def _set_mask(self, layer, mask):
        set_weight_mask(layer, mask)

    def _mask_shape(self, layer):
        return tuple(layer.weight.shape)

    def _mask_from_positions(self, layer, positions, n):
        mask = torch.zeros(n, dtype=torch.bool)
        mask[positions] = True
        return mask.view(layer.weight.shape)

    def _config(self):
        return {"init": self.init}

    def _target_densities(self, batch, loss_fn):
        keep = 1.0 - self.sparsity
        if self.init == "uniform":
            return {n: keep for n in self.layers}
        if self.init == "erk":
            return erk_densities({n: m.weight.shape for n, m in self.layers.items()}, keep)
        if batch is None or loss_fn is None:
            raise ValueError("init='snip' needs a batch and a loss_fn (init_masks(batch, loss_fn))")
        scores = weight_snip_scores(self.model, batch, loss_fn, self.layers)
        flat = torch.cat([s.flatten().cpu() for s in scores.values()])
        n_keep = max(1, round(flat.numel() * keep))
        threshold = torch.topk(flat, n_keep, sorted=True).values[-1]
        return {n: float((s > threshold).float().mean()) for n, s in scores.items()}

    def _prune_regrow_layer(self, layer, mask, rate, align):
        """The ceil(rate * active) smallest-magnitude active weights go and as many come back at random among
        the inactive ones (just-dropped ones included, as published); survivors: the weights active before
        and after (a dropped weight drawn again keeps its value)."""
        old = mask.detach().cpu().flatten()
        magnitude = layer.weight.detach().abs().float().cpu().flatten()
        n_remove = math.ceil(rate * int(old.sum()))
        keep = self._drop_smallest(old, magnitude, n_remove) if n_remove > 0 else old.clone()
        new = self._regrow(keep, n_remove)
        return new.view(mask.shape), (old & new).view(mask.shape)
