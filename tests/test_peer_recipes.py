"""The published classification recipes of the peer families (configs/cls/*_in1k.yaml): their values as
published, and one real fast_dev_run step of tools/train_cls.py's CLI with a small variant of the network."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# config, expected settings (backbone, lr, weight decay, warm-up epochs, drop path, EMA), small backbone
RECIPES = {
    "convnext_t_in1k.yaml": (
        ("convnext_t", 4e-3, 0.05, 20, 0.1, 0.9999),
        ["--model.backbone_kwargs", '{"depths": [1, 1, 1, 1], "dims": [8, 16, 24, 32]}'],
    ),
    "kw_resnet18_4x_in1k.yaml": (
        ("kw_resnet18_4x", 4e-3, 0.05, 20, 0.1, None),
        ["--model.backbone", "kw_resnet18_1d4x", "--model.backbone_kwargs", '{"depths": [1, 1, 1, 1]}'],
    ),
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from swtasks.cls.synthetic import write_image_folder

    return write_image_folder(str(tmp_path_factory.mktemp("recipes") / "data"), num_classes=3, train_per_class=4,
                              val_per_class=2, image_size=32)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_values_and_one_step(name, folder, tmp_path, monkeypatch, capsys):
    yaml = pytest.importorskip("yaml")
    from swtasks.cls.cli import main

    expected, small = RECIPES[name]
    cfg_path = str(ROOT / "configs" / "cls" / name)
    monkeypatch.setattr(sys, "argv", ["train_cls.py"])
    with pytest.raises(SystemExit) as e:
        main(["fit", "--config", cfg_path, "--print_config"])
    assert e.value.code == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    t, m, d = cfg["trainer"], cfg["model"], cfg["data"]
    assert int(t["devices"]) * t["num_nodes"] * d["batch_size"] * t["accumulate_grad_batches"] == 4096
    assert m["base_batch_size"] == 4096  # the lr is stated for the published total batch
    got = (m["backbone"], m["lr"], m["weight_decay"], m["warmup_epochs"], m["drop_path_rate"], m["ema_decay"])
    assert got == expected
    assert (t["max_epochs"], m["min_lr"], m["label_smoothing"], m["mixup_alpha"], m["cutmix_alpha"]) == (
        300, 1e-6, 0.1, 0.8, 1.0)
    assert (d["auto_augment"], d["random_erasing"], d["interpolation"], d["crop_pct"]) == (
        "rand-m9-mstd0.5-inc1", 0.25, "bicubic", 0.875)
    if name.startswith("kw_"):  # the attention temperature: 1 -> 0 over 20 epochs through StepSchedule
        sched = [c for c in t["callbacks"] if c["class_path"].endswith("StepSchedule")][0]["init_args"]
        assert (sched["method"], sched["start"], sched["end"], sched["until_epoch"]) == (
            "set_temperature", 1.0, 0.0, 20)
    main([
        "fit", "--config", cfg_path, "--trainer.fast_dev_run", "true", "--trainer.accelerator", "cpu",
        "--trainer.devices", "1", "--trainer.strategy", "auto", "--trainer.accumulate_grad_batches", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path), *small,
        "--model.num_classes", "3", "--data.root", folder, "--data.image_size", "32", "--data.batch_size", "4",
        "--data.eval_batch_size", "4", "--data.num_workers", "0",
    ])  # fmt: skip
    assert "fit finished: 1 epochs, 1 optimiser steps" in capsys.readouterr().out
