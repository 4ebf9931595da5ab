"""The four-stage ConvNeXt/UniRepLKNet-layout skeleton shared by ShiftWiseNet, UniRepLKNet and SLaK.

`FourStageNet` holds what these networks do the same way (argument checks, outputs, classifier,
weight-decay names, activation checkpointing, re-parameterisation); `unireplknet_downsample_layers` is the
stem + downsampling of UniRepLKNet and ShiftWiseNet; `fold_pointwise_tail` is the deploy fold of the
block's second pointwise layer that both their blocks use. Module names (`downsample_layers`, `stages`,
`norm`/`head`, `norm{i}`) mirror the published implementations, which keeps their checkpoints loadable and
the layer-id rule of swtasks.models.param_groups applicable.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

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

from .common import (
    FeatureInfo,
    StageFreezing,
    as_stage_tuple,
    check_classifier_reset,
    check_global_pool,
    check_head_args,
    check_image_input,
    checkpoint_block,
    sync_num_classes,
)
from .registry import ModelConfigError

__all__ = [
    "FourStageNet",
    "build_pointwise_tail",
    "fold_pointwise_tail",
    "pointwise_tail",
    "unireplknet_downsample_layers",
]


def unireplknet_downsample_layers(in_chans: int, dims: Sequence[int]) -> nn.ModuleList:
    """Stem (Conv3x3 s2 -> LN -> GELU -> Conv3x3 s2 -> LN) and three Conv3x3 s2 -> LN downsamplings."""
    layers = nn.ModuleList()
    layers.append(
        nn.Sequential(
            nn.Conv2d(in_chans, dims[0] // 2, kernel_size=3, stride=2, padding=1),
            LayerNorm(dims[0] // 2, eps=1e-6, data_format="channels_first"),
            nn.GELU(),
            nn.Conv2d(dims[0] // 2, dims[0], kernel_size=3, stride=2, padding=1),
            LayerNorm(dims[0], eps=1e-6, data_format="channels_first"),
        )
    )
    for i in range(3):
        layers.append(
            nn.Sequential(
                nn.Conv2d(dims[i], dims[i + 1], kernel_size=3, stride=2, padding=1),
                LayerNorm(dims[i + 1], eps=1e-6, data_format="channels_first"),
            )
        )
    return layers


# ------------------------------------------------------------------------------------------------------
# the pointwise tail fold, shared by ShiftWiseBlock and UniRepLKNetBlock
# ------------------------------------------------------------------------------------------------------


def build_pointwise_tail(
    block: nn.Module, dim: int, ffn_factor: float, layer_scale_init_value: float | None, drop_path: float,
    deploy: bool,
) -> None:
    """Give ``block`` the UniRepLKNet block's tail after its token mixer and norm: ``se`` (SE, C -> C/4),
    ``pwconv1`` (channels last, Linear C -> ffn), ``act`` (GELU, GRN), ``pwconv2`` (Linear ffn -> C without
    bias, channels first, BatchNorm; deploy: Linear with bias), ``gamma`` (layer scale or None) and
    ``drop_path`` - the published module names of ShiftWiseNet's and UniRepLKNet's blocks."""
    block.se = SEBlock(dim, dim // 4)
    ffn_dim = int(ffn_factor * dim)
    block.pwconv1 = nn.Sequential(ToChannelsLast(), nn.Linear(dim, ffn_dim))
    block.act = nn.Sequential(nn.GELU(), GRN(ffn_dim, use_bias=not deploy))
    if deploy:
        block.pwconv2 = nn.Sequential(nn.Linear(ffn_dim, dim), ToChannelsFirst())
    else:
        block.pwconv2 = nn.Sequential(nn.Linear(ffn_dim, dim, bias=False), ToChannelsFirst(), nn.BatchNorm2d(dim))
    use_ls = (not deploy) and layer_scale_init_value is not None and layer_scale_init_value > 0
    block.gamma = nn.Parameter(layer_scale_init_value * torch.ones(dim)) if use_ls else None
    block.drop_path = DropPath(drop_path)


def pointwise_tail(block: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """The residual branch after the mixer and norm: drop_path(gamma * pwconv2(act(pwconv1(se(y)))))."""
    y = block.pwconv2(block.act(block.pwconv1(block.se(y))))
    if block.gamma is not None:
        y = block.gamma.view(1, -1, 1, 1) * y
    return block.drop_path(y)


@torch.no_grad()
def fold_pointwise_tail(block: nn.Module) -> None:
    """Fold GRN beta, pwconv2's BatchNorm and the layer scale into pwconv2's Linear, in place (eval
    semantics, float64). The block has UniRepLKNet's attributes: `act` = (GELU, GRN), `pwconv2` =
    (Linear(4C, C), ToChannelsFirst, BatchNorm2d(C)) and `gamma` (C,) or None. Afterwards pwconv2 =
    (Linear(4C, C, bias=True), ToChannelsFirst), the GRN has no beta and `gamma` is None:

        gamma * BN(W (u + beta) + b) = [gamma s W] u + gamma (s (W beta + b) + t)

    with s, t the BatchNorm's eval scale and shift. A block already folded (pwconv2 without its BN) is left
    as it is."""
    if len(block.pwconv2) < 3:
        return
    grn = block.act[1]
    linear, bn = block.pwconv2[0], block.pwconv2[2]
    f64 = torch.float64
    w = linear.weight.to(f64)  # (C, 4C)
    b = w.new_zeros(w.shape[0]) if linear.bias is None else linear.bias.to(f64)
    if grn.use_bias:
        b = b + w @ grn.beta.reshape(-1).to(f64)
        del grn.beta
        grn.use_bias = False
    bn_s, bn_b = bn_scale_shift(bn)
    ls = block.gamma.to(f64) if block.gamma is not None else torch.ones_like(bn_s)
    new = nn.Linear(linear.in_features, linear.out_features, bias=True)
    new = new.to(device=linear.weight.device, dtype=linear.weight.dtype)
    new.weight.copy_(w * (bn_s * ls).view(-1, 1))
    new.bias.copy_((b * bn_s + bn_b) * ls)
    block.pwconv2 = nn.Sequential(new, ToChannelsFirst())
    block.gamma = None


# ------------------------------------------------------------------------------------------------------
# the four-stage skeleton
# ------------------------------------------------------------------------------------------------------


class FourStageNet(StageFreezing, nn.Module):
    """Base of the four-stage ConvNeXt/UniRepLKNet-layout networks (see the module docstring).

    A subclass calls `_setup(...)` first (checks, attributes, drop-path rates), builds `downsample_layers`
    and `stages` (blocks with a `reparameterize()` method), then `_build_outputs(head_init_scale)`.
    """

    deploy: bool
    features_only: bool

    def _setup(
        self,
        *,
        in_chans: int,
        num_classes: int,
        depths: Sequence[int],
        dims: Sequence[int],
        drop_path_rate: float,
        deploy: bool,
        features_only: bool,
        out_indices: Sequence[int],
        grad_checkpointing: bool,
        global_pool: str = "avg",
        min_dim: int = 1,
    ) -> list[float]:
        """Check and store the common arguments; return the per-block drop-path rates (linear from 0)."""
        depths = tuple(int(d) for d in as_stage_tuple("depths", depths))
        dims = tuple(int(d) for d in as_stage_tuple("dims", dims))
        if any(d < 0 for d in depths):
            raise ModelConfigError(f"depths must be >= 0, got {depths}")
        if any(d < min_dim for d in dims):
            raise ModelConfigError(f"dims must be >= {min_dim}, got {dims}")
        out_indices = check_head_args(in_chans, num_classes, features_only, out_indices)
        if not 0.0 <= drop_path_rate < 1.0:
            raise ModelConfigError(f"drop_path_rate must be in [0, 1), got {drop_path_rate!r}")
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.depths, self.dims = depths, dims
        self.deploy = deploy
        self.features_only = features_only
        self.out_indices = out_indices if features_only else (0, 1, 2, 3)
        self.grad_checkpointing = grad_checkpointing
        self.total_stride = 32
        self.global_pool = check_global_pool(global_pool)
        # timm's names: the width of forward_features' map and of the pre-logits
        self.num_features = self.head_hidden_size = dims[-1]
        return torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist() if sum(depths) else []

    def _build_outputs(self, head_init_scale: float = 1.0) -> None:
        """feature_info, the per-map norms (features_only) or the classifier norm + head; initialise weights."""
        dims = self.dims
        info = [{"num_chs": dims[i], "reduction": 4 * 2**i, "module": f"stages.{i}", "stage": i} for i in range(4)]
        if self.features_only:
            self.feature_info = FeatureInfo(info[i] for i in self.out_indices)
            for i in self.out_indices:
                self.add_module(f"norm{i}", LayerNorm(dims[i], eps=1e-6, data_format="channels_first"))
            self.norm = None
            self.head = None
        else:
            self.feature_info = FeatureInfo(info)
            self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
            self.head = nn.Linear(dims[-1], self.num_classes) if self.num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)
        if isinstance(self.head, nn.Linear):
            with torch.no_grad():
                self.head.weight.mul_(head_init_scale)
                self.head.bias.mul_(head_init_scale)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        """The published init: truncated normal (std 0.02) for every conv and linear weight, zero biases.
        Tensors on the meta device (a model built only for its structure or parameter count) are skipped."""
        if isinstance(m, (nn.Conv2d, nn.Linear)) and not m.weight.is_meta:
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    # -------------------------------------------------------------------------------------- forward
    def _run_stage(self, i: int, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
            for block in self.stages[i]:
                x = checkpoint_block(block, x)
            return x
        return self.stages[i](x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """The last stage's NCHW map (B, dims[-1], H/32, W/32); with features_only the list of maps."""
        check_image_input(x, self.in_chans, self.total_stride)
        outs = []
        last = max(self.out_indices) if self.features_only else 3
        for i in range(last + 1):
            x = self._run_stage(i, self.downsample_layers[i](x))
            if self.features_only and i in self.out_indices:
                outs.append(getattr(self, f"norm{i}")(x))
        return outs if self.features_only else x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global average pool -> LayerNorm -> classifier; pre_logits=True stops before the classifier.
        With global_pool='' no pooling: LayerNorm and classifier at every position, (B, C, H, W) out."""
        if self.features_only:
            raise RuntimeError("a features_only model has no classification head")
        if not self.global_pool:
            x = self.norm(x.permute(0, 2, 3, 1))
            return (x if pre_logits else self.head(x)).permute(0, 3, 1, 2)
        x = self.norm(x.mean(dim=(-2, -1)))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        x = self.forward_features(x)
        return x if self.features_only else self.forward_head(x)

    # -------------------------------------------------------------------------------------- protocol
    def get_classifier(self) -> nn.Module:
        return self.head

    def stage_modules(self, k: int) -> list[nn.Module]:
        """Frozen by ``freeze_stages(k)``: the stem ``downsample_layers.0``, then ``stages.i`` with its
        downsampling layer ``downsample_layers.i`` for i < k."""
        mods = [self.downsample_layers[0]]
        for i in range(k):
            mods.append(self.stages[i])
            if i > 0:
                mods.append(self.downsample_layers[i])
        return mods

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier by a freshly initialised one with `num_classes` outputs (0: none), on the
        model's device and dtype and in its training mode; `global_pool` ('avg' or '' for none; None keeps
        the current one) as timm's."""
        check_classifier_reset(self, num_classes)
        if global_pool is not None:
            self.global_pool = check_global_pool(global_pool)
        ref = self.norm.weight
        self.num_classes = num_classes
        self.head = nn.Identity()
        if num_classes > 0:
            self.head = nn.Linear(self.num_features, num_classes).to(device=ref.device, dtype=ref.dtype)
            self._init_weights(self.head)
            self.head.train(self.training)
        sync_num_classes(self, num_classes)

    def no_weight_decay(self) -> set[str]:
        """Parameters without weight decay: every parameter with fewer than two dimensions (biases, norm
        weights, layer scales) and the GRN gamma/beta (per-channel, though shaped (1, 1, 1, C))."""
        names = {n for n, p in self.named_parameters() if p.dim() < 2 or n.endswith(".bias")}
        for mname, m in self.named_modules():
            if isinstance(m, GRN):
                names.update(f"{mname}.{p}" for p, _ in m.named_parameters(recurse=False))
        return names

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing per block while grad is enabled (outputs, gradients and BatchNorm running
        statistics identical to the plain forward; see swtasks.models.common.checkpoint_block)."""
        self.grad_checkpointing = bool(enable)

    @torch.no_grad()
    def reparameterize(self) -> FourStageNet:
        """Turn the training structure into the deploy structure in place (eval semantics: BatchNorms fold
        with their running statistics). Idempotent. Returns self."""
        for stage in self.stages:
            for block in stage:
                block.reparameterize()
        self.deploy = True
        return self

    def extra_repr(self) -> str:
        return f"depths={self.depths}, dims={self.dims}, deploy={self.deploy}, features_only={self.features_only}"


