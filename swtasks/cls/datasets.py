"""The map-style pieces of the classification data: decoding any image file to RGB (`read_rgb`), scanning an
ImageNet-layout split (`scan_split`, `check_folders`), the datasets that load and transform one sample with a
key derived from (seed, epoch, index), the epoch-keyed sampler and the loader that can resume mid-epoch.
swtasks.cls.data (the LightningDataModule) and swtasks.cls.shards (the same samples read from shards) build on
them. See swtasks.cls.data for the decoding rules and the corrupt-image policy.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchvision.datasets.folder import IMG_EXTENSIONS

from .errors import DataNotFoundError, InputError

__all__ = [
    "DEFAULT_MAX_IMAGE_PIXELS",
    "EpochIndexSampler",
    "ImageFolderDataset",
    "ImageListDataset",
    "ImageLoading",
    "ResumableLoader",
    "TensorSet",
    "check_folders",
    "images_under",
    "list_classes",
    "read_rgb",
    "sample_seed",
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


def list_classes(split_dir: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS) and not name.startswith(".")


def images_under(folder: Path) -> list[str]:
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
    classes = list_classes(split_dir)
    if not classes:
        raise InputError(f"{what} folder {split_dir} has no class sub-folders (expected {split_dir}/<class>/<image>)")
    samples: list[tuple[str, int]] = []
    empty = []
    for i, c in enumerate(classes):
        files = images_under(split_dir / c)
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


class ImageLoading(_Keyed):
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


class ImageFolderDataset(ImageLoading):
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


class ImageListDataset(ImageLoading):
    """(image, index) pairs for prediction over every image under a folder."""

    def _item(self, index: int):
        i, img = self._load(index)
        return self._apply(img), i
