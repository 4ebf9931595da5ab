"""KernelWarehouse: the KW layers and warehouse manager, the kw_* networks, the plain torchvision baselines,
the published checkpoints (`kernelwarehouse-official`) and the temperature schedule.

Oracles, independent of swtasks' KW code:
- the published models (OSVAI/KernelWarehouse modules/kernel_warehouse.py, models/kw_resnet.py,
  kw_mobilenetv2.py, kw1d2x_mobilenetv2.py, kw_convnext.py) re-stated compactly below: their key names,
  warehouse naming and sharing (the configs' `sharing_range` strings read character by character, as the
  published code does), GCD cells, cell ranges, one-hot temperature init, non-local basis and attention;
  the kernel of every sample is assembled cell by cell in a loop and run with F.conv (no reshape/permute
  shared with the implementation);
- torchvision's own ResNet / MobileNetV2 for the plain baselines;
- a kernel assembled in the test from the assigned cells for "a KW layer at temperature 1 is a static conv".
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import assert_checkpointing_is_exact, randomize_parameters, tool

import swtasks
from swtasks.checkpoint import CheckpointMismatchError
from swtasks.layers.kernel_warehouse import KWConv2d, WarehouseManager
from swtasks.models import param_groups as pg

# ------------------------------------------------------------------------------------------------------
# the oracle: the published KernelWarehouse models, re-stated
# ------------------------------------------------------------------------------------------------------


def _rep(x, n):
    if isinstance(x, (list, tuple)):
        return list(x) if len(x) == n else list(x) * n
    return [x] * n


class RefAttention(nn.Module):
    def __init__(self, cin, reduction, n, m, norm, ratio, basis_ratio, start):
        super().__init__()
        hidden = max(int(cin * reduction), 16)
        self.P, self.m, self.start = n + 1, m, start
        self.L = int(ratio * m)
        self.NL = n - self.L
        self.fc1 = nn.Linear(cin, hidden, bias=norm is not nn.BatchNorm1d)
        self.norm1 = norm(hidden)
        self.act1 = nn.ReLU()
        self.basis = basis_ratio < 1
        if self.basis:
            self.NB = max(int(self.NL * basis_ratio), 16)
            self.fc2 = nn.Linear(hidden, (self.L + self.NB + 1) * m, bias=False)
            self.fc3 = nn.Linear(self.NB, self.NL, bias=False)
            self.basis_bias = nn.Parameter(torch.zeros(self.P * m))
        else:
            self.fc2 = nn.Linear(hidden, self.P * m)
        self.temp_bias = torch.zeros(self.P * m)
        self.temp_value = 0.0

    def init_temperature(self, start, ratio):
        if ratio >= 1:
            for idx in range(self.m):
                self.temp_bias[idx * self.P + start] = 1
                start += int(ratio)
            return start
        k = int(1.0 / ratio)
        for idx in range(self.m):
            if idx % k == (idx // k) % k:
                self.temp_bias[idx * self.P + start] = 1
                start += 1
            else:
                self.temp_bias[idx * self.P + self.P - 1] = 1
        return start

    def forward(self, x):
        x = x.reshape(*x.shape[:2], -1).mean(-1)
        x = self.fc2(self.act1(self.norm1(self.fc1(x))))
        if self.basis:
            x = x.reshape(-1, self.L + self.NB + 1)
            loc, nl, zero = x[:, : self.L], self.fc3(x[:, self.L : -1]), x[:, -1:]
            x = torch.cat([nl[:, : self.start], loc, nl[:, self.start :], zero], 1)
            x = x.reshape(-1, self.P * self.m) + self.basis_bias
        x = x.reshape(-1, self.P)
        x = x / (x.abs().sum(1).view(-1, 1) + 1e-3)
        t = self.temp_value
        x = (1 - t) * x.reshape(-1, self.P * self.m) + t * self.temp_bias.to(x).view(1, -1)
        return x.reshape(-1, self.P)[:, :-1]


class RefKWConv(nn.Module):
    def __init__(self, cin, cout, k, stride, padding, groups, bias, dim, wid, mgr):
        super().__init__()
        self.cin, self.cout, self.groups, self.dim = cin, cout, groups, dim
        self.k, self.stride, self.padding = (k,) * dim, stride, padding
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None
        self.wid, self.mgr = wid, [mgr]

    def init_attention(self, cells, start, reduction, ratio, norm, basis):
        co, ci = cells.shape[1], cells.shape[2]
        self.go, self.gi = self.cout // co, self.cin // ci // self.groups
        self.gs = math.prod(self.k)
        self.m = self.gs * self.go * self.gi
        self.attention = RefAttention(self.cin, reduction, cells.shape[0], self.m, norm, ratio, basis, start)
        return self.attention.init_temperature(start, ratio)

    def forward(self, x):
        att = self.attention(x)
        cells = self.mgr[0].weights[self.wid]
        n, co, ci = cells.shape[:3]
        mix = (att @ cells.reshape(n, -1).to(att)).reshape(x.shape[0], self.m, co, ci)
        conv = F.conv2d if self.dim == 2 else F.conv1d
        outs = []
        for b in range(x.shape[0]):
            w = x.new_zeros(self.cout, self.cin // self.groups, *self.k)
            for idx in range(self.m):  # mixture order: (spatial position, output group, input group)
                s, rest = divmod(idx, self.go * self.gi)
                o, i = divmod(rest, self.gi)
                pos = tuple(int(p) for p in np.unravel_index(s, self.k))
                w[(slice(o * co, (o + 1) * co), slice(i * ci, (i + 1) * ci), *pos)] = mix[b, idx]
            outs.append(conv(x[b : b + 1], w, self.bias, self.stride, self.padding, 1, self.groups))
        return torch.cat(outs)


class RefKWLinear(nn.Module):
    def __init__(self, *args):
        super().__init__()
        self.conv = RefKWConv(*args)

    def forward(self, x):
        return self.conv(x.reshape(x.shape[0], -1, x.shape[-1]).transpose(1, 2)).transpose(1, 2).reshape(
            x.shape[0], -1)


class RefManager(nn.Module):
    def __init__(self, reduction, num, inp, outp, sharing, basis=1.0, norm=nn.BatchNorm1d):
        super().__init__()
        self.cfg = dict(reduction=reduction, num=num, inp=inp, outp=outp)
        self.sharing, self.basis, self.norm = sharing, basis, norm
        self.shapes: dict[str, list] = {}

    def reserve(self, cin, cout, k=1, stride=1, padding=0, groups=1, bias=True, name="", enabled=True,
                linear=False):
        if not enabled:
            return nn.Linear(cin, cout, bias=bias) if linear else nn.Conv2d(cin, cout, k, stride, padding,
                                                                             groups=groups, bias=bias)
        fused = []
        for sub in name.split("_"):
            for s in self.sharing:  # a string is read character by character, like the published code
                if sub.startswith(s):
                    sub = s
            fused.append(sub)
        name = "_".join(fused)
        self.shapes.setdefault(name, []).append([cout, cin // groups] + [k] * (1 if linear else 2))
        wid = list(self.shapes).index(name)
        if linear:
            return RefKWLinear(cin, cout, 1, 1, 0, 1, bias, 1, wid, self)
        return RefKWConv(cin, cout, k, stride, padding, groups, bias, 2, wid, self)

    def store(self):
        nw = len(self.shapes)
        c = {k: _rep(v, nw) for k, v in self.cfg.items()}
        self.c = c
        self.weights = nn.ParameterList()
        for idx, layers in enumerate(self.shapes.values()):
            og, ig = layers[0][0], layers[0][1]
            for lay in layers:
                og, ig = math.gcd(og, lay[0]), math.gcd(ig, lay[1])
            ci, co = max(int(ig * c["inp"][idx]), 1), max(int(og * c["outp"][idx]), 1)
            total = sum(int(lay[0] // co * lay[1] // ci) * math.prod(lay[2:]) for lay in layers)
            self.weights.append(nn.Parameter(torch.randn(max(int(total * c["num"][idx]), 1), co, ci,
                                                         *[1] * (len(layers[0]) - 2))))

    def allocate(self, net):
        ends = [0] * len(self.weights)
        for layer in net.modules():
            if isinstance(layer, RefKWConv):
                w = layer.wid
                ends[w] = layer.init_attention(self.weights[w], ends[w], self.c["reduction"][w], self.c["num"][w],
                                               self.norm, self.basis)
        assert ends == [w.shape[0] for w in self.weights]


class RefBasic(nn.Module):
    expansion = 1

    def __init__(self, inp, planes, stride, down, stage, li, mgr, handover):
        super().__init__()
        s1 = max(stage - 1 if handover else stage, 0)
        self.conv1 = mgr.reserve(inp, planes, 3, stride, 1, bias=False, name=f"stage{s1}_layer{li}_conv0")
        self.bn1, self.relu = nn.BatchNorm2d(planes), nn.ReLU()
        li = 0 if handover else li
        self.conv2 = mgr.reserve(planes, planes, 3, 1, 1, bias=False, name=f"stage{stage}_layer{li}_conv1")
        self.bn2, self.downsample = nn.BatchNorm2d(planes), down

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class RefBottleneck(nn.Module):
    expansion = 4

    def __init__(self, inp, planes, stride, down, stage, li, mgr, handover):
        super().__init__()
        s1 = stage - 1 if handover else stage
        self.conv1 = mgr.reserve(inp, planes, 1, bias=False, name=f"stage{s1}_layer{li}_conv0", enabled=s1 >= 0)
        self.bn1 = nn.BatchNorm2d(planes)
        li = 0 if handover else li
        self.conv2 = mgr.reserve(planes, planes, 3, stride, 1, bias=False, name=f"stage{stage}_layer{li}_conv1")
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = mgr.reserve(planes, planes * 4, 1, bias=False, name=f"stage{stage}_layer{li}_conv2")
        self.bn3, self.relu, self.downsample = nn.BatchNorm2d(planes * 4), nn.ReLU(), down

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn3(self.conv3(self.relu(self.bn2(self.conv2(out)))))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class RefResNet(nn.Module):
    def __init__(self, block, layers, num_classes, mgr):
        super().__init__()
        self.warehouse_manager = mgr
        self.conv1, self.bn1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64)
        self.relu, self.maxpool = nn.ReLU(), nn.MaxPool2d(3, 2, 1)
        inp, li = 64, 0
        for s, (planes, n) in enumerate(zip((64, 128, 256, 512), layers)):
            stride = 1 if s == 0 else 2
            down = None
            if stride != 1 or inp != planes * block.expansion:
                down = nn.Sequential(mgr.reserve(inp, planes * block.expansion, 1, stride, 0, bias=False,
                                                 name=f"stage{s - 1}_layer{li + 1}_conv0", enabled=stride != 1),
                                     nn.BatchNorm2d(planes * block.expansion))
            blocks = [block(inp, planes, stride, down, s, li, mgr, True)]
            li, inp = 1, planes * block.expansion
            for _ in range(1, n):
                blocks.append(block(inp, planes, 1, None, s, li, mgr, False))
                li += 1
            setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(inp, num_classes)
        mgr.store()
        mgr.allocate(self)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(x.mean((2, 3)))


def _divisible(v, d=8):
    n = max(d, int(v + d / 2) // d * d)
    return n + d if n < 0.9 * v else n


class RefMobileNetV2(nn.Module):
    """KW_MobileNetV2 (classifier 'linear') and KW1d2x_MobileNetV2 (pw_on per stage, KW classifier)."""

    def __init__(self, width, num_classes, mgr, pw_on=None, kw_classifier=False):
        super().__init__()
        self.warehouse_manager = mgr
        pw_on = pw_on or [True] * 7

        def cbr(i, o, k, s, g, name, enabled=True):
            return nn.Sequential(mgr.reserve(i, o, k, s, (k - 1) // 2, g, False, name, enabled),
                                 nn.BatchNorm2d(o), nn.ReLU6())

        class IR(nn.Module):
            def __init__(self, i, o, s, t, stage, li):
                super().__init__()
                h, on = int(round(i * t)), pw_on[stage - 1]
                self.res = s == 1 and i == o
                layers = [cbr(i, h, 1, 1, 1, f"stage{stage}_layer{li}_pwconv0", on)] if t != 1 else []
                layers += [cbr(h, h, 3, s, h, f"stage{stage}_layer{li}_dwconv0"),
                           mgr.reserve(h, o, 1, 1, 0, 1, False, f"stage{stage}_layer{li}_pwconv1", on),
                           nn.BatchNorm2d(o)]
                self.conv = nn.Sequential(*layers)

            def forward(self, x):
                return x + self.conv(x) if self.res else self.conv(x)

        setting = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2],
                   [6, 320, 1, 1]]
        kw_stage = [1, 2, 3, 4, 5, 6, 6]
        cin, last = _divisible(32 * width), _divisible(1280 * max(1.0, width))
        feats = [cbr(3, cin, 3, 2, 1, "stage0_conv0")]
        li = 0
        for idx, (t, c, n, s) in enumerate(setting):
            cout = _divisible(c * width)
            for i in range(n):
                handover = i == 0 and idx > 0 and kw_stage[idx] != kw_stage[idx - 1]
                feats.append(IR(cin, cout, s if i == 0 else 1, t, kw_stage[idx] - 1 if handover else kw_stage[idx],
                                li))
                cin, li = cout, li + 1
                if handover:
                    li = 0
        feats.append(cbr(cin, last, 1, 1, 1, f"stage{kw_stage[-1]}_layer{li}_pwconv1"))
        self.features = nn.Sequential(*feats)
        if kw_classifier:
            self.classifier = nn.Sequential(nn.Dropout(0.0), mgr.reserve(last, num_classes, 1, name="classifier",
                                                                          linear=True))
        else:
            self.classifier = nn.Linear(last, num_classes)
        mgr.store()
        mgr.allocate(self)

    def forward(self, x):
        return self.classifier(self.features(x).mean((2, 3)))


class RefLN(nn.Module):
    def __init__(self, c, cf):
        super().__init__()
        self.weight, self.bias, self.cf = nn.Parameter(torch.ones(c)), nn.Parameter(torch.zeros(c)), cf

    def forward(self, x):
        if not self.cf:
            return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-6)
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        return self.weight[:, None, None] * ((x - u) / torch.sqrt(s + 1e-6)) + self.bias[:, None, None]


class RefKWConvNeXt(nn.Module):
    def __init__(self, depths, dims, num_classes, mgr):
        super().__init__()
        self.warehouse_manager = mgr

        class Block(nn.Module):
            def __init__(self, d, i, j):
                super().__init__()
                self.dwconv = mgr.reserve(d, d, 7, 1, 3, d, name=f"stage{i}_layer{j}_dwconv0")
                self.norm = RefLN(d, False)
                self.pwconv1 = mgr.reserve(d, 4 * d, 1, name=f"stage{i}_layer{j}_pwconv1")
                self.act = nn.GELU()
                self.pwconv2 = mgr.reserve(4 * d, d, 1, name=f"stage{i}_layer{j}_pwconv2")
                self.gamma = nn.Parameter(torch.ones(1, d, 1, 1))

            def forward(self, x):
                y = self.norm(self.dwconv(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
                return x + self.gamma * self.pwconv2(self.act(self.pwconv1(y)))

        self.downsample_layers = nn.ModuleList(
            [nn.Sequential(mgr.reserve(3, dims[0], 4, 4, name="stagestem_conv0"), RefLN(dims[0], True))])
        for i in range(3):
            self.downsample_layers.append(nn.Sequential(
                RefLN(dims[i], True), mgr.reserve(dims[i], dims[i + 1], 2, 2, name=f"stage{i}_layerds_conv0")))
        self.stages = nn.ModuleList(nn.Sequential(*[Block(dims[i], i, j) for j in range(depths[i])]) for i in range(4))
        self.norm, self.head = nn.LayerNorm(dims[-1], eps=1e-6), nn.Linear(dims[-1], num_classes)
        mgr.store()
        mgr.allocate(self)

    def forward(self, x):
        for i in range(4):
            x = self.stages[i](self.downsample_layers[i](x))
        return self.head(self.norm(x.mean((-2, -1))))


def _ref_manager(reduction=0.0625, num=1, inp=1, outp=1, sharing="layer_conv", basis=1.0, norm=nn.BatchNorm1d):
    return RefManager(reduction, num, inp, outp, sharing, basis, norm)


def set_ref_temperature(model, t):
    for m in model.modules():
        if isinstance(m, RefAttention):
            m.temp_value = t


# name, oracle builder, create_model overrides, input size
CONVERSIONS = [
    ("kw_resnet18_1d2x", lambda: RefResNet(RefBasic, [2, 1, 1, 1], 7, _ref_manager(num=0.5, inp=0.5, outp=0.5)),
     {"depths": (2, 1, 1, 1)}, 32),
    ("kw_resnet50_1d2x", lambda: RefResNet(RefBottleneck, [2, 1, 1, 1], 7,
                                           _ref_manager(num=0.5, inp=0.5, outp=0.5, basis=0.0625)),
     {"depths": (2, 1, 1, 1)}, 32),
    ("kw_mobilenetv2_050_1d2x", lambda: RefMobileNetV2(
        0.5, 7, RefManager(0.03125, (1, 1, 1, 1, 1, 1, 0.5, 1, 0.5, 0.5), (1, 1, 1, 1, 1, 1, 0.5, 1, 0.5, 0.025),
                           (1, 1, 1, 1, 1, 1, 0.5, 1, 0.5, 1), tuple("layer")),
        pw_on=[False] * 5 + [True] * 2, kw_classifier=True), {}, 64),
    ("kw_convnext_t_1x", lambda: RefKWConvNeXt((1, 1, 2, 1), (16, 24, 32, 40), 7,
                                               _ref_manager(sharing="layer_pwconv", norm=nn.LayerNorm)),
     {"depths": (1, 1, 2, 1), "dims": (16, 24, 32, 40)}, 32),
]


@pytest.mark.parametrize("name,build,overrides,size", CONVERSIONS, ids=[c[0] for c in CONVERSIONS])
def test_published_checkpoint_converts_to_the_same_logits(name, build, overrides, size, tmp_path, capsys):
    """The published layout ({'model': sd}) -> tools/convert_checkpoint.py -> create_model: the same logits
    as the published model (float64), at temperature 0 (trained) and 0.3 (during the schedule), in eval mode
    and, for BatchNorm networks, in training mode at batch 2."""
    torch.manual_seed(0)
    ref = randomize_parameters(build())
    src, out = tmp_path / "kw.pth", tmp_path / "ours.pth"
    torch.save({"model": ref.state_dict(), "epoch": 299}, src)
    argv = ["--source", "kernelwarehouse-official", str(src), str(out), "--model", name, "--set", "num_classes=7"]
    argv += [f"--set={k}={v!r}" for k, v in overrides.items()]
    assert tool("convert_checkpoint").main(argv) == 0
    assert f"{name}, num_classes=7" in capsys.readouterr().out
    ours = swtasks.create_model(name, num_classes=7, checkpoint_path=out, **overrides).double().eval()
    ref = ref.double().eval()
    x = torch.randn(2, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for t in (0.0, 0.3):
            set_ref_temperature(ref, t)
            ours.set_temperature(t)
            torch.testing.assert_close(ours(x), ref(x), rtol=1e-9, atol=1e-9)
        if "convnext" not in name:
            ref.train()
            ours.train()
            torch.testing.assert_close(ours(x), ref(x), rtol=1e-9, atol=1e-9)


def test_a_file_of_another_variant_is_refused_with_the_keys(tmp_path):
    ref = RefResNet(RefBasic, [2, 2, 2, 2], 1000, _ref_manager(num=1))
    src = tmp_path / "kw1x.pth"
    torch.save({"model": ref.state_dict()}, src)
    with pytest.raises(CheckpointMismatchError) as err:
        swtasks.create_model("kw_resnet18_4x", checkpoint_path=src)
    msg = str(err.value)
    assert "warehouse_manager.weights.0 (checkpoint (56, 64, 64, 1, 1), model (224, 64, 64, 1, 1))" in msg
    assert "layer1.0.conv1.attention.fc2.weight" in msg and "another KW variant" in msg
    # the matching variant loads it strictly
    swtasks.create_model("kw_resnet18_1x", checkpoint_path=src)


# ------------------------------------------------------------------------------------------------------
# sizes, cells, the static-convolution limit
# ------------------------------------------------------------------------------------------------------

PUBLISHED = {  # millions of parameters, OSVAI/KernelWarehouse README / paper; torchvision's for the baselines
    "kw_resnet18_1d4x": 4.08, "kw_resnet18_1d2x": 7.43, "kw_resnet18_1x": 11.93, "kw_resnet18_2x": 23.24,
    "kw_resnet18_4x": 45.86, "kw_resnet50_1d2x": 17.64, "kw_resnet50_1x": 28.05, "kw_resnet50_4x": 102.02,
    "kw_mobilenetv2_100_1d2x": 2.65, "kw_mobilenetv2_100_1x": 5.17, "kw_mobilenetv2_100_4x": 11.38,
    "kw_mobilenetv2_050_1d2x": 1.47, "kw_mobilenetv2_050_1x": 2.85, "kw_mobilenetv2_050_4x": 4.65,
    "kw_convnext_t_1x": 39.37, "resnet18": 11.69, "resnet50": 25.56, "mobilenetv2_100": 3.50,
}
EXACT = {"resnet18": 11_689_512, "resnet50": 25_557_032, "mobilenetv2_100": 3_504_872}


def test_parameter_counts_match_the_published_figures():
    """Within 1% of the published figure (rounded to 10k there), except kw_resnet18_1d4x: the published
    1/4x config builds 4.032M where the README says 4.08M (-1.2%; its 1/2x sibling with the same cells
    matches to 0.01%). The plain baselines are exact (torchvision's counts)."""
    assert sorted(PUBLISHED) == sorted(swtasks.list_models("kw_*") + list(EXACT))
    for name, millions in PUBLISHED.items():
        with torch.device("meta"):
            model = swtasks.create_model(name)
        n = sum(p.numel() for p in model.parameters())
        tol = 0.013 if name == "kw_resnet18_1d4x" else 0.01
        assert abs(n / 1e6 / millions - 1) < tol, (name, n)
        if name in EXACT:
            assert n == EXACT[name]


def test_warehouse_cells_of_resnet18():
    with torch.device("meta"):
        assert swtasks.create_model("kw_resnet18_1x").warehouse_cells() == [56, 47, 47, 27]
        assert swtasks.create_model("kw_resnet18_4x").warehouse_cells() == [224, 188, 188, 108]
        m = swtasks.create_model("kw_resnet18_1d2x")  # half-width cells: 4x as many needed, half kept
        assert m.warehouse_cells() == [112, 94, 94, 54]
        assert m.warehouse_manager.cell_shapes[0] == (32, 32, 1, 1)
        # stage 1's warehouse also serves stage 2's first block (conv1 and the downsampling)
        assert m.warehouse_manager.users[0][-2:] == ["layer2.0.conv1", "layer2.0.downsample.0"]


def _assembled_kernel(layer, manager, cells_per_mixture):
    """The static kernel of ``layer`` at temperature 1, assembled here: mixture i (order: spatial position,
    output group, input group) is the warehouse cell beta points at (or zeros for the zero cell)."""
    w = manager.weights[layer.warehouse_id].detach()
    n, co, ci = w.shape[:3]
    out, inp, k = layer.out_planes, layer.in_planes // layer.groups, layer.kernel_size
    go, gi = out // co, inp // ci
    kernel = torch.zeros(out, inp, *k, dtype=w.dtype)
    for idx, cell in enumerate(cells_per_mixture):
        s, rest = divmod(idx, go * gi)
        o, i = divmod(rest, gi)
        kh, kw = divmod(s, k[1])
        if cell < n:
            kernel[o * co:(o + 1) * co, i * ci:(i + 1) * ci, kh, kw] = w[cell, :, :, 0, 0]
    return kernel


@pytest.mark.parametrize("num,cell_ratio", [(1, 1), (2, 1), (0.5, 0.5), (0.25, 0.5)])
def test_kw_layer_at_temperature_one_is_its_static_convolution(num, cell_ratio):
    """Three layers of different shapes (3x3, strided 1x1, grouped 3x3) in two warehouses; at tau = 1 each
    equals F.conv2d with the kernel assembled from its assigned cells: with n = r x cells, mixture i of a
    layer starting at s takes cell s + r*i (r >= 1) or, for r = 1/k, the next own cell when i % k ==
    (i // k) % k and the zero cell otherwise."""
    torch.manual_seed(0)
    mgr = WarehouseManager(cell_num_ratio=num, cell_inplane_ratio=cell_ratio, cell_outplane_ratio=cell_ratio)
    net = nn.Sequential(
        mgr.reserve(8, 16, 3, padding=1, bias=True, warehouse_name="stage0_a"),
        mgr.reserve(16, 8, 1, stride=2, bias=False, warehouse_name="stage0_a"),
        mgr.reserve(8, 8, 3, padding=1, groups=2, bias=False, warehouse_name="stage0_grouped"),
    )
    mgr.store()
    mgr.allocate(net)
    net.eval()  # the attention heads' BatchNorm in eval mode (at tau = 1 it does not matter)
    starts = {0: 0, 1: 0}
    x = torch.randn(3, 8, 8, 8)
    for layer in net:
        assert isinstance(layer, KWConv2d)
        layer.set_temperature(1.0)
        m = layer.num_mixtures
        if num >= 1:
            cells = [starts[layer.warehouse_id] + int(num) * i for i in range(m)]
            starts[layer.warehouse_id] += int(num) * m
        else:
            k, cells = round(1 / num), []
            for i in range(m):
                if i % k == (i // k) % k:
                    cells.append(starts[layer.warehouse_id])
                    starts[layer.warehouse_id] += 1
                else:
                    cells.append(mgr.weights[layer.warehouse_id].shape[0])  # the zero cell
        kernel = _assembled_kernel(layer, mgr, cells)
        bias = layer.bias.detach() if layer.bias is not None else None
        expected = F.conv2d(x, kernel, bias, layer.stride, layer.padding, 1, layer.groups)
        with torch.no_grad():
            torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
        x = expected
    assert starts == {0: mgr.weights[0].shape[0], 1: mgr.weights[1].shape[0]}
    # below tau = 1 the kernel depends on the sample
    net[0].set_temperature(0.0)
    y = torch.randn(2, 8, 8, 8)
    with torch.no_grad():
        both = net[0](y)
        torch.testing.assert_close(net[0](y[1:]), both[1:])  # per-sample kernels, batch independent


def test_bad_warehouse_settings_are_named():
    mgr = WarehouseManager(cell_num_ratio=1.5)
    net = nn.Sequential(mgr.reserve(8, 8, 3, padding=1, warehouse_name="w"))
    with pytest.raises(ValueError, match="cell_num_ratio must be an integer >= 1 or 1/k, got 1.5"):
        mgr.allocate(net)
    mgr = WarehouseManager(cell_num_ratio=(1, 1))
    net = nn.Sequential(mgr.reserve(8, 8, 3, padding=1, warehouse_name="w"))
    with pytest.raises(ValueError, match="cell_num_ratio has 2 values but the network has 1 warehouses"):
        mgr.store()
    with pytest.raises(RuntimeError, match="call WarehouseManager.store"):
        WarehouseManager().reserve(4, 4, 1)(torch.randn(1, 4, 2, 2))


# ------------------------------------------------------------------------------------------------------
# training at batch 1 and 4, the temperature schedule
# ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 4])
def test_kw_resnet18_trains_at_batch_one_and_four(batch):
    """AdamW steps in training mode, then eval. At batch 1 the attention heads' BatchNorm uses (and
    keeps) its running statistics instead of failing like nn.BatchNorm1d; at batch 4 it updates them."""
    torch.manual_seed(0)
    model = swtasks.create_model("kw_resnet18_1d4x", num_classes=5, drop_path_rate=0.1)
    model.set_temperature(0.5)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    bn = model.layer1[0].conv1.attention.norm1
    stats = bn.running_mean.clone()
    warehouse = model.warehouse_manager.weights[0].detach().clone()
    x, y = torch.randn(batch, 3, 64, 64), torch.randint(0, 5, (batch,))
    model.train()
    for _ in range(3 if batch == 1 else 2):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert torch.isfinite(loss)
    assert not torch.equal(model.warehouse_manager.weights[0], warehouse)
    assert torch.equal(bn.running_mean, stats) == (batch == 1)
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert out.shape == (batch, 5) and torch.isfinite(out).all()


def test_attention_batchnorm_matches_nn_batchnorm1d():
    from swtasks.layers.kernel_warehouse import AttentionBatchNorm1d

    ours, ref = AttentionBatchNorm1d(6), nn.BatchNorm1d(6)
    x = torch.randn(5, 6)
    torch.testing.assert_close(ours(x), ref(x))
    torch.testing.assert_close(ours.running_var, ref.running_var)
    with pytest.raises(ValueError):
        ref(x[:1])
    ref.eval()
    torch.testing.assert_close(ours(x[:1]), ref(x[:1]))  # train mode at batch 1 = eval statistics
    assert ours.num_batches_tracked == 1


def test_step_schedule_drives_the_temperature():
    """swtasks.cls.StepSchedule (a real Lightning Trainer): 1 -> 0 linearly over 2 optimiser steps, then 0."""
    L = pytest.importorskip("lightning")
    from swtasks.cls import ClassificationModule, StepSchedule

    seen = []
    module = ClassificationModule("kw_resnet18_1d4x", num_classes=3, drop_path_rate=0.0,
                                  backbone_kwargs={"depths": (1, 1, 1, 1)}, mixup_alpha=0.0, cutmix_alpha=0.0,
                                  warmup_epochs=0, sync_batchnorm=False)
    module.backbone.layer1[0].conv1.register_forward_pre_hook(
        lambda mod, args: seen.append(mod.attention.temperature) if mod.training else None)
    data = torch.utils.data.TensorDataset(torch.randn(8, 3, 32, 32), torch.randint(0, 3, (8,)))
    loader = torch.utils.data.DataLoader(data, batch_size=2)
    trainer = L.Trainer(max_steps=4, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[StepSchedule("temperature", 1.0, 0.0, until_step=2, method="set_temperature")])
    trainer.fit(module, loader)
    assert seen == pytest.approx([1.0, 0.5, 0.0, 0.0])
    assert module.backbone.temperature == 0.0
    with pytest.raises(ValueError, match="temperature must be in"):
        module.backbone.set_temperature(1.5)


# ------------------------------------------------------------------------------------------------------
# the doors: features, layer ids, weight decay, checkpointing, baselines
# ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,chans", [
    ("kw_resnet18_1d4x", [64, 128, 256, 512]), ("resnet50", [256, 512, 1024, 2048]),
    ("kw_mobilenetv2_050_1d2x", [16, 16, 48, 1280]), ("mobilenetv2_100", [24, 32, 96, 1280]),
    ("kw_convnext_t_1x", [96, 192, 384, 768]),
])
def test_features_only_channels_and_out_indices(name, chans):
    """The channels of each family (that every model's maps match its feature_info at strides 4-32:
    tests/test_model_protocol.py)."""
    overrides = {"depths": (1, 1, 1, 1), "dims": (96, 192, 384, 768)} if "convnext" in name else {}
    model = swtasks.create_model(name, features_only=True, out_indices=(0, 1, 2, 3), **overrides).eval()
    assert model.feature_info.channels() == chans and model.feature_info.reduction() == [4, 8, 16, 32]
    part = swtasks.create_model(name, features_only=True, out_indices=(1, 3), **overrides).eval()
    assert [tuple(m.shape[1:2]) for m in part(torch.randn(1, 3, 64, 64))] == [(chans[1],), (chans[3],)]
    assert not any(k.startswith(("fc.", "classifier.", "head.")) for k in model.state_dict())


def test_plain_baselines_are_torchvision_networks():
    tv = pytest.importorskip("torchvision")
    for name, ref in (("resnet18", tv.models.resnet18), ("mobilenetv2_100", tv.models.mobilenet_v2)):
        torch.manual_seed(0)
        theirs = ref().eval()
        ours = swtasks.create_model(name).eval()
        ours.load_state_dict(theirs.state_dict())  # torchvision's state dict loads as it is
        x = torch.randn(2, 3, 64, 64)
        with torch.no_grad():
            torch.testing.assert_close(ours(x), theirs(x))
        assert ours.reparameterize() is ours and ours.temperature is None


def test_layer_ids_weight_decay_and_grad_checkpointing():
    torch.manual_seed(0)
    model = swtasks.create_model("kw_resnet18_1x", num_classes=4)
    assert model.num_layer_ids() == 8 and pg.model_num_layers(model) == 8
    ids = {n: model.layer_id(n, 8) for n, _ in model.named_parameters()}
    assert ids["conv1.weight"] == 0 and ids["layer1.0.conv1.attention.fc1.weight"] == 1
    assert ids["layer2.1.bn2.weight"] == 4 and ids["layer4.1.conv2.attention.fc2.bias"] == 8
    assert ids["fc.weight"] is None
    # a warehouse takes the smallest id of its users (stage 1's also serves layer2.0.conv1)
    assert [ids[f"warehouse_manager.weights.{i}"] for i in range(4)] == [1, 3, 5, 7]
    assert [model.stage_id(f"warehouse_manager.weights.{i}") for i in range(4)] == [1, 2, 3, 4]
    groups = pg.param_groups(model, lr=1.0, weight_decay=0.05, layer_decay=0.5)
    scale = {n: g["lr_scale"] for g in groups for n in g["names"]}
    assert scale["warehouse_manager.weights.0"] == pytest.approx(0.5 ** 8) and scale["fc.weight"] == 1.0
    nwd = model.no_weight_decay()
    assert "layer1.0.conv1.attention.norm1.weight" in nwd and "warehouse_manager.weights.0" not in nwd
    mb = swtasks.create_model("kw_mobilenetv2_050_1x")
    assert mb.num_layer_ids() == 18 and mb.layer_id("features.7.conv.1.0.attention.fc1.weight", 18) == 7
    assert [mb.stage_id(f"features.{j}.x") for j in (0, 1, 2, 3, 4, 13, 14, 18)] == [0, 0, 1, 1, 2, 3, 4, 4]
    cn = swtasks.create_model("kw_convnext_t_1x", depths=(1, 1, 2, 1), dims=(16, 24, 32, 40))
    assert cn.layer_id("stages.2.1.pwconv1.attention.fc2.weight", 12) == 3
    assert cn.layer_id("warehouse_manager.weights.0", 12) == 0  # the stem's warehouse
    # activation checkpointing: the same outputs, gradients and BatchNorm statistics
    assert_checkpointing_is_exact(lambda: swtasks.create_model("kw_resnet18_1x", num_classes=4), torch.randn(2, 3, 64, 64))
    assert model.reparameterize() is model


def test_a_deep_copy_draws_from_its_own_warehouses():
    """What an EMA copy does: the copied layers use the copied warehouses (the manager is not a sub-module of
    the layers, so this is not automatic)."""
    import copy

    model = swtasks.create_model("kw_resnet18_1d4x", depths=(1, 1, 1, 1))
    ema = copy.deepcopy(model)
    assert ema.layer3[0].conv2._manager is ema.warehouse_manager is not model.warehouse_manager
    with torch.no_grad():
        ema.warehouse_manager.weights[2].zero_()
    x = torch.randn(2, 3, 32, 32)
    assert not torch.equal(ema.eval()(x), model.eval()(x))


def test_unknown_overrides_and_bad_input_are_named():
    with pytest.raises(TypeError, match="unknown override for kw_resnet18_1x: 'dims'"):
        swtasks.create_model("kw_resnet18_1x", dims=(1, 2, 3, 4))
    with pytest.raises(ValueError, match="expected 3 image channels"):
        swtasks.create_model("resnet18")(torch.randn(1, 1, 32, 32))


@pytest.mark.gpu
def test_kw_resnet18_on_cuda_matches_cpu_and_trains_under_bf16_autocast():
    """The grouped per-sample convolution on cuDNN: CUDA outputs equal the CPU's (fp32), and a bf16-autocast
    training step at batch 1 and 4 gives finite gradients on every warehouse."""
    torch.manual_seed(0)
    model = swtasks.create_model("kw_resnet18_1x", num_classes=10).eval()
    model.set_temperature(0.3)
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        got = model.cuda()(x.cuda()).cpu()
    torch.testing.assert_close(got, ref, rtol=1e-3, atol=1e-3)
    model.train()
    for batch in (1, 4):
        model.zero_grad()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(x[:batch].cuda()).float().logsumexp(1).mean()
        loss.backward()
        assert all(torch.isfinite(w.grad).all() for w in model.warehouse_manager.weights)


@pytest.mark.parametrize("name", ["kw_mobilenetv2_050_1x", "kw_resnet18_1d4x"])
def test_export_form_of_kw_convolutions_equals_the_grouped_one(name):
    """While exporting, KW convolutions run as im2col + batched matmul (a dynamic batch cannot be a group
    count in ONNX): the same function as the grouped convolution, depthwise layers included."""
    from swtasks.layers import KWConv2d

    torch.manual_seed(0)
    model = swtasks.create_model(name, num_classes=5).eval()
    model.set_temperature(0.3)
    layers = [m for m in model.modules() if isinstance(m, KWConv2d)]
    assert any(m.groups > 1 for m in layers) == name.startswith("kw_mobilenetv2")
    x = torch.randn(3, 3, 48, 48)
    seen = []

    def compare(module, inputs, output):
        alpha = module.attention(inputs[0])
        seen.append(((module._forward_unfolded(inputs[0], module.static_kernel(alpha)) - output).abs().max()
                     / output.abs().max().clamp_min(1e-12)).item())

    hooks = [m.register_forward_hook(compare) for m in layers]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    assert len(seen) == len(layers) and max(seen) < 1e-5
