"""tools/test_det.py / tools/test_seg.py --show-dir: the frameworks' own visualisers draw every test image's
prediction (boxes and masks / label maps) next to its ground truth, on the tiny COCO and ADE20K fixtures, with
the real Runners (detector and segmentor from the CPU smoke configs, weights saved here)."""

from __future__ import annotations

import os
import os.path as osp

import numpy as np
import pytest
import torch

import swtasks.mm  # noqa: F401  (registers the backbones)

pytestmark = pytest.mark.mm

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = {
    "det": osp.join(ROOT, "configs/det/mask-rcnn_shiftwise-atto_fpn_2iter_tiny-coco.py"),
    "seg": osp.join(ROOT, "configs/seg/upernet_shiftwise-atto_2iter_tiny-ade20k-64x64.py"),
}


def _checkpoint(task: str, path: str) -> str:
    """Weights of the config's model (random init), as an mmengine checkpoint file."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    scope = {"det": "mmdet", "seg": "mmseg"}[task]
    init_default_scope(scope)
    models = __import__(f"{scope}.registry", fromlist=["MODELS"]).MODELS
    torch.manual_seed(0)
    model = models.build(Config.fromfile(CONFIGS[task]).model)
    torch.save({"state_dict": model.state_dict(), "meta": {}}, path)
    return path


def _image(path: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(np.int16)


@pytest.mark.parametrize("task", ["det", "seg"])
def test_show_dir_draws_every_prediction(task, tmp_path, monkeypatch):
    from swtasks.mm.cli import main
    from swtasks.mm.testing import make_tiny_ade20k, make_tiny_coco

    if task == "det":
        data = make_tiny_coco(str(tmp_path / "coco"))
        inputs = sorted(os.listdir(osp.join(data, "val2017")))
        originals = {n: osp.join(data, "val2017", n) for n in inputs}
        # every kept detection drawn (the untrained detector's scores are low)
        extra = ["--cfg-options", "default_hooks.visualization.score_thr=0.0"]
    else:
        data = make_tiny_ade20k(str(tmp_path / "ade"))
        inputs = sorted(os.listdir(osp.join(data, "images", "validation")))
        originals = {n: osp.join(data, "images", "validation", n) for n in inputs}
        extra = []
    ckpt = _checkpoint(task, str(tmp_path / "model.pth"))
    monkeypatch.chdir(tmp_path)  # a relative --show-dir, as typed on a command line
    main(task, "test", [CONFIGS[task], ckpt, "--data-root", data, "--work-dir", str(tmp_path / "work"),
                        "--show-dir", "shows", *extra])

    shows = tmp_path / "shows"
    if task == "det":  # mmdet: one file per image, named after it
        drawn = {n: shows / n for n in inputs}
    else:  # mmseg: through the visualiser's LocalVisBackend, window name test_<image>, step 0
        drawn = {n: shows / "vis_data" / "vis_image" / f"test_{n}_0.png" for n in inputs}
    assert len(inputs) == 2
    for name, path in drawn.items():
        assert path.is_file() and path.stat().st_size > 0, sorted(str(p) for p in shows.rglob("*"))
        picture, original = _image(str(path)), _image(originals[name])
        h, w, _ = original.shape
        assert picture.shape == (h, 2 * w, 3)  # ground truth | prediction
        # the prediction half is the image with the prediction drawn over it (JPEG noise is a few levels)
        assert np.abs(picture[:, w:] - original).mean() > 8.0
