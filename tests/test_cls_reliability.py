"""Classification reliability (docs/reliability.md): crash and resume through the real command line (SIGKILL
mid-epoch, SIGTERM), corrupt checkpoints, one-line errors, non-finite losses, two-process DDP equal to one
process, and what every kind of image file becomes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from cls_helpers import (
    RECIPE,
    REPO,
    SAME_GLOBAL_BATCH,
    TINY,
    TRAIN_CLS,
    assert_matches_one_process,
    assert_same,
    fit_one_process,
    small,
    state_of,
)
from cls_helpers import tool_env as env
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from swtasks.cls import Checkpoint, ClassificationModule, InputError, NonFiniteLossError
from swtasks.cls.cli import main
from swtasks.cls.data import ImageFolderDataset, read_rgb
from swtasks.cls.synthetic import write_image_folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("rel") / "data"
    return write_image_folder(str(root), num_classes=3, train_per_class=8, val_per_class=2, image_size=32)


def run_fit(folder, root: Path, *, stop: dict | None = None, resume: bool = False):
    cfg = json.loads(json.dumps(RECIPE))
    cfg["trainer"]["default_root_dir"] = str(root)
    cfg["data"]["root"] = folder
    if stop:
        cfg["trainer"]["callbacks"].append({"class_path": "cls_stop_at.StopAt", "init_args": stop})
    root.mkdir(parents=True, exist_ok=True)
    (root / "cfg.yaml").write_text(json.dumps(cfg))
    cmd = [sys.executable, str(REPO / "tools/train_cls.py"), "fit", "--config", str(root / "cfg.yaml")]
    if resume:
        cmd += ["--ckpt_path", "last"]
    return subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def uninterrupted(folder, tmp_path_factory):
    root = tmp_path_factory.mktemp("full")
    r = run_fit(folder, root)
    assert r.returncode == 0, r.stderr[-3000:]
    return state_of(root / "checkpoints" / "last.ckpt")


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_is_bitwise_exact(folder, tmp_path, uninterrupted):
    """SIGKILL at the start of step 9 (epoch 2, its 3rd batch): last.ckpt is from step 8, mid-epoch. The
    resumed run ends with the uninterrupted run's weights, EMA, sparsity masks, optimiser, lr schedule and
    sparse-training schedule, bit for bit."""
    r = run_fit(folder, tmp_path, stop={"step": 9, "signal": "KILL"})
    assert r.returncode == -9, r.stderr[-3000:]
    killed = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert killed["global_step"] == 8  # mid-epoch: epoch 2 has steps 7..12
    position = killed["ImageClassificationDataModule"]["train_position"]
    assert position == {"epoch": 1, "batches": 2}
    r = run_fit(folder, tmp_path, resume=True)
    assert r.returncode == 0, r.stderr[-3000:]
    resumed = state_of(tmp_path / "checkpoints" / "last.ckpt")
    assert resumed["global_step"] == uninterrupted["global_step"] == 12
    assert any(k.endswith("kernel_mask") for k in resumed["state_dict"])
    assert any(k.startswith("ema.module.") for k in resumed["state_dict"])
    assert_same(uninterrupted, resumed)


def test_sigterm_saves_a_checkpoint_and_resumes_exactly(folder, tmp_path, uninterrupted):
    r = run_fit(folder, tmp_path, stop={"step": 5, "signal": "TERM"})
    assert "SIGTERM: saved" in r.stdout + r.stderr, r.stderr[-3000:]
    assert r.returncode == 143, (r.returncode, r.stderr[-3000:])  # pre-empted, not finished (was 0)
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 5
    r = run_fit(folder, tmp_path, resume=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert_same(uninterrupted, state_of(tmp_path / "checkpoints" / "last.ckpt"))


def cli(args, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["train_cls.py"])
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def test_corrupt_or_truncated_checkpoint_is_named(folder, tmp_path, monkeypatch, capsys):
    bad = tmp_path / "truncated.ckpt"
    torch.save({"state_dict": {"w": torch.ones(1000)}}, tmp_path / "good.ckpt")
    bad.write_bytes((tmp_path / "good.ckpt").read_bytes()[:300])
    for sub in ("validate", "fit"):
        err = cli([sub, *small(folder, tmp_path), "--ckpt_path", str(bad)], monkeypatch, capsys)
        assert str(bad) in err and "truncated or corrupt" in err
    # "last" resolves to a file that turns out truncated: named too (read by the trainer's checkpoint IO)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"PK\x03\x04 not a checkpoint")
    err = cli(["fit", *small(folder, tmp_path), "--ckpt_path", "last"], monkeypatch, capsys)
    assert "last.ckpt" in err


@pytest.mark.parametrize("sub", ["fit", "validate", "test", "predict"])
def test_ckpt_path_last_without_a_last_checkpoint_is_one_line(folder, tmp_path, monkeypatch, capsys, sub):
    """--ckpt_path last with no last.ckpt in the checkpoint folder: one line naming the folder (fit used to
    train from scratch, validate to score an untrained model: 'top-1 33.33%'); likewise best."""
    err = cli([sub, *small(folder, tmp_path), "--ckpt_path", "last"], monkeypatch, capsys)
    assert f"--ckpt_path last: no last checkpoint (last.ckpt) in {tmp_path / 'checkpoints'}" in err
    err = cli([sub, *small(folder, tmp_path), "--ckpt_path", "best"], monkeypatch, capsys)
    assert f"--ckpt_path best: no best checkpoint recorded in {tmp_path / 'checkpoints'}" in err
    assert not (tmp_path / "checkpoints").exists() or not list((tmp_path / "checkpoints").iterdir())


def test_a_weights_file_given_to_ckpt_path_is_named(folder, tmp_path, monkeypatch, capsys):
    """A weights file (no training state) to --ckpt_path: one line saying so and naming --model.weights (was
    KeyError: 'pytorch-lightning_version')."""
    from swtasks.checkpoint import save_weights

    net = ClassificationModule("shiftwise_atto", num_classes=3, backbone_kwargs=TINY).backbone
    weights = tmp_path / "backbone.pth"
    save_weights(weights, {f"backbone.{k}": v for k, v in net.state_dict().items()})
    for sub in ("validate", "fit"):
        err = cli([sub, *small(folder, tmp_path), "--ckpt_path", str(weights)], monkeypatch, capsys)
        assert f"{weights} is a weights file" in err and "--model.weights" in err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--trainer.max_epochs", "-5"], "`max_epochs` must be a non-negative integer or -1"),  # Lightning's check
        (["--data.num_workers", "-1"], "data.num_workers must be >= 0"),
        (["--trainer.accumulate_grad_batches", "0"], "trainer.accumulate_grad_batches must be an integer >= 1, got 0"),
        (["--data.scale", "[1.5,0.2]"], "data.scale must be [min, max] with 0 < min <= max <= 1, got [1.5, 0.2]"),
        (["--model.mixup_alpha", "-1"], "model.mixup_alpha must be >= 0"),
        (["--trainer.devices", "0"], "devices"),
        (["--trainer.devices", "-2"], "trainer.devices must be a count >= 1, -1 (all)"),
        (["--trainer.num_nodes", "0"], "trainer.num_nodes must be an integer >= 1, got 0"),
        (["--trainer.check_val_every_n_epoch", "0"], "trainer.check_val_every_n_epoch must be an integer >= 1"),
        (["--trainer.val_check_interval", "0"], "trainer.val_check_interval must be > 0"),
        (["--model.num_classes", "1"], "model.num_classes must be >= 2"),
    ],
)
def test_bad_values_are_one_line(folder, tmp_path, monkeypatch, capsys, extra, message):
    err = cli(["fit", *small(folder, tmp_path, "--trainer.max_steps", "1"), *extra], monkeypatch, capsys)
    assert message in err


def test_one_class_folder_and_a_missing_gpu_are_one_line(tmp_path, monkeypatch, capsys):
    one = write_image_folder(str(tmp_path / "one"), num_classes=1, train_per_class=8, val_per_class=2, image_size=32)
    err = cli(["fit", *small(one, tmp_path, "--model.num_classes", "1")], monkeypatch, capsys)
    assert "model.num_classes must be >= 2" in err and "two class folders" in err
    err = cli(["fit", *small(one, tmp_path, "--model.num_classes", "2")], monkeypatch, capsys)
    assert f"training folder {one}/train has one class folder (class_0)" in err
    if not torch.cuda.is_available():
        err = cli(["fit", *small(one, tmp_path, "--trainer.accelerator", "gpu")], monkeypatch, capsys)
        assert "trainer.accelerator=gpu: no GPU is available to this process" in err


@pytest.mark.parametrize("signal", ["TERM", "USR1"])
def test_a_preempted_fit_exits_143_not_0(folder, tmp_path, monkeypatch, capsys, signal):
    """A fit stopped by SIGTERM, or by SLURM's pre-emption signal (requeued), exits with status 143
    (swtasks.errors.EXIT_PREEMPTED) after saving its checkpoint: a scheduler wrapper can tell it from a
    finished run (both exited 0)."""
    from swtasks.errors import EXIT_PREEMPTED

    if signal == "USR1":  # under SLURM (in this process): a stand-in scontrol records the requeue
        bindir = tmp_path / "bin"
        bindir.mkdir()
        (bindir / "scontrol").write_text(f'#!/bin/bash\necho "$*" >> {tmp_path}/scontrol.log\n')
        (bindir / "scontrol").chmod(0o755)
        monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
        for k in [k for k in os.environ if k.startswith("SLURM_")]:
            monkeypatch.delenv(k)
        slurm = dict(SLURM_JOB_ID="77", SLURM_JOB_NAME="sw-test", SLURM_NTASKS="1", SLURM_JOB_NUM_NODES="1",
                     SLURM_NNODES="1", SLURM_PROCID="0", SLURM_LOCALID="0", SLURM_NODEID="0",
                     SLURM_NODELIST="localhost")  # fmt: skip
        for k, v in slurm.items():
            monkeypatch.setenv(k, v)
    cfg = tmp_path / "stop.yaml"
    cfg.write_text(json.dumps({"trainer": {"callbacks": [
        {"class_path": "cls_stop_at.StopAt", "init_args": {"step": 2, "signal": signal}}]}}))  # fmt: skip
    monkeypatch.setattr(sys, "argv", ["train_cls.py"])
    with pytest.raises(SystemExit) as e:
        main(["fit", "--config", str(cfg), *small(folder, tmp_path, "--trainer.max_epochs", "2")])
    assert e.value.code == EXIT_PREEMPTED == 143
    if signal == "TERM":
        saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
        assert "stopped by SIGTERM (exit status 143)" in capsys.readouterr().err
    else:
        saved = torch.load(tmp_path / "hpc_ckpt_1.ckpt", weights_only=True)
        assert (tmp_path / "scontrol.log").read_text().strip() == "requeue 77"
        assert "fit stopped by the pre-emption signal (exit status 143)" in capsys.readouterr().out
    assert saved["global_step"] == 2


def test_validate_with_a_checkpoint_of_another_class_count(folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["train_cls.py"])
    main(["fit", *small(folder, tmp_path, "--trainer.max_steps", "1", "--trainer.limit_val_batches", "1")])
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    other = write_image_folder(str(tmp_path / "five"), num_classes=5, train_per_class=1, val_per_class=2)
    capsys.readouterr()
    err = cli(["validate", *small(other, tmp_path), "--model.num_classes", "5", "--ckpt_path", str(ckpt)], monkeypatch, capsys)
    assert "model.num_classes=3 (from the checkpoint" in err and "has 5 classes" in err
    # from Python, a module built for 5 classes and the 3-class checkpoint: one InputError naming both
    module = ClassificationModule("shiftwise_atto", num_classes=5, backbone_kwargs=TINY)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    from swtasks.cls import ImageClassificationDataModule

    dm = ImageClassificationDataModule(root=other, image_size=32, batch_size=4, num_workers=0)
    with pytest.raises(InputError, match=r"trained with 3 classes .* model.num_classes=5"):
        trainer.validate(module, dm, ckpt_path=str(ckpt), verbose=False)


def test_corrupt_image_in_a_worker_process_is_one_line(folder, tmp_path, monkeypatch, capsys):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(folder, data)
    bad = data / "train" / "class_1" / "zz_broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    err = cli(
        ["fit", *small(str(data), tmp_path, "--data.num_workers", "1", "--trainer.max_epochs", "1",
                       "--data.persistent_workers", "false")],
        monkeypatch, capsys,
    )  # fmt: skip
    assert f"cannot read image {bad}" in err and "DataLoader worker" not in err and "data.corrupt_images=skip" in err


def test_data_too_small_for_the_batch(folder, tmp_path, monkeypatch, capsys):
    err = cli(["fit", *small(folder, tmp_path, "--data.batch_size", "64")], monkeypatch, capsys)
    assert "has 24 training images, fewer than one batch of data.batch_size=64" in err
    assert "--data.batch_size 24" in err


def test_image_size_too_small_for_the_model(folder, tmp_path, monkeypatch, capsys):
    err = cli(["fit", *small(folder, tmp_path, "--data.image_size", "16")], monkeypatch, capsys)
    assert "data.image_size=16 is smaller than the total stride 32" in err
    err = cli(["fit", "--config", str(REPO / "configs/cls/demo.yaml"), "--data.image_size", "20"], monkeypatch, capsys)
    assert "image_size 20 is too small for the procedural dataset 'longrange'" in err


# ------------------------------------------------------------------------------------------ non-finite
def nan_at(batch: int, n_batches: int = 6, bs: int = 4):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n_batches * bs, 3, 32, 32, generator=g)
    x[batch * bs] = float("nan")
    y = torch.arange(n_batches * bs) % 3
    return DataLoader(TensorDataset(x, y), batch_size=bs, shuffle=False)


def fit_nan(tmp_path, mode):
    module = ClassificationModule(
        "shiftwise_atto", num_classes=3, backbone_kwargs=TINY, nonfinite_loss=mode, ema_decay=0.9, lr=1e-3
    )
    ck = Checkpoint(dirpath=str(tmp_path / "checkpoints"), save_last=True, monitor=None)
    snap = {}

    class Snap(L.Callback):  # the weights after each step, to compare with the saved "last good state"
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            snap[trainer.global_step] = {k: v.clone() for k, v in pl_module.backbone.state_dict().items()}

    trainer = L.Trainer(
        accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[ck, Snap()], default_root_dir=str(tmp_path),
    )  # fmt: skip
    return module, trainer, snap


def test_nonfinite_loss_stops_with_the_step_and_the_last_good_state(tmp_path):
    module, trainer, snap = fit_nan(tmp_path, "stop")
    with pytest.raises(NonFiniteLossError) as e:
        trainer.fit(module, nan_at(3))
    msg = str(e.value)
    path = tmp_path / "checkpoints" / "nonfinite-step000003.ckpt"
    assert "at step 3 (epoch 0, batch 3)" in msg and str(path) in msg
    saved = torch.load(path, weights_only=True)
    assert saved["global_step"] == 3
    good = {k[len("backbone.") :]: v for k, v in saved["state_dict"].items() if k.startswith("backbone.")}
    assert_same(snap[3], good)  # the weights after step 3, untouched by the failing batch
    assert all(torch.isfinite(v).all() for v in good.values() if v.is_floating_point())


def test_nonfinite_loss_skip_mode_skips_the_batch(tmp_path):
    module, trainer, snap = fit_nan(tmp_path, "skip")
    with pytest.warns(UserWarning, match=r"skipping the batch at step 3 .*non-finite loss nan \(1 so far\)"):
        trainer.fit(module, nan_at(3))
    assert module.skipped_batches == 1
    assert_same(snap[3], snap[4])  # no update from the skipped batch
    assert all(torch.isfinite(p).all() for p in module.parameters())


# ------------------------------------------------------------------------------------------ DDP
@pytest.mark.slow
def test_two_process_ddp_equals_one_process_of_the_same_global_batch(folder, tmp_path):
    """2 processes x batch 4 (gloo, all-reduce BatchNorm) against 1 process x batch 8, 6 steps: the same
    samples per step (the sampler interleaves the ranks), the same BatchNorm statistics and the mean
    gradient. Equal up to floating-point summation order (the tolerances: cls_helpers.assert_matches_one_process).
    Per-process random draws (MixUp/CutMix pairs, drop path) are off: they are drawn per process, not per sample."""
    one = fit_one_process(folder, tmp_path / "one", 8)
    args = small(folder, tmp_path / "two", "--trainer.devices", "2", "--trainer.strategy", "ddp", *SAME_GLOBAL_BATCH)
    r = subprocess.run([sys.executable, TRAIN_CLS, "fit", *args], cwd=REPO, env=env(),
                       capture_output=True, text=True, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    two = torch.load(tmp_path / "two" / "checkpoints" / "last.ckpt", weights_only=True)
    assert one["global_step"] == two["global_step"] == 6
    assert_matches_one_process(one, two)


# ------------------------------------------------------------------------------------------ images
def test_every_kind_of_image_file(tmp_path):
    """docs/reliability.md, "Images": what each file becomes (8-bit RGB), or the error naming it."""
    arr = np.zeros((8, 8), np.uint16)
    arr[:, :4], arr[:, 4:] = 65535, 32896  # 32896 = 128 * 257
    Image.fromarray(arr).save(tmp_path / "gray16.png")
    assert Image.open(tmp_path / "gray16.png").mode.startswith("I")
    px = np.asarray(read_rgb(str(tmp_path / "gray16.png")))
    assert px.shape == (8, 8, 3) and (px[:, :4] == 255).all() and (px[:, 4:] == 128).all()  # scaled, not clipped

    # 32-bit float (a float TIFF, mode F): [0, 1] scaled by 255 (PIL's own conversion made it all black);
    # any other range is refused with the range named (there is no one right reading of it)
    Image.fromarray(np.array([[0.0, 0.25], [0.5, 1.0]], np.float32), "F").save(tmp_path / "float.tif")
    assert Image.open(tmp_path / "float.tif").mode == "F"
    px = np.asarray(read_rgb(str(tmp_path / "float.tif")))
    assert px.shape == (2, 2, 3) and (px[..., 0] == [[0, 64], [128, 255]]).all() and (px[..., 0] == px[..., 2]).all()
    Image.fromarray(np.array([[0.0, 300.0]], np.float32), "F").save(tmp_path / "float_hdr.tif")
    with pytest.raises(ValueError, match=r"32-bit float image with values in \[0, 300\]"):
        read_rgb(str(tmp_path / "float_hdr.tif"))
    Image.fromarray(np.array([[0.0, np.nan]], np.float32), "F").save(tmp_path / "float_nan.tif")
    with pytest.raises(ValueError, match="NaN or infinite"):
        read_rgb(str(tmp_path / "float_nan.tif"))
    with pytest.raises(InputError, match=r"cannot read image .*float_hdr.tif: 32-bit float image"):
        ImageFolderDataset([(str(tmp_path / "float_hdr.tif"), 0)], ["a"])[0]

    Image.fromarray(np.full((6, 6), 77, np.uint8), "L").save(tmp_path / "gray.png")
    assert (np.asarray(read_rgb(str(tmp_path / "gray.png"))) == 77).all()

    Image.new("CMYK", (6, 6), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")  # pure red in CMYK
    r, g, b = np.asarray(read_rgb(str(tmp_path / "cmyk.jpg"))).reshape(-1, 3).mean(0)
    assert r > 200 and g < 60 and b < 60

    rgba = np.zeros((6, 6, 4), np.uint8)
    rgba[..., 2] = 255  # blue
    rgba[:3, :, 3] = 255  # top half opaque, bottom half fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    px = np.asarray(read_rgb(str(tmp_path / "alpha.png")))
    assert (px[:3] == [0, 0, 255]).all() and (px[3:] == 255).all()  # transparent -> white background

    pal = Image.new("P", (6, 6), 1)
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    pal.info["transparency"] = 0
    pal.save(tmp_path / "palette.png", transparency=0)
    assert (np.asarray(read_rgb(str(tmp_path / "palette.png"))) == [10, 200, 30]).all()

    Image.new("RGB", (400, 300)).save(tmp_path / "large.png")
    with pytest.raises(OSError, match=r"400x300 = 120000 pixels, more than data.max_image_pixels=100000"):
        read_rgb(str(tmp_path / "large.png"), max_pixels=100_000)

    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "full.jpg", quality=95)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(OSError, match="(?i)truncated"):
        read_rgb(str(tmp_path / "truncated.jpg"))

    # through the dataset: the error names the file (corrupt_images=error) or the sample is replaced (skip)
    samples = [(str(tmp_path / n), 0) for n in ("gray16.png", "truncated.jpg", "large.png", "alpha.png")]
    ds = ImageFolderDataset(samples, ["a"], max_image_pixels=100_000)
    assert ds[0][0].size == (8, 8)
    with pytest.raises(InputError, match=r"cannot read image .*truncated.jpg"):
        ds[1]
    with pytest.raises(InputError, match=r"cannot read image .*large.png: 400x300"):
        ds[2]
    skipping = ImageFolderDataset(samples, ["a"], corrupt_images="skip", max_image_pixels=100_000)
    with pytest.warns(UserWarning, match="truncated.jpg"):
        img, _ = skipping[1]
    assert img.size == (6, 6) and skipping.skipped == 2  # truncated.jpg and large.png skipped -> alpha.png
