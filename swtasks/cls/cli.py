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
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, OnExceptionCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException

from ..checkpoint import is_remote
from ..errors import EXIT_PREEMPTED, EXIT_USER_ERROR
from .callbacks import Checkpoint, LearningCurves, PredictionWriter, SlurmRequeue
from .data import ImageClassificationDataModule
from .errors import USER_ERRORS, InputError, one_line
from .io import AtomicCheckpointIO, model_options_from_file, read_lightning_checkpoint
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
        from jsonargparse import ActionYesNo

        parser.add_argument(
            "--trust_pickle",
            type=bool,
            default=False,
            help="Read --ckpt_path with full unpickling, which runs code the file holds: only for files you "
            "trust (without it checkpoints are read weights-only). --model.trust_pickle does the same for "
            "--model.weights.",
        )
        parser.add_argument(
            "--allow_download",
            type=bool,
            default=False,
            help="--ckpt_path may be an http(s) URL: it is downloaded to the swtasks cache and read like a "
            "local file (weights-only unless --trust_pickle). Without it only local files are read.",
        )
        if subcommand == "fit":
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
        weights-only: a missing, truncated or corrupt checkpoint is one error naming the file. Only model
        options are taken, and never one that loads another file or picks code to run (model_options_from_file)."""
        sub = self.config.get("subcommand")
        cfg = self.config[sub] if sub else None
        path = cfg.get("ckpt_path") if cfg else None
        if not path or path in ("last", "best", "hpc", "registry") or not (Path(path).is_file() or is_remote(path)):
            return  # "last"/"best" are found by the trainer; a missing path is named by the checkpoint IO
        ckpt = read_lightning_checkpoint(path, **self._ckpt_read_options(), for_trainer=True)
        hparams = model_options_from_file(ckpt.get("hyper_parameters"), source=str(path))
        if not hparams:
            return
        accepted = inspect.signature(ClassificationModule.__init__).parameters
        dropped = sorted(k for k in hparams if k not in accepted)  # options this version no longer has
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

    def _ckpt_read_options(self) -> dict:
        """How ``--ckpt_path`` is read: the subcommand's ``--trust_pickle`` / ``--allow_download`` opt-ins."""
        sub = self.config.get("subcommand")
        cfg = self.config[sub] if sub else self.config
        return {"trust_pickle": bool(cfg.get("trust_pickle")), "allow_download": bool(cfg.get("allow_download"))}

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        if self._hparams_from:  # for messages: the model's options are the checkpoint's
            self.model.hparams_from = self._hparams_from

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        check_trainer_options(cfg.trainer)
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
            plugins = plugins + [AtomicCheckpointIO(**self._ckpt_read_options())]
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

    def _resolve_ckpt_path(self) -> None:
        """``--ckpt_path last`` / ``best``: the checkpoint the checkpoint callback wrote, or one error naming the
        folder it looked in (Lightning would warn and train from scratch, or evaluate an untrained model, for a
        missing ``last``, and fail with a traceback for ``best`` in a new process). ``best`` is the best
        checkpoint this process saw, else the one recorded in the run's newest ``last.ckpt``."""
        sub = self.subcommand
        path = self._get(self.config_init, "ckpt_path") if sub else None
        if path not in ("last", "best"):
            return
        callbacks = [c for c in self.trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)]
        where = ", ".join(str(c.dirpath) for c in callbacks if c.dirpath) or "no folder (no checkpoint callback)"
        lasts: set[str] = set()
        for c in callbacks:
            lasts |= c._find_last_checkpoints(self.trainer)
        lasts |= {c.ckpt_path for c in self.trainer.callbacks if isinstance(c, OnExceptionCheckpoint)}
        lasts = {p for p in lasts if p and os.path.isfile(p)}
        hint = "does --trainer.default_root_dir (or --checkpoint.dirpath) name the run's folder? or give a checkpoint file"
        if path == "last":
            if not lasts:
                raise InputError(f"--ckpt_path last: no last checkpoint (last.ckpt) in {where}; {hint}")
            return
        best = self._best_checkpoint(callbacks, lasts)
        if best is None:
            raise InputError(f"--ckpt_path best: no best checkpoint recorded in {where}; {hint}")
        self.config_init[sub]["ckpt_path"] = best  # Lightning's "best" knows only this process's fit

    def _best_checkpoint(self, callbacks: list, lasts: set[str]) -> str | None:
        for c in callbacks:
            if c.best_model_path and os.path.isfile(c.best_model_path):
                return c.best_model_path
        for last in sorted(lasts, key=os.path.getmtime, reverse=True):
            states = read_lightning_checkpoint(last).get("callbacks") or {}
            for c in callbacks:
                recorded = (states.get(c.state_key) or {}).get("best_model_path")
                if not recorded:
                    continue
                moved = os.path.join(str(c.dirpath), os.path.basename(recorded))  # the run folder was moved
                for candidate in (recorded, moved):
                    if os.path.isfile(candidate):
                        return candidate
        return None

    def before_fit(self) -> None:
        self._t0 = time.time()
        self._resolve_ckpt_path()

    def before_validate(self) -> None:
        self._resolve_ckpt_path()

    def before_test(self) -> None:
        self._resolve_ckpt_path()

    def before_predict(self) -> None:
        self._resolve_ckpt_path()

    @property
    def preempted(self) -> bool:
        """The fit was stopped by SLURM's pre-emption signal (SlurmRequeue), after saving its checkpoint."""
        trainer = getattr(self, "trainer", None)
        return trainer is not None and any(getattr(c, "stopped", False) for c in trainer.callbacks if isinstance(c, SlurmRequeue))

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
        done = "stopped by the pre-emption signal (exit status 143)" if self.preempted else "finished"
        lines = [
            "",
            f"fit {done}: {t.current_epoch} epochs, {t.global_step} optimiser steps in {elapsed / 60:.1f} min",
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


def check_trainer_options(trainer) -> None:
    """Trainer settings Lightning takes without a clear error (a ZeroDivisionError, a bare ValueError or
    TypeError later, or a run that silently makes no sense): one InputError naming the option. What Lightning
    checks itself (max_epochs, max_steps, limit_*_batches, devices 0, an accelerator that is not there, ...)
    raises its MisconfigurationException, which main() prints as one line too."""
    get = trainer.get if hasattr(trainer, "get") else lambda k: getattr(trainer, k, None)

    def whole(value) -> int | None:
        if isinstance(value, bool):
            return None
        if isinstance(value, int):
            return value
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
        return None

    for name in ("accumulate_grad_batches", "num_nodes", "check_val_every_n_epoch"):
        value = get(name)
        if value is not None and (whole(value) is None or whole(value) < 1):
            raise InputError(f"trainer.{name} must be an integer >= 1, got {value!r}")
    devices = get("devices")
    n = whole(devices)
    if (n is not None and n < -1) or (isinstance(devices, (list, tuple)) and not devices):
        raise InputError(
            f"trainer.devices must be a count >= 1, -1 (all), 'auto' or a list of device ids, got {devices!r}"
        )
    for name in ("val_check_interval", "gradient_clip_val"):
        value = get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not value >= 0:
            raise InputError(f"trainer.{name} must be >= 0, got {value!r}")
    value = get("val_check_interval")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0:
        raise InputError("trainer.val_check_interval must be > 0 (a fraction of the epoch, or a number of batches)")
    accelerator = get("accelerator")
    if isinstance(accelerator, str) and accelerator.lower() in ("gpu", "cuda"):
        from lightning.pytorch.accelerators import CUDAAccelerator, MPSAccelerator

        found = CUDAAccelerator.is_available() or (accelerator.lower() == "gpu" and MPSAccelerator.is_available())
        if not found:
            raise InputError(
                f"trainer.accelerator={accelerator}: no GPU is available to this process "
                "(torch.cuda.is_available() is False); use --trainer.accelerator cpu, or auto"
            )


def main(args=None) -> None:
    """Entry point: user errors (bad config values, data folders, model names, unreadable images or
    checkpoints, trainer settings Lightning refuses, a non-finite loss) print one line and exit 2; set
    SWTASKS_DEBUG=1 for their traceback. A fit stopped by SIGTERM or by SLURM's pre-emption signal, after
    saving its checkpoint, exits with status 143 (``swtasks.errors.EXIT_PREEMPTED``), never 0."""
    prog = os.path.basename(sys.argv[0]) or "train_cls.py"
    try:
        cli = ClassificationCLI(args=args)
    except SIGTERMException:  # Lightning's SystemExit with status 0: a scheduler would read it as done
        if getattr(rank_zero_only, "rank", 0) == 0:
            print(f"{prog}: stopped by SIGTERM (exit status {EXIT_PREEMPTED}); resume with --ckpt_path last", file=sys.stderr)
        raise SystemExit(EXIT_PREEMPTED) from None
    except (*USER_ERRORS, MisconfigurationException) as e:
        if os.environ.get("SWTASKS_DEBUG"):
            raise
        print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR) from None
    if cli.preempted:
        raise SystemExit(EXIT_PREEMPTED)
