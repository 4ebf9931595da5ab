"""ShiftWiseNet: UniRepLKNet's macro-architecture with the shift-wise (SW) operator as its large kernel.

Spec: docs/models.md, "ShiftWiseNet". Module names mirror the reference implementation's state dict
so that converting the published checkpoint is a near-identity key mapping:

    downsample_layers.0          stem: Conv3x3 s2 (3 -> C0/2) . LayerNorm(cf) . GELU . Conv3x3 s2 . LayerNorm(cf)
    downsample_layers.{1,2,3}    Conv3x3 s2 . LayerNorm(cf)
    stages.{s}.{b}               ShiftWiseBlock (below)
    norm, head                   LayerNorm on the pooled features, Linear classifier (classification only)
    norm{i}                      LayerNorm(cf) per returned map (features_only only, like the dense-task
                                 reference)

Block, training structure (`stages.{s}.{b}.<name>`):

    large_kernel  ShiftWiseConv2d (identity add and ghost pass-through inside; channel order preserved)
    norm          BatchNorm2d(C)
    se            SEBlock: se.down (C -> C/4), se.up (C/4 -> C), 1x1 convs with bias
    pwconv1       Sequential(ToChannelsLast, Linear(C, 4C))            -> pwconv1.1.weight/bias
    act           Sequential(GELU, GRN(4C))                            -> act.1.gamma/beta (1,1,1,4C)
    pwconv2       Sequential(Linear(4C, C, bias=False), ToChannelsFirst, BatchNorm2d(C))
                                                                       -> pwconv2.0.weight, pwconv2.2.*
    gamma         layer scale (C,) (absent when layer_scale_init_value is None or <= 0)
    drop_path     DropPath (no parameters)
    out = x + drop_path(gamma * pwconv2(act(pwconv1(se(norm(large_kernel(x)))))))

Deploy structure (after `reparameterize()`, or built directly with deploy=True):

    large_kernel  ShiftWiseConv2d deploy form (weight_h, weight_v, bias, rep_idx, ghost_idx), with the
                  eval-mode BatchNorm `norm` folded into it for the rep channels (exact: the deploy
                  operator is a depthwise conv + bias on those channels);
    norm          GhostChannelAffine: the same BN as a per-channel affine (weight, bias of shape (G,)) on the
                  ghost channels only - the operator is the identity there, so nothing upstream can absorb
                  the BN's shift exactly (nn.Identity when there are no ghost channels);
    act.1         GRN without beta (beta projected through pwconv2 into its bias);
    pwconv2       Sequential(Linear(4C, C, bias=True), ToChannelsFirst) with pwconv2's BN and the layer
                  scale gamma folded in; no `gamma`.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.checkpoint import checkpoint

from swtasks.layers import ShiftWiseConv2d
from swtasks.layers.common import (
    GRN,
    DropPath,
    LayerNorm,
    SEBlock,
    ToChannelsFirst,
    ToChannelsLast,
    bn_scale_shift,
    trunc_normal_,
)

from .registry import ModelConfigError, check_overrides, register_model

__all__ = [
    "SHIFTWISE_ARCHS",
    "FeatureInfo",
    "GhostChannelAffine",
    "ShiftWiseBlock",
    "ShiftWiseNet",
    "shiftwise_arch",
]


class GhostChannelAffine(nn.Module):
    """Deploy form of the block's BatchNorm on the operator's ghost channels: y[:, idx] = weight * x[:, idx]
    + bias, other channels unchanged. `idx` (the operator's ghost_idx) is passed in by the block, so it is
    never duplicated or stale."""

    def __init__(self, num_channels: int):
        super().__init__()
        self.num_channels = num_channels
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        w = self.weight.view(1, -1, 1, 1).to(x.dtype)
        b = self.bias.view(1, -1, 1, 1).to(x.dtype)
        return x.index_copy(1, index, torch.addcmul(b, x.index_select(1, index), w))

    def extra_repr(self) -> str:
        return f"{self.num_channels}"


class _KeepRunningStats:
    """Recompute context for activation checkpointing: BatchNorms in training mode would update their
    running statistics a second time while the forward is recomputed; save them on entry and put them back
    on exit, so a checkpointed step leaves exactly the state an ordinary one does."""

    def __init__(self, bns: list[_BatchNorm]):
        self.bns = bns
        self.saved: list[tuple] = []

    def __enter__(self):
        self.saved = [
            (bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()) for bn in self.bns
        ]
        return self

    def __exit__(self, *exc):
        with torch.no_grad():
            for bn, (m, v, n) in zip(self.bns, self.saved):
                bn.running_mean.copy_(m)
                bn.running_var.copy_(v)
                bn.num_batches_tracked.copy_(n)
        self.saved = []
        return False


class ShiftWiseBlock(nn.Module):
    """One UniRepLKNet block with the SW operator (see the module docstring for the layout)."""

    def __init__(
        self,
        dim: int,
        kernel_size: int,
        small_kernel: int = 3,
        ghost_ratio: float = 0.23,
        n_path: int = 2,
        n_rep: int = 4,
        ffn_factor: float = 4,
        drop_path: float = 0.0,
        layer_scale_init_value: float | None = 1e-6,
        deploy: bool = False,
        backend: str | None = None,
        variant: str | None = None,
        dot_precision: str | None = None,
        deterministic: bool | None = None,
    ):
        super().__init__()
        self.dim = dim
        self.deploy = deploy
        self.large_kernel = ShiftWiseConv2d(
            dim, kernel_size, small_kernel=small_kernel, ghost_ratio=ghost_ratio, n_path=n_path, n_rep=n_rep,
            deploy=deploy, backend=backend, variant=variant, dot_precision=dot_precision, deterministic=deterministic,
        )
        ghosts = self.large_kernel.ghost_channels
        if deploy:
            self.norm = GhostChannelAffine(ghosts) if ghosts > 0 else nn.Identity()
        else:
            self.norm = nn.BatchNorm2d(dim)
        self.se = SEBlock(dim, dim // 4)
        ffn_dim = int(ffn_factor * dim)
        self.pwconv1 = nn.Sequential(ToChannelsLast(), nn.Linear(dim, ffn_dim))
        self.act = nn.Sequential(nn.GELU(), GRN(ffn_dim, use_bias=not deploy))
        if deploy:
            self.pwconv2 = nn.Sequential(nn.Linear(ffn_dim, dim), ToChannelsFirst())
        else:
            self.pwconv2 = nn.Sequential(nn.Linear(ffn_dim, dim, bias=False), ToChannelsFirst(), nn.BatchNorm2d(dim))
        use_ls = (not deploy) and layer_scale_init_value is not None and layer_scale_init_value > 0
        self.gamma = nn.Parameter(layer_scale_init_value * torch.ones(dim)) if use_ls else None
        self.drop_path = DropPath(drop_path)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        y = self.large_kernel(x)
        if isinstance(self.norm, GhostChannelAffine):
            y = self.norm(y, self.large_kernel.ghost_idx)
        else:
            y = self.norm(y)
        y = self.pwconv2(self.act(self.pwconv1(self.se(y))))
        if self.gamma is not None:
            y = self.gamma.view(1, -1, 1, 1) * y
        return self.drop_path(y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.residual(x)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold, in place and with eval semantics (running statistics), everything that folds exactly."""
        if self.deploy:
            return
        lk = self.large_kernel
        lk.reparameterize()  # paths, the three BNs, the centre tile and the identity -> weight_h/v + bias
        f64 = torch.float64
        # 1. the BN after the operator: rep channels into the deploy cross kernel and bias; ghost channels
        #    (identity inside the operator) keep a per-channel affine. Folded in float64.
        scale, shift = bn_scale_shift(self.norm)
        rep, ghost = lk.rep_idx, lk.ghost_idx
        s_rep = scale[rep]
        for p in (lk.weight_h, lk.weight_v):
            p.copy_(p.to(f64) * s_rep.view(-1, 1, 1))
        lk.bias.copy_(lk.bias.to(f64) * s_rep + shift[rep])
        if ghost.numel() > 0:
            ref = self.norm.weight
            affine = GhostChannelAffine(ghost.numel()).to(device=ref.device, dtype=ref.dtype)
            affine.weight.copy_(scale[ghost])
            affine.bias.copy_(shift[ghost])
            self.norm = affine
        else:
            self.norm = nn.Identity()
        # 2. GRN beta, pwconv2's BN and the layer scale into pwconv2 (now a Linear with bias):
        #    gamma * BN(W (u + beta)) = [gamma * s * W] u + gamma * (s * (W beta) + t)
        grn = self.act[1]
        linear, bn = self.pwconv2[0], self.pwconv2[2]
        w = linear.weight.to(f64)  # (C, 4C)
        b = w.new_zeros(w.shape[0]) if linear.bias is None else linear.bias.to(f64)
        if grn.use_bias:
            b = b + w @ grn.beta.reshape(-1).to(f64)
            del grn.beta
            grn.use_bias = False
        bn_s, bn_b = bn_scale_shift(bn)
        ls = self.gamma.to(f64) if self.gamma is not None else torch.ones_like(bn_s)
        new = nn.Linear(linear.in_features, linear.out_features, bias=True)
        new = new.to(device=linear.weight.device, dtype=linear.weight.dtype)
        new.weight.copy_(w * (bn_s * ls).view(-1, 1))
        new.bias.copy_((b * bn_s + bn_b) * ls)
        self.pwconv2 = nn.Sequential(new, ToChannelsFirst())
        self.gamma = None
        self.deploy = True


class FeatureInfo(list):
    """`feature_info`: a list of dicts (num_chs, reduction, module), with timm-style accessors."""

    def channels(self) -> list[int]:
        return [f["num_chs"] for f in self]

    def reduction(self) -> list[int]:
        return [f["reduction"] for f in self]

    def module_name(self) -> list[str]:
        return [f["module"] for f in self]


def _as_tuple(name: str, value: Any, n: int = 4) -> tuple:
    if isinstance(value, (int, float)) and name != "depths":
        value = (value,) * n
    try:
        value = tuple(value)
    except TypeError:
        raise ModelConfigError(f"{name} must be a sequence of {n} values, got {value!r}") from None
    if len(value) != n:
        raise ModelConfigError(f"{name} must have {n} entries (one per stage), got {value!r}")
    return value


class ShiftWiseNet(nn.Module):
    """ShiftWiseNet classifier / backbone. Every argument is a create_model override.

    Args:
        in_chans: image channels.
        num_classes: classifier outputs (0: no classifier; forward returns the pre-logit features).
        depths, dims: blocks and channels per stage (4 stages, strides 4/8/16/32).
        kernel_sizes: the SW big kernel per stage (an int applies to all stages).
        small_kernel, ghost_ratio, n_path, n_rep: the SW operator's settings (shared by all stages).
        ffn_factor: width of the pointwise MLP relative to the stage width.
        drop_path_rate: stochastic depth, rising linearly from 0 over all blocks to this value.
        layer_scale_init_value: initial layer scale (None or 0: no layer scale).
        head_init_scale: multiplies the classifier's initial weight and bias.
        deploy: build the re-parameterised inference structure.
        features_only, out_indices: return a list of NCHW maps of the given stages, each through its own
            LayerNorm(cf) `norm{i}`, instead of logits (no `norm` / `head`).
        grad_checkpointing: activation checkpointing per block (see set_grad_checkpointing).
        backend: the SW op backend ('torch', 'triton'; None: automatic).
        variant, dot_precision, deterministic: the SW op's Triton switches (see ShiftWiseConv2d).
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        depths: Sequence[int] = (3, 3, 18, 3),
        dims: Sequence[int] = (80, 160, 320, 640),
        kernel_sizes: Sequence[int] | int = (51, 49, 47, 13),
        small_kernel: int = 3,
        ghost_ratio: float = 0.23,
        n_path: int = 2,
        n_rep: int = 4,
        ffn_factor: float = 4,
        drop_path_rate: float = 0.0,
        layer_scale_init_value: float | None = 1e-6,
        head_init_scale: float = 1.0,
        deploy: bool = False,
        features_only: bool = False,
        out_indices: Sequence[int] = (0, 1, 2, 3),
        grad_checkpointing: bool = False,
        backend: str | None = None,
        variant: str | None = None,
        dot_precision: str | None = None,
        deterministic: bool | None = None,
    ):
        super().__init__()
        depths = tuple(int(d) for d in _as_tuple("depths", depths))
        dims = tuple(int(d) for d in _as_tuple("dims", dims))
        kernel_sizes = tuple(int(k) for k in _as_tuple("kernel_sizes", kernel_sizes))
        if any(d < 0 for d in depths):
            raise ModelConfigError(f"depths must be >= 0, got {depths}")
        if any(d < 4 for d in dims):
            raise ModelConfigError(f"dims must be >= 4 (the SE block uses dim // 4 channels), got {dims}")
        if not isinstance(in_chans, int) or in_chans < 1:
            raise ModelConfigError(f"in_chans must be a positive int, got {in_chans!r}")
        if not isinstance(num_classes, int) or num_classes < 0:
            raise ModelConfigError(f"num_classes must be an int >= 0, got {num_classes!r}")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ModelConfigError(f"drop_path_rate must be in [0, 1), got {drop_path_rate!r}")
        out_indices = tuple(int(i) for i in out_indices)
        if features_only and (not out_indices or len(set(out_indices)) != len(out_indices)
                              or any(not 0 <= i < 4 for i in out_indices)):
            raise ModelConfigError(f"out_indices must be distinct stage indices in 0..3, got {out_indices}")

        self.in_chans = in_chans
        self.num_classes = num_classes
        self.depths, self.dims, self.kernel_sizes = depths, dims, kernel_sizes
        self.deploy = deploy
        self.features_only = features_only
        self.out_indices = out_indices if features_only else (0, 1, 2, 3)
        self.grad_checkpointing = grad_checkpointing
        self.total_stride = 32
        self.num_features = dims[-1]

        self.downsample_layers = nn.ModuleList()
        self.downsample_layers.append(
            nn.Sequential(
                nn.Conv2d(in_chans, dims[0] // 2, kernel_size=3, stride=2, padding=1),
                LayerNorm(dims[0] // 2, eps=1e-6, data_format="channels_first"),
                nn.GELU(),
                nn.Conv2d(dims[0] // 2, dims[0], kernel_size=3, stride=2, padding=1),
                LayerNorm(dims[0], eps=1e-6, data_format="channels_first"),
            )
        )
        for i in range(3):
            self.downsample_layers.append(
                nn.Sequential(
                    nn.Conv2d(dims[i], dims[i + 1], kernel_size=3, stride=2, padding=1),
                    LayerNorm(dims[i + 1], eps=1e-6, data_format="channels_first"),
                )
            )

        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist() if sum(depths) else []
        self.stages = nn.ModuleList()
        cur = 0
        for i in range(4):
            blocks = [
                ShiftWiseBlock(
                    dims[i], kernel_sizes[i], small_kernel=small_kernel, ghost_ratio=ghost_ratio, n_path=n_path,
                    n_rep=n_rep, ffn_factor=ffn_factor, drop_path=rates[cur + j],
                    layer_scale_init_value=layer_scale_init_value, deploy=deploy, backend=backend,
                    variant=variant, dot_precision=dot_precision, deterministic=deterministic,
                )
                for j in range(depths[i])
            ]
            self.stages.append(nn.Sequential(*blocks))
            cur += depths[i]

        all_info = [
            {"num_chs": dims[i], "reduction": 4 * 2**i, "module": f"stages.{i}", "stage": i} for i in range(4)
        ]
        if features_only:
            self.feature_info = FeatureInfo(all_info[i] for i in self.out_indices)
            for i in self.out_indices:
                self.add_module(f"norm{i}", LayerNorm(dims[i], eps=1e-6, data_format="channels_first"))
            self.norm = None
            self.head = None
        else:
            self.feature_info = FeatureInfo(all_info)
            self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
            self.head = nn.Linear(dims[-1], num_classes) if num_classes > 0 else nn.Identity()

        self.apply(self._init_weights)
        if isinstance(self.head, nn.Linear):
            with torch.no_grad():
                self.head.weight.mul_(head_init_scale)
                self.head.bias.mul_(head_init_scale)

    # -------------------------------------------------------------------------------------- init
    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, ShiftWiseConv2d) and not m.deploy:
            # the small kernels are Conv2d weights in the reference, so they get the same init (the
            # deploy form keeps the layer's own identity init: it exists to be loaded into)
            trunc_normal_(m.weight, std=0.02)

    # -------------------------------------------------------------------------------------- forward
    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"expected an image batch of shape (B, {self.in_chans}, H, W), got {shape}")
        if x.shape[1] != self.in_chans:
            raise ValueError(
                f"expected {self.in_chans} image channels, got input of shape {tuple(x.shape)} "
                f"(create the model with in_chans={x.shape[1]} for such images)"
            )
        if x.shape[2] < self.total_stride or x.shape[3] < self.total_stride:
            raise ValueError(
                f"input of shape {tuple(x.shape)} is smaller than the network's total stride "
                f"{self.total_stride}: H and W must be >= {self.total_stride}"
            )

    def _run_stage(self, i: int, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
            for block in self.stages[i]:
                x = _checkpoint_block(block, x)
            return x
        return self.stages[i](x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """The last stage's NCHW map (B, dims[-1], H/32, W/32); with features_only the list of maps."""
        self._check_input(x)
        if self.features_only:
            return self._forward_maps(x)
        for i in range(4):
            x = self.downsample_layers[i](x)
            x = self._run_stage(i, x)
        return x

    def _forward_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        last = max(self.out_indices)
        for i in range(last + 1):
            x = self.downsample_layers[i](x)
            x = self._run_stage(i, x)
            if i in self.out_indices:
                outs.append(getattr(self, f"norm{i}")(x))
        return outs

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global average pool -> LayerNorm -> classifier; pre_logits=True stops before the classifier."""
        if self.features_only:
            raise RuntimeError("a features_only model has no classification head")
        x = self.norm(x.mean(dim=(-2, -1)))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        x = self.forward_features(x)
        if self.features_only:
            return x
        return self.forward_head(x)

    # -------------------------------------------------------------------------------------- protocol
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier by a freshly initialised one with `num_classes` outputs (0: none)."""
        if self.features_only:
            raise RuntimeError("a features_only model has no classifier")
        if not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be an int >= 0, got {num_classes!r}")
        ref = self.norm.weight
        self.num_classes = num_classes
        if num_classes > 0:
            head = nn.Linear(self.num_features, num_classes).to(device=ref.device, dtype=ref.dtype)
            self._init_weights(head)
            self.head = head
        else:
            self.head = nn.Identity()
        for attr in ("pretrained_cfg", "default_cfg"):
            cfg = getattr(self, attr, None)
            if isinstance(cfg, dict):
                cfg["num_classes"] = num_classes

    def no_weight_decay(self) -> set[str]:
        """Names of the parameters that should get no weight decay. Rule: every parameter with fewer than two
        dimensions (all biases, LayerNorm/BatchNorm weights, the layer scales `gamma`, the SW operator's BN
        weights and deploy bias, the ghost affine) plus the GRN `gamma`/`beta` (shape (1,1,1,C) but
        per-channel). Conv/Linear weights and the SW kernels (`weight`, `weight_h`, `weight_v`) decay."""
        names = set()
        for name, p in self.named_parameters():
            if p.dim() < 2 or name.endswith(".bias"):
                names.add(name)
        for mname, m in self.named_modules():
            if isinstance(m, GRN):
                for pname, _ in m.named_parameters(recurse=False):
                    names.add(f"{mname}.{pname}")
        return names

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing per block (torch.utils.checkpoint, use_reentrant=False) while grad is
        enabled. Outputs, gradients and BatchNorm running statistics are identical to the plain forward
        (drop-path masks are replayed from the saved RNG state; running statistics are not updated twice)."""
        self.grad_checkpointing = bool(enable)

    @torch.no_grad()
    def reparameterize(self) -> ShiftWiseNet:
        """Turn the training structure into the deploy structure in place (eval semantics: BatchNorms fold
        with their running statistics). Idempotent. Returns self."""
        for stage in self.stages:
            for block in stage:
                block.reparameterize()
        self.deploy = True
        return self

    def extra_repr(self) -> str:
        return (
            f"depths={self.depths}, dims={self.dims}, kernel_sizes={self.kernel_sizes}, deploy={self.deploy}, "
            f"features_only={self.features_only}"
        )


def _checkpoint_block(block: ShiftWiseBlock, x: torch.Tensor) -> torch.Tensor:
    bns = [m for m in block.modules() if isinstance(m, _BatchNorm) and m.training and m.track_running_stats]
    if not bns:
        return checkpoint(block, x, use_reentrant=False)
    return checkpoint(block, x, use_reentrant=False, context_fn=lambda: (nullcontext(), _KeepRunningStats(bns)))


# ------------------------------------------------------------------------------------------------------
# variants
# ------------------------------------------------------------------------------------------------------

_PAPER_SW = dict(kernel_sizes=(51, 49, 47, 13), small_kernel=3, ghost_ratio=0.23, n_path=2, n_rep=4)
# Small CPU variants: UniRepLKNet's atto/femto/pico widths and depths, big kernels 13/11/9/7 (nk = 5/4/3/3
# with k=3: centred and off-centre strips both appear), otherwise the paper's SW settings.
_SMALL_SW = dict(kernel_sizes=(13, 11, 9, 7), small_kernel=3, ghost_ratio=0.23, n_path=2, n_rep=4)

SHIFTWISE_ARCHS: dict[str, dict[str, Any]] = {
    "atto": dict(depths=(2, 2, 6, 2), dims=(40, 80, 160, 320), **_SMALL_SW),
    "femto": dict(depths=(2, 2, 6, 2), dims=(48, 96, 192, 384), **_SMALL_SW),
    "pico": dict(depths=(2, 2, 6, 2), dims=(64, 128, 256, 512), **_SMALL_SW),
    "tiny": dict(depths=(3, 3, 18, 3), dims=(80, 160, 320, 640), **_PAPER_SW),
    "small": dict(depths=(3, 3, 27, 3), dims=(96, 192, 384, 768), **_PAPER_SW),
    "base": dict(depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024), **_PAPER_SW),
    "large": dict(depths=(3, 3, 27, 3), dims=(192, 384, 768, 1536), **_PAPER_SW),
}

_ACCEPTED = tuple(p for p in inspect.signature(ShiftWiseNet.__init__).parameters if p != "self")


def shiftwise_arch(arch: str) -> dict[str, Any]:
    """A copy of the settings of variant `arch` ('tiny', ... or 'shiftwise_tiny', ...)."""
    key = arch[len("shiftwise_"):] if arch.startswith("shiftwise_") else arch
    if key not in SHIFTWISE_ARCHS:
        raise ModelConfigError(f"unknown ShiftWiseNet arch {arch!r}; choose one of {', '.join(SHIFTWISE_ARCHS)}")
    return dict(SHIFTWISE_ARCHS[key])


def _build(arch: str, /, **kwargs: Any) -> ShiftWiseNet:  # positional: `variant` is an operator switch
    check_overrides(f"shiftwise_{arch}", kwargs, _ACCEPTED)
    return ShiftWiseNet(**{**SHIFTWISE_ARCHS[arch], **kwargs})


_CFG = dict(input_size=(3, 224, 224), crop_pct=0.875, interpolation="bicubic")


@register_model(pretrained_cfg=_CFG)
def shiftwise_atto(**kwargs: Any) -> ShiftWiseNet:
    """Test/CPU-demo size: depths 2/2/6/2, dims 40/80/160/320, kernels 13/11/9/7."""
    return _build("atto", **kwargs)


@register_model(pretrained_cfg=_CFG)
def shiftwise_femto(**kwargs: Any) -> ShiftWiseNet:
    """CPU size: depths 2/2/6/2, dims 48/96/192/384, kernels 13/11/9/7."""
    return _build("femto", **kwargs)


@register_model(pretrained_cfg=_CFG)
def shiftwise_pico(**kwargs: Any) -> ShiftWiseNet:
    """CPU size: depths 2/2/6/2, dims 64/128/256/512, kernels 13/11/9/7."""
    return _build("pico", **kwargs)


@register_model(pretrained_cfg=_CFG)
def shiftwise_tiny(**kwargs: Any) -> ShiftWiseNet:
    """SW-T (paper): depths 3/3/18/3, dims 80/160/320/640, kernels 51/49/47/13; 31,790,260 params."""
    return _build("tiny", **kwargs)


@register_model(pretrained_cfg=_CFG)
def shiftwise_small(**kwargs: Any) -> ShiftWiseNet:
    """SW-S: depths 3/3/27/3, dims 96/192/384/768, kernels 51/49/47/13."""
    return _build("small", **kwargs)


@register_model(pretrained_cfg=_CFG)
def shiftwise_base(**kwargs: Any) -> ShiftWiseNet:
    """SW-B: depths 3/3/27/3, dims 128/256/512/1024, kernels 51/49/47/13."""
    return _build("base", **kwargs)


@register_model(pretrained_cfg=_CFG)
def shiftwise_large(**kwargs: Any) -> ShiftWiseNet:
    """SW-L: depths 3/3/27/3, dims 192/384/768/1536, kernels 51/49/47/13."""
    return _build("large", **kwargs)
