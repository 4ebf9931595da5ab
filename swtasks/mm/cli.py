"""Command-line entry points behind tools/{train,test}_{det,seg}.py: mmengine ``Runner`` with the usual options.

    python tools/train_det.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp] [--auto-scale-lr]
                              [--data-root DIR] [--cfg-options k=v ...] [--launcher none|pytorch|slurm]
    python tools/test_det.py  CONFIG CHECKPOINT [--work-dir DIR] [--out FILE] [--show-dir DIR] ...

Multi-GPU: ``torchrun --nproc_per_node=8 tools/train_det.py CONFIG --launcher pytorch``;
Slurm: ``srun --ntasks=16 --ntasks-per-node=8 --gres=gpu:8 python -u tools/train_det.py CONFIG --launcher slurm``.
Without a GPU, ``--launcher pytorch`` uses gloo and ``--amp`` bfloat16 autocast (swtasks.mm.devices).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import os.path as osp
from collections.abc import Sequence

from swtasks.checkpoint import fetch_remote, is_remote
from swtasks.errors import UserError

FRAMEWORKS = {"det": "mmdet", "seg": "mmseg"}


def _parser(task: str, mode: str) -> argparse.ArgumentParser:
    from mmengine.config import DictAction

    what = {"det": "a detector (MMDetection 3.x)", "seg": "a segmentor (MMSegmentation 1.x)"}[task]
    p = argparse.ArgumentParser(
        prog=f"tools/{mode}_{task}.py",
        description=f"{'Train' if mode == 'train' else 'Test'} {what} with a swtasks backbone.",
    )
    p.add_argument("config", help=f"config file (e.g. configs/{task}/...py)")
    if mode == "test":
        p.add_argument(
            "checkpoint", help="checkpoint written by the trainer (or by tools/reparameterize_mm.py)"
        )
    p.add_argument("--work-dir", help="where logs and checkpoints go (default: ./work_dirs/<config name>)")
    if mode == "train":
        p.add_argument(
            "--amp",
            action="store_true",
            help="automatic mixed precision: float16 with a dynamic loss scale on GPUs (AmpOptimWrapper), bfloat16 "
            "autocast without a GPU",
        )
        p.add_argument(
            "--auto-scale-lr",
            action="store_true",
            help="scale the lr linearly with the total batch size (auto_scale_lr)",
        )
        p.add_argument(
            "--resume",
            nargs="?",
            type=str,
            const="auto",
            help="resume from CHECKPOINT, or (no value) from the latest checkpoint in the work dir",
        )
    else:
        p.add_argument(
            "--out",
            help=("also dump the raw predictions: a .pkl file (det) or a directory of PNG label maps (seg)"),
        )
        p.add_argument(
            "--show-dir",
            help="draw the predictions (boxes and masks / label maps) of every test image into this "
            "directory with the framework's visualiser",
        )
    p.add_argument(
        "--data-root",
        help="dataset root replacing the config's (every dataloader's data_root and the evaluators' ann_file)",
    )
    p.add_argument(
        "--cfg-options",
        nargs="+",
        action=DictAction,
        help="override config entries, key=value (e.g. model.backbone.init_cfg.checkpoint=x.ckpt "
        "train_dataloader.batch_size=4)",
    )
    p.add_argument(
        "--skip-data-check",
        action="store_true",
        help="do not check the dataset files before building the Runner (swtasks.mm.data_check; see "
        "docs/reliability.md)",
    )
    from .own_data import add_arguments as add_own_data_arguments

    add_own_data_arguments(p, task, mode)  # --classes, --train-ann ... (swtasks.mm.own_data)
    p.add_argument(
        "--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none", help="job launcher"
    )
    add_loading_options(p)
    # torch.distributed.launch passes --local-rank (torchrun sets LOCAL_RANK instead)
    p.add_argument("--local_rank", "--local-rank", type=int, default=0, help=argparse.SUPPRESS)
    return p


def add_loading_options(p: argparse.ArgumentParser) -> None:
    """``--trust-pickle`` and ``--allow-download``: the user's opt-ins for every checkpoint a run reads
    (load_from, --resume, the test checkpoint, a backbone's init_cfg); see swtasks.mm.checkpoint_io."""
    p.add_argument(
        "--trust-pickle",
        action="store_true",
        help="let torch.load unpickle arbitrary objects in checkpoints (load_from, --resume, the test checkpoint, "
        "a backbone's init_cfg, downloaded files); only for files you trust. Without it checkpoints are read "
        "weights-only (plus the plain data types mmengine's own checkpoints hold)",
    )
    p.add_argument(
        "--allow-download",
        action="store_true",
        help="let a checkpoint be an http(s) URL: it is downloaded to the swtasks cache and read like a local "
        "file (weights-only unless --trust-pickle). Without it only local files are read.",
    )


def _replace_root(value, old: str | None, new: str):
    if isinstance(value, str) and old and value.startswith(old):
        return osp.join(new, value[len(old) :].lstrip("/"))
    return value


def set_data_root(cfg, new_root: str) -> list[str]:
    """Point every dataset of ``cfg`` (train/val/test dataloaders, wrapped datasets included) and the
    evaluators' ``ann_file`` at ``new_root``; returns the entries changed (for the log)."""
    changed = []

    def visit(node, path):
        if isinstance(node, dict):
            if "data_root" in node and isinstance(node["data_root"], str):
                old = node["data_root"]
                node["data_root"] = new_root
                changed.append(f"{path}.data_root")
                roots.append(old)
            for k, v in list(node.items()):
                visit(v, f"{path}.{k}")
        elif isinstance(node, (list, tuple)):
            for i, v in enumerate(node):
                visit(v, f"{path}[{i}]")

    roots: list[str] = []
    for key in ("train_dataloader", "val_dataloader", "test_dataloader"):
        if cfg.get(key) is not None:
            visit(cfg[key], key)
    if "data_root" in cfg and isinstance(cfg.data_root, str):
        roots.append(cfg.data_root)
        cfg.data_root = new_root
    old_roots = sorted(set(roots), key=len, reverse=True)
    for key in ("val_evaluator", "test_evaluator"):
        evs = cfg.get(key)
        if evs is None:
            continue
        for i, ev in enumerate(evs if isinstance(evs, (list, tuple)) else [evs]):
            if isinstance(ev, dict) and isinstance(ev.get("ann_file"), str):
                for old in old_roots:
                    new_value = _replace_root(ev["ann_file"], old, new_root)
                    if new_value != ev["ann_file"]:
                        ev["ann_file"] = new_value
                        changed.append(f"{key}[{i}].ann_file")
                        break
    return changed


def load_config(args, task: str, mode: str):
    from mmengine.config import Config

    if not osp.isfile(args.config):
        raise UserError(f"config file not found: {args.config}")
    try:
        cfg = Config.fromfile(args.config)
    except (SyntaxError, KeyError, ValueError, TypeError, ImportError, FileNotFoundError) as e:
        raise UserError(f"{args.config}: cannot read the config: {type(e).__name__}: {e}") from e
    cfg.launcher = args.launcher
    if args.cfg_options:
        try:
            cfg.merge_from_dict(args.cfg_options)
        except (TypeError, KeyError, ValueError) as e:
            raise UserError(f"--cfg-options: {e}") from e
    if args.data_root:
        set_data_root(cfg, args.data_root)
    from .own_data import prepare_config_data

    prepare_config_data(cfg, args, task, mode)  # demo data on first use; classes from the data (own_data)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get("work_dir") is None:
        cfg.work_dir = osp.join("./work_dirs", osp.splitext(osp.basename(args.config))[0])
    from . import devices  # registers the CPU wrappers a config may name

    for line in devices.configure(cfg, args.launcher, mode == "train" and args.amp):
        print(f"tools/{mode}_{task}.py: {line}", flush=True)
    if mode == "train":
        _add_exact_resume_hook(cfg)
        if args.auto_scale_lr:
            if not cfg.get("auto_scale_lr") or "base_batch_size" not in cfg.auto_scale_lr:
                raise UserError("--auto-scale-lr: the config has no auto_scale_lr.base_batch_size")
            cfg.auto_scale_lr.enable = True
        if args.resume == "auto":
            cfg.resume = True
            cfg.load_from = None
            _check_last_checkpoint(cfg.work_dir)
        elif args.resume is not None:
            cfg.resume = True
            cfg.load_from = args.resume
    else:
        cfg.load_from = args.checkpoint
        if args.out:
            _add_dump(cfg, task, args.out)
        if args.show_dir:
            add_show_dir(cfg, task, args.show_dir)
    return cfg


def _check_last_checkpoint(work_dir: str) -> None:
    """`--resume` without a path resumes from the file named in <work_dir>/last_checkpoint (mmengine starts
    from scratch when there is none). Stop with one line when that file names nothing usable, instead of
    mmengine's " can not be found"."""
    from swtasks.checkpoint import CheckpointError

    marker = osp.join(work_dir, "last_checkpoint")
    if not osp.isfile(marker):
        return
    with open(marker) as f:
        target = f.read().strip()
    if target and osp.isfile(target):
        return
    found = sorted(
        (osp.join(work_dir, n) for n in os.listdir(work_dir) if n.endswith(".pth")), key=osp.getmtime
    )
    hint = f"; the newest checkpoint there is {found[-1]} (--resume {found[-1]})" if found else ""
    raise CheckpointError(
        f"{marker} names {target!r}, which is not a file: resume from a given checkpoint with "
        f"--resume PATH{hint}"
    )


def _add_exact_resume_hook(cfg) -> None:
    """Resumed runs continue the uninterrupted run's random stream (swtasks.mm.exact_resume)."""
    from . import exact_resume  # importing registers the hook

    hooks = list(cfg.get("custom_hooks") or [])
    names = ("ExactResumeHook", exact_resume.ExactResumeHook)
    if not any(isinstance(h, dict) and h.get("type") in names for h in hooks):
        hooks.append(dict(type="ExactResumeHook"))
    cfg.custom_hooks = hooks


def add_show_dir(cfg, task: str, show_dir: str) -> str:
    """Draw every test prediction into ``show_dir`` with the framework's own hook and visualiser: mmdet's
    DetVisualizationHook (``test_out_dir``: one image per input, boxes and masks above its ``score_thr``,
    0.3), mmseg's SegVisualizationHook (the visualiser's ``save_dir``: label maps blended over the image,
    under ``vis_data/vis_image/``). The hook is turned on for every image (``draw=True``, ``interval=1``) and
    added when the config has none. Returns the absolute directory (docs/deploy.md)."""
    show_dir = osp.abspath(show_dir)  # mmdet joins a relative test_out_dir to work_dir/timestamp per batch
    hook_type = {"det": "DetVisualizationHook", "seg": "SegVisualizationHook"}[task]
    hooks = cfg.setdefault("default_hooks", {})
    hook = hooks.get("visualization") or dict(type=hook_type)
    hook.update(draw=True, interval=1)
    default = dict(type="DetLocalVisualizer" if task == "det" else "SegLocalVisualizer", name="visualizer")
    visualizer = cfg.get("visualizer") or default
    visualizer.setdefault("vis_backends", [dict(type="LocalVisBackend")])
    if task == "det":
        hook["test_out_dir"] = show_dir
    else:
        visualizer["save_dir"] = show_dir
    # mmengine keeps one visualizer instance per name for the whole process: a name of its own, so an
    # earlier run or inferencer in the same process (another task's visualizer, its save_dir) is not reused
    visualizer["name"] = f"swtasks_show:{task}:{show_dir}"
    cfg.visualizer = visualizer
    hooks["visualization"] = hook
    return show_dir


def _add_dump(cfg, task: str, out: str) -> None:
    if task == "det":
        if not out.endswith((".pkl", ".pickle")):
            raise UserError(f"--out must be a .pkl file for detection, got {out!r}")
        dump = dict(type="DumpDetResults", out_file_path=out)
        ev = cfg.test_evaluator
        cfg.test_evaluator = [*ev, dump] if isinstance(ev, (list, tuple)) else [ev, dump]
    else:
        # IoUMetric writes one PNG label map per image into output_dir
        evs = cfg.test_evaluator if isinstance(cfg.test_evaluator, (list, tuple)) else [cfg.test_evaluator]
        ious = [ev for ev in evs if ev.get("type") == "IoUMetric"]
        if not ious:
            raise UserError(
                f"--out needs an IoUMetric in test_evaluator, found {[e.get('type') for e in evs]}"
            )
        for ev in ious:
            ev["output_dir"] = out


def _build_runner(cfg):
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner

    if "runner_type" in cfg:
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)


def main(task: str, mode: str, argv: Sequence[str] | None = None):
    """Run ``tools/{mode}_{task}.py``; returns the Runner (train) or the metrics dict (test)."""
    if task not in FRAMEWORKS or mode not in ("train", "test"):
        raise ValueError(
            f"task must be one of {sorted(FRAMEWORKS)} and mode train/test, got {task!r}, {mode!r}"
        )
    args = _parser(task, mode).parse_args(argv)
    os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    prog = f"tools/{mode}_{task}.py"
    with user_errors_as_exit(prog):
        import swtasks.mm  # noqa: F401  (registers the backbones even for configs without custom_imports)

        from .checkpoint_io import checkpoint_loading, install

        install()  # atomic checkpoint writes, checked reads
        cfg = load_config(args, task, mode)
        for value in (cfg.get("load_from"), args.resume if mode == "train" else None):
            if isinstance(value, str) and value != "auto" and is_remote(value) and not args.allow_download:
                fetch_remote(value)  # refused here, before anything is built (the message names the opt-in)
        if not args.skip_data_check:
            check_data(cfg, mode)
        from .devices import init_process_group

        init_process_group(cfg)  # CPU (gloo): before the Runner, whose init_dist assumes CUDA
        with checkpoint_loading(args.trust_pickle, args.allow_download):
            runner = _build_runner(cfg)
            if mode == "train":
                runner.train()
                return runner
            check_checkpoint_fits(runner, cfg.load_from)
            return runner.test()


@contextlib.contextmanager
def user_errors_as_exit(prog: str):
    """A user error (swtasks.errors.UserError: unreadable or refused checkpoints, bad data, bad options)
    inside the block prints one line ``PROG: error: ...`` and exits with status 2 (SWTASKS_DEBUG=1 shows the
    traceback); anything else is a bug and keeps its traceback."""
    import sys

    from swtasks.errors import EXIT_USER_ERROR

    try:
        yield
    except UserError as e:
        if os.environ.get("SWTASKS_DEBUG"):
            raise
        text = "; ".join(line.strip() for line in str(e).splitlines() if line.strip())
        message = f"{prog}: error: {text}"
        print(message, file=sys.stderr, flush=True)
        raise ToolExit(message, EXIT_USER_ERROR) from None


class ToolExit(SystemExit):
    """SystemExit with the status of a user error whose ``str`` is the message the tool printed (for
    callers that run the tools in-process, e.g. tests)."""

    def __init__(self, message: str, code: int):
        super().__init__(code)
        self.message = message

    def __str__(self) -> str:
        return self.message


def check_checkpoint_fits(runner, checkpoint) -> None:
    """Before a test run: the checkpoint's model weights must fit the built model exactly (mmengine loads
    with strict=False and only logs the differences, so a checkpoint of another model would be evaluated
    as a partly random one). Raises CheckpointMismatchError naming the keys."""
    from mmengine.model import is_model_wrapper

    from swtasks.checkpoint import extract_state_dict

    from .checkpoint_io import load_from_local, require_fit

    if not checkpoint:
        return
    sd = extract_state_dict(load_from_local(checkpoint, "cpu"), source=str(checkpoint))  # a URL: its opt-in
    require_fit(runner.model.module if is_model_wrapper(runner.model) else runner.model, sd, str(checkpoint))


def check_data(cfg, mode: str):
    """The pre-flight data check (swtasks.mm.data_check) of the splits a train or test run reads, on the
    first process only (the others would read the same files)."""
    import logging

    from mmengine.logging import print_log

    from .data_check import check_config_data

    if int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0"))) != 0:
        return []
    splits = ("train", "val") if mode == "train" else ("test",)
    return check_config_data(
        cfg, splits, log=lambda msg: print_log(msg, logger="current", level=logging.WARNING)
    )
