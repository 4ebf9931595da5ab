"""The ShiftWiseNet block's forward on CPU: the same function as `ShiftWiseBlock.residual`, with fewer
passes over memory.

Why it exists: outside its two matrix products the block is bound by memory traffic on CPU, and the module
path adds traffic (measurements: benchmarks/RESULTS.md, "Whole models on CPU"). It lays the MLP out
channels-last by permuting an NCHW tensor, so the first Linear copies its input; GRN's L2 norm reduces over
the outer (H, W) dimensions of an NHWC tensor (PyTorch's CPU norm kernel is ~10x slower there than over a
contiguous inner dimension) and its autograd backward makes several passes over the map; the residual add
mixes NCHW and NHWC strides. Here everything stays NCHW:

- the operator stays NCHW (the strip convolutions prefer it on CPU, and their backward is much slower
  channels-last); in the training structure the operator and the BatchNorm after it are one autograd
  Function (`_OperatorNorm`: the same convolution and BatchNorm kernels, a written-out backward without
  index ops for the identity and ghost channels, sums in place), and the operator's kernels are gathered
  from the small kernels in one index_select (`build_cross_kernels`);
- SE's two 1x1 convolutions on the pooled vector run as Linears (oneDNN spends milliseconds setting up a
  convolution on a 1x1 map);
- each pointwise Linear is one GEMM per sample, (W * scale_b) @ x_b, where the map is large (stages 1-2 at
  224 px): the SE / GRN scale then lives in the small per-sample weight and the scaled map is never
  written; elsewhere the map is scaled and a 1x1 convolution runs (oneDNN is faster there);
- GELU, then GRN with its norm over the contiguous (H, W) dimensions and a written-out backward (one pass
  over the map for the norm's term, three for norm + scale, instead of autograd's six or seven); GRN's beta
  goes into the second product's bias (W beta), as the deploy fold does; where the GRN scale lives in the
  per-sample weights, GRN and the product are one autograd Function, so the map's gradient is one tensor
  (autograd would write GRN's term as a second map and add the two);
- the BatchNorm after the second product takes the layer scale into its affine (the same batch statistics
  and running statistics), and the residual add is NCHW + NCHW; without autograd, fresh intermediates are
  overwritten in place.

Traced on the CPU (torch.export, the ONNX exporter, torch.jit.trace, torch.compile), the deploy structure runs
this path too, in standard operators only (`_deploy_operator_graph`, 1x1 convolutions, GRN in plain operators):
what ONNX Runtime runs fast. The operator covers all C channels (the ghost channels' affine becomes the centre
tap of the horizontal strip and its bias): no gather/scatter of the rep channels, and C, unlike the rep count
(122, 246 in SW-T), is a multiple of 8, so ONNX Runtime runs the strips as its blocked (NCHWc) depthwise
convolution instead of im2col + GEMM. The horizontal strip stays wide (transposing the map costs two passes)
on an input zero-padded by concatenation: a Pad would be folded into the convolution's own padding, and
ONNX Runtime's blocked kernel computes every output whose window overlaps that padding one by one (most
outputs of a 51-wide kernel on a 56-wide map). The training structure traced keeps the module path. Measured
in docs/deploy.md ("ONNX Runtime"). Under torch.fx symbolic tracing (a Proxy has no device) the module path
runs.

Every result equals the module path up to float rounding (tests/test_analysis.py checks outputs, input and
parameter gradients and BatchNorm statistics against `x + ShiftWiseBlock.residual(x)` for the training,
eval and deploy structures, and gradchecks the GRN functions). The module path stays the reference and runs
on other devices (the GPU has its own fused operator; this path is unmeasured there). Forward hooks on the
block's submodules after the operator (se, pwconv1, act, pwconv2), and in the training structure on the
operator and its BatchNorms, do not fire on this path. Imports torch.
"""


from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from swtasks.layers.common import is_traced
from swtasks.ops.cross_torch import strip_convs, strip_input, strip_output
from swtasks.ops.options import resolve_options

__all__ = ["block_forward_nchw", "use_nchw_path"]


def use_nchw_path(x: torch.Tensor) -> bool:
    """Whether a block runs this path for input `x`: 4-D CPU tensors, eager or traced (torch.export, the ONNX
    exporter, torch.jit.trace, torch.compile: then its standard-operator form for the deploy structure and the
    module path for the training structure; its autograd Functions are opaque to tracers). Not under torch.fx
    symbolic tracing (a Proxy). Not under
    CPU autocast either: its written-out backwards assume one dtype per map, autocast mixes bf16 and fp32
    (the module path's autograd handles that; docs/operator.md, "Mixed precision")."""
    if isinstance(x, torch.fx.Proxy):  # symbolic tracing: no device to look at
        return False
    return x.device.type == "cpu" and x.dim() == 4 and not torch.is_autocast_enabled("cpu")


def _grn_forward(u: torch.Tensor, gamma: torch.Tensor, eps: float):
    gx = torch.linalg.vector_norm(u, ord=2, dim=(2, 3), keepdim=True)
    m = gx.mean(dim=1, keepdim=True) + eps
    nx = gx / m
    return gx, m, nx, gamma * nx + 1


def _grn_backward(ctx, saved: tuple, ds: torch.Tensor, du_other: torch.Tensor | None):
    """Gradients of s = gamma * nx + 1 given dL/ds, plus the map gradient du_other from elsewhere (added).
    `saved` is ctx.saved_tensors, read once by the caller (activation checkpointing allows one unpack)."""
    u, gx, m, nx, gamma = saved[:5]
    dgamma = (ds * nx).sum(dim=0, keepdim=True).to(gamma.dtype) if ctx.needs_input_grad[1] else None
    du = None
    if ctx.needs_input_grad[0]:
        dnx = ds * gamma
        # nx_c = gx_c / m with m = mean_c(gx) + eps
        dgx = dnx / m - (dnx * gx).sum(dim=1, keepdim=True) / (m * m * gx.shape[1])
        c = torch.where(gx > 0, dgx / gx, torch.zeros_like(gx))
        du = (u * c).to(u.dtype) if du_other is None else du_other.addcmul_(u, c.to(u.dtype))
    return du, dgamma


class _GRNScale(torch.autograd.Function):
    """GRN's factor s = gamma * gx / (mean_C gx + eps) + 1 with gx = ||u||_2 over (H, W), for NCHW u.

    The backward is written out: autograd's vector-norm backward divides, multiplies and masks the whole map
    (three passes plus the accumulation); here the map is touched once, du = u * (dL/dgx / gx), everything
    else is per (sample, channel). Zero norms get zero gradient, like vector_norm's."""

    @staticmethod
    def forward(ctx, u: torch.Tensor, gamma: torch.Tensor, eps: float) -> torch.Tensor:
        gx, m, nx, s = _grn_forward(u, gamma, eps)
        ctx.save_for_backward(u, gx, m, nx, gamma)
        return s

    @staticmethod
    @once_differentiable
    def backward(ctx, ds: torch.Tensor):
        return (*_grn_backward(ctx, ctx.saved_tensors, ds, None), None)


class _GRNApply(torch.autograd.Function):
    """u * s with s as in _GRNScale (GRN without beta). Backward in three passes over the map: ds = <g, u> per
    (sample, channel), then du = g * s + u * (dL/dgx / gx) written once."""

    @staticmethod
    def forward(ctx, u: torch.Tensor, gamma: torch.Tensor, eps: float) -> torch.Tensor:
        gx, m, nx, s = _grn_forward(u, gamma, eps)
        ctx.save_for_backward(u, gx, m, nx, gamma, s)
        return u * s

    @staticmethod
    @once_differentiable
    def backward(ctx, g: torch.Tensor):
        saved = ctx.saved_tensors
        u, s = saved[0], saved[5]
        b, c = u.shape[:2]
        ds = torch.linalg.vecdot(g.reshape(b, c, -1), u.reshape(b, c, -1)).view(b, c, 1, 1)
        du_direct = (g * s).to(u.dtype) if ctx.needs_input_grad[0] else None
        return (*_grn_backward(ctx, saved, ds, du_direct), None)


class _GRNLinear(torch.autograd.Function):
    """Linear(weight, bias) over the channels of GRN(u) without beta, NCHW in and out, one GEMM per sample
    with GRN's scale s in the per-sample weight: out_b = (W * s_b) @ u_b + bias (the large-map case of
    `_pointwise`). The same function as `_pointwise(u, W, bias, _grn_scale(u, grn))`; the backward is written
    out so that the map's gradient is one tensor: dL/du = (W s_b)^T g_b, then u * (dL/dgx / gx) is added into
    it in place (autograd's version writes the GRN term as a new map and adds the two maps, two more passes
    over the largest tensor of a stage-1 block, each a fresh allocation)."""

    @staticmethod
    def forward(ctx, u: torch.Tensor, gamma: torch.Tensor, eps: float, weight: torch.Tensor,
                bias: torch.Tensor | None) -> torch.Tensor:
        gx, m, nx, s = _grn_forward(u, gamma, eps)
        b, cin, h, w = u.shape
        cout = weight.shape[0]
        wb = weight.to(u.dtype).unsqueeze(0) * s.view(b, 1, cin).to(u.dtype)
        ub = u.reshape(b, cin, h * w)
        out = torch.bmm(wb, ub) if bias is None else torch.baddbmm(bias.to(u.dtype).view(1, cout, 1), wb, ub)
        ctx.save_for_backward(u, gx, m, nx, gamma, weight, s, wb)
        ctx.has_bias = bias is not None
        return out.view(b, cout, h, w)

    @staticmethod
    @once_differentiable
    def backward(ctx, g: torch.Tensor):
        saved = ctx.saved_tensors
        u, weight, s, wb = saved[0], saved[5], saved[6], saved[7]
        b, cin, h, w = u.shape
        g3 = g.reshape(b, -1, h * w)
        need_u, need_gamma, _, need_w, need_bias = ctx.needs_input_grad
        dwb = torch.bmm(g3, u.reshape(b, cin, h * w).transpose(1, 2)) if (need_u or need_gamma or need_w) else None
        dweight = (dwb * s.view(b, 1, cin).to(dwb.dtype)).sum(0).to(weight.dtype) if need_w else None
        dbias = g3.sum(dim=(0, 2)) if need_bias and ctx.has_bias else None
        du = dgamma = None
        if need_u or need_gamma:
            ds = (dwb * weight.to(dwb.dtype).unsqueeze(0)).sum(1).view(b, cin, 1, 1)
            du_direct = torch.bmm(wb.transpose(1, 2), g3).view(b, cin, h, w) if need_u else None
            du, dgamma = _grn_backward(ctx, saved, ds, du_direct)
        return du, dgamma, None, dweight, dbias


def _grn_scale(u: torch.Tensor, grn) -> torch.Tensor:
    """GRN's per-(sample, channel) factor gamma * Nx + 1 for an NCHW tensor u, shape (B, C4, 1, 1)."""
    return _GRNScale.apply(u, grn.gamma.view(1, -1, 1, 1), grn.eps)


def _bn_call(bn: nn.BatchNorm2d) -> tuple:
    """(running_mean, running_var, use_batch_stats, momentum factor) of one BatchNorm call, with
    num_batches_tracked advanced, exactly as nn.BatchNorm2d.forward does it."""
    factor = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    use_batch_stats = bn.training or (bn.running_mean is None and bn.running_var is None)
    keep = not bn.training or bn.track_running_stats
    return bn.running_mean if keep else None, bn.running_var if keep else None, use_batch_stats, factor


def _batch_norm_scaled(bn: nn.BatchNorm2d, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """scale * bn(x) as one F.batch_norm call (the scale multiplies the affine weight and bias); running
    statistics and num_batches_tracked are updated exactly as nn.BatchNorm2d.forward does."""
    mean, var, use_batch_stats, factor = _bn_call(bn)
    weight = scale if bn.weight is None else bn.weight * scale
    bias = None if bn.bias is None else bn.bias * scale
    return F.batch_norm(x, mean, var, weight, bias, use_batch_stats, factor, bn.eps)


class _BNCall(NamedTuple):
    """One BatchNorm application inside _OperatorNorm: its running statistics (None when not kept), whether
    it normalises with batch statistics, and eps."""

    mean: torch.Tensor | None
    var: torch.Tensor | None
    train: bool
    eps: float


def _bn_forward(bn: nn.BatchNorm2d, x: torch.Tensor) -> tuple[torch.Tensor, _BNCall, torch.Tensor, torch.Tensor]:
    mean, var, train, factor = _bn_call(bn)
    y, save_mean, save_invstd = torch.ops.aten.native_batch_norm(x, bn.weight, bn.bias, mean, var, train, factor,
                                                                  bn.eps)
    return y, _BNCall(mean, var, train, bn.eps), save_mean, save_invstd


def _bn_backward(g, x, weight, call: _BNCall, save_mean, save_invstd, need_affine: tuple[bool, bool]):
    return torch.ops.aten.native_batch_norm_backward(g, x, weight, call.mean, call.var, save_mean, save_invstd,
                                                     call.train, call.eps, [True, *need_affine])


class _OperatorNorm(torch.autograd.Function):
    """The training-structure operator and the block's BatchNorm after it, as one autograd Function:

        y = norm(x with its rep channels replaced by bn_h(O_h) + bn_v(O_v) + bn_s(O_s) + x_r)

    with O_h, O_v, O_s the strip and centre convolutions of x_r = x[:, rep] (`swtasks.ops.cross_torch`'s
    plan, inputs: the three convolution weights as that plan builds them). The same function as
    `block.norm(block.large_kernel(x))`; the backward is written out with the operators autograd would
    call (BatchNorm and convolution backward) but without its bookkeeping: the map gradient is one tensor
    (the identity's and the ghost channels' share need no index ops: dL/dx = dL/d(norm input), then the
    three convolutions' input gradients are added into its rep channels in place), the transposed strip's
    BatchNorm runs on the convolution's own layout (statistics per channel do not depend on it), and the
    sums are in place. Forward hooks on the operator and the norm do not fire on this path."""

    @staticmethod
    def forward(ctx, x, wh4, wv4, ws4, bh_w, bh_b, bv_w, bv_b, bs_w, bs_b, n_w, n_b, spec):
        rep, plans, bns, norm = spec
        R = wh4.shape[0]
        x_r = x if rep is None else x.index_select(1, rep)
        ins, outs = [], []
        for w4, plan in zip((wh4, wv4), plans):
            xi = strip_input(x_r, plan).contiguous()  # what the convolution would copy; kept for the backward
            ins.append(xi)
            outs.append(F.conv2d(xi, w4, padding=plan.padding, groups=R))
        r = ws4.shape[-1] // 2
        ins.append(x_r)
        outs.append(F.conv2d(x_r, ws4, padding=r, groups=R))
        normed, calls, stats = [], [], []
        for o, bn in zip(outs, bns):
            y, call, *st = _bn_forward(bn, o)
            normed.append(y)
            calls.append(call)
            stats += st
        z = normed[2]  # fresh: summed into in place
        z.add_(strip_output(normed[0], plans[0])).add_(strip_output(normed[1], plans[1])).add_(x_r)
        out = z if rep is None else x.index_copy(1, rep, z)
        y, call, *st = _bn_forward(norm, out)
        ctx.spec = (rep, plans, (*calls, call), R)
        ctx.save_for_backward(*ins, *outs, out, wh4, wv4, ws4, bh_w, bv_w, bs_w, n_w, *stats, *st)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        rep, plans, calls, R = ctx.spec
        saved = ctx.saved_tensors
        ins, outs, out = saved[0:3], saved[3:6], saved[6]
        w4s, bn_ws, n_w = saved[7:10], saved[10:13], saved[13]
        stats = saved[14:20]
        need = ctx.needs_input_grad
        gout, gnw, gnb = _bn_backward(g.contiguous(), out, n_w, calls[3], *saved[20:22], need[10:12])
        g_z = gout if rep is None else gout.index_select(1, rep)
        grads, acc = [None] * 9, None
        for i in (2, 1, 0):  # the centre first: its input gradient is contiguous, the accumulator
            plan = plans[i] if i < 2 else None
            g_o = g_z if plan is None or not plan.transpose else g_z.transpose(2, 3)
            go, grads[3 + 2 * i], grads[4 + 2 * i] = _bn_backward(g_o, outs[i], bn_ws[i], calls[i],
                                                                  *stats[2 * i:2 * i + 2], need[4 + 2 * i:6 + 2 * i])
            padding = [w4s[2].shape[-1] // 2] * 2 if plan is None else list(plan.padding)
            gin, grads[i], _ = torch.ops.aten.convolution_backward(
                go, ins[i], w4s[i], None, [1, 1], padding, [1, 1], False, [0, 0], R, [need[0], need[1 + i], False])
            if not need[0]:
                continue
            if plan is not None:
                if plan.pad is not None:
                    left, right, top, bottom = plan.pad
                    gin = gin[..., top:gin.shape[-2] - bottom, left:gin.shape[-1] - right]
                gin = strip_output(gin, plan)
            acc = gin if acc is None else acc.add_(gin)
        gx = None
        if need[0]:
            gx = gout.add_(acc) if rep is None else gout.index_add_(1, rep, acc)
        return (gx, *grads, gnw, gnb, None)


def _per_sample_gemm(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Large maps with few channels (stages 1-2 of the paper variants at 224 px): one GEMM per sample. Never
    in a traced graph (a runtime's 1x1 convolution is its fastest form there; the sizes may be symbolic)."""
    return not is_traced(x) and x.shape[2] * x.shape[3] >= max(weight.shape)


def _pointwise(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
               in_scale: torch.Tensor | None = None) -> torch.Tensor:
    """Linear(weight (Cout, Cin), bias) of `in_scale * x` over the channels of an NCHW tensor, output NCHW;
    in_scale (B, Cin, 1, 1) is an optional per-sample channel factor (the SE or GRN scale).

    Large maps with few channels run as one GEMM per sample with the factor in the weight, (W * s_b) @ x_b:
    the per-sample weights are 5-40x smaller than the map, so the scaled map is never written. Small maps
    with many channels scale the map and run a 1x1 convolution (oneDNN), faster there than per-sample GEMMs."""
    b, cin, h, w = x.shape
    cout = weight.shape[0]
    if _per_sample_gemm(x, weight):
        wt = weight.to(x.dtype).unsqueeze(0)
        wb = wt.expand(b, cout, cin) if in_scale is None else wt * in_scale.view(b, 1, cin).to(x.dtype)
        xb = x.reshape(b, cin, h * w)
        out = torch.bmm(wb, xb) if bias is None else torch.baddbmm(bias.to(x.dtype).view(1, cout, 1), wb, xb)
        return out.view(b, cout, h, w)
    if in_scale is not None:
        x = x * in_scale
    return F.conv2d(x, weight.view(cout, cin, 1, 1), bias)


def _squeeze_excite(se, y: torch.Tensor) -> torch.Tensor:
    """SEBlock's channel scale (B, C, 1, 1) with its 1x1 convolutions as Linears on the pooled (B, C) vector
    (oneDNN spends milliseconds setting up a convolution on a 1x1 map)."""
    s = y.mean(dim=(2, 3))
    d, u = se.down, se.up
    s = F.relu(F.linear(s, d.weight.flatten(1), d.bias))
    return torch.sigmoid(F.linear(s, u.weight.flatten(1), u.bias)).view(*s.shape[:1], -1, 1, 1)


def _fused_operator(block, x: torch.Tensor) -> bool:
    """Whether the operator and the norm after it run as _OperatorNorm: the training structure with plain
    BatchNorms, the operator on its PyTorch path (not Triton under the interpreter), no CPU autocast."""
    lk = block.large_kernel
    if block.deploy or lk.deploy or torch.is_autocast_enabled("cpu"):
        return False
    if not all(type(bn) is nn.BatchNorm2d for bn in (lk.bn_h, lk.bn_v, lk.bn_s, block.norm)):
        return False
    opts = resolve_options(x, lk.small_kernel, lk.backend, lk.variant, lk.dot_precision, lk.deterministic)
    return opts.backend == "torch"


def _operator_norm(lk, norm: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """norm(lk(x)) through _OperatorNorm (the operator's weights are built here, differentiably)."""
    lk._check_input(x)
    w_h, w_v, w_s = lk.cross_kernels()
    plans = strip_convs(x, w_h, w_v, lk.kernel_size, needs_grad=torch.is_grad_enabled())
    rep = None if lk.ghost_channels == 0 else lk.rep_idx
    spec = (rep, tuple(p._replace(weight=None) for p in plans), (lk.bn_h, lk.bn_v, lk.bn_s), norm)
    bh, bv, bs = lk.bn_h, lk.bn_v, lk.bn_s
    return _OperatorNorm.apply(x, plans[0].weight, plans[1].weight, w_s.to(x.dtype).unsqueeze(1), bh.weight,
                               bh.bias, bv.weight, bv.bias, bs.weight, bs.bias, norm.weight, norm.bias, spec)


def _deploy_operator_graph(block, x: torch.Tensor) -> torch.Tensor:
    """The deploy operator and the ghost channels' affine (block.norm) in standard operators over all C
    channels: two depthwise convolutions, the horizontal strip wide on x zero-padded by concatenation, the
    vertical one tall with the bias (see the module docstring). Ghost channel c: weight_c at the horizontal
    strip's centre tap, bias_c; rep channels: the folded strips cropped to the image (strip_convs)."""
    lk = block.large_kernel
    plan_h, plan_v = strip_convs(x, lk.weight_h, lk.weight_v, lk.kernel_size, needs_grad=False, wide=True)
    w_h, w_v, bias = plan_h.weight, plan_v.weight, lk.bias.to(x.dtype)
    (row, half), g = plan_h.padding, lk.ghost_channels
    if g:
        kh, kw = w_h.shape[-2:]
        centre = F.pad(block.norm.weight.to(x.dtype).view(g, 1, 1, 1), (half, kw - 1 - half, row, kh - 1 - row))
        rep, ghost, c = lk.rep_idx, lk.ghost_idx, x.shape[1]
        w_h = w_h.new_zeros(c, *w_h.shape[1:]).index_copy(0, rep, w_h).index_copy(0, ghost, centre)
        w_v = w_v.new_zeros(c, *w_v.shape[1:]).index_copy(0, rep, w_v)
        bias = bias.new_zeros(c).index_copy(0, rep, bias).index_copy(0, ghost, block.norm.bias.to(x.dtype))
    zeros = x.new_zeros(x.shape[0], x.shape[1], x.shape[2], half)
    out_h = F.conv2d(torch.cat([zeros, x, zeros], dim=3), w_h, padding=(row, 0), groups=x.shape[1])
    return out_h + F.conv2d(x, w_v, bias, padding=plan_v.padding, groups=x.shape[1])


def block_forward_nchw(block, x: torch.Tensor) -> torch.Tensor:
    """`x + block.residual(x)` for an NCHW input, computed NCHW throughout (see the module docstring). A
    channels-last input is made contiguous once (the block's output, and so the next block's input, is NCHW).
    Traced: the deploy structure in standard operators, the training structure through the module path."""
    traced = is_traced(x)
    if traced and not (block.deploy and block.large_kernel.deploy):
        return x + block.residual(x)
    x = x.contiguous()
    lk = block.large_kernel
    inplace = not torch.is_grad_enabled() and not traced  # no autograd graph: overwrite fresh intermediates
    if traced:
        y = _deploy_operator_graph(block, x)
    elif _fused_operator(block, x):
        y = _operator_norm(lk, block.norm, x)
    else:
        y = lk(x)  # a fresh tensor (the operator writes its rep channels into a copy of x)
        if not block.deploy:
            y = block.norm(y)
        elif inplace and not isinstance(block.norm, nn.Identity):  # GhostChannelAffine, into y's ghost channels
            idx, aff = lk.ghost_idx, block.norm
            ghost = torch.addcmul(aff.bias.to(y.dtype).view(1, -1, 1, 1), y.index_select(1, idx),
                                  aff.weight.to(y.dtype).view(1, -1, 1, 1))
            y = y.index_copy_(1, idx, ghost)
        elif not isinstance(block.norm, nn.Identity):
            y = block.norm(y, lk.ghost_idx)
    lin1, lin2, grn = block.pwconv1[1], block.pwconv2[0], block.act[1]
    u = _pointwise(y, lin1.weight, lin1.bias, _squeeze_excite(block.se, y))  # SE scale, then Linear C -> 4C
    gelu = block.act[0]
    u = torch._C._nn.gelu_(u, approximate=gelu.approximate) if inplace and type(gelu) is nn.GELU else gelu(u)
    bias = lin2.bias
    if grn.use_bias:  # GRN's beta through the product: W (v + beta) = W v + W beta
        wb = lin2.weight @ grn.beta.reshape(-1).to(lin2.weight.dtype)
        bias = wb if bias is None else bias + wb
    if _per_sample_gemm(u, lin2.weight):  # GRN scale folded into per-sample weights, then Linear 4C -> C
        out = _GRNLinear.apply(u, grn.gamma.view(1, -1, 1, 1), grn.eps, lin2.weight, bias)
    else:  # GRN applied to the map (in place without autograd), then the 1x1 convolution
        if traced:
            u = u * _grn_forward(u, grn.gamma.view(1, -1, 1, 1), grn.eps)[3]
        elif inplace:
            u = u.mul_(_grn_scale(u, grn))
        else:
            u = _GRNApply.apply(u, grn.gamma.view(1, -1, 1, 1), grn.eps)
        out = _pointwise(u, lin2.weight, bias)
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
