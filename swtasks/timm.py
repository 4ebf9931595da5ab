"""timm interoperability: ``import swtasks.timm`` registers every model of the swtasks registry in timm's
registry as ``swtasks_<name>``.

    import swtasks.timm, timm
    timm.list_models("swtasks_*")
    model = timm.create_model("swtasks_shiftwise_tiny", num_classes=100, drop_path_rate=0.2)
    feats = timm.create_model("swtasks_shiftwise_tiny", features_only=True, out_indices=(1, 2, 3))
    tuned = timm.create_model("swtasks_shiftwise_tiny", pretrained=True,
                              pretrained_cfg_overlay=dict(file="sw_t.safetensors"), num_classes=10)

timm's scripts (train.py, validate.py, benchmark.py, ...) import no plugins; run them through this module:

    python -m swtasks.timm path/to/pytorch-image-models/train.py --model swtasks_shiftwise_tiny ...

See docs/deploy.md (tested timm versions there). Needs the ``timm`` extra; imports nothing of lightning/mm.

Each timm entry point builds the model with ``swtasks.create_model`` and timm's keyword arguments:
num_classes, drop_path_rate, in_chans, global_pool and architecture overrides pass through (unknown ones are
refused by the family, naming them); drop_rate=0 (the scripts' "none") is dropped; ``features_only`` /
``out_indices`` use the family's native feature maps (no FeatureListNet wrapper: ``feature_cls`` other than
'list' is refused), with ``feature_info`` as timm's FeatureInfo. ``pretrained_cfg`` also gives ``pool_size``,
``first_conv`` and ``classifier``, which timm's model tests read (docs/deploy.md: timm's suite over these
models). No weights are downloaded: ``pretrained=True`` loads ``pretrained_cfg['file']`` (timm's
``--pretrained-path``; any file ``create_model(checkpoint_path=...)`` reads) through the swtasks loader, the
classifier being kept at its initialisation when the file's has another size (timm's head adaptation).
"""

from __future__ import annotations

import os
import runpy
import sys
from typing import Any

try:
    import timm
    from timm.models import FeatureInfo, register_model, resolve_pretrained_cfg
except ImportError as _err:  # an optional extra
    raise ImportError(f"swtasks.timm needs timm ({_err}): pip install 'swtasks[timm]'") from _err

import torch.nn as nn

import swtasks
from swtasks.checkpoint import CheckpointMismatchError, classifier_name, format_mismatch, load_into
from swtasks.layers.kernel_warehouse import KWConvNd, KWLinear
from swtasks.models import ModelConfigError, get_data_config, list_models

__all__ = ["PREFIX", "default_cfgs", "main", "register_timm_models", "swtasks_name"]

PREFIX = "swtasks_"
# timm reads the pretrained configuration of each entry point from its module's `default_cfgs`
default_cfgs: dict[str, dict[str, Any]] = {}
_CFG_KEYS = ("input_size", "mean", "std", "crop_pct", "interpolation", "num_classes")
_REGISTERED: dict[str, str] = {}


def swtasks_name(timm_name: str) -> str:
    """``swtasks_shiftwise_tiny`` (or with a pretrained tag, ``.tag``) -> ``shiftwise_tiny``."""
    base = timm_name.split(".", 1)[0]
    if not base.startswith(PREFIX) or base not in _REGISTERED:
        raise ModelConfigError(
            f"{timm_name!r} is not a swtasks model registered in timm (see register_timm_models)"
        )
    return _REGISTERED[base]


def _classifier_prefixes(model) -> tuple[str, ...]:
    name = classifier_name(model)
    return (name + ".",) if name else ()


def _load_pretrained(model, source, timm_name: str) -> None:
    """Load ``source`` (a file or a state dict) with swtasks.checkpoint.load_into; only the classifier may be
    missing or of another size (it then keeps its initialisation)."""
    what = str(source) if isinstance(source, (str, os.PathLike)) else "pretrained_cfg['state_dict']"
    report = load_into(model, source, strict=False, source=what)
    head = _classifier_prefixes(model)
    missing = [k for k in report.missing if not k.startswith(head)]
    mismatched = [m for m in report.mismatched if not m[0].startswith(head)]
    if missing or report.unexpected or mismatched:
        raise CheckpointMismatchError(
            format_mismatch(f"pretrained weights {report.source} ({report.selected})", timm_name, missing,
                            report.unexpected, mismatched)
        )


def _module_with_weight(model: nn.Module, name: str | None) -> str | tuple[()]:
    """``name`` for timm's cfg fields that name a layer by its ``<name>.weight`` (first_conv, classifier);
    () for none or a KernelWarehouse layer (its kernel is drawn from a warehouse shared with other layers)."""
    if name is None or isinstance(model.get_submodule(name), (KWConvNd, KWLinear)):
        return ()
    return name


def _protocol_cfg(model: nn.Module, input_size) -> dict[str, Any]:
    """The pretrained_cfg fields timm's model protocol reads besides the data config: pool_size (the size of
    forward_features' map at input_size), first_conv (the stem convolution) and classifier."""
    stride = getattr(model, "total_stride", 32)
    stem = next((n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, KWConvNd))), None)
    cfg = {"pool_size": tuple(int(s) // stride for s in input_size[1:]),
           "first_conv": _module_with_weight(model, stem)}
    if not getattr(model, "features_only", False):
        cfg["classifier"] = _module_with_weight(model, classifier_name(model))
    return cfg


def _create(name: str, pretrained: bool, pretrained_cfg, pretrained_cfg_overlay, kwargs: dict[str, Any]):
    timm_name = PREFIX + name
    cfg = resolve_pretrained_cfg(timm_name, pretrained_cfg=pretrained_cfg,
                                 pretrained_cfg_overlay=pretrained_cfg_overlay)
    kwargs = dict(kwargs)
    if not kwargs.get("drop_rate", 1):
        kwargs.pop("drop_rate")  # timm's scripts pass drop_rate=0.0 for "no classifier dropout"
    device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
    kwargs.pop("pretrained_model_args", None)  # already merged into kwargs by timm
    feature_cls = kwargs.pop("feature_cls", None)
    if feature_cls not in (None, "list"):
        raise ModelConfigError(f"{timm_name}: features_only returns the family's own list of maps; "
                               f"feature_cls={feature_cls!r} is not supported (use 'list' or leave it out)")
    if kwargs.get("output_stride") in (None, 32):
        kwargs.pop("output_stride", None)
    features_only = bool(kwargs.pop("features_only", False))
    if "out_indices" in kwargs:
        out = kwargs["out_indices"]
        kwargs["out_indices"] = (int(out),) if isinstance(out, int) else tuple(int(i) for i in out)
    source = None
    if pretrained:
        source = cfg.file or cfg.state_dict
        if not source:
            raise ModelConfigError(
                f"{timm_name}: swtasks downloads no weights; pass pretrained_cfg_overlay=dict(file=PATH) "
                "(timm's --pretrained-path) with any file swtasks.create_model(checkpoint_path=...) reads "
                "(.safetensors, a converted or exported checkpoint), or build without pretrained=True"
            )
    model = swtasks.create_model(name, features_only=features_only, **kwargs)
    if source is not None:
        _load_pretrained(model, source, timm_name)
    if device is not None or dtype is not None:
        model = model.to(device=device, dtype=dtype)
    timm_cfg = {**cfg.to_dict(), **{k: v for k, v in model.pretrained_cfg.items() if k in _CFG_KEYS}}
    timm_cfg["architecture"] = timm_name
    timm_cfg.update(_protocol_cfg(model, timm_cfg["input_size"]))
    if features_only:
        for key in ("num_classes", "classifier", "global_pool"):
            timm_cfg.pop(key, None)
        info = [dict(f) for f in model.feature_info]
        model.feature_info = FeatureInfo(info, tuple(range(len(info))))
    model.pretrained_cfg = model.default_cfg = timm_cfg
    return model


def _entry_point(name: str):
    def create(pretrained: bool = False, pretrained_cfg=None, pretrained_cfg_overlay=None, cache_dir=None,
               **kwargs: Any):
        return _create(name, pretrained, pretrained_cfg, pretrained_cfg_overlay, kwargs)

    create.__name__ = create.__qualname__ = PREFIX + name
    create.__module__ = __name__
    create.__doc__ = f"swtasks.create_model({name!r}, ...) for timm.create_model (see swtasks.timm)."
    return create


def register_timm_models(pattern: str = "*") -> list[str]:
    """Register the swtasks models matching ``pattern`` (all by default) in timm's registry as
    ``swtasks_<name>``; names registered before are kept. Returns the timm names now registered. Called on
    import; call it again after registering more swtasks models."""
    for name in list_models(pattern):
        timm_name = PREFIX + name
        if timm_name in _REGISTERED:
            continue
        data = get_data_config(name)
        default_cfgs[timm_name] = {
            **{k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in _CFG_KEYS},
            "description": f"swtasks {name} (no downloadable weights: pretrained=True needs a file)",
        }
        fn = _entry_point(name)
        globals()[timm_name] = fn
        register_model(fn)
        _REGISTERED[timm_name] = name
    return sorted(_REGISTERED)


def main(argv: list[str] | None = None) -> int:
    """``python -m swtasks.timm SCRIPT [ARGS...]``: run a timm script (or any script) with the swtasks models
    registered in timm."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m swtasks.timm SCRIPT.py [ARGS...]  (runs SCRIPT with the swtasks_* models "
              f"registered in timm {timm.__version__})", file=sys.stderr)
        return 0 if argv else 2
    script, rest = argv[0], argv[1:]
    if not os.path.isfile(script):
        print(f"swtasks.timm: error: script not found: {script}", file=sys.stderr)
        return 2
    old_argv, old_path = sys.argv[:], sys.path[:]
    sys.argv = [script, *rest]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as e:
        code = e.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    finally:
        sys.argv, sys.path[:] = old_argv, old_path
    return 0


if __name__ == "__main__":
    # run through the importable module (its entry points are the registered ones), not this __main__ copy
    from swtasks.timm import main as _main

    sys.exit(_main())
else:
    register_timm_models()

