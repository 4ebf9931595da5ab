"""Hostile detection and segmentation data, in the real COCO and ADE20K formats: the pre-flight check
(swtasks.mm.data_check, run by tools/{train,test}_{det,seg}.py) gives the documented behaviour
(docs/reliability.md, "Detection and segmentation data"), and where it says MMDetection drops or keeps
something, the real CocoDataset and pipeline are checked to do just that."""

from __future__ import annotations

import json
import os.path as osp

import numpy as np
import pytest
from PIL import Image

import swtasks.mm  # noqa: F401  (registers the backbones; mmengine compatibility)

pytestmark = pytest.mark.mm

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DET = osp.join(ROOT, "configs/det/mask-rcnn_shiftwise-atto_fpn_2iter_tiny-coco.py")
SEG = osp.join(ROOT, "configs/seg/upernet_shiftwise-atto_2iter_tiny-ade20k-64x64.py")


@pytest.fixture
def coco(tmp_path):
    from swtasks.mm.testing import make_tiny_coco

    root = make_tiny_coco(str(tmp_path / "coco"), num_train=4, num_val=2)
    path = osp.join(root, "annotations", "instances_train2017.json")
    with open(path) as f:
        data = json.load(f)
    return root, path, data


def write(path, data):
    with open(path, "w") as f:
        json.dump(data, f)


def check(root, split="train"):
    from swtasks.mm.data_check import check_coco

    return check_coco(
        osp.join(root, "annotations", f"instances_{split}2017.json"),
        osp.join(root, f"{split}2017"),
        classes=("square", "disk"),
        with_mask=True,
        train=split == "train",
        filter_empty_gt=split == "train",
        min_size=32,
        log=lambda msg: None,
    )


def test_missing_fields_are_errors_naming_file_id_and_field(coco):
    from swtasks.mm.cli import main
    from swtasks.mm.data_check import DataCheckError

    root, path, data = coco
    del data["annotations"][1]["area"]
    del data["annotations"][2]["segmentation"]
    del data["images"][0]["file_name"]
    write(path, data)
    with pytest.raises(DataCheckError) as info:
        check(root)
    message = str(info.value)
    assert message.startswith(f"{path}: 3 problem(s)")
    assert "images[0] (id 1) has no ['file_name']" in message
    assert f"annotation id {data['annotations'][1]['id']} (annotations[1]) has no ['area']" in message
    assert "(annotations[2]) has no ['segmentation']" in message
    # the tool stops before building the Runner, with the same message
    with pytest.raises(
        SystemExit, match=r"(?s)tools/train_det\.py: error: .*instances_train2017\.json: 3 problem"
    ):
        main("det", "train", [DET, "--data-root", root, "--work-dir", osp.join(root, "w")])

    write(path, {"images": data["images"], "annotations": data["annotations"]})
    with pytest.raises(DataCheckError, match=r"missing top-level field: 'categories' is missing"):
        check(root)
    with open(path, "w") as f:
        f.write('{"images": [')
    with pytest.raises(DataCheckError, match=r"instances_train2017\.json: not valid JSON"):
        check(root)


@pytest.mark.parametrize(
    "mutate, kind, text",
    [
        (lambda d: d["annotations"][0].update(image_id=99), "annotation of an unknown image", "image_id 99"),
        (
            lambda d: d["annotations"][0].update(category_id=7),
            "annotation of an unknown category",
            "category_id 7",
        ),
        (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), "malformed bbox", "bbox [1, 2, 3]"),
        (
            lambda d: d["annotations"][0].update(bbox=[1, 2, float("nan"), 4]),
            "malformed bbox",
            "bbox [1, 2, nan, 4]",
        ),
        (
            lambda d: d["annotations"][1].update(id=d["annotations"][0]["id"]),
            "duplicate annotation id",
            "id 1",
        ),
        (lambda d: d["categories"][1].update(name="circle"), "config class not in 'categories'", "['disk']"),
        (lambda d: d["images"][1].update(file_name="nope.jpg"), "image file not found", "train2017/nope.jpg"),
        # two ids of one name: MMDetection maps names to labels, one label more than the heads have
        (
            lambda d: d["categories"].append({"id": 9, "name": "square", "supercategory": "shape"}),
            "duplicate category name",
            "'square' is the name of category ids",
        ),
        (lambda d: d["images"][0].update(id=[1]), "id not an integer", "images[0]: id [1]"),
        (lambda d: d["annotations"][0].update(category_id="1"), "id not an integer", "category_id '1'"),
        (lambda d: d["categories"][0].update(id=1.5), "id not an integer", "categories[0]: id 1.5"),
        (lambda d: d["annotations"][0].update(bbox=[1, 2, -3, 4]), "malformed bbox", "negative width or height"),
    ],
)
def test_inconsistent_annotations_are_errors(coco, mutate, kind, text):
    from swtasks.mm.data_check import DataCheckError

    root, path, data = coco
    mutate(data)
    write(path, data)
    with pytest.raises(DataCheckError) as info:
        check(root)
    assert f"  {kind}: " in str(info.value) and text in str(info.value), str(info.value)


def test_empty_zero_area_and_out_of_image_boxes_follow_mmdetection(coco):
    """Images without annotations: not trained on (filter_empty_gt), kept for evaluation. Zero-area boxes
    and boxes entirely outside the image: dropped. Boxes partly outside: clipped by the pipeline. Each is
    counted, and the real CocoDataset + training pipeline do exactly that."""
    import torch

    from swtasks.mm.testing import pipeline_samples

    root, path, data = coco
    anns = data["annotations"]
    empty_image = 3
    anns[:] = [a for a in anns if a["image_id"] != empty_image]
    zero, outside, partly = anns[0], anns[1], anns[2]
    zero["bbox"][2] = 0.5  # width < 1 px
    outside["bbox"][0] = 64 + 5.0  # right of the 64-px image
    partly["bbox"][0] = -5.0  # sticks out on the left
    write(path, data)
    report = check(root)
    assert report.counts["zero_area"] == 1 and report.counts["outside"] == 1 and report.counts["clipped"] == 1
    assert report.counts["without_annotations"] == 1
    text = "\n".join(report.warnings)
    assert (
        f"1 zero-area boxes (area <= 0 or width/height < 1 px) are dropped (annotation ids {zero['id']})"
        in text
    )
    assert f"1 boxes entirely outside their image are dropped (annotation ids {outside['id']})" in text
    assert f"clipped to it by the pipeline's Resize (annotation ids {partly['id']})" in text
    assert "1 of 4 images have no annotations and are not trained on (filter_empty_gt)" in text

    cfg, dataset, samples = pipeline_samples(DET, root, split="train")
    infos = {dataset.get_data_info(i)["img_id"]: dataset.get_data_info(i) for i in range(len(dataset))}
    assert empty_image not in infos and len(infos) == 3  # filtered out of training
    kept = {tuple(inst["bbox"]) for info in infos.values() for inst in info["instances"]}
    raw = {a["id"]: a["bbox"] for a in anns}
    for dropped in (zero, outside):
        x, y, w, h = raw[dropped["id"]]
        assert (x, y, x + w, y + h) not in kept
    assert len(kept) == len(anns) - 2
    for s in samples:  # after the pipeline every box lies inside the (resized) image
        boxes = s.gt_instances.bboxes.tensor
        h, w = s.img_shape
        assert torch.all(boxes[:, :2] >= 0) and torch.all(boxes[:, 2] <= w) and torch.all(boxes[:, 3] <= h)

    # evaluation keeps images without annotations
    val = osp.join(root, "annotations", "instances_val2017.json")
    with open(val) as f:
        vdata = json.load(f)
    vdata["annotations"] = [a for a in vdata["annotations"] if a["image_id"] != 1]
    write(val, vdata)
    vreport = check(root, "val")
    assert vreport.counts["without_annotations"] == 1 and "and are kept" in vreport.warnings[0]
    _, vdataset, _ = pipeline_samples(DET, root, split="val")
    assert len(vdataset) == 2


def test_a_training_set_left_empty_is_an_error(coco):
    from swtasks.mm.data_check import DataCheckError

    root, path, data = coco
    data["annotations"] = []
    write(path, data)
    with pytest.raises(DataCheckError, match=r"no training image is left after filter_cfg .* 4 of 4 images"):
        check(root)


# ---------------------------------------------------------------------------------------------- ADE20K
def test_empty_corrupt_and_huge_image_files_are_errors_before_decoding(coco):
    from swtasks.mm.data_check import DataCheckError

    root, path, data = coco
    names = [osp.join(root, "train2017", im["file_name"]) for im in data["images"]]
    open(names[0], "wb").close()  # 0 bytes
    with open(names[1], "wb") as f:
        f.write(b"this is no image")
    with pytest.raises(DataCheckError) as info:
        check(root)
    text = str(info.value)
    assert f"empty image file (0 bytes): {names[0]}" in text and f"unreadable image file: {names[1]}" in text


def _declare_size(png_path, width: int, height: int) -> None:
    """Rewrite a PNG's IHDR to declare another size (CRC fixed): a header that promises 30000x30000 pixels."""
    import struct
    import zlib

    data = bytearray(open(png_path, "rb").read())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    open(png_path, "wb").write(bytes(data))


@pytest.fixture
def ade(tmp_path):
    from swtasks.mm.testing import make_tiny_ade20k

    root = make_tiny_ade20k(str(tmp_path / "ade"), num_train=3, num_val=2)
    maps = sorted((tmp_path / "ade" / "annotations" / "training").glob("*.png"))
    return root, maps


def check_seg(root, split="training"):
    from swtasks.mm.data_check import check_ade20k

    return check_ade20k(
        osp.join(root, "images", split),
        osp.join(root, "annotations", split),
        num_classes=150,
        reduce_zero_label=True,
        log=lambda msg: None,
    )


def test_label_values_outside_the_classes_are_errors_but_255_is_ignored(ade):
    from swtasks.mm.cli import main
    from swtasks.mm.data_check import DataCheckError

    root, maps = ade
    label = np.asarray(Image.open(maps[0])).copy()
    label[:4, :4] = 255  # ignored: allowed
    Image.fromarray(label).save(maps[0])
    assert check_seg(root).images == 3
    label[10:12, 10:12] = 200
    label[20, 20] = 151
    Image.fromarray(label).save(maps[1])
    with pytest.raises(DataCheckError) as info:
        check_seg(root)
    assert f"label value out of range: {maps[1]}: values 151, 200 (allowed: 0..150 or 255" in str(info.value)
    with pytest.raises(SystemExit, match=r"(?s)tools/train_seg\.py: error: .*values 151, 200"):
        main("seg", "train", [SEG, "--data-root", root, "--work-dir", osp.join(root, "w")])


def test_label_map_size_mode_and_presence(ade):
    from swtasks.mm.data_check import DataCheckError

    root, maps = ade
    label = np.asarray(Image.open(maps[0]))
    Image.fromarray(label[:48]).save(maps[0])  # 64 wide, 48 high
    with pytest.raises(DataCheckError) as info:
        check_seg(root)
    image = maps[0].as_posix().replace("/annotations/", "/images/").replace(".png", ".jpg")
    assert f"label map size differs from the image: {maps[0]} is 64x48, {image} is 64x64 (W x H)" in str(
        info.value
    )
    Image.fromarray(np.stack([label] * 3, axis=-1)).save(maps[0])
    with pytest.raises(DataCheckError, match=r"label map not single-channel: .* mode RGB \(3 bands\)"):
        check_seg(root)
    maps[0].unlink()
    with pytest.raises(DataCheckError, match=rf"image without a label map: .* no {maps[0]}"):
        check_seg(root)
    # a label map whose header declares 30000 x 30000 pixels: refused from the header, nothing decoded
    _declare_size(maps[1], 30000, 30000)
    with pytest.raises(DataCheckError, match=rf"image too large: {maps[1]}"):
        check_seg(root)


def test_config_check_covers_each_split_once_and_reads_the_dataset_settings(ade, coco):
    """check_config_data finds the datasets of the configs (train/val/test dataloaders, test = val
    deduplicated) and reads reduce_zero_label, the classes and the mask loading from them."""
    from mmengine.config import Config

    from swtasks.mm.cli import set_data_root
    from swtasks.mm.data_check import check_config_data

    seg_root, _ = ade
    cfg = Config.fromfile(SEG)
    set_data_root(cfg, seg_root)
    reports = check_config_data(cfg, log=lambda msg: None)
    assert [osp.basename(r.source.split(" + ")[0]) for r in reports] == ["training", "validation"]
    det_root, path, data = coco
    cfg = Config.fromfile(DET)
    set_data_root(cfg, det_root)
    reports = check_config_data(cfg, log=lambda msg: None)
    assert [osp.basename(r.source) for r in reports] == ["instances_train2017.json", "instances_val2017.json"]
    data["annotations"][0]["segmentation"] = []  # the config's pipeline loads masks: an error
    write(path, data)
    with pytest.raises(ValueError, match="empty segmentation"):
        check_config_data(cfg, log=lambda msg: None)
