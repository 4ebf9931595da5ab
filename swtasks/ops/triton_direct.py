"""CUDA-core ("direct") kernels of the cross convolution: every tap a gather, fp32/fp64 accumulation.

Contract: `swtasks.ops.cross_conv` (cross_conv.py). One program per (plane, tile) gathers its input
tile plus halo through the cache for every tap (3-D tiles [rows, cols, taps] summed over the tap
axis); the input gradient is the same with flipped taps; the weight gradient reduces grad x shifted
input over a row split into per-(image, split) partials, summed once afterwards (no atomics).

Compiled for a GPU these kernels issue about one global load and ten integer instructions per FMA
(see benchmarks/RESULTS.md, the kernel report): they are kept where the tensor-core kernels do not
apply - fp64 (gradcheck) and small kernels k > 5 - and as the `variant="direct"` reference.
Launch plans (`direct_launch`) are shared by the launchers and the kernel report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import triton
import triton.language as tl

from .launch import Launch, LoopModel

__all__ = ["DIRECT_CONFIGS", "DIRECT_DW_CONFIGS", "DirectConfig", "direct_launch"]


@triton.jit
def _tile_coords(C, H, W, BH: tl.constexpr, BW: tl.constexpr):
    """This program's (plane, BH x BW tile) on the 1-D grid: channel, rows, columns, plane offset, in-plane
    offsets and the in-image mask of the tile (tiles of a plane are adjacent programs)."""
    n_tw = tl.cdiv(W, BW)
    n_tiles = tl.cdiv(H, BH) * n_tw
    pid = tl.program_id(0)
    plane = pid // n_tiles
    tile = pid % n_tiles
    oy = (tile // n_tw) * BH + tl.arange(0, BH)
    ox = (tile % n_tw) * BW + tl.arange(0, BW)
    off2 = oy[:, None] * W + ox[None, :]
    return plane % C, oy, ox, plane.to(tl.int64) * H * W, off2, (oy[:, None] < H) & (ox[None, :] < W)


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
    c, oy, ox, base, off2, out_m = _tile_coords(C, H, W, BH, BW)
    src = x_ptr + base
    out_off = base + off2

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
    c, oy, ox, base, off2, out_m = _tile_coords(C, H, W, BH, BW)
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
    plane = tl.program_id(0) // n_split
    split = tl.program_id(0) % n_split
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
# Launch plans (shared by the launchers and the kernel report)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DirectConfig:
    """Tile [BH rows, BW cols, BT taps] (BH * BW * BT <= 8192 values per program) and launch options;
    n_split: row splits of the weight gradient (None: the shape rule)."""

    BH: int
    BW: int
    BT: int
    num_warps: int = 4
    num_stages: int = 2
    n_split: int | None = None

    @property
    def label(self) -> str:
        s = f"BH{self.BH},BW{self.BW},BT{self.BT},w{self.num_warps},s{self.num_stages}"
        return s + (f",split{self.n_split}" if self.n_split is not None else "")


# Candidates that compile without spills for sm_80 and sm_90 in every dtype (the kernel report).
DIRECT_CONFIGS = (DirectConfig(16, 32, 16, 8),)
DIRECT_DW_CONFIGS = (DirectConfig(16, 32, 8, 4),)
_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "fp64": 8}
_ACC = {"fp64": tl.float64}
PROGRAMS_TARGET = 512


def direct_launch(pass_name: str, B: int, C: int, H: int, W: int, K: int, k: int, dtype: str, cfg: DirectConfig,
                  *, has_s: bool = True, weight_dtype: str | None = None) -> Launch:
    """The launch of one pass ('forward', 'forward_sum', 'grad_input', 'grad_weight') at a shape."""
    L = k * math.ceil(K / k)
    BH, BW, BT = cfg.BH, cfg.BW, cfg.BT
    consts = dict(KS=k, L=L, LO=K // 2, R=k // 2, HAS_S=bool(has_s), ACC=_ACC.get(dtype, tl.float32), BH=BH, BW=BW,
                  BT=BT)
    wdt = weight_dtype or dtype
    s = _BYTES[dtype]
    n = B * C * H * W
    ints = {"C": C, "H": H, "W": W}
    tap_loops = (LoopModel(1, math.ceil(k * L / BT)), LoopModel(1, math.ceil(k * L / BT)),
                 LoopModel(1, math.ceil(k * k / BT), True))
    if pass_name in ("forward", "forward_sum"):
        reduce = pass_name == "forward_sum"
        ptrs = {"x_ptr": dtype, "wh_ptr": wdt, "wv_ptr": wdt, "ws_ptr": wdt, "oh_ptr": dtype, "ov_ptr": dtype,
                "os_ptr": dtype}
        grid = B * C * math.ceil(H / BH) * math.ceil(W / BW)
        return Launch("direct_fwd_sum" if reduce else "direct_fwd", _cross_fwd_kernel, pass_name, cfg.label, ptrs,
                      ints, dict(consts, REDUCE=reduce), cfg.num_warps, cfg.num_stages, grid,
                      tap_loops if has_s else tap_loops[:2], 1.0, (2 if reduce else 4) * s * n)
    if pass_name == "grad_input":
        ptrs = {"gh_ptr": dtype, "gv_ptr": dtype, "gs_ptr": dtype, "wh_ptr": wdt, "wv_ptr": wdt, "ws_ptr": wdt,
                "dx_ptr": dtype}
        grid = B * C * math.ceil(H / BH) * math.ceil(W / BW)
        return Launch("direct_dx", _cross_dx_kernel, pass_name, cfg.label, ptrs, ints, consts, cfg.num_warps,
                      cfg.num_stages, grid, tap_loops if has_s else tap_loops[:2], 1.0, 4 * s * n)
    if pass_name != "grad_weight":
        raise ValueError(f"unknown pass {pass_name!r}")
    n_split = cfg.n_split if cfg.n_split is not None else math.ceil(PROGRAMS_TARGET / max(B * C, 1))
    n_split = max(1, min(n_split, math.ceil(H / BH)))
    rs = math.ceil(math.ceil(H / n_split) / BH) * BH
    n_split = math.ceil(H / rs)
    t_all = 2 * k * L + k * k
    loops = []
    for nt in (k * L, k * L, k * k)[: 3 if has_s else 2]:
        t = math.ceil(nt / BT)
        loops += [LoopModel(1, t, t <= 1), LoopModel(2, math.ceil(rs / BH)), LoopModel(3, math.ceil(W / BW))]
    ptrs = {"x_ptr": dtype, "gh_ptr": dtype, "gv_ptr": dtype, "gs_ptr": dtype,
            "part_ptr": "fp64" if dtype == "fp64" else "fp32"}
    part_bytes = B * n_split * C * t_all * (8 if dtype == "fp64" else 4)
    return Launch("direct_dw", _cross_dw_kernel, pass_name, cfg.label, ptrs,
                  dict(ints, RS=rs, n_split=n_split), dict(consts, T_HV=k * L, T_ALL=t_all), cfg.num_warps,
                  cfg.num_stages, B * C * n_split, tuple(loops), 1.0, 4 * s * n + 2 * part_bytes)
