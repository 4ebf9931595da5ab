"""Data in shards (docs/classification.md, "Data in shards"): tools/make_shards.py writes WebDataset tar files
that tarfile reads back byte for byte, --data.format webdataset gives the folder format's samples, labels and
augmentation, a run that crashes mid-epoch and resumes on shards ends bit for bit where an uninterrupted run on the
folder ends, and damaged shard sets stop with one line naming the file."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import pytest
import torch
from cls_helpers import RECIPE, assert_same, state_of
from helpers import run_cli, tool
from lightning.pytorch.callbacks import Callback
from PIL import Image

from swtasks.cls.data import ImageClassificationDataModule
from swtasks.cls.synthetic import write_image_folder

make_shards = tool("make_shards")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """3 classes, PNG and JPEG files, one image in a nested folder (any depth, like the folder format)."""
    root = tmp_path_factory.mktemp("shards") / "src"
    write_image_folder(str(root), num_classes=3, train_per_class=6, val_per_class=2, image_size=24)
    write_image_folder(str(root), num_classes=3, train_per_class=2, val_per_class=1, image_size=20, seed=1, fmt="jpg")
    nested = root / "train" / "class_1" / "zz_more"
    nested.mkdir()
    Image.new("RGB", (30, 20), (200, 10, 10)).save(nested / "deep.png")
    return root


@pytest.fixture(scope="module")
def shards(source, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards") / "out"
    assert make_shards.main([str(source), str(out), "--shard-size", "8kB"]) == 0
    return out


def files_of(split: Path) -> list[tuple[str, int]]:
    """The oracle: (path, label) by walking the split with pathlib, classes sorted by name."""
    classes = sorted(d.name for d in split.iterdir() if d.is_dir())
    return [(str(p), i) for i, c in enumerate(classes) for p in sorted((split / c).rglob("*"), key=str) if p.is_file()]


def test_tar_shards_hold_the_original_files_and_labels(source, shards):
    for split in ("train", "val"):
        index = json.loads((shards / split / "index.json").read_text())
        assert index["classes"] == ["class_0", "class_1", "class_2"]
        members = []
        for entry in index["shards"]:
            path = shards / split / entry["file"]
            assert path.stat().st_size == entry["bytes"]
            with tarfile.open(path) as tar:
                got = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
            assert len(got) == 2 * entry["samples"]
            members += got
        if split == "train":
            assert len(index["shards"]) > 1  # 8 kB shards: several
        images, labels = members[0::2], members[1::2]
        expected = files_of(source / split)
        assert len(images) == len(expected) == index["num_samples"]
        for (name, data), (label_name, label), (path, want) in zip(images, labels, expected):
            assert name.split(".")[0] == label_name.split(".")[0] and label_name.endswith(".cls")
            assert data == Path(path).read_bytes() and int(label) == want


def datamodule(root, fmt, **kw):
    dm = ImageClassificationDataModule(root=str(root), format=fmt, image_size=16, batch_size=4, num_workers=0,
                                       auto_augment="rand-m9-mstd0.5-inc1", random_erasing=0.25, **kw)
    return dm


def test_webdataset_format_gives_the_folder_samples_labels_and_augmentation(source, shards):
    a, b = datamodule(source, "folder"), datamodule(shards, "webdataset")
    a.setup("fit")
    b.setup("fit")
    assert a.classes == b.classes and len(a.train_set) == len(b.train_set) == 25
    for i in range(len(a.train_set)):
        (xa, ya), (xb, yb) = a.train_set[(1, i)], b.train_set[(1, i)]
        assert ya == yb and torch.equal(xa, xb)
    for i in range(len(a.val_set)):
        assert torch.equal(a.val_set[i][0], b.val_set[i][0])
    a, b = datamodule(source, "folder"), datamodule(shards, "webdataset")
    a.setup("predict")
    b.setup("predict")
    assert len(b.predict_set) == len(a.predict_set) == 9
    assert b.predict_paths()[0].endswith("shard-000000.tar:class_0/val_0_0.jpg")
    assert torch.equal(a.predict_set[4][0], b.predict_set[4][0]) and b.predict_set[4][1] == 4


class Crash(Callback):
    """Raises at the start of optimiser step ``step`` (that step is lost, as in a crash; no checkpoint is
    written on the way out: only SIGTERM saves one)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError(f"crash at step {self.step}")


def fit(cfg: dict, root: Path, monkeypatch, *extra: str) -> None:
    cfg = {**cfg, "trainer": {**cfg["trainer"], "default_root_dir": str(root)}}
    root.mkdir(parents=True, exist_ok=True)
    (root / "cfg.yaml").write_text(json.dumps(cfg))
    run_cli(["fit", "--config", str(root / "cfg.yaml"), *extra], monkeypatch)


def test_crash_mid_epoch_on_shards_resumes_to_the_uninterrupted_folder_run(tmp_path, monkeypatch):
    """test_cls_reliability's crash-and-resume recipe (EMA, sparse training, MixUp/CutMix, RandAugment, random
    erasing, drop path, a loader worker process, last.ckpt every 4 steps), in this process to stay fast: the
    uninterrupted run on the image folder, then a run on its shards that crashes at step 9 (epoch 2, its 3rd
    batch) and resumes from the mid-epoch last.ckpt of step 8: the same weights, EMA, masks, optimiser and
    schedules, bit for bit (the shards hold the folder's samples in the folder's order)."""
    folder = tmp_path / "folder"  # the reliability recipe's data: 3 classes x 8 images, 32 px
    write_image_folder(str(folder), num_classes=3, train_per_class=8, val_per_class=2, image_size=32)
    assert make_shards.main([str(folder), str(tmp_path / "shards")]) == 0
    recipe = json.loads(json.dumps(RECIPE))
    fit({**recipe, "data": {**recipe["data"], "root": str(folder)}}, tmp_path / "full", monkeypatch)
    uninterrupted = state_of(tmp_path / "full" / "checkpoints" / "last.ckpt")

    shards = {**recipe, "data": {**recipe["data"], "root": str(tmp_path / "shards"), "format": "webdataset"}}
    crashing = json.loads(json.dumps(shards))
    crashing["trainer"]["callbacks"].append({"class_path": "test_cls_shards.Crash", "init_args": {"step": 9}})
    with pytest.raises(RuntimeError, match="crash at step 9"):
        fit(crashing, tmp_path / "run", monkeypatch)
    crashed = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert crashed["global_step"] == 8
    assert crashed["ImageClassificationDataModule"]["train_position"] == {"epoch": 1, "batches": 2}
    torch.manual_seed(123)  # another process state: the checkpoint must bring everything back
    fit(shards, tmp_path / "run", monkeypatch, "--ckpt_path", "last")
    resumed = state_of(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert resumed["global_step"] == 12
    assert_same(uninterrupted, resumed)


def damaged(shards: Path, tmp_path: Path, how: str) -> tuple[Path, str]:
    """A copy of the shard set damaged one way; returns (root, the file the message must name)."""
    root = tmp_path / how
    shutil.copytree(shards, root)
    if how == "missing_index":
        (root / "val" / "index.json").unlink()
        return root, str(root / "val" / "index.json")
    if how == "truncated":
        shard = root / "train" / "shard-000001.tar"
        shard.write_bytes(shard.read_bytes()[:3000])
        return root, str(shard)
    if how == "classes":
        index = json.loads((root / "val" / "index.json").read_text())
        index["classes"][2] = "class_x"
        (root / "val" / "index.json").write_text(json.dumps(index))
        return root, str(root / "val" / "index.json")
    if how == "garbage_index":
        (root / "train" / "index.json").write_text("{not json")
        return root, str(root / "train" / "index.json")
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["missing_index", "truncated", "classes", "garbage_index"])
def test_damaged_shards_stop_with_one_line_naming_the_file(shards, tmp_path, monkeypatch, capsys, how):
    root, name = damaged(shards, tmp_path, how)
    tiny = json.dumps({"depths": [1, 1, 1, 1], "dims": [8, 16, 32, 64], "kernel_sizes": [5, 3, 3, 3]})
    with pytest.raises(SystemExit) as e:
        run_cli(["fit", "--model.backbone", "shiftwise_atto", "--model.num_classes", "3", "--model.backbone_kwargs",
              tiny, "--data.root", str(root), "--data.format", "webdataset", "--data.num_workers", "0",
              "--trainer.accelerator", "cpu", "--trainer.logger", "false", "--trainer.max_steps", "1",
              "--trainer.default_root_dir", str(tmp_path / "run")], monkeypatch)  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and name in err, err


def test_make_shards_refuses_bad_sources_in_one_line(source, tmp_path, capsys):
    bad = tmp_path / "src"
    shutil.copytree(source, bad)
    shutil.rmtree(bad / "val" / "class_2")
    assert make_shards.main([str(bad), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "class folders differ" in err and "class_2" in err
    assert not (tmp_path / "out").exists()  # nothing written
    assert make_shards.main([str(source), str(tmp_path / "out"), "--shard-size", "lots"]) == 2
    assert "--shard-size 'lots'" in capsys.readouterr().err
