"""The Triton cross convolution (and its custom-op packaging) against the PyTorch path.

Without a GPU the kernels run under the Triton interpreter on CPU tensors (conftest.py sets
TRITON_INTERPRET=1 before anything imports the kernels); shapes are tiny because the interpreter costs
~1 ms per program. With a GPU the same tests run the compiled kernels on CUDA tensors, and the `gpu`
tests add realistic shapes, tight bf16 tolerances and timings-free stress checks.

Tolerances (max abs error relative to max(1, max |reference|)):
  fp32 1e-5 (outputs and gradients); fp16 2e-3; bf16 2e-2 under the interpreter (its fp32->bf16 store
  truncates instead of rounding) and elementwise 1 bf16 ulp (+1e-3 of the scale) on a GPU.
"""

from __future__ import annotations

import random
import sys

import pytest
import torch

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

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and not tc.INTERPRET:
    pytest.fail(  # a misconfiguration, not a reason to skip the Triton tests silently
        "no CUDA device and the Triton interpreter is off (TRITON_INTERPRET=1 must be set before "
        "swtasks.ops.triton_cross is imported; tests/conftest.py does this)",
        pytrace=False,
    )


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


def run(fn, x, w_h, w_v, w_s, *, K, reduce=False, upstream_seed=1):
    """Outputs and gradients of sum_i <out_i, G_i> for fixed random G_i."""
    outs = fn(x, w_h, w_v, w_s, big_kernel=K, reduce=reduce)
    outs = (outs,) if reduce else tuple(outs)
    g = torch.Generator().manual_seed(upstream_seed)
    ups = [torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.dtype).to(o.device) for o in outs]
    pairs = [(o, u) for o, u in zip(outs, ups) if o.requires_grad]  # the torch path's zero out_s has no graph
    grads = torch.autograd.grad([p[0] for p in pairs], leaves(x, w_h, w_v, w_s), [p[1] for p in pairs])
    return [o.detach() for o in outs], list(grads)


def triton_fn(x, w_h, w_v, w_s=None, *, big_kernel, reduce=False):
    return cross_conv(x, w_h, w_v, w_s, big_kernel=big_kernel, reduce=reduce, backend="triton")


def torch_fn(x, w_h, w_v, w_s=None, *, big_kernel, reduce=False):
    return cross_conv(x, w_h, w_v, w_s, big_kernel=big_kernel, reduce=reduce, backend="torch")


def assert_close(got, want, tol, what=""):
    assert got.shape == want.shape, (what, got.shape, want.shape)
    assert got.dtype == want.dtype, (what, got.dtype, want.dtype)
    scale = max(1.0, want.double().abs().max().item()) if want.numel() else 1.0
    err = (got.double() - want.double()).abs().max().item() if want.numel() else 0.0
    assert err <= tol * scale, f"{what}: max abs error {err:.3g} > {tol:g} * {scale:.3g}"


# Random shapes: every K of the issue, both small kernels, H and W odd / even / smaller than K.
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
        cases.append((1, C, H, W, K, k, i % 4 != 3))  # every 4th without the centre tile
    return cases


CASES = _draw_cases()


@pytest.fixture(params=[False, True], ids=["direct", "mma"])
def mma(request, monkeypatch):
    """Run a test with the direct (CUDA-core) kernels and with the opt-in tensor-core kernels
    (forward and input gradient; SWTASKS_TRITON_MMA=1)."""
    monkeypatch.setattr(tc, "MMA", request.param)
    return request.param


_MMA_CASES = [pytest.param(*c, True, id=f"mma-K{c[4]}k{c[5]}H{c[2]}W{c[3]}C{c[1]}") for c in CASES[::2]]
_DIRECT_CASES = [pytest.param(*c, False, id=f"K{c[4]}k{c[5]}H{c[2]}W{c[3]}C{c[1]}") for c in CASES]


@pytest.mark.parametrize("B,C,H,W,K,k,centre,use_mma", _DIRECT_CASES + _MMA_CASES)
def test_matches_torch_path(B, C, H, W, K, k, centre, use_mma, monkeypatch):
    monkeypatch.setattr(tc, "MMA", use_mma)
    args = make(B, C, H, W, K, k, centre=centre, seed=K * 100 + H)
    outs_t, grads_t = run(triton_fn, *args, K=K)
    outs_r, grads_r = run(torch_fn, *args, K=K)
    for name, a, b in zip(("out_h", "out_v", "out_s"), outs_t, outs_r):
        assert_close(a, b, 1e-5, name)
    if not centre:
        assert torch.count_nonzero(outs_t[2]) == 0
    for name, a, b in zip(("dx", "dw_h", "dw_v", "dw_s"), grads_t, grads_r):
        assert_close(a, b, 1e-5, name)


@pytest.mark.parametrize("centre", [True, False])
def test_reduce_matches_torch_path(centre, mma):
    args = make(2, 2, 9, 10, 13, 3, centre=centre, seed=3)  # batch 2: plane indexing and dW partial rows
    out_t, grads_t = run(triton_fn, *args, K=13, reduce=True)
    out_r, grads_r = run(torch_fn, *args, K=13, reduce=True)
    assert_close(out_t[0], out_r[0], 1e-5, "sum")
    for name, a, b in zip(("dx", "dw_h", "dw_v", "dw_s"), grads_t, grads_r):
        assert_close(a, b, 1e-5, name)


def test_raw_launchers_agree_with_op():
    x, w_h, w_v, w_s = make(1, 2, 6, 7, 7, 3, grad=False)
    outs = tc.cross_conv_triton_forward(x, w_h, w_v, w_s, big_kernel=7)
    ref = cross_conv_torch(x, w_h, w_v, w_s, big_kernel=7)
    for a, b in zip(outs, ref):
        assert_close(a, b, 1e-5)
        assert a.is_contiguous()
    g = [torch.randn_like(x) for _ in range(3)]
    dx, dwh, dwv, dws = tc.cross_conv_triton_backward(*g, x, w_h, w_v, w_s, big_kernel=7, need_x=False)
    assert dx is None and dwh.shape == w_h.shape and dws.shape == w_s.shape


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("w_low", [False, True], ids=["w_fp32", "w_lowp"])
def test_low_precision(dtype, tol, w_low, mma):
    """Half inputs, fp32 accumulation, outputs in the input dtype; reference: fp32 on the same
    (rounded) values."""
    K, k = 13, 3
    x, w_h, w_v, w_s = make(1, 2, 8, 11, K, k, dtype=dtype, w_dtype=dtype if w_low else torch.float32, seed=5)
    outs, grads = run(triton_fn, x, w_h, w_v, w_s, K=K)
    f32 = [t.detach().float().requires_grad_() for t in (x, w_h, w_v, w_s)]
    outs_r, grads_r = run(torch_fn, *f32, K=K)
    for a, b in zip(outs, outs_r):
        assert a.dtype == dtype
        assert_close(a.float(), b, tol)
    for a, b, leaf in zip(grads, grads_r, (x, w_h, w_v, w_s)):
        assert a.dtype == leaf.dtype
        assert_close(a.float(), b, tol)


def test_backward_is_deterministic(mma):
    args = make(2, 2, 12, 9, 47, 3, seed=11)
    (_, g1), (_, g2) = run(triton_fn, *args, K=47), run(triton_fn, *args, K=47)
    for a, b in zip(g1, g2):
        assert torch.equal(a, b)


def test_channels_last_and_expanded_gradient(mma):
    x, w_h, w_v, w_s = make(2, 3, 7, 9, 7, 3, seed=13)
    xc = x.detach().to(memory_format=torch.channels_last).requires_grad_()
    out = triton_fn(xc, w_h, w_v, w_s, big_kernel=7, reduce=True)
    ref = cross_conv_torch(x, w_h, w_v, w_s, big_kernel=7, reduce=True)
    assert_close(out.detach(), ref.detach(), 1e-5)
    # out.sum() hands the op an expanded (stride-0) gradient
    got = torch.autograd.grad(out.sum(), [xc, w_h, w_v, w_s])
    want = torch.autograd.grad(ref.sum(), [x, w_h, w_v, w_s])
    for name, a, b in zip(("dx", "dw_h", "dw_v", "dw_s"), got, want):
        assert_close(a, b, 1e-5, name)


def test_empty_batch():
    x, w_h, w_v, w_s = make(0, 2, 5, 5, 7, 3, grad=False)
    outs = triton_fn(x, w_h, w_v, w_s, big_kernel=7)
    assert all(o.shape == x.shape for o in outs)


def test_gradcheck_float64_through_custom_op():
    x, w_h, w_v, w_s = make(1, 1, 4, 5, 7, 3, dtype=torch.float64, seed=17)
    assert torch.autograd.gradcheck(
        lambda *a: triton_fn(*a, big_kernel=7), (x, w_h, w_v, w_s), fast_mode=True
    )
    assert torch.autograd.gradcheck(
        lambda *a: triton_fn(*a, big_kernel=7, reduce=True), (x, w_h, w_v, w_s), fast_mode=True
    )
    assert torch.autograd.gradcheck(
        lambda *a: triton_fn(*a, None, big_kernel=7), (x, w_h, w_v), fast_mode=True
    )


def test_opcheck():
    x, w_h, w_v, w_s = make(1, 2, 4, 5, 7, 3, seed=19)
    torch.library.opcheck(tc._cross_conv_op, (x, w_h, w_v, w_s, 7))
    torch.library.opcheck(tc._cross_conv_sum_op, (x, w_h, w_v, None, 7))


@pytest.mark.slow
def test_torch_compile_fullgraph_forward_backward():
    torch._dynamo.reset()
    x, w_h, w_v, w_s = make(1, 2, 5, 6, 7, 3, seed=23)

    def f(x, w_h, w_v, w_s):
        a, b, c = cross_conv(x, w_h, w_v, w_s, big_kernel=7, backend="triton")
        y = cross_conv(x, w_h, w_v, None, big_kernel=7, reduce=True, backend="triton")
        return (a * 2 + b - c).relu().sum() + y.square().sum()

    compiled = torch.compile(f, fullgraph=True)
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
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(tc, "cross_conv_triton", spy)
    monkeypatch.setenv("SWTASKS_OP_BACKEND", "triton")
    cross_conv(x, w_h, w_v, w_s, big_kernel=7)
    assert len(calls) == 1
    monkeypatch.setenv("SWTASKS_OP_BACKEND", "torch")
    cross_conv(x, w_h, w_v, w_s, big_kernel=7)
    assert len(calls) == 1
    cross_conv(x, w_h, w_v, w_s, big_kernel=7, backend="triton")  # the argument beats the variable
    assert len(calls) == 2
    monkeypatch.setenv("SWTASKS_OP_BACKEND", "auto")
    cross_conv(x, w_h, w_v, w_s, big_kernel=7)
    assert len(calls) == (3 if DEVICE == "cuda" else 2)
    monkeypatch.setenv("SWTASKS_OP_BACKEND", "cuda")
    with pytest.raises(ValueError, match="cuda"):
        cross_conv(x, w_h, w_v, w_s, big_kernel=7)


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
        triton_fn(*args, big_kernel=7)
    with pytest.raises(exc, match=match):
        tc.cross_conv_triton_forward(*args, big_kernel=7)


@pytest.mark.parametrize("K", [0, 4, 10])
def test_bad_big_kernel(K):
    x, w_h, w_v, w_s = make(1, 2, 5, 5, 7, 3, grad=False)
    with pytest.raises(ValueError, match="big_kernel"):
        triton_fn(x, w_h, w_v, w_s, big_kernel=K)


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


# ------------------------------------------------------------------------------------------------
# GPU only: compiled kernels at the tiny model's stage shapes
# ------------------------------------------------------------------------------------------------

STAGES = [(60, 56, 51), (122, 28, 49), (246, 14, 47), (492, 7, 13)]


@pytest.mark.gpu
@pytest.mark.parametrize("R,HW,K", STAGES)
def test_gpu_stage_shapes_fp32(R, HW, K, mma):
    args = make(4, R, HW, HW, K, 3, seed=R)
    outs_t, grads_t = run(triton_fn, *args, K=K)
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        outs_r, grads_r = run(torch_fn, *args, K=K)
    for a, b in zip(outs_t, outs_r):
        assert_close(a, b, 1e-5)
    for a, b in zip(grads_t, grads_r):
        assert_close(a, b, 2e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("R,HW,K", STAGES)
def test_gpu_bf16_tight(R, HW, K, mma):
    """bf16 in, fp32 accumulation, bf16 out: within one bf16 rounding of the exact result. The
    tensor-core kernels multiply bf16 weights (like the PyTorch path, which casts w to x.dtype);
    the direct kernels keep fp32 weights."""
    x, w_h, w_v, w_s = make(
        2, R, HW, HW, K, 3, dtype=torch.bfloat16, w_dtype=torch.float32, seed=R, grad=False
    )
    out = triton_fn(x, w_h, w_v, w_s, big_kernel=K, reduce=True)
    ws = [(w.bfloat16() if mma else w).double() for w in (w_h, w_v, w_s)]
    ref = cross_conv_torch(x.double(), *ws, big_kernel=K, reduce=True)
    err = (out.double() - ref).abs()
    bound = ref.abs() * 2.0**-8 + 1e-3 * ref.abs().max()
    assert bool((err <= bound).all()), f"worst excess {(err - bound).max().item():.3g}"


@pytest.mark.gpu
def test_gpu_determinism_large(mma):
    args = make(8, 60, 56, 56, 51, 3, seed=29)
    (_, g1), (_, g2) = run(triton_fn, *args, K=51), run(triton_fn, *args, K=51)
    for a, b in zip(g1, g2):
        assert torch.equal(a, b)


@pytest.mark.gpu
def test_gpu_channels_last_and_odd_shapes(mma):
    for B, C, H, W, K, k in [(3, 5, 37, 61, 49, 5), (2, 7, 1, 130, 13, 3), (1, 4, 100, 3, 47, 3)]:
        x, w_h, w_v, w_s = make(B, C, H, W, K, k, seed=H + W)
        xc = x.detach().to(memory_format=torch.channels_last).requires_grad_()
        outs_t, grads_t = run(triton_fn, xc, w_h, w_v, w_s, K=K)
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            outs_r, grads_r = run(torch_fn, x, w_h, w_v, w_s, K=K)
        for a, b in zip(outs_t + grads_t, outs_r + grads_r):
            assert_close(a, b, 2e-5)


def test_check_cross_args_returns_k_and_L():
    x, w_h, w_v, w_s = make(1, 2, 5, 5, 49, 5, grad=False)
    assert check_cross_args(x, w_h, w_v, w_s, 49) == (5, 50)
