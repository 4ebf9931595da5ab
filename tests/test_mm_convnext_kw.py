"""ConvNeXt and KernelWarehouse as MMDetection / MMSegmentation backbones: the registered types, two real
training iterations per type on the tiny generated datasets, the published configs, freezing and weights."""

from __future__ import annotations

import os.path as osp

import pytest
import torch

import swtasks.mm  # noqa: F401  (registers the backbones)

pytestmark = pytest.mark.mm

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TYPES = ("ConvNeXt", "KWResNet", "KWMobileNetV2", "KWConvNeXt")
TINY = {
    "ConvNeXt": ("det", "configs/det/mask-rcnn_convnext-cpu_fpn_2iter_tiny-coco.py"),
    "KWResNet": ("det", "configs/det/mask-rcnn_kw-resnet18-1d4x_fpn_2iter_tiny-coco.py"),
    "KWMobileNetV2": ("seg", "configs/seg/upernet_kw-mobilenetv2-050-1d2x_2iter_tiny-ade20k-64x64.py"),
    "KWConvNeXt": ("seg", "configs/seg/upernet_kw-convnext-cpu_2iter_tiny-ade20k-64x64.py"),
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from swtasks.mm.testing import make_tiny_ade20k, make_tiny_coco

    base = tmp_path_factory.mktemp("data")
    return {"det": make_tiny_coco(str(base / "coco")), "seg": make_tiny_ade20k(str(base / "ade"))}


def test_types_are_registered_in_both_frameworks_and_resolve_their_archs():
    from mmdet.registry import MODELS as DET
    from mmseg.registry import MODELS as SEG

    from swtasks.mm import backbone as bb

    for name in TYPES:
        assert name in swtasks.mm.registered_backbones()
        assert DET.get(name) is getattr(bb, name) and SEG.get(name) is getattr(bb, name)
    assert bb.ConvNeXt._resolve_arch("tiny")[0] == bb.ConvNeXt._resolve_arch("t")[0] == "convnext_t"
    for arch in ("kw_resnet50_4x", "resnet50_4x", "50_4x"):
        assert bb.KWResNet._resolve_arch(arch) == ("kw_resnet50_4x", {})
    assert bb.KWMobileNetV2._resolve_arch("100_1d2x")[0] == "kw_mobilenetv2_100_1d2x"
    assert "resnet18_1d4x" in bb.KWResNet.available_archs() and bb.KWConvNeXt.available_archs() == ["convnext_t_1x"]
    with pytest.raises(ValueError, match="unknown arch 'mobilenetv2_100_1x' for KWResNet"):
        bb.KWResNet(arch="mobilenetv2_100_1x")
    with pytest.raises(ValueError, match="sparse=True applies to shift-wise operators"):
        bb.KWResNet(arch="resnet18_1d4x", sparse=True)


@pytest.mark.parametrize("mm_type", TYPES)
def test_tiny_config_trains_two_iterations(mm_type, data, tmp_path):
    from swtasks.mm.cli import main

    kind, config = TINY[mm_type]
    runner = main(kind, "train", [osp.join(ROOT, config), "--work-dir", str(tmp_path), "--data-root", data[kind],
                                  "--cfg-options", "randomness.seed=0"])
    assert runner.iter == 2 and osp.isfile(tmp_path / "iter_2.pth")
    backbone = runner.model.backbone
    assert type(backbone).__name__ == mm_type
    names = {n for g in runner.optim_wrapper.optimizer.param_groups for n in g["param_names"]}
    if mm_type.startswith("KW"):
        assert backbone.net.temperature == 0.0  # dense-task fine-tuning
        assert any(".attention.fc2." in n for n in names) and "backbone.warehouse_manager.weights.0" in names
    if mm_type == "KWResNet":  # frozen_stages=1, norm_eval: the stem and layer1 are frozen, BN in eval mode
        assert not backbone.conv1.weight.requires_grad and not backbone.layer1[0].conv1.attention.fc1.weight.requires_grad
        assert backbone.warehouse_manager.weights[0].requires_grad  # also serves layer2.0 (published behaviour)
        assert not backbone.layer2[0].conv1.attention.norm1.training
        assert "backbone.layer1.0.bn1.weight" not in names and "backbone.layer2.0.conv1.attention.fc1.weight" in names
    metrics = runner.val()
    assert metrics and all(v == v for v in metrics.values() if isinstance(v, float))


def test_published_configs_parse_and_build():
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    det = {
        "configs/det/mask-rcnn_convnext-t_fpn_ms-crop-3x_coco.py": ("ConvNeXt", [96, 192, 384, 768], 36, [27, 33]),
        "configs/det/mask-rcnn_kw-resnet50-1x_fpn_ms-crop-1x_coco.py": ("KWResNet", [256, 512, 1024, 2048], 12, [8, 11]),
    }
    from mmdet.registry import MODELS as DET

    init_default_scope("mmdet")
    for config, (kind, chans, epochs, steps) in det.items():
        cfg = Config.fromfile(osp.join(ROOT, config))
        assert cfg.custom_imports.imports == ["swtasks.mm"] and cfg.model.backbone.type == kind
        assert cfg.model.neck.in_channels == chans and cfg.train_cfg.max_epochs == epochs
        assert cfg.param_scheduler[1].milestones == steps and "RandomCrop" in str(cfg.train_pipeline)
        assert cfg.optim_wrapper.optimizer == dict(type="AdamW", lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05)
        assert cfg.train_dataloader.batch_size == 2 and cfg.auto_scale_lr.base_batch_size == 16
        cfg.model.backbone.init_cfg = None
        model = DET.build(cfg.model)
        n = sum(p.numel() for p in model.backbone.parameters())
        if kind == "ConvNeXt":
            assert cfg.optim_wrapper.paramwise_cfg == dict(decay_rate=0.95, decay_type="layer_wise", num_layers=6)
            # ConvNeXt-T without classifier (769,000) and final norm (1,536), with four output norms (2,880)
            assert n == 28_589_128 - 769_000 - 1_536 + 2_880
        else:
            assert cfg.model.backbone.frozen_stages == 1 and cfg.model.backbone.norm_eval is True
            assert model.backbone.net.temperature == 0.0
    from mmseg.registry import MODELS as SEG

    init_default_scope("mmseg")
    seg = {
        "configs/seg/upernet_convnext-t_8xb2-160k_ade20k-512x512.py": ("ConvNeXt", 384, "AdamW"),
        "configs/seg/upernet_kw-resnet50-1x_4xb4-160k_ade20k-512x512.py": ("KWResNet", 1024, "SGD"),
    }
    for config, (kind, aux, opt) in seg.items():
        cfg = Config.fromfile(osp.join(ROOT, config))
        assert cfg.model.backbone.type == kind and cfg.model.auxiliary_head.in_channels == aux
        assert cfg.optim_wrapper.optimizer.type == opt and cfg.train_cfg.max_iters == 160000
        assert cfg.model.decode_head.num_classes == 150
        if kind == "ConvNeXt":
            assert cfg.optim_wrapper.paramwise_cfg == dict(decay_rate=0.9, decay_type="stage_wise", num_layers=6)
            assert cfg.model.test_cfg.mode == "slide" and cfg.train_dataloader.batch_size == 2
            cfg.model.backbone.init_cfg = None
            model = SEG.build(cfg.model)
            assert model.backbone.out_channels == [96, 192, 384, 768]


def test_published_kw_weights_load_through_init_cfg(tmp_path):
    """A KW classification checkpoint in the published layout (here the 1/2x MobileNetV2, whose classifier
    has its own warehouse) loads into the features-only backbone: classifier and its warehouse dropped, and
    the maps equal the classification network's features."""
    import swtasks
    from swtasks.mm.backbone import KWMobileNetV2

    torch.manual_seed(0)
    cls = swtasks.create_model("kw_mobilenetv2_050_1d2x").eval()
    path = tmp_path / "kw1d2x_mobilenetv2_050.pth"
    torch.save({"model": cls.state_dict()}, path)
    bb = KWMobileNetV2(arch="mobilenetv2_050_1d2x", init_cfg=dict(type="Pretrained", checkpoint=str(path)))
    bb.init_weights()
    bb.eval()
    assert len(bb.warehouse_manager.weights) == len(cls.warehouse_manager.weights) - 1
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        maps = bb(x)
        ref = x
        for j, f in enumerate(cls.features):
            ref = f(ref)
            if j == 18:
                torch.testing.assert_close(maps[3], ref)
