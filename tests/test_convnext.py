"""ConvNeXt: sizes, the published checkpoints (`convnext-official`), the doors (recipe: test_peer_recipes.py).

Oracle: the published network (facebookresearch/ConvNeXt models/convnext.py) re-stated compactly below with
its key names and its hand-written channels-first LayerNorm; it shares no code with swtasks.models.convnext.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import assert_checkpointing_is_exact, randomize_parameters, tool

import swtasks
from swtasks.checkpoint import CheckpointMismatchError, load_into
from swtasks.models import param_groups as pg

SMALL = dict(depths=(1, 1, 4, 1), dims=(16, 24, 32, 40))


class RefLN(nn.Module):
    def __init__(self, c, channels_first=False):
        super().__init__()
        self.weight, self.bias, self.cf = nn.Parameter(torch.ones(c)), nn.Parameter(torch.zeros(c)), channels_first

    def forward(self, x):
        if not self.cf:
            return F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, 1e-6)
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        return self.weight[:, None, None] * ((x - u) / torch.sqrt(s + 1e-6)) + self.bias[:, None, None]


class RefBlock(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.dwconv = nn.Conv2d(d, d, 7, padding=3, groups=d)
        self.norm = RefLN(d)
        self.pwconv1, self.act, self.pwconv2 = nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d)
        self.gamma = nn.Parameter(torch.ones(d))

    def forward(self, x):
        y = self.pwconv2(self.act(self.pwconv1(self.norm(self.dwconv(x).permute(0, 2, 3, 1)))))
        return x + (self.gamma * y).permute(0, 3, 1, 2)


class RefConvNeXt(nn.Module):
    def __init__(self, depths, dims, num_classes):
        super().__init__()
        self.downsample_layers = nn.ModuleList([nn.Sequential(nn.Conv2d(3, dims[0], 4, 4), RefLN(dims[0], True))])
        for i in range(3):
            self.downsample_layers.append(nn.Sequential(RefLN(dims[i], True), nn.Conv2d(dims[i], dims[i + 1], 2, 2)))
        self.stages = nn.ModuleList(nn.Sequential(*[RefBlock(dims[i]) for _ in range(depths[i])]) for i in range(4))
        self.norm, self.head = nn.LayerNorm(dims[-1], eps=1e-6), nn.Linear(dims[-1], num_classes)

    def forward(self, x):
        for i in range(4):
            x = self.stages[i](self.downsample_layers[i](x))
        return self.head(self.norm(x.mean([-2, -1])))


def _random_reference(num_classes=7, **arch):
    torch.manual_seed(0)
    return randomize_parameters(RefConvNeXt(num_classes=num_classes, **{**SMALL, **arch}))


def test_published_checkpoint_converts_to_the_same_logits(tmp_path, capsys):
    ref = _random_reference()
    src, out = tmp_path / "convnext_tiny_1k_224_ema.pth", tmp_path / "ours.pth"
    torch.save({"model": ref.state_dict()}, src)  # the published files hold only 'model'
    argv = ["--source", "convnext-official", str(src), str(out), "--model", "convnext_t"]
    argv += [f"--set={k}={v!r}" for k, v in SMALL.items()]
    assert tool("convert_checkpoint").main(argv) == 0
    assert "convnext_t, num_classes=7" in capsys.readouterr().out
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    for path in (out, src):  # the converted file and the published one itself
        ours = swtasks.create_model("convnext_t", num_classes=7, checkpoint_path=path, **SMALL).double().eval()
        with torch.no_grad():
            torch.testing.assert_close(ours(x), ref.double()(x), rtol=1e-10, atol=1e-10)
    # the published dense-task backbones: the same names under 'backbone.', plus norm0..3
    feats = swtasks.create_model("convnext_t", features_only=True, **SMALL)
    det = {f"backbone.{k}": v for k, v in ref.state_dict().items() if not k.startswith(("head.", "norm."))}
    det.update({f"backbone.norm{i}.{p}": torch.ones(SMALL["dims"][i]) for i in range(4) for p in ("weight", "bias")})
    report = load_into(feats, {"state_dict": det}, prefix="backbone.")
    assert report.fits and report.loaded == len(det)


def test_a_file_that_does_not_fit_is_refused_with_the_keys(tmp_path):
    src = tmp_path / "small.pth"
    torch.save({"model": _random_reference(depths=(1, 1, 2, 1)).state_dict()}, src)
    with pytest.raises(CheckpointMismatchError) as err:
        swtasks.create_model("convnext_t", num_classes=7, checkpoint_path=src, **SMALL)
    msg = str(err.value)
    assert "missing keys (18): stages.2.2.gamma, stages.2.2.dwconv.weight" in msg
    assert "the file has depths (1, 1, 2, 1), dims (16, 24, 32, 40)" in msg
    no_ls = {"model": {k: v for k, v in _random_reference().state_dict().items() if not k.endswith(".gamma")}}
    with pytest.raises(CheckpointMismatchError, match="layer_scale_init_value=0"):
        load_into(swtasks.create_model("convnext_t", num_classes=7, **SMALL), no_ls)
    load_into(swtasks.create_model("convnext_t", num_classes=7, layer_scale_init_value=0, **SMALL), no_ls)
    kw = _random_reference().state_dict()
    kw["stages.0.0.gamma"] = torch.ones(1, 16, 1, 1)
    with pytest.raises(ValueError, match="KernelWarehouse ConvNeXt checkpoint"):
        load_into(swtasks.create_model("convnext_t", num_classes=7, **SMALL), {"model": kw})


def test_sizes():
    """ConvNeXt-T/S/B: 28,589,128 / 50,223,688 / 88,591,464 parameters (the published 28.59M / 50.22M / 88.59M;
    exact)."""
    with torch.device("meta"):
        counts = {n: sum(p.numel() for p in swtasks.create_model(n).parameters())
                  for n in ("convnext_t", "convnext_s", "convnext_b")}
    assert counts == {"convnext_t": 28_589_128, "convnext_s": 50_223_688, "convnext_b": 88_591_464}
    assert swtasks.get_data_config("convnext_t")["crop_pct"] == 0.875


def test_doors_features_layer_ids_checkpointing():
    torch.manual_seed(0)
    model = swtasks.create_model("convnext_t", num_classes=5, drop_path_rate=0.1, **SMALL)
    feats = swtasks.create_model("convnext_t", features_only=True, out_indices=(0, 2, 3), **SMALL).eval()
    with torch.no_grad():
        maps = feats(torch.randn(2, 3, 64, 64))
    assert [tuple(m.shape) for m in maps] == [(2, 16, 16, 16), (2, 32, 4, 4), (2, 40, 2, 2)]
    assert feats.feature_info.channels() == [16, 32, 40] and {"norm0.weight", "norm2.weight"} <= set(
        feats.state_dict())
    # ConvNeXt's layout: the downsample_layers/stages rule of swtasks.models.param_groups applies unchanged
    assert pg.model_layer_id_fn(model) is pg.layer_id
    assert pg.layer_id("stages.2.3.pwconv1.weight", 12) == 4 and pg.layer_id("head.weight", 12) is None
    nwd = model.no_weight_decay()
    assert {"stages.0.0.gamma", "stages.0.0.norm.weight", "head.bias"} <= nwd
    assert "stages.0.0.pwconv1.weight" not in nwd
    assert_checkpointing_is_exact(
        lambda: swtasks.create_model("convnext_t", num_classes=5, drop_path_rate=0.1, **SMALL), torch.randn(2, 3, 32, 32))
    assert model.reparameterize() is model
    with pytest.raises(TypeError, match="unknown override for convnext_t: 'kernel_sizes'"):
        swtasks.create_model("convnext_t", kernel_sizes=7)
