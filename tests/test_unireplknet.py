"""UniRepLKNet: the Dilated Reparam Block, the network, its deploy structure and the published checkpoints.

The oracle is a compact re-statement of the published model (AILab-CVC/UniRepLKNet, unireplknet.py) with
its state-dict names: DRB (`lk_origin`, `origin_bn`, `dil_conv_k{k}_{r}`, `dil_bn_k{k}_{r}`), block
(`dwconv`, `norm`, `se`, `pwconv1`, `act`, `pwconv2`, `gamma`), and its re-parameterisation as published
(BN fusion, dilated kernels expanded with a strided transposed convolution, pad and add). It shares no code
with swtasks' layers; the stem/head and the SE/GRN/LayerNorm pieces are test_convert.py's oracle of the
same macro-architecture.
"""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import Perm, RefNet, RefSE, assert_checkpointing_is_exact, images, randomize_parameters

import swtasks
from swtasks.checkpoint import CheckpointMismatchError, load_into
from swtasks.convert import convert_checkpoint_file
from swtasks.layers import DilatedReparamBlock
from swtasks.models.param_groups import layer_id, param_groups
from swtasks.models.unireplknet import default_kernel_sizes

# every block kind: 3x3 conv, 5x5 conv, none (K = 0), DRB 13 / 7 / 11
SMALL = dict(depths=(1, 1, 3, 1), dims=(8, 16, 24, 32), kernel_sizes=(3, 13, (5, 0, 7), 11))
N_CLASSES = 7
DRB_TABLE = {17: ([5, 9, 3, 3, 3], [1, 2, 4, 5, 7]), 15: ([5, 7, 3, 3, 3], [1, 2, 3, 5, 7]),
             13: ([5, 7, 3, 3, 3], [1, 2, 3, 4, 5]), 11: ([5, 5, 3, 3, 3], [1, 2, 3, 4, 5]),
             9: ([5, 5, 3, 3], [1, 2, 3, 4]), 7: ([5, 3, 3], [1, 2, 3]), 5: ([3, 3], [1, 2])}


# ------------------------------------------------------------------------------------------ the oracle


def ref_fuse_bn(weight, bias, bn):
    std = (bn.running_var + bn.eps).sqrt()
    b = 0 if bias is None else bias
    return weight * (bn.weight / std).reshape(-1, 1, 1, 1), bn.bias + (b - bn.running_mean) * bn.weight / std


class RefDRB(nn.Module):
    def __init__(self, c, k):
        super().__init__()
        self.lk_origin = nn.Conv2d(c, c, k, 1, k // 2, groups=c, bias=False)
        self.origin_bn = nn.BatchNorm2d(c)
        self.ks, self.rs = DRB_TABLE[k]
        for kk, r in zip(self.ks, self.rs):
            setattr(self, f"dil_conv_k{kk}_{r}", nn.Conv2d(c, c, kk, 1, (r * (kk - 1) + 1) // 2, dilation=r,
                                                          groups=c, bias=False))
            setattr(self, f"dil_bn_k{kk}_{r}", nn.BatchNorm2d(c))

    def forward(self, x):
        if not hasattr(self, "origin_bn"):
            return self.lk_origin(x)
        out = self.origin_bn(self.lk_origin(x))
        for kk, r in zip(self.ks, self.rs):
            out = out + getattr(self, f"dil_bn_k{kk}_{r}")(getattr(self, f"dil_conv_k{kk}_{r}")(x))
        return out

    def merge_dilated_branches(self):
        k, b = ref_fuse_bn(self.lk_origin.weight, None, self.origin_bn)
        big = k.shape[2]
        for kk, r in zip(self.ks, self.rs):
            bk, bb = ref_fuse_bn(getattr(self, f"dil_conv_k{kk}_{r}").weight, None, getattr(self, f"dil_bn_k{kk}_{r}"))
            dense = F.conv_transpose2d(bk, torch.ones(1, 1, 1, 1, dtype=bk.dtype), stride=r)
            pad = big // 2 - (r * (kk - 1) + 1) // 2
            k, b = k + F.pad(dense, [pad] * 4), b + bb
        c = k.shape[0]
        self.lk_origin = nn.Conv2d(c, c, big, 1, big // 2, groups=c, bias=True).to(k.dtype)
        self.lk_origin.weight.data, self.lk_origin.bias.data = k.detach(), b.detach()
        del self.origin_bn
        for kk, r in zip(self.ks, self.rs):
            delattr(self, f"dil_conv_k{kk}_{r}")
            delattr(self, f"dil_bn_k{kk}_{r}")


class RefGRNwithNHWC(nn.Module):
    def __init__(self, c, use_bias=True):
        super().__init__()
        self.use_bias = use_bias
        self.gamma, self.beta = nn.Parameter(torch.zeros(1, 1, 1, c)), nn.Parameter(torch.zeros(1, 1, 1, c))

    def forward(self, x):
        gx = torch.norm(x, p=2, dim=(1, 2), keepdim=True)
        y = (self.gamma * (gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)) + 1) * x
        return y + self.beta if self.use_bias else y


class RefBlock(nn.Module):
    def __init__(self, dim, k):
        super().__init__()
        if k == 0:
            self.dwconv = nn.Identity()
        elif k >= 7:
            self.dwconv = RefDRB(dim, k)
        else:
            self.dwconv = nn.Conv2d(dim, dim, k, 1, k // 2, groups=dim, bias=False)
        self.norm = nn.Identity() if k == 0 else nn.BatchNorm2d(dim)
        self.se = RefSE(dim)
        self.pwconv1 = nn.Sequential(Perm(0, 2, 3, 1), nn.Linear(dim, 4 * dim))
        self.act = nn.Sequential(nn.GELU(), RefGRNwithNHWC(4 * dim))
        self.pwconv2 = nn.Sequential(nn.Linear(4 * dim, dim, bias=False), Perm(0, 3, 1, 2), nn.BatchNorm2d(dim))
        self.gamma = nn.Parameter(1e-6 * torch.ones(dim))

    def forward(self, x):
        y = self.pwconv2(self.act(self.pwconv1(self.se(self.norm(self.dwconv(x))))))
        return x + (y if self.gamma is None else self.gamma.view(1, -1, 1, 1) * y)

    def reparameterize(self):
        """The published block re-parameterisation, re-stated."""
        if isinstance(self.dwconv, RefDRB):
            self.dwconv.merge_dilated_branches()
        if isinstance(self.norm, nn.BatchNorm2d):
            conv = self.dwconv.lk_origin if isinstance(self.dwconv, RefDRB) else self.dwconv
            w, b = ref_fuse_bn(conv.weight, conv.bias, self.norm)
            new = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, padding=conv.padding,
                            groups=conv.groups, bias=True).to(w.dtype)
            new.weight.data, new.bias.data = w.detach(), b.detach()
            if isinstance(self.dwconv, RefDRB):
                self.dwconv.lk_origin = new
            else:
                self.dwconv = new
            self.norm = nn.Identity()
        scale = self.gamma.data
        self.gamma = None
        linear, bn, grn = self.pwconv2[0], self.pwconv2[2], self.act[1]
        std = (bn.running_var + bn.eps).sqrt()
        new = nn.Linear(linear.in_features, linear.out_features).to(linear.weight.dtype)
        new.weight.data = (linear.weight * (bn.weight / std * scale).view(-1, 1)).detach()
        proj = (linear.weight @ grn.beta.view(-1, 1)).squeeze(1)
        new.bias.data = ((bn.bias + (proj - bn.running_mean) * bn.weight / std) * scale).detach()
        del grn.beta
        grn.use_bias = False
        self.pwconv2 = nn.Sequential(new, self.pwconv2[1])


def build_reference(depths, dims, kernel_sizes, num_classes=N_CLASSES):
    net = RefNet(depths=(0, 0, 0, 0), dims=dims, kernel_sizes=(3, 3, 3, 3), num_classes=num_classes)
    net.stages = nn.ModuleList(nn.Sequential(*[RefBlock(dims[i], k) for k in kernel_sizes[i]]) for i in range(4))
    return net


def _per_block(kernel_sizes, depths):
    return [(k,) * d if isinstance(k, int) else tuple(k) for k, d in zip(kernel_sizes, depths)]


def random_reference(seed=0, **cfg):
    cfg = {**SMALL, **cfg}
    net = build_reference(cfg["depths"], cfg["dims"], _per_block(cfg["kernel_sizes"], cfg["depths"]))
    return randomize_parameters(net, seed).double().eval()


def ours(**kw):
    return swtasks.create_model("unireplknet_a", num_classes=N_CLASSES, **{**SMALL, **kw})


# ------------------------------------------------------------------------------------------ DRB


@pytest.mark.parametrize("k", sorted(DRB_TABLE))
def test_drb_matches_the_published_block_and_merges_exactly(k):
    ref = randomize_parameters(RefDRB(4, k), seed=k).double().eval()
    drb = DilatedReparamBlock(4, k).double().eval()
    drb.load_state_dict(ref.state_dict())
    assert [(kk, r) for kk, r in drb.branches] == list(zip(*DRB_TABLE[k]))
    x = torch.randn(2, 4, 23, 19, dtype=torch.float64)
    y = ref(x)
    torch.testing.assert_close(drb(x), y, rtol=0, atol=1e-12)
    drb.reparameterize()
    assert drb.deploy and [n for n, _ in drb.named_parameters()] == ["lk_origin.weight", "lk_origin.bias"]
    torch.testing.assert_close(drb(x), y, rtol=0, atol=1e-12)
    ref.merge_dilated_branches()  # the published merge gives the same kernel
    torch.testing.assert_close(drb.lk_origin.weight, ref.lk_origin.weight, rtol=0, atol=1e-13)
    deployed = DilatedReparamBlock(4, k, deploy=True).double().eval()
    deployed.load_state_dict(drb.state_dict())
    torch.testing.assert_close(deployed(x), y, rtol=0, atol=1e-12)


def test_drb_rejects_unknown_sizes():
    with pytest.raises(ValueError, match="kernel_size must be one of"):
        DilatedReparamBlock(4, 21)


# ------------------------------------------------------------------------------------------ variants


PUBLISHED_M = {"a": 4.4, "f": 6.2, "p": 10.7, "n": 18.3, "t": 31, "s": 56, "b": 98, "l": 218, "xl": 386}


def _count(m):
    return sum(p.numel() for p in m.parameters())


def test_parameter_counts_match_the_published_implementation_and_figures():
    """The published figures count the deploy (inference) structure. Exact against the oracle's training and
    re-parameterised structure for A and T (built on the meta device: no memory, no init cost)."""
    with torch.device("meta"):
        for v, published in PUBLISHED_M.items():
            train = swtasks.create_model(f"unireplknet_{v}")
            deploy = swtasks.create_model(f"unireplknet_{v}", deploy=True)
            assert abs(_count(deploy) / 1e6 - published) <= 0.01 * published, (v, _count(deploy))
            if v in ("a", "t"):
                cfg = swtasks.models.UNIREPLKNET_ARCHS[v]
                ref = build_reference(cfg["depths"], cfg["dims"], default_kernel_sizes(cfg["depths"]), 1000)
                assert _count(train) == _count(ref), v
                for m in ref.modules():
                    if isinstance(m, RefBlock):
                        m.reparameterize()
                assert _count(deploy) == _count(ref), v
    assert default_kernel_sizes((3, 3, 18, 3))[2] == (13, 3) * 9
    assert default_kernel_sizes((3, 3, 27, 3))[2] == (13, 3, 3) * 9
    assert default_kernel_sizes((2, 2, 6, 2)) == ((3, 3), (13, 13), (13,) * 6, (13, 13))


def test_kernel_size_errors_are_named():
    with pytest.raises(ValueError, match="no published kernel sizes for depths"):
        swtasks.create_model("unireplknet_a", depths=(1, 1, 1, 1))
    with pytest.raises(ValueError, match=r"kernel_sizes\[2\] has 2 entries for the 3 blocks"):
        ours(kernel_sizes=(3, 13, (13, 3), 7))
    with pytest.raises(ValueError, match="kernel size must be 0, 3, 5 or one of"):
        ours(kernel_sizes=(3, 13, 13, 19))


# ------------------------------------------------------------------------------------------ deploy


def test_reparameterize_is_exact_with_random_statistics(tmp_path):
    ref = random_reference(seed=3)
    model = ours().double().eval()
    model.load_state_dict(ref.state_dict())
    x = images()
    y = ref(x)
    torch.testing.assert_close(model(x), y, rtol=0, atol=1e-11)
    assert model.reparameterize() is model
    torch.testing.assert_close(model(x), y, rtol=0, atol=1e-11)
    keys = model.state_dict().keys()
    assert "stages.1.0.dwconv.lk_origin.bias" in keys and "stages.0.0.dwconv.bias" in keys
    assert not any(".norm." in k or "beta" in k or re.fullmatch(r"stages\.\d+\.\d+\.gamma", k) or "dil_" in k
                   for k in keys)
    # the deploy structure built directly holds the same tensors
    path = tmp_path / "deploy.pth"
    torch.save(model.state_dict(), path)
    deployed = ours(deploy=True).double().eval()
    load_into(deployed, path)
    torch.testing.assert_close(deployed(x), y, rtol=0, atol=1e-11)


# ------------------------------------------------------------------------------------------ published weights


def test_published_file_converts_and_gives_the_same_logits(tmp_path):
    ref = random_reference(seed=5)
    x = images()
    y = ref(x)
    src = tmp_path / "unireplknet_pub.pth"
    torch.save({"model": ref.state_dict(), "epoch": 299}, src)
    out = tmp_path / "converted.pth"
    meta = convert_checkpoint_file(src, out, source="unireplknet-official", model="unireplknet_a", **SMALL)
    assert meta["num_classes"] == N_CLASSES and meta["source"] == "unireplknet-official"
    model = swtasks.create_model("unireplknet_a", num_classes=N_CLASSES, checkpoint_path=out, **SMALL)
    torch.testing.assert_close(model.double().eval()(x), y, rtol=0, atol=1e-11)
    # every loader reads the published file directly as well (plain state dict, as on the model hub)
    torch.save(ref.state_dict(), tmp_path / "plain.pth")
    direct = swtasks.create_model("unireplknet_a", num_classes=N_CLASSES, checkpoint_path=tmp_path / "plain.pth",
                                  **SMALL)
    torch.testing.assert_close(direct.double().eval()(x), y, rtol=0, atol=1e-11)
    # a file the published reparameterize_unireplknet() wrote loads into the deploy structure
    for m in ref.modules():
        if isinstance(m, RefBlock):
            m.reparameterize()
    torch.testing.assert_close(ref(x), y, rtol=0, atol=1e-11)
    torch.save({"model": ref.state_dict()}, tmp_path / "pub_deploy.pth")
    deployed = ours(deploy=True).double().eval()
    assert load_into(deployed, tmp_path / "pub_deploy.pth").fits
    torch.testing.assert_close(deployed(x), y, rtol=0, atol=1e-11)


def test_files_that_do_not_fit_are_refused_with_the_keys(tmp_path):
    ref = random_reference(kernel_sizes=(3, 13, (13, 3, 3), 11))  # stage 3: another kernel pattern
    src = tmp_path / "other.pth"
    torch.save({"model": ref.state_dict()}, src)
    with pytest.raises(CheckpointMismatchError) as err:
        convert_checkpoint_file(src, tmp_path / "out.pth", source="unireplknet-official", model="unireplknet_a", **SMALL)
    msg = str(err.value)
    assert "stages.2.0.dwconv.lk_origin.weight" in msg and "stages.2.0.dwconv.weight" in msg
    assert "kernel sizes are [(3,), (13,), (13, 3, 3), (11,)]" in msg
    assert not (tmp_path / "out.pth").exists()
    # a deploy file for a training-structure model: named, with the hint
    torch.save(ours(deploy=True).state_dict(), tmp_path / "dep.pth")
    with pytest.raises(CheckpointMismatchError, match="create the model with deploy=True"):
        swtasks.create_model("unireplknet_a", num_classes=N_CLASSES, checkpoint_path=tmp_path / "dep.pth", **SMALL)
    # a file of another family is not in this layout
    torch.save(swtasks.create_model("shiftwise_atto", depths=(1, 1, 1, 1)).state_dict(), tmp_path / "sw.pth")
    with pytest.raises(ValueError, match="not in the unireplknet-official layout"):
        convert_checkpoint_file(tmp_path / "sw.pth", tmp_path / "o.pth", source="unireplknet-official",
                                model="unireplknet_a", **SMALL)


# ------------------------------------------------------------------------------------------ doors


def test_features_only_shapes_and_info():
    model = ours(features_only=True, out_indices=(0, 2, 3)).eval()
    outs = model(torch.randn(2, 3, 64, 96))
    assert [tuple(o.shape) for o in outs] == [(2, 8, 16, 24), (2, 24, 4, 6), (2, 32, 2, 3)]
    assert model.feature_info.channels() == [8, 24, 32] and model.feature_info.reduction() == [4, 16, 32]
    assert model.head is None and {"norm0", "norm2", "norm3"} <= {n for n, _ in model.named_children()}
    with pytest.raises(RuntimeError, match="no classifier"):
        model.reset_classifier(3)
    with pytest.raises(ValueError, match="out_indices"):
        ours(features_only=True, out_indices=(0, 4))
    cls = ours().eval()
    cls.reset_classifier(0)
    assert cls(torch.randn(1, 3, 32, 32)).shape == (1, 32)
    with pytest.raises(ValueError, match="smaller than the network's total stride"):
        cls(torch.randn(1, 3, 16, 16))


def test_grad_checkpointing_gives_identical_outputs_grads_and_statistics():
    assert_checkpointing_is_exact(lambda: ours(drop_path_rate=0.3), torch.randn(2, 3, 64, 64))


def test_weight_decay_and_layer_ids():
    model = ours()
    nwd = model.no_weight_decay()
    assert {"stages.0.0.gamma", "stages.0.0.act.1.gamma", "stages.0.0.act.1.beta", "stages.1.0.dwconv.origin_bn.weight",
            "downsample_layers.0.1.weight", "head.bias"} <= nwd
    assert not nwd & {"stages.1.0.dwconv.lk_origin.weight", "stages.0.0.pwconv1.1.weight", "head.weight"}
    # the ConvNeXt/UniRepLKNet layer-id rule applies by name
    assert layer_id("downsample_layers.0.0.weight") == 0 and layer_id("stages.0.0.dwconv.weight") == 1
    assert layer_id("stages.2.2.dwconv.lk_origin.weight") == 3 and layer_id("stages.3.0.gamma") == 12
    groups = param_groups(model, lr=1.0, weight_decay=0.05, layer_decay=0.5)
    by_name = {n: g for g in groups for n in g["names"]}
    assert by_name["downsample_layers.0.0.weight"]["lr_scale"] == 0.5**13
    assert by_name["stages.1.0.dwconv.dil_conv_k5_1.weight"]["lr_scale"] == 0.5**11
    assert by_name["head.weight"]["lr_scale"] == 1.0 and by_name["stages.0.0.gamma"]["weight_decay"] == 0.0
