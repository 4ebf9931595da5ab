"""The exact shift-wise operator: tables (spec sections 3 and 8), literal reference vs the fast
PyTorch path (outputs and gradients), gradcheck, dense equivalence."""

from __future__ import annotations

import functools
import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from swtasks.ops import (
    build_cross_kernels,
    cross_to_dense,
    ghost_split,
    reference_draws,
    rep_channel_count,
    shiftwise_conv,
    shiftwise_reference,
    shiftwise_tables,
    slot_offsets,
    slots_from_perm,
)


def _reference_procedure(C, K, k, ghost_ratio, n_rep):
    """The reference's own procedure with GLOBAL seeding (spec section 3), sandboxed so the test
    itself leaves the global RNG states as it found them."""
    R = int(C * (1 - ghost_ratio)) // 2 * 2
    nk = math.ceil(K / k)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(123)
        perm_h = [torch.cat([torch.randperm(nk) + c * nk for c in range(R)]) for _ in range(n_rep)]
        perm_v = [torch.cat([torch.randperm(nk) + c * nk for c in range(R)]) for _ in range(n_rep)]
        ident = [torch.randint(0, nk, [R]) + torch.arange(R) * nk for _ in range(n_rep)]
    np_state = np.random.get_state()
    try:
        np.random.seed(123)
        ghost = sorted(np.random.choice(C, C - R, replace=False))
    finally:
        np.random.set_state(np_state)
    rep = sorted(set(range(C)) - set(int(g) for g in ghost))
    rho = [K // 2 - i * k - (k - 1) for i in range(nk)]
    # pad_h[pc, g] = rho[argsort(perm_h[g])[pc] mod nk]
    pad_h = torch.stack([torch.tensor(rho)[torch.argsort(p) % nk] for p in perm_h], dim=1)
    pad_v = torch.stack([torch.tensor(rho)[torch.argsort(p) % nk] for p in perm_v], dim=1)
    return rep, [int(g) for g in ghost], pad_h, pad_v, torch.stack(ident)


# ---------------------------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("C,K,k,g,n_rep", [(80, 51, 3, 0.23, 4), (13, 13, 3, 0.3, 2), (8, 7, 5, 0.0, 3)])
def test_tables_equal_global_seed_procedure(C, K, k, g, n_rep):
    rep, ghost, pad_h, pad_v, ident = _reference_procedure(C, K, k, g, n_rep)
    t = shiftwise_tables(C, K, k, g, n_rep)
    rho = slot_offsets(K, k)
    assert t.rep_idx.tolist() == rep and t.ghost_idx.tolist() == ghost
    assert torch.equal(rho[t.slot_h].T, pad_h)
    assert torch.equal(rho[t.slot_v].T, pad_v)
    assert torch.equal(t.ident, ident)


def test_table_generation_leaves_global_rng_alone():
    torch.manual_seed(7)
    np.random.seed(7)
    t_state, n_state = torch.random.get_rng_state(), np.random.get_state()
    shiftwise_tables(40, 13, 3, 0.23, 4)
    assert torch.equal(torch.random.get_rng_state(), t_state)
    after = np.random.get_state()
    assert after[0] == n_state[0] and np.array_equal(after[1], n_state[1]) and after[2:] == n_state[2:]


def test_spec_section8_numbers():
    # K=51, k=3: nk=17, slot offsets rho_i + e = 24, 21, ..., -24
    assert (slot_offsets(51, 3) + 1).tolist() == list(range(24, -25, -3))
    assert slot_offsets(13, 5).tolist() == [6 - 4, 6 - 5 - 4, 6 - 10 - 4]
    # tiny model stage 1
    t = shiftwise_tables(80, 51, 3, 0.23, 4)
    assert rep_channel_count(80, 0.23) == 60
    assert t.rep_idx.numel() == 60 and t.ghost_idx.numel() == 20
    assert t.slot_h.shape == t.slot_v.shape == (4, 1020) and t.ident.shape == (4, 60)


@pytest.mark.parametrize("C,K,k,n_rep", [(80, 51, 3, 4), (20, 49, 5, 3), (10, 13, 3, 1)])
def test_tables_are_bijections(C, K, k, n_rep):
    t = shiftwise_tables(C, K, k, 0.23, n_rep)
    R, nk = t.rep_idx.numel(), math.ceil(K / k)
    assert torch.equal(torch.sort(torch.cat([t.rep_idx, t.ghost_idx])).values, torch.arange(C))
    assert torch.equal(t.rep_idx, t.rep_idx.sort().values) and torch.equal(
        t.ghost_idx, t.ghost_idx.sort().values
    )
    for slot in (t.slot_h, t.slot_v):
        blocks = slot.view(n_rep, R, nk).sort(dim=-1).values
        assert torch.equal(blocks, torch.arange(nk).expand(n_rep, R, nk))
    owner = t.ident // nk
    assert torch.equal(owner, torch.arange(R).expand(n_rep, R))


def test_helpers_consistent():
    perm_h, perm_v, ident = reference_draws(5, 4, 2)
    assert perm_h.shape == perm_v.shape == (2, 20) and ident.shape == (2, 5)
    slot = slots_from_perm(perm_h, 4)
    # perm places kernel perm[g, c*nk+i] at slot i
    pos = torch.arange(20) % 4
    for g in range(2):
        assert torch.equal(slot[g, perm_h[g]], pos)
    rep, ghost = ghost_split(10, 6)
    assert rep.numel() == 6 and ghost.numel() == 4


@pytest.mark.parametrize("K,k,lo,hi", [(51, 3, -25, 25), (49, 3, -24, 26), (47, 3, -23, 24), (13, 3, -6, 8)])
def test_spec_section8_taps_literal(K, k, lo, hi):
    """Taps spanned by the LITERAL path (impulse response), as listed in spec section 8."""
    R, nk = 2, math.ceil(K / k)
    t = shiftwise_tables(R, K, k, 0.0, 1)
    S = 2 * K + 3
    c0 = S // 2
    x = torch.zeros(1, R, S, S, dtype=torch.float64)
    x[:, :, c0, c0] = 1.0
    w = torch.ones(R * nk, k, k, dtype=torch.float64)
    o_h, o_v, _ = shiftwise_reference(x, w, t.slot_h, t.slot_v, t.ident, big_kernel=K)
    # output (h, w) reads x(h + dy, w + dx): the impulse at c0 shows up at w = c0 - dx
    cols = torch.nonzero(o_h[0, 0, c0] != 0).flatten()
    rows = torch.nonzero(o_v[0, 0, :, c0] != 0).flatten()
    assert (c0 - cols.max().item(), c0 - cols.min().item()) == (lo, hi)
    assert (c0 - rows.max().item(), c0 - rows.min().item()) == (lo, hi)
    assert cols.numel() == hi - lo + 1  # no holes along the strip


# ---------------------------------------------------------------------------------------------
# literal reference == fast path
# ---------------------------------------------------------------------------------------------


def _sample_cases(n, seed=2024):
    rnd = random.Random(seed)
    cases = []
    for i in range(n):
        K = rnd.choice([7, 13, 47, 49, 51])
        k = rnd.choice([3, 5])
        n_rep = rnd.randint(1, 4)
        g = round(rnd.uniform(0.0, 0.5), 2)
        C = rnd.randint(4, 8)
        kind = ["odd", "even", "small"][i % 3]
        if kind == "small":  # smaller than the kernel
            H, W = rnd.randint(1, max(1, K - 1)), rnd.randint(1, max(1, K - 1))
            H, W = min(H, 24), min(W, 24)
        else:
            lo_hw = 5 if kind == "odd" else 4
            H, W = rnd.randrange(lo_hw, 24, 2), rnd.randrange(lo_hw, 24, 2)
        B = rnd.randint(1, 2)
        n_path = rnd.randint(1, 2)
        cases.append((K, k, n_rep, g, C, H, W, B, n_path))
    return cases


@pytest.mark.parametrize("K,k,n_rep,g,C,H,W,B,n_path", _sample_cases(18))
def test_reference_equals_fast_and_triton_paths_fwd_bwd(K, k, n_rep, g, C, H, W, B, n_path):
    t = shiftwise_tables(C, K, k, g, n_rep)
    R, nk = t.rep_idx.numel(), math.ceil(K / k)
    gen = torch.Generator().manual_seed(K * 1000 + H * 10 + W)
    x = torch.randn(B, C, H, W, generator=gen, dtype=torch.float64)
    x_r = x[:, t.rep_idx]
    w = torch.randn(n_path, R * nk, k, k, generator=gen, dtype=torch.float64)
    grads_out = [torch.randn(B, R, H, W, generator=gen, dtype=torch.float64) for _ in range(3)]

    def run(fn):
        xr = x_r.clone().requires_grad_(True)
        ww = w.clone().requires_grad_(True)
        outs = fn(xr, ww, t.slot_h, t.slot_v, t.ident, big_kernel=K)
        loss = sum((o * go).sum() for o, go in zip(outs, grads_out))
        loss.backward()
        return [o.detach() for o in outs], xr.grad, ww.grad

    (ref, ref_dx, ref_dw) = run(shiftwise_reference)
    # the fast PyTorch path and the Triton kernels (interpreted on CPU, fp64: the direct kernels)
    from swtasks.ops.triton_cross import LAUNCHES

    for backend in ("torch", "triton"):
        before = sum(LAUNCHES.values())
        fast, fast_dx, fast_dw = run(functools.partial(shiftwise_conv, backend=backend))
        ran = sum(LAUNCHES.values()) - before
        assert ran >= (3 if backend == "triton" else 0) and (backend == "triton" or ran == 0), (backend, ran)
        for name, got, want in [("out", f, r) for f, r in zip(fast, ref)] + [
            ("grad x", fast_dx, ref_dx),
            ("grad w", fast_dw, ref_dw),
        ]:
            assert got.shape == want.shape, (backend, name)
            err = (got - want).abs().max().item()
            assert err <= 1e-10 * (1 + want.abs().max().item()), f"{backend} {name}: max abs error {err}"

    # the dense equivalent (spec section 5): one plain depthwise conv gives O_h + O_v + O_s
    w_h, w_v, w_s = build_cross_kernels(w.sum(0), t.slot_h, t.slot_v, t.ident, nk)
    dense = cross_to_dense(w_h, w_v, w_s, K)
    out = F.conv2d(x_r, dense, padding=dense.shape[-1] // 2, groups=R)
    torch.testing.assert_close(out, ref[0] + ref[1] + ref[2], rtol=1e-10, atol=1e-10)


def test_fast_path_float32_and_reduce():
    K, k, C = 13, 3, 6
    t = shiftwise_tables(C, K, k, 0.0, 4)
    nk = math.ceil(K / k)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, C, 11, 10, generator=gen)
    w = torch.randn(2, C * nk, k, k, generator=gen)
    ref = shiftwise_reference(x, w, t.slot_h, t.slot_v, t.ident, big_kernel=K)
    fast = shiftwise_conv(x, w, t.slot_h, t.slot_v, t.ident, big_kernel=K, backend="torch")
    for a, b in zip(ref, fast):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    red = shiftwise_conv(x, w, t.slot_h, t.slot_v, t.ident, big_kernel=K, reduce=True, backend="torch")
    torch.testing.assert_close(red, sum(ref), rtol=1e-5, atol=1e-5)


def test_build_cross_kernels_placement():
    """Kernel c*nk+j lands in columns [i*k, (i+1)*k) of w_h when slot_h says i (explicit check)."""
    R, nk, k, n_rep = 2, 3, 3, 2
    t = shiftwise_tables(R, 7, k, 0.0, n_rep)
    w = torch.randn(R * nk, k, k, dtype=torch.float64)
    w_h, w_v, w_s = build_cross_kernels(w, t.slot_h, t.slot_v, t.ident, nk)
    exp_h = torch.zeros(R, k, nk * k, dtype=torch.float64)
    exp_v = torch.zeros(R, nk * k, k, dtype=torch.float64)
    exp_s = torch.zeros(R, k, k, dtype=torch.float64)
    for g in range(n_rep):
        for pc in range(R * nk):
            c = pc // nk
            i = int(t.slot_h[g, pc])
            exp_h[c, :, i * k : (i + 1) * k] += w[pc]
            i = int(t.slot_v[g, pc])
            exp_v[c, i * k : (i + 1) * k, :] += w[pc]
        for c in range(R):
            exp_s[c] += w[t.ident[g, c]]
    assert torch.equal(w_h, exp_h) and torch.equal(w_v, exp_v) and torch.equal(w_s, exp_s)


@pytest.mark.parametrize("fn", ["reference", "fast"])
def test_gradcheck_float64(fn):
    K, k, n_rep = 7, 3, 2
    t = shiftwise_tables(2, K, k, 0.0, n_rep)
    nk = math.ceil(K / k)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 2, 5, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(1, 2 * nk, k, k, generator=gen, dtype=torch.float64, requires_grad=True)
    if fn == "reference":
        # the literal path is slow: random-projection gradcheck (its full Jacobian is compared with the
        # fast path's in test_reference_equals_fast_path_fwd_bwd)
        f = lambda x, w: shiftwise_reference(x, w, t.slot_h, t.slot_v, t.ident, big_kernel=K)  # noqa: E731
        assert torch.autograd.gradcheck(f, (x, w), eps=1e-6, atol=1e-6, fast_mode=True)
    else:
        f = lambda x, w: shiftwise_conv(x, w, t.slot_h, t.slot_v, t.ident, big_kernel=K, backend="torch")  # noqa: E731
        assert torch.autograd.gradcheck(f, (x, w), eps=1e-6, atol=1e-6)


def test_build_cross_kernels_bad_shapes():
    t = shiftwise_tables(4, 7, 3, 0.0, 2)
    w = torch.randn(4 * 3, 3, 3)
    with pytest.raises(ValueError, match="weight_sum"):
        build_cross_kernels(w[:, :2], t.slot_h, t.slot_v, t.ident, 3)
    with pytest.raises(ValueError, match="slot_h"):
        build_cross_kernels(w, t.slot_h[:, :5], t.slot_v, t.ident, 3)
    with pytest.raises(ValueError, match="ident"):
        build_cross_kernels(w, t.slot_h, t.slot_v, t.ident[:, :1], 3)
