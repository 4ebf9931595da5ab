"""Pre-flight check of COCO and ADE20K-format data, before an mmengine Runner is built.

MMDetection and MMSegmentation meet bad annotations late and obscurely (a ``KeyError: 'area'`` from inside
pycocotools, a ``KeyError: 'mask'`` in the middle of an epoch, a CUDA device-side assert for a label value
out of range) or not at all (boxes dropped without a word). :func:`check_config_data` reads the files that
the config's datasets name and applies the rules below; ``tools/{train,test}_{det,seg}.py`` run it (on rank
0) before the Runner, ``--skip-data-check`` turns it off. Errors stop the run with a message naming the
file, the image or annotation id and the field; everything that is dropped or changed is counted in a
warning. The behaviour is documented in docs/reliability.md, "Detection and segmentation data".

COCO (``CocoDataset``): errors for a file that is not JSON, a missing ``images`` / ``annotations`` /
``categories`` list, an image without ``id``/``file_name``/``width``/``height``, an annotation without
``id``/``image_id``/``category_id``/``bbox``/``area`` (and ``segmentation`` when the pipeline loads masks),
a ``bbox`` that is not four finite numbers or has a negative width or height, ids that are not integers,
duplicate ids, two categories of one name (MMDetection maps names to labels: one more label than the heads
have), an ``image_id`` or ``category_id`` that names nothing, a config class missing from ``categories``,
image files that do not exist, are empty, cannot be opened or declare more pixels than PIL's
decompression-bomb threshold (read from the header, before any decoding), and a training set left empty
by the filters. Warnings (MMDetection's own rules, made visible): zero-area boxes (area <= 0 or
w < 1 or h < 1) and boxes entirely outside the image are dropped; boxes partly outside are kept and clipped
to the image by the pipeline's ``Resize`` (``clip_object_border=True``); training images without
annotations are dropped when ``filter_cfg.filter_empty_gt`` is set (val/test keep every image).

ADE20K-style segmentation (``BaseSegDataset`` subclasses with an image and a label-map directory): errors
for an image without its label map, an image or label map that is empty, unreadable or declares more pixels
than PIL's decompression-bomb threshold (checked from the header before decoding), a label map that is not
single-channel, a label map whose size differs
from the image's (both sizes named), and label values outside the valid set (the values and the file
named): 0..num_classes and 255 in the PNG with ``reduce_zero_label`` (0 = "other" and 255 become the ignore
index), else 0..num_classes-1 and the ignore index.
"""

from __future__ import annotations

import json
import math
import os
import os.path as osp
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from swtasks.errors import UserError

__all__ = ["DataCheckError", "DataReport", "check_ade20k", "check_coco", "check_config_data"]

MAX_LISTED = 5  # problems listed per kind; the rest are counted
MAX_PIXELS = 89_478_485  # PIL's decompression-bomb warning threshold: larger files are refused before decoding


class DataCheckError(UserError, ValueError):
    """Data that the Runner would fail on, or silently mistrain on; the message names file, id and field."""


@dataclass
class DataReport:
    """What a check found in one dataset: counts by kind and the warning lines it printed."""

    source: str
    images: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


class _Problems:
    def __init__(self, source: str):
        self.source = source
        self.items: dict[str, list[str]] = {}

    def add(self, kind: str, text: str) -> None:
        self.items.setdefault(kind, []).append(text)

    def raise_if_any(self) -> None:
        if not self.items:
            return
        lines = []
        for kind, texts in self.items.items():
            more = f" (and {len(texts) - MAX_LISTED} more)" if len(texts) > MAX_LISTED else ""
            lines.append(f"  {kind}: {'; '.join(texts[:MAX_LISTED])}{more}")
        total = sum(len(t) for t in self.items.values())
        raise DataCheckError(f"{self.source}: {total} problem(s) in the data:\n" + "\n".join(lines))


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# ---------------------------------------------------------------------------------------------- COCO
IMAGE_FIELDS = ("id", "file_name", "width", "height")
ANNOTATION_FIELDS = ("id", "image_id", "category_id", "bbox", "area")


def check_coco(
    ann_file: str,
    img_dir: str,
    *,
    classes: tuple[str, ...] | list[str] | None = None,
    with_mask: bool = False,
    train: bool = False,
    filter_empty_gt: bool = False,
    min_size: int = 0,
    log: Callable[[str], None] = print,
) -> DataReport:
    """Check one COCO instances file and its image folder (rules in the module docstring)."""
    problems = _Problems(ann_file)
    try:
        with open(ann_file) as f:
            coco = json.load(f)
    except OSError as e:
        raise DataCheckError(f"{ann_file}: cannot read the annotation file ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise DataCheckError(f"{ann_file}: not valid JSON ({e})") from None
    if not isinstance(coco, dict):
        raise DataCheckError(f"{ann_file}: expected a JSON object with images/annotations/categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco.get(key), list):
            what = "missing" if key not in coco else f"a {type(coco[key]).__name__}, not a list"
            problems.add("missing top-level field", f"'{key}' is {what}")
    problems.raise_if_any()

    images: dict = {}
    broken: set = set()  # images already reported: their annotations are not reported again
    for i, img in enumerate(coco["images"]):
        missing = [k for k in IMAGE_FIELDS if not isinstance(img, dict) or k not in img]
        if missing:
            problems.add("image without a required field", f"images[{i}] (id {_id(img)}) has no {missing}")
        elif not _int_id(img["id"]):
            problems.add("id not an integer", f"images[{i}]: id {img['id']!r}")
            continue  # (an unhashable id cannot be remembered as broken either)
        elif not isinstance(img["file_name"], str) or not img["file_name"]:
            problems.add("image without a file name", f"image id {img['id']}: file_name {img['file_name']!r}")
        elif not (
            _number(img["width"]) and _number(img["height"]) and img["width"] > 0 and img["height"] > 0
        ):
            problems.add("image size", f"image id {img['id']}: width/height {img['width']}x{img['height']}")
        elif img["id"] in images:
            problems.add("duplicate image id", f"image id {img['id']} (images[{i}])")
        else:
            images[img["id"]] = img
            continue
        if isinstance(img, dict) and "id" in img:
            broken.add(img["id"])
    categories: dict = {}
    names_seen: dict = {}
    for i, c in enumerate(coco["categories"]):
        if not isinstance(c, dict) or "id" not in c or "name" not in c:
            problems.add("category without id or name", f"categories[{i}]: {c!r}"[:200])
        elif not _int_id(c["id"]):
            problems.add("id not an integer", f"categories[{i}]: id {c['id']!r}")
        elif not isinstance(c["name"], str) or not c["name"]:
            problems.add("category without a name", f"category id {c['id']}: name {c['name']!r}")
        elif c["id"] in categories:
            problems.add("duplicate category id", f"category id {c['id']} (categories[{i}])")
        elif c["name"] in names_seen:
            # the dataset maps names to labels: two ids of one name give more labels than the heads have
            problems.add(
                "duplicate category name",
                f"{c['name']!r} is the name of category ids {names_seen[c['name']]} and {c['id']}",
            )
        else:
            categories[c["id"]] = c["name"]
            names_seen[c["name"]] = c["id"]
    if classes is not None:
        absent = [c for c in classes if c not in categories.values()]
        if absent:
            problems.add(
                "config class not in 'categories'",
                f"{absent} (the file's categories: {sorted(map(str, categories.values()))})",
            )
    wanted = set(categories) if classes is None else {k for k, v in categories.items() if v in classes}

    seen_ann: set = set()
    counts = dict(zero_area=0, outside=0, clipped=0, other_category=0, crowd=0)
    examples: dict[str, list] = {k: [] for k in counts}
    valid_per_image: dict = {k: 0 for k in images}
    raw_per_image: dict = {k: 0 for k in images}
    for i, ann in enumerate(coco["annotations"]):
        required = ANNOTATION_FIELDS + (("segmentation",) if with_mask else ())
        missing = [k for k in required if not isinstance(ann, dict) or k not in ann]
        where = f"annotation id {_id(ann)} (annotations[{i}])"
        if missing:
            problems.add("annotation without a required field", f"{where} has no {missing}")
            continue
        bad_ids = [k for k in ("id", "image_id", "category_id") if not _int_id(ann[k])]
        if bad_ids:
            problems.add("id not an integer", f"annotations[{i}]: " + ", ".join(f"{k} {ann[k]!r}" for k in bad_ids))
            continue
        if ann["id"] in seen_ann:
            problems.add("duplicate annotation id", where)
        seen_ann.add(ann["id"])
        if ann["image_id"] not in images:
            if ann["image_id"] not in broken:
                problems.add("annotation of an unknown image", f"{where}: image_id {ann['image_id']}")
            continue
        if ann["category_id"] not in categories:
            problems.add("annotation of an unknown category", f"{where}: category_id {ann['category_id']}")
            continue
        bbox = ann["bbox"]
        if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(_number(v) for v in bbox)):
            problems.add("malformed bbox", f"{where}: bbox {bbox!r} (want [x, y, width, height])")
            continue
        if bbox[2] < 0 or bbox[3] < 0:
            problems.add("malformed bbox", f"{where}: negative width or height in bbox {bbox!r} (want [x, y, width, height])")
            continue
        if not _number(ann["area"]):
            problems.add("malformed area", f"{where}: area {ann['area']!r}")
            continue
        if with_mask and not ann["segmentation"]:
            problems.add("empty segmentation", f"{where}: the pipeline loads masks")
            continue
        if ann["category_id"] not in wanted:
            counts["other_category"] += 1
            continue
        raw_per_image[ann["image_id"]] += 1
        img = images[ann["image_id"]]
        x, y, w, h = bbox
        inter_w = max(0.0, min(x + w, img["width"]) - max(x, 0.0))
        inter_h = max(0.0, min(y + h, img["height"]) - max(y, 0.0))
        kind = None
        if inter_w * inter_h == 0:
            kind = "outside"
        elif ann["area"] <= 0 or w < 1 or h < 1:
            kind = "zero_area"
        if kind is not None:
            counts[kind] += 1
            examples[kind].append(ann["id"])
            continue
        if x < 0 or y < 0 or x + w > img["width"] or y + h > img["height"]:
            counts["clipped"] += 1
            examples["clipped"].append(ann["id"])
        if ann.get("iscrowd", 0):
            counts["crowd"] += 1
        valid_per_image[ann["image_id"]] += 1

    with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
        for result in pool.map(lambda img: _check_image_file(osp.join(img_dir, img["file_name"])), images.values()):
            if result is not None:
                problems.add(*result)
    problems.raise_if_any()

    report = DataReport(ann_file, images=len(images))
    without = [k for k, n in raw_per_image.items() if n == 0]
    emptied = [k for k in images if raw_per_image[k] > 0 and valid_per_image[k] == 0]
    small = [k for k, im in images.items() if min(im["width"], im["height"]) < min_size]

    def warn(text):
        report.warnings.append(f"{ann_file}: {text}")
        log(f"data check: {ann_file}: {text}")

    def ids(kind):
        more = ", ..." if counts[kind] > MAX_LISTED else ""
        return ", ".join(map(str, examples[kind][:MAX_LISTED])) + more

    if counts["zero_area"]:
        warn(
            f"{counts['zero_area']} zero-area boxes (area <= 0 or width/height < 1 px) are dropped "
            f"(annotation ids {ids('zero_area')})"
            + ("" if train else "; pycocotools still counts them as ground truth when evaluating")
        )
    if counts["outside"]:
        warn(
            f"{counts['outside']} boxes entirely outside their image are dropped "
            f"(annotation ids {ids('outside')})"
        )
    if counts["clipped"]:
        warn(
            f"{counts['clipped']} boxes extend past their image and are clipped to it by the pipeline's "
            "Resize "
            f"(annotation ids {ids('clipped')})"
        )
    if counts["other_category"]:
        warn(f"{counts['other_category']} annotations of categories outside the config's classes are ignored")
    if train and filter_empty_gt and without:
        warn(
            f"{len(without)} of {len(images)} images have no annotations and are not trained on "
            "(filter_empty_gt)"
        )
    elif without:
        warn(f"{len(without)} of {len(images)} images have no annotations and are kept")
    if emptied:
        warn(f"{len(emptied)} images keep no box after the drops above and are kept without instances")
    if train and small:
        warn(f"{len(small)} images smaller than filter_cfg.min_size={min_size} px are not trained on")
    report.counts = dict(counts, without_annotations=len(without), emptied=len(emptied), small=len(small))
    if train:
        kept = set(images) - set(small) - (set(without) if filter_empty_gt else set())
        if not kept:
            raise DataCheckError(
                f"{ann_file}: no training image is left after filter_cfg (filter_empty_gt={filter_empty_gt}, "
                f"min_size={min_size}): {len(without)} of {len(images)} images have no annotation, "
                f"{len(small)} are smaller than {min_size} px"
            )
    return report


def _int_id(value) -> bool:
    """COCO ids are integers (pycocotools and MMDetection index dicts with them)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _check_image_file(path: str, max_pixels: int | None = None) -> tuple[str, str] | None:
    """A problem with an image file (missing, empty, not an image PIL can open, more pixels than
    ``max_pixels``: PIL's decompression-bomb threshold by default), found from its header; None when fine."""
    from PIL import Image

    if not osp.isfile(path):
        return "image file not found", path
    if osp.getsize(path) == 0:
        return "empty image file (0 bytes)", path
    limit = max_pixels or Image.MAX_IMAGE_PIXELS or MAX_PIXELS
    try:
        with Image.open(path) as im:
            w, h = im.size
    except Image.DecompressionBombError as e:
        return "image too large", f"{path}: {e}"
    except (OSError, SyntaxError, ValueError) as e:  # PIL reports unknown or damaged headers as these
        return "unreadable image file", f"{path}: {e}"
    if w * h > limit:
        return "image too large", f"{path}: declares {w}x{h} pixels (more than {limit:,})"
    return None


def _id(entry) -> str:
    return repr(entry.get("id")) if isinstance(entry, dict) and "id" in entry else "?"


# ---------------------------------------------------------------------------------------------- ADE20K
def check_ade20k(
    img_dir: str,
    ann_dir: str,
    *,
    num_classes: int,
    reduce_zero_label: bool,
    ignore_index: int = 255,
    img_suffix: str = ".jpg",
    seg_map_suffix: str = ".png",
    log: Callable[[str], None] = print,
    workers: int | None = None,
) -> DataReport:
    """Check every image of ``img_dir`` (recursively, like MMSegmentation) against its label map in
    ``ann_dir`` (rules in the module docstring). Label maps are decoded in a thread pool."""
    from PIL import Image

    if not osp.isdir(img_dir):
        raise DataCheckError(f"{img_dir}: the image directory does not exist")
    if not osp.isdir(ann_dir):
        raise DataCheckError(f"{ann_dir}: the label-map directory does not exist")
    names = sorted(
        osp.relpath(osp.join(root, n), img_dir)
        for root, _, files in os.walk(img_dir)
        for n in files
        if n.endswith(img_suffix)
    )
    if reduce_zero_label:  # PNG values: 0 ("other") -> ignore, v -> v - 1, 255 -> ignore
        valid = np.zeros(256, bool)
        valid[: num_classes + 1] = True
        valid[255] = True
        rule = f"0..{num_classes} or 255 (reduce_zero_label)"
    else:
        valid = np.zeros(max(256, ignore_index + 1), bool)
        valid[:num_classes] = True
        valid[ignore_index] = True
        rule = f"0..{num_classes - 1} or the ignore index {ignore_index}"

    def check_one(name: str) -> tuple[str, str] | None:
        img_path = osp.join(img_dir, name)
        seg_path = osp.join(ann_dir, name[: -len(img_suffix)] + seg_map_suffix)
        if not osp.isfile(seg_path):
            return "image without a label map", f"{img_path}: no {seg_path}"
        for path in (img_path, seg_path):
            problem = _check_image_file(path)
            if problem is not None:
                return problem
        try:
            with Image.open(img_path) as im:
                img_size = im.size
            with Image.open(seg_path) as seg:
                if seg.mode not in ("L", "P", "I", "I;16"):
                    return (
                        "label map not single-channel",
                        f"{seg_path}: mode {seg.mode} ({len(seg.getbands())} bands)",
                    )
                seg_size = seg.size
                values = np.asarray(seg)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            return "unreadable file", f"{img_path} / {seg_path}: {e}"
        if seg_size != img_size:
            return (
                "label map size differs from the image",
                f"{seg_path} is {seg_size[0]}x{seg_size[1]}, {img_path} is "
                f"{img_size[0]}x{img_size[1]} (W x H)",
            )
        if values.dtype == np.uint8:  # the usual case: a histogram is ~10x faster than np.unique
            found = np.flatnonzero(np.bincount(values.ravel(), minlength=256))
        else:
            found = np.unique(values).astype(np.int64)
        inside = (found >= 0) & (found < len(valid))
        ok = np.zeros(len(found), bool)
        ok[inside] = valid[found[inside]]
        bad = found[~ok]
        if len(bad):
            shown = ", ".join(str(int(v)) for v in bad[:10]) + (", ..." if len(bad) > 10 else "")
            return "label value out of range", f"{seg_path}: values {shown} (allowed: {rule})"
        return None

    problems = _Problems(f"{img_dir} + {ann_dir}")
    with ThreadPoolExecutor(max_workers=workers or min(16, os.cpu_count() or 1)) as pool:
        for result in pool.map(check_one, names):
            if result is not None:
                problems.add(*result)
    problems.raise_if_any()
    if not names:
        raise DataCheckError(f"{img_dir}: no image ending in {img_suffix!r}")
    log(f"data check: {img_dir}: {len(names)} images and label maps checked")
    return DataReport(f"{img_dir} + {ann_dir}", images=len(names))


# ---------------------------------------------------------------------------------------------- configs
def _datasets(node, path: str):
    """(path, dataset dict) for every dataset in a dataloader's dataset, wrapped ones included."""
    if isinstance(node, dict):
        if "type" in node and ("data_root" in node or "ann_file" in node or "data_prefix" in node):
            yield path, node
        for key in ("dataset", "datasets"):
            child = node.get(key)
            if isinstance(child, dict):
                yield from _datasets(child, f"{path}.{key}")
            elif isinstance(child, (list, tuple)):
                for i, c in enumerate(child):
                    yield from _datasets(c, f"{path}.{key}[{i}]")


def _join(root, path) -> str:
    if not path or osp.isabs(path) or not root:
        return path or root or ""
    return osp.join(root, path)


def _pipeline_step(pipeline, name: str) -> dict | None:
    for step in pipeline or []:
        if isinstance(step, dict) and step.get("type") == name:
            return step
    return None


def check_config_data(
    cfg, splits=("train", "val", "test"), log: Callable[[str], None] = print
) -> list[DataReport]:
    """Check the data of every COCO / segmentation dataset in ``cfg``'s ``{split}_dataloader``s (each file
    once). Other dataset types are reported as not checked."""
    from mmengine.registry import DATASETS

    with DATASETS.switch_scope_and_registry(cfg.get("default_scope")) as registry:
        return _check_config_data(cfg, splits, log, registry)


def _check_config_data(cfg, splits, log, registry) -> list[DataReport]:
    reports, done = [], set()
    for split in splits:
        loader = cfg.get(f"{split}_dataloader")
        if not loader or not isinstance(loader.get("dataset"), dict):
            continue
        for path, ds in _datasets(loader["dataset"], f"{split}_dataloader.dataset"):
            cls = registry.get(ds["type"]) if isinstance(ds["type"], str) else ds["type"]
            names = {c.__name__ for c in getattr(cls, "__mro__", ())}
            root = ds.get("data_root")
            prefix = ds.get("data_prefix") or {}
            pipeline = ds.get("pipeline")
            if "CocoDataset" in names:
                ann_file = _join(root, ds.get("ann_file"))
                img_dir = _join(root, prefix.get("img", ""))
                if (ann_file, img_dir) in done:
                    continue
                done.add((ann_file, img_dir))
                load = _pipeline_step(pipeline, "LoadAnnotations") or {}
                classes = (ds.get("metainfo") or {}).get("classes") or cls.METAINFO.get("classes")
                filter_cfg = ds.get("filter_cfg") or {}
                train = not ds.get("test_mode", False)
                reports.append(
                    check_coco(
                        ann_file,
                        img_dir,
                        classes=tuple(classes) if classes else None,
                        with_mask=bool(load.get("with_mask", False)),
                        train=train,
                        filter_empty_gt=bool(filter_cfg.get("filter_empty_gt", False)),
                        min_size=int(filter_cfg.get("min_size", 0)),
                        log=log,
                    )
                )
            elif "BaseSegDataset" in names:
                img_dir = _join(root, prefix.get("img_path", ""))
                ann_dir = _join(root, prefix.get("seg_map_path", ""))
                if (img_dir, ann_dir) in done:
                    continue
                if not prefix.get("seg_map_path") or ds.get("ann_file"):
                    log(f"data check: {path}: no label-map folder, or a split file (ann_file): not checked")
                    continue
                done.add((img_dir, ann_dir))
                defaults = _init_defaults(cls)
                load = _pipeline_step(pipeline, "LoadAnnotations") or {}
                reduce = load.get("reduce_zero_label")
                if reduce is None:
                    reduce = ds.get("reduce_zero_label", defaults.get("reduce_zero_label", False))
                classes = (ds.get("metainfo") or {}).get("classes") or cls.METAINFO.get("classes")
                reports.append(
                    check_ade20k(
                        img_dir,
                        ann_dir,
                        num_classes=len(classes),
                        reduce_zero_label=bool(reduce),
                        ignore_index=int(ds.get("ignore_index", 255)),
                        img_suffix=ds.get("img_suffix", defaults.get("img_suffix", ".jpg")),
                        seg_map_suffix=ds.get("seg_map_suffix", defaults.get("seg_map_suffix", ".png")),
                        log=log,
                    )
                )
            else:
                log(
                    f"data check: {path} ({ds['type']}) is not a COCO or segmentation-folder dataset: "
                    "not checked"
                )
    return reports


def _init_defaults(cls) -> dict:
    import inspect

    out = {}
    for klass in reversed(cls.__mro__):
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        for name, p in inspect.signature(init).parameters.items():
            if p.default is not inspect.Parameter.empty:
                out[name] = p.default
    return out
