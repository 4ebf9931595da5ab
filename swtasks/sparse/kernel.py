"""Per-small-kernel dynamic sparsity for ShiftWiseConv2d (docs/models.md, "Sparse training").

One mask bit per k x k small kernel of every path: a layer's mask has shape (n_path, R*nk) and lives in
the layer's `kernel_mask` buffer (so it is saved in, and restored from, ordinary model checkpoints; the
layer's forward multiplies its kernels by it, so masked kernels contribute nothing and get zero gradient).

Schedule (the reference's, without its bugs):

- `init_masks(batch, loss_fn)`: SNIP scores (mean over the k x k taps of |w * dL/dw|, per small kernel
  and path) on one batch; one global threshold keeps the top (1 - sparsity) share of all kernels, which
  gives each layer its density; a layer at density >= `dense_threshold` stays dense (no mask), the
  others get that many kernels at random positions, the first path's pattern copied to every path.
- `step(optimizer)` after every optimiser step: re-applies the masks to the weights; every
  `update_interval` optimiser steps comes a prune/regrow update, in which each (layer, path) loses its
  ceil(rate * nonzeros) smallest-L1 kernels and regrows as many at random among its zeroed kernels
  (regrown kernels start at 0), with the rate on a cosine from `prune_rate` to `final_prune_rate` over
  `total_steps`.
- Path alignment, the reference's schedule and order: every `align_interval`-th UPDATE (update number
  u = steps // update_interval with u % align_interval == 0; the recipe's 100 and 131 align at steps
  13,100, 26,200, ...) the prune step of that update ranks the kernels of a layer by sum_p |w_p| over the
  paths instead of path by path, keeps the best (nonzeros - ceil(rate * nonzeros)) for every path and
  regrows one common set: all paths leave the update with the same mask. There is no alignment outside
  an update (update_interval=None disables both).
- Whenever a kernel leaves the mask (or enters it again), its weights and every optimiser state tensor
  shaped like the parameter (Adam's exp_avg / exp_avg_sq / max_exp_avg_sq, SGD's momentum_buffer, ...)
  are zeroed at its position, for any torch.optim optimiser (state that is not parameter-shaped, e.g. a
  factored second moment, is left alone).
- Mixed precision: masks act on the parameters the optimiser steps (the fp32 parameters under
  torch.autocast, or bf16/fp16 parameters if the model was cast); nothing assumes a dtype.
- Distributed: random draws come from a private generator seeded identically on every rank, and every
  new mask is broadcast from rank 0 when torch.distributed is initialised, so all ranks hold the same
  masks even when their SNIP batches differ. A DistributedDataParallel wrapper may be passed (its
  `.module` is used); call `init_masks` before wrapping so DDP sees the mask buffers from the start.
- `state_dict()` / `load_state_dict()` carry the masks, the counters and the generator state.

Downstream fine-tuning with the loaded sparsity pattern fixed: `masks_from_weights(model)` puts masks
derived from the zero kernels of the loaded weights into the layers; nothing else is needed (the masked
forward keeps those kernels at zero: their gradient is zero, and so is weight decay of a zero weight).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
from torch import nn

from swtasks.layers import ShiftWiseConv2d

from .base import DynamicSparsity, SparsityError, loss_gradients

__all__ = ["KernelSparsity", "fold_masks", "masks_from_weights", "shiftwise_layers", "snip_scores"]


def shiftwise_layers(model: nn.Module) -> dict[str, ShiftWiseConv2d]:
    """The training-form ShiftWiseConv2d modules of `model`, by qualified name (deployed ones have no
    small kernels left to mask)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, ShiftWiseConv2d) and not m.deploy}


def kernel_magnitude(layer: ShiftWiseConv2d) -> torch.Tensor:
    """L1 norm of every small kernel, (n_path, R*nk), in float32."""
    return layer.weight.detach().float().abs().sum(dim=(2, 3))


def _write_mask(layer: ShiftWiseConv2d, mask: torch.Tensor | None) -> None:
    if mask is None:
        if layer.kernel_mask is not None:
            layer.set_kernel_mask(None)
        return
    current = layer.kernel_mask
    if current is not None and current.shape == mask.shape:
        current.copy_(mask)  # in place: keeps the buffer object (and its dtype/device)
    else:
        layer.set_kernel_mask(mask.to(device=layer.weight.device, dtype=torch.float32))


def masks_from_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Give every training-form ShiftWiseConv2d with zero kernels a mask that fixes them at zero.

    For fine-tuning a sparse checkpoint (detection, segmentation) with its sparsity pattern kept: a
    small kernel whose weights are all zero (in a given path) is masked; layers without zero kernels
    keep no mask. Returns the masks that were set, by layer name.
    """
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, layer in shiftwise_layers(model).items():
            mask = (kernel_magnitude(layer) != 0).float()
            if bool(mask.all()):
                _write_mask(layer, None)
                continue
            _write_mask(layer, mask)
            out[name] = mask
    return out


def fold_masks(model: nn.Module) -> int:
    """Multiply every small-kernel mask into its weights and drop the mask (pruned kernels become exact
    zeros, from which `masks_from_weights` recovers the pattern); returns how many were folded. The
    per-weight masks of swtasks.sparse.unstructured stay: they are applied to the weights at every step
    already, and the models that carry them (SLaK) load them."""
    n = 0
    with torch.no_grad():
        for m in model.modules():
            mask = getattr(m, "kernel_mask", None)
            if isinstance(mask, torch.Tensor) and hasattr(m, "set_kernel_mask"):
                m.weight.mul_(mask.to(m.weight.dtype)[..., None, None])
                m.set_kernel_mask(None)
                n += 1
    return n


def snip_scores(
    model: nn.Module, batch, loss_fn: Callable, layers: Mapping[str, ShiftWiseConv2d] | None = None
) -> dict[str, torch.Tensor]:
    """SNIP saliency of every small kernel: mean over its taps of |w * dL/dw|, shape (n_path, R*nk).

    `batch` is (inputs, targets) with `loss = loss_fn(model(inputs), targets)`, or an input alone with
    `loss = loss_fn(model(inputs))`. The scores are taken on the dense model (any masks are lifted for
    the measurement and put back), gradients do not touch `.grad`, and the model's buffers (BatchNorm
    running statistics) are left as they were.
    """
    layers = dict(shiftwise_layers(model) if layers is None else layers)
    if not layers:
        raise SparsityError("the model has no training-form ShiftWiseConv2d layer to score")
    saved_masks = {
        n: (None if m.kernel_mask is None else m.kernel_mask.detach().clone()) for n, m in layers.items()
    }
    try:
        for layer in layers.values():
            _write_mask(layer, None)
        grads = loss_gradients(model, batch, loss_fn, [layer.weight for layer in layers.values()])
    finally:
        with torch.no_grad():
            for n, layer in layers.items():
                _write_mask(layer, saved_masks[n])
    scores = {}
    for (name, layer), g in zip(layers.items(), grads):
        w = layer.weight.detach().float()
        g = torch.zeros_like(w) if g is None else g.float()
        scores[name] = (w * g).abs().mean(dim=(2, 3))
    return scores


class KernelSparsity(DynamicSparsity):
    """Dynamic per-small-kernel sparsity of a model's ShiftWiseConv2d layers (see the module docstring).

    ```python
    sparsity = KernelSparsity(model, sparsity=0.3, total_steps=len(loader) * epochs)
    sparsity.init_masks(next(iter(loader)), F.cross_entropy)
    for x, y in loader:
        loss = F.cross_entropy(model(x), y); loss.backward()
        optimizer.step(); optimizer.zero_grad()
        sparsity.step(optimizer)
    torch.save({"model": model.state_dict(), "sparsity": sparsity.state_dict(), ...}, path)
    ```

    `update_interval` counts optimiser steps (calls of `step`), `align_interval` counts prune/regrow
    updates (the reference's `sparse_gap`). `update_interval=None` disables prune/regrow and with it the
    alignment (a fixed pattern); `align_interval=None` disables the alignment alone. Layers that already
    carry a `kernel_mask` (a model checkpoint was loaded) are adopted as they are; `load_state_dict` also
    restores the step counter and the generator. Further keywords (`total_steps`, `final_prune_rate`,
    `dense_threshold`, `seed`): swtasks.sparse.base.DynamicSparsity.
    """

    _layers_wanted = "training-form ShiftWiseConv2d layer"

    def __init__(
        self,
        model: nn.Module,
        *,
        sparsity: float = 0.3,
        update_interval: int | None = 100,
        prune_rate: float = 0.3,
        align_interval: int | None = 131,
        **schedule,
    ):
        super().__init__(model, sparsity=sparsity, update_interval=update_interval, prune_rate=prune_rate,
                         align_interval=align_interval, **schedule)

    # ------------------------------------------------------------------ the layer-level pieces

    def _find_layers(self, model):
        return shiftwise_layers(model)

    def _mask(self, layer):
        return layer.kernel_mask

    def _set_mask(self, layer, mask):
        _write_mask(layer, None if mask is None else mask.to(layer.weight.device).float())

    def _mask_shape(self, layer):
        return tuple(layer.weight.shape[:2])

    def _expand(self, mask):
        return mask[..., None, None]

    def _draw_size(self, layer):
        return layer.weight.shape[1]  # one pattern for all paths

    def _mask_from_positions(self, layer, positions, n):
        row = torch.zeros(n)
        row[positions] = 1.0
        return row.expand(layer.weight.shape[0], n).contiguous()

    def _config(self):
        return {"align_interval": self.align_interval}

    def _target_densities(self, batch, loss_fn):
        """With a batch and a loss function the layer densities come from SNIP scores under one global
        threshold (keeping the top 1 - sparsity of all kernels); without them every layer gets 1 - sparsity."""
        if batch is None:
            if loss_fn is not None:
                raise ValueError("init_masks: loss_fn given without a batch")
            return {n: 1.0 - self.sparsity for n in self.layers}
        if loss_fn is None:
            raise ValueError("init_masks: a batch needs a loss_fn (called as loss_fn(model(x), y))")
        scores = snip_scores(self.model, batch, loss_fn, self.layers)
        flat = torch.cat([s.flatten().cpu() for s in scores.values()])
        n_keep = max(1, round(flat.numel() * (1.0 - self.sparsity)))
        threshold = torch.topk(flat, n_keep, sorted=True).values[-1]
        return {n: float((s.cpu() >= threshold).float().mean()) for n, s in scores.items()}

    def _prune_regrow_layer(self, layer, mask, rate, align):
        """Path by path: the ceil(rate * nonzeros) smallest-L1 active kernels go and as many zeroed kernels
        come back at random. With `align=True` (the scheduled every `align_interval`-th update) the prune
        ranks the kernels by sum_p |w_p| (masked) instead, every path keeps the same best ones, ties going
        to kernels active in more paths, and one random regrowth is shared: all paths end with one mask.
        Survivors: the kernels that stayed active (regrown ones start from 0)."""
        old = mask.detach().cpu() > 0.5
        magnitude = kernel_magnitude(layer).cpu()
        new, keep = (self._aligned_prune_regrow if align else self._prune_regrow)(old, magnitude, rate)
        return new.float(), keep.float()

    def _prune_regrow(self, old: torch.Tensor, magnitude: torch.Tensor, rate: float):
        keep, new = old.clone(), old.clone()
        for p in range(old.shape[0]):
            n_remove = math.ceil(rate * int(old[p].sum()))
            if n_remove == 0:
                continue
            keep[p] = self._drop_smallest(old[p], magnitude[p], n_remove)
            new[p] = self._regrow(keep[p], n_remove)
        return new, keep

    def _aligned_prune_regrow(self, old: torch.Tensor, magnitude: torch.Tensor, rate: float):
        count = round(float(old.float().sum(1).mean()))
        n_remove = math.ceil(rate * count)
        score = (magnitude * old).sum(0)
        by_paths = torch.argsort(old.sum(0), descending=True, stable=True)
        order = by_paths[torch.argsort(score[by_paths], descending=True, stable=True)]
        common = torch.zeros(old.shape[1], dtype=torch.bool)
        common[order[: count - n_remove]] = True
        new = self._regrow(common, n_remove).expand_as(old).clone()
        return new, old & common
