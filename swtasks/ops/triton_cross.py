"""Triton kernels for the cross-shaped depthwise convolution, packaged as a PyTorch custom op.

Contract: exactly `swtasks.ops.cross_conv` (see cross_conv.py): x (B, C, H, W), w_h (C, k, L),
w_v (C, L, k), optional w_s (C, k, k); zero padding, cross-correlation, off-centre strips when
K is not a multiple of k.

Kernels (all gathers, no atomics, deterministic):

- forward: one program per (plane b*C+c, HxW tile; a 1-D grid) reads its input tile plus halo (through the
  cache) and writes the three branch outputs, or their sum (reduce=True, the deploy form).
- grad x: the same strip convolutions with flipped kernels applied to the three incoming
  gradients, summed in one kernel.
- grad w: each program (plane, row split) reduces grad * shifted input over its rows into fp32
  partials of a [B * splits, C, taps] buffer; one `sum(0)` then gives dw_h, dw_v, dw_s. Bit-identical
  from run to run.

Every kernel vectorises the taps inside a program (3-D tiles [rows, cols, taps] and a sum over the
tap axis), which also keeps the Triton interpreter (TRITON_INTERPRET=1) fast enough for tests.
Inputs may be fp16/bf16/fp32 (fp32 accumulation, outputs in the input dtype) or fp64 (fp64
accumulation, for gradcheck). Non-contiguous inputs (channels-last included) are made contiguous
first; outputs are always contiguous NCHW.

Packaging: `torch.library.custom_op`s `swtasks::cross_conv` (three outputs), `swtasks::cross_conv_sum`
(reduce=True) and `swtasks::cross_conv_backward`, each with a fake (meta) implementation and autograd,
for devices cpu and cuda, so `torch.compile(fullgraph=True)`, `torch.autograd.gradcheck` and
`torch.library.opcheck` work. The implementation runs Triton on CUDA tensors and on CPU tensors
when the Triton interpreter is on; otherwise (CPU, no interpreter) it runs the PyTorch path.
"""

import os
from typing import List, Optional, Tuple  # noqa: UP035  (torch 2.4 custom_op schemas need these)

import torch
import triton
import triton.language as tl

from .cross_conv import check_cross_args, cross_conv_torch

__all__ = [
    "INTERPRET",
    "cross_conv_triton",
    "cross_conv_triton_backward",
    "cross_conv_triton_forward",
    "triton_available_for",
]

# The Triton interpreter is chosen when @triton.jit runs, i.e. when this module is imported.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

# Opt-in tensor-core (Toeplitz) kernels for the forward and the input gradient: SWTASKS_TRITON_MMA=1.
# Read at call time through these module attributes (the benchmark flips them).
MMA = os.environ.get("SWTASKS_TRITON_MMA", "0") == "1"
# tl.dot input precision for fp32 inputs in the MMA kernels: 'ieee' (exact fp32), 'tf32', 'tf32x3'.
DOT_FP32 = os.environ.get("SWTASKS_TRITON_FP32_DOT", "ieee")


def triton_available_for(x: torch.Tensor) -> bool:
    """True when the kernels can run on x's device: CUDA, or CPU under the Triton interpreter."""
    return x.is_cuda or (INTERPRET and x.device.type == "cpu")


def _autotune(configs, key):
    """triton.autotune, collapsed to a single (empty) config under the interpreter: there the
    wrapper passes the block sizes itself and nothing is benchmarked (no GPU to time)."""
    if INTERPRET:
        configs = [triton.Config({}, num_warps=4)]
    return triton.autotune(configs=configs, key=key)


def _cfg(bh, bw, bt, warps, stages=2):
    return triton.Config({"BH": bh, "BW": bw, "BT": bt}, num_warps=warps, num_stages=stages)


# Tiles are [BH rows, BW cols, BT taps]; keep BH*BW*BT <= 8192 values per program (registers).
# Few configs on purpose: every (stage, dtype) compiles each of them once when autotuning.
_TILE_CONFIGS = [
    _cfg(8, 32, 16, 4),
    _cfg(16, 32, 16, 8),
    _cfg(16, 64, 8, 8),
    _cfg(4, 64, 16, 4),
]
_DW_CONFIGS = [
    _cfg(8, 32, 16, 4),
    _cfg(16, 32, 8, 4),
    _cfg(4, 64, 16, 8),
]


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------


@triton.jit
def _tap_geometry(
    t0,
    oy,
    ox,
    H,
    W,
    NT: tl.constexpr,
    NCOL: tl.constexpr,
    RO: tl.constexpr,
    CO: tl.constexpr,
    SIGN: tl.constexpr,
    BT: tl.constexpr,
):
    """Taps t0..t0+BT of a branch with NCOL columns: tap t sits at (SIGN*(t // NCOL - RO),
    SIGN*(t % NCOL - CO)). Returns the tap indices, their mask, the flat offset of each tap and
    the [BH, BW, BT] validity mask, built from [BH, BT] and [BW, BT] pieces (cheap per element)."""
    t = t0 + tl.arange(0, BT)
    tm = t < NT
    dy = SIGN * (t // NCOL - RO)
    dx = SIGN * (t % NCOL - CO)
    yy = oy[:, None] + dy[None, :]
    xx = ox[:, None] + dx[None, :]
    row_ok = (yy >= 0) & (yy < H)
    col_ok = (xx >= 0) & (xx < W) & tm[None, :]
    m = row_ok[:, None, :] & col_ok[None, :, :]
    return t, tm, dy * W + dx, m


@triton.jit
def _gather_taps(
    acc3,
    src,
    off2,
    oy,
    ox,
    H,
    W,
    w_ptr,
    NT: tl.constexpr,
    NCOL: tl.constexpr,
    RO: tl.constexpr,
    CO: tl.constexpr,
    SIGN: tl.constexpr,
    BT: tl.constexpr,
    ACC: tl.constexpr,
):
    """acc3[y, x, :] += w[t] * src[y + dy(t), x + dx(t)] over the taps t of a branch (zero outside
    the image); off2 = y * W + x. The caller sums the tap axis of acc3 once, at the end."""
    for t0 in range(0, NT, BT):
        t, tm, doff, m = _tap_geometry(t0, oy, ox, H, W, NT, NCOL, RO, CO, SIGN, BT)
        v = tl.load(src + (off2[:, :, None] + doff[None, None, :]), mask=m, other=0.0).to(ACC)
        wt = tl.load(w_ptr + t, mask=tm, other=0.0).to(ACC)
        acc3 += v * wt[None, None, :]
    return acc3


@_autotune(_TILE_CONFIGS, key=["H", "W", "KS", "L", "LO", "HAS_S", "REDUCE"])
@triton.jit
def _cross_fwd_kernel(
    x_ptr,
    wh_ptr,
    wv_ptr,
    ws_ptr,
    oh_ptr,
    ov_ptr,
    os_ptr,
    C,
    H,
    W,
    KS: tl.constexpr,
    L: tl.constexpr,
    LO: tl.constexpr,
    R: tl.constexpr,
    HAS_S: tl.constexpr,
    REDUCE: tl.constexpr,
    ACC: tl.constexpr,
    BH: tl.constexpr,
    BW: tl.constexpr,
    BT: tl.constexpr,
):
    n_tw = tl.cdiv(W, BW)
    n_tiles = tl.cdiv(H, BH) * n_tw
    pid = tl.program_id(0)
    plane = pid // n_tiles
    tile = pid % n_tiles
    c = plane % C
    oy = (tile // n_tw) * BH + tl.arange(0, BH)
    ox = (tile % n_tw) * BW + tl.arange(0, BW)
    base = plane.to(tl.int64) * H * W
    src = x_ptr + base
    off2 = oy[:, None] * W + ox[None, :]
    out_off = base + off2
    out_m = (oy[:, None] < H) & (ox[None, :] < W)

    # horizontal strip: taps (i, u) at (i - R, u - LO); vertical: (u, j) at (u - LO, j - R)
    acc3 = tl.zeros((BH, BW, BT), dtype=ACC)
    acc3 = _gather_taps(acc3, src, off2, oy, ox, H, W, wh_ptr + c * (KS * L), KS * L, L, R, LO, 1, BT, ACC)
    if not REDUCE:
        tl.store(oh_ptr + out_off, tl.sum(acc3, axis=2).to(oh_ptr.dtype.element_ty), mask=out_m)
        acc3 = tl.zeros((BH, BW, BT), dtype=ACC)
    acc3 = _gather_taps(acc3, src, off2, oy, ox, H, W, wv_ptr + c * (L * KS), L * KS, KS, LO, R, 1, BT, ACC)
    if not REDUCE:
        tl.store(ov_ptr + out_off, tl.sum(acc3, axis=2).to(ov_ptr.dtype.element_ty), mask=out_m)
        acc3 = tl.zeros((BH, BW, BT), dtype=ACC)
    if HAS_S:
        acc3 = _gather_taps(
            acc3, src, off2, oy, ox, H, W, ws_ptr + c * (KS * KS), KS * KS, KS, R, R, 1, BT, ACC
        )
        if not REDUCE:
            tl.store(os_ptr + out_off, tl.sum(acc3, axis=2).to(os_ptr.dtype.element_ty), mask=out_m)
    if REDUCE:
        tl.store(oh_ptr + out_off, tl.sum(acc3, axis=2).to(oh_ptr.dtype.element_ty), mask=out_m)


@_autotune(_TILE_CONFIGS, key=["H", "W", "KS", "L", "LO", "HAS_S"])
@triton.jit
def _cross_dx_kernel(
    gh_ptr,
    gv_ptr,
    gs_ptr,
    wh_ptr,
    wv_ptr,
    ws_ptr,
    dx_ptr,
    C,
    H,
    W,
    KS: tl.constexpr,
    L: tl.constexpr,
    LO: tl.constexpr,
    R: tl.constexpr,
    HAS_S: tl.constexpr,
    ACC: tl.constexpr,
    BH: tl.constexpr,
    BW: tl.constexpr,
    BT: tl.constexpr,
):
    """dx = flipped-kernel strip convolutions of the three incoming gradients, summed."""
    n_tw = tl.cdiv(W, BW)
    n_tiles = tl.cdiv(H, BH) * n_tw
    pid = tl.program_id(0)
    plane = pid // n_tiles
    tile = pid % n_tiles
    c = plane % C
    oy = (tile // n_tw) * BH + tl.arange(0, BH)
    ox = (tile % n_tw) * BW + tl.arange(0, BW)
    base = plane.to(tl.int64) * H * W
    off2 = oy[:, None] * W + ox[None, :]
    acc3 = tl.zeros((BH, BW, BT), dtype=ACC)
    acc3 = _gather_taps(
        acc3, gh_ptr + base, off2, oy, ox, H, W, wh_ptr + c * (KS * L), KS * L, L, R, LO, -1, BT, ACC
    )
    acc3 = _gather_taps(
        acc3, gv_ptr + base, off2, oy, ox, H, W, wv_ptr + c * (L * KS), L * KS, KS, LO, R, -1, BT, ACC
    )
    if HAS_S:
        acc3 = _gather_taps(
            acc3, gs_ptr + base, off2, oy, ox, H, W, ws_ptr + c * (KS * KS), KS * KS, KS, R, R, -1, BT, ACC
        )
    out_m = (oy[:, None] < H) & (ox[None, :] < W)
    tl.store(dx_ptr + base + off2, tl.sum(acc3, axis=2).to(dx_ptr.dtype.element_ty), mask=out_m)


@triton.jit
def _dw_taps(
    part_ptr,
    g_src,
    x_src,
    y_begin,
    y_end,
    H,
    W,
    NT: tl.constexpr,
    NCOL: tl.constexpr,
    RO: tl.constexpr,
    CO: tl.constexpr,
    BH: tl.constexpr,
    BW: tl.constexpr,
    BT: tl.constexpr,
    ACC: tl.constexpr,
):
    """part[t] = sum over rows [y_begin, y_end) and all columns of g[y, x] * x[y + dy(t), x + dx(t)]."""
    for t0 in range(0, NT, BT):
        acc3 = tl.zeros((BH, BW, BT), dtype=ACC)
        for y0 in range(y_begin, y_end, BH):
            oy = y0 + tl.arange(0, BH)
            for x0 in range(0, W, BW):
                ox = x0 + tl.arange(0, BW)
                off2 = oy[:, None] * W + ox[None, :]
                gm = (oy[:, None] < y_end) & (ox[None, :] < W)
                g = tl.load(g_src + off2, mask=gm, other=0.0).to(ACC)
                t, tm, doff, m = _tap_geometry(t0, oy, ox, H, W, NT, NCOL, RO, CO, 1, BT)
                v = tl.load(x_src + (off2[:, :, None] + doff[None, None, :]), mask=m, other=0.0).to(ACC)
                acc3 += v * g[:, :, None]
        t = t0 + tl.arange(0, BT)
        tl.store(part_ptr + t, tl.sum(tl.sum(acc3, axis=0), axis=0), mask=t < NT)


@_autotune(_DW_CONFIGS, key=["H", "W", "RS", "KS", "L", "LO", "HAS_S"])
@triton.jit
def _cross_dw_kernel(
    x_ptr,
    gh_ptr,
    gv_ptr,
    gs_ptr,
    part_ptr,
    C,
    H,
    W,
    RS,
    n_split,
    KS: tl.constexpr,
    L: tl.constexpr,
    LO: tl.constexpr,
    R: tl.constexpr,
    HAS_S: tl.constexpr,
    ACC: tl.constexpr,
    T_HV: tl.constexpr,
    T_ALL: tl.constexpr,
    BH: tl.constexpr,
    BW: tl.constexpr,
    BT: tl.constexpr,
):
    """Per-(plane, row split) partial weight gradients: part[(b*n_split + s), c, taps]."""
    plane = tl.program_id(0)
    split = tl.program_id(1)
    b = plane // C
    c = plane % C
    base = plane.to(tl.int64) * H * W
    y_begin = split * RS
    y_end = tl.minimum(y_begin + RS, H)
    row = ((b * n_split + split) * C + c).to(tl.int64) * T_ALL
    _dw_taps(
        part_ptr + row, gh_ptr + base, x_ptr + base, y_begin, y_end, H, W, T_HV, L, R, LO, BH, BW, BT, ACC
    )
    _dw_taps(
        part_ptr + row + T_HV,
        gv_ptr + base,
        x_ptr + base,
        y_begin,
        y_end,
        H,
        W,
        T_HV,
        KS,
        LO,
        R,
        BH,
        BW,
        BT,
        ACC,
    )
    if HAS_S:
        _dw_taps(
            part_ptr + row + 2 * T_HV,
            gs_ptr + base,
            x_ptr + base,
            y_begin,
            y_end,
            H,
            W,
            KS * KS,
            KS,
            R,
            R,
            BH,
            BW,
            BT,
            ACC,
        )


# ---------------------------------------------------------------------------------------------
# Tensor-core variant (opt-in): a strip convolution as banded (Toeplitz) matrix products
# ---------------------------------------------------------------------------------------------
#
# Horizontal strip, row i of the strip, output tile [BH, BW] at (y0, x0):
#   out[y, x0 + q] = sum_p X[y + i - R, x0 - LO + p] * T_i[p, q],  T_i[p, q] = w_h[i, p - q] (0 <= p-q < L)
# so out += A_i @ T_i with A_i a [BH, BW + L - 1] window of rows, in chunks of KC columns. The vertical
# strip is the transposed arrangement (T_j @ B_j), the k x k centre a short tap loop. With SIGN = -1
# the same kernels compute the input gradient (flipped taps). About L / (BW + L - 1) of the tensor-core
# work is useful (~45% at BW = 64, L = 51), far above the FP32 CUDA-core rate in bf16/fp16. fp32
# inputs use input_precision DOT_FP32 ('ieee' by default: exact fp32, FMA units).

_MMA_CONFIGS = [
    triton.Config({"BH": 32, "BW": 64, "KC": 32}, num_warps=4, num_stages=2),
    triton.Config({"BH": 64, "BW": 64, "KC": 32}, num_warps=8, num_stages=2),
    triton.Config({"BH": 64, "BW": 32, "KC": 32}, num_warps=4, num_stages=2),
    triton.Config({"BH": 32, "BW": 32, "KC": 16}, num_warps=4, num_stages=2),
]


@triton.jit
def _mma_h(
    acc,
    src,
    oy,
    x0,
    H,
    W,
    w_ptr,
    KS: tl.constexpr,
    L: tl.constexpr,
    LO: tl.constexpr,
    R: tl.constexpr,
    SIGN: tl.constexpr,
    BW: tl.constexpr,
    KC: tl.constexpr,
    DOT: tl.constexpr,
    PREC: tl.constexpr,
):
    q = tl.arange(0, BW)
    for i in tl.static_range(KS):
        rows = oy + SIGN * (i - R)
        row_ok = (rows >= 0) & (rows < H)
        for c0 in range(0, BW + L - 1, KC):
            p = c0 + tl.arange(0, KC)
            if SIGN == 1:
                cols = x0 - LO + p
                u = p[:, None] - q[None, :]
            else:
                cols = x0 - (L - 1 - LO) + p
                u = q[None, :] - p[:, None] + (L - 1)
            a = tl.load(
                src + rows[:, None] * W + cols[None, :],
                mask=row_ok[:, None] & ((cols >= 0) & (cols < W))[None, :],
                other=0.0,
            )
            t = tl.load(w_ptr + i * L + u, mask=(u >= 0) & (u < L), other=0.0)
            acc = tl.dot(a.to(DOT), t.to(DOT), acc, input_precision=PREC)
    return acc


@triton.jit
def _mma_v(
    acc,
    src,
    y0,
    ox,
    H,
    W,
    w_ptr,
    KS: tl.constexpr,
    L: tl.constexpr,
    LO: tl.constexpr,
    R: tl.constexpr,
    SIGN: tl.constexpr,
    BH: tl.constexpr,
    KC: tl.constexpr,
    DOT: tl.constexpr,
    PREC: tl.constexpr,
):
    q = tl.arange(0, BH)
    for j in tl.static_range(KS):
        cols = ox + SIGN * (j - R)
        col_ok = (cols >= 0) & (cols < W)
        for c0 in range(0, BH + L - 1, KC):
            p = c0 + tl.arange(0, KC)
            if SIGN == 1:
                rows = y0 - LO + p
                u = p[None, :] - q[:, None]
            else:
                rows = y0 - (L - 1 - LO) + p
                u = q[:, None] - p[None, :] + (L - 1)
            b = tl.load(
                src + rows[:, None] * W + cols[None, :],
                mask=((rows >= 0) & (rows < H))[:, None] & col_ok[None, :],
                other=0.0,
            )
            t = tl.load(w_ptr + u * KS + j, mask=(u >= 0) & (u < L), other=0.0)
            acc = tl.dot(t.to(DOT), b.to(DOT), acc, input_precision=PREC)
    return acc


@triton.jit
def _centre_taps(
    acc, src, oy, ox, H, W, w_ptr, KS: tl.constexpr, R: tl.constexpr, SIGN: tl.constexpr, ACC: tl.constexpr
):
    for t in tl.static_range(KS * KS):
        rows = oy + SIGN * (t // KS - R)
        cols = ox + SIGN * (t % KS - R)
        m = ((rows >= 0) & (rows < H))[:, None] & ((cols >= 0) & (cols < W))[None, :]
        v = tl.load(src + rows[:, None] * W + cols[None, :], mask=m, other=0.0).to(ACC)
        acc += v * tl.load(w_ptr + t).to(ACC)
    return acc


@_autotune(_MMA_CONFIGS, key=["H", "W", "KS", "L", "LO", "HAS_S", "MODE"])
@triton.jit
def _cross_mma_kernel(
    a_ptr,
    b_ptr,
    c_ptr,
    wh_ptr,
    wv_ptr,
    ws_ptr,
    o1_ptr,
    o2_ptr,
    o3_ptr,
    C,
    H,
    W,
    KS: tl.constexpr,
    L: tl.constexpr,
    LO: tl.constexpr,
    R: tl.constexpr,
    HAS_S: tl.constexpr,
    MODE: tl.constexpr,
    SIGN: tl.constexpr,
    DOT: tl.constexpr,
    PREC: tl.constexpr,
    BH: tl.constexpr,
    BW: tl.constexpr,
    KC: tl.constexpr,
):
    """MODE 0: forward, three outputs (o1, o2, o3) from x = a; MODE 1: forward, their sum (o1);
    MODE 2: input gradient (o1) from the three incoming gradients a, b, c (SIGN = -1: flipped taps)."""
    n_tw = tl.cdiv(W, BW)
    n_tiles = tl.cdiv(H, BH) * n_tw
    pid = tl.program_id(0)
    plane = pid // n_tiles
    tile = pid % n_tiles
    c = plane % C
    y0 = (tile // n_tw) * BH
    x0 = (tile % n_tw) * BW
    oy = y0 + tl.arange(0, BH)
    ox = x0 + tl.arange(0, BW)
    base = plane.to(tl.int64) * H * W
    out_off = base + oy[:, None] * W + ox[None, :]
    out_m = (oy[:, None] < H) & (ox[None, :] < W)
    wh = wh_ptr + c * (KS * L)
    wv = wv_ptr + c * (L * KS)
    ws = ws_ptr + c * (KS * KS)
    acc = tl.zeros((BH, BW), dtype=tl.float32)
    acc = _mma_h(acc, a_ptr + base, oy, x0, H, W, wh, KS, L, LO, R, SIGN, BW, KC, DOT, PREC)
    if MODE == 0:
        tl.store(o1_ptr + out_off, acc.to(o1_ptr.dtype.element_ty), mask=out_m)
        acc = tl.zeros((BH, BW), dtype=tl.float32)
    if MODE == 2:
        acc = _mma_v(acc, b_ptr + base, y0, ox, H, W, wv, KS, L, LO, R, SIGN, BH, KC, DOT, PREC)
    else:
        acc = _mma_v(acc, a_ptr + base, y0, ox, H, W, wv, KS, L, LO, R, SIGN, BH, KC, DOT, PREC)
    if MODE == 0:
        tl.store(o2_ptr + out_off, acc.to(o2_ptr.dtype.element_ty), mask=out_m)
        acc = tl.zeros((BH, BW), dtype=tl.float32)
    if HAS_S:
        if MODE == 2:
            acc = _centre_taps(acc, c_ptr + base, oy, ox, H, W, ws, KS, R, SIGN, tl.float32)
        else:
            acc = _centre_taps(acc, a_ptr + base, oy, ox, H, W, ws, KS, R, SIGN, tl.float32)
        if MODE == 0:
            tl.store(o3_ptr + out_off, acc.to(o3_ptr.dtype.element_ty), mask=out_m)
    if MODE != 0:
        tl.store(o1_ptr + out_off, acc.to(o1_ptr.dtype.element_ty), mask=out_m)


# ---------------------------------------------------------------------------------------------
# Launch wrappers (no autograd)
# ---------------------------------------------------------------------------------------------


def _acc_dtype(x: torch.Tensor):
    return tl.float64 if x.dtype == torch.float64 else tl.float32


def _interp_meta(H: int, W: int, k: int, L: int) -> dict:
    """Block sizes under the interpreter: whole (small) planes and all taps of a strip at once;
    the interpreter costs ~0.1 ms per tl operation almost independently of the block size."""
    if not INTERPRET:
        return {}
    return {
        "BH": min(32, triton.next_power_of_2(max(H, 1))),
        "BW": min(32, triton.next_power_of_2(max(W, 1))),
        "BT": min(256, triton.next_power_of_2(k * L)),
    }


def _check_device(x: torch.Tensor) -> None:
    if not triton_available_for(x):
        raise RuntimeError(
            f"the Triton kernels need a CUDA tensor (or a CPU tensor with TRITON_INTERPRET=1 set before "
            f"swtasks.ops.triton_cross is imported); got a tensor on {x.device}"
        )


def _tile_grid(B: int, C: int, H: int, W: int):
    """1-D grid over (plane, tile), tiles of a plane adjacent (a 2-D grid would cap B*C or the
    tile count at 65535)."""
    return lambda meta: (B * C * triton.cdiv(H, meta["BH"]) * triton.cdiv(W, meta["BW"]),)


_DOT_DTYPES = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32}


def _mma_for(x: torch.Tensor) -> bool:
    return MMA and x.dtype in _DOT_DTYPES


def _mma_meta(x: torch.Tensor, H: int, W: int) -> dict:
    # input_precision only matters for fp32 operands (None: Triton's default for the others)
    meta = {"DOT": _DOT_DTYPES[x.dtype], "PREC": DOT_FP32 if x.dtype == torch.float32 else None}
    if INTERPRET:
        if x.dtype == torch.bfloat16:  # the interpreter's bf16 tl.dot returns garbage: multiply in fp32 there
            meta["DOT"] = tl.float32
        # tl.dot wants every dimension >= 16
        meta.update(
            BH=max(16, min(32, triton.next_power_of_2(max(H, 1)))),
            BW=max(16, min(32, triton.next_power_of_2(max(W, 1)))),
            KC=32,
        )
    return meta


def cross_conv_triton_forward(x, w_h, w_v, w_s=None, *, big_kernel: int, reduce: bool = False):
    """Raw forward launch: (out_h, out_v, out_s) or, with reduce=True, their sum. No autograd."""
    k, L = check_cross_args(x, w_h, w_v, w_s, big_kernel)
    _check_device(x)
    B, C, H, W = x.shape
    xc = x.contiguous()
    whc, wvc = w_h.contiguous(), w_v.contiguous()
    wsc = w_s.contiguous() if w_s is not None else whc  # dummy pointer when there is no centre
    if reduce:
        out = torch.empty_like(xc)
        outs = (out, out, out)
    else:
        oh, ov = torch.empty_like(xc), torch.empty_like(xc)
        os_ = torch.empty_like(xc) if w_s is not None else torch.zeros_like(xc)
        outs = (oh, ov, os_)
    if xc.numel() > 0 and _mma_for(x):
        _cross_mma_kernel[_tile_grid(B, C, H, W)](
            xc,
            xc,
            xc,
            whc,
            wvc,
            wsc,
            *outs,
            C,
            H,
            W,
            KS=k,
            L=L,
            LO=big_kernel // 2,
            R=k // 2,
            HAS_S=w_s is not None,
            MODE=1 if reduce else 0,
            SIGN=1,
            **_mma_meta(x, H, W),
        )
    elif xc.numel() > 0:
        _cross_fwd_kernel[_tile_grid(B, C, H, W)](
            xc,
            whc,
            wvc,
            wsc,
            *outs,
            C,
            H,
            W,
            KS=k,
            L=L,
            LO=big_kernel // 2,
            R=k // 2,
            HAS_S=w_s is not None,
            REDUCE=bool(reduce),
            ACC=_acc_dtype(x),
            **_interp_meta(H, W, k, L),
        )
    return outs[0] if reduce else outs


def _row_splits(B: int, C: int, H: int, device: torch.device) -> tuple[int, int]:
    """(rows per program, number of row splits) for the weight-gradient kernel: enough programs to
    fill the GPU (~4 per SM) without a large partial buffer."""
    if INTERPRET or device.type != "cuda":
        return max(H, 1), 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    want = triton.cdiv(4 * sms, max(B * C, 1))
    n_split = max(1, min(want, triton.cdiv(H, 16)))
    rs = triton.cdiv(triton.cdiv(H, n_split), 16) * 16
    return rs, triton.cdiv(H, rs)


def cross_conv_triton_backward(
    g_h, g_v, g_s, x, w_h, w_v, w_s=None, *, big_kernel: int, need_x: bool = True, need_w: bool = True
):
    """Raw backward launch. g_h/g_v/g_s are the gradients of the three branch outputs (for
    reduce=True pass the same gradient three times; g_s is ignored when w_s is None).
    Returns (dx or None, dw_h or None, dw_v or None, dw_s or None)."""
    k, L = check_cross_args(x, w_h, w_v, w_s, big_kernel)
    _check_device(x)
    B, C, H, W = x.shape
    has_s = w_s is not None
    gh, gv = g_h.contiguous(), g_v.contiguous()
    gs = g_s.contiguous() if (has_s and g_s is not None) else gh
    whc, wvc = w_h.contiguous(), w_v.contiguous()
    wsc = w_s.contiguous() if has_s else whc
    meta = _interp_meta(H, W, k, L)
    common = dict(KS=k, L=L, LO=big_kernel // 2, R=k // 2, HAS_S=has_s, ACC=_acc_dtype(x))
    dx = dwh = dwv = dws = None
    if need_x:
        dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        if x.numel() > 0 and _mma_for(x):
            _cross_mma_kernel[_tile_grid(B, C, H, W)](
                gh,
                gv,
                gs,
                whc,
                wvc,
                wsc,
                dx,
                dx,
                dx,
                C,
                H,
                W,
                KS=k,
                L=L,
                LO=big_kernel // 2,
                R=k // 2,
                HAS_S=has_s,
                MODE=2,
                SIGN=-1,
                **_mma_meta(x, H, W),
            )
        elif x.numel() > 0:
            _cross_dx_kernel[_tile_grid(B, C, H, W)](gh, gv, gs, whc, wvc, wsc, dx, C, H, W, **common, **meta)
    if need_w:
        acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        t_hv = k * L
        t_all = 2 * t_hv + k * k
        if x.numel() > 0:
            xc = x.contiguous()
            rs, n_split = _row_splits(B, C, H, x.device)
            part = torch.empty((B * n_split, C, t_all), dtype=acc_dtype, device=x.device)
            _cross_dw_kernel[(B * C, n_split)](
                xc, gh, gv, gs, part, C, H, W, rs, n_split, T_HV=t_hv, T_ALL=t_all, **common, **meta
            )
        else:
            part = torch.zeros((1, C, t_all), dtype=acc_dtype, device=x.device)
        # one deterministic reduction per weight: separate (non-aliasing) results
        dwh = part[:, :, :t_hv].sum(0).reshape(C, k, L).to(w_h.dtype)
        dwv = part[:, :, t_hv : 2 * t_hv].sum(0).reshape(C, L, k).to(w_v.dtype)
        if has_s:
            dws = part[:, :, 2 * t_hv :].sum(0).reshape(C, k, k).to(w_s.dtype)
    return dx, dwh, dwv, dws


# ---------------------------------------------------------------------------------------------
# Custom ops (torch.library): Triton where it can run, the PyTorch path otherwise
# ---------------------------------------------------------------------------------------------


def _torch_backward(g_h, g_v, g_s, x, w_h, w_v, w_s, big_kernel):
    """Gradients of the PyTorch path (CPU fallback of the backward op)."""
    with torch.enable_grad():
        xs = x.detach().requires_grad_(True)
        ws = [w.detach().requires_grad_(True) for w in (w_h, w_v)]
        if w_s is not None:
            ws.append(w_s.detach().requires_grad_(True))
        outs = cross_conv_torch(xs, ws[0], ws[1], ws[2] if w_s is not None else None, big_kernel=big_kernel)
        n = 3 if w_s is not None else 2
        grads = torch.autograd.grad(outs[:n], [xs, *ws], [g_h, g_v, g_s][:n], allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, [xs, *ws])]
    return grads[0], grads[1], grads[2], (grads[3] if w_s is not None else None)


@torch.library.custom_op("swtasks::cross_conv", mutates_args=(), device_types=("cpu", "cuda"))
def _cross_conv_op(
    x: torch.Tensor,
    w_h: torch.Tensor,
    w_v: torch.Tensor,
    w_s: Optional[torch.Tensor],  # noqa: UP006, UP007, UP045
    big_kernel: int,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # noqa: UP006, UP007, UP045
    if triton_available_for(x):
        return cross_conv_triton_forward(x, w_h, w_v, w_s, big_kernel=big_kernel)
    outs = cross_conv_torch(x, w_h, w_v, w_s, big_kernel=big_kernel)
    return tuple(o.contiguous() for o in outs)


@torch.library.custom_op("swtasks::cross_conv_sum", mutates_args=(), device_types=("cpu", "cuda"))
def _cross_conv_sum_op(
    x: torch.Tensor,
    w_h: torch.Tensor,
    w_v: torch.Tensor,
    w_s: Optional[torch.Tensor],  # noqa: UP006, UP007, UP045
    big_kernel: int,
) -> torch.Tensor:
    if triton_available_for(x):
        return cross_conv_triton_forward(x, w_h, w_v, w_s, big_kernel=big_kernel, reduce=True)
    return cross_conv_torch(x, w_h, w_v, w_s, big_kernel=big_kernel, reduce=True).contiguous()


@torch.library.custom_op("swtasks::cross_conv_backward", mutates_args=(), device_types=("cpu", "cuda"))
def _cross_conv_backward_op(
    g_h: torch.Tensor,
    g_v: torch.Tensor,
    g_s: torch.Tensor,
    x: torch.Tensor,
    w_h: torch.Tensor,
    w_v: torch.Tensor,
    w_s: Optional[torch.Tensor],  # noqa: UP006, UP007, UP045
    big_kernel: int,
    need_x: bool,
    need_w: bool,
) -> List[torch.Tensor]:  # noqa: UP006, UP007, UP045
    """Returns [dx, dw_h, dw_v, dw_s]; entries not asked for (or dw_s without w_s) are empty (0,)."""
    if triton_available_for(x):
        dx, dwh, dwv, dws = cross_conv_triton_backward(
            g_h, g_v, g_s, x, w_h, w_v, w_s, big_kernel=big_kernel, need_x=need_x, need_w=need_w
        )
    else:
        dx, dwh, dwv, dws = _torch_backward(g_h, g_v, g_s, x, w_h, w_v, w_s, big_kernel)
        dx = dx.contiguous() if need_x else None
        if not need_w:
            dwh = dwv = dws = None
    # a fresh empty tensor per missing entry: outputs of a custom op may not alias each other
    return [x.new_empty((0,)) if t is None else t.contiguous() for t in (dx, dwh, dwv, dws)]


def _new_like(t: torch.Tensor) -> torch.Tensor:
    return torch.empty(t.shape, dtype=t.dtype, device=t.device)


@_cross_conv_op.register_fake
def _(x, w_h, w_v, w_s, big_kernel):
    check_cross_args(x, w_h, w_v, w_s, big_kernel)
    return _new_like(x), _new_like(x), _new_like(x)


@_cross_conv_sum_op.register_fake
def _(x, w_h, w_v, w_s, big_kernel):
    check_cross_args(x, w_h, w_v, w_s, big_kernel)
    return _new_like(x)


@_cross_conv_backward_op.register_fake
def _(g_h, g_v, g_s, x, w_h, w_v, w_s, big_kernel, need_x, need_w):
    dx = _new_like(x) if need_x else x.new_empty((0,))
    dwh = _new_like(w_h) if need_w else x.new_empty((0,))
    dwv = _new_like(w_v) if need_w else x.new_empty((0,))
    dws = _new_like(w_s) if (need_w and w_s is not None) else x.new_empty((0,))
    return [dx, dwh, dwv, dws]


def _setup_context(ctx, inputs, output):
    x, w_h, w_v, w_s, big_kernel = inputs
    ctx.save_for_backward(x, w_h, w_v, w_s)
    ctx.big_kernel = big_kernel
    ctx.has_s = w_s is not None


def _run_backward(ctx, g_h, g_v, g_s):
    x, w_h, w_v, w_s = ctx.saved_tensors
    need_x = ctx.needs_input_grad[0]
    need_w = any(ctx.needs_input_grad[1:4])
    dx, dwh, dwv, dws = _cross_conv_backward_op(
        g_h, g_v, g_s, x, w_h, w_v, w_s if ctx.has_s else None, ctx.big_kernel, need_x, need_w
    )
    return (
        dx if need_x else None,
        dwh if need_w else None,
        dwv if need_w else None,
        dws if (need_w and ctx.has_s) else None,
        None,
    )


def _backward3(ctx, g_h, g_v, g_s):
    x = ctx.saved_tensors[0]
    g_h, g_v, g_s = (torch.zeros_like(x) if g is None else g for g in (g_h, g_v, g_s))
    return _run_backward(ctx, g_h, g_v, g_s)


def _backward_sum(ctx, g):
    if g is None:
        g = torch.zeros_like(ctx.saved_tensors[0])
    return _run_backward(ctx, g, g, g)


_cross_conv_op.register_autograd(_backward3, setup_context=_setup_context)
_cross_conv_sum_op.register_autograd(_backward_sum, setup_context=_setup_context)


def cross_conv_triton(x, w_h, w_v, w_s=None, *, big_kernel: int, reduce: bool = False):
    """Differentiable cross convolution through the custom ops (same contract as `cross_conv`).

    Runs the Triton kernels on CUDA tensors (and on CPU under TRITON_INTERPRET=1); CPU tensors
    without the interpreter fall back to the PyTorch path inside the op.
    """
    check_cross_args(x, w_h, w_v, w_s, big_kernel)
    if reduce:
        return _cross_conv_sum_op(x, w_h, w_v, w_s, big_kernel)
    return _cross_conv_op(x, w_h, w_v, w_s, big_kernel)
