"""ImageClassificationDataModule: ImageNet-layout folders or the embedded procedural dataset.

Folder layout (ImageNet): ``root/train/<class>/*.JPEG`` and ``root/val/<class>/*.JPEG`` (the same class
folder names in both; the sorted names give the label ids, like torchvision's ImageFolder). The same data in
shards (``format="webdataset"``: ``root/train/index.json`` + WebDataset tar files, written by
``tools/make_shards.py``) is read by ``shards.py`` with the same samples, classes and checks.

Every image is decoded to 8-bit RGB by :func:`read_rgb` (grayscale, palette, CMYK converted; 16-bit
scaled, not clipped; 32-bit float in [0, 1] scaled, other float ranges refused; alpha composited onto white;
more than ``max_image_pixels`` refused before decoding). Symlinked directories are followed once per real
directory and never back up into a loop.
Corrupt, truncated or refused images: ``corrupt_images="error"`` (default) stops with an error that names
the file; ``"skip"`` replaces the sample by the next readable one and warns with the file name and a
running count (per data-loader worker). The default is to stop because a silently shrinking dataset
changes results; choose ``skip`` for large scraped datasets where a few bad files are expected.

Data defaults (input size, mean, std, crop_pct, interpolation) come from ``data_config``, the model
registry's data config of the backbone (tools/train_cls.py links it from ``model.backbone``); the data
module never looks at the LightningModule. Resuming mid-epoch: the training loader's position (epoch,
batches handed out) is part of the data module's state, saved in every checkpoint.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchvision.datasets.folder import IMG_EXTENSIONS

from . import synthetic
from .errors import DataNotFoundError, InputError
from .transforms import data_config as registry_data_config
from .transforms import eval_transform, train_transform

__all__ = [
    "ImageClassificationDataModule",
    "ImageFolderDataset",
    "ImageListDataset",
    "ResumableLoader",
    "check_folders",
    "read_rgb",
    "scan_split",
]

# PIL's own threshold for its DecompressionBombWarning (about 89.5 megapixels)
DEFAULT_MAX_IMAGE_PIXELS = int(1024 * 1024 * 1024 // 4 // 3)
_INT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


def read_rgb(path, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode an image file (a path, or a binary file object) to 8-bit RGB (docs/reliability.md, "Images"):

    - RGB, grayscale (1, L), palette (P), CMYK, YCbCr, LAB, HSV: PIL's conversion to RGB;
    - 16-bit (and 32-bit integer) grayscale: scaled to 8 bits (v * 255 / 65535), not clipped at 255;
      16-bit colour PNGs are reduced to 8 bits by PIL when it opens them;
    - 32-bit float grayscale (mode F, e.g. a float TIFF): values in [0, 1] scaled by 255; any other range
      (or NaN / inf) is refused (ValueError naming the range): there is no one right reading of it, and
      PIL's own conversion would clip [0, 1] floats to an all-black image;
    - an alpha channel (RGBA, LA, PA, or a palette / tRNS transparency): composited onto white;
    - more than ``max_pixels`` pixels: refused before decoding (OSError naming the size);
    - truncated or corrupt files: the decoder's OSError.
    """
    opened = open(path, "rb") if isinstance(path, (str, os.PathLike)) else contextlib.nullcontext(path)
    with opened as f, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size limit below is ours
        img = Image.open(f)
        w, h = img.size
        if max_pixels and w * h > max_pixels:
            raise OSError(f"{w}x{h} = {w * h} pixels, more than data.max_image_pixels={max_pixels}")
        img.load()  # forces the decode: truncated / garbage files fail here
    if img.mode in _INT_MODES:
        arr = np.asarray(img, dtype=np.float64) * (255.0 / 65535.0)
        img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        img = _float_to_l(img)
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return img if img.mode == "RGB" else img.convert("RGB")


def _float_to_l(img: Image.Image) -> Image.Image:
    """A 32-bit float grayscale image (mode F) as 8-bit L: [0, 1] scaled by 255, anything else refused."""
    arr = np.asarray(img, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise ValueError("32-bit float image with NaN or infinite values")
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if lo < 0.0 or hi > 1.0:
        raise ValueError(
            f"32-bit float image with values in [{lo:g}, {hi:g}]: only floats in [0, 1] are read (scaled by 255); "
            "convert it to 8 or 16 bits, or to [0, 1]"
        )
    return Image.fromarray(np.rint(arr * 255.0).astype(np.uint8), "L")


def _list_classes(split_dir: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS) and not name.startswith(".")


def _images_under(folder: Path) -> list[str]:
    """The image files under ``folder``, any depth, sorted; hidden names are skipped. Symlinked files are
    read through their link; a symlinked directory is followed once per real directory, and never when it
    leads back to ``folder`` or above it: a symlink loop cannot multiply the samples."""
    out = []
    top = os.path.realpath(folder)
    seen = {top}
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        keep = []
        for d in sorted(dirnames):
            if d.startswith("."):
                continue
            real = os.path.realpath(os.path.join(dirpath, d))
            if real in seen or os.path.commonpath([top, real]) == real:  # walked already, or a way back up
                continue
            seen.add(real)
            keep.append(d)
        dirnames[:] = keep
        out += [os.path.join(dirpath, f) for f in sorted(filenames) if _is_image(f)]
    return out


def scan_split(split_dir: str | Path, what: str = "split") -> tuple[list[str], list[tuple[str, int]]]:
    """Classes and (path, label) samples of one split folder, with clear errors for bad layouts."""
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise DataNotFoundError(f"{what} folder {split_dir} does not exist (expected <root>/{split_dir.name}/<class>/<image>)")
    classes = _list_classes(split_dir)
    if not classes:
        raise InputError(f"{what} folder {split_dir} has no class sub-folders (expected {split_dir}/<class>/<image>)")
    samples: list[tuple[str, int]] = []
    empty = []
    for i, c in enumerate(classes):
        files = _images_under(split_dir / c)
        if not files:
            empty.append(str(split_dir / c))
        samples += [(f, i) for f in files]
    if empty:
        shown = ", ".join(empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
        raise InputError(
            f"empty class folder(s) without images ({', '.join(sorted(IMG_EXTENSIONS))}): {shown}; "
            "remove them or add images"
        )
    return classes, samples


def check_folders(train_classes: Sequence[str], other_classes: Sequence[str], train_dir, other_dir,
                  what: str = "class folders") -> None:
    if list(train_classes) == list(other_classes):
        return
    a, b = set(train_classes), set(other_classes)
    only_a, only_b = sorted(a - b), sorted(b - a)
    name_a, name_b = Path(train_dir).name, Path(other_dir).name
    if name_a == name_b:  # two index files: name them in full
        name_a, name_b = str(train_dir), str(other_dir)
    raise InputError(
        f"{what} differ between {train_dir} ({len(a)} classes) and {other_dir} ({len(b)} classes): "
        f"only in {name_a}: {only_a[:5]}{' ...' if len(only_a) > 5 else ''}; "
        f"only in {name_b}: {only_b[:5]}{' ...' if len(only_b) > 5 else ''}"
    )


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return ((seed * 1_000_003 + epoch) * 10_000_019 + index) % (2**63 - 1)


class EpochIndexSampler(DistributedSampler):
    """DistributedSampler (shuffled by (seed, epoch), split over ranks) that yields ``(epoch, index)``
    keys, so that datasets can seed each sample's augmentation by (seed, epoch, index). ``skip`` drops
    that many of this rank's first indices from the next iteration only (resuming mid-epoch)."""

    skip = 0

    def __iter__(self):
        epoch, skip = self.epoch, self.skip
        self.skip = 0
        return ((epoch, i) for i in itertools.islice(super().__iter__(), skip, None))


class _Counted:
    def __init__(self, it, owner: ResumableLoader):
        self.it, self.owner = it, owner

    def __iter__(self):
        return self

    def __next__(self):
        batch = next(self.it)
        self.owner.position += 1
        return batch

    def __len__(self) -> int:
        return len(self.it)


class ResumableLoader(DataLoader):
    """The training DataLoader, knowing its place in the epoch: ``state_dict()`` is ``{"epoch": e,
    "batches": k}`` (k batches of epoch e handed out; a finished epoch reads as the start of the next) and
    after ``load_state_dict`` the next iteration starts at batch k of epoch e. With an EpochIndexSampler
    (order fixed by (seed, epoch), augmentation by (seed, epoch, index)) a run resumed mid-epoch sees
    exactly the batches of an uninterrupted one. Batches are counted as the training loop takes them
    (Lightning does not pre-fetch from a loader of known length); worker pre-fetching does not count."""

    def __init__(self, dataset, *, sampler: EpochIndexSampler, **kwargs):
        super().__init__(dataset, sampler=sampler, **kwargs)
        self.position = 0
        self._epoch = sampler.epoch
        self._pending: dict | None = None
        self._applied: dict | None = None

    def __iter__(self):
        start = 0
        if self._pending is not None:
            start = int(self._pending["batches"])
            self.sampler.set_epoch(int(self._pending["epoch"]))
            self._applied, self._pending = self._pending, None
        self.sampler.skip = start * self.batch_size
        self._epoch, self.position = self.sampler.epoch, start
        return _Counted(super().__iter__(), self)

    def state_dict(self, epoch_length: int | float | None = None) -> dict[str, int]:
        """``epoch_length``: batches the training loop takes per epoch when fewer than ``len(self)``."""
        n = len(self) if epoch_length is None or epoch_length == float("inf") else min(len(self), int(epoch_length))
        if self.position >= n:
            return {"epoch": self._epoch + 1, "batches": 0}
        return {"epoch": self._epoch, "batches": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state and state != self._applied:  # the same state arriving twice is applied once
            self._pending = {"epoch": int(state["epoch"]), "batches": int(state["batches"])}


class _Keyed(Dataset):
    """Accepts plain indices and ``(epoch, index)`` keys; with a key, the sample's random draws (torch
    and python ``random``) come from a generator seeded by (seed, epoch, index): augmentation is then a
    pure function of the key, whatever the worker count, and a resumed run gets the same samples."""

    seed = 0

    def _item(self, index: int):
        raise NotImplementedError

    def __getitem__(self, key):
        if not isinstance(key, tuple):
            return self._item(key)
        epoch, index = key
        state = random.getstate()
        with torch.random.fork_rng(devices=[]):
            s = sample_seed(self.seed, epoch, index)
            torch.manual_seed(s)
            random.seed(s)
            try:
                return self._item(index)
            finally:
                random.setstate(state)


class TensorSet(_Keyed):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def _item(self, index: int):
        return self.images[index], self.labels[index]


class _ImageLoading(_Keyed):
    """Reads RGB images with the corrupt-image policy."""

    def __init__(
        self,
        paths: Sequence[str],
        transform=None,
        corrupt_images: str = "error",
        seed: int = 0,
        max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    ):
        if corrupt_images not in ("error", "skip"):
            raise InputError(f"data.corrupt_images must be 'error' or 'skip', got {corrupt_images!r}")
        self.paths = list(paths)
        self.transform = transform
        self.corrupt_images = corrupt_images
        self.seed = seed
        self.max_image_pixels = max_image_pixels
        self.skipped = 0

    def __len__(self) -> int:
        return len(self.paths)

    def _read_at(self, i: int):
        return read_rgb(self.paths[i], self.max_image_pixels)

    def _load(self, index: int):
        n = len(self.paths)
        for attempt in range(min(n, 100)):
            i = (index + attempt) % n
            path = self.paths[i]
            try:
                img = self._read_at(i)
            except (OSError, ValueError, Image.DecompressionBombError) as e:
                if self.corrupt_images == "error":
                    raise InputError(
                        f"cannot read image {path}: {e} (set data.corrupt_images=skip to skip unreadable files)"
                    ) from e
                self.skipped += 1
                warnings.warn(
                    f"skipping unreadable image {path} ({e}); {self.skipped} skipped so far in this worker",
                    stacklevel=2,
                )
                continue
            return i, img
        raise InputError(f"no readable image found near index {index} (100 consecutive files failed)")

    def _apply(self, img):
        return self.transform(img) if self.transform is not None else img


class ImageFolderDataset(_ImageLoading):
    """(image, label) pairs from ``scan_split`` samples."""

    def __init__(
        self,
        samples,
        classes,
        transform=None,
        corrupt_images: str = "error",
        seed: int = 0,
        max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    ):
        super().__init__([p for p, _ in samples], transform, corrupt_images, seed, max_image_pixels)
        self.targets = [t for _, t in samples]
        self.classes = list(classes)

    def _item(self, index: int):
        i, img = self._load(index)
        return self._apply(img), self.targets[i]


class ImageListDataset(_ImageLoading):
    """(image, index) pairs for prediction over every image under a folder."""

    def _item(self, index: int):
        i, img = self._load(index)
        return self._apply(img), i


def _default_workers() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return min(8, cores)


class ImageClassificationDataModule(L.LightningDataModule):
    """ImageNet-layout image folders (``dataset="folder"``) or the embedded procedural dataset
    (``dataset="longrange"``, no download; see ``swtasks.cls.synthetic``).

    Args:
        root: dataset root holding ``train_dir`` and ``val_dir`` class folders.
        dataset: ``folder`` or the name of a procedural dataset (``longrange``).
        format: how ``dataset=folder`` data is stored under ``root``: ``folder`` (image files in class
            folders) or ``webdataset`` (shards written by ``tools/make_shards.py``: ``root/<split>/index.json``
            and tar files; the same samples, classes, transforms, checks and exact resume; ``shards.py``).
        train_dir, val_dir: split folder names under ``root``.
        test_dir: split used by ``test`` (default: ``val_dir``).
        predict_dir: folder of images (any depth) used by ``predict`` (default: the test split).
        data_config: the backbone's data config (input_size, mean, std, crop_pct, interpolation), from the
            model registry; ``tools/train_cls.py`` links it from ``model.backbone``. Default: the
            registry's defaults.
        image_size: training / evaluation crop (default: the data config's input size).
        batch_size: per-device batch size.
        eval_batch_size: per-device batch size for validate / test / predict (default: batch_size).
        num_workers: DataLoader worker processes (default: the usable CPU cores, at most 8).
        pin_memory, persistent_workers: DataLoader settings (pinning only on GPUs).
        crop_pct, interpolation, mean, std: override the data config.
        scale, ratio, hflip: random resized crop and horizontal flip (the default augmentation).
        auto_augment, color_jitter, force_color_jitter, random_erasing: stronger augmentation, off unless
            asked (the ImageNet recipe: ``rand-m9-mstd0.5-inc1``, 0.4, false, 0.25; see
            ``swtasks.cls.transforms``).
        corrupt_images: ``error`` (stop, naming the file) or ``skip`` (warn and count).
        max_image_pixels: images with more pixels are treated as unreadable (default: PIL's warning
            threshold, about 89.5 megapixels); null: no limit of ours (PIL refuses above 2x its threshold).
        seed: data seed: the order of an epoch depends only on (seed, epoch) and the augmentation of a
            training sample only on (seed, epoch, index), whatever the number of workers, so a resumed
            run sees the same batches as an uninterrupted one.
        synthetic_train_size, synthetic_val_size: samples of the procedural dataset.
    """

    def __init__(
        self,
        root: str | None = None,
        dataset: Literal["folder", "longrange"] = "folder",
        format: Literal["folder", "webdataset"] = "folder",
        train_dir: str = "train",
        val_dir: str = "val",
        test_dir: str | None = None,
        predict_dir: str | None = None,
        data_config: dict[str, Any] | None = None,
        image_size: int | None = None,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int | None = None,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        crop_pct: float | None = None,
        interpolation: str | None = None,
        mean: tuple[float, float, float] | None = None,
        std: tuple[float, float, float] | None = None,
        scale: tuple[float, float] = (0.35, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip: float = 0.5,
        auto_augment: str | None = None,
        color_jitter: float | None = None,
        force_color_jitter: bool = False,
        random_erasing: float = 0.0,
        corrupt_images: Literal["error", "skip"] = "error",
        max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
        seed: int = 0,
        synthetic_train_size: int = 8000,
        synthetic_val_size: int = 2000,
    ):
        super().__init__()
        if dataset != "folder" and dataset not in synthetic.DATASETS:
            raise InputError(f"data.dataset={dataset!r}: choose 'folder' or one of {sorted(synthetic.DATASETS)}")
        if format not in ("folder", "webdataset"):
            raise InputError(f"data.format={format!r}: choose 'folder' (image files) or 'webdataset' (shards)")
        if batch_size < 1:
            raise InputError(f"data.batch_size must be >= 1, got {batch_size}")
        if eval_batch_size is not None and eval_batch_size < 1:
            raise InputError(f"data.eval_batch_size must be >= 1 or null, got {eval_batch_size}")
        if num_workers is not None and num_workers < 0:
            raise InputError(f"data.num_workers must be >= 0 (0: load in the main process) or null, got {num_workers}")
        for name, (lo, hi), upper in (("scale", scale, " <= 1"), ("ratio", ratio, "")):
            if not (0 < lo <= hi and (not upper or hi <= 1)):
                raise InputError(f"data.{name} must be [min, max] with 0 < min <= max{upper}, got [{lo}, {hi}]")
        for name, value in (("hflip", hflip), ("random_erasing", random_erasing)):
            if not 0.0 <= value <= 1.0:
                raise InputError(f"data.{name} is a probability in [0, 1], got {value}")
        if max_image_pixels is not None and max_image_pixels < 1:
            raise InputError(f"data.max_image_pixels must be >= 1 or null, got {max_image_pixels}")
        if image_size is not None and image_size < 1:
            raise InputError(f"data.image_size must be >= 1, got {image_size}")
        if corrupt_images not in ("error", "skip"):
            raise InputError(f"data.corrupt_images must be 'error' or 'skip', got {corrupt_images!r}")
        if dataset != "folder":
            try:
                synthetic.check_image_size(dataset, image_size or synthetic.DATASETS[dataset].default_image_size)
            except ValueError as e:
                raise InputError(f"data.image_size: {e}") from None
        self.save_hyperparameters()
        self.classes: list[str] | None = None
        self.classes_source: str | None = None  # where the classes came from, for messages
        self.train_set = self.val_set = self.test_set = self.predict_set = None
        self._train_loader: ResumableLoader | None = None
        self._pending_position: dict | None = None

    # ------------------------------------------------------------------ configuration
    def resolved_config(self) -> dict[str, Any]:
        """Image size, crop_pct, interpolation, mean and std in use: the explicit data.* values, else the
        data config's."""
        hp = self.hparams
        base = registry_data_config()
        base.update({k: v for k, v in dict(hp.data_config or {}).items() if v is not None})
        if hp.dataset != "folder":
            size = synthetic.DATASETS[hp.dataset].default_image_size
            base["input_size"] = (3, size, size)
        size = hp.image_size or tuple(base["input_size"])[-1]
        return {
            "image_size": int(size),
            "crop_pct": hp.crop_pct or base["crop_pct"],
            "interpolation": hp.interpolation or base["interpolation"],
            "mean": tuple(hp.mean or base["mean"]),
            "std": tuple(hp.std or base["std"]),
        }

    @property
    def image_size(self) -> int:
        return self.resolved_config()["image_size"]

    @property
    def num_classes(self) -> int | None:
        return None if self.classes is None else len(self.classes)

    def _set_classes(self, classes: Sequence[str], source: str) -> None:
        self.classes, self.classes_source = list(classes), source

    # ------------------------------------------------------------------ datasets
    def setup(self, stage: str | None = None) -> None:
        if self.hparams.dataset != "folder":
            self._setup_procedural(stage)
        else:
            self._setup_folder(stage)

    def _setup_procedural(self, stage) -> None:
        hp = self.hparams
        spec = synthetic.DATASETS[hp.dataset]
        size = hp.image_size or spec.default_image_size
        self._set_classes(spec.classes, f"the procedural dataset {hp.dataset!r}")

        def make(split, n):
            x, y = synthetic.generate(hp.dataset, n, split=split, image_size=size, seed=hp.seed)
            return TensorSet(x, y)

        if stage in (None, "fit") and self.train_set is None:
            self.train_set = make("train", hp.synthetic_train_size)
        if stage in (None, "fit", "validate", "test", "predict") and self.val_set is None:
            self.val_set = make("val", hp.synthetic_val_size)
        self.test_set = self.val_set
        self.predict_set = self.val_set

    def _scan(self, split_dir: Path, what: str):
        """(classes, samples) of one split: scan_split's for folders, the shard index (a ShardSplit) for shards."""
        if self.hparams.format == "webdataset":
            from .shards import scan_shards  # noqa: PLC0415  (shards.py builds on this module)

            return scan_shards(split_dir, what)
        return scan_split(split_dir, what)

    def _images(self, samples, classes, transform) -> ImageFolderDataset:
        hp = self.hparams
        if hp.format == "webdataset":
            from .shards import ShardImageDataset  # noqa: PLC0415

            return ShardImageDataset(samples, classes, transform, hp.corrupt_images, hp.seed, hp.max_image_pixels)
        return ImageFolderDataset(samples, classes, transform, hp.corrupt_images, hp.seed, hp.max_image_pixels)

    def _setup_folder(self, stage) -> None:
        hp = self.hparams
        if not hp.root:
            raise InputError("data.root is required for dataset=folder (an ImageNet-layout folder with train/ and val/)")
        root = Path(hp.root).expanduser()
        if not root.is_dir():
            raise DataNotFoundError(f"data.root {root} does not exist or is not a directory")
        cfg = self.resolved_config()
        evaluate = eval_transform(
            cfg["image_size"], crop_pct=cfg["crop_pct"], interpolation=cfg["interpolation"], mean=cfg["mean"], std=cfg["std"]
        )
        train_dir, val_dir = root / hp.train_dir, root / hp.val_dir
        test_dir = root / (hp.test_dir or hp.val_dir)
        if stage in (None, "fit"):
            classes, train_samples = self._scan(train_dir, "training")
            if len(classes) < 2:
                raise InputError(
                    f"training folder {train_dir} has one class folder ({classes[0]}): a classifier needs at least "
                    "two classes to tell apart (expected <root>/train/<class>/<image> for every class)"
                )
            val_classes, val_samples = self._scan(val_dir, "validation")
            self._check_classes(classes, val_classes, train_dir, val_dir)
            self._set_classes(classes, str(train_dir))
            augment = train_transform(
                cfg["image_size"],
                mean=cfg["mean"],
                std=cfg["std"],
                interpolation=cfg["interpolation"],
                scale=hp.scale,
                ratio=hp.ratio,
                hflip=hp.hflip,
                auto_augment=hp.auto_augment,
                color_jitter=hp.color_jitter,
                force_color_jitter=hp.force_color_jitter,
                random_erasing=hp.random_erasing,
            )
            self.train_set = self._images(train_samples, classes, augment)
            self.val_set = self._images(val_samples, classes, evaluate)
        elif stage == "validate":
            classes, val_samples = self._scan(val_dir, "validation")
            self._check_against_train(classes, train_dir, val_dir)
            self._set_classes(classes, str(val_dir))
            self.val_set = self._images(val_samples, classes, evaluate)
        elif stage in ("test", "predict"):
            classes, test_samples = self._scan(test_dir, "test")
            self._check_against_train(classes, train_dir, test_dir)
            self._set_classes(classes, str(test_dir))
            self.test_set = self._images(test_samples, classes, evaluate)
            if stage == "predict":
                files = None if hp.format == "webdataset" else self.test_set.paths
                if hp.predict_dir:
                    pdir = Path(hp.predict_dir).expanduser()
                    if not pdir.is_dir():
                        raise DataNotFoundError(f"data.predict_dir {pdir} does not exist")
                    files = _images_under(pdir)
                    if not files:
                        raise InputError(f"data.predict_dir {pdir} contains no images")
                if files is None:  # the test split's shards
                    from .shards import ShardListDataset  # noqa: PLC0415

                    self.predict_set = ShardListDataset(test_samples, evaluate, hp.corrupt_images, hp.seed,
                                                        hp.max_image_pixels)
                else:
                    self.predict_set = ImageListDataset(files, evaluate, hp.corrupt_images, hp.seed, hp.max_image_pixels)

    def _check_classes(self, train_classes, other_classes, train_dir: Path, other_dir: Path) -> None:
        if self.hparams.format == "webdataset":
            from .shards import INDEX  # noqa: PLC0415

            check_folders(train_classes, other_classes, train_dir / INDEX, other_dir / INDEX, "shard class lists")
        else:
            check_folders(train_classes, other_classes, train_dir, other_dir)

    def _check_against_train(self, classes, train_dir: Path, other_dir: Path) -> None:
        if not train_dir.is_dir():  # evaluation-only copies may come without train/
            return
        if self.hparams.format == "webdataset":
            from .shards import read_index  # noqa: PLC0415

            train_classes = read_index(train_dir, "training", check_files=False).classes
        else:
            train_classes = _list_classes(train_dir)
        self._check_classes(train_classes, classes, train_dir, other_dir)

    # ------------------------------------------------------------------ loaders
    def _loader_kwargs(self, batch_size: int) -> dict[str, Any]:
        hp = self.hparams
        trainer = self.trainer
        on_gpu = trainer is not None and trainer.strategy.root_device.type != "cpu"
        workers = _default_workers() if hp.num_workers is None else hp.num_workers
        return dict(
            batch_size=batch_size,
            num_workers=workers,
            pin_memory=bool(hp.pin_memory and on_gpu),
            persistent_workers=bool(hp.persistent_workers and workers > 0),
            # a private generator for the loader's base seed: making an iterator does not draw from the
            # global RNG, which stays the training steps' own (MixUp, drop path) and resumes exactly
            generator=torch.Generator().manual_seed(hp.seed),
        )

    def train_dataloader(self):
        hp, trainer, ds = self.hparams, self.trainer, self.train_set
        world = trainer.world_size if trainer is not None else 1
        rank = trainer.global_rank if trainer is not None else 0
        if len(ds) < hp.batch_size * world:
            where = self.classes_source or "the training set"
            raise InputError(
                f"{where} has {len(ds)} training images, fewer than one batch of data.batch_size={hp.batch_size} "
                f"x {world} process(es); use --data.batch_size {max(1, len(ds) // world)} or less, or more images"
            )
        # the order depends on (seed, epoch) only (Lightning calls set_epoch), each sample's augmentation on
        # (seed, epoch, index): a resumed run sees the same batches; also the per-rank split under DDP
        sampler = EpochIndexSampler(ds, num_replicas=world, rank=rank, shuffle=True, seed=hp.seed)
        loader = ResumableLoader(ds, sampler=sampler, drop_last=True, **self._loader_kwargs(hp.batch_size))
        if self._pending_position is not None:
            loader.load_state_dict(self._pending_position)
            self._pending_position = None
        self._train_loader = loader
        return loader

    def _eval_loader(self, ds) -> DataLoader:
        hp = self.hparams
        return DataLoader(ds, shuffle=False, drop_last=False, **self._loader_kwargs(hp.eval_batch_size or hp.batch_size))

    def val_dataloader(self):
        return self._eval_loader(self.val_set)

    def test_dataloader(self):
        return self._eval_loader(self.test_set)

    def predict_dataloader(self):
        return self._eval_loader(self.predict_set)

    def predict_paths(self) -> list[str] | None:
        ds = self.predict_set
        return list(ds.paths) if isinstance(ds, _ImageLoading) else None

    # ------------------------------------------------------------------ checkpoint state
    def state_dict(self) -> dict[str, Any]:
        """The training loader's position, so that ``--ckpt_path`` resumes mid-epoch exactly."""
        if self._train_loader is None:
            return {}
        trainer = self.trainer
        length = trainer.num_training_batches if trainer is not None else None
        return {"train_position": self._train_loader.state_dict(length)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        position = state_dict.get("train_position")
        if position:
            if self._train_loader is not None:
                self._train_loader.load_state_dict(position)
            else:
                self._pending_position = dict(position)
