"""Helpers shared by the test modules: one copy of each, imported from here (a test module never imports
another test module; fixtures live in conftest.py). Nothing here is a test.

- ``tool(name)``: a script of tools/ loaded as a module (its ``main(argv)`` called in-process);
- ``randomize``: random BatchNorm statistics/affines and layer scales, so that every term a re-parameterisation
  folds matters; ``randomize_parameters``: every parameter and BatchNorm statistic random (the reference
  networks' weights of the converter tests);
- ``images``, ``assert_checkpointing_is_exact``, ``run_cli`` (tools/train_cls.py in-process),
  ``make_coco_3_7_11`` (a tiny COCO set whose category ids are not 1..N);
- the shift-wise reference network (``RefNet``, ``random_reference``, ``convert_shiftwise_official``): a minimal
  re-statement of the reference implementation's forward (spec: shiftwise-network.md, shiftwise-operator.md
  section 4) with its state-dict layout and its operator output order [rep channels..., ghost channels...],
  built on the literal operator path ``shiftwise_reference``. It shares no module with the model under test
  except that literal path; its index tables are drawn the way the reference draws them (global numpy /
  torch generators seeded with 123).
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

import swtasks
from swtasks.checkpoint import load_into
from swtasks.ops.shiftwise import shiftwise_reference

REPO = Path(__file__).resolve().parents[1]


def tool(name: str) -> ModuleType:
    """tools/{name}.py loaded as a module (a fresh copy on every call)."""
    spec = importlib.util.spec_from_file_location(f"_tool_{name}", REPO / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run_cli(args, monkeypatch) -> None:
    """tools/train_cls.py's command line (swtasks.cls.cli.main) in this process."""
    from swtasks.cls.cli import main

    monkeypatch.setattr(sys, "argv", ["train_cls.py"])
    main(args)


COCO_3_7_11 = {3: "cat", 7: "dog", 11: "fox"}


def make_coco_3_7_11(root: str, num_val: int = 2, size: int = 64) -> str:
    """The tiny COCO fixture (swtasks.mm.testing) with three categories of ids 3, 7, 11 (COCO_3_7_11, file
    order cat, dog, fox), the annotations assigned to them in turn."""
    from swtasks.mm.testing import make_tiny_coco

    make_tiny_coco(root, num_train=4, num_val=num_val, size=size)
    for split in ("train2017", "val2017"):
        path = Path(root) / "annotations" / f"instances_{split}.json"
        data = json.loads(path.read_text())
        data["categories"] = [{"id": i, "name": n, "supercategory": "x"} for i, n in COCO_3_7_11.items()]
        for k, ann in enumerate(data["annotations"]):
            ann["category_id"] = (3, 7, 11)[k % 3]
        path.write_text(json.dumps(data))
    return root


# ------------------------------------------------------------------------------------------ random weights


def randomize(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Random BN statistics/affines, layer scales and GRN parameters, so every folded term matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, _BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.randn(n, generator=g) * 0.5 + 1)
                m.bias.copy_(torch.randn(n, generator=g) * 0.5)
        for name, p in model.named_parameters():
            if name.endswith(("gamma", "beta")):  # also a bare block's own "gamma"
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model


def randomize_parameters(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter random (1-D ones ~ N(0, 0.5^2), others ~ N(0, 0.2^2), 1-D layer scales ``gamma`` around
    1) and random BatchNorm statistics, drawn in float32 (so a float32 file of the result round-trips
    exactly). Returns ``net`` (dtype and mode unchanged)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 if p.dim() == 1 else 0.2))
            if name.endswith("gamma") and p.dim() == 1:
                p.add_(1.0)
        for m in net.modules():
            if isinstance(m, _BatchNorm) and m.running_mean is not None:
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return net


def assert_checkpointing_is_exact(make, x):
    """Two copies of make() (drop path on, layer scales 1), the second with grad checkpointing: identical
    outputs, gradients and BatchNorm statistics after one training forward/backward."""
    torch.manual_seed(0)
    a, b = make(), make()
    with torch.no_grad():
        for n, p in a.named_parameters():
            if n.endswith("gamma") and p.dim() == 1:
                p.fill_(1.0)
    b.load_state_dict(a.state_dict())
    b.set_grad_checkpointing(True)
    outs = []
    for m in (a, b):
        torch.manual_seed(7)
        out = m.train()(x)
        out.square().sum().backward()
        outs.append(out)
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=0)
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(q.grad, p.grad, msg=n)
    for (n, t), u in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(u, t, rtol=0, atol=0, msg=n)
    return a


# ------------------------------------------------------------------------------------------ the shift-wise reference

# a small configuration: atto's kernels (13/11/9/7: centred and off-centre strips), narrow stages
SMALL = dict(depths=(1, 1, 2, 1), dims=(16, 24, 32, 40), kernel_sizes=(13, 11, 9, 7))
N_CLASSES = 7


# ------------------------------------------------------------------------------------------ the oracle


class RefLayerNormCF(nn.Module):
    def __init__(self, c, eps=1e-6):
        super().__init__()
        self.weight, self.bias, self.eps = nn.Parameter(torch.ones(c)), nn.Parameter(torch.zeros(c)), eps

    def forward(self, x):
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        return self.weight[:, None, None] * ((x - u) / torch.sqrt(s + self.eps)) + self.bias[:, None, None]


class RefOperator(nn.Module):
    """Reference operator: LoRAs.{p} (or merged LoRA) small convs, bn_lora1/bn_lora2/bn_small, output
    cat([z, x_ghost]) in the order [rep sorted..., ghost sorted...]."""

    def __init__(self, C, K, k=3, ghost_ratio=0.23, n_path=2, n_rep=4):
        super().__init__()
        R = int(C * (1 - ghost_ratio)) // 2 * 2
        nk = math.ceil(K / k)
        self.K = K
        np.random.seed(123)  # the reference seeds the global generators in its constructor
        ghost = sorted(np.random.choice(C, C - R, replace=False).tolist())
        self.rep = torch.tensor(sorted(set(range(C)) - set(ghost)))
        self.ghost = torch.tensor(ghost, dtype=torch.long)
        torch.manual_seed(123)
        perm_h = [torch.cat([torch.randperm(nk) + c * nk for c in range(R)]) for _ in range(n_rep)]
        perm_v = [torch.cat([torch.randperm(nk) + c * nk for c in range(R)]) for _ in range(n_rep)]
        self.ident = torch.stack([torch.randint(0, nk, [R]) + torch.arange(R) * nk for _ in range(n_rep)])
        self.slot_h = torch.stack([torch.argsort(p) % nk for p in perm_h])
        self.slot_v = torch.stack([torch.argsort(p) % nk for p in perm_v])
        self.LoRA = None
        self.LoRAs = nn.ModuleList(
            nn.Conv2d(R, R * nk, k, padding=k - 1, groups=R, bias=False) for _ in range(n_path)
        )
        self.bn_lora1, self.bn_lora2, self.bn_small = nn.BatchNorm2d(R), nn.BatchNorm2d(R), nn.BatchNorm2d(R)

    def merge_branches(self):
        merged = nn.Conv2d(
            self.LoRAs[0].in_channels,
            self.LoRAs[0].out_channels,
            self.LoRAs[0].kernel_size,
            padding=self.LoRAs[0].padding,
            groups=self.LoRAs[0].groups,
            bias=False,
        )
        merged.weight.data = sum(c.weight.data for c in self.LoRAs)
        self.LoRA = merged.to(self.LoRAs[0].weight.dtype)
        del self.LoRAs

    def forward(self, x):
        x_r, x_g = x[:, self.rep], x[:, self.ghost]
        convs = [self.LoRA] if self.LoRA is not None else list(self.LoRAs)
        w = torch.stack([c.weight[:, 0] for c in convs])
        o_h, o_v, o_s = shiftwise_reference(x_r, w, self.slot_h, self.slot_v, self.ident, big_kernel=self.K)
        z = self.bn_lora1(o_h) + self.bn_lora2(o_v) + self.bn_small(o_s) + x_r
        return torch.cat([z, x_g], dim=1)


class RefSE(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.down, self.up = nn.Conv2d(c, c // 4, 1), nn.Conv2d(c // 4, c, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.up(F.relu(self.down(F.adaptive_avg_pool2d(x, 1)))))


class RefGRN(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.gamma, self.beta = nn.Parameter(torch.zeros(1, 1, 1, c)), nn.Parameter(torch.zeros(1, 1, 1, c))

    def forward(self, x):
        gx = torch.norm(x, p=2, dim=(1, 2), keepdim=True)
        return (self.gamma * gx / (gx.mean(dim=-1, keepdim=True) + 1e-6) + 1) * x + self.beta


class Perm(nn.Module):
    def __init__(self, *dims):
        super().__init__()
        self.dims = dims

    def forward(self, x):
        return x.permute(*self.dims)


class RefBlock(nn.Module):
    def __init__(self, dim, K):
        super().__init__()
        self.large_kernel = RefOperator(dim, K)
        self.norm = nn.BatchNorm2d(dim)
        self.se = RefSE(dim)
        self.pwconv1 = nn.Sequential(Perm(0, 2, 3, 1), nn.Linear(dim, 4 * dim))
        self.act = nn.Sequential(nn.GELU(), RefGRN(4 * dim))
        self.pwconv2 = nn.Sequential(
            nn.Linear(4 * dim, dim, bias=False), Perm(0, 3, 1, 2), nn.BatchNorm2d(dim)
        )
        self.gamma = nn.Parameter(1e-6 * torch.ones(dim))

    def forward(self, x):
        y = self.se(self.norm(self.large_kernel(x)))
        y = self.pwconv2(self.act(self.pwconv1(y)))
        return x + self.gamma.view(1, -1, 1, 1) * y  # residual in the ORIGINAL channel order


class RefNet(nn.Module):
    def __init__(self, depths, dims, kernel_sizes, num_classes):
        super().__init__()
        self.downsample_layers = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Conv2d(3, dims[0] // 2, 3, 2, 1),
                    RefLayerNormCF(dims[0] // 2),
                    nn.GELU(),
                    nn.Conv2d(dims[0] // 2, dims[0], 3, 2, 1),
                    RefLayerNormCF(dims[0]),
                )
            ]
        )
        for i in range(3):
            self.downsample_layers.append(
                nn.Sequential(nn.Conv2d(dims[i], dims[i + 1], 3, 2, 1), RefLayerNormCF(dims[i + 1]))
            )
        self.stages = nn.ModuleList(
            nn.Sequential(*[RefBlock(dims[i], kernel_sizes[i]) for _ in range(depths[i])]) for i in range(4)
        )
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], num_classes)

    def forward(self, x):
        for i in range(4):
            x = self.stages[i](self.downsample_layers[i](x))
        return self.head(self.norm(x.mean([-2, -1])))


def build_reference(**cfg):
    """RefNet(**cfg); the global RNG states its operators reseed are put back afterwards."""
    np_state = np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            return RefNet(**cfg)
    finally:
        np.random.set_state(np_state)


def random_reference(seed=0, merged=False, **cfg):
    """An eval-mode reference network with every parameter and BN statistic random (randomize_parameters:
    layer scales ~1, so a wrong permutation anywhere shows in the logits), in float64."""
    cfg = {**SMALL, "num_classes": N_CLASSES, **cfg}
    net = randomize_parameters(build_reference(**cfg), seed).double()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.num_batches_tracked.fill_(17)
    if merged:
        for m in net.modules():
            if isinstance(m, RefOperator):
                m.merge_branches()
    return net.eval()


def images(n=2, size=64, seed=1):
    """A float64 batch of random images."""
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def convert_shiftwise_official(checkpoint, arch="atto", num_classes=N_CLASSES, **overrides):
    """What every loader does with a reference file: load_into a fresh model (the adapter converts)."""
    model = swtasks.create_model(f"shiftwise_{arch}", num_classes=num_classes, **overrides).double()
    report = load_into(model, checkpoint)
    assert report.converted
    return model.state_dict()
