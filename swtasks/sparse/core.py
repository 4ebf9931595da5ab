"""Per-small-kernel dynamic sparsity for ShiftWiseConv2d (operator spec, section 7).

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
from collections.abc import Callable, Iterable, Mapping

import torch
import torch.distributed as dist
from torch import nn

from swtasks.errors import UserError
from swtasks.layers import ShiftWiseConv2d


class SparsityError(UserError, ValueError):
    """A sparse-training setting out of range, a model without layers to sparsify, or a saved sparsity state
    that does not fit the model (a ValueError too, as these always were)."""

__all__ = ["KernelSparsity", "masks_from_weights", "shiftwise_layers", "snip_scores"]

STATE_VERSION = 1


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


def _split_batch(batch):
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    return batch, None


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
    inputs, targets = _split_batch(batch)
    saved_buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    saved_masks = {
        n: (None if m.kernel_mask is None else m.kernel_mask.detach().clone()) for n, m in layers.items()
    }
    try:
        for layer in layers.values():
            _write_mask(layer, None)
        weights = [layer.weight for layer in layers.values()]
        with torch.enable_grad():
            out = model(inputs)
            loss = loss_fn(out) if targets is None else loss_fn(out, targets)
            grads = torch.autograd.grad(loss, weights, allow_unused=True)
    finally:
        with torch.no_grad():
            for n, b in model.named_buffers():
                if n in saved_buffers and b.shape == saved_buffers[n].shape:
                    b.copy_(saved_buffers[n])
            for n, layer in layers.items():
                _write_mask(layer, saved_masks[n])
    scores = {}
    for (name, layer), g in zip(layers.items(), grads):
        w = layer.weight.detach().float()
        g = torch.zeros_like(w) if g is None else g.float()
        scores[name] = (w * g).abs().mean(dim=(2, 3))
    return scores


def _unwrap_optimizers(optimizer) -> list[torch.optim.Optimizer]:
    if optimizer is None:
        return []
    opts = list(optimizer) if isinstance(optimizer, (list, tuple)) else [optimizer]
    out = []
    for opt in opts:
        # Lightning's LightningOptimizer and similar wrappers keep the real optimiser in `.optimizer`.
        while not isinstance(opt, torch.optim.Optimizer) and hasattr(opt, "optimizer"):
            opt = opt.optimizer
        if not hasattr(opt, "state"):
            raise TypeError(f"expected a torch.optim.Optimizer, got {type(opt).__name__}")
        out.append(opt)
    return out


def reset_optimizer_state(
    optimizers: Iterable[torch.optim.Optimizer], param: torch.Tensor, keep: torch.Tensor
):
    """Zero, at the positions where `keep` (broadcastable to param) is 0, every optimiser state tensor
    that has the parameter's shape (moments, momentum buffers, ...)."""
    for opt in optimizers:
        state = opt.state.get(param)
        if not state:
            continue
        for value in state.values():
            if torch.is_tensor(value) and value.shape == param.shape:
                value.mul_(keep.to(device=value.device, dtype=value.dtype))


def check_schedule(
    sparsity: float, total_steps: int | None, update_interval: int | None, prune_rate: float,
    final_prune_rate: float, dense_threshold: float,
) -> None:
    """SparsityError (a ValueError) naming the first bad setting of a dynamic-sparsity schedule (shared by every
    method)."""
    if not 0.0 <= sparsity < 1.0:
        raise SparsityError(f"sparsity must be in [0, 1), got {sparsity!r}")
    if update_interval is not None and (not isinstance(update_interval, int) or update_interval <= 0):
        raise SparsityError(f"update_interval must be a positive int or None, got {update_interval!r}")
    if update_interval is not None and (not isinstance(total_steps, int) or total_steps <= 0):
        raise SparsityError(
            f"total_steps must be a positive int when update_interval is set (the prune rate decays over it), "
            f"got {total_steps!r}"
        )
    for arg, value in (("prune_rate", prune_rate), ("final_prune_rate", final_prune_rate)):
        if not 0.0 <= value <= 1.0:
            raise SparsityError(f"{arg} must be in [0, 1], got {value!r}")
    if not 0.0 < dense_threshold <= 1.0:
        raise SparsityError(f"dense_threshold must be in (0, 1], got {dense_threshold!r}")


class KernelSparsity:
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
    restores the step counter and the generator.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        sparsity: float = 0.3,
        total_steps: int | None = None,
        update_interval: int | None = 100,
        prune_rate: float = 0.3,
        final_prune_rate: float = 0.005,
        align_interval: int | None = 131,
        dense_threshold: float = 0.99,
        seed: int = 0,
    ):
        check_schedule(sparsity, total_steps, update_interval, prune_rate, final_prune_rate, dense_threshold)
        if align_interval is not None and (not isinstance(align_interval, int) or align_interval <= 0):
            raise SparsityError(f"align_interval must be a positive int or None, got {align_interval!r}")
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module  # score and name layers on the plain module (checkpoint names)
        self.model = model
        self.layers = shiftwise_layers(model)
        if not self.layers:
            raise SparsityError("the model has no training-form ShiftWiseConv2d layer to sparsify")
        self.sparsity = float(sparsity)
        self.total_steps = total_steps
        self.update_interval = update_interval
        self.prune_rate = float(prune_rate)
        self.final_prune_rate = float(final_prune_rate)
        self.align_interval = align_interval
        self.dense_threshold = float(dense_threshold)
        self.seed = seed
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(seed)
        self.steps = 0  # calls of step(), i.e. optimiser steps
        self.updates = 0  # prune/regrow rounds done
        # layers that already carry masks (a model checkpoint was loaded) are adopted as they are
        self._initialized = any(m.kernel_mask is not None for m in self.layers.values())

    # ------------------------------------------------------------------ views

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        """The current masks of the sparse layers (the layers' own buffers), by layer name."""
        return {n: m.kernel_mask for n, m in self.layers.items() if m.kernel_mask is not None}

    @property
    def initialized(self) -> bool:
        """Whether masks were set (init_masks, load_state_dict, or adopted from the layers); a model whose
        layers all came out dense is initialised with no masks."""
        return self._initialized

    def density(self) -> float:
        """Share of active small kernels over all training-form SW layers (dense layers count as 1)."""
        active = total = 0.0
        for layer in self.layers.values():
            n = layer.weight.shape[0] * layer.weight.shape[1]
            total += n
            active += n if layer.kernel_mask is None else float(layer.kernel_mask.sum())
        return active / total

    def layer_densities(self) -> dict[str, float]:
        return {
            n: 1.0 if m.kernel_mask is None else float(m.kernel_mask.float().mean())
            for n, m in self.layers.items()
        }

    def current_prune_rate(self, step: int | None = None) -> float:
        """Cosine decay from prune_rate to final_prune_rate over total_steps."""
        t = self.steps if step is None else step
        if not self.total_steps:
            return self.prune_rate
        frac = min(max(t, 0), self.total_steps) / self.total_steps
        return self.final_prune_rate + 0.5 * (self.prune_rate - self.final_prune_rate) * (
            1 + math.cos(math.pi * frac)
        )

    # ------------------------------------------------------------------ initialisation

    def init_masks(self, batch=None, loss_fn: Callable | None = None, optimizer=None) -> dict[str, float]:
        """Set the initial masks; returns the density of every layer.

        With a batch and a loss function the layer densities come from SNIP scores under one global
        threshold; without them every layer gets density 1 - sparsity. Positions inside a layer are
        random (first path's pattern copied to the others); layers at >= dense_threshold stay dense.
        """
        if batch is None:
            if loss_fn is not None:
                raise ValueError("init_masks: loss_fn given without a batch")
            densities = {n: 1.0 - self.sparsity for n in self.layers}
        else:
            if loss_fn is None:
                raise ValueError("init_masks: a batch needs a loss_fn (called as loss_fn(model(x), y))")
            scores = snip_scores(self.model, batch, loss_fn, self.layers)
            flat = torch.cat([s.flatten().cpu() for s in scores.values()])
            n_keep = max(1, round(flat.numel() * (1.0 - self.sparsity)))
            threshold = torch.topk(flat, n_keep, sorted=True).values[-1]
            densities = {n: float((s.cpu() >= threshold).float().mean()) for n, s in scores.items()}
        # Ranks scored different batches: all take rank 0's densities (then draw identical positions).
        shared = torch.tensor([densities[n] for n in self.layers], dtype=torch.float64)
        self._broadcast_([shared])
        densities = dict(zip(self.layers, shared.tolist()))

        with torch.no_grad():
            for name, layer in self.layers.items():
                n_path, n = layer.weight.shape[:2]
                if densities[name] >= self.dense_threshold:
                    _write_mask(layer, None)
                    continue
                count = min(n, max(1, round(densities[name] * n)))
                row = torch.zeros(n)
                row[torch.randperm(n, generator=self.generator)[:count]] = 1.0
                _write_mask(layer, row.expand(n_path, n).contiguous())
            self._broadcast_(list(self.masks.values()))
            self._apply_masks(_unwrap_optimizers(optimizer), reset_state=True)
        self._initialized = True
        return self.layer_densities()

    # ------------------------------------------------------------------ training step

    def schedule_at(self, step: int) -> tuple[bool, bool]:
        """(prune/regrow update, path alignment) at optimiser step `step` (1-based, as counted by `step()`):
        an update every `update_interval` steps, aligned when its number `step // update_interval` is a
        multiple of `align_interval` (the reference: `steps // update_frequency % sparse_gap == 0`)."""
        if self.update_interval is None or step <= 0 or step % self.update_interval:
            return False, False
        update = step // self.update_interval
        return True, self.align_interval is not None and update % self.align_interval == 0

    def step(self, optimizer=None) -> None:
        """Call after every optimiser step (optimizer: the optimiser or a list of them, for state resets)."""
        if not self.initialized:
            raise RuntimeError("KernelSparsity.step() before init_masks() (or load_state_dict())")
        opts = _unwrap_optimizers(optimizer)
        self.steps += 1
        with torch.no_grad():
            self._apply_masks(opts, reset_state=False)
            update, align = self.schedule_at(self.steps)
            if update:
                self.prune_and_regrow(opts, align=align)

    @torch.no_grad()
    def prune_and_regrow(self, optimizer=None, rate: float | None = None, align: bool = False) -> None:
        """One prune/regrow update on every sparse layer; the nonzero count of every path is kept.

        Path by path: the ceil(rate * nonzeros) smallest-L1 active kernels go and as many zeroed kernels
        come back at random. With `align=True` (the scheduled every `align_interval`-th update) the prune
        ranks the kernels by sum_p |w_p| (masked) instead, every path keeps the same best ones, ties going
        to kernels active in more paths, and one random regrowth is shared: all paths end with one mask.
        Weights and optimiser state of every kernel that did not stay active in a path are zeroed.
        """
        opts = _unwrap_optimizers(optimizer)
        rate = self.current_prune_rate() if rate is None else rate
        new_masks, survivors = {}, {}
        for name, mask in self.masks.items():
            old = mask.detach().cpu() > 0.5
            magnitude = kernel_magnitude(self.layers[name]).cpu()
            if align:
                new, keep = self._aligned_prune_regrow(old, magnitude, rate)
            else:
                new, keep = self._prune_regrow(old, magnitude, rate)
            new_masks[name], survivors[name] = new, keep
        self._commit(new_masks, survivors, opts)
        self.updates += 1

    def _regrow(self, keep: torch.Tensor, count: int) -> torch.Tensor:
        """`keep` (1-D bool) plus `count` kernels drawn at random among the others."""
        candidates = torch.nonzero(~keep).flatten()
        grow = candidates[torch.randperm(candidates.numel(), generator=self.generator)[:count]]
        new = keep.clone()
        new[grow] = True
        return new

    def _prune_regrow(self, old: torch.Tensor, magnitude: torch.Tensor, rate: float):
        keep, new = old.clone(), old.clone()
        for p in range(old.shape[0]):
            n_remove = math.ceil(rate * int(old[p].sum()))
            if n_remove == 0:
                continue
            score = torch.where(old[p], magnitude[p], torch.full_like(magnitude[p], math.inf))
            keep[p, torch.argsort(score, stable=True)[:n_remove]] = False
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

    # ------------------------------------------------------------------ internals

    def _commit(self, new_masks, survivors, opts) -> None:
        """Install new masks (rank 0's, when distributed); zero the weights and optimiser state of every
        kernel that did not stay active throughout (pruned ones, and regrown ones: they start from 0)."""
        names = list(new_masks)
        tensors = [new_masks[n].float() for n in names] + [survivors[n].float() for n in names]
        self._broadcast_(tensors)
        for i, name in enumerate(names):
            layer = self.layers[name]
            _write_mask(layer, tensors[i])
            keep = (tensors[i] * tensors[len(names) + i]).to(layer.weight.device)[..., None, None]
            layer.weight.mul_(keep.to(layer.weight.dtype))
            reset_optimizer_state(opts, layer.weight, keep)

    def _apply_masks(self, opts, reset_state: bool) -> None:
        for layer in self.layers.values():
            if layer.kernel_mask is None:
                continue
            keep = layer.kernel_mask.to(layer.weight.dtype)[..., None, None]
            layer.weight.mul_(keep)
            if reset_state:
                reset_optimizer_state(opts, layer.weight, keep)

    def _broadcast_(self, tensors: list[torch.Tensor]) -> None:
        """In place: every rank gets rank 0's values (one flat broadcast), when torch.distributed is
        initialised with more than one process; otherwise nothing happens."""
        if not tensors or not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return
        device = next(iter(self.layers.values())).weight.device  # NCCL wants CUDA tensors
        flat = torch.cat([t.detach().flatten().double() for t in tensors]).to(device)
        dist.broadcast(flat, src=0)
        offset = 0
        for t in tensors:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()

    # ------------------------------------------------------------------ checkpointing

    def state_dict(self) -> dict:
        return {
            "version": STATE_VERSION,
            "steps": self.steps,
            "updates": self.updates,
            "masks": {n: m.detach().cpu().clone() for n, m in self.masks.items()},
            "generator": self.generator.get_state(),
            "config": {
                "sparsity": self.sparsity,
                "total_steps": self.total_steps,
                "update_interval": self.update_interval,
                "prune_rate": self.prune_rate,
                "final_prune_rate": self.final_prune_rate,
                "align_interval": self.align_interval,
                "dense_threshold": self.dense_threshold,
                "seed": self.seed,
            },
        }

    def load_state_dict(self, state: Mapping) -> None:
        """Restore masks (into the layers, applied to the weights), counters and the generator.
        The schedule settings stay those given to the constructor."""
        masks = state["masks"]
        unknown = sorted(set(masks) - set(self.layers))
        bad = [
            f"{n}: {tuple(m.shape)} vs {tuple(self.layers[n].weight.shape[:2])}"
            for n, m in masks.items()
            if n in self.layers and tuple(m.shape) != tuple(self.layers[n].weight.shape[:2])
        ]
        if unknown or bad:
            raise SparsityError(
                "sparsity state does not fit this model: "
                + "; ".join(
                    ([f"unknown layers {unknown}"] if unknown else [])
                    + ([f"mis-shaped masks {bad}"] if bad else [])
                )
            )
        with torch.no_grad():
            for name, layer in self.layers.items():
                mask = masks.get(name)
                _write_mask(layer, None if mask is None else mask.to(layer.weight.device).float())
            self._apply_masks([], reset_state=False)
        self._initialized = True
        self.steps = int(state["steps"])
        self.updates = int(state.get("updates", 0))
        if "generator" in state:
            self.generator.set_state(state["generator"])
