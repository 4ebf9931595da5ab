"""ImageClassificationDataModule: ImageNet-layout folders or the embedded procedural dataset.

Folder layout (ImageNet): ``root/train/<class>/*.JPEG`` and ``root/val/<class>/*.JPEG`` (the same class
folder names in both; the sorted names give the label ids, like torchvision's ImageFolder).

Corrupt or unreadable images: ``corrupt_images="error"`` (default) stops with an error that names the
file; ``"skip"`` replaces the sample by the next readable one and warns with the file name and a running
count (per data-loader worker). The default is to stop because a silently shrinking dataset changes
results; choose ``skip`` for large scraped datasets where a few bad files are expected.
"""

from __future__ import annotations

import os
import random
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchvision.datasets.folder import IMG_EXTENSIONS

from . import synthetic
from .errors import DataNotFoundError, InputError
from .transforms import eval_transform, train_transform

__all__ = ["ImageClassificationDataModule", "ImageFolderDataset", "ImageListDataset", "scan_split", "check_folders"]


def _list_classes(split_dir: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS) and not name.startswith(".")


def _images_under(folder: Path) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
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


def check_folders(train_classes: Sequence[str], other_classes: Sequence[str], train_dir, other_dir) -> None:
    if list(train_classes) == list(other_classes):
        return
    a, b = set(train_classes), set(other_classes)
    only_a, only_b = sorted(a - b), sorted(b - a)
    raise InputError(
        f"class folders differ between {train_dir} ({len(a)} classes) and {other_dir} ({len(b)} classes): "
        f"only in {Path(train_dir).name}: {only_a[:5]}{' ...' if len(only_a) > 5 else ''}; "
        f"only in {Path(other_dir).name}: {only_b[:5]}{' ...' if len(only_b) > 5 else ''}"
    )


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return ((seed * 1_000_003 + epoch) * 10_000_019 + index) % (2**63 - 1)


class EpochIndexSampler(DistributedSampler):
    """DistributedSampler (shuffled by (seed, epoch), split over ranks) that yields ``(epoch, index)``
    keys, so that datasets can seed each sample's augmentation by (seed, epoch, index)."""

    def __iter__(self):
        epoch = self.epoch
        return ((epoch, i) for i in super().__iter__())


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

    def __init__(self, paths: Sequence[str], transform=None, corrupt_images: str = "error", seed: int = 0):
        if corrupt_images not in ("error", "skip"):
            raise InputError(f"data.corrupt_images must be 'error' or 'skip', got {corrupt_images!r}")
        self.paths = list(paths)
        self.transform = transform
        self.corrupt_images = corrupt_images
        self.seed = seed
        self.skipped = 0

    def __len__(self) -> int:
        return len(self.paths)

    def _read(self, path: str):
        with open(path, "rb") as f:
            img = Image.open(f)
            return img.convert("RGB")  # forces the decode: truncated / garbage files fail here

    def _load(self, index: int):
        n = len(self.paths)
        for attempt in range(min(n, 100)):
            i = (index + attempt) % n
            path = self.paths[i]
            try:
                img = self._read(path)
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

    def __init__(self, samples, classes, transform=None, corrupt_images: str = "error", seed: int = 0):
        super().__init__([p for p, _ in samples], transform, corrupt_images, seed)
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


class ImageClassificationDataModule(L.LightningDataModule):
    """ImageNet-layout image folders (``dataset="folder"``) or the embedded procedural dataset
    (``dataset="longrange"``, no download; see ``swtasks.cls.synthetic``).

    Args:
        root: dataset root holding ``train_dir`` and ``val_dir`` class folders.
        dataset: ``folder`` or the name of a procedural dataset (``longrange``).
        train_dir, val_dir: split folder names under ``root``.
        test_dir: split used by ``test`` (default: ``val_dir``).
        predict_dir: folder of images (any depth) used by ``predict`` (default: the test split).
        image_size: training / evaluation crop (default: the model's input size).
        batch_size: per-device batch size.
        eval_batch_size: per-device batch size for validate / test / predict (default: batch_size).
        num_workers, pin_memory, persistent_workers: DataLoader settings (pinning only on GPUs).
        crop_pct, interpolation, mean, std: default to the model's data config.
        scale, ratio, hflip, auto_augment, color_jitter, force_color_jitter, random_erasing: training
            augmentation (see ``swtasks.cls.transforms``); ``auto_augment=null`` disables RandAugment.
        corrupt_images: ``error`` (stop, naming the file) or ``skip`` (warn and count).
        seed: data seed: the order of an epoch depends only on (seed, epoch) and the augmentation of a
            training sample only on (seed, epoch, index), whatever the number of workers, so a resumed
            run sees the same batches as an uninterrupted one.
        synthetic_train_size, synthetic_val_size: samples of the procedural dataset.
    """

    def __init__(
        self,
        root: str | None = None,
        dataset: Literal["folder", "longrange"] = "folder",
        train_dir: str = "train",
        val_dir: str = "val",
        test_dir: str | None = None,
        predict_dir: str | None = None,
        image_size: int | None = None,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 8,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        crop_pct: float | None = None,
        interpolation: str | None = None,
        mean: tuple[float, float, float] | None = None,
        std: tuple[float, float, float] | None = None,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip: float = 0.5,
        auto_augment: str | None = "rand-m9-mstd0.5-inc1",
        color_jitter: float | None = 0.4,
        force_color_jitter: bool = False,
        random_erasing: float = 0.25,
        corrupt_images: Literal["error", "skip"] = "error",
        seed: int = 0,
        synthetic_train_size: int = 8000,
        synthetic_val_size: int = 2000,
    ):
        super().__init__()
        if dataset != "folder" and dataset not in synthetic.DATASETS:
            raise InputError(f"data.dataset={dataset!r}: choose 'folder' or one of {sorted(synthetic.DATASETS)}")
        if batch_size < 1:
            raise InputError(f"data.batch_size must be >= 1, got {batch_size}")
        if corrupt_images not in ("error", "skip"):
            raise InputError(f"data.corrupt_images must be 'error' or 'skip', got {corrupt_images!r}")
        self.save_hyperparameters()
        self.classes: list[str] | None = None
        self.train_set = self.val_set = self.test_set = self.predict_set = None

    # ------------------------------------------------------------------ configuration
    def _model_data_config(self) -> dict:
        trainer = self.trainer
        module = trainer.lightning_module if trainer is not None else None
        return dict(getattr(module, "data_config", None) or {})

    def _resolved(self) -> dict:
        hp, mc = self.hparams, self._model_data_config()
        size = hp.image_size or (tuple(mc.get("input_size", (3, 224, 224)))[-1])
        return {
            "image_size": int(size),
            "crop_pct": hp.crop_pct or mc.get("crop_pct", 0.875),
            "interpolation": hp.interpolation or mc.get("interpolation", "bicubic"),
            "mean": tuple(hp.mean or mc.get("mean", (0.485, 0.456, 0.406))),
            "std": tuple(hp.std or mc.get("std", (0.229, 0.224, 0.225))),
        }

    def _check_num_classes(self, n: int, where: str) -> None:
        trainer = self.trainer
        module = trainer.lightning_module if trainer is not None else None
        want = getattr(module, "num_classes", None)
        if want is not None and want != n:
            raise InputError(f"model.num_classes={want} but {where} has {n} classes; set --model.num_classes {n}")

    @property
    def num_classes(self) -> int | None:
        return None if self.classes is None else len(self.classes)

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
        self.classes = list(spec.classes)
        self._check_num_classes(len(self.classes), f"the procedural dataset {hp.dataset!r}")

        def make(split, n):
            x, y = synthetic.generate(hp.dataset, n, split=split, image_size=size, seed=hp.seed)
            return TensorSet(x, y)

        if stage in (None, "fit") and self.train_set is None:
            self.train_set = make("train", hp.synthetic_train_size)
        if stage in (None, "fit", "validate", "test", "predict") and self.val_set is None:
            self.val_set = make("val", hp.synthetic_val_size)
        self.test_set = self.val_set
        self.predict_set = self.val_set

    def _setup_folder(self, stage) -> None:
        hp = self.hparams
        if not hp.root:
            raise InputError("data.root is required for dataset=folder (an ImageNet-layout folder with train/ and val/)")
        root = Path(hp.root).expanduser()
        if not root.is_dir():
            raise DataNotFoundError(f"data.root {root} does not exist or is not a directory")
        cfg = self._resolved()
        evaluate = eval_transform(
            cfg["image_size"], crop_pct=cfg["crop_pct"], interpolation=cfg["interpolation"], mean=cfg["mean"], std=cfg["std"]
        )
        train_dir, val_dir = root / hp.train_dir, root / hp.val_dir
        test_dir = root / (hp.test_dir or hp.val_dir)
        if stage in (None, "fit"):
            classes, train_samples = scan_split(train_dir, "training")
            self._check_num_classes(len(classes), str(train_dir))
            val_classes, val_samples = scan_split(val_dir, "validation")
            check_folders(classes, val_classes, train_dir, val_dir)
            self.classes = classes
            self.train_set = ImageFolderDataset(
                train_samples,
                classes,
                train_transform(
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
                ),
                hp.corrupt_images,
                seed=hp.seed,
            )
            self.val_set = ImageFolderDataset(val_samples, classes, evaluate, hp.corrupt_images)
        elif stage == "validate":
            classes, val_samples = scan_split(val_dir, "validation")
            self._check_num_classes(len(classes), str(val_dir))
            self._check_against_train(classes, train_dir, val_dir)
            self.classes = classes
            self.val_set = ImageFolderDataset(val_samples, classes, evaluate, hp.corrupt_images)
        elif stage in ("test", "predict"):
            classes, test_samples = scan_split(test_dir, "test")
            self._check_num_classes(len(classes), str(test_dir))
            self._check_against_train(classes, train_dir, test_dir)
            self.classes = classes
            self.test_set = ImageFolderDataset(test_samples, classes, evaluate, hp.corrupt_images)
            if stage == "predict":
                if hp.predict_dir:
                    pdir = Path(hp.predict_dir).expanduser()
                    if not pdir.is_dir():
                        raise DataNotFoundError(f"data.predict_dir {pdir} does not exist")
                    files = _images_under(pdir)
                    if not files:
                        raise InputError(f"data.predict_dir {pdir} contains no images")
                    self.predict_set = ImageListDataset(files, evaluate, hp.corrupt_images)
                else:
                    self.predict_set = ImageListDataset(self.test_set.paths, evaluate, hp.corrupt_images)

    @staticmethod
    def _check_against_train(classes, train_dir: Path, other_dir: Path) -> None:
        if train_dir.is_dir():  # evaluation-only copies may come without train/
            check_folders(_list_classes(train_dir), classes, train_dir, other_dir)

    # ------------------------------------------------------------------ loaders
    def _loader(self, ds, *, train: bool) -> DataLoader:
        hp = self.hparams
        trainer = self.trainer
        on_gpu = trainer is not None and trainer.strategy.root_device.type != "cpu"
        bs = hp.batch_size if train else (hp.eval_batch_size or hp.batch_size)
        kwargs = dict(
            batch_size=bs,
            num_workers=hp.num_workers,
            pin_memory=bool(hp.pin_memory and on_gpu),
            persistent_workers=bool(hp.persistent_workers and hp.num_workers > 0),
            # a private generator for the loader's base seed: making an iterator does not draw from the
            # global RNG, which stays the training steps' own (MixUp, drop path) and resumes exactly
            generator=torch.Generator().manual_seed(hp.seed),
        )
        if not train:
            return DataLoader(ds, shuffle=False, drop_last=False, **kwargs)
        world = trainer.world_size if trainer is not None else 1
        rank = trainer.global_rank if trainer is not None else 0
        # the order depends on (seed, epoch) only (Lightning calls set_epoch), each sample's augmentation on
        # (seed, epoch, index): a resumed run sees the same batches; also the per-rank split under DDP
        sampler = EpochIndexSampler(ds, num_replicas=world, rank=rank, shuffle=True, seed=hp.seed)
        drop_last = len(ds) // world >= bs
        return DataLoader(ds, sampler=sampler, drop_last=drop_last, **kwargs)

    def train_dataloader(self):
        return self._loader(self.train_set, train=True)

    def val_dataloader(self):
        return self._loader(self.val_set, train=False)

    def test_dataloader(self):
        return self._loader(self.test_set, train=False)

    def predict_dataloader(self):
        return self._loader(self.predict_set, train=False)

    def predict_paths(self) -> list[str] | None:
        ds = self.predict_set
        return list(ds.paths) if isinstance(ds, _ImageLoading) else None

