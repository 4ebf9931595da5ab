"""Experiments that train networks with the toolkit itself: the shift-wise vs 3x3 depthwise comparison on the
embedded long-range task (tools/compare_receptive_field.py), and the embedded dataset as an image source for
the ERF tool.

Why here and not in swtasks.analysis: the comparison trains with the Lightning ClassificationModule and
ImageClassificationDataModule, and swtasks.analysis sits below swtasks.cls in the layering (it must not
import lightning, so that the benchmark and ERF tools work with the core install). An experiment that needs
a trainer therefore lives on the classification floor; the tools stay argument parsing plus one call.
Results and the reasoning behind the task: benchmarks/RESULTS.md ("Classification: long-range synthetic
task") and docs/analysis.md.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from . import synthetic

__all__ = ["SW_KERNELS", "ReceptiveFieldSettings", "compare_receptive_field", "format_comparison",
           "procedural_images", "train_longrange"]

SW_KERNELS = (13, 9, 5, 3)


@dataclass
class ReceptiveFieldSettings:
    """The comparison's settings (defaults: the published run in benchmarks/RESULTS.md)."""

    depths: Sequence[int] = (1, 1, 2, 1)
    dims: Sequence[int] = (32, 64, 128, 256)
    kernel_sizes: Sequence[int] = SW_KERNELS
    image_size: int = 48
    periods: Sequence[int] | None = None  # task variant: the two repeat distances in px
    block: int | None = None  # task variant: noise block size in px
    train_size: int = 3072
    val_size: int = 1024
    batch_size: int = 64
    epochs: int = 4
    lr: float = 2e-3
    layer_scale: float | None = 1.0
    seeds: Sequence[int] = (0, 1, 2)
    threads: int | None = None


def train_longrange(kernel_sizes: Sequence[int], s: ReceptiveFieldSettings, seed: int) -> dict:
    """Train one `shiftwise_atto`-based network with the given big kernels on the long-range task; returns
    params, optimiser steps, validation top-1 and loss, final training loss and wall time."""
    import lightning as L

    from .data import ImageClassificationDataModule
    from .module import ClassificationModule

    L.seed_everything(seed, verbose=False)
    backbone_kwargs = {"depths": list(s.depths), "dims": list(s.dims), "kernel_sizes": list(kernel_sizes)}
    if s.layer_scale is not None:
        backbone_kwargs["layer_scale_init_value"] = s.layer_scale
    model = ClassificationModule(
        "shiftwise_atto", num_classes=4, drop_path_rate=0.0, backbone_kwargs=backbone_kwargs, lr=s.lr,
        base_batch_size=None,  # s.lr is the lr the run uses, not stated per a base batch
        warmup_epochs=0.25, min_lr=1e-5, label_smoothing=0.0, mixup_alpha=0.0, cutmix_alpha=0.0, ema_decay=None,
    )  # fmt: skip
    data = ImageClassificationDataModule(
        dataset="longrange", image_size=s.image_size, batch_size=s.batch_size, num_workers=0, seed=seed,
        synthetic_train_size=s.train_size, synthetic_val_size=s.val_size,
    )  # fmt: skip
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_epochs=s.epochs, logger=False, enable_checkpointing=False,
        enable_progress_bar=sys.stderr.isatty(), enable_model_summary=False, num_sanity_val_steps=0,
        check_val_every_n_epoch=s.epochs,
    )  # fmt: skip
    t0 = time.perf_counter()
    trainer.fit(model, data)
    seconds = time.perf_counter() - t0
    m = trainer.callback_metrics
    return {
        "params": sum(p.numel() for p in model.backbone.parameters()),
        "steps": trainer.global_step,
        "acc1": float(m["val_acc1"]),
        "loss": float(m["val_loss"]),
        "train_loss": float(m["train_loss_epoch"]),
        "seconds": seconds,
    }


def compare_receptive_field(s: ReceptiveFieldSettings) -> list[dict]:
    """Train the shift-wise network (big kernels `s.kernel_sizes`) and the same network with every big kernel
    3 (a network of 3x3 depthwise convolutions) for every seed; one row per (seed, network).

    The task variant (periods, block) and the thread count are set for the run and restored afterwards."""
    from swtasks.cliutil import torch_threads

    with torch_threads(s.threads):
        return _compare_receptive_field(s)


def _compare_receptive_field(s: ReceptiveFieldSettings) -> list[dict]:
    nets = [("shift-wise", tuple(s.kernel_sizes)), ("3x3 depthwise", (3, 3, 3, 3))]
    saved = synthetic.LONGRANGE_PERIODS, synthetic.LONGRANGE_BLOCK
    rows = []
    try:
        if s.periods:
            synthetic.LONGRANGE_PERIODS = tuple(s.periods)
        if s.block:
            synthetic.LONGRANGE_BLOCK = s.block
        for seed in s.seeds:
            for name, ks in nets:
                r = train_longrange(ks, s, seed)
                r.update(net=name, kernels="/".join(map(str, ks)), seed=seed)
                rows.append(r)
                print(f"[{name}, seed {seed}] val top-1 {100 * r['acc1']:.2f}%  ({r['steps']} steps, "
                      f"{r['seconds']:.0f} s)", file=sys.stderr, flush=True)
        s.periods = synthetic.LONGRANGE_PERIODS
        s.block = synthetic.LONGRANGE_BLOCK
    finally:
        synthetic.LONGRANGE_PERIODS, synthetic.LONGRANGE_BLOCK = saved
    return rows


def format_comparison(rows: list[dict], s: ReceptiveFieldSettings, markdown: bool = False) -> str:
    """The settings line, the table (plain or markdown) and the mean top-1 of both networks."""
    try:
        load = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        load = "n/a"
    out = [
        f"longrange task: periods {tuple(s.periods or synthetic.LONGRANGE_PERIODS)} px, "
        f"{s.block or synthetic.LONGRANGE_BLOCK}-px noise blocks, image {s.image_size}px, {s.train_size} train / "
        f"{s.val_size} val images, 4 classes (chance 25%); depths {tuple(s.depths)}, dims {tuple(s.dims)}; batch "
        f"{s.batch_size}, {s.epochs} epochs, AdamW lr {s.lr}, cosine; torch {torch.__version__}, "
        f"{s.threads or torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, load avg at end {load}"
    ]
    header = ["network", "big kernels", "params", "seed", "opt. steps", "train loss", "val loss", "val top-1",
              "time (s)"]
    table = [[r["net"], r["kernels"], f"{r['params']:,}", str(r["seed"]), str(r["steps"]), f"{r['train_loss']:.3f}",
              f"{r['loss']:.3f}", f"{100 * r['acc1']:.2f}%", f"{r['seconds']:.0f}"] for r in rows]
    if markdown:
        out += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(row) + " |" for row in table]
    else:
        widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(header)]
        out.append("  ".join(h.ljust(w) for h, w in zip(header, widths)))
        out += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in table]
    sw = [100 * r["acc1"] for r in rows if r["net"] == "shift-wise"]
    dw = [100 * r["acc1"] for r in rows if r["net"] != "shift-wise"]
    ratio = rows[0]["params"] / rows[1]["params"]
    out.append(f"mean val top-1: shift-wise {statistics.mean(sw):.2f}%, 3x3 depthwise {statistics.mean(dw):.2f}% "
               f"(difference {statistics.mean(sw) - statistics.mean(dw):+.2f} points; params ratio {ratio:.3f})")
    return "\n".join(out)


def procedural_images(name: str = "longrange", split: str = "val", seed: int = 0):
    """The embedded procedural dataset `name` as an ERF image source (start, count, size) -> images
    (swtasks.analysis.erf.ImageSource). Images are generated once per size and kept."""
    if name not in synthetic.DATASETS:
        raise ValueError(f"unknown embedded dataset {name!r}; choose one of {sorted(synthetic.DATASETS)}")
    cache: dict[tuple[int, int], torch.Tensor] = {}

    def source(start: int, count: int, size: int) -> torch.Tensor:
        n = start + count
        key = next((k for k in cache if k[1] == size and k[0] >= n), None)
        if key is None:
            cache.clear()
            key = (max(n, 2 * start), size)
            cache[key] = synthetic.generate(name, key[0], split=split, image_size=size, seed=seed)[0]
        return cache[key][start:n]

    return source
