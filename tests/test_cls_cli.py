"""tools/train_cls.py (LightningCLI): the demo config, validate / test / predict (CSV and contact sheet), bad
input, the SLURM script, the ImageNet recipe (2-process DDP: tests/test_cls_reliability.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import REPO, run_cli

TINY = json.dumps({"depths": [1, 1, 1, 1], "dims": [8, 16, 32, 64], "kernel_sizes": [5, 3, 3, 3]})


def common(folder, root, *extra):
    return [
        "--model.backbone", "shiftwise_atto", "--model.num_classes", "3", "--model.backbone_kwargs", TINY,
        "--data.root", folder, "--data.image_size", "32", "--data.batch_size", "6", "--data.num_workers", "0",
        "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--trainer.default_root_dir", str(root), *extra,
    ]  # fmt: skip


def test_demo_config_few_steps(tmp_path, monkeypatch, capsys):
    run_cli(
        [
            "fit", "--config", str(REPO / "configs/cls/demo.yaml"), "--trainer.max_steps", "2",
            "--trainer.limit_val_batches", "1", "--data.synthetic_train_size", "64",
            "--data.synthetic_val_size", "16", "--trainer.default_root_dir", str(tmp_path),
            "--trainer.enable_progress_bar", "false",
        ],  # fmt: skip
        monkeypatch,
    )
    out = capsys.readouterr().out
    assert "final validation: top-1" in out and "last checkpoint" in out and "learning curves" in out
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert list((tmp_path / "csv").glob("version_*/curves.png"))
    assert list((tmp_path / "tensorboard").glob("version_*/events.out.tfevents.*"))
    assert list((tmp_path / "csv").glob("version_*/metrics.csv"))


def test_fit_validate_test_predict_and_resume(folder, tmp_path, monkeypatch, capsys, caplog):
    run_cli(["fit", *common(folder, tmp_path, "--trainer.max_epochs", "1")], monkeypatch)
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert last.is_file()
    # resume from last and continue one more epoch
    run_cli(["fit", *common(folder, tmp_path, "--trainer.max_epochs", "2", "--ckpt_path", "last")], monkeypatch)
    assert torch.load(last, weights_only=True)["global_step"] == 2 * 3  # 18 images, batch 6
    capsys.readouterr()
    # validate: hyper-parameters come from the checkpoint; prints top-1 / top-5
    run_cli(["validate", *common(folder, tmp_path, "--ckpt_path", str(last))], monkeypatch)
    assert "val: top-1 " in capsys.readouterr().out
    run_cli(["test", *common(folder, tmp_path, "--ckpt_path", str(last))], monkeypatch)
    assert "test: top-1 " in capsys.readouterr().out
    # "best" in a new process: the best checkpoint recorded in the run's last.ckpt (Lightning's own "best"
    # knows only a fit of the same process)
    caplog.clear()
    run_cli(["validate", *common(folder, tmp_path, "--ckpt_path", "best")], monkeypatch)
    assert "val: top-1 " in capsys.readouterr().out
    assert f"checkpoint path at {tmp_path / 'checkpoints' / 'best-epoch'}" in caplog.text
    run_cli(
        ["predict", *common(folder, tmp_path, "--ckpt_path", str(last)), "--predictions.contact_sheet", "true",
         "--predictions.sheet_columns", "4", "--predictions.sheet_thumb", "64"],
        monkeypatch,
    )  # fmt: skip
    out = capsys.readouterr().out
    assert "predictions written to" in out and "contact sheet written to" in out
    rows = (tmp_path / "predictions.csv").read_text().splitlines()
    assert rows[0].startswith("index,file,top1") and len(rows) == 1 + 9 and "class_" in rows[1]
    from PIL import Image

    sheet = tmp_path / "contact_sheet.png"  # next to predictions.csv
    assert sheet.stat().st_size > 1000
    with Image.open(sheet) as im:
        # 9 images in 4 columns: 3 rows of 64-px thumbnails with 3 text lines (13 px) and 3-px margins
        assert im.size == (4 * 64, 3 * (64 + 3 * 13 + 2 * 3))
        assert len(set(im.convert("L").getdata())) > 10  # thumbnails and text, not a blank canvas


def _rows(path):
    import csv

    with open(path, newline="") as f:
        return {r["file"]: (r["top1"], r["topk_probs"]) for r in csv.DictReader(f)}


def test_predict_with_a_skipped_image_names_the_files_predicted(folder, tmp_path, monkeypatch, capsys):
    """predict --data.corrupt_images skip: each row carries the file actually predicted (a skipped file's slot
    held the next file's prediction under the skipped name), the skipped file has no row and the contact
    sheet leaves it out (it used to fail on it)."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(folder, data)
    run_cli(["predict", *common(str(data), tmp_path / "clean")], monkeypatch)  # untrained, seed 0: same weights
    clean = _rows(tmp_path / "clean" / "predictions.csv")
    bad = data / "val" / "class_1" / "aa_broken.png"  # sorts first in its class: the next file stands in
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    capsys.readouterr()
    run_cli(
        ["predict", *common(str(data), tmp_path / "skip"), "--data.corrupt_images", "skip",
         "--predictions.contact_sheet", "true", "--predictions.sheet_columns", "3", "--predictions.sheet_thumb", "64"],
        monkeypatch,
    )  # fmt: skip
    out = capsys.readouterr().out
    rows = _rows(tmp_path / "skip" / "predictions.csv")
    assert str(bad) not in rows and len(rows) == 9
    assert rows == clean  # every file keeps its own prediction
    assert f"1 unreadable file(s) skipped, without a row: {bad}" in out and "contact sheet written to" in out
    from PIL import Image

    with Image.open(tmp_path / "skip" / "contact_sheet.png") as im:
        assert im.size == (3 * 64, 3 * (64 + 3 * 13 + 2 * 3))  # the 9 readable images


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--model.backbone", "shiftwise_tinny"], "shiftwise_tinny"),
        (["--data.root", "/nonexistent/imagenet"], "/nonexistent/imagenet"),
        (["--model.num_classes", "5"], "model.num_classes=5"),
    ],
)
def test_bad_input_is_one_clear_line(folder, tmp_path, monkeypatch, capsys, extra, message):
    with pytest.raises(SystemExit) as e:
        run_cli(["fit", *common(folder, tmp_path, "--trainer.max_steps", "1"), *extra], monkeypatch)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_unknown_config_key(folder, tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit) as e:
        run_cli(["fit", *common(folder, tmp_path), "--model.lrr", "0.1"], monkeypatch)
    assert e.value.code != 0 and "lrr" in capsys.readouterr().err
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("model:\n  backbone: shiftwise_atto\n  warmup_epoch: 3\n")
    with pytest.raises(SystemExit):
        run_cli(["fit", "--config", str(cfg)], monkeypatch)
    assert "warmup_epoch" in capsys.readouterr().err


def test_slurm_script_resumes_from_newest_and_its_arguments_parse(tmp_path):
    """tools/slurm/train_cls.sbatch with a stub `srun` that runs the command with --print_config: the
    arguments are valid for the CLI, keep the total batch at 4096, and resume from the newest checkpoint."""
    import time

    bindir = tmp_path / "bin"
    bindir.mkdir()
    srun = bindir / "srun"
    srun.write_text('#!/bin/bash\nshift  # --kill-on-bad-exit=1\necho "ARGS: $*"\nexec "$@" --print_config\n')
    srun.chmod(0o755)
    root = tmp_path / "run"
    env = {
        **os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}", "PY": sys.executable,
        "ROOT": str(root), "DATA": str(tmp_path / "imagenet"), "NODES": "2", "GPUS": "4",
        "SLURM_JOB_ID": "42", "SLURM_CPUS_PER_TASK": "6",
    }  # fmt: skip
    script = str(REPO / "tools/slurm/train_cls.sbatch")

    def run(**over):
        r = subprocess.run(
            ["bash", script], cwd=REPO, env={**env, **over}, capture_output=True, text=True, timeout=300
        )
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        return r.stdout

    out = run()  # the real CLI parses the job's arguments
    assert "resume from: nothing" in out and "--ckpt_path" not in out.split("ARGS:")[1].splitlines()[0]
    assert "accumulate_grad_batches: 8" in out and "num_nodes: 2" in out and "devices: '4'" in out  # 2*4*64*8
    assert "batch_size: 64" in out and "num_workers: 6" in out and "shiftwise_tiny" in out
    # which checkpoint a (re)started job resumes from (PY=true: arguments only)
    (root / "checkpoints").mkdir(parents=True)
    (root / "checkpoints" / "last.ckpt").write_bytes(b"x")
    time.sleep(0.1)
    (root / "hpc_ckpt_1.ckpt").write_bytes(b"x")  # written at the requeue signal, after last.ckpt
    assert f"--ckpt_path {root}/hpc_ckpt_1.ckpt" in run(PY="true")
    time.sleep(0.1)
    (root / "checkpoints" / "last.ckpt").write_bytes(b"y")  # a later epoch ended after the requeue
    assert f"--ckpt_path {root}/checkpoints/last.ckpt" in run(PY="true")


def test_imagenet_recipe_config(folder, tmp_path, monkeypatch, capsys):
    """configs/cls/shiftwise_tiny_in1k.yaml: the spec's recipe values, total batch 4096, and one real
    fast_dev_run step on the fixture with a test-sized backbone (sparse training, MixUp/CutMix, RandAugment,
    random erasing, accumulation all on)."""
    import yaml

    cfg_path = str(REPO / "configs/cls/shiftwise_tiny_in1k.yaml")
    with pytest.raises(SystemExit) as e:
        run_cli(["fit", "--config", cfg_path, "--print_config"], monkeypatch)
    assert e.value.code == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    t, m, d = cfg["trainer"], cfg["model"], cfg["data"]
    assert int(t["devices"]) * t["num_nodes"] * d["batch_size"] * t["accumulate_grad_batches"] == 4096
    assert t["max_epochs"] == 300 and t["strategy"] == "ddp" and m["sync_batchnorm"] is True
    assert (m["backbone"], m["lr"], m["base_batch_size"], m["weight_decay"], m["warmup_epochs"], m["min_lr"]) == (
        "shiftwise_tiny", 4e-3, 4096, 0.05, 5, 1e-6,
    )
    assert (m["drop_path_rate"], m["label_smoothing"], m["mixup_alpha"], m["cutmix_alpha"], m["switch_prob"]) == (
        0.2, 0.1, 0.8, 1.0, 0.5,
    )
    assert m["ema_decay"] is None  # the reference recipe has no EMA
    assert (d["auto_augment"], d["random_erasing"], d["interpolation"], d["crop_pct"]) == (
        "rand-m9-mstd0.5-inc1", 0.25, "bicubic", 0.875,
    )
    assert (d["scale"], d["color_jitter"], d["hflip"]) == ([0.08, 1.0], 0.4, 0.5)
    assert cfg["checkpoint"]["save_last_every_n_steps"] == 100
    sparse = [c for c in t["callbacks"] if c["class_path"].endswith("SparseTraining")]
    assert sparse and sparse[0]["init_args"]["sparsity"] == 0.3

    run_cli(
        [
            "fit", "--config", cfg_path, "--trainer.fast_dev_run", "true", "--trainer.accelerator", "cpu",
            "--trainer.devices", "1", "--trainer.strategy", "auto", "--trainer.accumulate_grad_batches", "2",
            "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path),
            "--model.backbone", "shiftwise_atto", "--model.backbone_kwargs", TINY, "--model.num_classes", "3",
            "--data.root", folder, "--data.image_size", "32", "--data.batch_size", "4", "--data.eval_batch_size", "4",
            "--data.num_workers", "0",
        ],  # fmt: skip
        monkeypatch,
    )
    out = capsys.readouterr().out
    assert "fit finished: 1 epochs, 1 optimiser steps" in out
    # the recipe's lr is stated for 4096: this run's total batch is 1 x 4 x 2 = 8
    assert "total batch 8 (1 device(s) x 1 node(s) x batch 4 x accumulation 2); peak lr 7.813e-06 = model.lr 0.004 x 8 / 4096" in out
