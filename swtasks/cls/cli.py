"""The LightningCLI behind ``tools/train_cls.py`` (fit / validate / test / predict).

Defaults added on top of Lightning's: a ModelCheckpoint (``--checkpoint.*``: best by val_acc1 plus
``last.ckpt`` in ``<default_root_dir>/checkpoints``, so ``--ckpt_path last`` finds it), CSV and TensorBoard
loggers under ``<default_root_dir>/{csv,tensorboard}``, a learning-rate monitor, the learning-curve plot
(``--curves.*``), atomic checkpoint files, and a summary printed at the end of each subcommand.
"""

from __future__ import annotations

import os
import sys
import time

from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from lightning.pytorch.plugins.io import CheckpointIO

from .callbacks import LearningCurves, PredictionWriter
from .data import ImageClassificationDataModule
from .errors import InputError
from .io import AtomicCheckpointIO
from .module import ClassificationModule

DEFAULT_ROOT = "runs/cls"


def _pct(v) -> str:
    return "n/a" if v is None else f"{100.0 * float(v):.2f}%"


class ClassificationCLI(LightningCLI):
    def __init__(self, args=None, run: bool = True, **kwargs):
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("seed_everything_default", 0)
        kwargs.setdefault("auto_configure_optimizers", False)  # the recipe lives in ClassificationModule
        self._t0 = time.time()
        super().__init__(ClassificationModule, ImageClassificationDataModule, args=args, run=run, **kwargs)

    # ------------------------------------------------------------------ parser
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(LearningCurves, "curves")
        parser.set_defaults(
            {
                "trainer.default_root_dir": DEFAULT_ROOT,
                "checkpoint.monitor": "val_acc1",
                "checkpoint.mode": "max",
                "checkpoint.save_top_k": 1,
                "checkpoint.save_last": True,
                "checkpoint.filename": "best-epoch{epoch:03d}-acc1{val_acc1:.4f}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        root = cfg.trainer.default_root_dir or DEFAULT_ROOT
        if cfg.checkpoint.dirpath is None:
            cfg.checkpoint.dirpath = os.path.join(root, "checkpoints")

    def instantiate_trainer(self, **kwargs):
        cfg = self._get(self.config_init, "trainer", default={})
        root = cfg.get("default_root_dir") or DEFAULT_ROOT
        extra_callbacks = []
        logger = cfg.get("logger")
        if logger is None or logger is True:
            csv_logger = CSVLogger(root, name="csv")
            tb = TensorBoardLogger(root, name="tensorboard", version=csv_logger.version)
            kwargs["logger"] = [csv_logger, tb]
            logger = kwargs["logger"]
        if logger and logger is not False and self.subcommand == "fit":
            extra_callbacks.append(LearningRateMonitor(logging_interval="step"))
        if self.subcommand == "predict":
            extra_callbacks.append(PredictionWriter())
        plugins = cfg.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            kwargs["plugins"] = plugins + [AtomicCheckpointIO()]
        callbacks = list(cfg.get("callbacks") or []) + extra_callbacks
        kwargs["callbacks"] = callbacks
        return super().instantiate_trainer(**kwargs)

    # ------------------------------------------------------------------ summaries
    def _rank0(self) -> bool:
        return self.trainer.is_global_zero

    def _metric(self, key):
        v = self.trainer.callback_metrics.get(key)
        return None if v is None else float(v)

    def before_fit(self) -> None:
        self._t0 = time.time()

    def after_fit(self) -> None:
        if not self._rank0():
            return
        t = self.trainer
        elapsed = time.time() - self._t0
        ck = t.checkpoint_callback
        curves = next((c for c in t.callbacks if isinstance(c, LearningCurves)), None)
        lines = [
            "",
            f"fit finished: {t.current_epoch} epochs, {t.global_step} optimiser steps in {elapsed / 60:.1f} min",
        ]
        if self._metric("val_acc1") is None:
            lines.append("  final validation: none ran (the run stopped before the end of an epoch or has no val split)")
        else:
            lines.append(
                f"  final validation: top-1 {_pct(self._metric('val_acc1'))}, top-5 {_pct(self._metric('val_acc5'))}"
            )
        if self._metric("val_ema_acc1") is not None:
            lines.append(
                f"  final validation (EMA weights): top-1 {_pct(self._metric('val_ema_acc1'))}, "
                f"top-5 {_pct(self._metric('val_ema_acc5'))}"
            )
        if ck is not None:
            if ck.best_model_path:
                lines.append(f"  best checkpoint: {ck.best_model_path} (val_acc1 {_pct(ck.best_model_score)})")
            last = ck.last_model_path or os.path.join(ck.dirpath or "", "last.ckpt")
            lines.append(f"  last checkpoint: {last}   (resume: --ckpt_path last)")
        for lg in t.loggers:
            kind = "TensorBoard logs" if isinstance(lg, TensorBoardLogger) else "CSV logs"
            if isinstance(lg, Logger) and lg.log_dir:
                lines.append(f"  {kind}: {lg.log_dir}")
        if curves is not None and curves.plot_path:
            lines.append(f"  learning curves: {curves.plot_path}")
        print("\n".join(lines), flush=True)

    def _print_eval(self, split: str) -> None:
        if not self._rank0():
            return
        msg = f"{split}: top-1 {_pct(self._metric(f'{split}_acc1'))}  top-5 {_pct(self._metric(f'{split}_acc5'))}"
        if self._metric(f"{split}_ema_acc1") is not None:
            msg += (
                f"   (EMA weights: top-1 {_pct(self._metric(f'{split}_ema_acc1'))}  "
                f"top-5 {_pct(self._metric(f'{split}_ema_acc5'))})"
            )
        print(msg, flush=True)

    def after_validate(self) -> None:
        self._print_eval("val")

    def after_test(self) -> None:
        self._print_eval("test")

    def after_predict(self) -> None:
        if not self._rank0():
            return
        w = next((c for c in self.trainer.callbacks if isinstance(c, PredictionWriter)), None)
        if w is not None and w.path:
            print(f"predictions written to {w.path}", flush=True)


def main(args=None) -> None:
    """Entry point: user errors (bad config values, data folders, model names) print one line and exit 2;
    set SWTASKS_DEBUG=1 for their traceback."""
    try:
        ClassificationCLI(args=args)
    except InputError as e:
        if os.environ.get("SWTASKS_DEBUG"):
            raise
        prog = os.path.basename(sys.argv[0]) or "train_cls.py"
        print(f"{prog}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
