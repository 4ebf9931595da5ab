"""The Triton cross convolution (both kernel families and the custom-op packaging) against an oracle.

Oracle: tests/cross_oracle.py (dense float64 F.conv2d with the cross kernel placed tap by tap from the
contract), never the code paths under test. Every Triton leg asserts that Triton kernels really
launched (`triton_cross.LAUNCHES`). Without a GPU the kernels run under the Triton interpreter on CPU
tensors (conftest.py sets TRITON_INTERPRET=1 first); shapes are tiny and tiles are forced small so that
several tiles per plane, several packed images per tile, several tap chunks and several row splits
run - what otherwise happens only on a GPU. With a GPU the same tests run compiled kernels, and the
`gpu` tests add the SW-T stage shapes (every pass, ieee and tf32x3 dots, bf16 gradients), bf16 outputs within
one rounding, determinism at scale and across processes: they are the GPU checks of the operator
(scripts/gpu_checks.sh runs them).

Tolerances (max abs error relative to max(1, max |oracle|)): fp32 1e-5 at the small shapes, GPU_TOL = 2e-5 at
the stage shapes (sums of up to 50,000 terms); fp16 2e-3; bf16 2e-2 under the interpreter (its fp32->bf16 store
truncates), 3e-2 for bf16 gradients at the stage shapes, and elementwise one bf16 ulp (+1e-3 of the scale) for
bf16 outputs on a GPU.
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cross_oracle import assert_close, oracle

from swtasks.models.shiftwise_net import operator_shapes
from swtasks.ops.cross_conv import check_cross_args, cross_conv, cross_conv_torch

if sys.platform.startswith("linux"):  # triton is a dependency there (pyproject.toml): missing = broken install
    try:
        import triton  # noqa: F401

        import swtasks.ops.triton_cross as tc
    except ImportError as e:
        pytest.fail(f"Triton tests cannot run on Linux: {e} (pip install 'triton>=3.0')", pytrace=False)
else:
    triton = pytest.importorskip("triton")
    tc = pytest.importorskip("swtasks.ops.triton_cross")
from swtasks.ops.triton_direct import DirectConfig  # noqa: E402
from swtasks.ops.triton_tc import TileConfig  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and not tc.INTERPRET:
    pytest.fail(  # a misconfiguration, not a reason to skip the Triton tests silently
        "no CUDA device and the Triton interpreter is off (TRITON_INTERPRET=1 must be set before "
        "swtasks.ops.triton_cross is imported; tests/conftest.py does this)",
        pytrace=False,
    )
VARIANTS = ["tc", "direct"]
ROOT = Path(__file__).resolve().parents[1]


def strip_len(K: int, k: int) -> int:
    return k * -(-K // k)


def make(B, C, H, W, K, k, *, dtype=torch.float32, w_dtype=None, centre=True, seed=0, grad=True):
    g = torch.Generator().manual_seed(seed)
    L = strip_len(K, k)
    w_dtype = w_dtype or dtype

    def rnd(*shape, dt):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dt).to(DEVICE).requires_grad_(grad)

    x = rnd(B, C, H, W, dt=dtype)
    w_h = rnd(C, k, L, dt=w_dtype)
    w_v = rnd(C, L, k, dt=w_dtype)
    w_s = rnd(C, k, k, dt=w_dtype) if centre else None
    return x, w_h, w_v, w_s


def leaves(x, w_h, w_v, w_s):
    return [t for t in (x, w_h, w_v, w_s) if t is not None]


def upstream(outs, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.device) for o in outs]


def run(fn, x, w_h, w_v, w_s, *, K, reduce=False, upstream_seed=1):
    """Outputs and gradients of sum_i <out_i, G_i> for fixed random G_i."""
    outs = fn(x, w_h, w_v, w_s, big_kernel=K, reduce=reduce)
    outs = (outs,) if reduce else tuple(outs)
    ups = upstream(outs, upstream_seed)
    pairs = [(o, u.to(o.dtype)) for o, u in zip(outs, ups) if o.requires_grad]
    grads = torch.autograd.grad([p[0] for p in pairs], leaves(x, w_h, w_v, w_s), [p[1] for p in pairs])
    return [o.detach() for o in outs], list(grads)


def run_oracle(x, w_h, w_v, w_s, *, K, reduce=False, upstream_seed=1):
    xs = [t.detach().double().requires_grad_() for t in leaves(x, w_h, w_v, w_s)]
    w_s_ = xs[3] if w_s is not None else None
    outs = oracle(xs[0], xs[1], xs[2], w_s_, K, reduce=reduce)
    outs = (outs,) if reduce else outs
    ups = upstream(outs, upstream_seed)
    grads = torch.autograd.grad(outs, xs, ups, allow_unused=True)
    return [o.detach() for o in outs], [torch.zeros_like(t) if g is None else g for g, t in zip(grads, xs)]


def triton_fn(variant, dot_precision=None):
    def fn(x, w_h, w_v, w_s=None, *, big_kernel, reduce=False):
        return cross_conv(x, w_h, w_v, w_s, big_kernel=big_kernel, reduce=reduce, backend="triton", variant=variant,
                          dot_precision=dot_precision)

    return fn


class launched:
    """Context manager asserting that Triton kernels whose name starts with `prefix` ran."""

    def __init__(self, prefix, at_least=1):
        self.prefix, self.at_least = prefix, at_least

    def _count(self):
        return sum(n for name, n in tc.LAUNCHES.items() if name.startswith(self.prefix))

    def __enter__(self):
        self.before = self._count()
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            ran = self._count() - self.before
            assert ran >= self.at_least, f"expected >= {self.at_least} launches of {self.prefix}* kernels, got {ran}"


def check_against_oracle(fn, args, K, *, reduce=False, tol=1e-5, grads=True):
    outs_t, grads_t = run(fn, *args, K=K, reduce=reduce)
    outs_r, grads_r = run_oracle(*args, K=K, reduce=reduce)
    for name, a, b in zip(("out_h", "out_v", "out_s"), outs_t, outs_r):
        assert_close(a, b, tol, name)
    if grads:
        for name, a, b in zip(("dx", "dw_h", "dw_v", "dw_s"), grads_t, grads_r):
            assert_close(a, b, tol, name)
    return outs_t, grads_t


# Random shapes: every K of SW-T and 7, both small kernels, H and W odd / even / smaller than K.
def _draw_cases(n=10, seed=2024):
    rng = random.Random(seed)
    Ks = [7, 13, 47, 49, 51]
    cases = []
    for i in range(n):
        K = Ks[i % len(Ks)]
        k = (3, 5)[(i // len(Ks) + i) % 2]
        kind = i % 3  # 0: odd, 1: even, 2: smaller than K (and odd/even mixed)
        if kind == 0:
            H, W = rng.choice([5, 9, 13, 17]), rng.choice([7, 11, 19])
        elif kind == 1:
            H, W = rng.choice([4, 8, 12, 16]), rng.choice([6, 10, 20])
        else:
            H, W = rng.randint(1, min(K - 1, 9)), rng.randint(2, min(K - 1, 12))
        C = rng.randint(1, 3)
        cases.append((1 + i % 2, C, H, W, K, k, i % 4 != 3))  # every 4th without the centre tile
    return cases


CASES = [pytest.param(*c, id=f"B{c[0]}C{c[1]}H{c[2]}W{c[3]}K{c[4]}k{c[5]}{'' if c[6] else '-nocentre'}")
         for c in _draw_cases()]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("B,C,H,W,K,k,centre", CASES)
def test_matches_oracle(B, C, H, W, K, k, centre, variant):
    args = make(B, C, H, W, K, k, centre=centre, seed=K * 100 + H)
    with launched(variant, at_least=3):
        outs, _ = check_against_oracle(triton_fn(variant), args, K)
    if not centre:
        assert torch.count_nonzero(outs[2]) == 0


# Forced small tiles: several tiles per plane (tiled mode), several packed images per tile (block
# mode), mixed, several splits; for the direct kernels several tap chunks and row splits.
FORCED = [
    # B, C, H, W, K, k, tensor-core tile, direct tile (several tap chunks: k * L > BT)
    (1, 2, 37, 21, 13, 3, TileConfig(16, 16, nsplit=2), DirectConfig(16, 8, 16, n_split=3)),
    (5, 2, 7, 5, 13, 3, TileConfig(16, 16, nsplit=2), None),
    (3, 1, 6, 40, 51, 3, TileConfig(16, 16, nsplit=3), DirectConfig(4, 32, 64, n_split=2)),
    (2, 2, 33, 5, 47, 5, TileConfig(16, 16, nsplit=1), None),
]


@pytest.mark.parametrize("tc_shift", [False, True], ids=["loads", "tcshift"])
@pytest.mark.parametrize("B,C,H,W,K,k,tile,_d", FORCED)
def test_tc_forced_tiles_and_splits(B, C, H, W, K, k, tile, _d, tc_shift):
    import dataclasses

    cfg = dataclasses.replace(tile, tc_shift=tc_shift)
    args = make(B, C, H, W, K, k, seed=H * W)
    check_forced(args, K, "tc", cfg)


@pytest.mark.parametrize("B,C,H,W,K,k,_t,cfg", [c for c in FORCED if c[-1] is not None])
def test_direct_forced_tiles_chunks_splits(B, C, H, W, K, k, _t, cfg):
    args = make(B, C, H, W, K, k, seed=H + W)
    check_forced(args, K, "direct", cfg)


def check_forced(args, K, variant, cfg, precision=None):
    x, w_h, w_v, w_s = (t.detach() for t in args)
    outs_r, _ = run_oracle(*args, K=K)
    kw = dict(big_kernel=K, variant=variant, dot_precision=precision, config=cfg)
    with launched(variant, at_least=4):
        outs = tc.cross_conv_triton_forward(x, w_h, w_v, w_s, **kw)
        red = tc.cross_conv_triton_forward(x, w_h, w_v, w_s, reduce=True, **kw)
        g = upstream(outs_r)
        grads = tc.cross_conv_triton_backward(*(u.float() for u in g), x, w_h, w_v, w_s, **kw)
    for name, a, b in zip(("out_h", "out_v", "out_s"), outs, outs_r):
        assert_close(a, b, 1e-5, name)
    assert_close(red, sum(outs_r), 1e-5, "sum")
    xs = [t.double().requires_grad_() for t in (x, w_h, w_v, w_s)]
    want = torch.autograd.grad(oracle(*xs, K), xs, g)
    for name, a, b in zip(("dx", "dw_h", "dw_v", "dw_s"), grads, want):
        assert_close(a, b, 1e-5, name)


# fp32 configurations of tiles 32 and 64 (packed planes; tiled windows with an unaligned start), window
# chunks of 8 or 16 in run-time loops (kloop) or unrolled, the centre as a stencil (direct_s), with the
# dot precision the tuner offers them for. The interpreter multiplies in fp32 whatever the precision, so
# this checks the indexing and tf32x3's hi/lo split (one dropped lo*lo term, ~2^-22), not TF32 rounding.
FP32_FORCED = [
    # B, C, H, W, K, k, precision, tile
    (5, 2, 9, 13, 13, 3, "tf32x3", TileConfig(64, 64, 4, 1)),
    (2, 1, 37, 40, 51, 3, "tf32x3", TileConfig(64, 64, 4, 1, kc=8, direct_s=True)),  # 5 of 8 chunks
    (1, 2, 50, 56, 51, 3, "ieee", TileConfig(64, 64, 8)),  # unrolled chunks of 8, 7 of 8 (the default)
    (1, 2, 37, 45, 13, 3, "tf32x3", TileConfig(32, 32, 4, 1, nsplit=2, kc=8, direct_s=True)),
    (3, 1, 14, 14, 47, 5, "tf32", TileConfig(32, 32, 4, 1, kloop=True)),
    (2, 1, 37, 35, 49, 3, "ieee", TileConfig(32, 32, nsplit=2, direct_s=True)),
]


@pytest.mark.parametrize("B,C,H,W,K,k,precision,cfg", FP32_FORCED,
                         ids=[f"{c[6]}-{c[7].label}-H{c[2]}W{c[3]}K{c[4]}k{c[5]}" for c in FP32_FORCED])
def test_tc_fp32_tiles_chunks_stencil(B, C, H, W, K, k, precision, cfg):
    args = make(B, C, H, W, K, k, seed=H * K)
    check_forced(args, K, "tc", cfg, precision)


# Odd sizes at each SW-T stage's kernel (K, and L = 51, 51, 48, 15), small blocks forced.
STAGE_KERNELS = [(51, 9, 11), (49, 13, 7), (47, 5, 9), (13, 7, 7)]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("K,H,W", STAGE_KERNELS, ids=[f"K{K}" for K, _, _ in STAGE_KERNELS])
def test_stage_kernels_odd_sizes(K, H, W, variant):
    # the interpreter pays per program: the direct kernels get fewer planes and larger tap chunks
    args = make(3, 2, H, W, K, 3, seed=K) if variant == "tc" else make(2, 1, H, W, K, 3, seed=K)
    cfg = TileConfig(16, 16, nsplit=2) if variant == "tc" else DirectConfig(4, 8, 64, n_split=2)
    check_forced(args, K, variant, cfg)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("centre", [True, False])
def test_reduce_matches_oracle(centre, variant):
    args = make(2, 2, 9, 10, 13, 3, centre=centre, seed=3)  # batch 2: plane indexing and dW partial rows
    with launched(variant, at_least=3):
        check_against_oracle(triton_fn(variant), args, 13, reduce=True)


@pytest.mark.parametrize("variant", VARIANTS)
def test_raw_launchers(variant):
    x, w_h, w_v, w_s = make(1, 2, 6, 7, 7, 3, grad=False)
    with launched(variant, at_least=2):
        outs = tc.cross_conv_triton_forward(x, w_h, w_v, w_s, big_kernel=7, variant=variant)
        g = [torch.randn_like(x) for _ in range(3)]
        dx, dwh, dwv, dws = tc.cross_conv_triton_backward(*g, x, w_h, w_v, w_s, big_kernel=7, need_x=False,
                                                          variant=variant)
    for a, b in zip(outs, oracle(x, w_h, w_v, w_s, 7)):
        assert_close(a, b, 1e-5)
        assert a.is_contiguous() and a.dtype == x.dtype
    assert dx is None and dwh.shape == w_h.shape and dws.shape == w_s.shape


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("w_low", [False, True], ids=["w_fp32", "w_lowp"])
def test_low_precision(dtype, tol, w_low, variant):
    """Half inputs, fp32 accumulation, outputs in the input dtype; oracle on the same (rounded) values."""
    K, k = 13, 3
    args = make(1, 2, 8, 11, K, k, dtype=dtype, w_dtype=dtype if w_low else torch.float32, seed=5)
    with launched(variant, at_least=3):
        outs, grads = run(triton_fn(variant), *args, K=K)
    outs_r, grads_r = run_oracle(*args, K=K)
    for a, b in zip(outs, outs_r):
        assert a.dtype == dtype
        assert_close(a.float(), b, tol)
    for a, b, leaf in zip(grads, grads_r, leaves(*args)):
        assert a.dtype == leaf.dtype
        assert_close(a.float(), b, tol)


@pytest.mark.parametrize("precision", ["tf32x3", "tf32"])
def test_dot_precision_is_an_argument(precision):
    """fp32 dots in TF32 forms run (under the interpreter they compute in fp32, so the result is exact
    here; on a GPU tf32 is ~1e-3 relative, tf32x3 ~1e-6)."""
    args = make(1, 2, 9, 9, 13, 3, seed=7)
    tol = 1e-5 if (DEVICE == "cpu" or precision == "tf32x3") else 5e-3

    def fn(*a, big_kernel, reduce=False):
        return cross_conv(*a, big_kernel=big_kernel, reduce=reduce, backend="triton", variant="tc",
                          dot_precision=precision)

    with launched("tc", at_least=3):
        check_against_oracle(fn, args, 13, tol=tol)


@pytest.mark.parametrize("variant", VARIANTS)
def test_backward_is_deterministic(variant):
    args = make(2, 2, 12, 9, 47, 3, seed=11)
    fn = triton_fn(variant)
    (o1, g1), (o2, g2) = run(fn, *args, K=47), run(fn, *args, K=47)
    for a, b in zip(o1 + g1, o2 + g2):
        assert torch.equal(a, b)


@pytest.mark.parametrize("variant", VARIANTS)
def test_channels_last_and_expanded_gradient(variant):
    x, w_h, w_v, w_s = make(2, 3, 7, 9, 7, 3, seed=13)
    xc = x.detach().to(memory_format=torch.channels_last).requires_grad_()
    with launched(variant, at_least=3):
        out = triton_fn(variant)(xc, w_h, w_v, w_s, big_kernel=7, reduce=True)
        got = torch.autograd.grad(out.sum(), [xc, w_h, w_v, w_s])  # out.sum() hands an expanded gradient
    xs = [t.detach().double().requires_grad_() for t in (x, w_h, w_v, w_s)]
    ref = oracle(*xs, 7, reduce=True)
    assert_close(out.detach(), ref.detach(), 1e-5)
    want = torch.autograd.grad(ref.sum(), xs)
    for name, a, b in zip(("dx", "dw_h", "dw_v", "dw_s"), got, want):
        assert_close(a, b, 1e-5, name)


@pytest.mark.parametrize("variant", VARIANTS)
def test_empty_batch(variant):
    x, w_h, w_v, w_s = make(0, 2, 5, 5, 7, 3, grad=False)
    outs = triton_fn(variant)(x, w_h, w_v, w_s, big_kernel=7)
    assert all(o.shape == x.shape for o in outs)


def test_gradcheck_float64_through_custom_op():
    x, w_h, w_v, w_s = make(1, 1, 4, 5, 7, 3, dtype=torch.float64, seed=17)
    fn = triton_fn("auto")  # fp64 -> the direct kernels
    with launched("direct", at_least=3):
        assert torch.autograd.gradcheck(lambda *a: fn(*a, big_kernel=7), (x, w_h, w_v, w_s), fast_mode=True)
        assert torch.autograd.gradcheck(lambda *a: fn(*a, big_kernel=7, reduce=True), (x, w_h, w_v, w_s),
                                        fast_mode=True)
        assert torch.autograd.gradcheck(lambda *a: fn(*a, None, big_kernel=7), (x, w_h, w_v), fast_mode=True)


def test_opcheck():
    x, w_h, w_v, w_s = make(1, 2, 4, 5, 7, 3, seed=19)
    torch.library.opcheck(tc._cross_conv_op, (x, w_h, w_v, w_s, 7, "tc", "ieee", False))
    torch.library.opcheck(tc._cross_conv_sum_op, (x, w_h, w_v, None, 7, "direct", "ieee", True))


@pytest.mark.slow
def test_torch_compile_fullgraph_forward_backward():
    torch._dynamo.reset()
    x, w_h, w_v, w_s = make(1, 2, 5, 6, 7, 3, seed=23)

    def f(x, w_h, w_v, w_s):
        a, b, c = cross_conv(x, w_h, w_v, w_s, big_kernel=7, backend="triton", variant="tc")
        y = cross_conv(x, w_h, w_v, None, big_kernel=7, reduce=True, backend="triton", dot_precision="tf32x3")
        return (a * 2 + b - c).relu().sum() + y.square().sum()

    compiled = torch.compile(f, fullgraph=True)
    with launched("tc", at_least=4):
        lc = compiled(x, w_h, w_v, w_s)
        gc = torch.autograd.grad(lc, [x, w_h, w_v, w_s])
    le = f(x, w_h, w_v, w_s)
    ge = torch.autograd.grad(le, [x, w_h, w_v, w_s])
    assert_close(lc.detach(), le.detach(), 1e-6)
    for a, b in zip(gc, ge):
        assert_close(a, b, 1e-6)


def test_backend_selection(monkeypatch):
    x, w_h, w_v, w_s = make(1, 1, 3, 3, 7, 3, grad=False)
    calls = []
    real = tc.cross_conv_triton

    def spy(*a, **kw):
        calls.append(kw)
        return real(*a, **kw)

    monkeypatch.setattr(tc, "cross_conv_triton", spy)
    monkeypatch.setenv("SWTASKS_OP_BACKEND", "triton")
    cross_conv(x, w_h, w_v, w_s, big_kernel=7)
    assert len(calls) == 1 and calls[0]["variant"] == "tc" and calls[0]["dot_precision"] == "ieee"
    monkeypatch.setenv("SWTASKS_OP_BACKEND", "torch")
    cross_conv(x, w_h, w_v, w_s, big_kernel=7)
    assert len(calls) == 1
    cross_conv(x, w_h, w_v, w_s, big_kernel=7, backend="triton", variant="direct", deterministic=True)
    assert len(calls) == 2 and calls[1]["variant"] == "direct" and calls[1]["deterministic"] is True
    monkeypatch.setenv("SWTASKS_OP_BACKEND", "auto")
    cross_conv(x, w_h, w_v, w_s, big_kernel=7)
    assert len(calls) == (3 if DEVICE == "cuda" else 2)
    monkeypatch.setenv("SWTASKS_OP_BACKEND", "cuda")
    with pytest.raises(ValueError, match="cuda"):
        cross_conv(x, w_h, w_v, w_s, big_kernel=7)


def test_switch_resolution():
    from swtasks.ops.options import resolve_options

    x = torch.zeros(1, 2, 4, 4)
    assert resolve_options(x, 3, "triton").variant == "tc"
    assert resolve_options(x.double(), 3, "triton").variant == "direct"
    assert resolve_options(x, 7, "triton").variant == "direct"
    assert resolve_options(x, 3, "triton").deterministic is torch.are_deterministic_algorithms_enabled()
    with pytest.raises(ValueError, match="variant"):
        resolve_options(x, 3, "triton", variant="mma")
    with pytest.raises(ValueError, match="precision"):
        resolve_options(x, 3, "triton", dot_precision="fp16")
    with pytest.raises(ValueError, match="k in"):
        resolve_options(x.double(), 3, "triton", variant="tc")


def test_tuning_key_holds_every_switch():
    from swtasks.ops.options import OpOptions

    keys = {
        tc.tuning_key(OpOptions("triton", v, p, False), pa, (2, 3, 8, 8, 13, 3), dt, dt, s, "GPU")
        for v in ("tc", "direct") for p in ("ieee", "tf32") for pa in ("forward", "grad_weight")
        for dt in ("fp32", "bf16") for s in (True, False)
    }
    assert len(keys) == 2 * 2 * 2 * 2 * 2


def test_tuner_caches_on_disk(tmp_path, monkeypatch):
    """The first call times every candidate and writes the winner; another process (simulated by
    clearing the in-memory table) reads it back without timing anything."""
    import triton.testing

    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(tc, "_TUNED", {})
    timed = []
    monkeypatch.setattr(triton.testing, "do_bench", lambda f, **kw: (f(), timed.append(1), 3.0 - len(timed))[2])
    cands = (TileConfig(16, 16), TileConfig(32, 32), TileConfig(64, 64))
    ran = []
    best = tc._tune("k1", cands, lambda c: c, ran.append)
    assert best == cands[2] and len(timed) == 3 and len(ran) == 3
    assert "k1" in (tmp_path / "swtasks-autotune.json").read_text()
    monkeypatch.setattr(tc, "_TUNED", {})
    assert tc._tune("k1", cands, lambda c: c, ran.append) == cands[2]
    assert len(timed) == 3  # read from disk, nothing timed


@pytest.mark.parametrize(
    "mutate,exc,match",
    [
        (lambda a: (a[0][0],) + a[1:], ValueError, "4-D"),
        (lambda a: (a[0].to(torch.int32),) + a[1:], TypeError, "floating"),
        (lambda a: (a[0], a[1][:1], a[2], a[3]), ValueError, "kernel shapes"),
        (lambda a: (a[0], a[1], a[2], a[3][:, :2]), ValueError, "w_s"),
        (lambda a: (a[0], a[1][:, :2], a[2], a[3]), ValueError, "odd"),
    ],
    ids=["not4d", "int", "w_h_channels", "w_s_shape", "even_k"],
)
def test_bad_inputs(mutate, exc, match):
    x, w_h, w_v, w_s = make(1, 2, 5, 5, 7, 3, grad=False)
    args = mutate((x, w_h, w_v, w_s))
    with pytest.raises(exc, match=match):
        triton_fn("tc")(*args, big_kernel=7)
    with pytest.raises(exc, match=match):
        tc.cross_conv_triton_forward(*args, big_kernel=7)


@pytest.mark.parametrize("K", [0, 4, 10])
def test_bad_big_kernel(K):
    x, w_h, w_v, w_s = make(1, 2, 5, 5, 7, 3, grad=False)
    with pytest.raises(ValueError, match="big_kernel"):
        triton_fn("tc")(x, w_h, w_v, w_s, big_kernel=K)


def test_cpu_without_interpreter_is_refused_by_raw_launcher(monkeypatch):
    monkeypatch.setattr(tc, "INTERPRET", False)
    x, w_h, w_v, w_s = make(1, 1, 3, 3, 7, 3, grad=False)
    x = x.cpu()
    with pytest.raises(RuntimeError, match="CUDA"):
        tc.cross_conv_triton_forward(x, w_h.cpu(), w_v.cpu(), w_s.cpu(), big_kernel=7)
    # ... while the custom op falls back to the PyTorch path
    outs = tc.cross_conv_triton(x, w_h.cpu(), w_v.cpu(), w_s.cpu(), big_kernel=7)
    for a, b in zip(outs, cross_conv_torch(x, w_h.cpu(), w_v.cpu(), w_s.cpu(), big_kernel=7)):
        assert_close(a, b, 1e-6)


def test_check_cross_args_returns_k_and_L():
    x, w_h, w_v, w_s = make(1, 2, 5, 5, 49, 5, grad=False)
    assert check_cross_args(x, w_h, w_v, w_s, 49) == (5, 50)


# ------------------------------------------------------------------------------------------------
# determinism across processes (deterministic mode: one pinned configuration per shape)
# ------------------------------------------------------------------------------------------------

_CHILD = r"""
import hashlib, sys, torch
sys.path.insert(0, {root!r})
from swtasks.ops.cross_conv import cross_conv
dev, dtype, variant, B, C, H, K = {args!r}
dtype = getattr(torch, dtype)
g = torch.Generator().manual_seed(0)
L = 3 * -(-K // 3)
x = torch.randn(B, C, H, H, generator=g).to(dev, dtype).requires_grad_()
ws = [torch.randn(*s, generator=g).to(dev, dtype).requires_grad_() for s in ((C, 3, L), (C, L, 3), (C, 3, 3))]
outs = cross_conv(x, *ws, big_kernel=K, backend="triton", variant=variant, deterministic=True)
ups = [torch.randn(o.shape, generator=g).to(dev, dtype) for o in outs]
grads = torch.autograd.grad(outs, [x, *ws], ups)
h = hashlib.sha256()
for t in list(outs) + list(grads):
    h.update(t.detach().float().cpu().numpy().tobytes())
print(h.hexdigest())
"""


def _digest(args) -> str:
    import os

    env = dict(os.environ)
    res = subprocess.run([sys.executable, "-c", _CHILD.format(root=str(ROOT), args=args)], capture_output=True,
                         text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout.strip().splitlines()[-1]


@pytest.mark.slow
def test_two_processes_bit_identical():
    args = (DEVICE, "float32", "tc", 2, 2, 9, 13)
    assert _digest(args) == _digest(args)


# ------------------------------------------------------------------------------------------------
# GPU only: compiled kernels at the tiny model's stage shapes
# ------------------------------------------------------------------------------------------------

STAGES = [(s.rep, s.size, s.kernel) for s in operator_shapes("tiny")]  # R, H = W, K of SW-T at 224 px
GPU_TOL = 2e-5  # fp32 outputs and gradients, ieee and tf32x3 dots: of max(1, |oracle|)


@pytest.mark.gpu
@pytest.mark.parametrize("variant,precision", [("tc", "ieee"), ("tc", "tf32x3"), ("direct", "ieee")])
@pytest.mark.parametrize("R,HW,K", STAGES)
def test_gpu_stage_shapes_fp32(R, HW, K, variant, precision):
    """Outputs and every gradient at the SW-T stage shapes, batch 16, against the float64 oracle."""
    args = make(16, R, HW, HW, K, 3, seed=R)
    with launched(variant, at_least=3):
        check_against_oracle(triton_fn(variant, precision), args, K, tol=GPU_TOL)


@pytest.mark.gpu
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("R,HW,K", STAGES)
def test_gpu_bf16_gradients(R, HW, K, variant):
    """bf16 inputs, weights and upstream gradients: every gradient within 3e-2 of max(1, |oracle|) (bf16 has
    8 bits of mantissa; the sums run over up to B*H*W = 50,000 terms, accumulated in fp32)."""
    args = make(16, R, HW, HW, K, 3, dtype=torch.bfloat16, seed=R)
    _, grads_t = run(triton_fn(variant), *args, K=K)
    _, grads_r = run_oracle(*args, K=K)
    for name, a, b in zip(("dx", "dw_h", "dw_v", "dw_s"), grads_t, grads_r):
        assert_close(a, b, 3e-2, name)


@pytest.mark.gpu
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("R,HW,K", STAGES)
def test_gpu_bf16_tight(R, HW, K, variant):
    """bf16 in, fp32 accumulation, bf16 out: within one bf16 rounding of the exact result. The
    tensor-core kernels multiply bf16 weights (like the PyTorch path, which casts w to x.dtype);
    the direct kernels keep fp32 weights."""
    x, w_h, w_v, w_s = make(2, R, HW, HW, K, 3, dtype=torch.bfloat16, w_dtype=torch.float32, seed=R, grad=False)
    with launched(variant):
        out = triton_fn(variant)(x, w_h, w_v, w_s, big_kernel=K, reduce=True)
    ws = [(w.bfloat16() if variant == "tc" else w).double() for w in (w_h, w_v, w_s)]
    ref = oracle(x.double(), *ws, K, reduce=True)
    err = (out.double() - ref).abs()
    bound = ref.abs() * 2.0**-8 + 1e-3 * ref.abs().max()
    assert bool((err <= bound).all()), f"worst excess {(err - bound).max().item():.3g}"


@pytest.mark.gpu
@pytest.mark.parametrize("variant", VARIANTS)
def test_gpu_determinism_large(variant):
    args = make(8, 60, 56, 56, 51, 3, seed=29)
    fn = triton_fn(variant)
    (o1, g1), (o2, g2) = run(fn, *args, K=51), run(fn, *args, K=51)
    for a, b in zip(o1 + g1, o2 + g2):
        assert torch.equal(a, b)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_gpu_two_processes_bit_identical(dtype):
    args = ("cuda", dtype, "tc", 16, 60, 56, 51)
    assert _digest(args) == _digest(args)


@pytest.mark.gpu
@pytest.mark.parametrize("variant", VARIANTS)
def test_gpu_channels_last_and_odd_shapes(variant):
    for B, C, H, W, K, k in [(3, 5, 37, 61, 49, 5), (2, 7, 1, 130, 13, 3), (1, 4, 100, 3, 47, 3)]:
        x, w_h, w_v, w_s = make(B, C, H, W, K, k, seed=H + W)
        xc = x.detach().to(memory_format=torch.channels_last).requires_grad_()
        outs_t, grads_t = run(triton_fn(variant), xc, w_h, w_v, w_s, K=K)
        outs_r, grads_r = run_oracle(x, w_h, w_v, w_s, K=K)
        for a, b in zip(outs_t + grads_t, outs_r + grads_r):
            assert_close(a, b, GPU_TOL)
