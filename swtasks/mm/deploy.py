"""Convert a trained detector / segmentor checkpoint to the backbone's deploy (re-parameterised) structure.

    python tools/reparameterize_mm.py CONFIG CHECKPOINT OUT.pth [--out-config OUT_CONFIG.py]

The new checkpoint holds ``{'state_dict': ..., 'meta': {..., 'deploy': True}}`` for a model whose backbone is
built with ``deploy=True``; the matching config (same model, ``backbone.deploy=True``, no pretrained init)
is written next to it (``OUT.py`` by default), so ``tools/test_det.py OUT.py OUT.pth`` evaluates it. The
conversion is checked: backbone+neck features of the converted model on a random batch must match those of
the trained model (eval mode).
"""

from __future__ import annotations

import argparse
import copy
import importlib
import os
import os.path as osp
from collections.abc import Sequence

import torch

from ..checkpoint import (
    CheckpointMismatchError,
    check_finite,
    compare_state_dicts,
    format_mismatch,
    read_checkpoint,
    save_weights,
)
from ..errors import UserError
from ..models.deploy import reparameterize_verified


def _model_registry(cfg):
    scope = cfg.get("default_scope") or "mmdet"
    if scope not in ("mmdet", "mmseg"):
        raise UserError(f"default_scope {scope!r}: only mmdet and mmseg configs are supported")
    from mmengine.registry import init_default_scope

    init_default_scope(scope)
    import swtasks.mm  # noqa: F401

    return importlib.import_module(f"{scope}.registry").MODELS


def _backbone_cfg(model_cfg):
    bb = model_cfg.get("backbone")
    if bb is None:
        raise UserError("the config's model has no backbone")
    return bb


def build_model(cfg, deploy: bool | None = None):
    """The config's model, without pretrained initialisation (weights come from a checkpoint)."""
    registry = _model_registry(cfg)
    model_cfg = copy.deepcopy(cfg.model)
    bb = _backbone_cfg(model_cfg)
    bb["init_cfg"] = None
    if deploy is not None:
        bb["deploy"] = deploy
        if deploy:
            bb["sparse"] = False
    if "pretrained" in model_cfg:
        model_cfg["pretrained"] = None
    return registry.build(model_cfg)


@torch.no_grad()
def _features(model, x):
    feats = model.extract_feat(x)
    return [f.float() for f in (feats if isinstance(feats, (list, tuple)) else [feats])]


def _backbone_to_fold(model):
    """The backbone wrapper that offers ``reparameterize()`` (it folds its whole network)."""
    bb = getattr(model, "backbone", None)
    if bb is None or not callable(getattr(bb, "reparameterize", None)):
        raise UserError(f"{type(model).__name__} has no re-parameterisable backbone (no reparameterize())")
    return bb


def reparameterize_checkpoint(
    config,
    checkpoint: str,
    out: str,
    out_config: str | None = None,
    cfg_options: dict | None = None,
    verify: bool = True,
    input_size: Sequence[int] = (2, 3, 128, 128),
    rtol: float = 1e-4,
    trust_pickle: bool = False,
    allow_download: bool = False,
) -> dict:
    """Convert ``checkpoint`` (trained with ``config``) to the deploy structure; returns a report dict."""
    from mmengine.config import Config

    if os.fspath(out).endswith(".safetensors"):
        raise UserError(
            f"{out}: the mmengine Runner (tools/test_det.py, load_from) reads .pth checkpoints only; write a .pth "
            "(tools/export_backbone.py writes backbone weights as .safetensors)"
        )
    if not isinstance(config, Config) and not osp.isfile(config):
        raise UserError(f"config file not found: {config}")
    cfg = config if isinstance(config, Config) else Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if _backbone_cfg(cfg.model).get("deploy", False):
        raise UserError("the config's backbone is already deploy=True; give the training config")
    obj = read_checkpoint(checkpoint, trust_pickle=trust_pickle, allow_download=allow_download)
    from .own_data import follow_checkpoint_classes

    follow_checkpoint_classes(cfg, obj)  # a run on its own data set the heads from the command line
    if not isinstance(obj, dict) or not isinstance(obj.get("state_dict"), dict):
        raise UserError(
            f"{checkpoint}: expected a checkpoint written by the mmengine Runner (with 'state_dict')"
        )
    model = build_model(cfg)
    missing, unexpected, mismatched = compare_state_dicts(model.state_dict(), obj["state_dict"])
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(format_mismatch(
            f"checkpoint {checkpoint}", "the config's model", missing, unexpected, mismatched, limit=5
        ).replace("\n", ";"))
    check_finite(obj["state_dict"], os.fspath(checkpoint))  # NaN would fold into NaN and pass no check
    model.load_state_dict(obj["state_dict"], strict=True)
    x = torch.randn(*input_size, generator=torch.Generator().manual_seed(0))
    # verified in place: backbone + neck features before and after folding (swtasks.models.deploy)
    folded = reparameterize_verified(
        model, example=x, forward=lambda t: _features(model, t), fold=_backbone_to_fold(model).reparameterize,
        rtol=rtol, check=verify,
    )
    state = model.state_dict()

    deploy_cfg = Config(copy.deepcopy(cfg.to_dict()) if hasattr(cfg, "to_dict") else copy.deepcopy(dict(cfg)))
    bb = _backbone_cfg(deploy_cfg.model)
    bb["deploy"] = True
    bb["sparse"] = False
    bb["init_cfg"] = None
    deploy_cfg.load_from = None
    if out_config is None:
        out_config = osp.splitext(out)[0] + ".py"

    report = {"checkpoint": out, "config": out_config, "num_tensors": len(state),
              "relative_error": folded["relative_error"]}
    # the written config must build a model that takes the state dict as it is
    build_model(deploy_cfg).load_state_dict(state, strict=True)
    meta = dict(obj.get("meta") or {})
    meta.update(deploy=True, source_checkpoint=osp.abspath(checkpoint))
    save_weights(out, state, meta)
    deploy_cfg.dump(out_config)
    return report


def main(argv: Sequence[str] | None = None) -> dict:
    from mmengine.config import DictAction

    p = argparse.ArgumentParser(
        prog="tools/reparameterize_mm.py",
        description="Convert a detector/segmentor checkpoint to the deploy (re-parameterised) backbone structure.",
    )
    p.add_argument("config", help="the training config of the checkpoint")
    p.add_argument("checkpoint", help="checkpoint written by tools/train_det.py or tools/train_seg.py")
    p.add_argument("out", help="output checkpoint (.pth)")
    p.add_argument("--out-config", help="where to write the deploy config (default: OUT with .py)")
    p.add_argument("--cfg-options", nargs="+", action=DictAction, help="override config entries, key=value")
    p.add_argument("--no-verify", action="store_true", help="skip the feature comparison")
    p.add_argument(
        "--input-size", type=int, nargs=2, default=(256, 256), metavar=("H", "W"), help="check input size"
    )
    p.add_argument("--trust-pickle", action="store_true", help="allow a full unpickle of CHECKPOINT (trusted files)")
    p.add_argument("--allow-download", action="store_true",
                   help="CHECKPOINT may be an http(s) URL: downloaded, then read like a local file")
    args = p.parse_args(argv)
    from .cli import user_errors_as_exit

    with user_errors_as_exit("tools/reparameterize_mm.py"):
        return _run(args)


def _run(args) -> dict:
    report = reparameterize_checkpoint(
        args.config,
        args.checkpoint,
        args.out,
        out_config=args.out_config,
        cfg_options=args.cfg_options,
        verify=not args.no_verify,
        input_size=(1, 3, *args.input_size),
        trust_pickle=args.trust_pickle,
        allow_download=args.allow_download,
    )
    diff = f", relative feature error {report['relative_error']:.2e}" if report["relative_error"] is not None else ""
    print(f"wrote {report['checkpoint']} and {report['config']}{diff}")
    return report
