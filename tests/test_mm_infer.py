"""Predictions on any image or folder (tools/infer_det.py, tools/infer_seg.py; swtasks.mm.infer): a tiny Mask
R-CNN trained for 2 iterations on COCO-format data whose categories have the ids 3, 7, 11 (classes read from
the file by tools/train_det.py), then its predictions: the file's own ids, a JSON that pycocotools loads
and evaluates, the same boxes from the re-parameterised checkpoint, unreadable images named; a tiny UperNet
trained on label PNGs with --classes writes label maps of each input's size."""

from __future__ import annotations

import glob
import json
import os
import os.path as osp
import shutil

import numpy as np
import pytest
import torch
from helpers import COCO_3_7_11, make_coco_3_7_11
from PIL import Image

import swtasks.mm  # noqa: F401  (registers the backbones; mmengine compatibility)

pytestmark = pytest.mark.mm

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DET = osp.join(ROOT, "configs/det/mask-rcnn_shiftwise-atto_fpn_2iter_tiny-coco.py")
SEG = osp.join(ROOT, "configs/seg/upernet_shiftwise-atto_2iter_tiny-ade20k-64x64.py")
NAMES = COCO_3_7_11


@pytest.fixture(scope="module")
def det(tmp_path_factory):
    """Mask R-CNN (ShiftWiseNet-atto) trained for 2 iterations on 96 px images (resized to 64 by the config:
    predictions must come back in the original pixels) with categories 3, 7, 11."""
    from swtasks.mm.cli import main

    base = tmp_path_factory.mktemp("infer_det")
    root = make_coco_3_7_11(str(base / "coco"), num_val=3, size=96)
    work = str(base / "work")
    main("det", "train", [DET, "--data-root", root, "--work-dir", work, "--cfg-options", "randomness.seed=0"])
    return dict(root=root, work=work, ckpt=osp.join(work, "iter_2.pth"), base=base,
                val_ann=osp.join(root, "annotations", "instances_val2017.json"))


def infer(task, argv):
    from swtasks.mm.infer import main

    return main(task, argv)


def test_predictions_carry_the_file_ids_and_evaluate_with_pycocotools(det, tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from swtasks.checkpoint import read_checkpoint

    meta = read_checkpoint(det["ckpt"])["meta"]["dataset_meta"]
    assert tuple(meta["classes"]) == ("cat", "dog", "fox") and tuple(meta["category_ids"]) == (3, 7, 11)

    out = tmp_path / "out"
    val = osp.join(det["root"], "val2017")
    assert infer("det", [DET, det["ckpt"], val, "--out", str(out), "--score-thr", "0",
                         "--ann-file", det["val_ann"], "--batch-size", "2"]) == 0
    with open(out / "predictions.json") as f:
        records = json.load(f)
    assert records, "an untrained detector with score_thr 0 still returns boxes"
    assert {r["category_id"] for r in records} <= {3, 7, 11}
    assert all(r["category_name"] == NAMES[r["category_id"]] for r in records)
    files = sorted(os.listdir(val))
    assert {r["file_name"] for r in records} <= set(files)
    for r in records:
        x, y, w, h = r["bbox"]
        assert -1 <= x and x + w <= 97 and -1 <= y and y + h <= 97  # the original image's pixels
        assert r["segmentation"]["size"] == [96, 96] and isinstance(r["segmentation"]["counts"], str)
    assert sorted(os.listdir(out / "vis")) == files

    gt = COCO(det["val_ann"])
    for iou_type in ("bbox", "segm"):
        ev = COCOeval(gt, gt.loadRes(str(out / "predictions.json")), iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        assert len(ev.stats) == 12 and all(-1 <= s <= 1 for s in ev.stats)


def test_reparameterized_checkpoint_gives_the_same_boxes(det, tmp_path):
    from swtasks.mm.deploy import main as reparameterize_main

    deploy = str(tmp_path / "deploy.pth")
    reparameterize_main([DET, det["ckpt"], deploy, "--input-size", "64", "64"])
    val = osp.join(det["root"], "val2017")
    got = {}
    for name, ckpt in (("train", det["ckpt"]), ("deploy", deploy)):
        # the training config for both: the checkpoint says it is re-parameterised
        assert infer("det", [DET, ckpt, val, "--out", str(tmp_path / name), "--score-thr", "0.0"]) == 0
        with open(tmp_path / name / "predictions.json") as f:
            got[name] = json.load(f)
    a, b = got["train"], got["deploy"]
    assert len(a) == len(b) > 0
    for ra, rb in zip(a, b):
        assert (ra["file_name"], ra["category_id"]) == (rb["file_name"], rb["category_id"])
        np.testing.assert_allclose(rb["bbox"], ra["bbox"], atol=1e-3)
        assert abs(ra["score"] - rb["score"]) < 1e-3


def test_unreadable_image_is_named_and_skipped_or_an_error_with_strict(det, tmp_path, capsys):
    src = osp.join(det["root"], "val2017")
    folder = tmp_path / "shots"
    (folder / "sub").mkdir(parents=True)
    first = sorted(os.listdir(src))[0]
    shutil.copy(osp.join(src, first), folder / "sub" / "a.jpg")
    (folder / "broken.png").write_bytes(b"no image here")
    out = tmp_path / "out"
    assert infer("det", [DET, det["ckpt"], str(folder), "--out", str(out), "--score-thr", "0"]) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "broken.png" in line]
    assert len(warnings) == 1 and "warning" in warnings[0], err
    with open(out / "predictions.json") as f:
        records = json.load(f)
    assert records and {r["file_name"] for r in records} == {osp.join("sub", "a.jpg")}
    assert osp.isfile(out / "vis" / "sub" / "a.jpg")

    assert infer("det", [DET, det["ckpt"], str(folder), "--out", str(tmp_path / "o2"), "--strict"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("tools/infer_det.py: error: ") and "broken.png" in err[-1]
    # a glob names its images relative to the pattern's folder
    assert infer("det", [DET, det["ckpt"], str(folder / "*" / "*.jpg"), "--out", str(tmp_path / "o3")]) == 0
    assert osp.isfile(tmp_path / "o3" / "vis" / "sub" / "a.jpg")


def test_infer_seg_writes_label_maps_of_the_input_size(tmp_path):
    from swtasks.mm.cli import main

    rng = np.random.default_rng(0)
    root = tmp_path / "seg"
    for split, n in (("training", 2), ("validation", 1)):
        for sub in ("images", "annotations"):
            (root / sub / split).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(root / "images" / split / f"{i}.jpg")
            Image.fromarray(rng.integers(0, 4, (48, 64), dtype=np.uint8)).save(root / "annotations" / split / f"{i}.png")
    work = str(tmp_path / "work")
    main("seg", "train", [SEG, "--data-root", str(root), "--classes", "sky,road,car", "--reduce-zero-label",
                          "--work-dir", work, "--cfg-options", "randomness.seed=0"])
    ckpt = osp.join(work, "iter_2.pth")

    shots = tmp_path / "shots"
    shots.mkdir()
    sizes = {"wide.jpg": (70, 30), "tall.png": (33, 57), "same.jpg": (70, 30)}
    for name, (w, h) in sizes.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(shots / name)
    out = tmp_path / "out"
    assert infer("seg", [SEG, ckpt, str(shots), "--out", str(out), "--batch-size", "3", "--device", "cpu"]) == 0
    for name, (w, h) in sizes.items():
        label = np.asarray(Image.open(out / "labels" / (osp.splitext(name)[0] + ".png")))
        assert label.shape == (h, w), name
        assert set(np.unique(label)) <= {1, 2, 3}  # classes 0..2 written as the PNG's values 1..3
        assert osp.isfile(out / "vis" / name)
    assert sorted(glob.glob(str(out / "labels" / "*.png"))) == sorted(
        str(out / "labels" / (osp.splitext(n)[0] + ".png")) for n in sizes
    )
    assert tuple(torch.load(ckpt, weights_only=False)["meta"]["dataset_meta"]["classes"]) == ("sky", "road", "car")


@pytest.mark.parametrize("task", ["det", "seg"])
def test_demo_config_writes_its_data_trains_and_reports(task, tmp_path, capsys):
    """The demo configs (make demo-det / demo-seg) for 2 iterations on a small copy of their generated data:
    the data is written in the real layout, the run validates, and the report names the drawn predictions and
    the curves, which exist. (The demos' scores are measured runs, docs/detection-segmentation.md.)"""
    from swtasks.mm.cli import main

    data = str(tmp_path / "data")
    options = [f"demo_data.root={data}", "demo_data.num_train=8", "demo_data.num_val=2",
               "train_cfg.max_iters=2", "train_cfg.val_interval=2", "default_hooks.logger.interval=1",
               "custom_hooks.0.num_images=2", "randomness.seed=0"]
    work = tmp_path / "work"
    main(task, "train", [osp.join(ROOT, f"configs/{task}/demo.py"), "--work-dir", str(work), "--data-root", data,
                         "--cfg-options", *options])
    layout = ("annotations/instances_val2017.json", "train2017") if task == "det" else (
        "annotations/validation", "images/training")
    assert all(osp.exists(osp.join(data, p)) for p in layout)
    out = capsys.readouterr().out
    assert "[demo] " in out and "predictions" in out and "curves.png" in out, out[-2000:]
    assert len(os.listdir(work / "predictions")) == 2 and osp.isfile(work / "curves.png")


def test_infer_tool_in_a_fresh_process_reads_the_runner_checkpoint(det, tmp_path):
    """tools/infer_det.py as a command: a process that has built no Runner reads the Runner's checkpoint (its
    message hub included) weights-only, and --strict with readable images exits 0."""
    import subprocess
    import sys

    out = tmp_path / "o"
    r = subprocess.run(
        [sys.executable, osp.join(ROOT, "tools/infer_det.py"), DET, det["ckpt"], osp.join(det["root"], "val2017"),
         "--out", str(out), "--strict", "--device", "cpu"],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert osp.isfile(out / "predictions.json") and "images" in r.stdout
