"""Re-parameterisation into the deploy structure, verified: the one function every tool uses.

`reparameterize_verified(model)` runs a batch through the training structure (eval semantics), folds in
place (`model.reparameterize()`, or a given `fold`), runs the same batch again and raises
ReparameterizationError when the outputs moved by more than the tolerance - so no tool can write a deploy
file that computes something else. `reparameterize_file` is the file-to-file form behind
`tools/reparameterize.py`; `tools/export_backbone.py --reparameterize` and `tools/reparameterize_mm.py`
call `reparameterize_verified` too.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

from swtasks.checkpoint import (
    file_num_classes,
    is_loading_option,
    load_into,
    meta_of,
    read_checkpoint,
    save_weights,
)
from swtasks.errors import UserError

from .registry import create_model

__all__ = [
    "NothingToFoldError",
    "ReparameterizationError",
    "has_training_structure",
    "reparameterize_file",
    "reparameterize_verified",
]


class ReparameterizationError(UserError, RuntimeError):
    """The deploy structure does not reproduce the training structure's outputs."""


def _as_list(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _as_list(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _as_list(o)]
    raise TypeError(f"cannot compare outputs of type {type(out).__name__}")


class NothingToFoldError(UserError, ValueError):
    """A model without a re-parameterisation (no reparameterize(), no layer in training structure)."""


def has_training_structure(model: nn.Module) -> bool:
    """Whether ``model`` or one of its layers can still be folded (a ``reparameterize()`` and ``deploy``
    False): a registry model in training structure, or a foreign model with converted shift-wise layers."""
    if callable(getattr(model, "reparameterize", None)):
        return not getattr(model, "deploy", False)
    return any(
        callable(getattr(m, "reparameterize", None)) and getattr(m, "deploy", None) is False for m in model.modules()
    )


def example_batch(model: nn.Module, batch: int = 2, size: int | None = None, seed: int = 0) -> torch.Tensor:
    """A seeded random batch the model accepts: ``in_chans`` channels, at least its total stride and 64 px."""
    size = max(size or 64, int(getattr(model, "total_stride", 32)))
    ref = next(iter(model.parameters()), None)
    x = torch.randn(batch, int(getattr(model, "in_chans", 3)), size, size, generator=torch.Generator().manual_seed(seed))
    return x if ref is None else x.to(device=ref.device, dtype=ref.dtype)


@torch.no_grad()
def reparameterize_verified(
    model: nn.Module,
    *,
    example: torch.Tensor | None = None,
    forward: Callable[[torch.Tensor], Any] | None = None,
    fold: Callable[[], Any] | None = None,
    rtol: float = 1e-4,
    check: bool = True,
) -> dict[str, Any]:
    """Fold ``model`` into its deploy structure in place (eval mode) and verify it.

    ``forward`` (default: ``model``) computes the outputs compared before and after ``fold`` (default:
    ``model.reparameterize()``) on ``example`` (default: :func:`example_batch`). The error is
    ``max over outputs of ||after - before|| / ||before||``; above ``rtol`` a ReparameterizationError names
    it. ``check=False`` folds without comparing. Returns ``{"params_before", "params_after",
    "relative_error"}`` (the error is None without a check).
    """
    if fold is None:
        if callable(getattr(model, "reparameterize", None)):
            fold = model.reparameterize
        elif has_training_structure(model):  # a foreign model with converted layers (swtasks.layers.to_shiftwise)
            from swtasks.layers.convert import reparameterize_shiftwise

            def fold():
                reparameterize_shiftwise(model)
        else:
            raise NothingToFoldError(f"{type(model).__name__} has no reparameterize() and no layer to fold")
    forward = forward or model
    model.eval()
    before_params = sum(p.numel() for p in model.parameters())
    x = None
    if check:
        x = example if example is not None else example_batch(model)
        before = [t.detach().double().clone() for t in _as_list(forward(x))]
    fold()
    report = {"params_before": before_params, "params_after": sum(p.numel() for p in model.parameters()),
              "relative_error": None}
    if check:
        after = [t.detach().double() for t in _as_list(forward(x))]
        if len(after) != len(before) or any(a.shape != b.shape for a, b in zip(after, before)):
            raise ReparameterizationError("the deploy structure returns outputs of other shapes than before")
        err = max(((a - b).norm() / b.norm().clamp_min(1e-12)).item() for a, b in zip(after, before))
        report["relative_error"] = err
        if not err <= rtol:
            raise ReparameterizationError(
                f"the deploy structure does not reproduce the outputs: relative error {err:.3g} > {rtol:g}"
            )
    return report


def reparameterize_file(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    model: str,
    num_classes: int | None = None,
    overrides: dict | None = None,
    verify: bool = True,
    verify_size: int = 64,
    trust_pickle: bool = False,
    allow_download: bool = False,
) -> dict[str, Any]:
    """Load a training-structure weights file into registry model ``model``, fold it (verified) and write the
    deploy weights to ``dst`` (``{"state_dict", "meta"}``; .safetensors by extension). Returns the meta."""
    overrides = dict(overrides or {})
    obj = read_checkpoint(src, trust_pickle=trust_pickle, allow_download=allow_download)  # read once: for its meta and for the weights
    if num_classes is None:
        found = file_num_classes(meta_of(obj).get("num_classes"), source=os.fspath(src))
        num_classes = 1000 if found is None else found
    net = create_model(model, num_classes=int(num_classes), **overrides)
    load_into(net, obj, source=os.fspath(src))
    example = example_batch(net, size=verify_size) if verify else None
    report = reparameterize_verified(net, example=example, check=verify)
    meta = {
        "architecture": model,
        "num_classes": int(num_classes),
        "overrides": {k: v for k, v in overrides.items() if not is_loading_option(k)},
        "deploy": True,
        "source": os.path.abspath(os.fspath(src)),
        "verified_relative_error": report["relative_error"],
        "params_before": report["params_before"],
        "params_after": report["params_after"],
    }
    save_weights(dst, net.state_dict(), meta)
    return meta
