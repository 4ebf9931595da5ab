"""Lightning callbacks: checkpoints for resuming, sparse training, per-step schedules, learning-curve plot,
prediction CSV and contact sheet."""

from __future__ import annotations

import csv
import math
import os
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import BasePredictionWriter, Callback, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from swtasks.sparse import DynamicSparsity, KernelSparsity, UnstructuredSparsity

from .errors import InputError, NonFiniteLossError

__all__ = [
    "Checkpoint",
    "LearningCurves",
    "PredictionWriter",
    "SparseTraining",
    "StepSchedule",
    "steps_per_epoch",
]


def steps_per_epoch(trainer: L.Trainer) -> int:
    """Optimiser steps per epoch (per process), from the training loader and gradient accumulation."""
    nb = trainer.num_training_batches
    if nb is None or not math.isfinite(nb) or nb <= 0:
        total = trainer.estimated_stepping_batches
        return max(1, int(total // max(1, trainer.max_epochs or 1)))
    return max(1, math.ceil(nb / trainer.accumulate_grad_batches))


def _backbone(pl_module: L.LightningModule) -> torch.nn.Module:
    return getattr(pl_module, "backbone", pl_module)


# ---------------------------------------------------------------------------------------------- checkpoints
class Checkpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint (best by a metric, ``last.ckpt``) plus what resuming needs:

    - ``save_last_every_n_steps``: also refresh ``last.ckpt`` every N optimiser steps, so a run killed
      mid-epoch resumes from a recent step (exactly: the data position, RNG, EMA and schedules are in it);
    - ``save_on_sigterm``: on SIGTERM (a scheduler's time limit, ``kill``), Lightning stops after the current
      step and this writes ``last.ckpt`` before the process exits;
    - a non-finite loss (``model.nonfinite_loss=stop``) writes ``nonfinite-step<N>.ckpt``, the last good
      state (the weights before the failing step; resuming from it skips that batch), and names it in the
      error;
    - ``last.ckpt`` is refreshed at the end of every epoch (Lightning's ModelCheckpoint only refreshes it
      when a top-k checkpoint was written, so an epoch without a better metric left it behind).
    """

    def __init__(self, *args, save_last_every_n_steps: int | None = None, save_on_sigterm: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        if save_last_every_n_steps is not None and save_last_every_n_steps < 1:
            raise InputError(f"checkpoint.save_last_every_n_steps must be >= 1 or null, got {save_last_every_n_steps}")
        self.save_last_every_n_steps = save_last_every_n_steps
        self.save_on_sigterm = save_on_sigterm

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        n = self.save_last_every_n_steps
        if not n or not self.save_last or trainer.global_step % n or self._should_skip_saving_checkpoint(trainer):
            return
        if trainer.fit_loop.epoch_loop._should_accumulate():
            return  # the step counter stands still between accumulated batches
        saved = self._last_global_step_saved
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        self._last_global_step_saved = saved  # the epoch's best/last saving at validation end still happens

    def _refresh_last(self, trainer) -> None:
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        super().on_exception(trainer, pl_module, exception)
        if trainer.fast_dev_run or trainer.sanity_checking:
            return
        if isinstance(exception, SIGTERMException) and self.save_on_sigterm and self.save_last:
            if self._last_global_step_saved != trainer.global_step:
                self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            rank_zero_info(f"SIGTERM: saved {self.last_model_path}; resume with --ckpt_path last")
        elif isinstance(exception, NonFiniteLossError):
            path = os.path.join(self.dirpath or trainer.default_root_dir, f"nonfinite-step{trainer.global_step:06d}.ckpt")
            trainer.save_checkpoint(path)
            exception.checkpoint = path


# ---------------------------------------------------------------------------------------------- sparse
class SlurmRequeue(Callback):
    """SLURM's pre-emption signal handled at a step boundary: exact resumption after a requeue.

    Lightning's own handler (``SLURMEnvironment(auto_requeue=True)``) writes ``hpc_ckpt_<n>.ckpt`` inside
    the signal handler, i.e. wherever the step happens to be: with gradient accumulation the batches
    already accumulated into the interrupted step are lost on resume (the data position says they were
    consumed, the weights never saw them). The CLI therefore turns Lightning's handler off under SLURM
    and installs this callback instead: the signal (``#SBATCH --signal=SIGUSR1@90``) only sets a flag; after
    the next optimiser step (all ranks agree on which) ``hpc_ckpt_<n>.ckpt`` is written (atomically, with
    the data position, RNG, EMA and schedules), rank 0 calls ``scontrol requeue $SLURM_JOB_ID`` and the
    fit stops (``stopped``: tools/train_cls.py then exits with status 143, not 0, so the stop never looks
    like a finished run, also when the requeue failed). The job script resumes from the newest of
    ``hpc_ckpt_*.ckpt`` and ``last.ckpt``.
    """

    def __init__(self, signum: int | None = None):
        import signal

        self.signum = signal.SIGUSR1 if signum is None else signum
        self._flag = False
        self._previous = None
        self._last_step = -1
        self.stopped = False  # the fit was stopped by the signal (after saving its checkpoint)

    def _handler(self, signum, frame) -> None:
        self._flag = True  # acted on at the next optimiser step (see on_train_batch_end)

    def on_train_start(self, trainer, pl_module) -> None:
        import signal
        import threading

        self._last_step = trainer.global_step
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(self.signum, self._handler)

    def on_train_end(self, trainer, pl_module) -> None:
        import signal

        if self._previous is not None:
            signal.signal(self.signum, self._previous)
            self._previous = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self._last_step:
            return  # inside an accumulation window: the step is not complete yet
        self._last_step = trainer.global_step
        if not trainer.strategy.reduce_boolean_decision(self._flag, all=False):
            return
        self._flag = False
        path = trainer._checkpoint_connector.hpc_save_path(trainer.default_root_dir)
        trainer.save_checkpoint(path)
        rank_zero_info(f"SLURM pre-emption signal: saved {path} at optimiser step {trainer.global_step}")
        if trainer.is_global_zero:
            self._requeue()
        trainer.should_stop = True
        self.stopped = True

    @staticmethod
    def _requeue() -> None:
        import subprocess

        job = os.environ.get("SLURM_JOB_ID")
        if os.environ.get("SLURM_ARRAY_JOB_ID") is not None:
            job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
        if not job:
            rank_zero_info("SLURM pre-emption signal outside a SLURM job: not requeued")
            return
        result = subprocess.call(["scontrol", "requeue", job])
        rank_zero_info(f"requeue of SLURM job {job}: {'done' if result == 0 else f'failed (exit {result})'}")


# SparseTraining's defaults, stated once in swtasks.sparse: the kernel kind's (for method='unstructured' too)
# over the schedule's shared ones, and the unstructured kind's layer-density rule
_SPARSE_DEFAULTS = {**DynamicSparsity.__init__.__kwdefaults__, **KernelSparsity.__init__.__kwdefaults__,
                    "init": UnstructuredSparsity.__init__.__kwdefaults__["init"]}


class SparseTraining(Callback):
    """Dynamic sparse training: ``method='kernel'`` (default) is the shift-wise operator's per-small-kernel
    sparsity (``swtasks.sparse.KernelSparsity``), ``method='unstructured'`` SLaK's per-weight sparsity of the
    large-kernel convolutions (``swtasks.sparse.UnstructuredSparsity``, layer densities by ``init``: snip,
    erk or uniform; no path alignment). The defaults are KernelSparsity's, for both methods.

    Masks are set from SNIP scores on the first training batch (unless a checkpoint brought them), the
    weights are re-masked after every optimiser step, every ``update_interval`` optimiser steps kernels are
    pruned and regrown on a cosine-decayed rate, and the prune step of every ``align_interval``-th such
    update (counted in updates, like the reference's ``sparse_gap``) aligns the paths' masks. Masks are
    model buffers, so they are in every checkpoint (and in exported backbones); the schedule's counters
    and generator are this callback's state, so ``--ckpt_path last`` resumes the schedule exactly.
    """

    def __init__(
        self,
        sparsity: float = _SPARSE_DEFAULTS["sparsity"],
        update_interval: int | None = _SPARSE_DEFAULTS["update_interval"],
        prune_rate: float = _SPARSE_DEFAULTS["prune_rate"],
        final_prune_rate: float = _SPARSE_DEFAULTS["final_prune_rate"],
        align_interval: int | None = _SPARSE_DEFAULTS["align_interval"],
        dense_threshold: float = _SPARSE_DEFAULTS["dense_threshold"],
        seed: int = _SPARSE_DEFAULTS["seed"],
        method: str = "kernel",
        init: str = _SPARSE_DEFAULTS["init"],
    ):
        super().__init__()
        if method not in ("kernel", "unstructured"):
            raise InputError(f"SparseTraining: method must be 'kernel' or 'unstructured', got {method!r}")
        self.method = method
        self.kwargs = dict(
            sparsity=sparsity,
            update_interval=update_interval,
            prune_rate=prune_rate,
            final_prune_rate=final_prune_rate,
            align_interval=align_interval,
            dense_threshold=dense_threshold,
            seed=seed,
        )
        if method == "unstructured":  # no paths to align; layer densities from `init`
            self.kwargs.update(init=init, align_interval=None)
        self.sparsity = None
        self._pending: dict | None = None
        self._last_step = -1

    def on_fit_start(self, trainer, pl_module) -> None:
        cls = KernelSparsity if self.method == "kernel" else UnstructuredSparsity
        try:
            self.sparsity = cls(
                _backbone(pl_module), total_steps=max(1, int(trainer.estimated_stepping_batches)), **self.kwargs
            )
        except ValueError as e:
            raise InputError(f"SparseTraining: {e}") from e
        if self._pending is not None:
            self.sparsity.load_state_dict(self._pending)
            self._pending = None

    def on_train_start(self, trainer, pl_module) -> None:
        # here, not in on_fit_start: Lightning restores global_step from a checkpoint in between, and a
        # stale value would count a resumed run's first accumulated batch as an optimiser step
        self._last_step = trainer.global_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.sparsity is None or self.sparsity.initialized:
            return
        x, y = batch[0], batch[1]
        if getattr(pl_module.hparams, "channels_last", False):
            x = x.contiguous(memory_format=torch.channels_last)
        densities = self.sparsity.init_masks((x, y), F.cross_entropy, optimizer=trainer.optimizers)
        rank_zero_info(
            f"sparse training ({self.method}): {len(densities)} layers, overall density "
            f"{self.sparsity.density():.3f} (target {1 - self.kwargs['sparsity']:.3f})"
        )
        ema = getattr(pl_module, "ema", None)
        if ema is not None:
            ema.copy_buffers(_backbone(pl_module))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.sparsity is None or trainer.global_step == self._last_step:
            return  # no optimiser step in this batch (gradient accumulation)
        self._last_step = trainer.global_step
        self.sparsity.step(trainer.optimizers)
        pl_module.log("sparse_density", self.sparsity.density(), on_step=True, on_epoch=False)

    def state_dict(self) -> dict[str, Any]:
        if self.sparsity is not None and self.sparsity.initialized:
            return self.sparsity.state_dict()
        return dict(self._pending or {})

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = dict(state_dict) if state_dict else None


# ---------------------------------------------------------------------------------------------- schedules
class StepSchedule(Callback):
    """Set a value on the backbone before every training step, following a schedule.

    The generic hook for per-step schedules that some backbones need, e.g. KernelWarehouse's attention
    temperature falling linearly from 1 to 0 over the first 20 epochs::

        - class_path: swtasks.cls.StepSchedule
          init_args: {attribute: temperature, start: 1.0, end: 0.0, until_epoch: 20}

    The value at optimiser step s is ``start`` before ``from_epoch``/``from_step``, ``end`` after
    ``until_epoch``/``until_step``, and linear (or cosine) in between. With ``method`` the backbone's
    ``method(value)`` is called; otherwise ``attribute`` is assigned on every sub-module that has it.
    It depends only on the global step, so resumed runs continue the schedule exactly.
    """

    def __init__(
        self,
        attribute: str,
        start: float,
        end: float,
        until_epoch: float | None = None,
        until_step: int | None = None,
        from_epoch: float = 0.0,
        from_step: int | None = None,
        kind: Literal["linear", "cosine"] = "linear",
        method: str | None = None,
        log: bool = True,
    ):
        super().__init__()
        if (until_epoch is None) == (until_step is None):
            raise InputError("StepSchedule: give exactly one of until_epoch and until_step")
        if kind not in ("linear", "cosine"):
            raise InputError(f"StepSchedule: kind must be 'linear' or 'cosine', got {kind!r}")
        self.attribute, self.start, self.end = attribute, float(start), float(end)
        self.until_epoch, self.until_step = until_epoch, until_step
        self.from_epoch, self.from_step = from_epoch, from_step
        self.kind, self.method, self.log = kind, method, log
        self._targets: list[torch.nn.Module] | None = None

    def value_at(self, step: int, per_epoch: int) -> float:
        s0 = self.from_step if self.from_step is not None else self.from_epoch * per_epoch
        s1 = self.until_step if self.until_step is not None else self.until_epoch * per_epoch
        if s1 <= s0:
            return self.end if step >= s1 else self.start
        t = min(1.0, max(0.0, (step - s0) / (s1 - s0)))
        if self.kind == "cosine":
            t = 0.5 * (1 - math.cos(math.pi * t))
        return self.start + (self.end - self.start) * t

    def _resolve(self, pl_module) -> None:
        net = _backbone(pl_module)
        if self.method is not None:
            if not callable(getattr(net, self.method, None)):
                raise InputError(f"StepSchedule: the backbone {type(net).__name__} has no method {self.method!r}")
            self._targets = []
            return
        self._targets = [
            m
            for m in net.modules()
            if hasattr(m, self.attribute) and not isinstance(getattr(m, self.attribute), (torch.nn.Module, torch.Tensor))
        ]
        if not self._targets:
            raise InputError(
                f"StepSchedule: no module of the backbone {type(net).__name__} has an attribute {self.attribute!r}"
            )

    def _apply(self, trainer, pl_module) -> float:
        if self._targets is None:
            self._resolve(pl_module)
        v = self.value_at(trainer.global_step, steps_per_epoch(trainer))
        if self.method is not None:
            getattr(_backbone(pl_module), self.method)(v)
        else:
            for m in self._targets:
                setattr(m, self.attribute, v)
        return v

    def on_fit_start(self, trainer, pl_module) -> None:
        self._apply(trainer, pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        v = self._apply(trainer, pl_module)
        if self.log:
            pl_module.log(f"schedule_{self.attribute if self.method is None else self.method}", v, on_step=True, on_epoch=False)


# ---------------------------------------------------------------------------------------------- curves
class LearningCurves(Callback):
    """Records the training loss (every ``every_n_steps``) and the validation metrics (every validation),
    keeps them in the checkpoint (so a resumed run plots the whole history) and writes ``curves.png``
    (loss and accuracy against epochs) next to the logs at the end of ``fit``.
    """

    def __init__(self, dirpath: str | None = None, filename: str = "curves.png", every_n_steps: int | None = None):
        super().__init__()
        self.dirpath, self.filename, self.every_n_steps = dirpath, filename, every_n_steps
        self.train: list[tuple[float, float]] = []  # (epoch position, loss)
        self.val: list[dict[str, float]] = []  # {"epoch": e, "val_loss": ..., "val_acc1": ...}
        self.plot_path: str | None = None
        self._per_epoch = 1

    def on_train_start(self, trainer, pl_module) -> None:
        self._per_epoch = steps_per_epoch(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        n = self.every_n_steps or trainer.log_every_n_steps
        if batch_idx % max(1, n) or outputs is None:
            return
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            self.train.append((trainer.global_step / self._per_epoch, float(loss.detach())))

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        row = {"epoch": trainer.current_epoch + 1, "step": trainer.global_step}
        for k, v in trainer.callback_metrics.items():
            if k.startswith("val") and isinstance(v, torch.Tensor) and v.numel() == 1:
                row[k] = float(v)
        self.val.append(row)

    def state_dict(self) -> dict[str, Any]:
        return {"train": list(self.train), "val": list(self.val)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.train = [tuple(t) for t in state_dict.get("train", [])]
        self.val = [dict(v) for v in state_dict.get("val", [])]

    def setup(self, trainer, pl_module, stage: str) -> None:
        # trainer.log_dir is a collective call under DDP: resolve it on every rank, write on rank 0
        if stage == "fit":
            d = self.dirpath or trainer.log_dir or trainer.default_root_dir
            self._out = os.path.join(d, self.filename)

    @rank_zero_only
    def on_fit_end(self, trainer, pl_module) -> None:
        self.plot_path = self.write(self._out)

    @rank_zero_only
    def on_exception(self, trainer, pl_module, exception) -> None:
        if (self.train or self.val) and getattr(self, "_out", None):
            self.plot_path = self.write(self._out)

    def write(self, path: str) -> str | None:
        if not self.train and not self.val:
            return None
        from matplotlib.figure import Figure

        fig = Figure(figsize=(11, 4.2), dpi=110)
        ax_l, ax_a = fig.subplots(1, 2)
        if self.train:
            xs, ys = zip(*self.train)
            ax_l.plot(xs, ys, color="tab:blue", alpha=0.35, lw=0.8, label="train (step)")
            if len(ys) >= 5:
                k = max(2, len(ys) // 25)
                sm = [sum(ys[max(0, i - k + 1) : i + 1]) / len(ys[max(0, i - k + 1) : i + 1]) for i in range(len(ys))]
                ax_l.plot(xs, sm, color="tab:blue", lw=1.6, label=f"train (mean of {k})")
        for key, color, label in (("val_loss", "tab:orange", "val"), ("val_ema_loss", "tab:green", "val EMA")):
            pts = [(r["epoch"], r[key]) for r in self.val if key in r]
            if pts:
                ax_l.plot(*zip(*pts), "o-", color=color, label=label)
        ax_l.set_xlabel("epoch")
        ax_l.set_ylabel("loss")
        ax_l.set_title("loss")
        ax_l.grid(alpha=0.3)
        ax_l.legend(fontsize=8)
        for key, style, label in (
            ("val_acc1", "o-", "val top-1"),
            ("val_acc5", "s--", "val top-5"),
            ("val_ema_acc1", "^-", "val EMA top-1"),
        ):
            pts = [(r["epoch"], 100.0 * r[key]) for r in self.val if key in r]
            if pts:
                ax_a.plot(*zip(*pts), style, label=label)
        ax_a.set_xlabel("epoch")
        ax_a.set_ylabel("accuracy (%)")
        ax_a.set_title("validation accuracy")
        ax_a.set_ylim(0, 100)
        ax_a.grid(alpha=0.3)
        if self.val:
            ax_a.legend(fontsize=8)
        fig.tight_layout()
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fig.savefig(path)
        return path


# ---------------------------------------------------------------------------------------------- predict
class PredictionWriter(BasePredictionWriter):
    """Writes ``predictions.csv`` (file, top-1 class, top-k classes and probabilities) after ``predict``, and
    optionally a contact sheet (``swtasks.cls.contact_sheet``): the first ``sheet_images`` images in a grid
    of ``sheet_columns`` columns with their top-3 classes and probabilities.

    Each row is one file, named by the index the data set reports for the image it actually read, in file
    order: a file skipped as unreadable (``data.corrupt_images=skip``) gets no row and is not on the sheet
    (``skipped`` lists them), and no file is listed twice.

    Args:
        output: the CSV path (default ``<default_root_dir>/predictions.csv``).
        contact_sheet: ``true`` writes ``contact_sheet.png`` next to the CSV; a string is the PNG path.
        sheet_images, sheet_columns, sheet_thumb: images on the sheet, columns, thumbnail size in pixels.
    """

    def __init__(
        self,
        output: str | None = None,
        contact_sheet: bool | str = False,
        sheet_images: int = 64,
        sheet_columns: int = 8,
        sheet_thumb: int = 128,
    ):
        super().__init__(write_interval="epoch")
        if sheet_images < 1 or sheet_columns < 1 or sheet_thumb < 8:
            raise InputError("predictions.sheet_images and sheet_columns must be >= 1, sheet_thumb >= 8")
        self.output = output
        self.contact_sheet = contact_sheet
        self.sheet_images, self.sheet_columns, self.sheet_thumb = sheet_images, sheet_columns, sheet_thumb
        self.path: str | None = None
        self.sheet_path: str | None = None
        self.skipped: list[str] = []  # files without a row (unreadable, skipped); one process only

    @staticmethod
    def _ranked(path: str, trainer) -> str:
        if trainer.world_size > 1:
            root, ext = os.path.splitext(path)
            return f"{root}.rank{trainer.global_rank}{ext}"
        return path

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        dm = trainer.datamodule
        names = list(getattr(dm, "classes", None) or [])
        paths = dm.predict_paths() if hasattr(dm, "predict_paths") else None
        out = self._ranked(self.output or os.path.join(trainer.default_root_dir, "predictions.csv"), trainer)
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        preds = predictions[0] if predictions and isinstance(predictions[0], list) else predictions
        idx_lists = batch_indices[0] if batch_indices and isinstance(batch_indices[0], list) else batch_indices
        rows = []  # (sample index, [(class, prob), ...])
        unique = True
        for b, pred in enumerate(preds):
            if paths and "item" in pred:  # the file each image was read from (a skipped file's slot holds the next)
                ids = [int(i) for i in pred["item"].tolist()]
            elif idx_lists:
                ids = idx_lists[b]
            else:
                ids, unique = range(len(pred["indices"])), False
            for row, i in enumerate(ids):
                top = pred["indices"][row].tolist()
                cls = [names[t] if t < len(names) else str(t) for t in top]
                rows.append((i, list(zip(cls, pred["probs"][row].tolist()))))
        if unique:  # one row per file (a skipped file's stand-in, a distributed sampler's padding), in file order
            rows = sorted({i: top for i, top in reversed(rows)}.items())
            if paths and trainer.world_size == 1:
                done = {i for i, _ in rows}
                self.skipped = [p for i, p in enumerate(paths) if i not in done]
        with open(out, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["index", "file", "top1", "topk_classes", "topk_probs"])
            for i, top in rows:
                w.writerow(
                    [i, paths[i] if paths else "", top[0][0], " ".join(c for c, _ in top), " ".join(f"{p:.4f}" for _, p in top)]
                )
        self.path = out
        if self.contact_sheet:
            self.sheet_path = self._write_sheet(trainer, out, rows, paths, set(names))

    def _write_sheet(self, trainer, csv_path: str, rows, paths, names: set[str]) -> str | None:
        from PIL import Image

        from .contact_sheet import write_contact_sheet
        from .data import read_rgb

        if not paths:
            rank_zero_info("predictions.contact_sheet: the predicted data are not image files; no sheet written")
            return None
        if isinstance(self.contact_sheet, str):
            target = self.contact_sheet
        else:
            target = os.path.join(os.path.dirname(os.path.abspath(csv_path)), "contact_sheet.png")
        target = self._ranked(target, trainer)
        limit = getattr(getattr(trainer.datamodule, "hparams", None), "max_image_pixels", None)
        chosen, images = [], []
        for i, top in rows:
            if len(images) == self.sheet_images:
                break
            try:
                images.append(read_rgb(paths[i], limit))
            except (OSError, ValueError, Image.DecompressionBombError) as e:  # read for the CSV, unreadable now
                rank_zero_warn(f"contact sheet: leaving out {paths[i]}, unreadable now: {e}")
                continue
            chosen.append((i, top))
        if not images:
            rank_zero_info("predictions.contact_sheet: no readable image to show; no sheet written")
            return None
        truth = [os.path.basename(os.path.dirname(paths[i])) for i, _ in chosen]
        truth = [t if t in names else None for t in truth]
        write_contact_sheet(
            target, images, [top for _, top in chosen], truth, columns=self.sheet_columns, thumb=self.sheet_thumb
        )
        return target
