"""The exact shift-wise (SW) operator: index tables, kernel construction, and a literal reference.

Definitions follow the project's operator spec (docs/operator.md, "Definition").
Notation: C channels, R rep channels, K big kernel, k small kernel, nk = ceil(K / k) small kernels
per rep channel, L = k * nk strip length, n_rep slot permutations ("groups").

Tables (generated exactly like the reference implementation, without touching global RNG state):

    rep_idx  (R,)            sorted rep channels;   ghost_idx (C-R,) sorted ghost channels
    slot_h   (n_rep, R*nk)   slot i in [0, nk) of small kernel c*nk+j in the horizontal strip, group g
    slot_v   (n_rep, R*nk)   the same for the vertical strip
    ident    (n_rep, R)      index in [0, R*nk) of the centre-branch kernel of channel c in group g

Slot i of a strip has offset rho_i = K//2 - i*k - (k-1) (`slot_offsets`); kernel c*nk+j placed at
slot i covers strip columns [i*k, (i+1)*k) of the equivalent k x L strip kernel.

Public functions:

    rep_channel_count(channels, ghost_ratio) -> R
    slot_offsets(kernel_size, small_kernel) -> rho (nk,) long
    ghost_split(channels, rep_channels, seed=123) -> (rep_idx, ghost_idx)
    reference_draws(rep_channels, n_small, n_rep, seed=123) -> (perm_h, perm_v, ident)
    slots_from_perm(perm, n_small) -> slot (n_rep, R*nk)
    shiftwise_tables(channels, kernel_size, small_kernel, ghost_ratio, n_rep) -> ShiftwiseTables
    build_cross_kernels(weight_sum, slot_h, slot_v, ident, n_small) -> (w_h, w_v, w_s)
    cross_to_dense(w_h, w_v, w_s, big_kernel) -> (C, 1, Kd, Kd) dense depthwise kernel
    shiftwise_reference(x_r, weight, slot_h, slot_v, ident, *, big_kernel) -> (O_h, O_v, O_s)
    shiftwise_conv(x_r, weight, slot_h, slot_v, ident, *, big_kernel, reduce=False, backend=None, ...)
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from .cross_conv import cross_conv
from .cross_torch import autocast_input

REFERENCE_SEED = 123

__all__ = [
    "REFERENCE_SEED",
    "ShiftwiseTables",
    "build_cross_kernels",
    "cross_to_dense",
    "ghost_split",
    "reference_draws",
    "rep_channel_count",
    "shiftwise_conv",
    "shiftwise_reference",
    "shiftwise_tables",
    "slot_offsets",
    "slots_from_perm",
]


# ----------------------------------------------------------------------------------------------
# tables
# ----------------------------------------------------------------------------------------------


def rep_channel_count(channels: int, ghost_ratio: float) -> int:
    """R = int(C * (1 - ghost_ratio)) // 2 * 2, the reference's expression (float rounding included)."""
    return int(channels * (1 - ghost_ratio)) // 2 * 2


def slot_offsets(kernel_size: int, small_kernel: int) -> torch.Tensor:
    """rho_i = K//2 - i*k - (k-1) for i in [0, nk): the shift (`pad`) of slot i in the reference."""
    nk = math.ceil(kernel_size / small_kernel)
    i = torch.arange(nk, dtype=torch.long)
    return kernel_size // 2 - i * small_kernel - (small_kernel - 1)


def ghost_split(
    channels: int, rep_channels: int, seed: int = REFERENCE_SEED
) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's ghost/rep split, `np.random.seed(seed); np.random.choice(C, C-R, replace=False)`,
    drawn from a private legacy RandomState (same stream), so numpy's global state is left alone."""
    rs = np.random.RandomState(seed)
    ghost = np.sort(rs.choice(channels, channels - rep_channels, replace=False))
    is_ghost = np.zeros(channels, dtype=bool)
    is_ghost[ghost] = True
    rep = np.nonzero(~is_ghost)[0]
    return torch.as_tensor(rep, dtype=torch.long), torch.as_tensor(ghost, dtype=torch.long)


def reference_draws(
    rep_channels: int, n_small: int, n_rep: int, seed: int = REFERENCE_SEED
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The reference's torch draws, in its order, from a private CPU generator seeded like
    `torch.manual_seed(seed)` (same stream; the global generator is not touched).

    Returns perm_h, perm_v (n_rep, R*nk) and ident (n_rep, R), all long:
      1. for g: perm_h[g] = cat_c(randperm(nk) + c*nk)
      2. for g: perm_v[g] likewise
      3. for g: ident[g] = randint(0, nk, [R]) + arange(R) * nk
    """
    gen = torch.Generator(device="cpu")
    gen.manual_seed(seed)
    R, nk = rep_channels, n_small

    def perms() -> torch.Tensor:
        rows = []
        for _ in range(n_rep):
            blocks = [torch.randperm(nk, generator=gen) + c * nk for c in range(R)]
            rows.append(torch.cat(blocks) if blocks else torch.zeros(0, dtype=torch.long))
        return torch.stack(rows) if rows else torch.zeros(0, R * nk, dtype=torch.long)

    perm_h = perms()
    perm_v = perms()
    base = torch.arange(R, dtype=torch.long) * nk
    ident = [torch.randint(0, nk, (R,), generator=gen) + base for _ in range(n_rep)]
    ident_t = torch.stack(ident) if ident else torch.zeros(0, R, dtype=torch.long)
    return perm_h, perm_v, ident_t


def slots_from_perm(perm: torch.Tensor, n_small: int) -> torch.Tensor:
    """slot[g, pc] = argsort(perm[g])[pc] mod nk: the slot at which perm[g] places kernel pc."""
    return torch.argsort(perm, dim=-1) % n_small


class ShiftwiseTables(NamedTuple):
    rep_idx: torch.Tensor  # (R,) long, sorted
    ghost_idx: torch.Tensor  # (C-R,) long, sorted
    slot_h: torch.Tensor  # (n_rep, R*nk) long in [0, nk)
    slot_v: torch.Tensor  # (n_rep, R*nk) long in [0, nk)
    ident: torch.Tensor  # (n_rep, R) long in [0, R*nk)


def shiftwise_tables(
    channels: int,
    kernel_size: int,
    small_kernel: int,
    ghost_ratio: float,
    n_rep: int,
    seed: int = REFERENCE_SEED,
) -> ShiftwiseTables:
    """All fixed tables of one operator, exactly as the reference generates them (docs/operator.md, "Definition": index tables)."""
    R = rep_channel_count(channels, ghost_ratio)
    nk = math.ceil(kernel_size / small_kernel)
    rep_idx, ghost_idx = ghost_split(channels, R, seed)
    perm_h, perm_v, ident = reference_draws(R, nk, n_rep, seed)
    return ShiftwiseTables(
        rep_idx, ghost_idx, slots_from_perm(perm_h, nk), slots_from_perm(perm_v, nk), ident
    )


# ----------------------------------------------------------------------------------------------
# kernels
# ----------------------------------------------------------------------------------------------


def _slot_sources(slot: torch.Tensor, n_small: int) -> torch.Tensor:
    """src[g, c*nk + i] = the kernel pc of channel c that group g places at slot i (inverse map)."""
    n_rep, RN = slot.shape
    pc = torch.arange(RN, device=slot.device, dtype=torch.long)
    target = (pc - pc % n_small) + slot  # c*nk + slot
    src = torch.empty_like(slot)
    src.scatter_(1, target, pc.expand(n_rep, RN))
    return src


def build_cross_kernels(
    weight_sum: torch.Tensor, slot_h: torch.Tensor, slot_v: torch.Tensor, ident: torch.Tensor, n_small: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cross kernels of the operator from its shared small kernels (docs/operator.md, "Definition": dense form).

    weight_sum: (R*nk, k, k), the sum over paths (and masks) of the small kernels.
    Returns w_h (R, k, L), w_v (R, L, k), w_s (R, k, k), with
      w_h[c][:, i*k:(i+1)*k] = sum_{g, j: slot_h[g, c*nk+j] = i} W[c*nk+j]
      w_v[c][i*k:(i+1)*k, :] = sum_{g, j: slot_v[g, c*nk+j] = i} W[c*nk+j]
      w_s[c]                 = sum_g W[ident[g, c]]
    Built with one gather by (per-group bijective) index and a sum over groups, so autograd returns dW
    (one scatter-add), and forward and backward are deterministic on every device.
    """
    if weight_sum.dim() != 3 or weight_sum.shape[1] != weight_sum.shape[2]:
        raise ValueError(f"weight_sum must have shape (R*nk, k, k), got {tuple(weight_sum.shape)}")
    RN, k, _ = weight_sum.shape
    if RN % n_small:
        raise ValueError(f"weight_sum has {RN} kernels, not a multiple of n_small={n_small}")
    R = RN // n_small
    for name, slot in (("slot_h", slot_h), ("slot_v", slot_v)):
        if slot.dim() != 2 or slot.shape[1] != RN:
            raise ValueError(f"{name} must have shape (n_rep, {RN}), got {tuple(slot.shape)}")
    if ident.dim() != 2 or ident.shape[1] != R:
        raise ValueError(f"ident must have shape (n_rep, {R}), got {tuple(ident.shape)}")

    src_h = _slot_sources(slot_h.to(weight_sum.device), n_small)
    src_v = _slot_sources(slot_v.to(weight_sum.device), n_small)
    ident = ident.to(weight_sum.device)
    # one gather for every group of the three branches (one scatter in the backward), then a sum over groups
    taken = weight_sum.index_select(0, torch.cat([src_h.reshape(-1), src_v.reshape(-1), ident.reshape(-1)]))
    tables = (src_h, src_v, ident)
    acc_h, acc_v, w_s = (part.view(*t.shape, k, k).sum(0)
                         for part, t in zip(taken.split([t.numel() for t in tables]), tables))
    # acc[c*nk + i] is the k x k block at slot i of channel c.
    w_h = acc_h.view(R, n_small, k, k).permute(0, 2, 1, 3).reshape(R, k, n_small * k)
    w_v = acc_v.reshape(R, n_small * k, k)
    return w_h, w_v, w_s


def cross_to_dense(
    w_h: torch.Tensor, w_v: torch.Tensor, w_s: torch.Tensor | None, big_kernel: int
) -> torch.Tensor:
    """The equivalent dense depthwise kernel (C, 1, Kd, Kd), Kd = 2*(L-1-K//2) + 1 (odd, centred), so
    that `F.conv2d(x, dense, padding=Kd//2, groups=C)` equals the sum of the three cross branches.
    Off-centre strips (K not a multiple of k) leave zero taps on the short side. Differentiable."""
    C, k, L = w_h.shape
    lo = big_kernel // 2
    hi = L - 1 - lo
    r = k // 2
    Kd = 2 * hi + 1
    a = hi - lo  # column (row) of strip tap 0 in the dense kernel
    dense = F.pad(w_h, (a, Kd - a - L, hi - r, hi - r))
    dense = dense + F.pad(w_v, (hi - r, hi - r, a, Kd - a - L))
    if w_s is not None:
        dense = dense + F.pad(w_s, (hi - r, hi - r, hi - r, hi - r))
    return dense.unsqueeze(1)


# ----------------------------------------------------------------------------------------------
# operator paths
# ----------------------------------------------------------------------------------------------


def _as_paths(weight: torch.Tensor) -> torch.Tensor:
    if weight.dim() == 3:
        return weight.unsqueeze(0)
    if weight.dim() == 4:
        return weight
    raise ValueError(f"weight must be (R*nk, k, k) or (n_path, R*nk, k, k), got {tuple(weight.shape)}")


def shiftwise_reference(
    x_r: torch.Tensor,
    weight: torch.Tensor,
    slot_h: torch.Tensor,
    slot_v: torch.Tensor,
    ident: torch.Tensor,
    *,
    big_kernel: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The literal operator of docs/operator.md, "Definition", forward steps 2-3 (slow; exists to test the fast paths).

    x_r: (B, R, H, W) rep channels; weight: (n_path, R*nk, k, k) or (R*nk, k, k).
    Y = sum_p conv2d(x_r, W_p, groups=R, padding=k-1) (B, R*nk, H+2e, W+2e), then
      O_h[b,c,h,w] = sum_g sum_j Y[b, c*nk+j, h+e, w - pad_h[c*nk+j, g]]
      O_v[b,c,h,w] = sum_g sum_j Y[b, c*nk+j, h - pad_v[c*nk+j, g], w+e]
      O_s[b,c,h,w] = sum_g Y[b, ident[g][c], h+e, w+e]
    with pad = rho[slot] and Y read as 0 outside its range. Returns (O_h, O_v, O_s), each (B, R, H, W).
    """
    W_p = _as_paths(weight)
    n_path, RN, k, _ = W_p.shape
    B, R, H, W = x_r.shape
    if R == 0 or RN % R:
        raise ValueError(f"weight has {RN} small kernels, not a positive multiple of R={R} rep channels")
    nk = RN // R
    e = (k - 1) - k // 2
    dev = x_r.device

    # step 2: the small "full" convolutions, Y has nk times the channels of x_r
    Y = None
    for p in range(n_path):
        y = F.conv2d(x_r, W_p[p].unsqueeze(1).to(x_r.dtype), padding=k - 1, groups=R)
        Y = y if Y is None else Y + y
    Hy, Wy = H + 2 * e, W + 2 * e
    assert Y.shape[-2:] == (Hy, Wy)

    # step 3: the shift-add, reading the shifts from the tables
    rho = slot_offsets(big_kernel, k).to(dev)
    if rho.numel() != nk:
        raise ValueError(f"big_kernel={big_kernel} with k={k} gives {rho.numel()} slots, weight implies {nk}")
    pad_h = rho[slot_h.to(dev)]  # (n_rep, R*nk)
    pad_v = rho[slot_v.to(dev)]
    rows_h = Y[:, :, e : e + H, :]  # Y[b, pc, h+e, :]   (B, RN, H, Wy)
    cols_v = Y[:, :, :, e : e + W]  # Y[b, pc, :, w+e]   (B, RN, Hy, W)
    w_pos = torch.arange(W, device=dev)
    h_pos = torch.arange(H, device=dev)

    O_h = x_r.new_zeros(B, R, H, W)
    for g in range(pad_h.shape[0]):
        col = w_pos[None, :] - pad_h[g][:, None]  # (RN, W): column of Y read by output column w
        valid = ((col >= 0) & (col < Wy)).to(Y.dtype)
        idx = col.clamp(0, Wy - 1)[None, :, None, :].expand(B, RN, H, W)
        t = torch.gather(rows_h, 3, idx) * valid[None, :, None, :]
        O_h = O_h + t.view(B, R, nk, H, W).sum(2)

    O_v = x_r.new_zeros(B, R, H, W)
    for g in range(pad_v.shape[0]):
        row = h_pos[None, :] - pad_v[g][:, None]  # (RN, H)
        valid = ((row >= 0) & (row < Hy)).to(Y.dtype)
        idx = row.clamp(0, Hy - 1)[None, :, :, None].expand(B, RN, H, W)
        t = torch.gather(cols_v, 2, idx) * valid[None, :, :, None]
        O_v = O_v + t.view(B, R, nk, H, W).sum(2)

    O_s = x_r.new_zeros(B, R, H, W)
    centre = Y[:, :, e : e + H, e : e + W]
    for g in range(ident.shape[0]):
        O_s = O_s + centre[:, ident[g].to(dev)]
    return O_h, O_v, O_s


def shiftwise_conv(
    x_r: torch.Tensor,
    weight: torch.Tensor,
    slot_h: torch.Tensor,
    slot_v: torch.Tensor,
    ident: torch.Tensor,
    *,
    big_kernel: int,
    reduce: bool = False,
    backend: str | None = None,
    variant: str | None = None,
    dot_precision: str | None = None,
    deterministic: bool | None = None,
):
    """The fast operator: build the cross kernels from the shared small kernels (summed over paths
    when weight is (n_path, R*nk, k, k)) and run `cross_conv` (dispatching to torch or Triton; the
    Triton switches variant / dot_precision / deterministic are passed through).
    Returns (O_h, O_v, O_s), or their sum with reduce=True; same contract as `shiftwise_reference`."""
    W_p = _as_paths(weight)
    R = x_r.shape[1] if x_r.dim() == 4 else -1
    RN = W_p.shape[1]
    if R <= 0 or RN % R:
        raise ValueError(f"weight has {RN} small kernels, not a positive multiple of R={R} rep channels")
    nk = RN // R
    w_sum = W_p.sum(0) if W_p.shape[0] > 1 else W_p[0]
    w_h, w_v, w_s = build_cross_kernels(w_sum, slot_h, slot_v, ident, nk)
    # under autocast both backends get 16-bit x (the kernels are built in fp32 and cast with it)
    return cross_conv(autocast_input(x_r), w_h, w_v, w_s, big_kernel=big_kernel, reduce=reduce, backend=backend,
                      variant=variant, dot_precision=dot_precision, deterministic=deterministic)
