"""ClassificationModule: any registry backbone trained with the ImageNet recipe of the shift-wise paper."""

from __future__ import annotations

import math
import random
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from ..models.param_groups import param_groups
from .ema import ModelEMA
from .errors import InputError
from .mix import MixUpCutMix, soft_target_cross_entropy
from .optim import WarmupCosine

DEFAULT_DATA_CONFIG = {
    "input_size": (3, 224, 224),
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "crop_pct": 0.875,
    "interpolation": "bicubic",
}

EMA_PREFIX = "ema.module."
BACKBONE_PREFIX = "backbone."


def collect_rng_states() -> dict:
    """torch / CUDA / numpy / python RNG states in a form ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states = {
        "torch": torch.get_rng_state(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])


def create_backbone(name: str, *, num_classes: int, drop_path_rate: float, pretrained: bool = False, **kwargs):
    """``swtasks.create_model`` with user errors (unknown name, unknown override) turned into InputError."""
    import swtasks

    try:
        return swtasks.create_model(
            name, pretrained=pretrained, num_classes=num_classes, drop_path_rate=drop_path_rate, **kwargs
        )
    except (KeyError, ValueError, TypeError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        raise InputError(f"model.backbone={name!r}: {msg}") from e


def data_config_of(model: nn.Module, name: str | None = None) -> dict:
    """The backbone's data config (input_size, mean, std, crop_pct, interpolation), with defaults."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "data_config", None)
    if not cfg and name is not None:
        try:
            from swtasks.models import get_data_config

            cfg = get_data_config(name)
        except Exception:  # noqa: BLE001 - a model outside the registry simply has no config
            cfg = None
    out = dict(DEFAULT_DATA_CONFIG)
    out.update({k: v for k, v in dict(cfg or {}).items() if k in DEFAULT_DATA_CONFIG and v is not None})
    return out


class ClassificationModule(L.LightningModule):
    """Image classification around a backbone from ``swtasks.create_model``.

    Args:
        backbone: registry name (``swtasks.list_models()``), or an ``nn.Module`` from Python.
        num_classes: classifier outputs (checked against the data folders).
        drop_path_rate: stochastic depth of the backbone.
        pretrained: load the registry's pretrained weights.
        backbone_kwargs: extra overrides passed to ``create_model`` (kernel sizes, ...).
        lr: peak learning rate (after warm-up); the paper: 4e-3 at a total batch of 4096.
        weight_decay: AdamW decay for weights; 0 for biases, 1-D parameters and ``no_weight_decay()``.
        betas, eps: AdamW.
        no_weight_decay_keys: extra parameter names / fnmatch patterns without weight decay.
        layer_decay: layer-wise lr decay (e.g. 0.8 for fine-tuning); None disables.
        warmup_epochs / warmup_steps: linear warm-up length (steps win when given).
        min_lr: end of the per-step cosine.
        label_smoothing: applied to hard and mixed targets.
        mixup_alpha, cutmix_alpha, mix_prob, switch_prob: batch-level MixUp / CutMix (alpha 0 disables).
        ema_decay: keep an EMA of the weights and evaluate it next to the raw weights; None disables.
        ema_warmup_steps: ramp the EMA decay over this many updates (0: constant decay).
        channels_last: run the backbone in channels-last memory format.
        compile: wrap the backbone's training forward in ``torch.compile`` (a string picks the backend,
            e.g. ``inductor`` (what ``true`` means) or ``aot_eager``).
        sync_batchnorm: convert BatchNorm to SyncBatchNorm when the world size is above 1 on GPUs.
    """

    def __init__(
        self,
        backbone: str | nn.Module = "shiftwise_tiny",
        num_classes: int = 1000,
        drop_path_rate: float = 0.1,
        pretrained: bool = False,
        backbone_kwargs: dict[str, Any] | None = None,
        lr: float = 4e-3,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        no_weight_decay_keys: list[str] | None = None,
        layer_decay: float | None = None,
        warmup_epochs: float = 5.0,
        warmup_steps: int | None = None,
        min_lr: float = 1e-6,
        label_smoothing: float = 0.1,
        mixup_alpha: float = 0.8,
        cutmix_alpha: float = 1.0,
        mix_prob: float = 1.0,
        switch_prob: float = 0.5,
        ema_decay: float | None = None,
        ema_warmup_steps: int = 0,
        channels_last: bool = False,
        compile: bool | str = False,
        sync_batchnorm: bool = True,
    ):
        super().__init__()
        if num_classes < 1:
            raise InputError(f"model.num_classes must be >= 1, got {num_classes}")
        if not 0.0 <= label_smoothing < 1.0:
            raise InputError(f"model.label_smoothing must be in [0, 1), got {label_smoothing}")
        if ema_decay is not None and not 0.0 < ema_decay < 1.0:
            raise InputError(f"model.ema_decay must be in (0, 1) or null, got {ema_decay}")
        if isinstance(backbone, nn.Module):
            self.save_hyperparameters(ignore=["backbone"])
            self.backbone_name = type(backbone).__name__
            net = backbone
            if getattr(net, "num_classes", num_classes) != num_classes:
                raise InputError(
                    f"model.num_classes={num_classes} but the given backbone has {net.num_classes} outputs"
                )
        else:
            self.save_hyperparameters()
            self.backbone_name = backbone
            net = create_backbone(
                backbone,
                num_classes=num_classes,
                drop_path_rate=drop_path_rate,
                pretrained=pretrained,
                **(backbone_kwargs or {}),
            )
        self.num_classes = num_classes
        self.data_config = data_config_of(net, None if isinstance(backbone, nn.Module) else backbone)
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
        self.backbone = net
        self.ema = ModelEMA(net, ema_decay, ema_warmup_steps) if ema_decay is not None else None
        self.mixer = MixUpCutMix(
            num_classes,
            mixup_alpha=mixup_alpha,
            cutmix_alpha=cutmix_alpha,
            prob=mix_prob,
            switch_prob=switch_prob,
            label_smoothing=label_smoothing,
        )
        self._metric_names = ["val", "test"] + (["val_ema", "test_ema"] if self.ema is not None else [])
        self.metrics = nn.ModuleDict({p: self._make_metrics() for p in self._metric_names})
        self._last_global_step = -1
        self._pending_rng: dict | None = None

    # ------------------------------------------------------------------ building blocks
    def _make_metrics(self) -> nn.ModuleDict:
        k5 = min(5, self.num_classes)
        return nn.ModuleDict(
            {
                "acc1": MulticlassAccuracy(self.num_classes, top_k=1, average="micro"),
                "acc5": MulticlassAccuracy(self.num_classes, top_k=k5, average="micro"),
            }
        )

    def _prep(self, x: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self._prep(x))

    def configure_model(self) -> None:
        if self.hparams.compile and "_train_forward" not in self.__dict__:
            # kept out of the module tree so the state dict keeps plain 'backbone.' keys
            backend = self.hparams.compile if isinstance(self.hparams.compile, str) else "inductor"
            object.__setattr__(self, "_train_forward", torch.compile(self.backbone, backend=backend))

    def _forward_train(self, x: torch.Tensor) -> torch.Tensor:
        fwd = self.__dict__.get("_train_forward", self.backbone)
        return fwd(x)

    def setup(self, stage: str) -> None:
        trainer = self._trainer
        if trainer is None or not self.hparams.sync_batchnorm or trainer.world_size <= 1:
            return
        if trainer.strategy.root_device.type == "cpu":
            rank_zero_warn(
                "world size > 1 on CPU: BatchNorm stays per-process (PyTorch's SyncBatchNorm needs GPUs); "
                "DDP broadcasts the running statistics from rank 0."
            )
            return
        if not any(isinstance(m, nn.SyncBatchNorm) for m in self.backbone.modules()):
            self.backbone = nn.SyncBatchNorm.convert_sync_batchnorm(self.backbone)

    # ------------------------------------------------------------------ steps
    def training_step(self, batch, batch_idx):
        x, y = batch[0], batch[1]
        x, targets = self.mixer(self._prep(x), y)
        logits = self._forward_train(x)
        loss = soft_target_cross_entropy(logits, targets)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss {loss.item()} at step {self.global_step}")
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=x.shape[0])
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        # global_step counts optimiser steps: update the EMA once per step (not per accumulated batch)
        if self.ema is not None and self.global_step != self._last_global_step:
            self.ema.update(self.backbone)
        self._last_global_step = self.global_step

    def _eval_step(self, batch, split: str) -> None:
        x, y = batch[0], batch[1]
        x = self._prep(x)
        heads = [(split, self.backbone)]
        if self.ema is not None:
            heads.append((f"{split}_ema", self.ema.module))
        for prefix, net in heads:
            logits = net(x)
            loss = F.cross_entropy(logits.float(), y)
            self.log(f"{prefix}_loss", loss, on_epoch=True, sync_dist=True, batch_size=x.shape[0])
            for name, metric in self.metrics[prefix].items():
                metric.update(logits, y)
                self.log(f"{prefix}_{name}", metric, on_epoch=True, prog_bar=(name == "acc1"))

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, "test")

    def predict_step(self, batch, batch_idx, dataloader_idx: int = 0):
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        net = self.ema.module if self.ema is not None else self.backbone
        prob = net(self._prep(x)).float().softmax(-1)
        top = prob.topk(min(5, self.num_classes), dim=-1)
        return {"indices": top.indices.cpu(), "probs": top.values.cpu()}

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        hp = self.hparams
        try:
            groups = param_groups(
                self.backbone,
                lr=hp.lr,
                weight_decay=hp.weight_decay,
                no_weight_decay=hp.no_weight_decay_keys or (),
                layer_decay=hp.layer_decay,
            )
        except ValueError as e:
            raise InputError(f"model.layer_decay: {e}") from e
        for g in groups:
            for key in ("names", "group_name", "layer_id"):
                g.pop(key)
        opt = torch.optim.AdamW(groups, lr=hp.lr, betas=tuple(hp.betas), eps=hp.eps)
        total = int(self.trainer.estimated_stepping_batches)
        if hp.warmup_steps is not None:
            warmup = int(hp.warmup_steps)
        else:
            warmup = int(round(hp.warmup_epochs * self._steps_per_epoch(total)))
        sched = WarmupCosine(opt, warmup_steps=min(warmup, total), total_steps=total, base_lr=hp.lr, min_lr=hp.min_lr)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}

    def _steps_per_epoch(self, total: int) -> float:
        t = self.trainer
        nb = t.num_training_batches
        if nb is not None and math.isfinite(nb) and nb > 0:
            return max(1, math.ceil(nb / t.accumulate_grad_batches))
        return total / max(1, t.max_epochs or 1)

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["rng_states"] = collect_rng_states()
        checkpoint["data_config"] = dict(self.data_config)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # (sparsity masks need nothing here: ShiftWiseConv2d creates a saved mask's buffer when it loads)
        sd = checkpoint.get("state_dict", {})
        has_ema = any(k.startswith(EMA_PREFIX) for k in sd)
        if self.ema is None and has_ema:
            for k in [k for k in sd if k.startswith("ema.")]:
                del sd[k]
            for k in [k for k in sd if k.startswith("metrics.") and "_ema." in k]:
                del sd[k]
        elif self.ema is not None and not has_ema:
            # fine-tuning with EMA from a checkpoint without one: the average starts at the loaded weights
            for k in list(sd):
                if k.startswith(BACKBONE_PREFIX):
                    sd[EMA_PREFIX + k[len(BACKBONE_PREFIX) :]] = sd[k]
            sd.setdefault("ema.num_updates", torch.zeros((), dtype=torch.long))
        if "rng_states" in checkpoint:
            self._pending_rng = checkpoint["rng_states"]

    def on_fit_start(self) -> None:
        # restored here, before the training loader's iterator is made (Lightning isolates the sanity
        # check's RNG use), so a resumed run draws exactly what an uninterrupted one would
        if self._pending_rng is not None:
            set_rng_states(self._pending_rng)
            self._pending_rng = None
