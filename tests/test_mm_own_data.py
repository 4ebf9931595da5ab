"""Your own data (swtasks.mm.own_data, through tools/train_{det,seg}.py's option parsing and config loading):
the class list comes from the data and sets every head and every dataset's metainfo; a config whose heads
disagree with its data stops with one line naming the key. Config-level tests (nothing is trained: the
predictions that carry the file's ids are tested in tests/test_mm_infer.py)."""

from __future__ import annotations

import json
import os.path as osp

import numpy as np
import pytest
from helpers import COCO_3_7_11, make_coco_3_7_11
from PIL import Image

import swtasks.mm  # noqa: F401  (registers the backbones; mmengine compatibility)

pytestmark = pytest.mark.mm

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DET = osp.join(ROOT, "configs/det/mask-rcnn_shiftwise-atto_fpn_2iter_tiny-coco.py")
CASCADE = osp.join(ROOT, "configs/det/cascade-mask-rcnn_shiftwise-tiny_fpn_ms-3x_coco.py")
SEG = osp.join(ROOT, "configs/seg/upernet_shiftwise-atto_2iter_tiny-ade20k-64x64.py")
NAMES = COCO_3_7_11


def load(task, mode, argv):
    from swtasks.mm.cli import _parser, load_config

    return load_config(_parser(task, mode).parse_args(argv), task, mode)


def heads(cfg, task="det"):
    from swtasks.mm.own_data import num_class_keys

    return {k: node["num_classes"] for k, node in num_class_keys(cfg.model, task)}


def datasets(cfg):
    from swtasks.mm.own_data import _loader_datasets

    return [(p, d) for _s, p, d in _loader_datasets(cfg)]


@pytest.mark.parametrize("config", [DET, CASCADE])
def test_class_list_from_the_annotation_file_sets_every_head_and_dataset(tmp_path, config):
    root = make_coco_3_7_11(str(tmp_path / "coco"))
    cfg = load("det", "train", [config, "--data-root", root, "--work-dir", str(tmp_path / "w")])
    got = heads(cfg)
    if config == CASCADE:  # three box heads; one mask head entry, which MMDetection repeats for each stage
        assert sorted(got) == [f"model.roi_head.bbox_head[{i}].num_classes" for i in range(3)] + [
            "model.roi_head.mask_head.num_classes"
        ]
    else:
        assert sorted(got) == ["model.roi_head.bbox_head.num_classes", "model.roi_head.mask_head.num_classes"]
    assert set(got.values()) == {3}
    assert "num_classes" not in cfg.model.rpn_head  # class-agnostic, left alone
    for path, ds in datasets(cfg):
        assert tuple(ds.metainfo["classes"]) == ("cat", "dog", "fox"), path
        assert tuple(ds.metainfo["category_ids"]) == (3, 7, 11), path
        assert len(ds.metainfo["palette"]) == 3
    evs = cfg.val_evaluator if isinstance(cfg.val_evaluator, (list, tuple)) else [cfg.val_evaluator]
    assert evs[0].ann_file == osp.join(root, "annotations/instances_val2017.json")

    # the model built from it has 3 classes (+ background) in every box classifier and mask predictor
    # (the Cascade with the atto backbone, to keep the test small)
    from mmdet.registry import MODELS
    from mmengine.registry import init_default_scope

    init_default_scope("mmdet")
    cfg.model.backbone.update(arch="atto", init_cfg=None)
    cfg.model.neck.in_channels = [40, 80, 160, 320]
    model = MODELS.build(cfg.model)
    box = model.roi_head.bbox_head
    mask = model.roi_head.mask_head
    box, mask = (box, mask) if config == CASCADE else ([box], [mask])
    assert len(box) == len(mask) == (3 if config == CASCADE else 1)
    assert [h.fc_cls.out_features for h in box] == [4] * len(box)
    assert [h.conv_logits.out_channels for h in mask] == [3] * len(mask)


def test_classes_option_keeps_those_in_the_file_order_and_explicit_paths(tmp_path):
    root = make_coco_3_7_11(str(tmp_path / "coco"))
    ann = osp.join(root, "annotations", "instances_{}2017.json")
    argv = [DET, "--train-ann", ann.format("train"), "--train-img", osp.join(root, "train2017"),
            "--val-ann", ann.format("val"), "--val-img", osp.join(root, "val2017"), "--classes", "fox,cat"]
    cfg = load("det", "train", argv)
    assert set(heads(cfg).values()) == {2}
    for path, ds in datasets(cfg):
        assert tuple(ds.metainfo["classes"]) == ("cat", "fox") and tuple(ds.metainfo["category_ids"]) == (3, 11)
        split = "train" if path.startswith("train") else "val"
        assert ds.ann_file == osp.abspath(ann.format(split))
        assert ds.data_prefix["img"].rstrip("/") == osp.abspath(osp.join(root, f"{split}2017"))
    with pytest.raises(Exception, match=r"--classes: \['wolf'\] not among the categories of .*cat, dog, fox"):
        load("det", "train", [DET, "--data-root", root, "--classes", "cat,wolf"])
    with pytest.raises(Exception, match="--val-img missing"):
        load("det", "train", argv[:7])


def _one_line_error(capsys, main_args):
    from swtasks.mm.cli import main

    with pytest.raises(SystemExit) as info:
        main(*main_args)
    err = capsys.readouterr().err.strip()
    message = err or str(info.value.code)
    assert info.value.code not in (0, None)
    return message


def test_head_data_mismatch_stops_with_one_line_naming_the_key(tmp_path, capsys):
    root = make_coco_3_7_11(str(tmp_path / "coco"))
    # the config's own data paths and classes, but a head left at 80 classes
    config = tmp_path / "mismatch.py"
    config.write_text(
        f"_base_ = {DET!r}\n"
        f"data_root = {root + '/'!r}\n"
        "classes = ('cat', 'dog', 'fox')\n"
        "model = dict(roi_head=dict(bbox_head=dict(num_classes=80), mask_head=dict(num_classes=3)))\n"
        "train_dataloader = dict(dataset=dict(data_root=data_root, metainfo=dict(classes=classes)))\n"
        "val_dataloader = dict(dataset=dict(data_root=data_root, metainfo=dict(classes=classes)))\n"
        "test_dataloader = val_dataloader\n"
        "val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')\n"
    )
    msg = _one_line_error(capsys, ("det", "train", [str(config), "--work-dir", str(tmp_path / "w")]))
    assert "\n" not in msg.strip(), msg
    assert "model.roi_head.bbox_head.num_classes=80" in msg and "the data has 3 classes" in msg, msg
    assert "mask_head" not in msg
    assert not osp.exists(tmp_path / "w" / "iter_2.pth")


def test_annotation_of_a_category_not_in_the_file_is_one_line(tmp_path, capsys):
    root = make_coco_3_7_11(str(tmp_path / "coco"))
    path = osp.join(root, "annotations", "instances_train2017.json")
    with open(path) as f:
        data = json.load(f)
    data["annotations"][1]["category_id"] = 5
    with open(path, "w") as f:
        json.dump(data, f)
    msg = _one_line_error(capsys, ("det", "train", [DET, "--data-root", root, "--work-dir", str(tmp_path / "w")]))
    assert "\n" not in msg.strip(), msg
    assert "instances_train2017.json" in msg and "category_id 5" in msg and "[3, 7, 11]" in msg, msg


def make_seg_data(root: str, values=(0, 1, 2), size=(40, 32)) -> str:
    rng = np.random.default_rng(0)
    for split, n in (("training", 2), ("validation", 1)):
        for i in range(n):
            for sub, ext in (("images", ".png"), ("annotations", ".png")):
                d = osp.join(root, sub, split)
                import os

                os.makedirs(d, exist_ok=True)
                if sub == "images":
                    arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
                else:
                    arr = rng.choice(np.array(values, np.uint8), size=(size[1], size[0]))
                Image.fromarray(arr).save(osp.join(d, f"im{i}{ext}"))
    return root


def test_seg_classes_set_heads_dataset_and_reduce_zero_label(tmp_path):
    root = make_seg_data(str(tmp_path / "seg"))
    cfg = load("seg", "train", [SEG, "--data-root", root, "--classes", "sky,road,car"])
    assert heads(cfg, "seg") == {"model.decode_head.num_classes": 3, "model.auxiliary_head.num_classes": 3}
    for _path, ds in datasets(cfg):
        assert ds.type == "BaseSegDataset" and tuple(ds.metainfo["classes"]) == ("sky", "road", "car")
        assert ds.img_suffix == ".png"  # found in the folder (ADE20K's are .jpg)
        assert ds.reduce_zero_label is False
        assert all(s.get("reduce_zero_label") is False for s in ds.pipeline if s["type"] == "LoadAnnotations")
    names = tmp_path / "classes.txt"
    names.write_text("sky\nroad\n")
    cfg = load("seg", "train", [SEG, "--data-root", root, "--classes-file", str(names), "--reduce-zero-label"])
    assert set(heads(cfg, "seg").values()) == {2}
    for _path, ds in datasets(cfg):
        assert ds.reduce_zero_label is True
        assert all(s.get("reduce_zero_label") is True for s in ds.pipeline if s["type"] == "LoadAnnotations")


def test_seg_mismatch_and_label_out_of_range_stop_before_training(tmp_path, capsys):
    root = make_seg_data(str(tmp_path / "seg"), values=(0, 1, 2, 7))
    # the heads of the smoke config have 150 classes; a config whose metainfo names 3 disagrees
    config = tmp_path / "mismatch.py"
    config.write_text(
        f"_base_ = {SEG!r}\n"
        "train_dataloader = dict(dataset=dict(type='BaseSegDataset', metainfo=dict(classes=('a', 'b', 'c'))))\n"
    )
    msg = _one_line_error(capsys, ("seg", "train", [str(config), "--data-root", root]))
    assert "\n" not in msg.strip() and "model.decode_head.num_classes=150" in msg and "3 classes" in msg, msg
    # label value 7 with 3 classes: the data check names the file before training
    msg = _one_line_error(capsys, ("seg", "train", [SEG, "--data-root", root, "--classes", "a,b,c",
                                                    "--work-dir", str(tmp_path / "w")]))
    assert "label value out of range" in msg and "values 7" in msg and "im0.png" in msg, msg
    assert not osp.exists(tmp_path / "w" / "iter_2.pth")
