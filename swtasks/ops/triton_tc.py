"""Tensor-core kernels of the cross convolution: every strip as a banded (Toeplitz) matrix product.

Contract: `swtasks.ops.cross_conv` (cross_conv.py). The maths, for one channel c and a tile of the
plane (or a tile packing several small planes):

- horizontal strip: out_h = sum_i (x rows shifted by i - r) @ T_i, T_i[p, q] = w_h[c, i, p - q + K//2]
  over a window of input columns p around the tile's output columns q (zero outside the band);
- vertical strip: out_v = sum_j V_j @ (x columns shifted by j - r), V_j[a, p] = w_v[c, p - a + K//2, j];
- centre: out_s = sum_i (x rows shifted by i - r) @ S_i, S_i the 3-diagonal band of w_s[c, i, :]; in the
  summed (deploy) forward it is added to T_i and costs nothing; fp32 computes its own branch (and, exact,
  its weight gradient) as a k x k stencil on the FMA units instead (`_centre`, `_dw_s`);
- input gradient: the same products with flipped taps (transposed bands) applied to the three
  incoming gradients, summed in one accumulator;
- weight gradient: dT_i = sum over the streamed tiles of (x rows shifted)^T @ g (the same product,
  transposed), then the band (diagonal) sums of dT_i are the taps; per (split, channel) partials, one
  fixed-order sum afterwards: no atomics, bit-identical runs.

A program owns one channel and one branch ("part"), builds its bands once (they stay in shared memory
or registers) and streams work items through them: a work item is one tile of one image, or, when
the plane fits a tile (block mode: H <= BH, W <= BW), a tile that packs PH x PW whole images in slots
of a power-of-two size. Only taps that reach the image are ever multiplied in block mode: the band is
the tile, not the k x L kernel. Column shifts (j != r) of 16-bit inputs are exact 0/1 matrix products
on tensor cores (TC_SHIFT) instead of misaligned loads; every other load is vectorised by telling the
compiler that W, the slots and the window starts are multiples of VEC.

Operands: fp16/bf16 (fp32 accumulation) and fp32 with input_precision 'ieee' (exact, FMA units),
'tf32x3' (three TF32 products written out, `_mma`) or 'tf32'. Launch plans (`tc_launch`) are shared by the launchers and the kernel report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import triton
import triton.language as tl

from .launch import Launch, LoopModel

__all__ = ["HAS_GATHER", "TC_PASSES", "TileConfig", "tc_launch", "tc_supported"]

HAS_GATHER = hasattr(tl, "gather")  # triton >= 3.2; older versions reduce the bands with masked sums


@triton.jit
def _axis(N: tl.constexpr, S: tl.constexpr, BLK: tl.constexpr, OFF: tl.constexpr, START=0):
    """(image slot, coordinate) of the N tile or window indices START.. along one axis. Block mode: slot
    idx // S, coordinate idx % S (S: a power of two >= the extent). Tiled mode: slot 0, coordinate
    idx + OFF relative to the tile origin."""
    idx = START + tl.arange(0, N)
    if BLK:
        return idx // S, idx % S
    return idx * 0, idx + OFF


@triton.jit
def _cols_ok(origin, N: tl.constexpr, W, S: tl.constexpr, BLK: tl.constexpr, OFF: tl.constexpr,
             VEC: tl.constexpr, START=0):
    """0 <= column < W for the N indices START.., decided per group of VEC columns (VEC divides W, S,
    START and the offsets) so that the compiler can vectorise the accesses."""
    grp = (START + tl.arange(0, N)) // VEC
    if BLK:
        return (grp % (S // VEC)) < W // VEC
    g = grp + (origin + OFF) // VEC
    return (g >= 0) & (g < W // VEC)


@triton.jit
def _band(w_ptr, pos_k, img_k, pos_n, img_n, fixed, S_FIX, S_U, ULEN, OFF,
          SIGN: tl.constexpr, BLK: tl.constexpr):
    """Banded [len(pos_k), len(pos_n)] matrix w[fixed * S_FIX + u * S_U], u = SIGN*(pos_k - pos_n) + OFF,
    zero outside 0 <= u < ULEN and between image slots."""
    u = SIGN * (pos_k[:, None] - pos_n[None, :]) + OFF
    m = (u >= 0) & (u < ULEN)
    if BLK:
        m = m & (img_k[:, None] == img_n[None, :])
    return tl.load(w_ptr + fixed * S_FIX + u * S_U, mask=m, other=0.0).to(tl.float32)


@triton.jit
def _tf32_split(x):
    """x = hi + lo exactly, hi rounded to a TF32 mantissa (10 bits, to nearest, ties away from zero)."""
    hi = ((x.to(tl.uint32, bitcast=True) + 0x1000) & 0xFFFFE000).to(tl.float32, bitcast=True)
    return hi, x - hi


@triton.jit
def _mma(a, b, acc, PREC: tl.constexpr):
    """acc + a @ b. 'tf32x3': three TF32 products (lo*hi, hi*lo, then hi*hi) into the one running
    accumulator, ~fp32 accuracy (only lo*lo, ~2^-22 relative, is dropped). Written out here rather than
    left to the compiler, whose 3xTF32 keeps a second accumulator per dot and spills in tiles of 64."""
    if PREC == "tf32x3":
        a_hi, a_lo = _tf32_split(a)
        b_hi, b_lo = _tf32_split(b)
        acc = tl.dot(a_lo, b_hi, acc, input_precision="tf32")
        acc = tl.dot(a_hi, b_lo, acc, input_precision="tf32")
        return tl.dot(a_hi, b_hi, acc, input_precision="tf32")
    return tl.dot(a, b, acc, input_precision=PREC)


@triton.jit
def _bands(w_ptr, pos_k, img_k, pos_n, img_n, S_FIX, S_U, ULEN, OFF, KS: tl.constexpr,
           SIGN: tl.constexpr, BLK: tl.constexpr, DOT: tl.constexpr, TRANS: tl.constexpr):
    """Bands 0..KS-1 (KS = 1, 3 or 5) as five values; unused ones repeat band 0."""
    b0 = _band(w_ptr, pos_k, img_k, pos_n, img_n, 0, S_FIX, S_U, ULEN, OFF, SIGN, BLK)
    b1 = b0
    b2 = b0
    b3 = b0
    b4 = b0
    if KS > 1:
        b1 = _band(w_ptr, pos_k, img_k, pos_n, img_n, 1, S_FIX, S_U, ULEN, OFF, SIGN, BLK)
        b2 = _band(w_ptr, pos_k, img_k, pos_n, img_n, 2, S_FIX, S_U, ULEN, OFF, SIGN, BLK)
    if KS > 3:
        b3 = _band(w_ptr, pos_k, img_k, pos_n, img_n, 3, S_FIX, S_U, ULEN, OFF, SIGN, BLK)
        b4 = _band(w_ptr, pos_k, img_k, pos_n, img_n, 4, S_FIX, S_U, ULEN, OFF, SIGN, BLK)
    if TRANS:
        b0, b1, b2, b3, b4 = tl.trans(b0), tl.trans(b1), tl.trans(b2), tl.trans(b3), tl.trans(b4)
    return b0.to(DOT), b1.to(DOT), b2.to(DOT), b3.to(DOT), b4.to(DOT)


@triton.jit
def _shifts(pos, img, KS: tl.constexpr, R: tl.constexpr, SIGN: tl.constexpr, DOT: tl.constexpr):
    """0/1 matrices [N, N] moving columns by SIGN*(j - R) inside each image slot: (X @ U_j)[:, x] =
    X[:, x + SIGN*(j - R)], exact on tensor cores for 16-bit X. Five values; U_R is unused."""
    same = img[:, None] == img[None, :]
    d = pos[:, None] - pos[None, :]
    u0 = tl.where(same & (d == SIGN * (0 - R)), 1.0, 0.0).to(DOT)
    u1 = u0
    u2 = u0
    u3 = u0
    u4 = u0
    if KS > 1:
        u1 = tl.where(same & (d == SIGN * (1 - R)), 1.0, 0.0).to(DOT)
        u2 = tl.where(same & (d == SIGN * (2 - R)), 1.0, 0.0).to(DOT)
    if KS > 3:
        u3 = tl.where(same & (d == SIGN * (3 - R)), 1.0, 0.0).to(DOT)
        u4 = tl.where(same & (d == SIGN * (4 - R)), 1.0, 0.0).to(DOT)
    return u0, u1, u2, u3, u4


@triton.jit
def _load(src, r_pw, rows, r_ok, c_img, c_off, c_ok, H, W, CHW, n_img, VEC: tl.constexpr):
    """Masked tile load: rows (slot offset r_pw = slot * PW, row index rows), columns (slot c_img,
    element offset c_off in the plane, validity c_ok)."""
    rm = r_ok & (rows >= 0) & (rows < H)
    m = rm[:, None] & c_ok[None, :] & (r_pw[:, None] + c_img[None, :] < n_img)
    ro = tl.multiple_of(r_pw * CHW + rows * W, VEC)
    return tl.load(src + (ro[:, None] + c_off[None, :]), mask=m, other=0.0)


@triton.jit
def _hstep(acc, src, i: tl.constexpr, band, r_pw, rows, r_ok, c_img, c_off, c_ok, H, W, CHW, n_img,
           KS: tl.constexpr, R: tl.constexpr, SIGN: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr,
           VEC: tl.constexpr):
    """acc += (src rows shifted by SIGN*(i - R), over the horizontal window) @ band (for i < KS)."""
    if i < KS:
        t = _load(src, r_pw, rows + SIGN * (i - R), r_ok, c_img, c_off, c_ok, H, W, CHW, n_img, VEC)
        acc = _mma(t.to(DOT), band, acc, PREC)
    return acc


@triton.jit
def _hsum(acc, src, b0, b1, b2, b3, b4, r_pw, rows, r_ok, c_img, c_off, c_ok, H, W, CHW, n_img,
          KS: tl.constexpr, R: tl.constexpr, SIGN: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr,
          VEC: tl.constexpr):
    """acc += sum_i (src rows shifted by SIGN*(i - R)) @ band_i over the horizontal window."""
    acc = _hstep(acc, src, 0, b0, r_pw, rows, r_ok, c_img, c_off, c_ok, H, W, CHW, n_img, KS, R, SIGN, DOT, PREC, VEC)
    acc = _hstep(acc, src, 1, b1, r_pw, rows, r_ok, c_img, c_off, c_ok, H, W, CHW, n_img, KS, R, SIGN, DOT, PREC, VEC)
    acc = _hstep(acc, src, 2, b2, r_pw, rows, r_ok, c_img, c_off, c_ok, H, W, CHW, n_img, KS, R, SIGN, DOT, PREC, VEC)
    acc = _hstep(acc, src, 3, b3, r_pw, rows, r_ok, c_img, c_off, c_ok, H, W, CHW, n_img, KS, R, SIGN, DOT, PREC, VEC)
    return _hstep(acc, src, 4, b4, r_pw, rows, r_ok, c_img, c_off, c_ok, H, W, CHW, n_img, KS, R, SIGN, DOT, PREC, VEC)


@triton.jit
def _moved(src, a_pw, rows, a_ok, q_img, q_off, cols, q_ok, d: tl.constexpr, H, W, CHW, n_img, VEC: tl.constexpr):
    """The tile of src at the given rows, columns moved by d inside each image slot (zero outside)."""
    if d == 0:
        return _load(src, a_pw, rows, a_ok, q_img, q_off, q_ok, H, W, CHW, n_img, VEC)
    m = q_ok & (cols + d >= 0) & (cols + d < W)
    return _load(src, a_pw, rows, a_ok, q_img, q_off + d, m, H, W, CHW, n_img, 1)


@triton.jit
def _vcols(src, r_pw, rows, r_ok, c_img, c_off, cols, c_ok, u, j: tl.constexpr, H, W, CHW, n_img,
           R: tl.constexpr, SIGN: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr,
           VEC: tl.constexpr, TC_SHIFT: tl.constexpr, x_tile):
    """The vertical window with columns moved by SIGN*(j - R): x_tile @ u_j on tensor cores, or a
    (misaligned) load."""
    if j == R:
        return x_tile
    if TC_SHIFT:
        return tl.dot(x_tile, u, input_precision=PREC).to(DOT)
    return _moved(src, r_pw, rows, r_ok, c_img, c_off, cols, c_ok, SIGN * (j - R), H, W, CHW, n_img, VEC).to(DOT)


@triton.jit
def _vstep(acc, src, j: tl.constexpr, band, u, x, r_pw, rows, r_ok, c_img, c_off, cols, c_ok, H, W, CHW, n_img,
           KS: tl.constexpr, R: tl.constexpr, SIGN: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr,
           VEC: tl.constexpr, TC_SHIFT: tl.constexpr):
    """acc += band @ (x, the vertical window, with columns moved by SIGN*(j - R)) (for j < KS)."""
    if j < KS:
        t = _vcols(src, r_pw, rows, r_ok, c_img, c_off, cols, c_ok, u, j, H, W, CHW, n_img, R, SIGN, DOT, PREC,
                   VEC, TC_SHIFT, x)
        acc = _mma(band, t, acc, PREC)
    return acc


@triton.jit
def _vsum(acc, src, v0, v1, v2, v3, v4, u0, u1, u2, u3, u4, r_pw, rows, r_ok, c_img, c_off, cols, c_ok,
          H, W, CHW, n_img, KS: tl.constexpr, R: tl.constexpr, SIGN: tl.constexpr, DOT: tl.constexpr,
          PREC: tl.constexpr, VEC: tl.constexpr, TC_SHIFT: tl.constexpr):
    """acc += sum_j band_j @ (src over the vertical window, columns shifted by SIGN*(j - R))."""
    x = _load(src, r_pw, rows, r_ok, c_img, c_off, c_ok, H, W, CHW, n_img, VEC).to(DOT)
    acc = _vstep(acc, src, 0, v0, u0, x, r_pw, rows, r_ok, c_img, c_off, cols, c_ok, H, W, CHW, n_img, KS, R, SIGN,
                 DOT, PREC, VEC, TC_SHIFT)
    acc = _vstep(acc, src, 1, v1, u1, x, r_pw, rows, r_ok, c_img, c_off, cols, c_ok, H, W, CHW, n_img, KS, R, SIGN,
                 DOT, PREC, VEC, TC_SHIFT)
    acc = _vstep(acc, src, 2, v2, u2, x, r_pw, rows, r_ok, c_img, c_off, cols, c_ok, H, W, CHW, n_img, KS, R, SIGN,
                 DOT, PREC, VEC, TC_SHIFT)
    acc = _vstep(acc, src, 3, v3, u3, x, r_pw, rows, r_ok, c_img, c_off, cols, c_ok, H, W, CHW, n_img, KS, R, SIGN,
                 DOT, PREC, VEC, TC_SHIFT)
    return _vstep(acc, src, 4, v4, u4, x, r_pw, rows, r_ok, c_img, c_off, cols, c_ok, H, W, CHW, n_img, KS, R,
                  SIGN, DOT, PREC, VEC, TC_SHIFT)


@triton.jit
def _hchunk(acc, src, w_ptr, wfix, wlen, woff, ws_ptr, MERGE_S: tl.constexpr, q_pos, q_img, a_pw, rows, a_ok, x0,
            H, W, CHW, n_img, i, c0, KS: tl.constexpr, R: tl.constexpr, SIGN: tl.constexpr, DOT: tl.constexpr,
            PREC: tl.constexpr, VEC: tl.constexpr, KC: tl.constexpr, SW: tl.constexpr, BLK_W: tl.constexpr,
            WOFF: tl.constexpr):
    """acc += (src rows shifted by SIGN*(i - R), window columns c0..c0+KC) @ (that chunk of band i)."""
    k_img, k_pos = _axis(KC, SW, BLK_W, WOFF, c0)
    band = _band(w_ptr, k_pos, k_img, q_pos, q_img, i, wfix, 1, wlen, woff, SIGN, BLK_W)
    if MERGE_S:
        band += _band(ws_ptr, k_pos, k_img, q_pos, q_img, i, KS, 1, KS, R, SIGN, BLK_W)
    c_off = tl.multiple_of(k_img * CHW, VEC) + x0 + k_pos
    c_ok = _cols_ok(x0, KC, W, SW, BLK_W, WOFF, VEC, c0)
    t = _load(src, a_pw, rows + SIGN * (i - R), a_ok, k_img, c_off, c_ok, H, W, CHW, n_img, VEC)
    return _mma(t.to(DOT), band.to(DOT), acc, PREC)


@triton.jit
def _hchunks(acc, src, w_ptr, wfix, wlen, woff, ws_ptr, MERGE_S: tl.constexpr, q_pos, q_img, a_pw, rows, a_ok, x0,
             H, W, CHW, n_img, KS: tl.constexpr, R: tl.constexpr, SIGN: tl.constexpr, DOT: tl.constexpr,
             PREC: tl.constexpr, VEC: tl.constexpr, KC: tl.constexpr, KWC: tl.constexpr, SW: tl.constexpr,
             BLK_W: tl.constexpr, WOFF: tl.constexpr, KLOOP: tl.constexpr):
    """The horizontal-kind sum with the window in chunks of KC columns and each band chunk built from
    the (cached) weights when used: small dot operands, nothing resident (fp32 operands). KLOOP: the
    chunks in a run-time loop (the compiler hoists every unrolled chunk's band addresses and masks out of
    the item loop, which spills with split TF32 operands), else unrolled."""
    for i in tl.static_range(KS):
        if KLOOP:
            for c0 in range(0, KWC, KC):
                acc = _hchunk(acc, src, w_ptr, wfix, wlen, woff, ws_ptr, MERGE_S, q_pos, q_img, a_pw, rows, a_ok, x0,
                              H, W, CHW, n_img, i, tl.multiple_of(c0, KC), KS, R, SIGN, DOT, PREC, VEC, KC, SW,
                              BLK_W, WOFF)
        else:
            for c0 in tl.static_range(0, KWC, KC):
                acc = _hchunk(acc, src, w_ptr, wfix, wlen, woff, ws_ptr, MERGE_S, q_pos, q_img, a_pw, rows, a_ok, x0,
                              H, W, CHW, n_img, i, c0, KS, R, SIGN, DOT, PREC, VEC, KC, SW, BLK_W, WOFF)
    return acc


@triton.jit
def _vchunk(acc, src, wv_ptr, a_pos, a_img, q_img, q_off, cols, q_ok, y0, H, W, CHW, n_img, j: tl.constexpr, c0,
            PW: tl.constexpr, PH: tl.constexpr, KS: tl.constexpr, L: tl.constexpr, LO: tl.constexpr,
            R: tl.constexpr, SIGN: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr, VEC: tl.constexpr,
            KC: tl.constexpr, SH: tl.constexpr, BLK_H: tl.constexpr, HOFF: tl.constexpr):
    """acc += (that chunk of vertical band j) @ (src window rows c0..c0+KC, columns moved by SIGN*(j - R))."""
    d: tl.constexpr = SIGN * (j - R)
    k_img, k_pos = _axis(KC, SH, BLK_H, HOFF, c0)
    band = tl.trans(_band(wv_ptr, k_pos, k_img, a_pos, a_img, j, 1, KS, L, LO, SIGN, BLK_H))
    t = _moved(src, k_img * PW, y0 + k_pos, k_img < PH, q_img, q_off, cols, q_ok, d, H, W, CHW, n_img, VEC)
    return _mma(band.to(DOT), t.to(DOT), acc, PREC)


@triton.jit
def _vchunks(acc, src, wv_ptr, a_pos, a_img, q_img, q_off, cols, q_ok, y0, H, W, CHW, n_img, PW: tl.constexpr,
             PH: tl.constexpr, KS: tl.constexpr, L: tl.constexpr, LO: tl.constexpr, R: tl.constexpr,
             SIGN: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr, VEC: tl.constexpr, KC: tl.constexpr,
             KHC: tl.constexpr, SH: tl.constexpr, BLK_H: tl.constexpr, HOFF: tl.constexpr, KLOOP: tl.constexpr):
    """The vertical sum with the window in chunks of KC rows, band chunks built when used (KLOOP: as
    in _hchunks)."""
    for j in tl.static_range(KS):
        if KLOOP:
            for c0 in range(0, KHC, KC):
                acc = _vchunk(acc, src, wv_ptr, a_pos, a_img, q_img, q_off, cols, q_ok, y0, H, W, CHW, n_img, j,
                              tl.multiple_of(c0, KC), PW, PH, KS, L, LO, R, SIGN, DOT, PREC, VEC, KC, SH, BLK_H, HOFF)
        else:
            for c0 in tl.static_range(0, KHC, KC):
                acc = _vchunk(acc, src, wv_ptr, a_pos, a_img, q_img, q_off, cols, q_ok, y0, H, W, CHW, n_img, j,
                              c0, PW, PH, KS, L, LO, R, SIGN, DOT, PREC, VEC, KC, SH, BLK_H, HOFF)
    return acc


@triton.jit
def _centre(acc, src, ws_ptr, a_pw, rows, a_ok, q_img, q_off, cols, q_ok, H, W, CHW, n_img, KS: tl.constexpr,
            R: tl.constexpr, SIGN: tl.constexpr, VEC: tl.constexpr):
    """acc += the k x k centre, tap by tap: src moved by SIGN*(i - R) rows and SIGN*(u - R) columns times
    w_s[i, u] (the band S_i of the module docstring, without multiplying its zeros; exact fp32). The rows
    in a run-time loop: k loads in flight, not k * k tiles in registers."""
    for i in range(KS):
        for u in tl.static_range(KS):
            t = _moved(src, a_pw, rows + SIGN * (i - R), a_ok, q_img, q_off, cols, q_ok, SIGN * (u - R), H, W, CHW,
                       n_img, VEC)
            acc += tl.load(ws_ptr + (i * KS + u)).to(tl.float32) * t.to(tl.float32)
    return acc


@triton.jit
def _program(B, H, W, NSPLIT, PARTS: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr, BH: tl.constexpr,
             BW: tl.constexpr, BLK_H: tl.constexpr, BLK_W: tl.constexpr):
    """This program's part (branch), split, channel and range of work items; programs of one
    (channel, split) are adjacent, so the parts read the same input tiles at about the same time."""
    pid = tl.program_id(0)
    n_ty = 1 if BLK_H else tl.cdiv(H, BH)
    n_tx = 1 if BLK_W else tl.cdiv(W, BW)
    n_items = tl.cdiv(B, PH * PW) * n_ty * n_tx
    s = (pid // PARTS) % NSPLIT
    per = tl.cdiv(n_items, NSPLIT)
    it0 = s * per
    return pid % PARTS, s, pid // (PARTS * NSPLIT), it0, tl.minimum(it0 + per, n_items), n_ty, n_tx


@triton.jit
def _item(it, B, C, H, W, c, n_ty, n_tx, PH: tl.constexpr, PW: tl.constexpr, BH: tl.constexpr,
          BW: tl.constexpr, VEC: tl.constexpr):
    """Work item -> (plane base offset, images in the item, tile origin y0, x0)."""
    tx = it % n_tx
    ty = (it // n_tx) % n_ty
    gbase = (it // (n_tx * n_ty)) * (PH * PW)
    base = tl.multiple_of((gbase * C + c).to(tl.int64) * (H * W), VEC)
    return base, tl.minimum(PH * PW, B - gbase), ty * BH, tx * BW


@triton.jit
def _fwd_run(src_h, src_v, src_s, hw_ptr, hlen, hoff, hfix, ws_ptr, wv_ptr, out_ptr,
             c, it0, it1, B, C, H, W, n_ty, n_tx,
             DO_H: tl.constexpr, DO_V: tl.constexpr, DO_S: tl.constexpr, MERGE_S: tl.constexpr,
             KS: tl.constexpr, L: tl.constexpr, LO: tl.constexpr, R: tl.constexpr, SIGN: tl.constexpr,
             DOT: tl.constexpr, PREC: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr,
             KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
             BLK_H: tl.constexpr, BLK_W: tl.constexpr, VEC: tl.constexpr, TC_SHIFT: tl.constexpr,
             KC: tl.constexpr, KWC: tl.constexpr, KHC: tl.constexpr, KLOOP: tl.constexpr, DIRECT_S: tl.constexpr,
             ADD: tl.constexpr = False):
    """One program's items: out = the selected branches, summed (bands built once, kept); ADD: out +=
    (a later phase of a phased program, which owns its output tiles: no other program touches them);
    DIRECT_S: the centre (DO_S) as a k x k stencil on the FMA units instead of banded products."""
    PH: tl.constexpr = BH // SH if BLK_H else 1
    PW: tl.constexpr = BW // SW if BLK_W else 1
    WOFF: tl.constexpr = (-LO if SIGN == 1 else -(L - 1 - LO)) // VEC * VEC  # aligned window start
    HOFF: tl.constexpr = -LO if SIGN == 1 else -(L - 1 - LO)
    CHW = C * H * W
    a_img, a_pos = _axis(BH, SH, BLK_H, 0)
    q_img, q_pos = _axis(BW, SW, BLK_W, 0)
    kw_img, kw_pos = _axis(KW, SW, BLK_W, WOFF)
    kh_img, kh_pos = _axis(KH, SH, BLK_H, HOFF)
    a_pw = a_img * PW
    kh_pw = kh_img * PW
    a_ok = a_img < PH
    kh_ok = kh_img < PH
    if DO_H and KC == 0:
        h0, h1, h2, h3, h4 = _bands(hw_ptr, kw_pos, kw_img, q_pos, q_img, hfix, 1, hlen, hoff, KS, SIGN,
                                    BLK_W, tl.float32, False)
        if MERGE_S:
            m0, m1, m2, m3, m4 = _bands(ws_ptr, kw_pos, kw_img, q_pos, q_img, KS, 1, KS, R, KS, SIGN,
                                        BLK_W, tl.float32, False)
            h0 += m0
            h1 += m1
            h2 += m2
            h3 += m3
            h4 += m4
        h0, h1, h2, h3, h4 = h0.to(DOT), h1.to(DOT), h2.to(DOT), h3.to(DOT), h4.to(DOT)
    if DO_S and KC == 0 and not DIRECT_S:
        s0, s1, s2, s3, s4 = _bands(ws_ptr, kw_pos, kw_img, q_pos, q_img, KS, 1, KS, R, KS, SIGN, BLK_W,
                                    DOT, False)
    if DO_V and KC == 0:
        v0, v1, v2, v3, v4 = _bands(wv_ptr, kh_pos, kh_img, a_pos, a_img, 1, KS, L, LO, KS, SIGN, BLK_H,
                                    DOT, True)
        u0, u1, u2, u3, u4 = _shifts(q_pos, q_img, KS, R, SIGN, DOT)
    for it in range(it0, it1):
        base, n_img, y0, x0 = _item(it, B, C, H, W, c, n_ty, n_tx, PH, PW, BH, BW, VEC)
        acc = tl.zeros((BH, BW), dtype=tl.float32)
        q_off = tl.multiple_of(q_img * CHW, VEC) + x0 + q_pos
        q_ok = _cols_ok(x0, BW, W, SW, BLK_W, 0, VEC)
        if DO_S and DIRECT_S:
            acc = _centre(acc, src_s + base, ws_ptr, a_pw, y0 + a_pos, a_ok, q_img, q_off, x0 + q_pos, q_ok, H, W,
                          CHW, n_img, KS, R, SIGN, VEC)
        if DO_H or DO_S:
            kc_off = tl.multiple_of(kw_img * CHW, VEC) + x0 + kw_pos
            kc_ok = _cols_ok(x0, KW, W, SW, BLK_W, WOFF, VEC)
        if KC > 0:  # chunked windows, bands built when used
            if DO_H:
                acc = _hchunks(acc, src_h + base, hw_ptr, hfix, hlen, hoff, ws_ptr, MERGE_S, q_pos, q_img, a_pw,
                               y0 + a_pos, a_ok, x0, H, W, CHW, n_img, KS, R, SIGN, DOT, PREC, VEC, KC, KWC, SW,
                               BLK_W, WOFF, KLOOP)
            if DO_S and not DIRECT_S:
                acc = _hchunks(acc, src_s + base, ws_ptr, KS, KS, R, ws_ptr, False, q_pos, q_img, a_pw, y0 + a_pos,
                               a_ok, x0, H, W, CHW, n_img, KS, R, SIGN, DOT, PREC, VEC, KC, KWC, SW, BLK_W, WOFF,
                               KLOOP)
        else:
            if DO_H:
                acc = _hsum(acc, src_h + base, h0, h1, h2, h3, h4, a_pw, y0 + a_pos, a_ok, kw_img, kc_off, kc_ok,
                            H, W, CHW, n_img, KS, R, SIGN, DOT, PREC, VEC)
            if DO_S and not DIRECT_S:
                acc = _hsum(acc, src_s + base, s0, s1, s2, s3, s4, a_pw, y0 + a_pos, a_ok, kw_img, kc_off, kc_ok,
                            H, W, CHW, n_img, KS, R, SIGN, DOT, PREC, VEC)
        if DO_V and KC > 0:
            acc = _vchunks(acc, src_v + base, wv_ptr, a_pos, a_img, q_img, q_off, x0 + q_pos, q_ok, y0, H, W, CHW,
                           n_img, PW, PH, KS, L, LO, R, SIGN, DOT, PREC, VEC, KC, KHC, SH, BLK_H, HOFF, KLOOP)
        elif DO_V:
            acc = _vsum(acc, src_v + base, v0, v1, v2, v3, v4, u0, u1, u2, u3, u4, kh_pw, y0 + kh_pos, kh_ok,
                        q_img, q_off, x0 + q_pos, q_ok, H, W, CHW, n_img, KS, R, SIGN, DOT, PREC, VEC, TC_SHIFT)
        rows = y0 + a_pos
        m = (a_ok & (rows < H))[:, None] & q_ok[None, :] & (a_pw[:, None] + q_img[None, :] < n_img)
        ro = tl.multiple_of(a_img * (PW * CHW) + rows * W, VEC)
        optr = out_ptr + base + (ro[:, None] + q_off[None, :])
        if ADD:
            acc += tl.load(optr, mask=m, other=0.0).to(tl.float32)
        tl.store(optr, acc.to(out_ptr.dtype.element_ty), mask=m)


@triton.jit
def _cross_tc_kernel(
    src_h, src_v, src_s, wh_ptr, wv_ptr, ws_ptr, o_h, o_v, o_s,
    B, C, H, W, NSPLIT,
    KS: tl.constexpr, L: tl.constexpr, LO: tl.constexpr, R: tl.constexpr, HAS_S: tl.constexpr,
    MODE: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr,
    BH: tl.constexpr, BW: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    SH: tl.constexpr, SW: tl.constexpr, BLK_H: tl.constexpr, BLK_W: tl.constexpr,
    VEC: tl.constexpr, TC_SHIFT: tl.constexpr, PHASED: tl.constexpr, KC: tl.constexpr, KWC: tl.constexpr,
    KHC: tl.constexpr, KLOOP: tl.constexpr, DIRECT_S: tl.constexpr,
):
    """MODE 0: forward, one branch per program (part 0 horizontal, 1 vertical, 2 centre); MODE 1:
    forward, the sum (centre merged into the horizontal bands); MODE 2: input gradient, flipped taps,
    from the three incoming gradients src_h, src_v, src_s. PHASED (fp32 outputs, MODE 1 and 2): one
    branch at a time over the program's items, adding into the output (a third of the bands resident)."""
    SIGN: tl.constexpr = -1 if MODE == 2 else 1
    PARTS: tl.constexpr = (3 if HAS_S else 2) if MODE == 0 else 1
    PH: tl.constexpr = BH // SH if BLK_H else 1
    PW: tl.constexpr = BW // SW if BLK_W else 1
    part, s, c, it0, it1, n_ty, n_tx = _program(B, H, W, NSPLIT, PARTS, PH, PW, BH, BW, BLK_H, BLK_W)
    wh = wh_ptr + c * (KS * L)
    wv = wv_ptr + c * (L * KS)
    ws = ws_ptr + c * (KS * KS)
    if MODE == 0:
        if part == 1:
            _fwd_run(src_h, src_v, src_s, wh, L, LO, L, ws, wv, o_v, c, it0, it1, B, C, H, W, n_ty, n_tx,
                     False, True, False, False, KS, L, LO, R, SIGN, DOT, PREC, BH, BW, KH, KW, SH, SW,
                     BLK_H, BLK_W, VEC, TC_SHIFT, KC, KWC, KHC, KLOOP, DIRECT_S)
        elif part == 0:
            _fwd_run(src_h, src_v, src_s, wh, L, LO, L, ws, wv, o_h, c, it0, it1, B, C, H, W, n_ty, n_tx,
                     True, False, False, False, KS, L, LO, R, SIGN, DOT, PREC, BH, BW, KH, KW, SH, SW,
                     BLK_H, BLK_W, VEC, TC_SHIFT, KC, KWC, KHC, KLOOP, DIRECT_S)
        else:
            _fwd_run(src_h, src_v, src_s, ws, KS, R, KS, ws, wv, o_s, c, it0, it1, B, C, H, W, n_ty, n_tx,
                     not DIRECT_S, False, DIRECT_S, False, KS, L, LO, R, SIGN, DOT, PREC, BH, BW, KH, KW, SH, SW,
                     BLK_H, BLK_W, VEC, TC_SHIFT, KC, KWC, KHC, KLOOP, DIRECT_S)
    elif PHASED:
        _fwd_run(src_h, src_v, src_s, wh, L, LO, L, ws, wv, o_h, c, it0, it1, B, C, H, W, n_ty, n_tx,
                 True, False, False, MODE == 1 and HAS_S, KS, L, LO, R, SIGN, DOT, PREC, BH, BW, KH, KW, SH, SW,
                 BLK_H, BLK_W, VEC, TC_SHIFT, KC, KWC, KHC, KLOOP, DIRECT_S, False)
        tl.debug_barrier()  # this program's stores are visible to all its threads before they add to them
        if MODE == 2 and HAS_S:
            _fwd_run(src_h, src_v, src_s, wh, L, LO, L, ws, wv, o_h, c, it0, it1, B, C, H, W, n_ty, n_tx,
                     False, False, True, False, KS, L, LO, R, SIGN, DOT, PREC, BH, BW, KH, KW, SH, SW,
                     BLK_H, BLK_W, VEC, TC_SHIFT, KC, KWC, KHC, KLOOP, DIRECT_S, True)
            tl.debug_barrier()
        _fwd_run(src_h, src_v, src_s, wh, L, LO, L, ws, wv, o_h, c, it0, it1, B, C, H, W, n_ty, n_tx,
                 False, True, False, False, KS, L, LO, R, SIGN, DOT, PREC, BH, BW, KH, KW, SH, SW,
                 BLK_H, BLK_W, VEC, TC_SHIFT, KC, KWC, KHC, KLOOP, DIRECT_S, True)
    else:
        _fwd_run(src_h, src_v, src_s, wh, L, LO, L, ws, wv, o_h, c, it0, it1, B, C, H, W, n_ty, n_tx,
                 True, True, MODE == 2 and HAS_S, MODE == 1 and HAS_S, KS, L, LO, R, SIGN, DOT, PREC,
                 BH, BW, KH, KW, SH, SW, BLK_H, BLK_W, VEC, TC_SHIFT, KC, KWC, KHC, KLOOP, DIRECT_S)


@triton.jit
def _band_sum(acc, part_ptr, pos_k, img_k, pos_n, img_n, ULEN, OFF, STRIDE, KOFF: tl.constexpr,
              N_K: tl.constexpr, N_N: tl.constexpr, S: tl.constexpr, UP: tl.constexpr, BLK: tl.constexpr,
              GATHER: tl.constexpr):
    """part[u * STRIDE] = sum over the band diagonal u of acc [N_K, N_N] (entry (p, n) lies on
    u = pos_k[p] - pos_n[n] + OFF within one image slot), u < ULEN; a fixed-order reduction."""
    u = tl.arange(0, UP)
    if GATHER:
        if BLK:
            kp = pos_n[None, :] + u[:, None] - OFF
            ok = (kp >= 0) & (kp < S) & (u[:, None] < ULEN)
            p = img_n[None, :] * S + kp
        else:
            p = pos_n[None, :] + u[:, None] - OFF - KOFF
            ok = (p >= 0) & (p < N_K) & (u[:, None] < ULEN)
        z = tl.gather(acc, tl.where(ok, p, 0), 0)
        tl.store(part_ptr + u * STRIDE, tl.sum(tl.where(ok, z, 0.0), axis=1), mask=u < ULEN)
    else:
        d = pos_k[:, None] - pos_n[None, :] + OFF
        if BLK:
            d = tl.where(img_k[:, None] == img_n[None, :], d, -1)
        for uu in range(0, ULEN):
            tl.store(part_ptr + uu * STRIDE, tl.sum(tl.sum(tl.where(d == uu, acc, 0.0), axis=1), axis=0))


@triton.jit
def _dw_h(x_ptr, g_ptr, part_ptr, i, ULEN, OFF, c, it0, it1, B, C, H, W, n_ty, n_tx,
          L: tl.constexpr, LO: tl.constexpr, R: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr,
          BH: tl.constexpr, BW: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
          BLK_H: tl.constexpr, BLK_W: tl.constexpr, VEC: tl.constexpr, UP: tl.constexpr, GATHER: tl.constexpr):
    """Horizontal-kind weight gradient of band i: acc += (x rows shifted by i - R over the window)^T @ g
    over the items, then the band sums of acc are the taps (i, u), u < ULEN."""
    PH: tl.constexpr = BH // SH if BLK_H else 1
    PW: tl.constexpr = BW // SW if BLK_W else 1
    WOFF: tl.constexpr = -LO // VEC * VEC
    CHW = C * H * W
    a_img, a_pos = _axis(BH, SH, BLK_H, 0)
    q_img, q_pos = _axis(BW, SW, BLK_W, 0)
    kw_img, kw_pos = _axis(KW, SW, BLK_W, WOFF)
    a_pw = a_img * PW
    a_ok = a_img < PH
    acc = tl.zeros((KW, BW), dtype=tl.float32)
    for it in range(it0, it1):
        base, n_img, y0, x0 = _item(it, B, C, H, W, c, n_ty, n_tx, PH, PW, BH, BW, VEC)
        rows = y0 + a_pos
        q_off = tl.multiple_of(q_img * CHW, VEC) + x0 + q_pos
        q_ok = _cols_ok(x0, BW, W, SW, BLK_W, 0, VEC)
        g = _load(g_ptr + base, a_pw, rows, a_ok, q_img, q_off, q_ok, H, W, CHW, n_img, VEC).to(DOT)
        kc_off = tl.multiple_of(kw_img * CHW, VEC) + x0 + kw_pos
        kc_ok = _cols_ok(x0, KW, W, SW, BLK_W, WOFF, VEC)
        t = _load(x_ptr + base, a_pw, rows + (i - R), a_ok, kw_img, kc_off, kc_ok, H, W, CHW, n_img, VEC).to(DOT)
        acc = _mma(tl.trans(t), g, acc, PREC)
    _band_sum(acc, part_ptr, kw_pos, kw_img, q_pos, q_img, ULEN, OFF, 1, WOFF, KW, BW, SW, UP, BLK_W, GATHER)


@triton.jit
def _dw_v(x_ptr, g_ptr, part_ptr, j, c, it0, it1, B, C, H, W, n_ty, n_tx,
          KS: tl.constexpr, L: tl.constexpr, LO: tl.constexpr, R: tl.constexpr, DOT: tl.constexpr,
          PREC: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr, KH: tl.constexpr, SH: tl.constexpr,
          SW: tl.constexpr, BLK_H: tl.constexpr, BLK_W: tl.constexpr, VEC: tl.constexpr,
          TC_SHIFT: tl.constexpr, UP: tl.constexpr, GATHER: tl.constexpr):
    """Vertical weight gradient of column j: acc += (x window, columns shifted by j - R) @ g^T ([KH, BH])
    over the items, then the band sums of acc are the taps (u, j)."""
    PH: tl.constexpr = BH // SH if BLK_H else 1
    PW: tl.constexpr = BW // SW if BLK_W else 1
    CHW = C * H * W
    a_img, a_pos = _axis(BH, SH, BLK_H, 0)
    q_img, q_pos = _axis(BW, SW, BLK_W, 0)
    kh_img, kh_pos = _axis(KH, SH, BLK_H, -LO)
    a_pw = a_img * PW
    a_ok = a_img < PH
    kh_pw = kh_img * PW
    kh_ok = kh_img < PH
    d = j - R
    if TC_SHIFT:  # (x @ u)[:, n] = x[:, n + d] inside each image slot, exact for 16-bit x
        u = tl.where((q_pos[:, None] == q_pos[None, :] + d) & (q_img[:, None] == q_img[None, :]), 1.0, 0.0).to(DOT)
    acc = tl.zeros((KH, BH), dtype=tl.float32)
    for it in range(it0, it1):
        base, n_img, y0, x0 = _item(it, B, C, H, W, c, n_ty, n_tx, PH, PW, BH, BW, VEC)
        q_off = tl.multiple_of(q_img * CHW, VEC) + x0 + q_pos
        q_ok = _cols_ok(x0, BW, W, SW, BLK_W, 0, VEC)
        gt = tl.trans(_load(g_ptr + base, a_pw, y0 + a_pos, a_ok, q_img, q_off, q_ok, H, W, CHW, n_img, VEC).to(DOT))
        rows = y0 + kh_pos
        if TC_SHIFT:
            x = _load(x_ptr + base, kh_pw, rows, kh_ok, q_img, q_off, q_ok, H, W, CHW, n_img, VEC).to(DOT)
            t = tl.dot(x, u, input_precision=PREC).to(DOT)
        else:
            cols = x0 + q_pos + d
            m = q_ok & (cols >= 0) & (cols < W)
            t = _load(x_ptr + base, kh_pw, rows, kh_ok, q_img, q_off + d, m, H, W, CHW, n_img, 1).to(DOT)
        acc = _mma(t, gt, acc, PREC)
    _band_sum(acc, part_ptr, kh_pos, kh_img, a_pos, a_img, L, LO, KS, -LO, KH, BH, SH, UP, BLK_H, GATHER)


@triton.jit
def _dw_s(x_ptr, g_ptr, part_ptr, i, c, it0, it1, B, C, H, W, n_ty, n_tx, KS: tl.constexpr, R: tl.constexpr,
          BH: tl.constexpr, BW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, BLK_H: tl.constexpr,
          BLK_W: tl.constexpr, VEC: tl.constexpr):
    """Centre weight gradient of row i as a stencil: part[u] = sum over the items of the elementwise
    product of g and x moved by (i - R, u - R), u < KS (exact fp32; one accumulator per tap, each summed
    once at the end in a fixed order)."""
    PH: tl.constexpr = BH // SH if BLK_H else 1
    PW: tl.constexpr = BW // SW if BLK_W else 1
    CHW = C * H * W
    a_img, a_pos = _axis(BH, SH, BLK_H, 0)
    q_img, q_pos = _axis(BW, SW, BLK_W, 0)
    a_pw = a_img * PW
    a_ok = a_img < PH
    acc0 = tl.zeros((BH, BW), dtype=tl.float32)
    acc1 = acc0
    acc2 = acc0
    acc3 = acc0
    acc4 = acc0
    for it in tl.range(it0, it1, num_stages=1):  # not software-pipelined: one loop, as the launch plan says
        base, n_img, y0, x0 = _item(it, B, C, H, W, c, n_ty, n_tx, PH, PW, BH, BW, VEC)
        rows = y0 + a_pos
        cols = x0 + q_pos
        q_off = tl.multiple_of(q_img * CHW, VEC) + x0 + q_pos
        q_ok = _cols_ok(x0, BW, W, SW, BLK_W, 0, VEC)
        g = _load(g_ptr + base, a_pw, rows, a_ok, q_img, q_off, q_ok, H, W, CHW, n_img, VEC).to(tl.float32)
        src = x_ptr + base
        rx = rows + (i - R)
        acc0 += g * _moved(src, a_pw, rx, a_ok, q_img, q_off, cols, q_ok, 0 - R, H, W, CHW, n_img, VEC).to(tl.float32)
        if KS > 1:
            acc1 += g * _moved(src, a_pw, rx, a_ok, q_img, q_off, cols, q_ok, 1 - R, H, W, CHW, n_img,
                               VEC).to(tl.float32)
            acc2 += g * _moved(src, a_pw, rx, a_ok, q_img, q_off, cols, q_ok, 2 - R, H, W, CHW, n_img,
                               VEC).to(tl.float32)
        if KS > 3:
            acc3 += g * _moved(src, a_pw, rx, a_ok, q_img, q_off, cols, q_ok, 3 - R, H, W, CHW, n_img,
                               VEC).to(tl.float32)
            acc4 += g * _moved(src, a_pw, rx, a_ok, q_img, q_off, cols, q_ok, 4 - R, H, W, CHW, n_img,
                               VEC).to(tl.float32)
    tl.store(part_ptr, tl.sum(tl.sum(acc0, axis=1), axis=0))
    if KS > 1:
        tl.store(part_ptr + 1, tl.sum(tl.sum(acc1, axis=1), axis=0))
        tl.store(part_ptr + 2, tl.sum(tl.sum(acc2, axis=1), axis=0))
    if KS > 3:
        tl.store(part_ptr + 3, tl.sum(tl.sum(acc3, axis=1), axis=0))
        tl.store(part_ptr + 4, tl.sum(tl.sum(acc4, axis=1), axis=0))


@triton.jit
def _cross_tc_dw_kernel(
    x_ptr, gh_ptr, gv_ptr, gs_ptr, part_ptr,
    B, C, H, W, NSPLIT,
    KS: tl.constexpr, L: tl.constexpr, LO: tl.constexpr, R: tl.constexpr, HAS_S: tl.constexpr,
    DOT: tl.constexpr, PREC: tl.constexpr,
    BH: tl.constexpr, BW: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    SH: tl.constexpr, SW: tl.constexpr, BLK_H: tl.constexpr, BLK_W: tl.constexpr,
    VEC: tl.constexpr, TC_SHIFT: tl.constexpr, GATHER: tl.constexpr, UPL: tl.constexpr, UPS: tl.constexpr,
    DIRECT_S: tl.constexpr,
):
    """Weight-gradient partials part[split, c, taps] (taps: w_h (i, u), then w_v (u, j), then w_s (i, j)),
    one band per program: parts 0..KS-1 horizontal row i, KS..2KS-1 vertical column j, then the centre's
    rows; one accumulator each, no atomics."""
    PARTS: tl.constexpr = (3 if HAS_S else 2) * KS
    PH: tl.constexpr = BH // SH if BLK_H else 1
    PW: tl.constexpr = BW // SW if BLK_W else 1
    T_ALL: tl.constexpr = 2 * KS * L + KS * KS
    part, s, c, it0, it1, n_ty, n_tx = _program(B, H, W, NSPLIT, PARTS, PH, PW, BH, BW, BLK_H, BLK_W)
    row = part_ptr + (s * C + c).to(tl.int64) * T_ALL
    branch = part // KS
    i = part % KS
    if branch == 1:
        _dw_v(x_ptr, gv_ptr, row + KS * L + i, i, c, it0, it1, B, C, H, W, n_ty, n_tx, KS, L, LO, R, DOT, PREC,
              BH, BW, KH, SH, SW, BLK_H, BLK_W, VEC, TC_SHIFT, UPL, GATHER)
    elif branch == 0:
        _dw_h(x_ptr, gh_ptr, row + i * L, i, L, LO, c, it0, it1, B, C, H, W, n_ty, n_tx, L, LO, R, DOT, PREC,
              BH, BW, KW, SH, SW, BLK_H, BLK_W, VEC, UPL, GATHER)
    elif DIRECT_S:
        _dw_s(x_ptr, gs_ptr, row + 2 * KS * L + i * KS, i, c, it0, it1, B, C, H, W, n_ty, n_tx, KS, R, BH, BW, SH, SW,
              BLK_H, BLK_W, VEC)
    else:
        _dw_h(x_ptr, gs_ptr, row + 2 * KS * L + i * KS, i, KS, R, c, it0, it1, B, C, H, W, n_ty, n_tx, L, LO, R,
              DOT, PREC, BH, BW, KW, SH, SW, BLK_H, BLK_W, VEC, UPS, GATHER)


# ---------------------------------------------------------------------------------------------
# Launch plans (shared by the launchers and the kernel report)
# ---------------------------------------------------------------------------------------------

TC_PASSES = ("forward", "forward_sum", "grad_input", "grad_weight")
_MODE = {"forward": 0, "forward_sum": 1, "grad_input": 2}
_DOT = {"fp32": tl.float32, "bf16": tl.bfloat16, "fp16": tl.float16}
_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "fp64": 8}
PROGRAMS_TARGET = 512  # programs per launch the split aims at (~4 per SM of an H100); shape-only


@dataclass(frozen=True)
class TileConfig:
    """Tile [BH, BW] and launch options of a tensor-core kernel. nsplit: programs per (channel, part)
    (None: enough to reach PROGRAMS_TARGET programs); tc_shift: column shifts on tensor cores (None:
    for 16-bit inputs whenever the plane fits the tile's width); phased: the summed forward and the
    input gradient one branch at a time (None: for fp32, whose bands would not all fit at once); kc: the
    width of the window chunks (None: 16 for fp32, 0 = whole windows with resident bands for 16-bit);
    kloop: the chunks in a run-time loop instead of unrolled (None: for the TF32 forms, see _hchunks);
    direct_s: fp32 only, the centre's own products (forward, input and weight gradients) as a k x k
    stencil on the FMA units rather than banded products that are mostly zeros (None: on for fp32, but
    for the TF32 forms' weight gradient)."""

    BH: int
    BW: int
    num_warps: int = 4
    num_stages: int = 2
    nsplit: int | None = None
    tc_shift: bool | None = None
    phased: bool | None = None
    kc: int | None = None
    kloop: bool | None = None
    direct_s: bool | None = None

    @property
    def label(self) -> str:
        tags = (("nsplit", "split"), ("tc_shift", "tcshift"), ("phased", "phased"), ("kc", "kc"),
                ("kloop", "kloop"), ("direct_s", "directs"))  # the optional fields, when set
        return f"BH{self.BH},BW{self.BW},w{self.num_warps},s{self.num_stages}" + "".join(
            f",{tag}{int(v)}" for field, tag in tags if (v := getattr(self, field)) is not None)


def tc_supported(k: int, dtype: str) -> bool:
    """The tensor-core kernels take small kernels k = 1, 3, 5 and fp16/bf16/fp32 inputs."""
    return k in (1, 3, 5) and dtype in _DOT


def _vec(W: int, limit: int) -> int:
    v = 1
    while v * 2 <= limit and W % (v * 2) == 0:
        v *= 2
    return v


def tc_launch(pass_name: str, B: int, C: int, H: int, W: int, K: int, k: int, dtype: str, precision, cfg: TileConfig,
              *, has_s: bool = True, weight_dtype: str | None = None, interpret: bool = False) -> Launch:
    """The launch of one pass ('forward', 'forward_sum', 'grad_input', 'grad_weight') at a shape."""
    if pass_name not in TC_PASSES:
        raise ValueError(f"unknown pass {pass_name!r}; one of {TC_PASSES}")
    if not tc_supported(k, dtype):
        raise ValueError(f"the tensor-core kernels take k in (1, 3, 5) and fp16/bf16/fp32, got k={k}, {dtype}")
    L = k * math.ceil(K / k)
    LO, R = K // 2, k // 2
    BH, BW = cfg.BH, cfg.BW
    sign = -1 if pass_name == "grad_input" else 1
    blk_h, blk_w = H <= BH, W <= BW
    SH = triton.next_power_of_2(max(H, 1)) if blk_h else BH
    SW = triton.next_power_of_2(max(W, 1)) if blk_w else BW
    vec = _vec(W, min(16 // _BYTES[dtype], SW))
    woff = -LO if sign == 1 else -(L - 1 - LO)
    KW = BW if blk_w else triton.next_power_of_2(BW + (woff - woff // vec * vec) + L - 1)
    KH = BH if blk_h else triton.next_power_of_2(BH + L - 1)
    PH = BH // SH if blk_h else 1
    PW = BW // SW if blk_w else 1
    if (PH * PW + 1) * C * H * W >= 2**31:
        raise ValueError(f"shape {(B, C, H, W)} too large for the tensor-core kernels' 32-bit tile offsets")
    n_items = math.ceil(B / (PH * PW)) * (1 if blk_h else math.ceil(H / BH)) * (1 if blk_w else math.ceil(W / BW))
    parts = {"forward": 3 if has_s else 2, "grad_weight": (3 if has_s else 2) * k}.get(pass_name, 1)
    nsplit = cfg.nsplit if cfg.nsplit is not None else math.ceil(PROGRAMS_TARGET / (C * parts))
    nsplit = max(1, min(nsplit, n_items))
    tc_shift = cfg.tc_shift if cfg.tc_shift is not None else (dtype != "fp32" and not interpret)
    tc_shift = bool(tc_shift and blk_w)
    dot = tl.float32 if interpret else _DOT[dtype]
    # the interpreter multiplies in fp32 whatever the precision: with 'tf32x3' it runs the split
    # arithmetic (_mma) and the run-time chunk loops, but it never rounds to TF32
    prec = "ieee" if dtype != "fp32" else (precision or "ieee")
    consts = dict(KS=k, L=L, LO=LO, R=R, HAS_S=bool(has_s), DOT=dot, PREC=prec, BH=BH, BW=BW, KH=KH, KW=KW,
                  SH=SH, SW=SW, BLK_H=blk_h, BLK_W=blk_w, VEC=vec, TC_SHIFT=tc_shift)
    ints = {"B": B, "C": C, "H": H, "W": W, "NSPLIT": nsplit}
    wdt = weight_dtype or dtype
    s = _BYTES[dtype]
    n = B * C * H * W
    info = {"parts": parts, "items": n_items, "nsplit": nsplit}
    # the weight gradient's stencil holds k [BH, BW] accumulators: by default exact fp32 only (the TF32
    # forms' 4-warp tiles of 64 would spill) in tiles of 32 or more (in tiles of 16 the compiler unrolls
    # its small loop by 4 with a remainder loop, which the kernel report's loop model cannot follow)
    direct_s = bool(dtype == "fp32" and (cfg.direct_s if cfg.direct_s is not None
                                         else (pass_name != "grad_weight" or (prec == "ieee" and BH * BW >= 1024))))
    if pass_name == "grad_weight":
        t_all = 2 * k * L + k * k
        consts.update(GATHER=HAS_GATHER, UPL=triton.next_power_of_2(L), UPS=triton.next_power_of_2(k),
                      DIRECT_S=direct_s)
        ptrs = {"x_ptr": dtype, "gh_ptr": dtype, "gv_ptr": dtype, "gs_ptr": dtype, "part_ptr": "fp32"}
        branches = 3 if has_s else 2  # one code path (and loop) per branch; k programs per branch
        loops = tuple(LoopModel(1, n_items / (nsplit * branches)) for _ in range(branches))
        return Launch("tc_dw", _cross_tc_dw_kernel, pass_name, cfg.label, ptrs, ints, consts, cfg.num_warps,
                      cfg.num_stages, C * parts * nsplit, loops, 1.0 / branches,
                      4 * s * n + 2 * nsplit * C * t_all * 4, info)
    # phased: fp32 outputs only (a 16-bit output would round between the phases)
    phased = bool((cfg.phased if cfg.phased is not None else dtype == "fp32") and dtype == "fp32"
                  and pass_name != "forward")
    # fp32 operands: windows in chunks of 16 with the bands built when used (resident fp32 bands and
    # whole-window FMA dots spill), of 8 when that skips more of a block tile's padding (one plane per
    # tile row or column, e.g. 56 of 64: 7 chunks of 8 instead of 4 of 16); 16-bit: resident bands (kc 0)
    pad8 = any(blk and p == 1 and -(-e // 8) < 2 * -(-e // 16) for blk, p, e in ((blk_w, PW, W), (blk_h, PH, H)))
    kc = cfg.kc if cfg.kc is not None else ((8 if pad8 else 16) if dtype == "fp32" else 0)
    kcr = lambda v: -(-v // max(kc, 1)) * max(kc, 1)  # noqa: E731  (rounded up to whole chunks)
    # block mode: the window is the tile; one plane per tile row / column: only the chunks reaching it
    kwc = (kcr(W) if PW == 1 else BW) if blk_w else kcr(BW + (woff - woff // vec * vec) + L - 1)
    khc = (kcr(H) if PH == 1 else BH) if blk_h else kcr(BH + L - 1)
    kloop = bool(kc and (cfg.kloop if cfg.kloop is not None else prec in ("tf32", "tf32x3")))
    consts.update(MODE=_MODE[pass_name], PHASED=phased, KC=kc, KWC=kwc, KHC=khc, KLOOP=kloop, DIRECT_S=direct_s)
    ptrs = {"src_h": dtype, "src_v": dtype, "src_s": dtype, "wh_ptr": wdt, "wv_ptr": wdt, "ws_ptr": wdt,
            "o_h": dtype, "o_v": dtype, "o_s": dtype}
    traffic = (2 if pass_name == "forward_sum" else 4) * s * n
    # chunks in run-time loops (kloop): inside each item loop, one loop over the window's chunks per tap
    # (k of them per branch); chunk counts per branch kind: horizontal (and centre) kwc / kc, vertical khc / kc
    n_h, n_v = (kwc // kc, khc // kc) if kloop else (0, 0)
    chunks_h, chunks_v = [n_h] * k if n_h else [], [n_v] * k if n_v else []
    # the centre's own products: the stencil's run-time loop over its k rows (first in the item), or chunks
    centre = [k] if direct_s else chunks_h

    def item_loop(trips, inner):
        return (LoopModel(1, trips), *(LoopModel(2, c, may_vanish=c <= 1) for c in inner))

    if pass_name == "forward":  # part 1 (vertical), part 0 (horizontal), part 2 (centre), in source order
        t = n_items / (nsplit * parts)
        loops = item_loop(t, chunks_v) + item_loop(t, chunks_h) + (item_loop(t, centre) if has_s else ())
    elif phased:  # every phase after the first reads the output back and writes it again
        n_phases = 3 if (pass_name == "grad_input" and has_s) else 2
        traffic += 2 * (n_phases - 1) * s * n
        t = n_items / nsplit
        loops = item_loop(t, chunks_h) + (item_loop(t, centre) if n_phases == 3 else ()) + item_loop(t, chunks_v)
    elif pass_name == "grad_input" and has_s:
        loops = item_loop(n_items / nsplit, (centre + chunks_h if direct_s else chunks_h + centre) + chunks_v)
    else:
        loops = item_loop(n_items / nsplit, chunks_h + chunks_v)
    name = {"forward": "tc_fwd", "forward_sum": "tc_fwd_sum", "grad_input": "tc_dx"}[pass_name]
    return Launch(name, _cross_tc_kernel, pass_name, cfg.label, ptrs, ints, consts, cfg.num_warps, cfg.num_stages,
                  C * parts * nsplit, loops, 1.0 / parts, traffic, info)
