"""ADE20K segmentation through the real MMSegmentation Runner: tiny ADE20K-format data made here
(images/ + annotations/ PNGs), UperNet with ShiftWiseNet-atto for 2 iterations via tools/train_seg.py's
entry point, IoUMetric, --resume, tools/test_seg.py; the paper's config parses and builds."""

from __future__ import annotations

import os.path as osp

import pytest
import torch

import swtasks.mm  # noqa: F401  (registers the backbones; mmengine compatibility)

pytestmark = pytest.mark.mm

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = osp.join(ROOT, "configs/seg/upernet_shiftwise-atto_2iter_tiny-ade20k-64x64.py")
PAPER = osp.join(ROOT, "configs/seg/upernet_shiftwise-tiny_4xb4-160k_ade20k-512x512.py")


def test_upernet_two_iterations_iou_metric_resume_and_test_tool(tmp_path):
    from swtasks.mm.cli import main
    from swtasks.mm.testing import make_tiny_ade20k

    data = make_tiny_ade20k(str(tmp_path / "ade"))
    work = tmp_path / "work"
    runner = main(
        "seg",
        "train",
        [CONFIG, "--work-dir", str(work), "--data-root", data, "--cfg-options", "randomness.seed=0"],
    )
    assert runner.iter == 2
    assert type(runner.model.backbone).__name__ == "ShiftWiseNet"
    # the layer-decay constructor built the mmseg Runner's optimiser (rate 1: one lr, no wd on norms)
    groups = runner.optim_wrapper.optimizer.param_groups
    assert {g["lr_scale"] for g in groups} == {1.0}
    no_wd = {n for g in groups if g["weight_decay"] == 0.0 for n in g["param_names"]}
    assert "backbone.stages.0.0.gamma" in no_wd and "backbone.stages.0.0.pwconv1.1.weight" not in no_wd
    metrics = runner.val()
    for key in ("aAcc", "mIoU", "mAcc"):
        assert key in metrics, sorted(metrics)
        # plumbing: the evaluation ran (values: test_iou_metric_reaches_100_on_the_label_maps_...)
        assert 0.0 <= metrics[key] <= 100.0
    assert osp.isfile(work / "iter_2.pth")

    # --resume (latest checkpoint of the work dir) continues at iteration 2: with a checkpoint every
    # iteration, a run that started over would write iter_1.pth
    resumed = main(
        "seg",
        "train",
        [
            CONFIG,
            "--work-dir",
            str(work),
            "--data-root",
            data,
            "--resume",
            "--cfg-options",
            "train_cfg.max_iters=3",
            "default_hooks.checkpoint.interval=1",
        ],
    )
    assert resumed.iter == 3 and osp.isfile(work / "iter_3.pth")
    assert not osp.exists(work / "iter_1.pth")

    # tools/test_seg.py on the iteration-2 checkpoint, dumping label maps: the metrics of runner.val()
    metrics2 = main(
        "seg",
        "test",
        [
            CONFIG,
            str(work / "iter_2.pth"),
            "--work-dir",
            str(tmp_path / "t"),
            "--data-root",
            data,
            "--out",
            str(tmp_path / "pred"),
        ],
    )
    assert metrics2["mIoU"] == pytest.approx(metrics["mIoU"], abs=1e-6)
    assert len(list((tmp_path / "pred").glob("*.png"))) == 2


def test_iou_metric_reaches_100_on_the_label_maps_and_falls_on_shifted_ones(tmp_path):
    """The config's test pipeline and IoUMetric on predictions equal to the label maps the pipeline
    delivers: aAcc and mIoU are exactly 100, and the classes counted are the PNGs' labels minus one (ADE20K's
    reduce_zero_label: 0 = "other" becomes the ignore index 255). Rolled predictions score far lower."""
    import numpy as np
    from mmengine.evaluator import Evaluator
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    from PIL import Image

    from swtasks.mm.testing import make_tiny_ade20k, pipeline_samples

    data = make_tiny_ade20k(str(tmp_path / "ade"), num_val=3, size=96)  # 96 px, resized to 64 by the pipeline
    cfg, dataset, samples = pipeline_samples(CONFIG, data)
    assert all(tuple(s.gt_sem_seg.shape) == (96, 96) and tuple(s.img_shape) == (64, 64) for s in samples)

    def evaluate(transform):
        evaluator = Evaluator(cfg.test_evaluator)
        evaluator.dataset_meta = dataset.metainfo
        preds = []
        for s in samples:
            pred = SegDataSample(metainfo=s.metainfo)
            pred.gt_sem_seg = s.gt_sem_seg
            pred.pred_sem_seg = PixelData(data=transform(s.gt_sem_seg.data.clone()))
            preds.append(pred)
        evaluator.process(data_samples=preds, data_batch=None)
        metric = evaluator.metrics[0]
        counted = {int(c) for r in metric.results for c in torch.nonzero(r[3]).flatten()}
        return evaluator.evaluate(len(preds)), counted

    exact, counted = evaluate(lambda label: label)
    assert exact["aAcc"] == 100.0 and exact["mIoU"] == 100.0 and exact["mAcc"] == 100.0
    in_pngs = set()
    for path in sorted((tmp_path / "ade" / "annotations" / "validation").glob("*.png")):
        in_pngs |= {int(v) - 1 for v in np.unique(np.asarray(Image.open(path))) if v != 0}
    assert counted == in_pngs and 255 not in counted
    rolled, _ = evaluate(lambda label: torch.roll(label, shifts=(17, 23), dims=(-2, -1)))
    assert rolled["mIoU"] < 60.0 and rolled["aAcc"] < 90.0


def test_paper_config_parses_with_reference_settings():
    from mmengine.config import Config

    cfg = Config.fromfile(PAPER)
    assert cfg.custom_imports.imports == ["swtasks.mm"]
    assert cfg.model.pretrained is None
    bb = cfg.model.backbone
    assert bb.type == "ShiftWiseNet" and bb.arch == "tiny" and bb.drop_path_rate == 0.4
    assert bb.init_cfg == dict(type="Pretrained", checkpoint=cfg.pretrained, prefix="backbone.")
    assert cfg.model.decode_head.type == "UPerHead"
    assert cfg.model.decode_head.in_channels == [80, 160, 320, 640]
    assert cfg.model.decode_head.pool_scales == (1, 2, 3, 6) and cfg.model.decode_head.channels == 512
    assert cfg.model.decode_head.num_classes == 150 and cfg.model.auxiliary_head.num_classes == 150
    assert cfg.model.auxiliary_head.type == "FCNHead" and cfg.model.auxiliary_head.channels == 256
    assert cfg.model.auxiliary_head.in_channels == 320 and cfg.model.auxiliary_head.in_index == 2
    assert cfg.model.auxiliary_head.loss_decode.loss_weight == 0.4
    assert cfg.model.test_cfg == dict(mode="slide", crop_size=(512, 512), stride=(341, 341))
    assert cfg.train_cfg.max_iters == 160000 and cfg.train_dataloader.batch_size == 4
    assert cfg.param_scheduler[0].end == 1500 and cfg.param_scheduler[1].power == 1.0
    assert cfg.param_scheduler[1].end == 160000
    assert cfg.train_dataloader.dataset.data_root == "data/ade/ADEChallengeData2016"
    assert cfg.optim_wrapper.optimizer == dict(type="AdamW", lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05)
    assert cfg.optim_wrapper.constructor == "LayerDecayOptimWrapperConstructor"
    assert "(512, 512)" in str(cfg.train_pipeline)  # the crop


def test_paper_segmentor_builds_with_the_full_tiny_backbone():
    """The paper's UperNet as the config defines it, built by the real mmseg registry: 62,514,776
    parameters, the reference's 62.51M (network spec, 'Cross-check'); a forward on a small CPU input."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    cfg = Config.fromfile(PAPER)
    init_default_scope("mmseg")
    cfg.model.backbone.init_cfg = None  # the pretrained file is not in the test environment
    model = MODELS.build(cfg.model)
    assert sum(p.numel() for p in model.parameters()) == 62_514_776
    assert model.backbone.net.kernel_sizes == (51, 49, 47, 13)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64), mode="tensor")
    assert out.shape == (1, 150, 16, 16)
