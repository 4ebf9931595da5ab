"""The LightningCLI behind ``tools/train_cls.py`` (fit / validate / test / predict).

Defaults added on top of Lightning's: a checkpoint callback (``--checkpoint.*``: best by val_acc1 plus
``last.ckpt`` in ``<default_root_dir>/checkpoints``, refreshed every ``save_last_every_n_steps`` steps and on
SIGTERM, so ``--ckpt_path last`` finds a recent state), CSV and TensorBoard loggers under
``<default_root_dir>/{csv,tensorboard}``, a learning-rate monitor, the learning-curve plot (``--curves.*``),
atomic checkpoint files read weights-only, and a summary printed at the end of each subcommand.
``fit --lr_find`` runs Lightning's learning-rate range test instead of training; ``predict`` writes
predictions.csv and, with ``--predictions.contact_sheet true``, a contact sheet (``--predictions.*``).

The data module gets the backbone's data config through a link (``model.backbone`` ->
``data.data_config``): it never reads the LightningModule.
"""

from __future__ import annotations

import inspect
import os
import sys
import time
from pathlib import Path

from lightning.fabric.plugins.environments import ClusterEnvironment, SLURMEnvironment
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from lightning.pytorch.plugins.io import CheckpointIO

from .callbacks import Checkpoint, LearningCurves, PredictionWriter, SlurmRequeue
from .data import ImageClassificationDataModule
from .errors import USER_ERRORS, one_line
from .io import AtomicCheckpointIO, read_lightning_checkpoint
from .module import ClassificationModule
from .transforms import data_config

DEFAULT_ROOT = "runs/cls"


def _pct(v) -> str:
    return "n/a" if v is None else f"{100.0 * float(v):.2f}%"


def backbone_data_config(backbone) -> dict | None:
    """The link model.backbone -> data.data_config: the registry's data config of a backbone name (tuples as
    lists, so that the saved config.yaml parses back to the same value)."""
    if not isinstance(backbone, str):
        return None
    return {k: list(v) if isinstance(v, tuple) else v for k, v in data_config(backbone).items()}


class ClassificationCLI(LightningCLI):
    def __init__(self, args=None, run: bool = True, **kwargs):
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("seed_everything_default", 0)
        kwargs.setdefault("auto_configure_optimizers", False)  # the recipe lives in ClassificationModule
        self._t0 = time.time()
        self._lr_found: str | None = None
        self._hparams_from: str | None = None
        super().__init__(ClassificationModule, ImageClassificationDataModule, args=args, run=run, **kwargs)

    # ------------------------------------------------------------------ parser
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(Checkpoint, "checkpoint")
        parser.add_lightning_class_args(LearningCurves, "curves")
        parser.link_arguments("model.backbone", "data.data_config", compute_fn=backbone_data_config)
        parser.set_defaults(
            {
                "trainer.default_root_dir": DEFAULT_ROOT,
                "checkpoint.monitor": "val_acc1",
                "checkpoint.mode": "max",
                "checkpoint.save_top_k": 1,
                "checkpoint.save_last": True,
                "checkpoint.save_last_every_n_steps": 500,
                "checkpoint.filename": "best-epoch{epoch:03d}-acc1{val_acc1:.4f}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )

    def _prepare_subcommand_parser(self, klass, subcommand: str, **kwargs):
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand == "fit":
            from jsonargparse import ActionYesNo

            parser.add_argument(
                "--lr_find",
                action=ActionYesNo,
                default=False,
                help="Run Lightning's learning-rate range test instead of training: print the suggested "
                "model.lr and write lr_find.png to the default_root_dir.",
            )
        elif subcommand == "predict":
            parser.add_lightning_class_args(PredictionWriter, "predictions")
        return parser

    def _parse_ckpt_path(self) -> None:
        """Take the model's hyper-parameters from ``--ckpt_path`` (as LightningCLI does), reading the file
        weights-only: a missing, truncated or corrupt checkpoint is one error naming the file."""
        sub = self.config.get("subcommand")
        path = self.config[sub].get("ckpt_path") if sub else None
        if not path or not Path(path).is_file():  # "last", "best", URLs: read by the trainer's checkpoint IO
            return
        ckpt = read_lightning_checkpoint(path)
        hparams = dict(ckpt.get("hyper_parameters") or {})
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        else:  # options this version no longer has (e.g. model.pretrained, now model.weights) are dropped
            accepted = inspect.signature(ClassificationModule.__init__).parameters
            dropped = sorted(k for k in hparams if k not in accepted)
            for k in dropped:
                hparams.pop(k)
            if dropped:
                print(f"{path}: ignoring model options this version does not have: {', '.join(dropped)}", file=sys.stderr)
        self._hparams_from = str(path)
        try:
            self.config = self.parser.parse_object({sub: {"model": hparams}}, self.config)
        except SystemExit:
            sys.stderr.write(f"the hyper-parameters of {path} do not parse as model options\n")
            raise

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        if self._hparams_from:  # for messages: the model's options are the checkpoint's
            self.model.hparams_from = self._hparams_from

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
        plugins = cfg.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins = plugins + [AtomicCheckpointIO()]
        if self.subcommand == "fit" and SLURMEnvironment.detect() and not any(
            isinstance(p, ClusterEnvironment) for p in plugins
        ):
            # requeue at a step boundary (SlurmRequeue), not inside Lightning's signal handler
            plugins.append(SLURMEnvironment(auto_requeue=False))
            extra_callbacks.append(SlurmRequeue())
        kwargs["plugins"] = plugins
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

    def fit(self, model, **kwargs) -> None:
        self._lr_found = None
        if self._get(self.config_init, "lr_find", default=False):
            self._lr_found = self._lr_find(model, kwargs.get("datamodule"))
            return
        self.trainer.fit(model, **kwargs)

    def _lr_find(self, model, datamodule) -> str:
        from lightning.pytorch.tuner import Tuner

        finder = Tuner(self.trainer).lr_find(model, datamodule=datamodule, update_attr=False)
        root = self.trainer.default_root_dir
        os.makedirs(root, exist_ok=True)
        plot = os.path.join(root, "lr_find.png")
        finder.plot(suggest=True).savefig(plot)
        lr = finder.suggestion()
        s = model.optim_summary
        total, base = s.get("total_batch"), model.hparams.base_batch_size
        if lr is None:
            msg = f"lr range test: no suggestion (too few points with a falling loss); plot: {plot}"
        elif base:
            msg = (
                f"lr range test: suggested lr {lr:.3g} at total batch {total} ({s.get('batch_makeup')}), "
                f"i.e. --model.lr {lr * base / total:.3g} (model.lr is stated for model.base_batch_size={base}); "
                f"plot: {plot}"
            )
        else:
            msg = f"lr range test: suggested --model.lr {lr:.3g} (model.base_batch_size=null); plot: {plot}"
        if self._rank0():
            print(msg, flush=True)
        return msg

    def after_fit(self) -> None:
        if not self._rank0() or self._lr_found:
            return
        t = self.trainer
        elapsed = time.time() - self._t0
        ck = t.checkpoint_callback
        curves = next((c for c in t.callbacks if isinstance(c, LearningCurves)), None)
        lines = [
            "",
            f"fit finished: {t.current_epoch} epochs, {t.global_step} optimiser steps in {elapsed / 60:.1f} min",
        ]
        described = getattr(self.model, "describe_optimisation", lambda: "")()
        if described:
            lines.append("  " + described)
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
        if w is not None and w.skipped:
            shown = ", ".join(w.skipped[:3]) + (f" and {len(w.skipped) - 3} more" if len(w.skipped) > 3 else "")
            print(f"{len(w.skipped)} unreadable file(s) skipped, without a row: {shown}", flush=True)
        if w is not None and w.sheet_path:
            print(f"contact sheet written to {w.sheet_path}", flush=True)


def main(args=None) -> None:
    """Entry point: user errors (bad config values, data folders, model names, unreadable images or
    checkpoints, a non-finite loss) print one line and exit 2; set SWTASKS_DEBUG=1 for their traceback."""
    try:
        ClassificationCLI(args=args)
    except USER_ERRORS as e:
        if os.environ.get("SWTASKS_DEBUG"):
            raise
        prog = os.path.basename(sys.argv[0]) or "train_cls.py"
        print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
        raise SystemExit(2) from None
