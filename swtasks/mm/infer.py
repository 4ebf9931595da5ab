"""Predictions of a trained detector or segmentor on any images: ``tools/infer_det.py``, ``tools/infer_seg.py``.

    python tools/infer_det.py CONFIG CHECKPOINT INPUT... --out DIR [--score-thr T] [--device cpu|cuda]
                              [--batch-size N] [--ann-file FILE] [--strict] [--trust-pickle]
    python tools/infer_seg.py CONFIG CHECKPOINT INPUT... --out DIR [--device cpu|cuda] [--batch-size N]
                              [--strict] [--trust-pickle]

INPUT: image files, folders (searched recursively) or glob patterns (quoted: ``'shots/*.png'``). Every image
is named by its path relative to the folder it was found in (a file given as such: its base name; a glob:
relative to the pattern's fixed folder part).

Detection writes ``DIR/predictions.json``: a list of records ``{"file_name", "image_id", "category_id",
"category_name", "bbox": [x, y, w, h], "score", "segmentation"}`` with boxes in the original image's pixels,
the category ids of the training data (they travel in the checkpoint's ``meta['dataset_meta']``, see
swtasks.mm.own_data), ``segmentation`` as COCO RLE for models with a mask head. ``image_id`` is the id of the
image in ``--ann-file`` (a COCO annotation file, matched by ``file_name``) when given, so the file loads with
``pycocotools``' ``COCO.loadRes`` and evaluates; else the image's index in the run (1, 2, ...).

Segmentation writes ``DIR/labels/<name>.png``: one label value per pixel, the image's size, in the data's own
encoding (the class index, + 1 for a model trained with ``reduce_zero_label``, as MMSegmentation's
``IoUMetric`` writes them).

Both draw every prediction under ``DIR/vis/<name>`` with the framework's visualiser. The model is built from
the config the run started from; the checkpoint's classes set the heads' ``num_classes`` (a run on your own
data changed them from the command line), and a re-parameterised checkpoint (``tools/reparameterize_mm.py``,
``meta['deploy']``) builds the backbone in its deploy structure. MMDetection's ``DetInferencer`` and
MMSegmentation's ``MMSegInferencer`` build the model, the test pipeline and the visualiser; the checkpoint is
read once, weights-only unless ``--trust-pickle``, and must fit the model exactly. An image that cannot be
read is named in a warning and skipped (``--strict``: an error, exit status 2).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import os.path as osp
import sys
import time
from collections.abc import Sequence

import numpy as np

from swtasks.errors import UserError

__all__ = ["IMAGE_EXTENSIONS", "InferError", "collect_inputs", "main", "predict"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class InferError(UserError, ValueError):
    """A problem with the inputs, the config or the checkpoint of an inference run (one line)."""


# ---------------------------------------------------------------------------------------------- inputs
def _is_image(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


def _glob_base(pattern: str) -> str:
    """The folder part of a glob pattern before its first wildcard."""
    parts = pattern.split(os.sep)
    fixed = []
    for part in parts[:-1]:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return os.sep.join(fixed) if fixed else "."


def collect_inputs(inputs: Sequence[str]) -> list[tuple[str, str]]:
    """(path, name) of every image the INPUT arguments name, in order (folders sorted, recursively)."""
    found: list[tuple[str, str]] = []
    for item in inputs:
        if osp.isdir(item):
            names = sorted(
                osp.relpath(osp.join(root, f), item)
                for root, _dirs, files in os.walk(item, followlinks=True)
                for f in files
                if _is_image(f)
            )
            if not names:
                raise InferError(f"{item}: no image in this folder ({', '.join(IMAGE_EXTENSIONS)})")
            found.extend((osp.join(item, n), n) for n in names)
        elif osp.isfile(item):
            found.append((item, osp.basename(item)))
        elif glob.has_magic(item):
            base = _glob_base(item)
            paths = sorted(p for p in glob.glob(item, recursive=True) if osp.isfile(p) and _is_image(p))
            if not paths:
                raise InferError(f"{item}: the pattern matches no image")
            found.extend((p, osp.relpath(p, base)) for p in paths)
        else:
            raise InferError(f"{item}: no such file or folder")
    out, seen_paths, seen_names = [], set(), {}
    for path, name in found:
        key = osp.realpath(path)
        if key in seen_paths:
            continue
        seen_paths.add(key)
        stem = osp.splitext(name)[0]
        if stem in seen_names:
            raise InferError(
                f"{path} and {seen_names[stem]} would write the same output name {stem!r}: give them in "
                "separate runs (or separate --out folders)"
            )
        seen_names[stem] = path
        out.append((path, name))
    return out


def read_image(path: str) -> np.ndarray | None:
    """The image as a BGR uint8 array (as MMDetection's and MMSegmentation's loaders read it), or None."""
    import mmcv

    try:
        img = mmcv.imread(path, flag="color", channel_order="bgr")
    except Exception:  # cv2/PIL errors of every kind for a broken file
        return None
    if img is None or img.ndim != 3 or img.size == 0:
        return None
    return img


# ---------------------------------------------------------------------------------------------- model
def _device(name: str | None) -> str:
    import torch

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InferError(f"--device {name}: no CUDA device is available (use --device cpu)")
    return name


def _load_checkpoint(path: str, trust_pickle: bool) -> dict:
    from swtasks.checkpoint import read_checkpoint

    if not osp.isfile(path):
        raise InferError(f"checkpoint file not found: {path}")
    obj = read_checkpoint(path, trust_pickle=trust_pickle)
    if not isinstance(obj, dict) or not isinstance(obj.get("state_dict"), dict):
        raise InferError(
            f"{path}: expected a checkpoint of tools/train_det.py / train_seg.py or tools/reparameterize_mm.py "
            "(a dict with 'state_dict')"
        )
    return obj


def model_config(config: str, checkpoint: dict, task: str, cfg_options: dict | None = None):
    """The config's model as the checkpoint was trained: its classes (heads' ``num_classes``, the test
    dataset's metainfo) and its backbone structure (deploy for a re-parameterised checkpoint)."""
    from mmengine.config import Config

    from .own_data import follow_checkpoint_classes

    if not osp.isfile(config):
        raise InferError(f"config file not found: {config}")
    try:
        cfg = Config.fromfile(config)
    except (SyntaxError, KeyError, ValueError, TypeError, ImportError, FileNotFoundError) as e:
        raise InferError(f"{config}: cannot read the config: {type(e).__name__}: {e}") from e
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if "model" not in cfg or "test_dataloader" not in cfg:
        raise InferError(f"{config}: needs 'model' and 'test_dataloader' (for the test pipeline)")
    meta = checkpoint.get("meta") or {}
    dataset_meta = meta.get("dataset_meta") or {}
    classes = dataset_meta.get("classes")
    if classes:
        follow_checkpoint_classes(cfg, checkpoint)
        ds = cfg.test_dataloader.dataset
        while isinstance(ds, dict) and "dataset" in ds:
            ds = ds["dataset"]
        if isinstance(ds, dict):
            md = {"classes": tuple(classes)}
            if dataset_meta.get("palette") is not None and len(dataset_meta["palette"]) >= len(classes):
                md["palette"] = [tuple(c) for c in dataset_meta["palette"]]
            ds["metainfo"] = md
            if task == "seg":  # the dataset is not built by the seg inferencer; avoid ADE20K's label remapping
                ds["type"] = "BaseSegDataset"
    backbone = cfg.model.get("backbone")
    if isinstance(backbone, dict):
        backbone["init_cfg"] = None
        if meta.get("deploy") and not backbone.get("deploy", False):
            backbone["deploy"] = True
            if "sparse" in backbone:
                backbone["sparse"] = False
    if cfg.model.get("pretrained") is not None:
        cfg.model["pretrained"] = None
    return cfg


def _check_fits(model, checkpoint: dict, source: str) -> None:
    from .checkpoint_io import require_fit

    require_fit(model, checkpoint["state_dict"], source)


def build_inferencer(task: str, cfg, checkpoint: dict, source: str, device: str):
    """MMDetection's DetInferencer / MMSegmentation's MMSegInferencer on ``cfg``, with the weights and the
    classes of the already-read ``checkpoint``."""
    import warnings

    if task == "det":
        from mmdet.apis import DetInferencer as Base
    else:
        from mmseg.apis import MMSegInferencer as Base

    class Inferencer(Base):
        def __init__(self, **kwargs):
            self._checkpoint = checkpoint
            super().__init__(weights=None, **kwargs)

        def _load_weights_to_model(self, model, _none, cfg):
            _check_fits(model, self._checkpoint, source)
            super()._load_weights_to_model(model, self._checkpoint, cfg)

    kwargs = dict(model=cfg, device=device)
    dataset_meta = (checkpoint.get("meta") or {}).get("dataset_meta") or {}
    if task == "det":
        kwargs["show_progress"] = False
    else:
        kwargs["classes"] = dataset_meta.get("classes")
        kwargs["palette"] = dataset_meta.get("palette")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "palette does not exist" & co: the checkpoint's meta decides
        inferencer = Inferencer(**kwargs)
    if task == "seg":
        if dataset_meta.get("classes"):
            inferencer.visualizer.set_dataset_meta(dataset_meta.get("classes"), dataset_meta.get("palette"))
        inferencer.visualizer.alpha = 0.6
    return inferencer


def category_ids(cfg, dataset_meta: dict, warn) -> list:
    """The data's category id of each label: the checkpoint's ``category_ids``; else the ids of the classes in
    the config's test annotation file, if it is there; else the label indices (with a warning)."""
    classes = list(dataset_meta.get("classes") or [])
    ids = dataset_meta.get("category_ids")
    if ids is not None and len(ids) == len(classes):
        return list(ids)
    from .own_data import ClassListError, read_coco_categories

    ds = cfg.test_dataloader.dataset
    while isinstance(ds, dict) and "dataset" in ds:
        ds = ds["dataset"]
    ann = ds.get("ann_file") if isinstance(ds, dict) else None
    if ann and not osp.isabs(ann) and ds.get("data_root"):
        ann = osp.join(ds["data_root"], ann)
    if ann and osp.isfile(ann):
        try:
            names, file_ids = read_coco_categories(ann)
        except ClassListError:
            names = []
        if classes and all(c in names for c in classes):
            return [file_ids[names.index(c)] for c in classes]
    warn(
        "the checkpoint names no category ids (trained before they were saved?) and the config's test "
        "annotation file is not there: category_id is the label index (0, 1, ...)"
    )
    return list(range(len(classes)))


# ---------------------------------------------------------------------------------------------- running
def _mask_rle(mask) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"]}


class _Progress:
    def __init__(self, prog: str, total: int):
        self.prog, self.total, self.done = prog, total, 0
        self.start = self.last = time.time()

    def update(self, n: int) -> None:
        self.done += n
        now = time.time()
        if now - self.last >= 2.0 or self.done >= self.total:
            rate = self.done / max(now - self.start, 1e-9)
            print(f"{self.prog}: {self.done}/{self.total} images ({rate:.1f}/s)", file=sys.stderr, flush=True)
            self.last = now


def _image_ids(ann_file: str | None) -> dict | None:
    if not ann_file:
        return None
    try:
        with open(ann_file) as f:
            images = json.load(f).get("images") or []
    except (OSError, ValueError, AttributeError) as e:
        raise InferError(f"--ann-file {ann_file}: cannot read it as a COCO annotation file ({e})") from None
    ids = {}
    for img in images:
        if isinstance(img, dict) and "file_name" in img and "id" in img:
            ids[img["file_name"]] = img["id"]
            ids.setdefault(osp.basename(img["file_name"]), img["id"])
    return ids


def predict(
    task: str,
    config: str,
    checkpoint: str,
    inputs: Sequence[str],
    out: str,
    *,
    score_thr: float = 0.3,
    device: str | None = None,
    batch_size: int = 1,
    strict: bool = False,
    trust_pickle: bool = False,
    ann_file: str | None = None,
    cfg_options: dict | None = None,
    prog: str | None = None,
) -> dict:
    """Run the model of ``config`` + ``checkpoint`` on ``inputs`` and write the outputs under ``out`` (module
    docstring). Returns a summary: images, skipped, predictions path / labels folder, vis folder."""
    import torch

    prog = prog or f"tools/infer_{task}.py"
    if batch_size < 1:
        raise InferError(f"--batch-size must be >= 1, got {batch_size}")

    def warn(msg: str) -> None:
        print(f"{prog}: warning: {msg}", file=sys.stderr, flush=True)

    images = collect_inputs(inputs)
    device = _device(device)
    import swtasks.mm  # noqa: F401  (registers the backbones)

    ckpt = _load_checkpoint(checkpoint, trust_pickle)
    cfg = model_config(config, ckpt, task, cfg_options)
    inferencer = build_inferencer(task, cfg, ckpt, checkpoint, device)
    model = inferencer.model
    dataset_meta = dict(getattr(model, "dataset_meta", None) or {})
    classes = list(dataset_meta.get("classes") or [])
    raw_meta = (ckpt.get("meta") or {}).get("dataset_meta") or {}
    if task == "det":
        cat_ids = category_ids(cfg, dataset_meta, warn)  # DetInferencer copies the checkpoint's dataset_meta
        name_to_id = _image_ids(ann_file)
    reduce_zero_label = bool(raw_meta.get("reduce_zero_label", False))
    visualizer = inferencer.visualizer
    if task == "det":
        visualizer.dataset_meta = dataset_meta
    del ckpt

    os.makedirs(osp.join(out, "vis"), exist_ok=True)
    if task == "seg":
        os.makedirs(osp.join(out, "labels"), exist_ok=True)
    records: list[dict] = []
    skipped: list[str] = []
    unmatched: list[str] = []
    progress = _Progress(prog, len(images))
    for start in range(0, len(images), batch_size):
        chunk = []
        for index, (path, name) in enumerate(images[start : start + batch_size], start + 1):
            img = read_image(path)
            if img is None:
                if strict:
                    raise InferError(f"{path}: not a readable image")
                warn(f"skipped {path}: not a readable image")
                skipped.append(path)
                continue
            chunk.append((index, path, name, img))
        # images of one size per forward pass (the segmentor's preprocessor stacks without padding at test time)
        groups: dict = {}
        for item in chunk:
            data = inferencer.pipeline(item[3])
            key = tuple(data["inputs"].shape) if task == "seg" else 0
            groups.setdefault(key, []).append((item, data))
        for group in groups.values():
            with torch.no_grad():
                preds = inferencer.forward(inferencer.collate_fn([d for _, d in group]))
            for (index, _path, name, img), pred in zip([g for g, _ in group], preds):
                rgb = np.ascontiguousarray(img[:, :, ::-1])
                vis_file = osp.join(out, "vis", name)
                if task == "det":
                    if name_to_id is None:
                        image_id = index
                    else:
                        image_id = name_to_id.get(name, name_to_id.get(osp.basename(name)))
                        if image_id is None:
                            unmatched.append(name)
                    records.extend(_det_records(pred, name, image_id, score_thr, classes, cat_ids))
                    visualizer.add_datasample(name, rgb, pred, draw_gt=False, pred_score_thr=score_thr,
                                              out_file=vis_file)
                else:
                    _write_label_map(pred, osp.join(out, "labels", osp.splitext(name)[0] + ".png"), reduce_zero_label)
                    visualizer.add_datasample(name, rgb, pred, draw_gt=False, with_labels=True, out_file=vis_file)
        progress.update(len(images[start : start + batch_size]))
    summary = dict(images=len(images) - len(skipped), skipped=skipped, vis=osp.join(out, "vis"))
    if task == "det":
        if unmatched:
            warn(f"{len(unmatched)} image(s) not in --ann-file {ann_file} (image_id null), e.g. {unmatched[0]}")
        path = osp.join(out, "predictions.json")
        with open(path, "w") as f:
            json.dump(records, f)
        summary.update(predictions=path, records=len(records))
        print(f"{prog}: {len(records)} detections (score >= {score_thr}) on {summary['images']} images -> {path}; "
              f"pictures in {summary['vis']}" + (f"; {len(skipped)} skipped" if skipped else ""))
    else:
        summary.update(labels=osp.join(out, "labels"))
        print(f"{prog}: label maps of {summary['images']} images -> {summary['labels']}; pictures in "
              f"{summary['vis']}" + (f"; {len(skipped)} skipped" if skipped else ""))
    return summary


def _det_records(pred, name: str, image_id, score_thr: float, classes: list, cat_ids: list) -> list[dict]:
    inst = pred.pred_instances
    scores = inst.scores.detach().cpu().numpy()
    keep = np.flatnonzero(scores >= score_thr)
    bboxes = inst.bboxes.detach().cpu().numpy()
    labels = inst.labels.detach().cpu().numpy()
    masks = inst.masks.detach().cpu().numpy() if "masks" in inst else None
    out = []
    for i in keep:
        x0, y0, x1, y1 = (float(v) for v in bboxes[i])
        label = int(labels[i])
        rec = {
            "file_name": name,
            "image_id": image_id,
            "category_id": cat_ids[label] if label < len(cat_ids) else label,
            "category_name": classes[label] if label < len(classes) else str(label),
            "bbox": [round(x0, 4), round(y0, 4), round(x1 - x0, 4), round(y1 - y0, 4)],
            "score": round(float(scores[i]), 5),
        }
        if masks is not None:
            rec["segmentation"] = _mask_rle(masks[i])
        out.append(rec)
    return out


def _write_label_map(pred, path: str, reduce_zero_label: bool) -> None:
    from PIL import Image

    labels = pred.pred_sem_seg.data[0].detach().cpu().numpy().astype(np.int64)
    if reduce_zero_label:
        labels = labels + 1
    os.makedirs(osp.dirname(path), exist_ok=True)
    if labels.max(initial=0) < 256:
        Image.fromarray(labels.astype(np.uint8)).save(path)
    else:
        Image.fromarray(labels.astype(np.uint16)).save(path)


# ---------------------------------------------------------------------------------------------- command line
def _parser(task: str) -> argparse.ArgumentParser:
    from mmengine.config import DictAction

    what = "detector (MMDetection 3.x)" if task == "det" else "segmentor (MMSegmentation 1.x)"
    p = argparse.ArgumentParser(
        prog=f"tools/infer_{task}.py",
        description=f"Predictions of a trained {what} on images, folders (recursively) or glob patterns.",
    )
    p.add_argument("config", help="the config the run was trained with (or the deploy config next to a "
                   "re-parameterised checkpoint)")
    p.add_argument("checkpoint", help="a checkpoint of the run (iter_N.pth, epoch_N.pth) or of tools/reparameterize_mm.py")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or glob patterns")
    p.add_argument("--out", required=True, help="output folder (predictions.json or labels/, and vis/)")
    if task == "det":
        p.add_argument("--score-thr", type=float, default=0.3,
                       help="keep (and draw) detections with at least this score (default 0.3)")
        p.add_argument("--ann-file", help="COCO annotation file of the images: records take its image ids "
                       "(matched by file_name), so the JSON evaluates with pycocotools")
    else:
        p.add_argument("--score-thr", type=float, default=None, help=argparse.SUPPRESS)  # same arguments; unused
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--batch-size", type=int, default=1, help="images per forward pass (default 1)")
    p.add_argument("--strict", action="store_true", help="an unreadable image is an error (default: skipped)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="let torch.load unpickle arbitrary objects in the checkpoint (only for files you trust)")
    p.add_argument("--cfg-options", nargs="+", action=DictAction, help="override config entries, key=value")
    return p


def main(task: str, argv: Sequence[str] | None = None) -> int:
    """``tools/infer_{task}.py``: user errors are one line and exit status 2."""
    from swtasks.cliutil import run_tool

    def run(argv):
        args = _parser(task).parse_args(argv)
        predict(
            task, args.config, args.checkpoint, args.inputs, args.out,
            score_thr=args.score_thr if args.score_thr is not None else 0.3,
            device=args.device, batch_size=args.batch_size, strict=args.strict, trust_pickle=args.trust_pickle,
            ann_file=getattr(args, "ann_file", None), cfg_options=args.cfg_options,
        )
        return 0

    return run_tool(run, argv, prog=f"tools/infer_{task}.py")

