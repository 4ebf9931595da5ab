"""SLaK: the decomposed large-kernel conv, the network, its deploy structure, the published checkpoints and
the unstructured dynamic sparsity.

The oracle is a compact re-statement of the published model (VITA-Group/SLaK, SLaK.py with `LoRA=True` /
`Decom=True`) with its state-dict names: `large_kernel.LoRA1/LoRA2/small_conv.{conv,bn}`, the ConvNeXt
stem/downsampling (`downsample_layers`), `norm`/`pwconv1`/`pwconv2`/`gamma` blocks, `norm`/`head`. Its
padding rule is the published `get_conv2d`'s (half of each kernel dimension). It shares no code with
swtasks; the channels-first LayerNorm is test_convert.py's oracle piece.
"""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import RefLayerNormCF, assert_checkpointing_is_exact, images, randomize_parameters, tool

import swtasks
from swtasks.checkpoint import CheckpointMismatchError, load_into
from swtasks.convert import convert_checkpoint_file
from swtasks.layers import DecomposedLargeKernelConv
from swtasks.models.param_groups import param_groups
from swtasks.sparse import UnstructuredSparsity, apply_weight_masks, masks_from_zero_weights
from swtasks.sparse.unstructured import erk_densities, maskable_layers, weight_masks

SMALL = dict(depths=(1, 1, 2, 1), dims=(10, 20, 30, 40), kernel_sizes=(13, 11, 9, 5))  # x1.3: 13/26/39/52
N_CLASSES = 7


# ------------------------------------------------------------------------------------------ the oracle


def ref_conv_bn(c, kernel):
    k = kernel if isinstance(kernel, tuple) else (kernel, kernel)
    conv = nn.Conv2d(c, c, k, 1, (k[0] // 2, k[1] // 2), 1, c, bias=False)
    return nn.Sequential(OrderedDict(conv=conv, bn=nn.BatchNorm2d(c)))


class RefLargeKernel(nn.Module):
    def __init__(self, c, big, small):
        super().__init__()
        self.LoRA1, self.LoRA2 = ref_conv_bn(c, (big, small)), ref_conv_bn(c, (small, big))
        if small < big:
            self.small_conv = ref_conv_bn(c, small)

    def forward(self, x):
        out = self.LoRA1(x) + self.LoRA2(x)
        return out + self.small_conv(x) if hasattr(self, "small_conv") else out


class RefBlock(nn.Module):
    def __init__(self, dim, big, small):
        super().__init__()
        self.large_kernel = RefLargeKernel(dim, big, small)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1, self.act, self.pwconv2 = nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(1e-6 * torch.ones(dim))

    def forward(self, x):
        y = self.pwconv2(self.act(self.pwconv1(self.norm(self.large_kernel(x).permute(0, 2, 3, 1)))))
        return x + (self.gamma * y).permute(0, 3, 1, 2)


class RefSLaK(nn.Module):
    def __init__(self, depths, dims, kernel_sizes, width_factor=1.3, small=5, num_classes=N_CLASSES):
        super().__init__()
        dims = [int(d * width_factor) for d in dims]
        self.downsample_layers = nn.ModuleList([nn.Sequential(nn.Conv2d(3, dims[0], 4, 4), RefLayerNormCF(dims[0]))])
        for i in range(3):
            self.downsample_layers.append(nn.Sequential(RefLayerNormCF(dims[i]), nn.Conv2d(dims[i], dims[i + 1], 2, 2)))
        self.stages = nn.ModuleList(
            nn.Sequential(*[RefBlock(dims[i], kernel_sizes[i], small) for _ in range(depths[i])]) for i in range(4))
        self.norm, self.head = nn.LayerNorm(dims[-1], eps=1e-6), nn.Linear(dims[-1], num_classes)

    def forward(self, x):
        for i in range(4):
            x = self.stages[i](self.downsample_layers[i](x))
        return self.head(self.norm(x.mean([-2, -1])))


def ours(**kw):
    return swtasks.create_model("slak_t", num_classes=N_CLASSES, **{**SMALL, **kw})


# ------------------------------------------------------------------------------------------ the layer


@pytest.mark.parametrize("big", [5, 7, 13, 51])
def test_decomposed_conv_matches_the_published_one_and_merges_exactly(big):
    ref = randomize_parameters(RefLargeKernel(3, big, 5), seed=big).double().eval()
    layer = DecomposedLargeKernelConv(3, big, 5).double().eval()
    layer.load_state_dict(ref.state_dict())
    assert layer.has_small_conv == (big > 5)
    x = torch.randn(2, 3, 23, 26, dtype=torch.float64)
    y = ref(x)
    torch.testing.assert_close(layer(x), y, rtol=0, atol=1e-12)
    kernel, bias = layer.equivalent_kernel_bias()  # the dense K x K form
    torch.testing.assert_close(F.conv2d(x, kernel, bias, padding=big // 2, groups=3), y, rtol=0, atol=1e-12)
    layer.reparameterize()
    assert sorted(n for n, _ in layer.named_parameters()) == ["reparam1.bias", "reparam1.weight", "reparam2.weight"]
    assert layer.reparam1.weight.shape == (3, 1, big, 5) and layer.reparam2.weight.shape == (3, 1, 5, big)
    torch.testing.assert_close(layer(x), y, rtol=0, atol=1e-12)
    deployed = DecomposedLargeKernelConv(3, big, 5, deploy=True).double().eval()
    deployed.load_state_dict(layer.state_dict())
    torch.testing.assert_close(deployed(x), y, rtol=0, atol=1e-12)


def test_decomposed_conv_rejects_bad_kernels():
    with pytest.raises(ValueError, match="small_kernel .* must not exceed kernel_size"):
        DecomposedLargeKernelConv(4, 3, 5)
    with pytest.raises(ValueError, match="kernel_size must be a positive odd int"):
        DecomposedLargeKernelConv(4, 50)
    with pytest.raises(ValueError, match="SLaK stage 0: .*odd"):
        ours(kernel_sizes=(12, 11, 9, 5))


# ------------------------------------------------------------------------------------------ variants


def test_parameter_counts_and_widths():
    """Published figures (30M / 55M / 95M, whole millions) count the nonzero weights at the published 40%
    sparsity (every conv and linear weight masked; norms, biases and layer scales dense): 30.47M / 54.78M /
    94.91M round to them (T is 1.6% above its rounded figure). The dense count of T equals the oracle's
    exactly (50,703,838)."""
    published = {"t": 30, "s": 55, "b": 95}
    with torch.device("meta"):
        for v, figure in published.items():
            model = swtasks.create_model(f"slak_{v}")
            total = sum(p.numel() for p in model.parameters())
            if v == "t":
                cfg = swtasks.models.SLAK_ARCHS[v]
                ref = RefSLaK(cfg["depths"], cfg["dims"], cfg["kernel_sizes"], num_classes=1000)
                assert total == sum(p.numel() for p in ref.parameters()) == 50_703_838
            masked = sum(m.weight.numel() for m in maskable_layers(model).values())
            nonzero = total - 0.4 * masked
            assert round(nonzero / 1e6) == figure, (v, total, nonzero)  # T 30.47M, S 54.78M, B 94.91M
            deploy = swtasks.create_model(f"slak_{v}", deploy=True)
            C = sum(d * n for d, n in zip(model.dims, model.depths))
            assert total - sum(p.numel() for p in deploy.parameters()) == 5 * 5 * C + 5 * C  # 5x5 + BN - bias
    assert swtasks.create_model("slak_t", num_classes=0).dims == (124, 249, 499, 998)
    assert swtasks.create_model("slak_b", num_classes=0, depths=(1, 1, 1, 1)).dims == (166, 332, 665, 1331)


# ------------------------------------------------------------------------------------------ deploy, weights


def test_reparameterize_and_published_file_give_the_same_logits(tmp_path, capsys):
    ref = randomize_parameters(RefSLaK(**SMALL), seed=4).double().eval()
    x = images()
    y = ref(x)
    src = tmp_path / "slak_pub.pth"
    torch.save({"model": ref.state_dict(), "epoch": 299}, src)
    out = tmp_path / "converted.pth"
    argv = ["--source", "slak-official", str(src), str(out), "--model", "slak_t"]
    assert tool("convert_checkpoint").main(argv + [f"--set={k}={v!r}" for k, v in SMALL.items()]) == 0  # the command line
    assert f"slak_t, num_classes={N_CLASSES}" in capsys.readouterr().out
    meta = torch.load(out, weights_only=True)["meta"]
    assert meta["num_classes"] == N_CLASSES and meta["source"] == "slak-official"
    model = swtasks.create_model("slak_t", num_classes=N_CLASSES, checkpoint_path=out, **SMALL).double().eval()
    torch.testing.assert_close(model(x), y, rtol=0, atol=1e-11)
    assert model.reparameterize() is model
    torch.testing.assert_close(model(x), y, rtol=0, atol=1e-11)
    torch.save(model.state_dict(), tmp_path / "deploy.pth")
    deployed = ours(deploy=True).double().eval()
    load_into(deployed, tmp_path / "deploy.pth")
    torch.testing.assert_close(deployed(x), y, rtol=0, atol=1e-11)
    # the repository's earlier spelling of the branches (Decom1/Decom2) converts too
    old = {k.replace(".LoRA1.", ".Decom1.").replace(".LoRA2.", ".Decom2."): v for k, v in ref.state_dict().items()}
    torch.save({"model": old}, tmp_path / "old.pth")
    again = swtasks.create_model("slak_t", num_classes=N_CLASSES, checkpoint_path=tmp_path / "old.pth", **SMALL)
    torch.testing.assert_close(again.double().eval()(x), y, rtol=0, atol=1e-11)


def test_files_that_do_not_fit_are_refused_with_the_keys(tmp_path):
    sd = dict(randomize_parameters(RefSLaK(**SMALL)).double().state_dict())
    # a non-decomposed SLaK (one dense K x K kernel per block) in block 1 of stage 2 (39 channels, K = 9)
    p = "stages.2.1.large_kernel."
    for key in [k for k in sd if k.startswith(p + "LoRA")]:
        leaf, value = key.split(".", 5)[-1], sd.pop(key)
        sd[p + "lkb_origin." + leaf] = torch.zeros(39, 1, 9, 9) if leaf == "conv.weight" else value
    torch.save({"model": sd}, tmp_path / "dense_lk.pth")
    with pytest.raises(CheckpointMismatchError) as err:
        convert_checkpoint_file(tmp_path / "dense_lk.pth", tmp_path / "o.pth", source="slak-official", model="slak_t",
                                **SMALL)
    msg = str(err.value)
    assert "stages.2.1.large_kernel.LoRA1.conv.weight" in msg and "stages.2.1.large_kernel.lkb_origin.conv.weight" in msg
    assert "non-decomposed SLaK" in msg and "big kernels [13, 11, 9, 5]" in msg
    assert not (tmp_path / "o.pth").exists()
    with pytest.raises(CheckpointMismatchError, match="mis-shaped"):  # other widths
        swtasks.create_model("slak_t", num_classes=N_CLASSES, checkpoint_path=tmp_path / "dense_lk.pth",
                             **{**SMALL, "width_factor": 1.0})


# ------------------------------------------------------------------------------------------ doors


def test_features_only_grad_checkpointing_and_layer_ids():
    model = ours(features_only=True, out_indices=(1, 3)).eval()
    outs = model(torch.randn(1, 3, 64, 96))
    assert [tuple(o.shape) for o in outs] == [(1, 26, 8, 12), (1, 52, 2, 3)]
    assert model.feature_info.channels() == [26, 52] and model.feature_info.reduction() == [8, 32]
    a = assert_checkpointing_is_exact(lambda: ours(drop_path_rate=0.3), torch.randn(2, 3, 64, 64))
    nwd = a.no_weight_decay()
    assert {"stages.0.0.gamma", "stages.0.0.large_kernel.LoRA1.bn.weight", "stages.0.0.norm.weight"} <= nwd
    assert "stages.0.0.large_kernel.LoRA1.conv.weight" not in nwd
    groups = param_groups(a, lr=1.0, weight_decay=0.05, layer_decay=0.7, num_layers=6)
    scale = {n: g["lr_scale"] for g in groups for n in g["names"]}
    assert scale["downsample_layers.0.0.weight"] == pytest.approx(0.7**7)
    assert scale["stages.2.1.large_kernel.LoRA2.conv.weight"] == pytest.approx(0.7**4)
    assert scale["downsample_layers.3.1.weight"] == pytest.approx(0.7) and scale["head.weight"] == 1.0
    stage = {n: g["lr_scale"] for g in param_groups(a, lr=1.0, weight_decay=0.05, layer_decay=0.9,
                                                        decay_type="stage_wise", num_layers=6) for n in g["names"]}
    assert stage["downsample_layers.2.1.weight"] == pytest.approx(0.9**7)
    assert stage["stages.1.0.pwconv1.weight"] == pytest.approx(0.9**5) and stage["norm.weight"] == 1.0


# ------------------------------------------------------------------------------------------ sparsity


def _tiny_slak():
    torch.manual_seed(0)
    return swtasks.create_model("slak_t", num_classes=5, depths=(1, 1, 1, 1), dims=(8, 16, 24, 32),
                                width_factor=1.0, kernel_sizes=(7, 7, 5, 5))


def test_unstructured_sparsity_snip_prune_regrow_and_optimizer_state():
    model = _tiny_slak()
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 5, (4,))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sp = UnstructuredSparsity(model, sparsity=0.5, total_steps=10, update_interval=2, prune_rate=0.5)
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    densities = sp.init_masks((x, y), F.cross_entropy, optimizer=opt)
    assert all(torch.equal(b, buffers[n]) for n, b in model.named_buffers() if n in buffers)  # BN stats kept
    assert all(p.grad is None for p in model.parameters())
    assert set(densities) == set(maskable_layers(model)) and 0.4 < sp.density() < 0.65
    assert sp.masks and all(m.dtype == torch.bool for m in sp.masks.values())
    assert "stages.0.0.pwconv1.weight_mask" in model.state_dict()
    counts = {n: int(m.sum()) for n, m in sp.masks.items()}
    for step in range(1, 5):
        before = {n: m.clone() for n, m in sp.masks.items()}
        F.cross_entropy(model.train()(x), y).backward()
        opt.step()
        opt.zero_grad()
        sp.step(opt)
        for name, mask in sp.masks.items():
            w = sp.layers[name].weight
            assert not w[~mask].any(), name
            assert int(mask.sum()) == counts[name], name  # regrowth keeps the count
        if step % 2 == 0:
            assert any(not torch.equal(before[n], m) for n, m in sp.masks.items())
            for name, mask in sp.masks.items():
                grown = mask & ~before[name]
                w = sp.layers[name].weight
                assert not w[grown].any() and not opt.state[w]["exp_avg"][grown].any(), name
        else:
            assert all(torch.equal(before[n], m) for n, m in sp.masks.items())
    assert sp.current_prune_rate(10) == pytest.approx(0.005) and sp.current_prune_rate(0) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="no paths to align"):
        UnstructuredSparsity(model, total_steps=10, align_interval=100)


def test_sparsity_resumes_exactly_and_masks_round_trip_through_checkpoints(tmp_path):
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 5, (4,))

    def run(model, opt, sp, steps):
        for _ in range(steps):
            F.cross_entropy(model.train()(x), y).backward()
            opt.step()
            opt.zero_grad()
            sp.step(opt)

    def fresh():
        model = _tiny_slak()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        return model, opt, UnstructuredSparsity(model, sparsity=0.5, total_steps=8, update_interval=2, init="erk")

    a, opt_a, sp_a = fresh()
    sp_a.init_masks(optimizer=opt_a)
    run(a, opt_a, sp_a, 4)
    b, opt_b, sp_b = fresh()
    sp_b.init_masks(optimizer=opt_b)
    run(b, opt_b, sp_b, 2)
    torch.save({"model": b.state_dict(), "opt": opt_b.state_dict(), "sparsity": sp_b.state_dict()}, tmp_path / "c.pt")
    c, opt_c, _ = fresh()
    ck = torch.load(tmp_path / "c.pt", weights_only=True)
    c.load_state_dict(ck["model"])  # strict: the mask buffers are created while loading
    opt_c.load_state_dict(ck["opt"])
    sp_c = UnstructuredSparsity(c, sparsity=0.5, total_steps=8, update_interval=2, init="erk")
    assert sp_c.initialized  # adopted from the loaded buffers
    sp_c.load_state_dict(ck["sparsity"])
    run(c, opt_c, sp_c, 2)
    resumed = c.state_dict()
    assert resumed.keys() == a.state_dict().keys()
    for n, t in a.state_dict().items():
        torch.testing.assert_close(resumed[n], t, rtol=0, atol=0, msg=n)
    # create_model reads the sparse file with its masks; a dense file clears them
    torch.save(a.state_dict(), tmp_path / "sparse.pth")
    kw = dict(num_classes=5, depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), width_factor=1.0, kernel_sizes=(7, 7, 5, 5))
    loaded = swtasks.create_model("slak_t", checkpoint_path=tmp_path / "sparse.pth", **kw)
    assert weight_masks(loaded).keys() == sp_a.masks.keys()
    torch.save(swtasks.create_model("slak_t", **kw).state_dict(), tmp_path / "dense.pth")
    load_into(loaded, tmp_path / "dense.pth")
    assert not weight_masks(loaded)


def test_fixed_pattern_from_zero_weights_and_erk():
    model = _tiny_slak()
    w = model.stages[0][0].pwconv1.weight
    with torch.no_grad():
        w[:, ::2] = 0
    masks = masks_from_zero_weights(model)
    assert list(masks) == ["stages.0.0.pwconv1"]
    with torch.no_grad():
        w.add_(1.0)
    apply_weight_masks(model)
    assert not w[:, ::2].any() and bool(w[:, 1::2].all())
    shapes = {"a": (64, 64), "b": (8, 1, 7, 7), "c": (4, 4)}
    dens = erk_densities(shapes, 0.3)
    sizes = {"a": 4096, "b": 392, "c": 16}
    assert sum(dens[n] * sizes[n] for n in shapes) == pytest.approx(0.3 * sum(sizes.values()))
    assert dens["c"] == 1.0 and dens["a"] < dens["b"] < 1.0
