"""COCO detection through the real MMDetection Runner: tiny COCO-format data made here (64x64 images,
boxes + polygon masks), Mask R-CNN with ShiftWiseNet-atto for 2 iterations via tools/train_det.py's entry
point (from a classification checkpoint, with the layer-decay optimiser), CocoMetric (bbox + segm through
pycocotools) on ground-truth predictions, deploy conversion with tools/reparameterize_mm.py's entry point +
tools/test_det.py; the paper's configs parse and build; the command-line options reach the config. Tests
whose oracle is the code or option under test say so ("plumbing")."""

from __future__ import annotations

import os.path as osp
import pickle
import runpy
import subprocess
import sys

import numpy as np
import pytest
import torch

import swtasks.mm  # noqa: F401  (registers the backbones; mmengine compatibility)
from swtasks.errors import UserError

pytestmark = pytest.mark.mm

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = osp.join(ROOT, "configs/det/mask-rcnn_shiftwise-atto_fpn_2iter_tiny-coco.py")
MASK_RCNN = "configs/det/mask-rcnn_shiftwise-tiny_fpn_1x_coco.py"
CASCADE = "configs/det/cascade-mask-rcnn_shiftwise-tiny_fpn_ms-3x_coco.py"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Train the tiny Mask R-CNN for 2 iterations from a classification checkpoint (Lightning layout)."""
    import swtasks
    from swtasks.mm.cli import main
    from swtasks.mm.testing import make_tiny_coco

    base = tmp_path_factory.mktemp("det")
    data = make_tiny_coco(str(base / "coco"))
    torch.manual_seed(0)
    cls = swtasks.create_model("shiftwise_atto", num_classes=10)
    ckpt = base / "cls.ckpt"
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in cls.state_dict().items()}, "epoch": 1}, ckpt)
    # a user's config on top of the tiny one, starting from the classification checkpoint
    config = base / "from_cls.py"
    config.write_text(
        f"_base_ = {CONFIG!r}\n"
        "model = dict(backbone=dict(init_cfg=dict(\n"
        f"    _delete_=True, type='Pretrained', checkpoint={str(ckpt)!r}, prefix='backbone.')))\n"
    )
    work = str(base / "work")
    runner = main(
        "det",
        "train",
        [str(config), "--work-dir", work, "--data-root", data, "--cfg-options", "randomness.seed=0"],
    )
    return dict(runner=runner, data=data, work=work, cls=cls, config=str(config))


def test_train_two_iterations_then_coco_metric(trained):
    """Training from a classification checkpoint with the layer-decay optimiser (values checked against
    the reference's decay rule), then the Runner's validation. The metrics' range check is plumbing (a
    2-iteration detector scores about 0); their values are tested on ground truth in
    test_coco_metric_reaches_1_on_ground_truth_and_falls_on_shifted_boxes."""
    runner = trained["runner"]
    assert runner.iter == 2
    assert osp.isfile(osp.join(trained["work"], "iter_2.pth"))
    # the classification weights went into the detector's backbone (then moved by 2 small AdamW steps)
    bb = runner.model.backbone
    assert type(bb).__name__ == "ShiftWiseNet"
    for name in ("downsample_layers.0.0.weight", "stages.2.3.pwconv1.1.weight"):
        got, ref = bb.state_dict()[name], trained["cls"].state_dict()[name]
        torch.testing.assert_close(got, ref, atol=2e-3, rtol=0)
        assert not torch.equal(got, ref)  # and they were trained
    # the layer-wise lr decay of the config (rate 0.8 over 12 layer ids) drives the Runner's optimiser
    scales = {}
    assert runner.optim_wrapper.optimizer.param_groups[0]["lr_scale"] == 1.0  # the lr mmengine logs
    for group in runner.optim_wrapper.optimizer.param_groups:
        for name in group["param_names"]:
            scales[name] = (group["lr_scale"], group["weight_decay"])
    assert scales["backbone.downsample_layers.0.0.weight"] == (pytest.approx(0.8**13), 0.05)
    assert scales["backbone.stages.2.4.pwconv1.1.weight"][0] == pytest.approx(0.8 ** (13 - (3 + 4 // 3)))
    assert scales["backbone.stages.3.0.pwconv1.1.weight"][0] == pytest.approx(0.8)
    assert scales["backbone.stages.3.0.pwconv1.1.bias"] == (pytest.approx(0.8), 0.0)
    assert scales["neck.lateral_convs.0.conv.weight"] == (1.0, 0.05)
    assert scales["roi_head.bbox_head.fc_cls.weight"] == (1.0, 0.05)

    metrics = runner.val()
    for key in ("coco/bbox_mAP", "coco/bbox_mAP_50", "coco/segm_mAP", "coco/segm_mAP_50"):
        assert key in metrics, sorted(metrics)
        assert 0.0 <= metrics[key] <= 1.0, (key, metrics[key])  # plumbing: the evaluation ran


def test_coco_metric_reaches_1_on_ground_truth_and_falls_on_shifted_boxes(tmp_path):
    """The config's test pipeline and CocoMetric (through pycocotools) on predictions made from the ground
    truth that the pipeline itself delivers: bbox and segm AP are exactly 1.0. The images are 96 px and the
    pipeline resizes them to 64, so ground truth that came out in the resized frame (a pipeline that loads
    annotations before resizing) or a metric that mixes up labels, ids or box formats would score below 1.
    Boxes shifted by 30% of their width (IoU 0.54) keep AP@0.5 at 1 and drop AP@0.75 to 0; permuted labels
    score 0."""
    from mmdet.structures import DetDataSample
    from mmengine.evaluator import Evaluator
    from mmengine.structures import InstanceData

    from swtasks.mm.testing import make_tiny_coco, pipeline_samples

    data = make_tiny_coco(str(tmp_path / "coco"), num_val=3, size=96)  # 96 px, resized to 64 by the pipeline
    cfg, dataset, samples = pipeline_samples(CONFIG, data)
    assert all(tuple(s.ori_shape) == (96, 96) and tuple(s.img_shape) == (64, 64) for s in samples)

    def evaluate(transform):
        evaluator = Evaluator(cfg.test_evaluator)
        evaluator.dataset_meta = dataset.metainfo
        preds = []
        for s in samples:
            gt = s.gt_instances
            boxes, labels = transform(gt.bboxes.tensor.clone(), gt.labels.clone())
            pred = DetDataSample(metainfo=s.metainfo)
            pred.pred_instances = InstanceData(
                bboxes=boxes,
                labels=labels,
                scores=torch.ones(len(labels)),
                masks=torch.from_numpy(gt.masks.to_ndarray()).bool(),
            )
            preds.append(pred)
        evaluator.process(data_samples=preds, data_batch=None)
        return evaluator.evaluate(len(preds))

    exact = evaluate(lambda b, lab: (b, lab))
    for key in ("coco/bbox_mAP", "coco/bbox_mAP_50", "coco/bbox_mAP_75", "coco/segm_mAP"):
        assert exact[key] == 1.0, (key, exact[key])

    def shift(boxes, labels):
        dx = 0.3 * (boxes[:, 2] - boxes[:, 0])
        boxes[:, 0] += dx
        boxes[:, 2] += dx
        return boxes, labels

    shifted = evaluate(shift)
    assert shifted["coco/bbox_mAP_50"] == 1.0 and shifted["coco/bbox_mAP_75"] == 0.0
    assert shifted["coco/bbox_mAP"] <= 0.2 and shifted["coco/segm_mAP"] == 1.0
    swapped = evaluate(lambda b, lab: (b, 1 - lab))
    assert swapped["coco/bbox_mAP"] == 0.0 and swapped["coco/segm_mAP"] == 0.0


def _predictions(path):
    with open(path, "rb") as f:
        preds = pickle.load(f)
    return {p["img_id"]: p["pred_instances"] for p in preds}


def test_deploy_conversion_keeps_outputs_and_test_tool_runs(trained, tmp_path):
    from swtasks.mm.cli import main
    from swtasks.mm.deploy import main as reparameterize_main

    trained_ckpt = osp.join(trained["work"], "iter_2.pth")
    out = str(tmp_path / "deploy.pth")
    report = reparameterize_main(
        [
            trained["config"],
            trained_ckpt,
            out,
            "--input-size",
            "64",
            "64",
            "--cfg-options",
            "model.backbone.init_cfg=None",
        ]
    )
    assert report["relative_error"] < 1e-4
    assert osp.isfile(report["config"])
    sd = torch.load(out, map_location="cpu", weights_only=True)["state_dict"]
    assert any(k.endswith("large_kernel.weight_h") for k in sd)
    assert not any(k.endswith("large_kernel.weight") for k in sd)

    # tools/test_det.py on the trained and on the converted detector: the same boxes, scores and metrics
    metrics = {}
    for name, config, ckpt in (("train", CONFIG, trained_ckpt), ("deploy", report["config"], out)):
        metrics[name] = main(
            "det",
            "test",
            [
                config,
                ckpt,
                "--work-dir",
                str(tmp_path / name),
                "--data-root",
                trained["data"],
                "--out",
                str(tmp_path / f"{name}.pkl"),
            ],
        )
    a, b = _predictions(tmp_path / "train.pkl"), _predictions(tmp_path / "deploy.pkl")
    assert a.keys() == b.keys() and len(a) == 2
    for img_id in a:
        assert len(a[img_id]["scores"]) > 0
        np.testing.assert_allclose(b[img_id]["scores"], a[img_id]["scores"], atol=1e-3)
        np.testing.assert_allclose(b[img_id]["bboxes"], a[img_id]["bboxes"], atol=0.05)
    for key in ("coco/bbox_mAP", "coco/segm_mAP"):
        assert metrics["deploy"][key] == pytest.approx(metrics["train"][key], abs=1e-3)


@pytest.mark.parametrize("config", [MASK_RCNN, CASCADE])
def test_paper_configs_parse_and_inherit_from_the_installed_package(config):
    """The paper's settings (network spec, "Detection") as the configs resolve them through their
    MMDetection base configs; set_data_root on them (plumbing)."""
    from mmengine.config import Config

    from swtasks.mm.cli import set_data_root

    cfg = Config.fromfile(osp.join(ROOT, config))
    assert cfg.custom_imports.imports == ["swtasks.mm"]
    bb = cfg.model.backbone
    assert bb.type == "ShiftWiseNet" and bb.arch == "tiny" and bb.layer_scale_init_value == 1.0
    assert bb.init_cfg == dict(type="Pretrained", checkpoint=cfg.pretrained, prefix="backbone.")
    assert cfg.model.neck.in_channels == [80, 160, 320, 640]
    assert cfg.optim_wrapper.constructor == "LayerDecayOptimWrapperConstructor"
    assert cfg.optim_wrapper.optimizer == dict(type="AdamW", lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05)
    assert cfg.optim_wrapper.paramwise_cfg == dict(decay_rate=0.8, decay_type="layer_wise", num_layers=12)
    assert cfg.train_dataloader.dataset.data_root == "data/coco/"
    assert cfg.auto_scale_lr.base_batch_size == 16
    if config == CASCADE:
        assert bb.drop_path_rate == 0.4
        assert cfg.train_cfg.max_epochs == 36
        assert cfg.param_scheduler[1].milestones == [27, 33]
        heads = cfg.model.roi_head.bbox_head
        assert [h.type for h in heads] == ["ConvFCBBoxHead"] * 3
        assert [(h.num_shared_convs, h.num_shared_fcs) for h in heads] == [(4, 1)] * 3
        assert [h.loss_bbox.type for h in heads] == ["GIoULoss"] * 3
        assert [h.norm_cfg.type for h in heads] == ["SyncBN"] * 3
        assert [r.assigner.pos_iou_thr for r in cfg.model.train_cfg.rcnn] == [0.5, 0.6, 0.7]
        scales = str(cfg.train_pipeline)
        assert "RandomChoice" in scales and "(800, 1333)" in scales and "(480, 1333)" in scales
        assert "RandomCrop" in scales  # the DETR-style crop branch
        assert cfg.optim_wrapper.type == "OptimWrapper"  # fp32 like the reference; --amp switches
    else:
        assert cfg.train_cfg.max_epochs == 12
    changed = set_data_root(cfg, "/datasets/coco")
    assert cfg.train_dataloader.dataset.data_root == "/datasets/coco"
    assert cfg.val_evaluator.ann_file == "/datasets/coco/annotations/instances_val2017.json"
    assert "val_evaluator[0].ann_file" in changed


def test_paper_detectors_build_with_the_full_tiny_backbone():
    """The paper's models as the configs define them (ShiftWiseNet-T: kernels 51/49/47/13), built by the
    real mmdet registry; the backbone feeds the FPN on a small CPU input. The dense backbone's parameters
    are the classification SW-T's (the published 31,790,260) without its head and final norm, plus the
    four output norms. The Cascade Mask R-CNN has 89.2M parameters where the reference reports 86.89M
    (docs/detection-segmentation.md, "Model sizes")."""
    from mmdet.registry import MODELS
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    import swtasks

    def count(module):
        return sum(p.numel() for p in module.parameters())

    cls = swtasks.create_model("shiftwise_tiny")
    assert count(cls) == 31_790_260
    init_default_scope("mmdet")
    counts = {}
    for config in (CASCADE, MASK_RCNN):
        cfg = Config.fromfile(osp.join(ROOT, config))
        cfg.model.backbone.init_cfg = None  # the pretrained file is not in the test environment
        model = MODELS.build(cfg.model)
        counts[config] = sum(p.numel() for p in model.parameters())
        assert type(model.backbone).__name__ == "ShiftWiseNet"
        assert model.backbone.net.kernel_sizes == (51, 49, 47, 13)
        out_norms = sum(count(getattr(model.backbone, f"norm{i}")) for i in range(4))
        assert count(model.backbone) == count(cls) - count(cls.head) - count(cls.norm) + out_norms
        assert count(model.backbone) == 31_150_380
    assert counts[CASCADE] == 89_198_046 and counts[MASK_RCNN] == 51_362_844
    model.eval()
    with torch.no_grad():
        feats = model.extract_feat(torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape[2:]) for f in feats] == [(16, 24), (8, 12), (4, 6), (2, 3), (1, 2)]
    assert all(f.shape[:2] == (1, 256) for f in feats)


def test_command_line_options_reach_the_config(tmp_path):
    """Plumbing test: its oracle is the options it passes."""
    from swtasks.mm.cli import _parser, load_config

    def cfg_of(mode, argv):
        return load_config(_parser("det", mode).parse_args(argv), "det", mode)

    cfg = cfg_of(
        "train",
        [
            CONFIG,
            "--work-dir",
            str(tmp_path / "w"),
            "--amp",
            "--launcher",
            "slurm",
            "--resume",
            "--cfg-options",
            "train_dataloader.batch_size=3",
            "model.backbone.frozen_stages=1",
            "optim_wrapper.optimizer.lr=2e-4",
        ],
    )
    assert cfg.work_dir == str(tmp_path / "w") and cfg.launcher == "slurm"
    if torch.cuda.is_available():
        assert cfg.optim_wrapper.type == "AmpOptimWrapper" and cfg.optim_wrapper.loss_scale == "dynamic"
    else:  # no GPU: bfloat16 autocast (swtasks.mm.devices; tests/test_mm_distributed.py)
        assert cfg.optim_wrapper.type == "CPUAutocastOptimWrapper"
    assert cfg.optim_wrapper.constructor == "LayerDecayOptimWrapperConstructor"  # kept under --amp
    assert cfg.resume is True and cfg.load_from is None  # --resume alone: the latest in the work dir
    assert cfg.train_dataloader.batch_size == 3 and cfg.model.backbone.frozen_stages == 1
    assert cfg.optim_wrapper.optimizer.lr == 2e-4
    cfg = cfg_of("train", [CONFIG, "--resume", "some/iter_8.pth", "--launcher", "pytorch"])
    assert cfg.resume is True and cfg.load_from == "some/iter_8.pth" and cfg.launcher == "pytorch"
    assert cfg.work_dir == osp.join("./work_dirs", "mask-rcnn_shiftwise-atto_fpn_2iter_tiny-coco")
    assert cfg.optim_wrapper.type == "OptimWrapper"
    cfg = cfg_of("test", [CONFIG, "model.pth", "--out", str(tmp_path / "p.pkl")])
    assert cfg.load_from == "model.pth" and cfg.launcher == "none"
    assert [e["type"] for e in cfg.test_evaluator] == ["CocoMetric", "DumpDetResults"]
    with pytest.raises(UserError, match="--out must be a .pkl file"):
        cfg_of("test", [CONFIG, "model.pth", "--out", str(tmp_path / "p.json")])
    with pytest.raises(SystemExit):
        _parser("det", "train").parse_args([CONFIG, "--launcher", "mpirun"])


def test_cli_rejects_missing_config(tmp_path):
    """Plumbing test: the error message names the file."""
    from swtasks.mm.cli import main

    with pytest.raises(SystemExit, match="config file not found: .*nope.py") as info:
        main("det", "train", [str(tmp_path / "nope.py")])
    assert info.value.code == 2


@pytest.mark.parametrize(
    "tool", ["train_det.py", "test_det.py", "train_seg.py", "test_seg.py", "reparameterize_mm.py"]
)
def test_tool_scripts_parse_their_options(tool, capsys, monkeypatch):
    """Plumbing test: the scripts run and list their options."""
    monkeypatch.setattr(sys, "argv", [tool, "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(osp.join(ROOT, "tools", tool), run_name="__main__")
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    expected = ["--cfg-options"]
    if tool.startswith(("train", "test")):
        expected += ["--work-dir", "--launcher", "{none,pytorch,slurm,mpi}"]
    if tool.startswith("train"):
        expected += ["--resume", "--amp"]
    for option in expected:
        assert option in out, (tool, option)


@pytest.mark.gpu
def test_torchrun_launcher_with_amp_on_gpu(tmp_path):
    """One process through torchrun and --launcher pytorch (DDP, SyncBN conversion, NCCL) with --amp."""
    from swtasks.mm.testing import make_tiny_coco

    data = make_tiny_coco(str(tmp_path / "coco"))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=1",
        "--master_port=29577",
        osp.join(ROOT, "tools/train_det.py"),
        CONFIG,
        "--launcher",
        "pytorch",
        "--amp",
        "--work-dir",
        str(tmp_path / "work"),
        "--data-root",
        data,
        "--cfg-options",
        "sync_bn=torch",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert osp.isfile(tmp_path / "work" / "iter_2.pth")
