"""Helpers shared by the classification tests that run tools/train_cls.py as separate processes (crash and
resume, two processes on one machine, several simulated nodes, SLURM): the tiny network, the command line of a
small run, the environment of a tool process, and the oracle that a distributed run of a given global batch is
one process of that batch (test_cls_reliability.py, test_cls_multinode.py), the crash-and-resume recipe and the
comparison of two runs' checkpoints (test_cls_reliability.py, test_cls_shards.py). Nothing here imports swtasks."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
TRAIN_CLS = str(REPO / "tools" / "train_cls.py")
TINY = {"depths": [1, 1, 1, 1], "dims": [8, 16, 32, 64], "kernel_sizes": [9, 7, 5, 3]}

# A run whose result depends only on the global batch (the DDP comparisons): 24 images, 2 epochs; per-process
# random draws (MixUp/CutMix pairs, drop path) and label smoothing off, the lr as given for any total batch.
SAME_GLOBAL_BATCH = [
    "--trainer.max_epochs", "2", "--model.drop_path_rate", "0", "--model.lr", "1e-3", "--model.base_batch_size",
    "null", "--model.label_smoothing", "0", "--trainer.num_sanity_val_steps", "0",
]  # fmt: skip


def tool_env(**extra: str) -> dict[str, str]:
    """The environment of a tools/train_cls.py process: the repository and tests/ (for test callbacks such as
    cls_stop_at.StopAt) importable, no launcher variables inherited from the test process."""
    e = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS), os.environ.get("PYTHONPATH", "")])}
    for name in [k for k in e if k.startswith("SLURM_")] + [
        "LOCAL_RANK", "NODE_RANK", "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
    ]:
        e.pop(name, None)
    e["OMP_NUM_THREADS"] = "2"
    e.update(extra)
    return e


def small(folder, root, *extra) -> list[str]:
    """Command-line options of a small CPU fit of the tiny shift-wise network (``extra`` last, so they win)."""
    return [
        "--model.backbone", "shiftwise_atto", "--model.num_classes", "3", "--model.backbone_kwargs", json.dumps(TINY),
        "--data.root", str(folder), "--data.image_size", "32", "--data.batch_size", "4", "--data.num_workers", "0",
        "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false", "--trainer.logger", "false",
        "--trainer.enable_model_summary", "false", "--trainer.default_root_dir", str(root), *extra,
    ]  # fmt: skip


def fit_one_process(folder, root: Path, batch: int, *extra: str) -> dict:
    """The oracle run: one process of ``batch`` with SAME_GLOBAL_BATCH; returns its last.ckpt."""
    args = small(folder, root, "--trainer.devices", "1", "--data.batch_size", str(batch), *SAME_GLOBAL_BATCH, *extra)
    r = subprocess.run([sys.executable, TRAIN_CLS, "fit", *args], cwd=REPO, env=tool_env(), capture_output=True,
                       text=True, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return torch.load(Path(root) / "checkpoints" / "last.ckpt", weights_only=True)


def assert_matches_one_process(one: dict, dist: dict) -> None:
    """A distributed run (``dist``'s last.ckpt) equals one process of the same global batch (``one``) up to
    floating-point summation order: every backbone weight within 5e-4 (max |diff|; lr 1e-3: half of one Adam
    step, which can move a weight whose gradient is ~0 on rounding alone), the BatchNorm running statistics
    within 2% of each tensor's largest value (+1e-4; stage 4 sees 1x1 maps, 8 values per channel). With
    per-process BatchNorm (--model.sync_batchnorm false) weights differ by 5e-3 and running variances by up to
    2.0 (of ~6)."""
    assert one["global_step"] == dist["global_step"], (one["global_step"], dist["global_step"])
    weights = {}
    for k, v in dist["state_dict"].items():
        if k.startswith("backbone.") and v.is_floating_point():
            ref = one["state_dict"][k]
            if "running_" in k:
                assert float((v - ref).abs().max()) <= 0.02 * float(ref.abs().max()) + 1e-4, k
            else:
                weights[k] = float((ref.double() - v.double()).abs().max())
    worst = max(weights, key=weights.get)
    # AdamW divides by the gradient's running RMS: where a gradient is ~0, summation-order rounding can move a
    # weight by up to lr (1e-3) per step, so the bound is half of one step; the failure it guards against
    # (per-process BatchNorm statistics) moves weights by ~5e-3. Typical here: 1e-5 to 1.4e-4.
    assert weights[worst] < 5e-4, (worst, weights[worst])


def free_port(lo: int = 20000, hi: int = 60000) -> int:
    """A TCP port in [lo, hi) that nothing listens on now (the rendezvous port of a test's process group)."""
    import random

    for port in random.Random(os.getpid()).sample(range(lo, hi), 200):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in [{lo}, {hi})")


# 24 images, batch 4: 6 optimiser steps per epoch, 2 epochs. Everything with state or randomness is on:
# EMA, sparse training (masks + prune/regrow schedule), MixUp/CutMix, RandAugment, random erasing, drop path,
# a data-loader worker process; last.ckpt every 4 steps.
RECIPE = {
    "seed_everything": 0,
    "trainer": {
        "accelerator": "cpu", "devices": 1, "max_epochs": 2, "enable_progress_bar": False,
        "enable_model_summary": False, "logger": False, "num_sanity_val_steps": 0,
        "callbacks": [{"class_path": "swtasks.cls.SparseTraining",
                       "init_args": {"sparsity": 0.5, "update_interval": 2, "align_interval": 3}}],
    },
    "model": {
        "backbone": "shiftwise_atto", "num_classes": 3, "backbone_kwargs": TINY, "drop_path_rate": 0.1,
        "lr": 4e-3, "ema_decay": 0.9, "mixup_alpha": 0.8, "cutmix_alpha": 1.0,
    },
    "data": {
        "image_size": 32, "batch_size": 4, "num_workers": 1, "auto_augment": "rand-m9-mstd0.5-inc1",
        "random_erasing": 0.25,
    },
    "checkpoint": {"save_last_every_n_steps": 4},
}  # fmt: skip


def state_of(path: Path) -> dict:
    ck = torch.load(path, weights_only=True)
    sparse = next(v for k, v in ck["callbacks"].items() if k.startswith("SparseTraining"))
    return {"global_step": ck["global_step"], "state_dict": ck["state_dict"], "optimizer": ck["optimizer_states"],
            "scheduler": ck["lr_schedulers"], "sparse": sparse}  # fmt: skip


def assert_same(a, b, where="") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where
