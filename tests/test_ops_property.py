"""Property-based tests (hypothesis) of the cross convolution and of ShiftWiseConv2d.

Random shapes (batch 0-2, planes 1-12, any odd K and k in 1, 3, 5 with k <= K), dtypes, memory formats
(contiguous, channels-last, strided views), with and without the centre tile, three-output and summed
forms, over every path: PyTorch, Triton tensor-core kernels and Triton direct kernels (under the Triton
interpreter on CPU, compiled on a GPU). Oracle: tests/cross_oracle.py (dense float64 convolution built
from the contract), never the code under test. Bad inputs must raise a clear ValueError/TypeError that
names the problem before any kernel runs, never a failure inside a kernel.

Example counts are small (the interpreter costs ~1 ms per program) and the runs are derandomized so
CI sees the same examples every time.
"""

from __future__ import annotations

import pytest
import torch
from cross_oracle import assert_close, dense_kernels, oracle

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from swtasks.ops.cross_conv import cross_conv  # noqa: E402

tc = pytest.importorskip("swtasks.ops.triton_cross")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SETTINGS = dict(deadline=None, derandomize=True, print_blob=True)
TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 3e-2}
PATHS = [("torch", None), ("triton", "tc"), ("triton", "direct")]


@st.composite
def problems(draw, dtypes=(torch.float32, torch.float64)):
    k = draw(st.sampled_from([1, 3, 5]))
    K = draw(st.integers(min_value=k, max_value=17).filter(lambda v: v % 2 == 1))
    L = k * -(-K // k)
    B = draw(st.integers(0, 2))
    C = draw(st.integers(1, 3))
    H = draw(st.integers(1, 12))
    W = draw(st.integers(1, 12))
    dtype = draw(st.sampled_from(dtypes))
    layout = draw(st.sampled_from(["contiguous", "channels_last", "strided"]))
    centre = draw(st.booleans())
    reduce = draw(st.booleans())
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype).to(DEVICE)

    if layout == "strided":  # a view with a gap between columns
        x = rnd(B, C, H, 2 * W)[..., ::2]
    else:
        x = rnd(B, C, H, W)
        if layout == "channels_last":
            x = x.to(memory_format=torch.channels_last)
    w = (rnd(C, k, L), rnd(C, L, k), rnd(C, k, k) if centre else None)
    return x, w, K, reduce


def _supported(backend, variant, x, k):
    if backend == "torch":
        return True
    if variant == "tc":
        return x.dtype in (torch.float32, torch.float16, torch.bfloat16) and k in (1, 3, 5)
    return True


@pytest.mark.parametrize("backend,variant", PATHS, ids=["torch", "triton-tc", "triton-direct"])
@settings(max_examples=12, **SETTINGS)
@given(p=problems())
def test_cross_conv_matches_oracle(backend, variant, p):
    x, (w_h, w_v, w_s), K, reduce = p
    k = w_h.shape[1]
    leaves = [t.clone().requires_grad_() for t in (x, w_h, w_v) + ((w_s,) if w_s is not None else ())]
    if not _supported(backend, variant, x, k):
        with pytest.raises(ValueError, match="variant='tc'"):
            cross_conv(*leaves[:3], leaves[3] if w_s is not None else None, big_kernel=K, backend=backend,
                       variant=variant)
        return
    before = sum(tc.LAUNCHES.values())
    out = cross_conv(*leaves[:3], leaves[3] if w_s is not None else None, big_kernel=K, reduce=reduce,
                     backend=backend, variant=variant)
    outs = (out,) if reduce else tuple(out)
    xs = [t.detach().double().requires_grad_() for t in leaves]
    want = oracle(xs[0], xs[1], xs[2], xs[3] if w_s is not None else None, K, reduce=reduce)
    wants = (want,) if reduce else want
    tol = TOL[x.dtype]
    for a, b in zip(outs, wants):
        assert a.shape == x.shape and a.dtype == x.dtype
        assert_close(a.detach(), b.detach(), tol)
    if x.numel() and any(o.requires_grad for o in outs):
        gen = torch.Generator().manual_seed(1)
        ups = [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(DEVICE) for o in outs]
        pairs = [(o, u.to(o.dtype)) for o, u in zip(outs, ups) if o.requires_grad]
        got = torch.autograd.grad([a for a, _ in pairs], leaves, [u for _, u in pairs], allow_unused=True)
        ref = torch.autograd.grad(wants, xs, ups, allow_unused=True)
        for a, b, leaf in zip(got, ref, leaves):
            a = torch.zeros_like(leaf) if a is None else a
            b = torch.zeros_like(leaf, dtype=torch.float64) if b is None else b
            assert_close(a, b, tol)
    if backend == "triton" and x.numel():
        assert sum(tc.LAUNCHES.values()) > before, "the Triton leg did not launch a Triton kernel"


@st.composite
def bad_calls(draw):
    """A valid call with one thing broken; returns (args, kwargs, expected exception, message word)."""
    g = torch.Generator().manual_seed(draw(st.integers(0, 99)))
    C, H, W = draw(st.integers(1, 3)), draw(st.integers(1, 6)), draw(st.integers(1, 6))
    k, K = 3, 7
    L = 9
    x = torch.randn(1, C, H, W, generator=g).to(DEVICE)
    w_h, w_v, w_s = torch.randn(C, k, L).to(DEVICE), torch.randn(C, L, k).to(DEVICE), torch.randn(C, k, k).to(DEVICE)
    kind = draw(st.sampled_from(["dims", "int", "channels", "even_k", "centre", "big_kernel", "variant",
                                 "precision", "backend"]))
    kw = dict(big_kernel=K)
    if kind == "dims":
        x = x[0]
        return (x, w_h, w_v, w_s), kw, ValueError, "4-D"
    if kind == "int":
        return (x.to(torch.int32), w_h, w_v, w_s), kw, TypeError, "floating"
    if kind == "channels":
        return (x, w_h[:, :, :].repeat(2, 1, 1), w_v, w_s), kw, ValueError, "kernel shapes"
    if kind == "even_k":
        return (x, w_h[:, :2], w_v, w_s), kw, ValueError, "odd"
    if kind == "centre":
        return (x, w_h, w_v, w_s[:, :2]), kw, ValueError, "w_s"
    if kind == "big_kernel":
        return (x, w_h, w_v, w_s), dict(big_kernel=draw(st.sampled_from([0, 2, 4, 10, 11]))), ValueError, "big_kernel"
    if kind == "variant":
        return (x, w_h, w_v, w_s), dict(kw, variant="mma"), ValueError, "variant"
    if kind == "precision":
        return (x, w_h, w_v, w_s), dict(kw, dot_precision="bf16"), ValueError, "precision"
    return (x, w_h, w_v, w_s), dict(kw, backend="cuda"), ValueError, "backend"


@settings(max_examples=25, **SETTINGS)
@given(call=bad_calls(), backend=st.sampled_from(["torch", "triton"]))
def test_bad_calls_raise_clear_errors(call, backend):
    args, kw, exc, word = call
    kw = dict(kw)
    kw.setdefault("backend", backend)
    before = sum(tc.LAUNCHES.values())
    with pytest.raises(exc, match=word):
        cross_conv(*args, **kw)
    assert sum(tc.LAUNCHES.values()) == before  # refused before any kernel


# ------------------------------------------------------------------------------------------------
# the layer
# ------------------------------------------------------------------------------------------------


@st.composite
def layers(draw):
    k = draw(st.sampled_from([1, 3, 5]))
    K = draw(st.integers(min_value=k, max_value=15).filter(lambda v: v % 2 == 1))
    C = draw(st.integers(2, 8))
    ghost = draw(st.sampled_from([0.0, 0.23, 0.5]))
    R = int(C * (1 - ghost)) // 2 * 2
    if R < 2:
        ghost = 0.0
    return dict(channels=C, kernel_size=K, small_kernel=k, ghost_ratio=ghost, n_path=draw(st.integers(1, 2)),
                n_rep=draw(st.integers(1, 3)))


@pytest.mark.parametrize("backend,variant", PATHS, ids=["torch", "triton-tc", "triton-direct"])
@settings(max_examples=8, **SETTINGS)
@given(cfg=layers(), B=st.integers(1, 2), H=st.integers(1, 10), W=st.integers(1, 10),
       layout=st.sampled_from(["contiguous", "channels_last"]), deploy=st.booleans(), seed=st.integers(0, 999))
def test_layer_matches_dense_oracle(backend, variant, cfg, B, H, W, layout, deploy, seed):
    from swtasks.layers import ShiftWiseConv2d

    torch.manual_seed(seed)
    m = ShiftWiseConv2d(**cfg, backend=backend, variant=variant).to(DEVICE).eval()
    with torch.no_grad():
        for bn in (m.bn_h, m.bn_v, m.bn_s):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    if deploy:
        m.reparameterize()
    x = torch.randn(B, cfg["channels"], H, W, device=DEVICE)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    with torch.no_grad():
        got = m(x)
        want = _layer_oracle(m, x)
    assert got.shape == x.shape
    assert_close(got, want, 1e-5)


def _layer_oracle(m, x):
    """The layer's eval output from its cross kernels, with the dense oracle and the BatchNorm formula."""
    xd = x.double()
    rep = m.rep_idx
    x_r = xd[:, rep]
    K = m.kernel_size
    w_h, w_v, w_s = m.cross_kernels()
    (dh, dv, ds), half = dense_kernels(w_h, w_v, w_s, K)
    conv = lambda d: torch.nn.functional.conv2d(x_r, d, padding=half, groups=x_r.shape[1])  # noqa: E731
    if m.deploy:
        z = conv(dh) + conv(dv) + m.bias.double().view(1, -1, 1, 1)
    else:
        z = x_r
        for d, bn in ((dh, m.bn_h), (dv, m.bn_v), (ds, m.bn_s)):
            s = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
            t = bn.bias.double() - s * bn.running_mean.double()
            z = z + conv(d) * s.view(1, -1, 1, 1) + t.view(1, -1, 1, 1)
    out = xd.clone()
    out[:, rep] = z
    return out


@settings(max_examples=10, **SETTINGS)
@given(kind=st.sampled_from(["channels", "dims", "int", "variant", "precision"]), C=st.integers(2, 6))
def test_layer_bad_inputs_raise_clear_errors(kind, C):
    from swtasks.layers import ShiftWiseConv2d

    if kind in ("variant", "precision"):
        with pytest.raises(ValueError, match=kind):
            ShiftWiseConv2d(C, 7, backend="triton", **{"variant" if kind == "variant" else "dot_precision": "x"})
        return
    m = ShiftWiseConv2d(C, 7, ghost_ratio=0.0, backend="triton").to(DEVICE)
    x = {"channels": torch.randn(1, C + 1, 5, 5), "dims": torch.randn(C, 5, 5),
         "int": torch.ones(1, C, 5, 5, dtype=torch.int64)}[kind].to(DEVICE)
    with pytest.raises((ValueError, TypeError), match="channels|4-D|floating"):
        m(x)
