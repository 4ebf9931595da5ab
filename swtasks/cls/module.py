"""ClassificationModule: any registry backbone, with defaults for a dataset nobody tuned for.

The defaults serve a user's own data (docs/classification.md, "Your own data"): no MixUp/CutMix, AdamW
with ``lr`` stated for a total batch of ``base_batch_size`` and scaled linearly by the real total batch
(devices x nodes x per-device batch x accumulation), warm-up as a fraction of the run, cosine per step.
The published ImageNet recipes state every setting explicitly in ``configs/cls/*_in1k.yaml``.

The module knows nothing of the data pipeline; in ``setup`` it checks the data module's class count and
image size against the backbone (one clear error instead of a failure deep inside the first step).
"""

from __future__ import annotations

import math
import random
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from ..checkpoint import NonFiniteWeightsError, adapter_of, check_finite, compare_state_dicts, format_mismatch
from ..layers.syncbn import convert_sync_batchnorm
from ..models.param_groups import param_groups
from . import finetune
from .ema import ModelEMA
from .errors import InputError, NonFiniteLossError
from .finetune import classifier_prefix, load_weights
from .mix import MixUpCutMix, soft_target_cross_entropy
from .optim import WarmupCosine
from .transforms import data_config

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


def create_backbone(name: str, *, num_classes: int, drop_path_rate: float, **kwargs):
    """``swtasks.create_model`` with user errors (unknown name, unknown override) turned into InputError."""
    import swtasks

    try:
        return swtasks.create_model(name, num_classes=num_classes, drop_path_rate=drop_path_rate, **kwargs)
    except (KeyError, ValueError, TypeError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        raise InputError(f"model.backbone={name!r}: {msg}") from e


def total_stride(net: nn.Module) -> int | None:
    """The backbone's input-to-output stride (``total_stride``, else the last feature_info reduction)."""
    s = getattr(net, "total_stride", None)
    if s is None:
        info = getattr(net, "feature_info", None)
        try:
            s = info[-1]["reduction"]
        except (TypeError, IndexError, KeyError):
            return None
    return int(s)


class ClassificationModule(L.LightningModule):
    """Image classification around a backbone from ``swtasks.create_model``.

    Args:
        backbone: registry name (``swtasks.list_models()``), or an ``nn.Module`` from Python.
        num_classes: classifier outputs (checked against the data module's classes in ``setup``).
        drop_path_rate: stochastic depth of the backbone.
        weights: a weights file to start from (fine-tuning): anything ``create_model(checkpoint_path=...)``
            reads (a converted published checkpoint, an exported backbone, a Lightning checkpoint of this
            toolkit). The classifier is re-initialised when its class count differs.
        trust_pickle: read ``weights`` with full unpickling (only for files you trust).
        allow_download: ``weights`` may be an http(s) URL: downloaded, then read like a local file.
        freeze_stages: freeze the stem and the first N stages (parameters and BatchNorm statistics; the
            backbone's ``freeze_stages(N)``, the rule of the mm backbones' ``frozen_stages=N``).
        backbone_kwargs: extra overrides passed to ``create_model`` (kernel sizes, ...).
        lr: peak learning rate (after warm-up) for a total batch of ``base_batch_size``; the run uses
            ``lr * total_batch / base_batch_size`` (printed at the start of fit).
        base_batch_size: the total batch ``lr`` is stated for; null: use ``lr`` as it is.
        weight_decay: AdamW decay for weights; 0 for biases, 1-D parameters and ``no_weight_decay()``.
        betas, eps: AdamW.
        no_weight_decay_keys: extra parameter names / fnmatch patterns without weight decay.
        layer_decay: layer-wise lr decay (e.g. 0.8 for fine-tuning); None disables.
        warmup_fraction: linear warm-up over this fraction of all optimiser steps, unless
            ``warmup_epochs`` or ``warmup_steps`` (which wins) is given.
        min_lr: end of the per-step cosine.
        label_smoothing: applied to hard and mixed targets.
        mixup_alpha, cutmix_alpha, mix_prob, switch_prob: batch-level MixUp / CutMix (alpha 0 disables).
        ema_decay: keep an EMA of the weights and evaluate it next to the raw weights; None disables.
        ema_warmup_steps: ramp the EMA decay over this many updates (0: constant decay).
        nonfinite_loss: a NaN/inf training loss ``stop``s the run (naming the step; the Checkpoint
            callback saves the last good state) or ``skip``s the batch (no update, a warning).
        channels_last: run the backbone in channels-last memory format.
        compile: wrap the backbone's training forward in ``torch.compile`` (a string picks the backend,
            e.g. ``inductor`` (what ``true`` means) or ``aot_eager``).
        sync_batchnorm: BatchNorm statistics over the whole distributed batch when the world size is
            above 1 (torch's SyncBatchNorm on GPUs, an all-reduce BatchNorm on CPU).
    """

    def __init__(
        self,
        backbone: str | nn.Module = "shiftwise_tiny",
        num_classes: int = 1000,
        drop_path_rate: float = 0.1,
        weights: str | None = None,
        trust_pickle: bool = False,
        allow_download: bool = False,
        freeze_stages: int = 0,
        backbone_kwargs: dict[str, Any] | None = None,
        lr: float = 4e-3,
        base_batch_size: int | None = 256,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        no_weight_decay_keys: list[str] | None = None,
        layer_decay: float | None = None,
        warmup_fraction: float = 0.05,
        warmup_epochs: float | None = None,
        warmup_steps: int | None = None,
        min_lr: float = 1e-6,
        label_smoothing: float = 0.1,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        mix_prob: float = 1.0,
        switch_prob: float = 0.5,
        ema_decay: float | None = None,
        ema_warmup_steps: int = 0,
        nonfinite_loss: Literal["stop", "skip"] = "stop",
        channels_last: bool = False,
        compile: bool | str = False,
        sync_batchnorm: bool = True,
    ):
        super().__init__()
        if num_classes < 2:
            raise InputError(
                f"model.num_classes must be >= 2, got {num_classes}: a classifier tells classes apart (softmax "
                "over the class folders), so the data needs at least two class folders"
            )
        if not 0.0 <= label_smoothing < 1.0:
            raise InputError(f"model.label_smoothing must be in [0, 1), got {label_smoothing}")
        if ema_decay is not None and not 0.0 < ema_decay < 1.0:
            raise InputError(f"model.ema_decay must be in (0, 1) or null, got {ema_decay}")
        if lr <= 0:
            raise InputError(f"model.lr must be > 0, got {lr}")
        if base_batch_size is not None and base_batch_size < 1:
            raise InputError(f"model.base_batch_size must be >= 1 or null, got {base_batch_size}")
        if not 0.0 <= warmup_fraction < 1.0:
            raise InputError(f"model.warmup_fraction must be in [0, 1), got {warmup_fraction}")
        if nonfinite_loss not in ("stop", "skip"):
            raise InputError(f"model.nonfinite_loss must be 'stop' or 'skip', got {nonfinite_loss!r}")
        for name, value in (("mixup_alpha", mixup_alpha), ("cutmix_alpha", cutmix_alpha)):
            if not value >= 0:
                raise InputError(f"model.{name} must be >= 0 (0 turns it off), got {value}")
        for name, value in (("mix_prob", mix_prob), ("switch_prob", switch_prob)):
            if not 0.0 <= value <= 1.0:
                raise InputError(f"model.{name} must be in [0, 1], got {value}")
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
                backbone, num_classes=num_classes, drop_path_rate=drop_path_rate, **(backbone_kwargs or {})
            )
        self.weights_report = load_weights(net, weights, trust_pickle=trust_pickle, allow_download=allow_download) if weights else None
        if self.weights_report:
            rank_zero_info(self.weights_report)
        # the frozen modules are in eval mode and the network's train() keeps them there (Lightning keeps the
        # modes it finds and warns about eval modules: intended here)
        finetune.freeze_stages(net, freeze_stages)
        self.num_classes = num_classes
        self.data_config = data_config(net if hasattr(net, "pretrained_cfg") else None)
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
        self.skipped_batches = 0
        self.optim_summary: dict[str, Any] = {}
        self.hparams_from: str | None = None  # the checkpoint the options were read from (tools/train_cls.py)

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
        if trainer is None:
            return
        self._check_data(trainer.datamodule)
        if self.hparams.sync_batchnorm and trainer.world_size > 1:
            self.backbone = convert_sync_batchnorm(self.backbone, trainer.strategy.root_device)
            self.__dict__.pop("_norm_bufs", None)
            self.__dict__.pop("_norm_snap", None)

    def _check_data(self, dm) -> None:
        """The data module's class count and image size against the backbone (one clear error each)."""
        n = getattr(dm, "num_classes", None)
        if n is not None and n != self.num_classes:
            ckpt = self.hparams_from
            where = f" (from the checkpoint {ckpt})" if ckpt else ""
            source = getattr(dm, "classes_source", None) or "the data"
            raise InputError(
                f"model.num_classes={self.num_classes}{where} but {source} has {n} classes"
                + ("" if where else f"; set --model.num_classes {n}")
            )
        size = getattr(dm, "image_size", None)
        stride = total_stride(self.backbone)
        if size is not None and stride is not None and size < stride:
            raise InputError(
                f"data.image_size={size} is smaller than the total stride {stride} of {self.backbone_name}: "
                f"use --data.image_size {stride} or more (images are resized to it)"
            )

    # ------------------------------------------------------------------ steps
    def _norm_buffers(self) -> list[torch.Tensor]:
        if "_norm_bufs" not in self.__dict__:
            bufs = [b for m in self.backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                    for b in m.buffers()]  # fmt: skip
            object.__setattr__(self, "_norm_bufs", bufs)
        return self.__dict__["_norm_bufs"]

    def _snapshot_norm_buffers(self) -> list[torch.Tensor]:
        """A copy of every BatchNorm buffer, taken into one set of tensors kept across steps (one multi-tensor
        copy per step instead of a fresh clone of each buffer)."""
        bufs = self._norm_buffers()
        snap = self.__dict__.get("_norm_snap")
        if snap is None or len(snap) != len(bufs) or any(s.device != b.device for s, b in zip(snap, bufs)):
            snap = [torch.empty_like(b) for b in bufs]
            object.__setattr__(self, "_norm_snap", snap)
        if bufs:
            torch._foreach_copy_(snap, bufs)
        return snap

    def training_step(self, batch, batch_idx):
        x, y = batch[0], batch[1]
        x, targets = self.mixer(self._prep(x), y)
        before = self._snapshot_norm_buffers()  # a failing batch must not leave NaN statistics
        logits = self._forward_train(x)
        loss = soft_target_cross_entropy(logits, targets)
        finite = bool(torch.isfinite(loss))
        trainer = self._trainer
        if trainer is not None and trainer.world_size > 1:  # every rank takes the same decision
            finite = trainer.strategy.reduce_boolean_decision(finite, all=True)
        if not finite:
            if before:
                with torch.no_grad():
                    torch._foreach_copy_(self._norm_buffers(), before)
            where = f"step {self.global_step} (epoch {self.current_epoch}, batch {batch_idx})"
            if self.hparams.nonfinite_loss == "stop":
                raise NonFiniteLossError(
                    f"non-finite training loss ({loss.detach().item()}) at {where}; lower model.lr, or set "
                    "model.nonfinite_loss=skip to skip such batches"
                )
            self.skipped_batches += 1
            rank_zero_warn(f"skipping the batch at {where}: non-finite loss {loss.detach().item()} ({self.skipped_batches} so far)")
            return None
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=x.shape[0])
        return loss

    def sync_ema(self) -> None:
        """Bring the EMA up to date with the last optimiser step (once per step, not per accumulated batch).
        Called after each batch and before a checkpoint is written (Lightning saves step checkpoints in
        the callbacks' on_train_batch_end, which runs before the module's)."""
        if self.ema is not None and self.global_step != self._last_global_step:
            self.ema.update(self.backbone)
        self._last_global_step = self.global_step

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        self.sync_ema()

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
        """Top-k classes and probabilities; ``item``: the batch's second entry when it has one (for the
        folder data module's prediction set, the index of the file actually read: with
        ``data.corrupt_images=skip`` an unreadable file's slot holds the next readable file)."""
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        net = self.ema.module if self.ema is not None else self.backbone
        prob = net(self._prep(x)).float().softmax(-1)
        top = prob.topk(min(5, self.num_classes), dim=-1)
        out = {"indices": top.indices.cpu(), "probs": top.values.cpu()}
        if isinstance(batch, (list, tuple)) and len(batch) > 1 and isinstance(batch[1], torch.Tensor):
            out["item"] = batch[1].cpu()
        return out

    # ------------------------------------------------------------------ optimisation
    def total_batch_size(self) -> tuple[int, str]:
        """(images per optimiser step over all processes, how it is made up)."""
        t = self.trainer
        loader = t.train_dataloader
        per_device = getattr(loader, "batch_size", None)
        if per_device is None:  # a custom batch sampler
            per_device = getattr(getattr(loader, "batch_sampler", None), "batch_size", None) or 1
        acc = t.accumulate_grad_batches
        devices, nodes = t.num_devices, t.num_nodes
        total = per_device * t.world_size * acc
        return total, f"{devices} device(s) x {nodes} node(s) x batch {per_device} x accumulation {acc}"

    def configure_optimizers(self):
        hp = self.hparams
        total_steps = int(self.trainer.estimated_stepping_batches)  # also sets up the training loader
        total_batch, makeup = self.total_batch_size()
        lr = hp.lr * total_batch / hp.base_batch_size if hp.base_batch_size else hp.lr
        try:
            groups = param_groups(
                self.backbone,
                lr=lr,
                weight_decay=hp.weight_decay,
                no_weight_decay=hp.no_weight_decay_keys or (),
                layer_decay=hp.layer_decay,
            )
        except ValueError as e:
            raise InputError(f"model.layer_decay: {e}") from e
        for g in groups:
            for key in ("names", "group_name", "layer_id"):
                g.pop(key)
        # fused: one kernel over all tensors (CPU and CUDA; SW-T's 591 parameter tensors step in 48 instead of
        # 123 ms on 2 CPU threads, benchmarks/RESULTS.md); the per-tensor loop elsewhere
        fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for g in groups for p in g["params"])
        opt = torch.optim.AdamW(groups, lr=lr, betas=tuple(hp.betas), eps=hp.eps, fused=fused or None)
        per_epoch = self._steps_per_epoch(total_steps)
        if hp.warmup_steps is not None:
            warmup, how = int(hp.warmup_steps), "model.warmup_steps"
        elif hp.warmup_epochs is not None:
            warmup, how = int(round(hp.warmup_epochs * per_epoch)), f"{hp.warmup_epochs:g} epochs"
        else:
            warmup, how = int(round(hp.warmup_fraction * total_steps)), f"{hp.warmup_fraction:g} of the run"
        warmup = min(warmup, total_steps)
        sched = WarmupCosine(opt, warmup_steps=warmup, total_steps=total_steps, base_lr=lr, min_lr=hp.min_lr)
        scaling = (
            f"model.lr {hp.lr:g} x {total_batch} / {hp.base_batch_size} (model.base_batch_size)"
            if hp.base_batch_size
            else "model.lr as given (model.base_batch_size=null)"
        )
        self.optim_summary = {
            "lr": lr,
            "total_batch": total_batch,
            "batch_makeup": makeup,
            "lr_scaling": scaling,
            "warmup_steps": warmup,
            "warmup_from": how,
            "total_steps": total_steps,
            "steps_per_epoch": per_epoch,
        }
        if self.trainer.state.fn == "fit" and not self.trainer.sanity_checking:
            rank_zero_info(self.describe_optimisation())
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}

    def describe_optimisation(self) -> str:
        s = self.optim_summary
        if not s:
            return ""
        return (
            f"optimisation: total batch {s['total_batch']} ({s['batch_makeup']}); peak lr {s['lr']:.4g} = "
            f"{s['lr_scaling']}; warm-up {s['warmup_steps']} of {s['total_steps']} steps ({s['warmup_from']}), "
            f"then cosine to {self.hparams.min_lr:g}"
        )

    def _steps_per_epoch(self, total: int) -> float:
        t = self.trainer
        nb = t.num_training_batches
        if nb is not None and math.isfinite(nb) and nb > 0:
            return max(1, math.ceil(nb / t.accumulate_grad_batches))
        return total / max(1, t.max_epochs or 1)

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self._trainer is not None and self.trainer.training:
            self.sync_ema()
        checkpoint["rng_states"] = collect_rng_states()
        checkpoint["data_config"] = dict(self.data_config)
        hp = checkpoint.get("hyper_parameters")
        if isinstance(hp, dict) and hp.get("weights"):
            hp["weights"] = None  # the checkpoint holds the weights: reloading it needs no starting file

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
        self._check_checkpoint_fits(sd)
        if "rng_states" in checkpoint:
            self._pending_rng = checkpoint["rng_states"]

    def _check_checkpoint_fits(self, sd: dict) -> None:
        """One clear error when a checkpoint's backbone differs from this module's (another class count,
        other backbone options), before Lightning's strict load fails with a long traceback."""
        own = {k: v for k, v in self.state_dict().items() if k.startswith(BACKBONE_PREFIX)}
        theirs = {k: v for k, v in sd.items() if k.startswith(BACKBONE_PREFIX)}
        try:
            check_finite({k: v for k, v in sd.items() if k.startswith((BACKBONE_PREFIX, EMA_PREFIX))},
                         str(getattr(self._trainer, "ckpt_path", None) or "the checkpoint"))
        except NonFiniteWeightsError as e:
            raise InputError(str(e)) from e
        extra = getattr(adapter_of(self.backbone), "extra", None)
        missing, unexpected, mismatched = compare_state_dicts(
            own, theirs, extra=(lambda k: bool(extra and extra(k[len(BACKBONE_PREFIX) :])))
        )
        if not (missing or unexpected or mismatched):
            return
        source = getattr(self._trainer, "ckpt_path", None) or "the checkpoint"
        head = BACKBONE_PREFIX + classifier_prefix(self.backbone)
        heads = [m for m in mismatched if m[0].startswith(head)]
        if heads and len(heads) == len(mismatched) and not (missing or unexpected):
            k, file_shape, model_shape = heads[0]
            raise InputError(
                f"{source} was trained with {file_shape[0]} classes ({k} {tuple(file_shape)}) but "
                f"model.num_classes={model_shape[0]}; use --model.num_classes {file_shape[0]}, or start a "
                "fine-tuning run from it with --model.weights (the classifier is then re-initialised)"
            )
        msg = format_mismatch(str(source), f"model.backbone={self.backbone_name}", missing, unexpected, mismatched, limit=5)
        raise InputError(msg.replace("\n", ";") + "; the checkpoint's model.backbone_kwargs must match")

    def on_fit_start(self) -> None:
        # restored here, before the training loader's iterator is made (Lightning isolates the sanity
        # check's RNG use), so a resumed run draws exactly what an uninterrupted one would
        if self._pending_rng is not None:
            set_rng_states(self._pending_rng)
            self._pending_rng = None

    def on_train_start(self) -> None:
        self._last_global_step = self.global_step  # restored by now: no EMA update before the next step
