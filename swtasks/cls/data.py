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

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from torch.utils.data import DataLoader

from . import synthetic
from .datasets import (
    DEFAULT_MAX_IMAGE_PIXELS,
    EpochIndexSampler,
    ImageFolderDataset,
    ImageListDataset,
    ImageLoading,
    ResumableLoader,
    TensorSet,
    check_folders,
    images_under,
    list_classes,
    read_rgb,
    sample_seed,
    scan_split,
)
from .errors import DataNotFoundError, InputError
from .shards import INDEX, ShardImageDataset, ShardListDataset, read_index, scan_shards
from .transforms import data_config as registry_data_config
from .transforms import eval_transform, train_transform

__all__ = [  # the map-style pieces live in swtasks.cls.datasets; the names users imported from here stay
    "DEFAULT_MAX_IMAGE_PIXELS",
    "EpochIndexSampler",
    "ImageClassificationDataModule",
    "ImageFolderDataset",
    "ImageListDataset",
    "ResumableLoader",
    "TensorSet",
    "check_folders",
    "read_rgb",
    "sample_seed",
    "scan_split",
]

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
            return scan_shards(split_dir, what)
        return scan_split(split_dir, what)

    def _images(self, samples, classes, transform) -> ImageFolderDataset:
        hp = self.hparams
        if hp.format == "webdataset":
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
                    files = images_under(pdir)
                    if not files:
                        raise InputError(f"data.predict_dir {pdir} contains no images")
                if files is None:  # the test split's shards
                    self.predict_set = ShardListDataset(test_samples, evaluate, hp.corrupt_images, hp.seed,
                                                        hp.max_image_pixels)
                else:
                    self.predict_set = ImageListDataset(files, evaluate, hp.corrupt_images, hp.seed, hp.max_image_pixels)

    def _check_classes(self, train_classes, other_classes, train_dir: Path, other_dir: Path) -> None:
        if self.hparams.format == "webdataset":
            check_folders(train_classes, other_classes, train_dir / INDEX, other_dir / INDEX, "shard class lists")
        else:
            check_folders(train_classes, other_classes, train_dir, other_dir)

    def _check_against_train(self, classes, train_dir: Path, other_dir: Path) -> None:
        if not train_dir.is_dir():  # evaluation-only copies may come without train/
            return
        if self.hparams.format == "webdataset":
            train_classes = read_index(train_dir, "training", check_files=False).classes
        else:
            train_classes = list_classes(train_dir)
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
        return list(ds.paths) if isinstance(ds, ImageLoading) else None

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
