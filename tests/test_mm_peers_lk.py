"""UniRepLKNet and SLaK as MMDetection / MMSegmentation backbones: registration, published dense-task
checkpoints, deploy while loading, SLaK's fixed sparsity pattern, the paper configs, and two iterations of
each type's tiny config through the real Runners (UniRepLKNet: Mask R-CNN on tiny COCO; SLaK: UperNet on
tiny ADE20K)."""

from __future__ import annotations

import os.path as osp

import pytest
import torch
from helpers import randomize_parameters

import swtasks
import swtasks.mm  # noqa: F401  (registers the backbones)
from swtasks.mm.backbone import SLaK, UniRepLKNet

pytestmark = pytest.mark.mm

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
URLK_SMALL = dict(base="a", depths=(1, 1, 2, 1), dims=(8, 16, 24, 32), kernel_sizes=(3, 13, (13, 3), 7))
SLAK_SMALL = dict(base="t", depths=(1, 1, 2, 1), dims=(8, 16, 24, 32), width_factor=1.0, kernel_sizes=(13, 11, 9, 7))


def _registries():
    from mmdet.registry import MODELS as DET
    from mmseg.registry import MODELS as SEG

    return DET, SEG


def test_both_types_are_registered_and_resolve_their_variants():
    for registry in _registries():
        assert registry.get("UniRepLKNet") is UniRepLKNet and registry.get("SLaK") is SLaK
        bb = registry.build(dict(type="SLaK", arch=SLAK_SMALL, out_indices=(1, 3)))
        assert [tuple(o.shape) for o in bb(torch.randn(1, 3, 64, 64))] == [(1, 16, 8, 8), (1, 32, 2, 2)]
        assert bb.out_channels == [16, 32]
    assert UniRepLKNet._resolve_arch("tiny")[0] == "unireplknet_t" and SLaK._resolve_arch("small")[0] == "slak_s"
    assert UniRepLKNet._resolve_arch("xl")[0] == "unireplknet_xl"
    with pytest.raises(ValueError, match="available: 'b', 's', 't'"):
        SLaK._resolve_arch("n")
    with pytest.raises(ValueError, match="UniRepLKNet has no sparse training"):
        UniRepLKNet(arch=URLK_SMALL, sparse=True)


def test_published_dense_task_checkpoint_loads_also_into_the_deploy_structure(tmp_path):
    """A published UniRepLKNet backbone file (features mode: norm0..3, 'backbone.' keys in a detector
    checkpoint) loads as it is; deploy=True re-parameterises it while loading, with the same outputs."""
    kw = {k: v for k, v in URLK_SMALL.items() if k != "base"}
    net = randomize_parameters(swtasks.create_model("unireplknet_a", features_only=True, **kw))
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in net.state_dict().items()}, "meta": {}},
               tmp_path / "det.pth")
    x = torch.randn(2, 3, 64, 64)
    outs = []
    for deploy in (False, True):
        bb = UniRepLKNet(arch=URLK_SMALL, deploy=deploy, layer_scale_init_value=1e-6,
                         init_cfg=dict(type="Pretrained", checkpoint=str(tmp_path / "det.pth"), prefix="backbone."))
        bb.init_weights()
        with torch.no_grad():
            outs.append(bb.eval()(x))
    assert not any(k.endswith("origin_bn.weight") for k in bb.state_dict())
    for a, b in zip(*outs):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def test_slak_sparse_fine_tuning_keeps_the_zero_pattern(tmp_path):
    kw = {k: v for k, v in SLAK_SMALL.items() if k != "base"}
    net = swtasks.create_model("slak_t", num_classes=3, **kw)
    with torch.no_grad():
        for p in net.parameters():
            if p.dim() in (2, 4):
                p[torch.rand(p.shape) < 0.4] = 0.0
    torch.save({"model": net.state_dict()}, tmp_path / "sparse.pth")
    bb = SLaK(arch=SLAK_SMALL, sparse=True, init_cfg=dict(type="Pretrained", checkpoint=str(tmp_path / "sparse.pth")))
    bb.init_weights()
    zero = {n: (p == 0) for n, p in bb.named_parameters() if p.dim() in (2, 4)}
    assert 0.35 < sum(int(z.sum()) for z in zero.values()) / sum(z.numel() for z in zero.values()) < 0.45
    opt = torch.optim.AdamW(bb.parameters(), lr=0.1)
    for _ in range(2):
        sum(o.square().mean() for o in bb.train()(torch.randn(2, 3, 64, 64))).backward()
        opt.step()
        opt.zero_grad()
    sd = bb.state_dict()  # masks re-applied before export
    for name, z in zero.items():
        assert not sd[name][z].any(), name
    assert "stages.0.0.large_kernel.LoRA1.conv.weight_mask" in sd


CONFIGS = [
    ("det", "configs/det/mask-rcnn_unireplknet-t_fpn_1x_coco.py", "UniRepLKNet", "unireplknet_t"),
    ("det", "configs/det/mask-rcnn_slak-t_fpn_1x_coco.py", "SLaK", "slak_t"),
    ("seg", "configs/seg/upernet_unireplknet-t_4xb4-160k_ade20k-512x512.py", "UniRepLKNet", "unireplknet_t"),
    ("seg", "configs/seg/upernet_slak-t_4xb4-160k_ade20k-512x512.py", "SLaK", "slak_t"),
]


@pytest.mark.parametrize("task,config,kind,model", CONFIGS)
def test_paper_configs_parse_and_match_the_backbone(task, config, kind, model):
    from mmengine.config import Config

    cfg = Config.fromfile(osp.join(ROOT, config))
    bb = cfg.model.backbone
    assert bb.type == kind and bb.arch == "t" and cfg.custom_imports.imports == ["swtasks.mm"]
    assert bb.init_cfg == dict(type="Pretrained", checkpoint=cfg.pretrained, prefix="backbone.")
    with torch.device("meta"):
        dims = list(swtasks.create_model(model, features_only=True).dims)
    head = cfg.model.neck if task == "det" else cfg.model.decode_head
    assert head.in_channels == dims == cfg.dims
    assert cfg.optim_wrapper.constructor == "LayerDecayOptimWrapperConstructor"
    assert bb.get("sparse", False) == (kind == "SLaK")


def _check_two_iterations(runner, kind):
    assert runner.iter == 2 and type(runner.model.backbone).__name__ == kind
    groups = runner.optim_wrapper.optimizer.param_groups
    no_wd = {n for g in groups if g["weight_decay"] == 0.0 for n in g["param_names"]}
    assert "backbone.stages.0.0.gamma" in no_wd and "backbone.downsample_layers.0.0.weight" not in no_wd


def test_unireplknet_mask_rcnn_two_iterations(tmp_path):
    from swtasks.mm.cli import main
    from swtasks.mm.testing import make_tiny_coco

    data = make_tiny_coco(str(tmp_path / "coco"))
    config = osp.join(ROOT, "configs/det/mask-rcnn_unireplknet-tiny_fpn_2iter_tiny-coco.py")
    runner = main("det", "train", [config, "--work-dir", str(tmp_path / "w"), "--data-root", data,
                                   "--cfg-options", "randomness.seed=0"])
    _check_two_iterations(runner, "UniRepLKNet")
    scales = {n: g["lr_scale"] for g in runner.optim_wrapper.optimizer.param_groups for n in g["param_names"]}
    assert scales["backbone.downsample_layers.0.0.weight"] == pytest.approx(0.8**13)
    assert scales["backbone.stages.1.0.dwconv.dil_conv_k5_1.weight"] == pytest.approx(0.8**11)
    assert osp.isfile(tmp_path / "w" / "iter_2.pth")


def test_slak_upernet_two_iterations(tmp_path):
    from swtasks.mm.cli import main
    from swtasks.mm.testing import make_tiny_ade20k

    data = make_tiny_ade20k(str(tmp_path / "ade"))
    config = osp.join(ROOT, "configs/seg/upernet_slak-tiny_2iter_tiny-ade20k-64x64.py")
    runner = main("seg", "train", [config, "--work-dir", str(tmp_path / "w"), "--data-root", data,
                                   "--cfg-options", "randomness.seed=0"])
    _check_two_iterations(runner, "SLaK")
    scales = {n: g["lr_scale"] for g in runner.optim_wrapper.optimizer.param_groups for n in g["param_names"]}
    assert scales["backbone.downsample_layers.1.1.weight"] == pytest.approx(0.9**7)  # stage-wise, 6 ids
    assert scales["backbone.stages.3.0.pwconv1.weight"] == pytest.approx(0.9**3)
    assert "mIoU" in runner.val()
