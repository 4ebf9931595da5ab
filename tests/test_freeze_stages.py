"""Stage freezing, one rule for both tools: ``--model.freeze_stages k`` (ClassificationModule) and
``frozen_stages=k`` (the mm backbones) freeze the same parameters of every family, as the model's own
``freeze_stages(k)`` (swtasks.models.common.StageFreezing).

The oracle is written here from the layouts (docs/models.md): the stem and the first k stages with their
downsampling layers, module names by layout; a KernelWarehouse warehouse is frozen when no KW layer outside
the frozen stages draws from it (read from the layers' ``warehouse_id``, not from the manager's user lists).
"""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

import swtasks
from swtasks.cls.errors import InputError
from swtasks.cls.module import ClassificationModule
from swtasks.layers.kernel_warehouse import KWConvNd

BACKBONES = pytest.importorskip("swtasks.mm.backbone").BACKBONES

TINY = dict(depths=(1, 1, 1, 1), dims=(16, 32, 64, 128))
# the smallest variant of each family -> overrides that shrink it (test_every_family_is_covered keeps this
# table in step with the registry)
FAMILIES = {
    "shiftwise_atto": dict(TINY, kernel_sizes=(5, 3, 3, 3)),
    "unireplknet_a": dict(TINY, kernel_sizes=(3, 13, 13, 13)),
    "slak_t": dict(TINY, kernel_sizes=(13, 11, 9, 7)),
    "convnext_t": TINY,
    "resnet18": dict(depths=(1, 1, 1, 1)),
    "mobilenetv2_100": {},
    "kw_resnet18_1d4x": dict(depths=(1, 1, 1, 1)),
    "kw_mobilenetv2_050_1d2x": {},
    "kw_convnext_t_1x": TINY,
}


def _family(name: str) -> str:
    """kw_resnet18_1x -> kw_resnet, shiftwise_tiny -> shiftwise, resnet50 -> resnet."""
    kw = name.startswith("kw_")
    return ("kw_" if kw else "") + re.sub(r"\d+$", "", name.removeprefix("kw_").split("_")[0])


def _mm_class(name: str):
    """The mm backbone type that builds registry model ``name`` (None: the family has none)."""
    for cls in BACKBONES:
        try:
            if cls._resolve_arch(name)[0] == name:
                return cls
        except ValueError:
            continue
    return None


def _frozen_prefixes(net: nn.Module, k: int) -> list[str]:
    names = {n for n, _ in net.named_children()}
    if "downsample_layers" in names:  # ConvNeXt/UniRepLKNet layout
        return ["downsample_layers.0"] + [p for i in range(k) for p in (f"stages.{i}", f"downsample_layers.{i}")]
    if "layer1" in names:  # torchvision ResNet
        return ["conv1", "bn1"] + [f"layer{i}" for i in range(1, k + 1)]
    assert "features" in names, f"{type(net).__name__}: a layout this test does not know"
    # torchvision MobileNetV2: the stem is features.0-1 (stride 2); stage i ends at the module of its map
    last = 1 if k == 0 else int(net.feature_info[k - 1]["module"].split(".")[1])
    return [f"features.{j}" for j in range(last + 1)]


def _under(name: str, prefixes: list[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _expected_frozen(net: nn.Module, k: int) -> set[str]:
    prefixes = _frozen_prefixes(net, k)
    frozen = {n for n, _ in net.named_parameters() if _under(n, prefixes)}
    manager = getattr(net, "warehouse_manager", None)
    if manager is not None:
        live = {m.warehouse_id for n, m in net.named_modules() if isinstance(m, KWConvNd) and not _under(n, prefixes)}
        frozen |= {f"warehouse_manager.weights.{w}" for w in range(len(manager.weights)) if w not in live}
    return frozen


def _frozen(net: nn.Module) -> set[str]:
    return {n for n, p in net.named_parameters() if not p.requires_grad}


def test_every_family_is_covered():
    assert {_family(n) for n in swtasks.list_models()} == {_family(n) for n in FAMILIES}
    # the families without an mm backbone are the plain torchvision baselines
    assert {n for n in FAMILIES if _mm_class(n) is None} == {"resnet18", "mobilenetv2_100"}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_cls_and_mm_freeze_the_same_parameters(name):
    """For k = 1..4 the cls path and the mm path freeze the oracle's parameter set (the mm backbone's names
    are the network's own); a KW warehouse only frozen layers draw from is frozen in both."""
    overrides = FAMILIES[name]
    mm_cls = _mm_class(name)
    kw_warehouse_frozen = False
    for k in range(1, 5):
        cls_net = ClassificationModule(name, num_classes=10, drop_path_rate=0.0, freeze_stages=k,
                                       backbone_kwargs=overrides).backbone
        expected = _expected_frozen(cls_net, k)
        assert expected and _frozen(cls_net) == expected, (name, k)
        kw_warehouse_frozen |= any(n.startswith("warehouse_manager.") for n in expected)
        if mm_cls is not None:
            mm = mm_cls(arch=dict(overrides, base=name), frozen_stages=k)
            assert _frozen(mm) == expected, (name, k)
    assert kw_warehouse_frozen == name.startswith("kw_")


def _bn_stats(modules) -> list[torch.Tensor]:
    return [m.running_mean.clone() for m in modules if isinstance(m, _BatchNorm)]


@pytest.mark.parametrize("name", list(FAMILIES))
def test_frozen_stages_stay_in_eval_mode_and_keep_their_statistics(name):
    """After train() the frozen stages' modules are in eval mode (BatchNorm statistics fixed in a training
    forward), the rest trains - through the LightningModule and through the mm backbone, as mm did before."""
    torch.manual_seed(0)
    k = 2
    overrides = FAMILIES[name]
    module = ClassificationModule(name, num_classes=10, drop_path_rate=0.0, freeze_stages=k,
                                  backbone_kwargs=overrides).train()
    nets = [module.backbone]
    mm_cls = _mm_class(name)
    if mm_cls is not None:
        nets.append(mm_cls(arch=dict(overrides, base=name), frozen_stages=k).train())
    x = torch.randn(2, 3, 64, 64)
    for net in nets:
        prefixes = _frozen_prefixes(net, k)
        frozen = [m for n, m in net.named_modules() if _under(n, prefixes)]
        live = [m for n, m in net.named_modules() if n and not _under(n, prefixes)]
        assert frozen and all(not m.training for m in frozen), name
        assert live and all(m.training for m in live), name
        before_frozen, before_live = _bn_stats(frozen), _bn_stats(live)
        net(x)
        assert all(torch.equal(a, b) for a, b in zip(before_frozen, _bn_stats(frozen))), name
        after_live = _bn_stats(live)
        if before_live:  # families with BatchNorm outside the frozen stages: those statistics move
            assert any(not torch.equal(a, b) for a, b in zip(before_live, after_live)), name


def test_cls_refusals_name_the_option():
    with pytest.raises(InputError, match=r"model.freeze_stages=5: ShiftWiseNet has only 4 stages"):
        ClassificationModule("shiftwise_atto", num_classes=3, freeze_stages=5, backbone_kwargs=FAMILIES["shiftwise_atto"])
    plain = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.LazyLinear(3))
    plain.num_classes = 3
    with pytest.raises(InputError, match=r"model.freeze_stages=1: Sequential has no freeze_stages\(\) method"):
        ClassificationModule(plain, num_classes=3, freeze_stages=1)
