"""The detection and segmentation demos (``make demo-det``, ``make demo-seg``): generated data in the real COCO
and ADE20K layouts, and a hook that reports what the run reached.

    python tools/train_det.py configs/det/demo.py      # Mask R-CNN + FPN, ShiftWiseNet-atto, CPU
    python tools/train_seg.py configs/seg/demo.py      # UperNet, ShiftWiseNet-atto, CPU

Data. A demo config names its data with a top-level ``demo_data = dict(kind='coco' | 'ade20k', root=...,
seed=..., num_train=..., num_val=..., size=...)``; ``tools/train_*.py`` (``swtasks.mm.cli``) call
:func:`ensure_demo_data` before anything reads the files, and it writes them on first use (a few seconds),
deterministically from the seed: the same arguments give the same files, byte for byte. A marker file
``.swtasks-demo.json`` holds the arguments; when they change the data is written again.

- ``coco``: ``annotations/instances_{train,val}2017.json``, ``train2017/``, ``val2017/``; classes
  ``square``, ``disk``, ``triangle`` (category ids 1, 2, 3), 1-4 non-overlapping shapes per image with
  polygon masks.
- ``ade20k``: ``images/{training,validation}/*.jpg``, ``annotations/{training,validation}/*.png``; label
  values 0 ``background``, 1 ``square``, 2 ``disk``, 3 ``triangle`` (no ``reduce_zero_label``); 1-5 shapes
  that may overlap (the later one on top).

The shapes are filled polygons in saturated colours (any colour, whatever the class: the class is the shape)
on a plain, mildly textured background of contrasting brightness; sides of 18-56 px in 128 px images.

Report. :class:`DemoReportHook` (``custom_hooks`` of the demo configs) draws the predictions of a few
validation images next to their ground truth with the framework's own visualiser
(``<work_dir>/predictions/*.png``), plots the training losses and the validation metric over the
iterations (``<work_dir>/curves.png``, from mmengine's ``vis_data/scalars.json``) and prints the score
reached against the demo's goal and where the pictures are.

Backbone. :class:`ShiftWiseNetBNOut` (registered in MMDetection's and MMSegmentation's ``MODELS``):
``ShiftWiseNet`` with BatchNorms on its outputs, for training from scratch (its docstring says why).
"""

from __future__ import annotations

import json
import math
import os
import os.path as osp
from collections.abc import Callable

import numpy as np

from .dataset_writers import write_ade20k, write_coco

__all__ = [
    "DEMO_CLASSES",
    "SEG_CLASSES",
    "DemoReportHook",
    "ensure_demo_data",
    "make_shapes_ade20k",
    "make_shapes_coco",
]

DEMO_CLASSES = ("square", "disk", "triangle")
SEG_CLASSES = ("background", *DEMO_CLASSES)
MARKER = ".swtasks-demo.json"
GENERATOR_VERSION = 1  # bump when the drawing changes: existing demo data is then written again


# ---------------------------------------------------------------------------------------------- drawing
def _background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, float]:
    """A plain colour with a faint gradient and fine noise; returns (RGB uint8 image, its mean luminance)."""
    dark = rng.random() < 0.5
    level = rng.uniform(20, 80) if dark else rng.uniform(170, 235)
    tint = rng.uniform(-20, 20, size=3)
    base = np.clip(level + tint, 0, 255)
    yy, xx = np.mgrid[:size, :size] / max(size - 1, 1)
    angle = rng.uniform(0, 2 * math.pi)
    ramp = (np.cos(angle) * xx + np.sin(angle) * yy)[..., None] * rng.uniform(-15, 15)
    noise = rng.normal(0, 4, size=(size, size, 3))
    img = np.clip(base + ramp + noise, 0, 255).astype(np.uint8)
    return img, float(level)


def _colour(rng: np.random.Generator, bg_level: float, colours: str = "random") -> tuple[int, int, int]:
    """A saturated colour whose brightness differs from the background's by at least ~90 (of 255); with
    ``colours='mono'`` a near-white shape on a dark background and a near-black one on a bright one."""
    if colours == "mono":
        v = rng.uniform(215, 250) if bg_level < 128 else rng.uniform(5, 40)
        return (int(v), int(v), int(v))
    while True:
        hue = rng.uniform(0, 6)
        c = np.array([max(0.0, min(1.0, abs((hue + s) % 6 - 3) - 1)) for s in (0, 4, 2)])  # HSV, S=V=1
        value = rng.uniform(0.25, 0.55) if bg_level > 128 else rng.uniform(0.8, 1.0)
        mix = rng.uniform(0.0, 0.3)
        rgb = 255 * value * ((1 - mix) * c + mix)
        lum = float(rgb @ [0.299, 0.587, 0.114])
        if abs(lum - bg_level) >= 90 or rng.random() < 0.02:
            return tuple(int(v) for v in rgb)


def _polygon(kind: int, cx: float, cy: float, side: float) -> list[tuple[float, float]]:
    """Outline of a square (axis-aligned), disk (32-gon) or triangle (upright) of bounding-box side ``side``."""
    h = side / 2
    if kind == 0:
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if kind == 1:
        return [(cx + h * math.cos(2 * math.pi * i / 32), cy + h * math.sin(2 * math.pi * i / 32)) for i in range(32)]
    return [(cx, cy - h), (cx + h, cy + h), (cx - h, cy + h)]


def _poly_area(pts) -> float:
    return 0.5 * abs(sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(pts, pts[1:] + pts[:1])))


def _draw_image(rng, size: int, count: int, overlap: bool, colours: str = "random"):
    """(RGB image, [(kind, polygon, mask)]) with ``count`` shapes (fewer if they do not fit apart)."""
    from PIL import Image, ImageDraw

    img, level = _background(rng, size)
    canvas = Image.fromarray(img)
    draw = ImageDraw.Draw(canvas)
    shapes, boxes = [], []
    for _ in range(count):
        for _attempt in range(50):
            side = float(rng.uniform(18, 56))
            cx = float(rng.uniform(side / 2 + 2, size - side / 2 - 2))
            cy = float(rng.uniform(side / 2 + 2, size - side / 2 - 2))
            box = (cx - side / 2 - 3, cy - side / 2 - 3, cx + side / 2 + 3, cy + side / 2 + 3)
            if overlap or all(box[2] < b[0] or b[2] < box[0] or box[3] < b[1] or b[3] < box[1] for b in boxes):
                break
        else:
            continue
        kind = int(rng.integers(0, 3))
        pts = _polygon(kind, cx, cy, side)
        colour = _colour(rng, level, colours)
        draw.polygon(pts, fill=colour)
        mask = Image.new("L", (size, size), 0)
        ImageDraw.Draw(mask).polygon(pts, fill=1)
        shapes.append((kind, pts, np.asarray(mask, bool)))
        boxes.append(box)
    return np.asarray(canvas), shapes


# ---------------------------------------------------------------------------------------------- datasets
def make_shapes_coco(
    root: str, num_train: int = 400, num_val: int = 60, size: int = 128, seed: int = 0, colours: str = "random"
) -> str:
    """Write the detection demo's data under ``root`` in the COCO 2017 layout; returns ``root``."""
    rng = np.random.default_rng(seed)

    def make_image(_i):
        img, shapes = _draw_image(rng, size, int(rng.integers(1, 5)), overlap=False, colours=colours)
        objects = []
        for kind, pts, _mask in shapes:
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            x0, y0 = max(0.0, min(xs)), max(0.0, min(ys))
            w, h = min(float(size), max(xs)) - x0, min(float(size), max(ys)) - y0
            objects.append((kind, [round(x0, 2), round(y0, 2), round(w, 2), round(h, 2)], round(_poly_area(pts), 2),
                            [round(v, 2) for p in pts for v in p]))
        return img, objects

    return write_coco(root, DEMO_CLASSES, {"train2017": num_train, "val2017": num_val}, make_image)


def make_shapes_ade20k(
    root: str, num_train: int = 300, num_val: int = 50, size: int = 128, seed: int = 0, colours: str = "random"
) -> str:
    """Write the segmentation demo's data under ``root`` in the ADE20K layout; returns ``root``."""
    rng = np.random.default_rng(seed)

    def make_image(_i):
        img, shapes = _draw_image(rng, size, int(rng.integers(1, 6)), overlap=True, colours=colours)
        label = np.zeros((size, size), np.uint8)
        for kind, _pts, mask in shapes:
            label[mask] = kind + 1
        return img, label

    return write_ade20k(root, {"training": num_train, "validation": num_val}, make_image, "demo_{split}_{i:06d}")


_MAKERS = {"coco": make_shapes_coco, "ade20k": make_shapes_ade20k}


def ensure_demo_data(spec: dict, log: Callable[[str], None] = print) -> str:
    """Write the data described by ``spec`` (a config's ``demo_data``) unless it is there already with the
    same arguments; returns its root."""
    spec = dict(spec)
    kind = spec.pop("kind", None)
    if kind not in _MAKERS:
        raise ValueError(f"demo_data.kind must be one of {sorted(_MAKERS)}, got {kind!r}")
    root = spec.pop("root")
    wanted = {"kind": kind, "version": GENERATOR_VERSION, **spec}
    marker = osp.join(root, MARKER)
    if osp.isfile(marker):
        try:
            with open(marker) as f:
                if json.load(f) == wanted:
                    return root
        except (OSError, ValueError):
            pass
    log(f"demo: writing the {kind} demo data into {root} (once; seed {spec.get('seed', 0)})")
    _MAKERS[kind](root, **spec)
    with open(marker, "w") as f:
        json.dump(wanted, f)
    return root


# ---------------------------------------------------------------------------------------------- report
def _register_hook():
    from mmengine.hooks import Hook
    from mmengine.registry import HOOKS

    @HOOKS.register_module(force=True)
    class DemoReportHook(Hook):
        """After training: draw ``num_images`` validation predictions next to their ground truth, plot the
        curves, print ``metric`` against ``goal`` and the paths (rank 0 only).

        Args:
            metric: the validation metric to report (e.g. ``'coco/bbox_mAP'``, ``'mIoU'``).
            goal: the value the demo aims at (printed with the result).
            num_images: validation images drawn.
            score_thr: detection score threshold for the drawings.
            metric_scale: factor from the logged metric to a 0-1 score (0.01 for MMSegmentation's percentages).
        """

        priority = "LOWEST"

        def __init__(self, metric: str, goal: float | None = None, num_images: int = 6, score_thr: float = 0.5,
                     metric_scale: float = 1.0):
            self.metric = metric
            self.metric_scale = metric_scale
            self.goal = goal
            self.num_images = num_images
            self.score_thr = score_thr
            self.last_metrics: dict = {}

        def after_val_epoch(self, runner, metrics=None) -> None:
            if metrics:
                self.last_metrics = dict(metrics)

        def after_train(self, runner) -> None:
            from mmengine.dist import is_main_process

            if not is_main_process():
                return
            drawn = draw_predictions(runner, self.num_images, self.score_thr)
            curves = plot_curves(runner, osp.join(runner.work_dir, "curves.png"), self.metric, self.metric_scale)
            lines = []
            value = _find_metric(self.last_metrics, self.metric)
            if value is not None:
                shown = value = value * self.metric_scale
                goal = ""
                if self.goal is not None:
                    goal = f" (goal >= {self.goal}: {'reached' if value >= self.goal else 'NOT reached'})"
                lines.append(f"{self.metric} on the {_val_size(runner)} validation images: {shown:.3f}{goal}")
            if drawn:
                lines.append(f"predictions (left: ground truth, right: prediction): {osp.dirname(drawn[0])}/ "
                             f"({len(drawn)} images, e.g. {drawn[0]})")
            if curves:
                lines.append(f"loss and metric curves: {curves}")
            ckpt = osp.join(runner.work_dir, "last_checkpoint")
            if osp.isfile(ckpt):
                with open(ckpt) as f:
                    lines.append(f"checkpoint: {f.read().strip()}")
            text = "\n".join(f"[demo] {line}" for line in lines)
            print(text, flush=True)

    return DemoReportHook


def _val_size(runner) -> int:
    try:
        return len(runner.val_loop.dataloader.dataset)
    except Exception:  # pragma: no cover - only for the message
        return 0


def _find_metric(metrics: dict, name: str):
    if name in metrics:
        return float(metrics[name])
    for k, v in metrics.items():
        if k.endswith("/" + name) or k.split("/")[-1] == name:
            return float(v)
    return None


def draw_predictions(runner, num_images: int, score_thr: float = 0.5) -> list[str]:
    """Predict ``num_images`` validation images with the trained model and draw ground truth and prediction
    side by side with the runner's visualiser into ``<work_dir>/predictions/``. Returns the files."""
    import mmcv
    import torch

    loader = runner.val_loop.dataloader
    dataset = loader.dataset
    n = min(num_images, len(dataset))
    if n == 0:
        return []
    out_dir = osp.join(runner.work_dir, "predictions")
    os.makedirs(out_dir, exist_ok=True)
    model = runner.model
    was_training = model.training
    model.eval()
    visualizer = runner.visualizer
    visualizer.dataset_meta = dataset.metainfo
    written = []
    try:
        with torch.no_grad():
            for i in range(n):
                batch = loader.collate_fn([dataset[i]])
                (sample,) = model.test_step(batch)
                img = mmcv.imread(sample.img_path, channel_order="rgb")
                out = osp.join(out_dir, osp.splitext(osp.basename(sample.img_path))[0] + ".png")
                kwargs = {"pred_score_thr": score_thr} if hasattr(sample, "pred_instances") else {}
                visualizer.add_datasample(
                    osp.basename(sample.img_path), img, sample, draw_gt=True, draw_pred=True, out_file=out,
                    **kwargs,
                )
                if max(img.shape[:2]) < 256:  # small demo images: enlarged (nearest) so that the labels read
                    drawn = mmcv.imread(out)
                    mmcv.imwrite(mmcv.imrescale(drawn, 3, interpolation="nearest"), out)
                written.append(out)
    finally:
        model.train(was_training)
    return written


def _read_scalars(log_dir: str) -> list[dict]:
    path = osp.join(log_dir, "vis_data", "scalars.json")
    rows = []
    if osp.isfile(path):
        with open(path) as f:
            for line in f:
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    continue
    return rows


def plot_curves(runner, path: str, metric: str, scale: float = 1.0) -> str | None:
    """Training losses and the validation metric(s) over the iterations, from mmengine's scalar log."""
    rows = _read_scalars(runner.log_dir)
    train = [r for r in rows if "loss" in r]
    val = [r for r in rows if "loss" not in r and any("/" in k or k in ("mIoU", "aAcc", "mAcc") for k in r)]
    if not train:
        return None
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2), dpi=110)
    ax_l, ax_m = fig.subplots(1, 2)
    keys = sorted({k for r in train for k in r if "loss" in k})  # mmdet: loss_cls ...; mmseg: decode.loss_ce ...
    for key in keys:
        pts = [(r["step"], r[key]) for r in train if key in r]
        ax_l.plot(*zip(*pts), lw=2.0 if key == "loss" else 1.0, label=key)
    ax_l.set_xlabel("iteration")
    ax_l.set_ylabel("loss")
    ax_l.set_yscale("log")
    ax_l.set_title("training losses (logged means)")
    ax_l.grid(alpha=0.3)
    ax_l.legend(fontsize=7)
    shown = ("bbox_mAP", "bbox_mAP_50", "segm_mAP", "segm_mAP_50", "mIoU", "mAcc", "aAcc")
    vkeys = sorted({k for r in val for k in r if k.split("/")[-1] in shown or k == metric})
    for key in vkeys:
        pts = [(r["step"], r[key]) for r in val if isinstance(r.get(key), (int, float))]
        if pts:
            ax_m.plot([p[0] for p in pts], [p[1] * scale for p in pts], "o-",
                      lw=2.0 if key.endswith(metric) else 1.0, label=key)
    ax_m.set_xlabel("iteration")
    ax_m.set_ylabel("score (0-1)")
    ax_m.set_ylim(0, 1)
    ax_m.set_title("validation")
    ax_m.grid(alpha=0.3)
    if vkeys:
        ax_m.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    fig.savefig(path)
    return path


def _register_backbone():
    import torch.nn as nn

    from .backbone import ShiftWiseNet

    class ShiftWiseNetBNOut(ShiftWiseNet):
        """``ShiftWiseNet`` whose per-output LayerNorms (``norm0..3``) are BatchNorms: the same network, for
        training a dense-task model from scratch (the demos). A LayerNorm over each pixel's channels takes
        away the feature magnitude, which is where a randomly initialised network marks edges and shapes:
        measured on the detection demo's data, a small classifier on RoI features of the randomly initialised
        network names 97% of held-out shapes right from the last block's output and 7% from the FPN level
        after the output LayerNorm (chance: 33%), and the demo's Mask R-CNN stood at box AP 0.004 after 300
        iterations (0.81 after 200 with BatchNorms). With pretrained weights (which were trained with the
        LayerNorms) use ``ShiftWiseNet``."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            for i in self.out_indices:
                norm = getattr(self, f"norm{i}")
                setattr(self, f"norm{i}", nn.BatchNorm2d(norm.normalized_shape[0]))

    for framework in ("mmdet", "mmseg"):
        try:
            registry = __import__(f"{framework}.registry", fromlist=["MODELS"]).MODELS
        except ImportError:
            continue
        registry.register_module(name="ShiftWiseNetBNOut", module=ShiftWiseNetBNOut, force=True)
    return ShiftWiseNetBNOut


try:  # registered when mmengine is installed (the mm extra); the data generators need only numpy + PIL
    DemoReportHook = _register_hook()
    ShiftWiseNetBNOut = _register_backbone()
except ImportError:  # pragma: no cover
    DemoReportHook = ShiftWiseNetBNOut = None
