"""ShiftWiseConv2d: agreement with the literal operator, dense equivalence, reparameterize/deploy,
kernel mask, input validation, RNG hygiene."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import randomize_parameters

from swtasks.layers import ShiftWiseConv2d
from swtasks.ops import shiftwise_reference, shiftwise_tables


def _expected(m: ShiftWiseConv2d, x: torch.Tensor, bns=None) -> torch.Tensor:
    """The operator of spec section 4 through the LITERAL path, with the input channel order kept."""
    bn_h, bn_v, bn_s = bns or (m.bn_h, m.bn_v, m.bn_s)
    w = m.weight if m.kernel_mask is None else m.weight * m.kernel_mask[:, :, None, None]
    x_r = x[:, m.rep_idx]
    o_h, o_v, o_s = shiftwise_reference(x_r, w, m.slot_h, m.slot_v, m.ident, big_kernel=m.kernel_size)
    z = bn_h(o_h) + bn_v(o_v) + bn_s(o_s) + x_r
    out = x.clone()
    out[:, m.rep_idx] = z
    return out


CONFIGS = [
    # channels, K, k, ghost_ratio, n_path, n_rep, H, W
    (7, 13, 3, 0.3, 2, 3, 11, 10),
    (8, 51, 3, 0.23, 2, 4, 12, 9),
    (6, 7, 5, 0.0, 1, 2, 5, 8),
    (9, 47, 5, 0.5, 3, 1, 16, 15),
]


def test_attributes_and_buffers():
    m = ShiftWiseConv2d(80, 51)
    assert (m.channels, m.kernel_size, m.small_kernel, m.n_small, m.strip_len) == (80, 51, 3, 17, 51)
    assert (m.rep_channels, m.ghost_channels, m.n_path, m.n_rep, m.deploy) == (60, 20, 2, 4, False)
    assert m.weight.shape == (2, 1020, 3, 3)
    assert m.slot_h.shape == m.slot_v.shape == (4, 1020) and m.ident.shape == (4, 60)
    t = shiftwise_tables(80, 51, 3, 0.23, 4)
    for name in ("rep_idx", "ghost_idx", "slot_h", "slot_v", "ident"):
        assert torch.equal(getattr(m, name), getattr(t, name)), name
    keys = set(m.state_dict())
    assert {"weight", "rep_idx", "ghost_idx", "slot_h", "slot_v", "ident", "bn_h.running_mean"} <= keys
    assert "kernel_mask" not in keys
    w_h, w_v, w_s = m.cross_kernels()
    assert w_h.shape == (60, 3, 51) and w_v.shape == (60, 51, 3) and w_s.shape == (60, 3, 3)


@pytest.mark.parametrize("cfg", CONFIGS)
def test_forward_and_grads_match_literal(cfg):
    C, K, k, g, P, n_rep, H, W = cfg
    m = randomize_parameters(ShiftWiseConv2d(C, K, k, ghost_ratio=g, n_path=P, n_rep=n_rep, backend="torch").double())
    x = torch.randn(2, C, H, W, dtype=torch.float64)

    # eval: running statistics
    m.eval()
    torch.testing.assert_close(m(x), _expected(m, x), rtol=1e-10, atol=1e-10)
    ghost = m.ghost_idx
    assert torch.equal(m(x)[:, ghost], x[:, ghost])  # ghost channels pass through in place

    # train: batch statistics, and gradients w.r.t. input and small kernels
    m.train()
    bns = copy.deepcopy((m.bn_h, m.bn_v, m.bn_s))
    xa = x.clone().requires_grad_(True)
    xb = x.clone().requires_grad_(True)
    gout = torch.randn_like(x)
    out = m(xa)
    (out * gout).sum().backward()
    dw = m.weight.grad.clone()
    m.weight.grad = None
    ref = _expected(m, xb, bns)
    (ref * gout).sum().backward()
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(dw, m.weight.grad, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("cfg", CONFIGS[:3])
def test_dense_kernel_equivalence(cfg):
    C, K, k, g, P, n_rep, H, W = cfg
    m = randomize_parameters(ShiftWiseConv2d(C, K, k, ghost_ratio=g, n_path=P, n_rep=n_rep).double(), seed=3)
    x_r = torch.randn(1, m.rep_channels, H, W, dtype=torch.float64)
    kd = m.dense_kernel()
    L, lo = m.strip_len, K // 2
    Kd = 2 * (L - 1 - lo) + 1
    assert kd.shape == (m.rep_channels, 1, Kd, Kd)
    dense = F.conv2d(x_r, kd, padding=Kd // 2, groups=m.rep_channels)
    o_h, o_v, o_s = shiftwise_reference(x_r, m.weight, m.slot_h, m.slot_v, m.ident, big_kernel=K)
    torch.testing.assert_close(dense, o_h + o_v + o_s, rtol=1e-10, atol=1e-10)
    # support of the dense kernel: a cross, taps [-K//2, L-1-K//2] along both strips
    support = (kd[0, 0] != 0).nonzero()
    assert support.min().item() >= Kd // 2 - lo


def _rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("cfg", CONFIGS)
def test_reparameterize_equal_in_eval(cfg):
    C, K, k, g, P, n_rep, H, W = cfg
    torch.manual_seed(0)
    m = randomize_parameters(ShiftWiseConv2d(C, K, k, ghost_ratio=g, n_path=P, n_rep=n_rep, backend="torch"), seed=5)
    mask = (torch.rand(P, m.rep_channels * m.n_small) > 0.3).float()
    m.set_kernel_mask(mask)
    m.eval()
    x = torch.randn(2, C, H, W)
    with torch.no_grad():
        before = m(x)
        m.reparameterize()
        after = m(x)
    assert m.deploy and _rel_err(after, before) <= 1e-5
    assert set(m.state_dict()) == {"weight_h", "weight_v", "bias", "rep_idx", "ghost_idx"}
    for gone in ("weight", "bn_h", "bn_v", "bn_s", "slot_h", "slot_v", "ident", "kernel_mask"):
        assert not hasattr(m, gone), gone
    m.reparameterize()  # idempotent
    torch.testing.assert_close(m(x), after)

    # deploy=True construction loads the folded state dict (strict) and computes the same thing
    d = ShiftWiseConv2d(C, K, k, ghost_ratio=g, n_path=P, n_rep=n_rep, deploy=True, backend="torch")
    assert set(d.state_dict()) == set(m.state_dict())
    d.load_state_dict(m.state_dict())
    torch.testing.assert_close(d(x), after, rtol=0, atol=0)
    # the folded dense kernel + bias reproduces the rep channels
    kd = d.dense_kernel()
    rep = F.conv2d(x[:, d.rep_idx], kd, padding=kd.shape[-1] // 2, groups=d.rep_channels)
    rep = rep + d.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(rep, after[:, d.rep_idx], rtol=1e-5, atol=1e-5)
    # deploy form is trainable too
    d(x).sum().backward()
    assert d.weight_h.grad is not None and d.bias.grad is not None


def test_fresh_deploy_module_is_identity():
    d = ShiftWiseConv2d(8, 13, deploy=True, backend="torch")
    x = torch.randn(1, 8, 7, 9)
    torch.testing.assert_close(d(x), x)
    with pytest.raises(RuntimeError):
        d.set_kernel_mask(None)


def test_kernel_mask():
    C, K, k, P = 8, 13, 3, 2
    m = randomize_parameters(ShiftWiseConv2d(C, K, k, n_path=P, backend="torch").double(), seed=7).eval()
    RN = m.rep_channels * m.n_small
    mask = torch.ones(P, RN, dtype=torch.float64)
    mask[0, ::3] = 0
    mask[1, 1::4] = 0
    x = torch.randn(2, C, 9, 10, dtype=torch.float64)

    pruned = copy.deepcopy(m)
    with torch.no_grad():
        pruned.weight.mul_(mask[:, :, None, None])
        # masked kernels set to garbage in the masked module: they must contribute nothing
        m.weight.add_(1e3 * (1 - mask)[:, :, None, None])
    m.set_kernel_mask(mask)
    out = m(x)
    torch.testing.assert_close(out, pruned(x), rtol=1e-10, atol=1e-10)
    out.square().sum().backward()
    assert torch.all(m.weight.grad[mask == 0] == 0)
    assert m.weight.grad[mask == 1].abs().sum() > 0

    # the mask travels in the state dict and loads into a module that has none
    sd = m.state_dict()
    assert torch.equal(sd["kernel_mask"], mask)
    fresh = ShiftWiseConv2d(C, K, k, n_path=P, backend="torch").double().eval()
    fresh.load_state_dict(sd)
    torch.testing.assert_close(fresh(x), out)

    # a 1-D mask is shared by all paths; None removes it
    m.set_kernel_mask(torch.zeros(RN))
    assert m.kernel_mask.shape == (P, RN)
    w_h, w_v, w_s = m.cross_kernels()
    assert w_h.abs().sum() == 0 and w_v.abs().sum() == 0 and w_s.abs().sum() == 0
    m.set_kernel_mask(None)
    assert m.kernel_mask is None and "kernel_mask" not in m.state_dict()
    with pytest.raises(ValueError, match="mask"):
        m.set_kernel_mask(torch.ones(P + 1, RN))


def test_construction_leaves_global_rng_alone():
    """Construction draws only the ordinary weight init from the global torch RNG (the reference
    reseeds it with 123 in every constructor); numpy's global state is untouched."""
    C, K, k, P = 10, 13, 3, 2
    np.random.seed(11)
    np_before = np.random.get_state()
    torch.manual_seed(11)
    m = ShiftWiseConv2d(C, K, k, n_path=P)
    after_module = torch.rand(5)
    np_after = np.random.get_state()
    assert np_after[0] == np_before[0] and np.array_equal(np_after[1], np_before[1])
    assert np_after[2:] == np_before[2:]

    # replay: the same init draws alone, nothing else
    torch.manual_seed(11)
    w = torch.empty(P, m.rep_channels * m.n_small, k, k)
    for p in range(P):
        nn.init.kaiming_uniform_(w[p], a=math.sqrt(5))
    assert torch.equal(m.weight.detach(), w)
    assert torch.equal(torch.rand(5), after_module)

    # deploy construction draws nothing at all
    state = torch.random.get_rng_state()
    ShiftWiseConv2d(C, K, k, deploy=True)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_input_layouts_and_dtypes():
    m = randomize_parameters(ShiftWiseConv2d(8, 13, backend="torch"), seed=2).eval()
    x = torch.randn(2, 8, 10, 11)
    ref = m(x)
    torch.testing.assert_close(m(x.contiguous(memory_format=torch.channels_last)), ref)
    m64 = copy.deepcopy(m).double()
    torch.testing.assert_close(m64(x.double()).float(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs,exc,words",
    [
        (dict(channels=8, kernel_size=12), ValueError, ["kernel_size", "12"]),
        (dict(channels=8, kernel_size=0), ValueError, ["kernel_size", "0"]),
        (dict(channels=8, kernel_size=-5), ValueError, ["kernel_size", "-5"]),
        (dict(channels=8, kernel_size=5, small_kernel=7), ValueError, ["small_kernel", "7"]),
        (dict(channels=8, kernel_size=13, small_kernel=4), ValueError, ["small_kernel", "4"]),
        (dict(channels=8, kernel_size=13, ghost_ratio=1.0), ValueError, ["ghost_ratio", "1.0"]),
        (dict(channels=8, kernel_size=13, ghost_ratio=-0.1), ValueError, ["ghost_ratio", "-0.1"]),
        (dict(channels=8, kernel_size=13.0), TypeError, ["kernel_size", "13.0"]),
        (dict(channels=0, kernel_size=13), ValueError, ["channels", "0"]),
        (dict(channels=1, kernel_size=13, ghost_ratio=0.0), ValueError, ["channels=1"]),
        (dict(channels=8, kernel_size=13, n_rep=0), ValueError, ["n_rep", "0"]),
        (dict(channels=8, kernel_size=13, n_path=0), ValueError, ["n_path", "0"]),
    ],
)
def test_bad_construction(kwargs, exc, words):
    with pytest.raises(exc) as info:
        ShiftWiseConv2d(**kwargs)
    for w in words:
        assert w in str(info.value)


def test_bad_forward_input():
    m = ShiftWiseConv2d(8, 13, backend="torch")
    with pytest.raises(ValueError, match=r"x must be 4-D.*\(8, 5, 5\)"):
        m(torch.randn(8, 5, 5))
    with pytest.raises(ValueError, match=r"x has 6 channels.*expected 8"):
        m(torch.randn(1, 6, 5, 5))
    with pytest.raises(TypeError, match=r"x must be a floating-point.*int64"):
        m(torch.ones(1, 8, 5, 5, dtype=torch.long))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        m(np.zeros((1, 8, 5, 5)))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_torch_backend_matches_cpu_and_is_deterministic():
    m = randomize_parameters(ShiftWiseConv2d(16, 51, backend="torch"), seed=4)
    x = torch.randn(2, 16, 20, 23)
    ref = m(x)
    mc = copy.deepcopy(m).cuda()
    xc = x.cuda()
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):  # cuDNN convs default to TF32
        torch.testing.assert_close(mc(xc).cpu(), ref, rtol=1e-4, atol=1e-4)
    # building the cross kernels (and scattering their gradients back to the small kernels) is
    # deterministic on CUDA: no atomics whose order changes results
    gen = torch.Generator(device="cuda").manual_seed(0)
    w_h, w_v, w_s = mc.cross_kernels()
    g_h, g_v, g_s = (torch.randn(t.shape, device="cuda", generator=gen) for t in (w_h, w_v, w_s))
    grads = []
    for _ in range(2):
        mc.zero_grad()
        w_h, w_v, w_s = mc.cross_kernels()
        ((w_h * g_h).sum() + (w_v * g_v).sum() + (w_s * g_s).sum()).backward()
        grads.append(mc.weight.grad.clone())
    assert torch.equal(grads[0], grads[1])


def test_operator_switches_reach_the_op(monkeypatch):
    """variant / dot_precision / deterministic are module arguments passed to every cross_conv call (and
    through ShiftWiseNet's blocks), not globals."""
    import swtasks.layers.shiftwise as mod

    seen = []
    real = mod.cross_conv

    def spy(*a, **kw):
        seen.append({k: kw.get(k) for k in ("backend", "variant", "dot_precision", "deterministic")})
        return real(*a, **kw)

    monkeypatch.setattr(mod, "cross_conv", spy)
    m = ShiftWiseConv2d(8, 13, backend="torch", variant="tc", dot_precision="tf32x3", deterministic=True).eval()
    m(torch.randn(1, 8, 6, 6))
    m.reparameterize()
    m(torch.randn(1, 8, 6, 6))
    want = {"backend": "torch", "variant": "tc", "dot_precision": "tf32x3", "deterministic": True}
    assert seen == [want, want]
    with pytest.raises(ValueError, match="variant"):
        ShiftWiseConv2d(8, 13, variant="mma")
    with pytest.raises(ValueError, match="dot_precision"):
        ShiftWiseConv2d(8, 13, dot_precision="fp16")
    from swtasks.models.shiftwise_net import ShiftWiseNet

    net = ShiftWiseNet(depths=(1, 1, 1, 1), dims=(8, 8, 8, 8), kernel_sizes=(7, 7, 5, 3), num_classes=0,
                       variant="direct", dot_precision="tf32", deterministic=False)
    ops = [b.large_kernel for st in net.stages for b in st]
    assert all((o.variant, o.dot_precision, o.deterministic) == ("direct", "tf32", False) for o in ops)
    import swtasks

    name = swtasks.list_models("shiftwise*")[0]
    model = swtasks.create_model(name, variant="tc", dot_precision="ieee", deterministic=True)
    ops = [b.large_kernel for st in model.stages for b in st]
    assert ops and all((o.variant, o.dot_precision, o.deterministic) == ("tc", "ieee", True) for o in ops)


@pytest.mark.parametrize("variant", ["tc", "direct"])
def test_triton_layer_matches_torch_layer(variant):
    """The layer through the Triton kernels (interpreted on CPU) equals the PyTorch path, forward and
    backward, and Triton really ran."""
    from swtasks.ops.triton_cross import LAUNCHES

    torch.manual_seed(3)
    ref = randomize_parameters(ShiftWiseConv2d(8, 13, backend="torch"), seed=9)
    tri = copy.deepcopy(ref)
    tri.backend, tri.variant = "triton", variant
    x = torch.randn(2, 8, 9, 7)
    before = sum(n for k, n in LAUNCHES.items() if k.startswith(variant))
    outs = []
    for m in (ref, tri):
        xx = x.clone().requires_grad_()
        y = m(xx)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        outs.append((y.detach(), xx.grad, m.weight.grad))
    assert sum(n for k, n in LAUNCHES.items() if k.startswith(variant)) - before >= 3
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
