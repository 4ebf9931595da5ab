"""The ShiftWiseNet block's forward on CPU: the same function as `ShiftWiseBlock.residual`, with fewer
passes over memory.

Why it exists: on CPU the block is bound by memory traffic outside its two matrix products (measurements:
benchmarks/RESULTS.md, "Where the CPU time goes"). The module path lays the MLP out channels-last by
permuting an NCHW tensor, so the first Linear copies its input, the GRN's L2 norm reduces over the outer
(H, W) dimensions of an NHWC tensor (PyTorch's CPU norm kernel is ~10x slower there than over a contiguous
inner dimension) and the residual add mixes NCHW and NHWC strides. Here everything stays NCHW:

- the operator and the BatchNorm after it run as in the module (the strip convolutions prefer NCHW on CPU,
  and their backward is slow in channels-last); in the deploy structure the ghost channels' affine is
  applied in place on the operator's fresh output;
- the pointwise Linears run as 1x1 convolutions on the NCHW tensor (the same matrix product, no copy);
- GELU, then GRN with its norm over the contiguous (H, W) dimensions; GRN's beta goes into the second
  product's bias (W beta), exactly as the deploy fold does;
- the BatchNorm after the second product takes the layer scale into its affine (training: batch statistics
  are the same; eval: the same per-channel affine), and the residual add is NCHW + NCHW.

Every result equals the module path up to float rounding (tests/test_analysis.py checks forward and
gradients against `ShiftWiseBlock.residual`, training and deploy structures). The module path stays the
reference and is used on other devices (the GPU has its own fused operator; this path is unmeasured there).
Imports torch only.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["block_forward_nchw", "use_nchw_path"]


def use_nchw_path(x: torch.Tensor) -> bool:
    """Whether a block runs this path for input `x`: 4-D CPU tensors."""
    return x.device.type == "cpu" and x.dim() == 4


def _grn_scale(u: torch.Tensor, grn) -> torch.Tensor:
    """GRN's per-(sample, channel) factor gamma * Nx + 1 for an NCHW tensor u, shape (B, C4, 1, 1)."""
    gx = torch.linalg.vector_norm(u, ord=2, dim=(2, 3), keepdim=True)
    nx = gx / (gx.mean(dim=1, keepdim=True) + grn.eps)
    return grn.gamma.reshape(1, -1, 1, 1).to(u.dtype) * nx + 1


def _batch_norm_scaled(bn: nn.BatchNorm2d, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """scale * bn(x) as one F.batch_norm call (the scale multiplies the affine weight and bias); running
    statistics and num_batches_tracked are updated exactly as nn.BatchNorm2d.forward does."""
    factor = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    use_batch_stats = bn.training or (bn.running_mean is None and bn.running_var is None)
    keep = not bn.training or bn.track_running_stats
    weight = scale if bn.weight is None else bn.weight * scale
    bias = None if bn.bias is None else bn.bias * scale
    return F.batch_norm(x, bn.running_mean if keep else None, bn.running_var if keep else None, weight, bias,
                        use_batch_stats, factor, bn.eps)


def _pointwise(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, in_scale: torch.Tensor,
               inplace: bool = False) -> torch.Tensor:
    """Linear(weight (Cout, Cin), bias) of `in_scale * x` over the channels of an NCHW tensor, output NCHW;
    in_scale (B, Cin, 1, 1) is a per-sample channel factor (the SE or GRN scale).

    Large maps with few channels (stages 1-2 of the paper variants) run as one GEMM per sample with the factor
    in the weight, (W * s_b) @ x_b: the per-sample weights are 5-40x smaller than the map, so the scaled map is
    never written. Small maps with many channels scale the map (in place when `inplace`) and run a 1x1
    convolution (oneDNN), which is faster there than per-sample GEMMs."""
    b, cin, h, w = x.shape
    cout = weight.shape[0]
    if h * w >= max(cin, cout):
        wb = weight.to(x.dtype).unsqueeze(0) * in_scale.view(b, 1, cin).to(x.dtype)
        xb = x.reshape(b, cin, h * w)
        out = torch.bmm(wb, xb) if bias is None else torch.baddbmm(bias.to(x.dtype).view(1, cout, 1), wb, xb)
        return out.view(b, cout, h, w)
    x = x.mul_(in_scale) if inplace else x * in_scale
    return F.conv2d(x, weight.view(cout, cin, 1, 1), bias)


def _squeeze_excite(se, y: torch.Tensor) -> torch.Tensor:
    """SEBlock's channel scale (B, C, 1, 1) with its 1x1 convolutions as Linears on the pooled (B, C) vector
    (oneDNN spends milliseconds setting up a convolution on a 1x1 map)."""
    s = y.mean(dim=(2, 3))
    d, u = se.down, se.up
    s = F.relu(F.linear(s, d.weight.flatten(1), d.bias))
    return torch.sigmoid(F.linear(s, u.weight.flatten(1), u.bias)).view(*s.shape[:1], -1, 1, 1)


def block_forward_nchw(block, x: torch.Tensor) -> torch.Tensor:
    """`x + block.residual(x)` for an NCHW input, computed NCHW throughout (see the module docstring)."""
    lk = block.large_kernel
    y = lk(x)
    if not block.deploy:
        y = block.norm(y)
    elif not isinstance(block.norm, nn.Identity):
        y = block.norm(y, lk.ghost_idx)  # GhostChannelAffine
    inplace = not torch.is_grad_enabled()  # no autograd graph: overwrite fresh intermediates
    lin1, lin2, grn = block.pwconv1[1], block.pwconv2[0], block.act[1]
    u = _pointwise(y, lin1.weight, lin1.bias, _squeeze_excite(block.se, y))  # SE scale, then Linear C -> 4C
    gelu = block.act[0]
    u = torch._C._nn.gelu_(u, approximate=gelu.approximate) if inplace and type(gelu) is nn.GELU else gelu(u)
    bias = lin2.bias
    if grn.use_bias:  # GRN's beta through the product: W (v + beta) = W v + W beta
        wb = lin2.weight @ grn.beta.reshape(-1).to(lin2.weight.dtype)
        bias = wb if bias is None else bias + wb
    out = _pointwise(u, lin2.weight, bias, _grn_scale(u, grn), inplace)  # GRN scale, then Linear 4C -> C
    if len(block.pwconv2) > 2:  # training structure: BatchNorm, then the layer scale
        bn = block.pwconv2[2]
        if block.gamma is not None and type(bn) is nn.BatchNorm2d:
            out = _batch_norm_scaled(bn, out, block.gamma)
        else:  # SyncBatchNorm and friends: their own forward
            out = bn(out)
            if block.gamma is not None:
                out = block.gamma.view(1, -1, 1, 1) * out
    elif block.gamma is not None:
        out = block.gamma.view(1, -1, 1, 1) * out
    out = block.drop_path(out)
    return out.add_(x) if inplace else x + out
