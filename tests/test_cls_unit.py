"""Classification toolkit: the pieces without a Trainer (optimiser groups, schedule, MixUp/CutMix, EMA,
transforms, procedural dataset, folder validation, atomic checkpoint files)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from swtasks.checkpoint import atomic_torch_save
from swtasks.cls import synthetic
from swtasks.cls.data import ImageClassificationDataModule, ImageFolderDataset, scan_split
from swtasks.cls.ema import ModelEMA
from swtasks.cls.errors import DataNotFoundError, InputError
from swtasks.cls.io import AtomicCheckpointIO
from swtasks.cls.mix import MixUpCutMix, smooth_one_hot, soft_target_cross_entropy
from swtasks.cls.optim import warmup_cosine
from swtasks.cls.transforms import RandAugmentMstd, eval_transform, parse_rand_augment, train_transform

TINY = dict(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64), kernel_sizes=(5, 3, 3, 3))


# ---------------------------------------------------------------------------------------------- optimiser
def test_warmup_cosine_shape():
    f = [warmup_cosine(s, warmup_steps=10, total_steps=110, min_ratio=0.01) for s in range(120)]
    assert f[0] == 0 and f[5] == pytest.approx(0.5) and f[10] == pytest.approx(1.0)
    assert f[60] == pytest.approx(0.01 + 0.99 * 0.5)
    assert f[110] == pytest.approx(0.01) and f[119] == pytest.approx(0.01)
    assert all(a >= b for a, b in zip(f[10:], f[11:]))


# ---------------------------------------------------------------------------------------------- mixing
def test_soft_target_ce_matches_label_smoothing_ce():
    torch.manual_seed(0)
    z, y = torch.randn(6, 5), torch.randint(0, 5, (6,))
    ours = soft_target_cross_entropy(z, smooth_one_hot(y, 5, 0.1))
    assert ours == pytest.approx(float(nn.functional.cross_entropy(z, y, label_smoothing=0.1)), rel=1e-6)


def test_mixup_targets():
    torch.manual_seed(0)
    x = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 3, 8, 8).contiguous()
    y = torch.tensor([0, 1, 2, 3])
    mix = MixUpCutMix(4, mixup_alpha=0.8, cutmix_alpha=0.0, label_smoothing=0.0)
    xm, t = mix(x, y)
    assert torch.allclose(t.sum(1), torch.ones(4))
    lam = float(t[0, 0])
    # torchvision mixes each sample with its neighbour (roll by 1): x_i' = lam x_i + (1 - lam) x_{i-1}
    assert torch.allclose(xm[1], lam * x[1] + (1 - lam) * x[0], atol=1e-6)
    assert t[1, 1] == pytest.approx(lam) and t[1, 0] == pytest.approx(1 - lam)


def test_cutmix_targets_follow_pasted_area_and_smoothing():
    torch.manual_seed(1)
    x = torch.zeros(2, 3, 16, 16)
    x[1] = 1.0
    y = torch.tensor([0, 1])
    mix = MixUpCutMix(3, mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.3)
    for _ in range(5):
        xm, t = mix(x, y)
        pasted = float(xm[0].mean())  # share of sample 0 covered by sample 1's pixels
        assert set(torch.unique(xm).tolist()) <= {0.0, 1.0}
        raw = (t - 0.3 / 3) / 0.7  # undo smoothing
        assert raw[0, 1] == pytest.approx(pasted, abs=1e-5)
        assert t.sum(1).allclose(torch.ones(2))
        assert float(t.min()) >= 0.1 - 1e-6


def test_switch_prob_and_prob():
    torch.manual_seed(0)
    x = torch.rand(4, 3, 8, 8)
    y = torch.arange(4)
    only_cut = MixUpCutMix(4, switch_prob=1.0, label_smoothing=0.0)
    xm, _ = only_cut(x, y)
    assert all(((xm[i] == x[i]) | (xm[i] == x[i - 1])).all() for i in range(4))  # pixels copied, not blended
    none = MixUpCutMix(4, prob=0.0, label_smoothing=0.1)
    xm, t = none(x, y)
    assert torch.equal(xm, x) and torch.allclose(t, smooth_one_hot(y, 4, 0.1))


# ---------------------------------------------------------------------------------------------- EMA
def test_ema_averages_params_and_copies_buffers():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    ema = ModelEMA(net, decay=0.5)
    before = ema.module[0].weight.clone()
    with torch.no_grad():
        net[0].weight.add_(1.0)
    net.train()
    net(torch.randn(8, 3))  # moves the BN running stats
    ema.update(net)
    assert torch.allclose(ema.module[0].weight, 0.5 * before + 0.5 * net[0].weight)
    assert torch.equal(ema.module[1].running_mean, net[1].running_mean)
    assert int(ema.num_updates) == 1
    assert not any(p.requires_grad for p in ema.parameters())
    warm = ModelEMA(net, decay=0.999, warmup_steps=10)
    assert warm.current_decay() == pytest.approx(0.1)


# ---------------------------------------------------------------------------------------------- transforms
def test_transforms_shapes_and_rand_augment_spec():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8))
    x = train_transform(32)(img)
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    ev = eval_transform(32, crop_pct=0.5)
    assert ev.transforms[0].size == [64]  # resize floor(32 / 0.5) then centre crop 32
    assert ev(img).shape == (3, 32, 32)
    assert parse_rand_augment("rand-m9-mstd0.5-inc1") == {"num_ops": 2, "magnitude": 9.0, "magnitude_std": 0.5}
    with pytest.raises(InputError):
        parse_rand_augment("autoaug-v0")
    ra = RandAugmentMstd(2, 9, 0.5)
    idx = [ra._draw_index() for _ in range(2000)]
    assert 88 <= np.mean(idx) <= 92 and 3 <= np.std(idx) <= 7 and max(idx) <= 100
    assert ra(img).size == img.size


# ---------------------------------------------------------------------------------------------- procedural
def test_longrange_dataset_is_deterministic_and_long_range():
    x1, y1 = synthetic.generate("longrange", 16, split="train", image_size=32, seed=3)
    x2, y2 = synthetic.generate("longrange", 16, split="train", image_size=32, seed=3)
    xv, _ = synthetic.generate("longrange", 16, split="val", image_size=32, seed=3)
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and not torch.equal(x1, xv)
    assert x1.shape == (16, 3, 32, 32) and sorted(y1.tolist()) == sorted([0, 1, 2, 3] * 4)
    for img, label in zip(x1, y1.tolist()):
        axis, which = divmod(label, 2)
        p = synthetic.LONGRANGE_PERIODS[which]
        a = img if axis == 0 else img.transpose(1, 2)
        assert torch.equal(a[:, :, p:], a[:, :, :-p])  # a pixel equals the one `period` px away
        other = synthetic.LONGRANGE_PERIODS[1 - which]
        assert not torch.equal(a[:, :, other:], a[:, :, :-other])
    # no local cue: per-class pixel statistics are the same
    x, y = synthetic.generate("longrange", 400, image_size=32)
    stds = [float(x[y == c].std()) for c in range(4)]
    assert max(stds) - min(stds) < 0.05


# ---------------------------------------------------------------------------------------------- folders
def _png(path: Path, size=16):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((size, size, 3), np.uint8)).save(path)


def test_scan_split_errors(tmp_path):
    with pytest.raises(DataNotFoundError, match="does not exist"):
        scan_split(tmp_path / "missing", "training")
    (tmp_path / "train").mkdir()
    with pytest.raises(InputError, match="no class sub-folders"):
        scan_split(tmp_path / "train", "training")
    _png(tmp_path / "train" / "a" / "1.png")
    (tmp_path / "train" / "b").mkdir()
    (tmp_path / "train" / "b" / "notes.txt").write_text("x")
    with pytest.raises(InputError, match=r"empty class folder.*train/b"):
        scan_split(tmp_path / "train", "training")


def test_scan_split_follows_symlinks_once_and_never_into_a_loop(tmp_path):
    """A symlinked directory is followed once per real directory, never back up into the class folder or its
    parents (a loop used to multiply 24 images into 984); symlinked files and directories elsewhere count."""
    split = tmp_path / "train"
    for c in ("a", "b"):
        for i in range(3):
            _png(split / c / f"{i}.png")
    (split / "a" / "loop").symlink_to(split / "a", target_is_directory=True)  # a/loop -> a
    (split / "a" / "up").symlink_to(split, target_is_directory=True)  # a/up -> the split folder
    (split / "b" / "sub").mkdir()
    (split / "b" / "sub" / "back").symlink_to(split / "b", target_is_directory=True)  # b/sub/back -> b
    extra = tmp_path / "elsewhere"
    _png(extra / "x.png")
    (split / "b" / "more").symlink_to(extra, target_is_directory=True)  # a real directory outside: followed
    (split / "b" / "again").symlink_to(extra, target_is_directory=True)  # the same one twice: followed once
    (split / "a" / "linked.png").symlink_to(extra / "x.png")  # a symlinked file: read through the link
    classes, samples = scan_split(split, "training")
    names = sorted(os.path.relpath(p, split) for p, _ in samples)
    assert classes == ["a", "b"]
    assert names == ["a/0.png", "a/1.png", "a/2.png", "a/linked.png", "b/0.png", "b/1.png", "b/2.png", "b/again/x.png"]


def _dm(root, **kw):
    cfg = {"input_size": (3, 16, 16), "crop_pct": 1.0, "interpolation": "bilinear"}
    return ImageClassificationDataModule(root=str(root), num_workers=0, batch_size=2, data_config=cfg, **kw)


def test_datamodule_folder_checks(tmp_path):
    from swtasks.cls import ClassificationModule

    with pytest.raises(DataNotFoundError, match="missing"):
        _dm(tmp_path / "missing").setup("fit")
    synthetic.write_image_folder(str(tmp_path / "ok"), num_classes=2, train_per_class=2, val_per_class=1, image_size=16)
    dm = _dm(tmp_path / "ok")
    dm.setup("fit")
    assert dm.classes == ["class_0", "class_1"] and len(dm.train_set) == 4
    assert dm.val_set[0][0].shape == (3, 16, 16)  # eval crop from the given data config
    assert dm.resolved_config()["interpolation"] == "bilinear"
    # the module checks the class count and the image size against its backbone
    module = ClassificationModule("shiftwise_atto", num_classes=3, backbone_kwargs=TINY)
    with pytest.raises(InputError, match=r"model.num_classes=3 but .*train has 2 classes"):
        module._check_data(dm)
    module = ClassificationModule("shiftwise_atto", num_classes=2, backbone_kwargs=TINY)
    with pytest.raises(InputError, match=r"data.image_size=16 is smaller than the total stride 32"):
        module._check_data(dm)
    _png(tmp_path / "ok" / "val" / "class_9" / "x.png")
    with pytest.raises(InputError, match=r"class folders differ.*only in val: \['class_9'\]"):
        _dm(tmp_path / "ok").setup("fit")
    with pytest.raises(InputError, match="data.dataset"):
        ImageClassificationDataModule(dataset="imagenet21k")
    with pytest.raises(InputError, match=r"data.image_size: image_size 16 is too small .*longrange.* 20 px"):
        ImageClassificationDataModule(dataset="longrange", image_size=16)


def test_data_defaults_have_one_home():
    """The data module's defaults are the registry's data config (no second copy of mean/std/crop)."""
    from swtasks.models.registry import DEFAULT_DATA_CONFIG, get_data_config

    dm = ImageClassificationDataModule(root="unused")
    got = dm.resolved_config()
    assert got["mean"] == DEFAULT_DATA_CONFIG["mean"] and got["std"] == DEFAULT_DATA_CONFIG["std"]
    assert (got["crop_pct"], got["interpolation"]) == (DEFAULT_DATA_CONFIG["crop_pct"], DEFAULT_DATA_CONFIG["interpolation"])
    assert got["image_size"] == DEFAULT_DATA_CONFIG["input_size"][-1]
    linked = ImageClassificationDataModule(root="unused", data_config=get_data_config("shiftwise_atto"), crop_pct=0.9)
    assert linked.resolved_config()["crop_pct"] == 0.9  # an explicit data.* value wins


def test_corrupt_image_policy(tmp_path):
    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    _png(good)
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    samples = [(str(good), 0), (str(bad), 1), (str(good), 0)]
    ds = ImageFolderDataset(samples, ["a", "b"], corrupt_images="error")
    with pytest.raises(InputError, match="bad.png"):
        ds[1]
    ds = ImageFolderDataset(samples, ["a", "b"], corrupt_images="skip")
    with pytest.warns(UserWarning, match=r"bad.png.*1 skipped"):
        img, label = ds[1]
    assert label == 0 and ds.skipped == 1  # replaced by the next readable sample


# ---------------------------------------------------------------------------------------------- checkpoints
def test_atomic_save_never_truncates(tmp_path, monkeypatch):
    path = tmp_path / "ckpt" / "last.ckpt"
    atomic_torch_save({"v": torch.ones(3)}, path)
    assert torch.load(path)["v"].sum() == 3

    def crash(obj, f, *a, **k):
        f.write(b"partial bytes")
        raise KeyboardInterrupt  # e.g. the job is killed mid-write

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        AtomicCheckpointIO().save_checkpoint({"v": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.load(path)["v"].sum() == 3  # the previous file is intact
    assert os.listdir(path.parent) == ["last.ckpt"]  # no temporary left behind
    with pytest.raises(KeyboardInterrupt):
        monkeypatch.setattr(torch, "save", crash)
        atomic_torch_save({"v": 1}, tmp_path / "new.ckpt")
    assert not (tmp_path / "new.ckpt").exists()


def test_unknown_backbone_is_input_error():
    from swtasks.cls import ClassificationModule

    with pytest.raises(InputError, match="shiftwise_tinny"):
        ClassificationModule("shiftwise_tinny")
    with pytest.raises(InputError, match="kernel_sizez"):
        ClassificationModule("shiftwise_atto", backbone_kwargs={"kernel_sizez": 3})


@pytest.mark.parametrize("device, kind", [("cuda", nn.SyncBatchNorm), ("cpu", "AllReduceBatchNorm")])
def test_sync_batchnorm_conversion(device, kind):
    """BatchNorm -> torch's SyncBatchNorm on GPUs, the all-reduce BatchNorm on CPU (gloo); parameters and
    buffers are the same objects, so the optimiser and the EMA (plain BN) stay aligned."""
    from swtasks.cls import ClassificationModule
    from swtasks.layers.syncbn import AllReduceBatchNorm, convert_sync_batchnorm

    kind = AllReduceBatchNorm if kind == "AllReduceBatchNorm" else kind
    m = ClassificationModule("shiftwise_atto", num_classes=3, backbone_kwargs=TINY, ema_decay=0.9)
    params = dict(m.backbone.named_parameters())
    bufs = {k: v for k, v in m.backbone.named_buffers() if "running" in k}
    m.backbone = convert_sync_batchnorm(m.backbone, torch.device(device))
    assert sum(isinstance(x, kind) for x in m.backbone.modules()) == 20
    assert not any(type(x) is nn.BatchNorm2d for x in m.backbone.modules())
    assert all(p is params[n] for n, p in m.backbone.named_parameters())
    assert all(b is bufs[n] for n, b in m.backbone.named_buffers() if "running" in n)
    assert dict(m.backbone.named_parameters()).keys() == dict(m.ema.module.named_parameters()).keys()
    m.ema.update(m.backbone)
    # without a process group the all-reduce BatchNorm is plain BatchNorm
    if device == "cpu":
        ref = nn.BatchNorm2d(5)
        ab = convert_sync_batchnorm(nn.Sequential(nn.BatchNorm2d(5)), torch.device("cpu"))[0]
        x = torch.randn(4, 5, 3, 3)
        assert torch.equal(ab(x), ref(x)) and torch.equal(ab.running_var, ref.running_var)
