"""The classification recipes of the UniRepLKNet and SLaK families (configs/cls/unireplknet_t_in1k.yaml,
slak_t_in1k.yaml): the published values, total batch 4096, and one real fast_dev_run step each through the
Lightning CLI with a test-sized backbone of the family."""

from __future__ import annotations

import json

import pytest
import yaml
from helpers import REPO, run_cli

RECIPES = {
    "unireplknet_t_in1k.yaml": dict(
        backbone="unireplknet_t", drop_path_rate=0.2, ema_decay=None, sparse=[],
        tiny=dict(depths=[1, 1, 1, 1], dims=[8, 16, 24, 32], kernel_sizes=[3, 7, 5, 3]),
    ),
    "slak_t_in1k.yaml": dict(
        backbone="slak_t", drop_path_rate=0.1, ema_decay=0.9999,
        sparse=[dict(sparsity=0.4, update_interval=2000, prune_rate=0.5, final_prune_rate=0.005, align_interval=131,
                     dense_threshold=0.99, seed=0, method="unstructured", init="snip")],
        tiny=dict(depths=[1, 1, 1, 1], dims=[8, 16, 24, 32], width_factor=1.0, kernel_sizes=[7, 7, 5, 5]),
    ),
}


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_published_recipe_values_and_one_step(recipe, folder, tmp_path, monkeypatch, capsys, caplog):
    want = RECIPES[recipe]
    path = str(REPO / "configs/cls" / recipe)
    with pytest.raises(SystemExit) as e:
        run_cli(["fit", "--config", path, "--print_config"], monkeypatch)
    assert e.value.code == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    t, m, d = cfg["trainer"], cfg["model"], cfg["data"]
    assert int(t["devices"]) * t["num_nodes"] * d["batch_size"] * t["accumulate_grad_batches"] == 4096
    assert (t["max_epochs"], m["lr"], m["weight_decay"], m["warmup_epochs"], m["min_lr"]) == (300, 4e-3, 0.05, 20, 1e-6)
    assert m["base_batch_size"] == 4096  # the lr is stated for the published total batch
    assert (m["backbone"], m["drop_path_rate"], m["ema_decay"]) == (want["backbone"], want["drop_path_rate"],
                                                                  want["ema_decay"])
    assert (m["label_smoothing"], m["mixup_alpha"], m["cutmix_alpha"], m["switch_prob"]) == (0.1, 0.8, 1.0, 0.5)
    assert (d["auto_augment"], d["random_erasing"], d["crop_pct"]) == ("rand-m9-mstd0.5-inc1", 0.25, 0.875)
    sparse = [c["init_args"] for c in t.get("callbacks") or [] if c["class_path"].endswith("SparseTraining")]
    assert sparse == want["sparse"]
    run_cli(
        [
            "fit", "--config", path, "--trainer.fast_dev_run", "true", "--trainer.accelerator", "cpu",
            "--trainer.devices", "1", "--trainer.strategy", "auto", "--trainer.accumulate_grad_batches", "2",
            "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path),
            "--model.backbone_kwargs", json.dumps(want["tiny"]), "--model.num_classes", "3",
            "--data.root", folder, "--data.image_size", "32", "--data.batch_size", "4", "--data.eval_batch_size", "4",
            "--data.num_workers", "0",
        ],  # fmt: skip
        monkeypatch,
    )
    captured = capsys.readouterr()
    assert "fit finished: 1 epochs, 1 optimiser steps" in captured.out
    logged = captured.out + captured.err + caplog.text
    assert ("sparse training (unstructured)" in logged) == bool(want["sparse"])
