"""What every dynamic-sparsity kind shares: the schedule, the counters, the private generator, the rank-0
broadcast, the random regrowth, the optimiser-state reset and the saved state (`DynamicSparsity`); plus the
mask summary the tools print.

A kind (swtasks.sparse.kernel: whole small kernels of the shift-wise operator; swtasks.sparse.unstructured:
single weights of conv and linear layers, SLaK's) says which layers it masks, where a layer's mask lives and
how it multiplies the weight, how it scores for the initial densities and how one layer is pruned and
regrown. Everything that decides the random draws is here once, in a fixed order, so both kinds draw the
same numbers from the same seed as they always did and their saved states keep their layout.

Schedule: `init_masks(batch, loss_fn)` sets every layer's mask at its target density (positions at random,
exactly round(density * n) of them; layers at >= `dense_threshold` keep no mask); `step(optimizer)` after
every optimiser step re-masks the weights and every `update_interval` steps runs `prune_and_regrow`, with
the rate on a cosine from `prune_rate` to `final_prune_rate` over `total_steps` (`align_interval`: every
so-many updates is aligned, for kinds with paths). Distributed: the generator is seeded identically on
every rank and every new mask is rank 0's (`_broadcast_`).

Plain PyTorch: imports torch only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping

import torch
import torch.distributed as dist
from torch import nn

from swtasks.errors import UserError

__all__ = [
    "DynamicSparsity",
    "SparsityError",
    "check_schedule",
    "loss_gradients",
    "mask_summary",
    "reset_optimizer_state",
]

STATE_VERSION = 1


class SparsityError(UserError, ValueError):
    """A sparse-training setting out of range, a model without layers to sparsify, or a saved sparsity state
    that does not fit the model (a ValueError too, as these always were)."""


def split_batch(batch):
    """(inputs, targets) of a batch, or (batch, None) for inputs alone."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    return batch, None


def loss_gradients(model: nn.Module, batch, loss_fn: Callable, weights: list[torch.Tensor]):
    """dL/dw of ``weights`` on one batch ((inputs, targets) with loss_fn(model(x), y), or inputs alone with
    loss_fn(model(x))); None for a weight the loss does not reach. ``.grad`` is not touched and the model's
    buffers (BatchNorm statistics) are put back afterwards."""
    inputs, targets = split_batch(batch)
    saved = {n: b.detach().clone() for n, b in model.named_buffers()}
    try:
        with torch.enable_grad():
            out = model(inputs)
            loss = loss_fn(out) if targets is None else loss_fn(out, targets)
            return torch.autograd.grad(loss, weights, allow_unused=True)
    finally:
        with torch.no_grad():
            for n, b in model.named_buffers():
                if n in saved and b.shape == saved[n].shape:
                    b.copy_(saved[n])


def unwrap_optimizers(optimizer) -> list[torch.optim.Optimizer]:
    """The torch.optim optimisers of an optimiser, a list of them, or wrappers holding one in `.optimizer`."""
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


def reset_optimizer_state(optimizers: Iterable[torch.optim.Optimizer], param: torch.Tensor, keep: torch.Tensor):
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
    """SparsityError (a ValueError) naming the first bad setting of a dynamic-sparsity schedule."""
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


def mask_summary(masks: Mapping[str, torch.Tensor], layers: str, unit: str) -> str:
    """'N <layers> masked, <unit> density D' over the masks (kept entries / all entries; '1 (no zero <unit>s
    found)' without masks): the line the mm backbones print for sparse=True."""
    total = sum(int(m.numel()) for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    density = f"{kept / total:.3f}" if total else f"1 (no zero {unit}s found)"
    return f"{len(masks)} {layers} masked, {unit} density {density}"


class DynamicSparsity:
    """The schedule shared by the sparsity kinds (see the module docstring); a kind subclasses it and
    supplies the layer-level pieces (the methods that raise NotImplementedError here).

    Keyword arguments common to every kind (a kind states its own published defaults for the others):
    `total_steps` (the prune rate decays over them; needed with `update_interval`), `final_prune_rate`,
    `dense_threshold` (a layer at this density or above keeps no mask), `seed` (the private generator).
    """

    kind = ""  # written as the state's 'kind' when set

    def __init__(
        self,
        model: nn.Module,
        *,
        sparsity: float,
        update_interval: int | None,
        prune_rate: float,
        align_interval: int | None,
        total_steps: int | None = None,
        final_prune_rate: float = 0.005,
        dense_threshold: float = 0.99,
        seed: int = 0,
    ):
        check_schedule(sparsity, total_steps, update_interval, prune_rate, final_prune_rate, dense_threshold)
        if align_interval is not None and (not isinstance(align_interval, int) or align_interval <= 0):
            raise SparsityError(f"align_interval must be a positive int or None, got {align_interval!r}")
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module  # score and name layers on the plain module (checkpoint names)
        self.model = model
        self.layers = self._find_layers(model)
        if not self.layers:
            raise SparsityError(f"the model has no {self._layers_wanted} to sparsify")
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
        self._initialized = bool(self.masks)

    # ------------------------------------------------------------------ what a kind supplies

    _layers_wanted = "layer"  # for the error message when there is none

    def _find_layers(self, model: nn.Module) -> dict[str, nn.Module]:
        """The layers this kind masks, by qualified name."""
        raise NotImplementedError

    def _mask(self, layer: nn.Module) -> torch.Tensor | None:
        """The layer's current mask (its own buffer), None when it has none."""
        raise NotImplementedError

    def _set_mask(self, layer: nn.Module, mask: torch.Tensor | None) -> None:
        """Install ``mask`` (any dtype/device; None removes the mask) as the layer's mask."""
        raise NotImplementedError

    def _mask_shape(self, layer: nn.Module) -> tuple[int, ...]:
        raise NotImplementedError

    def _expand(self, mask: torch.Tensor) -> torch.Tensor:
        """A mask made broadcastable to the layer's weight."""
        return mask

    def _mask_from_positions(self, layer: nn.Module, positions: torch.Tensor, n: int) -> torch.Tensor:
        """The initial mask that keeps ``positions`` of the ``n`` drawn over."""
        raise NotImplementedError

    def _target_densities(self, batch, loss_fn) -> dict[str, float]:
        """Every layer's initial density."""
        raise NotImplementedError

    def _prune_regrow_layer(self, layer, mask, rate: float, align: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(new mask, survivors): the layer's mask after one update, and the entries whose weights keep their
        values (all others are zeroed with their optimiser state)."""
        raise NotImplementedError

    def _config(self) -> dict:
        """The kind's own settings in the saved state's config."""
        return {}

    # ------------------------------------------------------------------ views

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        """The current masks of the sparse layers (the layers' own buffers), by layer name."""
        return {n: mask for n, m in self.layers.items() if (mask := self._mask(m)) is not None}

    @property
    def initialized(self) -> bool:
        """Whether masks were set (init_masks, load_state_dict, or adopted from the layers); a model whose
        layers all came out dense is initialised with no masks."""
        return self._initialized

    def density(self) -> float:
        """Share of active mask entries over all sparsified layers (dense layers count fully)."""
        active = total = 0
        for layer in self.layers.values():
            n = math.prod(self._mask_shape(layer))
            mask = self._mask(layer)
            total += n
            active += n if mask is None else int(mask.sum())
        return active / total

    def layer_densities(self) -> dict[str, float]:
        masks = self.masks
        return {n: float(masks[n].float().mean()) if n in masks else 1.0 for n in self.layers}

    def current_prune_rate(self, step: int | None = None) -> float:
        """Cosine decay from prune_rate to final_prune_rate over total_steps."""
        t = self.steps if step is None else step
        if not self.total_steps:
            return self.prune_rate
        frac = min(max(t, 0), self.total_steps) / self.total_steps
        return self.final_prune_rate + 0.5 * (self.prune_rate - self.final_prune_rate) * (
            1 + math.cos(math.pi * frac)
        )

    def schedule_at(self, step: int) -> tuple[bool, bool]:
        """(prune/regrow update, path alignment) at optimiser step `step` (1-based, as counted by `step()`):
        an update every `update_interval` steps, aligned when its number `step // update_interval` is a
        multiple of `align_interval` (the reference: `steps // update_frequency % sparse_gap == 0`)."""
        if self.update_interval is None or step <= 0 or step % self.update_interval:
            return False, False
        update = step // self.update_interval
        return True, self.align_interval is not None and update % self.align_interval == 0

    # ------------------------------------------------------------------ the schedule

    def init_masks(self, batch=None, loss_fn: Callable | None = None, optimizer=None) -> dict[str, float]:
        """Set the initial masks (positions at random, the densities from the kind's scoring) and apply
        them, zeroing the optimiser state of the masked entries; returns the density of every layer."""
        densities = self._target_densities(batch, loss_fn)
        # Ranks scored different batches: all take rank 0's densities (then draw identical positions).
        shared = torch.tensor([densities[n] for n in self.layers], dtype=torch.float64)
        self._broadcast_([shared])
        with torch.no_grad():
            for layer, density in zip(self.layers.values(), shared.tolist()):
                if density >= self.dense_threshold:
                    self._set_mask(layer, None)
                    continue
                n = self._draw_size(layer)
                count = min(n, max(1, round(density * n)))
                positions = torch.randperm(n, generator=self.generator)[:count]
                self._set_mask(layer, self._mask_from_positions(layer, positions, n))
            self._broadcast_(list(self.masks.values()))
            self._apply_masks(unwrap_optimizers(optimizer), reset_state=True)
        self._initialized = True
        return self.layer_densities()

    def _draw_size(self, layer: nn.Module) -> int:
        """How many positions the initial draw chooses among."""
        return math.prod(self._mask_shape(layer))

    def step(self, optimizer=None) -> None:
        """Call after every optimiser step (optimizer: the optimiser or a list of them, for state resets)."""
        if not self._initialized:
            raise RuntimeError(f"{type(self).__name__}.step() before init_masks() (or load_state_dict())")
        opts = unwrap_optimizers(optimizer)
        self.steps += 1
        with torch.no_grad():
            self._apply_masks(opts, reset_state=False)
            update, align = self.schedule_at(self.steps)
            if update:
                self.prune_and_regrow(opts, align=align)

    @torch.no_grad()
    def prune_and_regrow(self, optimizer=None, rate: float | None = None, align: bool = False) -> None:
        """One prune/regrow update on every masked layer (the kind's rule, `_prune_regrow_layer`); the active
        count is kept. Weights and optimiser state of every entry that did not survive are zeroed."""
        opts = unwrap_optimizers(optimizer)
        rate = self.current_prune_rate() if rate is None else rate
        new_masks, survivors = {}, {}
        for name, mask in self.masks.items():
            new_masks[name], survivors[name] = self._prune_regrow_layer(self.layers[name], mask, rate, align)
        self._commit(new_masks, survivors, opts)
        self.updates += 1

    def _drop_smallest(self, old: torch.Tensor, magnitude: torch.Tensor, n_remove: int) -> torch.Tensor:
        """`old` (1-D bool) without its `n_remove` active entries of smallest magnitude (ties: first)."""
        keep = old.clone()
        score = torch.where(old, magnitude, torch.full_like(magnitude, math.inf))
        keep[torch.argsort(score, stable=True)[:n_remove]] = False
        return keep

    def _regrow(self, keep: torch.Tensor, count: int) -> torch.Tensor:
        """`keep` (1-D bool) plus `count` entries drawn at random among the others."""
        candidates = torch.nonzero(~keep).flatten()
        grow = candidates[torch.randperm(candidates.numel(), generator=self.generator)[:count]]
        new = keep.clone()
        new[grow] = True
        return new

    def _commit(self, new_masks, survivors, opts) -> None:
        """Install new masks (rank 0's, when distributed); zero the weights and optimiser state of every entry
        that did not survive."""
        names = list(new_masks)
        tensors = [new_masks[n] for n in names] + [survivors[n] for n in names]
        self._broadcast_(tensors)
        for i, name in enumerate(names):
            layer = self.layers[name]
            self._set_mask(layer, tensors[i])
            keep = self._expand((tensors[i] * tensors[len(names) + i]).to(layer.weight.device))
            layer.weight.mul_(keep.to(layer.weight.dtype))
            reset_optimizer_state(opts, layer.weight, keep)

    def _apply_masks(self, opts, reset_state: bool) -> None:
        for layer in self.layers.values():
            mask = self._mask(layer)
            if mask is None:
                continue
            keep = self._expand(mask.to(layer.weight.dtype))
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
        state = {"version": STATE_VERSION, **({"kind": self.kind} if self.kind else {})}
        state.update(
            steps=self.steps,
            updates=self.updates,
            masks={n: m.detach().cpu().clone() for n, m in self.masks.items()},
            generator=self.generator.get_state(),
            config={
                "sparsity": self.sparsity,
                "total_steps": self.total_steps,
                "update_interval": self.update_interval,
                "prune_rate": self.prune_rate,
                "final_prune_rate": self.final_prune_rate,
                **self._config(),
                "dense_threshold": self.dense_threshold,
                "seed": self.seed,
            },
        )
        return state

    def load_state_dict(self, state: Mapping) -> None:
        """Restore masks (into the layers, applied to the weights), counters and the generator.
        The schedule settings stay those given to the constructor."""
        masks = state["masks"]
        unknown = sorted(set(masks) - set(self.layers))
        bad = [
            f"{n}: {tuple(m.shape)} vs {tuple(self._mask_shape(self.layers[n]))}"
            for n, m in masks.items()
            if n in self.layers and tuple(m.shape) != tuple(self._mask_shape(self.layers[n]))
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
                self._set_mask(layer, masks.get(name))
            self._apply_masks([], reset_state=False)
        self._initialized = True
        self.steps = int(state["steps"])
        self.updates = int(state.get("updates", 0))
        if "generator" in state:
            self.generator.set_state(state["generator"])
