"""Classification toolkit with real Lightning trainers on a tiny image-folder fixture: fit, resume,
EMA, sparse training, per-step schedules, export."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn

import swtasks
from swtasks.cls import (
    AtomicCheckpointIO,
    ClassificationModule,
    ImageClassificationDataModule,
    LearningCurves,
    SparseTraining,
    StepSchedule,
)
from swtasks.cls.backbone_weights import export_backbone
from swtasks.cls.synthetic import write_image_folder

TINY = {"depths": [1, 1, 1, 1], "dims": [8, 16, 32, 64], "kernel_sizes": [5, 3, 3, 3]}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs") / "data"
    return write_image_folder(str(root), num_classes=3, train_per_class=16, val_per_class=4, image_size=32)


def module(**kw):
    args = dict(
        backbone="shiftwise_atto",
        num_classes=3,
        backbone_kwargs=TINY,
        lr=5e-3,
        warmup_epochs=0,
        mixup_alpha=0.0,
        cutmix_alpha=0.0,
        label_smoothing=0.0,
    )
    args.update(kw)
    return ClassificationModule(**args)


def datamodule(root, **kw):
    args = dict(
        root=root, image_size=32, batch_size=8, num_workers=0, auto_augment=None, random_erasing=0.0, scale=(0.6, 1.0)
    )
    args.update(kw)
    return ImageClassificationDataModule(**args)


def trainer(tmp_path, max_epochs=2, callbacks=(), **kw):
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "checkpoints"), save_last=True, monitor="val_acc1", mode="max")
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=max_epochs,
        default_root_dir=str(tmp_path),
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        plugins=[AtomicCheckpointIO()],
        callbacks=[ckpt, *callbacks],
        **kw,
    )


class StopAfterEpoch(Callback):
    """Interrupt a run after its first epoch (as a crash or a preemption would)."""

    def on_train_epoch_end(self, trainer, pl_module):
        trainer.should_stop = True


class EpochLoss(Callback):
    def __init__(self):
        self.losses = []

    def on_train_epoch_end(self, trainer, pl_module):
        self.losses.append(float(trainer.callback_metrics["train_loss_epoch"]))


def test_fit_two_epochs_loss_falls_and_curves(folder, tmp_path):
    rec, curves = EpochLoss(), LearningCurves(dirpath=str(tmp_path / "plots"))
    t = trainer(tmp_path, max_epochs=2, callbacks=[rec, curves])
    m = module()
    t.fit(m, datamodule(folder))
    assert len(rec.losses) == 2 and rec.losses[1] < rec.losses[0]
    assert 0.0 <= float(t.callback_metrics["val_acc1"]) <= 1.0
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert (tmp_path / "plots" / "curves.png").stat().st_size > 1000
    assert len(curves.val) == 2 and "val_acc1" in curves.val[0]
    # validate / test on the fitted module (top-1 / top-5 metrics exist)
    (val,) = t.validate(m, datamodule(folder), verbose=False)
    (test,) = t.test(m, datamodule(folder), verbose=False)
    assert {"val_acc1", "val_acc5", "val_loss"} <= set(val) and {"test_acc1", "test_acc5"} <= set(test)
    assert test["test_acc5"] == 1.0  # 3 classes: top-k with k = min(5, classes) always hits


def test_resume_from_last_is_exact(folder, tmp_path):
    kw = dict(ema_decay=0.9, mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, drop_path_rate=0.1)
    dm = dict(auto_augment="rand-m9-mstd0.5-inc1", random_erasing=0.25)

    L.seed_everything(0)
    full = module(**kw)
    trainer(tmp_path / "a", max_epochs=2).fit(full, datamodule(folder, **dm))

    L.seed_everything(0)
    first = module(**kw)
    trainer(tmp_path / "b", max_epochs=2, callbacks=[StopAfterEpoch()]).fit(first, datamodule(folder, **dm))
    L.seed_everything(123)  # a different process state: the checkpoint must bring everything back
    resumed = module(**kw)
    t = trainer(tmp_path / "b", max_epochs=2)
    t.fit(resumed, datamodule(folder, **dm), ckpt_path="last")
    assert t.global_step == 2 * 6 and t.current_epoch == 2
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    # EMA weights differ from the raw ones, and both were evaluated
    raw = dict(resumed.backbone.named_parameters())
    assert any(not torch.equal(p, raw[n]) for n, p in resumed.ema.module.named_parameters())
    assert {"val_ema_acc1", "val_ema_acc5", "val_acc1"} <= set(t.callback_metrics)


def test_sparse_training_masks_in_checkpoint_and_export(folder, tmp_path):
    sparse = SparseTraining(sparsity=0.5, update_interval=2, align_interval=3)
    m = module(backbone_kwargs={**TINY, "kernel_sizes": [9, 7, 5, 3]}, ema_decay=0.5)
    t = trainer(tmp_path, max_epochs=1, callbacks=[sparse])
    t.fit(m, datamodule(folder))
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    masks = {k: v for k, v in ckpt["state_dict"].items() if k.endswith("kernel_mask")}
    assert any(k.startswith("backbone.") for k in masks) and any(k.startswith("ema.module.") for k in masks)
    assert sparse.sparsity.masks and sparse.sparsity.density() < 0.9
    state = next(v for k, v in ckpt["callbacks"].items() if k.startswith("SparseTraining"))
    assert state["steps"] == 6
    # resume: the masks come back from the checkpoint, the schedule continues
    sparse2 = SparseTraining(sparsity=0.5, update_interval=2, align_interval=3)
    m2 = module(backbone_kwargs={**TINY, "kernel_sizes": [9, 7, 5, 3]}, ema_decay=0.5)
    t2 = trainer(tmp_path, max_epochs=2, callbacks=[sparse2])
    t2.fit(m2, datamodule(folder), ckpt_path="last")
    assert sparse2.sparsity.steps == 12
    for name, layer in sparse2.sparsity.layers.items():
        if layer.kernel_mask is not None:
            dead = layer.kernel_mask == 0
            assert torch.all(layer.weight.detach()[dead] == 0), name
    # export (EMA weights, masks folded): zeros where the raw model's masks are zero, loads into a fresh net
    out = tmp_path / "bb.pth"
    meta = export_backbone(tmp_path / "checkpoints" / "last.ckpt", out, ema=True)
    assert meta["folded_sparsity_masks"] > 0
    net = swtasks.create_model(
        "shiftwise_atto", num_classes=3, checkpoint_path=str(out), **{**TINY, "kernel_sizes": [9, 7, 5, 3]}
    )
    from swtasks.sparse import masks_from_weights

    assert masks_from_weights(net)


def test_export_raw_and_reparameterized_load_into_fresh_backbone(folder, tmp_path):
    t = trainer(tmp_path, max_epochs=1)
    m = module(ema_decay=0.8)
    t.fit(m, datamodule(folder))
    ck = tmp_path / "checkpoints" / "last.ckpt"
    x = torch.randn(2, 3, 32, 32)
    m.eval()
    for ema, ref in ((False, m.backbone), (True, m.ema.module)):
        out = tmp_path / f"bb_{ema}.pth"
        export_backbone(ck, out, ema=ema)
        sd = torch.load(out, weights_only=True)
        assert all(k.startswith("backbone.") for k in sd["state_dict"]) and sd["meta"]["ema"] is ema
        fresh = swtasks.create_model("shiftwise_atto", num_classes=3, checkpoint_path=str(out), **TINY).eval()
        with torch.no_grad():
            assert torch.allclose(fresh(x), ref(x), atol=1e-6)
    out = tmp_path / "deploy.pth"
    export_backbone(ck, out, reparameterize=True, drop_head=True)
    dep = swtasks.create_model("shiftwise_atto", num_classes=0, deploy=True, **TINY)
    sd = {k[len("backbone.") :]: v for k, v in torch.load(out, weights_only=True)["state_dict"].items()}
    missing, unexpected = dep.load_state_dict(sd, strict=False)
    assert not unexpected and not missing
    with torch.no_grad():
        feats = m.backbone.forward_head(m.backbone.forward_features(x), pre_logits=True)
        assert torch.allclose(dep.eval()(x), feats, rtol=1e-4, atol=1e-4)


class TempNet(nn.Module):
    """A minimal backbone with a scheduled attribute (like KernelWarehouse's temperature)."""

    def __init__(self):
        super().__init__()
        self.num_classes = 3
        self.conv = nn.Conv2d(3, 8, 3, 2)
        self.head = nn.Linear(8, 3)
        self.temperature = -1.0
        self.seen: list[float] = []

    def forward(self, x):
        if self.training:
            self.seen.append(self.temperature)
        return self.head(self.conv(x).mean((2, 3)))


def test_step_schedule_sets_value_every_step(folder, tmp_path):
    net = TempNet()
    sched = StepSchedule(attribute="temperature", start=1.0, end=0.0, until_epoch=1)
    t = trainer(tmp_path, max_epochs=2, callbacks=[sched])
    t.fit(ClassificationModule(net, num_classes=3, warmup_epochs=0, mixup_alpha=0, cutmix_alpha=0), datamodule(folder))
    # 6 steps per epoch: linear 1 -> 0 over the first epoch, then constant
    assert net.seen[:6] == pytest.approx([1 - i / 6 for i in range(6)])
    assert net.seen[6:] == pytest.approx([0.0] * 6)
    with pytest.raises(ValueError, match="no module"):
        bad = StepSchedule(attribute="tau", start=1, end=0, until_step=3)
        trainer(tmp_path / "x", max_epochs=1, callbacks=[bad]).fit(
            ClassificationModule(TempNet(), num_classes=3, mixup_alpha=0, cutmix_alpha=0), datamodule(folder)
        )


def test_channels_last_and_compile_smoke(folder, tmp_path):
    t = trainer(tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=1)
    m = module(channels_last=True, compile="eager")
    t.fit(m, datamodule(folder))
    assert m.backbone.downsample_layers[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    assert t.global_step == 2
