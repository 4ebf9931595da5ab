"""Your own data: the class list comes from the data, and every part of the config that depends on it follows.

``tools/{train,test}_{det,seg}.py`` call :func:`apply` on the loaded config (``swtasks.mm.cli.load_config``),
before the data check and before the Runner is built.

Detection (COCO format). The class list is taken from the data when the command line names the data
(``--data-root DIR`` in the COCO 2017 layout, or ``--train-ann FILE --train-img DIR --val-ann FILE --val-img
DIR``) or the classes (``--classes a,b,c``): the categories of the training annotation file (the test file
for ``test_det.py``), in the file's order; ``--classes`` keeps only those named (else every category: a config's own
``metainfo.classes`` is replaced, and the log says so). Then

- every dataset of the train/val/test dataloaders gets ``metainfo = dict(classes=..., palette=...,
  category_ids=...)``: ``category_ids`` are the file's own ids of the classes (need not be contiguous or
  start at 1); they are saved in every checkpoint with the rest of the dataset's metainfo (mmengine writes
  ``meta['dataset_meta']``), so ``tools/infer_det.py`` reports predictions with them;
- every ``num_classes`` of the model is set to the number of classes: all box and mask heads, every stage of
  a cascade (the RPN head, class-agnostic by design, and an HTC ``semantic_head`` are left alone);
- the COCO evaluators' ``ann_file`` is the val/test dataset's annotation file.

MMDetection maps label ``i`` to the ``i``-th of the file's categories whose name is in the class list, in the
file's order, whatever the order of the list: a list in another order would silently name every prediction
wrongly. The class list is therefore always put in the file's order (a warning says so when it was not).

Otherwise (the config's own data and classes) the config is checked: a ``num_classes`` of the model that
differs from the number of classes of the data stops the run with one line naming the key, instead of a
run that trains and evaluates to an mAP of 0.

Segmentation (ADE20K layout, label PNGs). ``--classes a,b,c`` or ``--classes-file FILE`` (one name per
line) names the label values 0..N-1 (255 is ignored); ``--reduce-zero-label`` is for ADE-style maps whose 0
means "other" (then the names are those of the values 1..N). The datasets get the class list (a dataset type
with a fixed class list of its own, such as ``ADE20KDataset``, becomes ``BaseSegDataset`` with the same
file suffixes: MMSegmentation would otherwise remap the labels to its own list), ``reduce_zero_label`` is set
on the datasets and on every ``LoadAnnotations`` step, and the decode and auxiliary heads get
``num_classes``. Without ``--classes`` the heads are checked against the config's classes. Label values out
of range are reported by the data check (``swtasks.mm.data_check``), naming the file.
"""

from __future__ import annotations

import argparse
import json
import os
import os.path as osp
from collections.abc import Callable

from .data_check import DataCheckError

__all__ = [
    "ClassListError",
    "add_arguments",
    "apply",
    "make_palette",
    "num_class_keys",
    "read_coco_categories",
    "set_num_classes",
]

# the heads of a detector that keep their own class count: the RPN (one objectness class) and HTC's
# semantic (stuff) head
_DET_EXCLUDED = ("rpn_head", "semantic_head")


class ClassListError(DataCheckError):
    """The class list of the data and the config disagree, or cannot be read; the message names the key or
    the file (one line)."""


# ---------------------------------------------------------------------------------------------- arguments
def add_arguments(p: argparse.ArgumentParser, task: str, mode: str) -> None:
    """The own-data options of ``tools/{mode}_{task}.py``."""
    g = p.add_argument_group(
        "your own data",
        "detection: --data-root (COCO 2017 layout), the four files below or --classes take the class list from "
        "the annotation file and set every head's num_classes and every dataset's metainfo from it; "
        "segmentation: --classes/--classes-file do that for the label values. See docs/detection-segmentation.md, "
        "'Your own data'",
    )
    if task == "det":
        if mode == "train":
            g.add_argument("--train-ann", help="COCO annotation file of the training images (instead of --data-root)")
            g.add_argument("--train-img", help="folder of the training images")
            g.add_argument("--val-ann", help="COCO annotation file of the validation images")
            g.add_argument("--val-img", help="folder of the validation images")
        g.add_argument(
            "--classes",
            help="comma-separated category names to keep (default: every category of the annotation file, "
            "or the config's metainfo.classes)",
        )
    else:
        g.add_argument(
            "--classes",
            help="comma-separated class names of the label values 0..N-1 (1..N with --reduce-zero-label)",
        )
        g.add_argument("--classes-file", help="file with one class name per line, instead of --classes")
        g.add_argument(
            "--reduce-zero-label",
            action="store_true",
            help="label value 0 means 'other' (ignored) and v becomes class v-1, as in ADE20K",
        )


# ---------------------------------------------------------------------------------------------- helpers
_COLOURS = [
    (220, 20, 60), (0, 130, 200), (60, 180, 75), (255, 165, 0), (145, 30, 180), (70, 240, 240),
    (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40), (128, 0, 0),
    (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128), (255, 225, 25),
    (230, 25, 75), (0, 0, 0),
]


def make_palette(n: int) -> list[tuple[int, int, int]]:
    """``n`` distinct colours: a fixed list of 20, then deterministic random ones."""
    import numpy as np

    out = list(_COLOURS[:n])
    rng = np.random.default_rng(0)
    while len(out) < n:
        out.append(tuple(int(v) for v in rng.integers(0, 256, size=3)))
    return out


def _walk(node, path: str):
    """(path, dict) for every dict below ``node`` (lists included)."""
    if isinstance(node, dict):
        yield path, node
        for k, v in node.items():
            yield from _walk(v, f"{path}.{k}")
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            yield from _walk(v, f"{path}[{i}]")


def num_class_keys(model_cfg, task: str, prefix: str = "model") -> list[tuple[str, dict]]:
    """(key, node) of every ``num_classes`` in the model config that follows the data's class count."""
    out = []
    for path, node in _walk(model_cfg, prefix):
        if "num_classes" not in node:
            continue
        parts = path.replace("[", ".").split(".")
        if task == "det" and any(p in _DET_EXCLUDED for p in parts):
            continue
        out.append((f"{path}.num_classes", node))
    return out


def set_num_classes(cfg, n: int, task: str) -> list[str]:
    """Set every class-dependent ``num_classes`` of ``cfg.model`` to ``n``; returns the keys."""
    keys = []
    for key, node in num_class_keys(cfg.model, task):
        node["num_classes"] = n
        keys.append(key)
    return keys


def _datasets(node, path: str):
    """(path, dataset dict) for the leaf datasets of a dataloader's dataset (wrappers looked through)."""
    if not isinstance(node, dict):
        return
    children = [(k, node.get(k)) for k in ("dataset", "datasets") if node.get(k) is not None]
    if not children:
        yield path, node
        return
    for key, child in children:
        if isinstance(child, dict):
            yield from _datasets(child, f"{path}.{key}")
        elif isinstance(child, (list, tuple)):
            for i, c in enumerate(child):
                yield from _datasets(c, f"{path}.{key}[{i}]")


def _loader_datasets(cfg, splits=("train", "val", "test")):
    out = []
    for split in splits:
        loader = cfg.get(f"{split}_dataloader")
        if loader and isinstance(loader.get("dataset"), dict):
            out.extend((split, p, d) for p, d in _datasets(loader["dataset"], f"{split}_dataloader.dataset"))
    return out


def _join(root, path) -> str:
    if not path or osp.isabs(path) or not root:
        return path or root or ""
    return osp.join(root, path)


def _dataset_class(registry, ds):
    t = ds.get("type")
    return registry.get(t) if isinstance(t, str) else t


def _is(cls, name: str) -> bool:
    return any(c.__name__ == name for c in getattr(cls, "__mro__", ()))


def _parse_names(text: str, source: str) -> list[str]:
    names = [n.strip() for n in text.split(",")]
    if not names or any(not n for n in names):
        raise ClassListError(f"{source}: empty class name in {text!r} (want names separated by commas)")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ClassListError(f"{source}: {dup} named twice")
    return names


def read_classes_file(path: str) -> list[str]:
    """One class name per line (blank lines skipped)."""
    try:
        with open(path, encoding="utf-8") as f:
            names = [line.strip() for line in f if line.strip()]
    except OSError as e:
        raise ClassListError(f"{path}: cannot read the classes file ({e.strerror})") from None
    if not names:
        raise ClassListError(f"{path}: the classes file names no class")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ClassListError(f"{path}: {dup} named twice")
    return names


_CATEGORY_CACHE: dict = {}


def read_coco_categories(ann_file: str) -> tuple[list[str], list]:
    """(names, ids) of a COCO file's categories, in the file's order. Stops with one line naming the file for
    a file that cannot be read, a category without a name or id, and an annotation whose ``category_id`` is
    not one of the file's categories."""
    key = (osp.abspath(ann_file), osp.getmtime(ann_file) if osp.isfile(ann_file) else None)
    if key in _CATEGORY_CACHE:
        return _CATEGORY_CACHE[key]
    if not osp.isfile(ann_file):
        raise ClassListError(f"{ann_file}: annotation file not found")
    try:
        with open(ann_file) as f:
            coco = json.load(f)
    except (OSError, ValueError) as e:
        raise ClassListError(f"{ann_file}: cannot read the annotation file ({e})") from None
    cats = coco.get("categories") if isinstance(coco, dict) else None
    if not isinstance(cats, list) or not cats:
        raise ClassListError(f"{ann_file}: no 'categories' list: the class list is read from it")
    names, ids = [], []
    for i, c in enumerate(cats):
        if not isinstance(c, dict) or "id" not in c or not isinstance(c.get("name"), str):
            raise ClassListError(f"{ann_file}: categories[{i}] has no 'id' and 'name'")
        names.append(c["name"])
        ids.append(c["id"])
    known = set()
    for i in ids:
        try:
            known.add(i)
        except TypeError:
            raise ClassListError(f"{ann_file}: category id {i!r} is not a number") from None
    for i, ann in enumerate(coco.get("annotations") or []):
        if isinstance(ann, dict) and "category_id" in ann:
            cid = ann["category_id"]
            try:
                ok = cid in known
            except TypeError:
                ok = False
            if not ok:
                raise ClassListError(
                    f"{ann_file}: annotation id {ann.get('id', '?')} (annotations[{i}]) has category_id {cid!r}, "
                    f"which is not in the file's categories (ids {ids})"
                )
    _CATEGORY_CACHE[key] = (names, ids)
    return names, ids


# ---------------------------------------------------------------------------------------------- apply
def apply(cfg, args, task: str, mode: str, log: Callable[[str], None] = print) -> dict | None:
    """Apply the own-data options of ``args`` to ``cfg`` (in place) and check the class count of the model
    against the data's; returns a summary (classes, ids, keys set) or None when nothing was derived."""
    from mmengine.registry import DATASETS

    with DATASETS.switch_scope_and_registry(cfg.get("default_scope")) as registry:
        if task == "det":
            return _apply_det(cfg, args, mode, log, registry)
        return _apply_seg(cfg, args, mode, log, registry)


def _set_explicit_det_paths(cfg, args) -> None:
    given = {k: getattr(args, k, None) for k in ("train_ann", "train_img", "val_ann", "val_img")}
    if not any(given.values()):
        return
    missing = [f"--{k.replace('_', '-')}" for k, v in given.items() if not v]
    if missing:
        raise ClassListError(f"--train-ann/--train-img/--val-ann/--val-img go together: {', '.join(missing)} missing")
    if getattr(args, "data_root", None):
        raise ClassListError("give either --data-root or --train-ann/--train-img/--val-ann/--val-img, not both")
    for key in ("train_ann", "val_ann"):
        if not osp.isfile(given[key]):
            raise ClassListError(f"--{key.replace('_', '-')} {given[key]}: file not found")
    for key in ("train_img", "val_img"):
        if not osp.isdir(given[key]):
            raise ClassListError(f"--{key.replace('_', '-')} {given[key]}: not a folder")
    paths = {
        "train": (osp.abspath(given["train_ann"]), osp.abspath(given["train_img"])),
        "val": (osp.abspath(given["val_ann"]), osp.abspath(given["val_img"])),
    }
    paths["test"] = paths["val"]
    for split, _path, ds in _loader_datasets(cfg):
        ann, img = paths[split]
        ds["ann_file"] = ann
        prefix = dict(ds.get("data_prefix") or {})
        prefix["img"] = img + os.sep
        ds["data_prefix"] = prefix
    for key in ("val_evaluator", "test_evaluator"):
        for ev in _evaluators(cfg, key):
            if "ann_file" in ev:
                ev["ann_file"] = paths["val"][0]


def _evaluators(cfg, key: str) -> list:
    evs = cfg.get(key)
    if evs is None:
        return []
    return [e for e in (evs if isinstance(evs, (list, tuple)) else [evs]) if isinstance(e, dict)]


def _apply_det(cfg, args, mode, log, registry):
    if mode == "train":
        _set_explicit_det_paths(cfg, args)
    from_data = bool(
        getattr(args, "data_root", None) or getattr(args, "train_ann", None) or getattr(args, "classes", None)
    )
    source_split = "train" if mode == "train" else "test"
    coco = [
        (split, path, ds)
        for split, path, ds in _loader_datasets(cfg)
        if _is(_dataset_class(registry, ds), "CocoDataset")
    ]
    primary = next(((p, d) for s, p, d in coco if s == source_split), None)
    if primary is None:
        if from_data:
            raise ClassListError(
                f"{source_split}_dataloader has no COCO-format dataset: the class list cannot be read from the data"
            )
        return None
    ppath, pds = primary
    pann = _join(pds.get("data_root"), pds.get("ann_file"))
    declared = (pds.get("metainfo") or {}).get("classes")
    if declared is not None:
        declared = [declared] if isinstance(declared, str) else list(declared)

    if not from_data:
        classes = declared or list(_dataset_class(registry, pds).METAINFO.get("classes") or [])
        where = f"{ppath}.metainfo.classes" if declared else f"the classes of {pds.get('type')}"
        _check_heads(cfg, classes, where, "det")
        if not osp.isfile(pann):
            return None  # the data check names the missing file
        names, ids = read_coco_categories(pann)
        absent = [c for c in classes if c not in names]
        if absent:
            return None  # the data check names them (config class not in 'categories')
        selected = classes
    else:
        names, ids = read_coco_categories(pann)
        if getattr(args, "classes", None):
            wanted = _parse_names(args.classes, "--classes")
            absent = [c for c in wanted if c not in names]
            if absent:
                raise ClassListError(f"--classes: {absent} not among the categories of {pann} ({', '.join(names)})")
        else:
            wanted = list(names)
        if declared and list(declared) != [n for n in names if n in set(wanted)]:
            log(f"own data: the config's {ppath}.metainfo.classes {tuple(declared)} replaced by the data's")
        selected = wanted
    ordered = [n for n in names if n in set(selected)]
    if ordered != list(selected):
        log(
            f"own data: class list put in the order of {pann}'s categories ({', '.join(ordered)}): MMDetection "
            "maps labels to categories in the file's order"
        )
    sel_ids = [ids[names.index(n)] for n in ordered]
    for _split, _path, ds in coco:
        ann = _join(ds.get("data_root"), ds.get("ann_file"))
        if ann == pann or not osp.isfile(ann):
            continue
        other_names, other_ids = read_coco_categories(ann)
        for n, i in zip(ordered, sel_ids):
            if n not in other_names:
                raise ClassListError(f"{ann}: has no category {n!r} (a class of {pann})")
            j = other_ids[other_names.index(n)]
            if j != i:
                raise ClassListError(f"{ann}: category {n!r} has id {j!r}, but {i!r} in {pann}")
    if not from_data:
        # the config's classes stay (in the file's order); their ids join the metainfo, so that checkpoints
        # carry them (tools/infer_det.py)
        for _split, path, ds in coco:
            own = (ds.get("metainfo") or {}).get("classes")
            if own is not None and set([own] if isinstance(own, str) else own) != set(ordered):
                raise ClassListError(
                    f"{path}.metainfo.classes has {len(own)} classes, {ppath}.metainfo.classes {len(ordered)}: "
                    "every dataloader must name the same classes"
                )
            ds["metainfo"] = dict(ds.get("metainfo") or {}, classes=tuple(ordered), category_ids=tuple(sel_ids))
        return dict(classes=ordered, category_ids=sel_ids, keys=[], source=pann)
    metainfo = dict(classes=tuple(ordered), palette=make_palette(len(ordered)), category_ids=tuple(sel_ids))
    for _split, _path, ds in coco:
        ds["metainfo"] = dict(metainfo)
    keys = set_num_classes(cfg, len(ordered), "det")
    for key in ("val_evaluator", "test_evaluator"):
        split = key.split("_")[0]
        ds = next((d for s, _p, d in coco if s == split), None)
        if ds is None:
            continue
        for ev in _evaluators(cfg, key):
            if "ann_file" in ev or ev.get("type") in ("CocoMetric", "mmdet.CocoMetric"):
                ev["ann_file"] = _join(ds.get("data_root"), ds.get("ann_file"))
    shown = ", ".join(f"{n} (id {i})" for n, i in zip(ordered, sel_ids))
    log(f"own data: {len(ordered)} classes from {pann}: {shown}; set {', '.join(keys) or 'no num_classes'}")
    return dict(classes=ordered, category_ids=sel_ids, keys=keys, source=pann)


def _check_heads(cfg, classes, where: str, task: str) -> None:
    n = len(classes)
    if n == 0:
        return
    wrong = [(k, node["num_classes"]) for k, node in num_class_keys(cfg.model, task) if node["num_classes"] != n]
    if wrong:
        keys = ", ".join(f"{k}={v}" for k, v in wrong)
        hint = (
            "--data-root DIR (or --classes) to take the classes from the data"
            if task == "det"
            else "--classes/--classes-file to set them from the command line"
        )
        raise ClassListError(
            f"{keys}, but the data has {n} classes ({where}): set every head's num_classes to {n}, or use {hint}"
        )


def _seg_defaults(cls) -> dict:
    import inspect

    out = {}
    for klass in reversed(getattr(cls, "__mro__", ())):
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            params = inspect.signature(init).parameters
        except (TypeError, ValueError):
            continue
        for name, p in params.items():
            if p.default is not inspect.Parameter.empty:
                out[name] = p.default
    return out


_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".JPG", ".JPEG", ".PNG")


def _detect_img_suffix(img_dir: str, suffix: str) -> str:
    """The configured suffix when images with it exist in ``img_dir``, else the one suffix all images share."""
    if not osp.isdir(img_dir):
        return suffix
    found = set()
    for _root, _dirs, files in os.walk(img_dir):
        for f in files:
            if f.endswith(suffix):
                return suffix
            ext = osp.splitext(f)[1]
            if ext in _IMAGE_SUFFIXES:
                found.add(ext)
    return found.pop() if len(found) == 1 else suffix


def _set_reduce_zero_label(ds: dict, value: bool) -> None:
    ds["reduce_zero_label"] = value
    for step in ds.get("pipeline") or []:
        if isinstance(step, dict) and step.get("type") in ("LoadAnnotations", "mmseg.LoadAnnotations"):
            step["reduce_zero_label"] = value


def _apply_seg(cfg, args, mode, log, registry):
    names = None
    if getattr(args, "classes", None) and getattr(args, "classes_file", None):
        raise ClassListError("give either --classes or --classes-file, not both")
    if getattr(args, "classes", None):
        names, source = _parse_names(args.classes, "--classes"), "--classes"
    elif getattr(args, "classes_file", None):
        names, source = read_classes_file(args.classes_file), args.classes_file
    reduce = bool(getattr(args, "reduce_zero_label", False))
    segs = [
        (split, path, ds)
        for split, path, ds in _loader_datasets(cfg)
        if _is(_dataset_class(registry, ds), "BaseSegDataset")
    ]
    if names is None:
        if reduce:
            for _s, _p, ds in segs:
                _set_reduce_zero_label(ds, True)
        primary = next(((p, d) for s, p, d in segs if s == ("train" if mode == "train" else "test")), None)
        if primary is None:
            return None
        ppath, pds = primary
        declared = (pds.get("metainfo") or {}).get("classes")
        classes = list(declared or _dataset_class(registry, pds).METAINFO.get("classes") or [])
        where = f"{ppath}.metainfo.classes" if declared else f"the classes of {pds.get('type')}"
        _check_heads(cfg, classes, where, "seg")
        return None
    if not segs:
        raise ClassListError("the config has no segmentation dataset (BaseSegDataset) to give the classes to")
    metainfo = dict(classes=tuple(names), palette=make_palette(len(names)))
    for _split, path, ds in segs:
        cls = _dataset_class(registry, ds)
        own = tuple(getattr(cls, "METAINFO", {}).get("classes") or ())
        if own and own != tuple(names):
            # a dataset type with a fixed class list remaps labels to it (or refuses other names): the plain type
            defaults = _seg_defaults(cls)
            ds["type"] = "BaseSegDataset"
            for k in ("img_suffix", "seg_map_suffix"):
                ds.setdefault(k, defaults.get(k, ".jpg" if k == "img_suffix" else ".png"))
        img_dir = _join(ds.get("data_root"), (ds.get("data_prefix") or {}).get("img_path", ""))
        suffix = _detect_img_suffix(img_dir, ds.get("img_suffix", ".jpg"))
        if suffix != ds.get("img_suffix", ".jpg"):
            log(f"own data: {path}: images in {img_dir} end in {suffix!r}: img_suffix set to it")
            ds["img_suffix"] = suffix
        ds["metainfo"] = dict(metainfo)
        _set_reduce_zero_label(ds, reduce)
    keys = set_num_classes(cfg, len(names), "seg")
    values = f"PNG values 1..{len(names)} (0 = other, ignored)" if reduce else f"label values 0..{len(names) - 1}"
    log(f"own data: {len(names)} classes from {source} ({values}): {', '.join(names)}; set {', '.join(keys)}")
    return dict(classes=names, keys=keys, source=source, reduce_zero_label=reduce)


def prepare_config_data(cfg, args, task: str, mode: str) -> dict | None:
    """What ``swtasks.mm.cli.load_config`` does with the data after the paths are set: write a demo config's
    generated data on first use (``demo_data``, swtasks.mm.demo), then :func:`apply`."""
    import logging

    from mmengine.logging import print_log

    def log(msg: str) -> None:
        print_log(msg, logger="current", level=logging.INFO)

    if cfg.get("demo_data"):
        from .demo import ensure_demo_data

        ensure_demo_data(cfg.demo_data, log=log)
    return apply(cfg, args, task, mode, log=log)


def follow_checkpoint_classes(cfg, checkpoint: dict) -> list[str]:
    """Set the model's class-dependent ``num_classes`` to the number of classes a checkpoint was trained with
    (``meta['dataset_meta']['classes']``, which mmengine saves): the config a run started from then builds
    the run's model even when the classes came from the command line. Returns the keys set."""
    meta = checkpoint.get("meta") if isinstance(checkpoint, dict) else None
    classes = ((meta or {}).get("dataset_meta") or {}).get("classes")
    if not classes:
        return []
    task = "seg" if cfg.get("default_scope") == "mmseg" else "det"
    return set_num_classes(cfg, len(classes), task)
