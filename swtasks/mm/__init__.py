"""MMDetection 3.x / MMSegmentation 1.x integration. Importing this package registers:

- the backbones (``ShiftWiseNet`` and every peer family of the ``swtasks`` model registry; see
  ``registered_backbones()``) in ``mmdet.registry.MODELS`` and ``mmseg.registry.MODELS`` (whichever of the
  two is installed);
- ``LayerDecayOptimWrapperConstructor`` in mmengine's ``OPTIM_WRAPPER_CONSTRUCTORS`` (found from both);
- the plain data types mmengine's own checkpoints hold (message hub history buffers, numpy arrays and
  scalars) as types that weights-only ``torch.load`` may rebuild, so ``--resume`` and ``load_from`` work
  without unpickling arbitrary objects (``--trust-pickle`` in the tools allows that, for trusted files).

Configs load it with ``custom_imports = dict(imports=['swtasks.mm'], allow_failed_imports=False)``.
mmengine 0.10 resolves ``_base_ = 'mmdet::...'`` through ``pkg_resources``: the ``mm`` extra pins
``setuptools<81``, which still ships it.
"""

from __future__ import annotations

from .backbone import BACKBONES, RegistryBackbone, ShiftWiseNet  # noqa: E402
from .layer_decay import LayerDecayOptimWrapperConstructor  # noqa: E402

__all__ = [
    "LayerDecayOptimWrapperConstructor",
    "RegistryBackbone",
    "ShiftWiseNet",
    "allow_mmengine_checkpoint_types",
    "registered_backbones",
    "registered_frameworks",
]

_REGISTERED: list[str] = []


def _history_buffer_method(obj, name: str):
    """Stands in for ``getattr`` while unpickling weights-only. mmengine pickles each HistoryBuffer's
    statistics methods as ``getattr(HistoryBuffer, 'mean')``; allowing the real ``getattr`` would let a file
    reach any attribute of any allowed object (module globals included), so only those lookups pass."""
    from mmengine.logging.history_buffer import HistoryBuffer

    if obj is HistoryBuffer and name in HistoryBuffer._statistics_methods:
        return getattr(HistoryBuffer, name)
    raise ValueError(f"weights-only loading refuses getattr({obj!r}, {name!r})")


def allow_mmengine_checkpoint_types() -> list:
    """Allow weights-only loading of the plain data types that mmengine's Runner writes into its
    checkpoints (``message_hub``): its HistoryBuffer (with its statistics methods, through a restricted
    ``getattr``) and numpy arrays, dtypes and scalars. Data only, no code. Returns the allowed objects."""
    import numpy as np
    from mmengine.logging.history_buffer import HistoryBuffer

    from swtasks.checkpoint import allow_globals

    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct, scalar
    dtypes = [type(np.dtype(t)) for t in ("float64", "float32", "float16", "int64", "int32", "uint32", "int8",
                                          "uint8", "bool")]
    allowed = [HistoryBuffer, np.ndarray, np.dtype, _reconstruct, scalar, *dtypes,
               (_history_buffer_method, "__builtin__.getattr"), (_history_buffer_method, "builtins.getattr")]
    # mmengine fills HistoryBuffer._statistics_methods (min, max, current, mean) in the first instance's
    # __init__: in a fresh process that has built no Runner (tools/infer_*.py, tools/reparameterize_mm.py)
    # the lookups above would all be refused until one exists
    HistoryBuffer()
    allow_globals(*allowed)
    return allowed


def _register() -> None:
    errors = {}
    for framework in ("mmdet", "mmseg"):
        try:
            registry = __import__(f"{framework}.registry", fromlist=["MODELS"]).MODELS
        except ImportError as e:  # one framework may be absent; the other still works
            errors[framework] = e
            continue
        for cls in BACKBONES:
            # force=True: re-importing (e.g. importlib.reload in a notebook) must not fail
            registry.register_module(name=cls.__name__, module=cls, force=True)
        _REGISTERED.append(framework)
    if not _REGISTERED:
        raise ImportError(
            "swtasks.mm needs mmdet or mmseg (with mmcv): "
            + "; ".join(f"{k}: {v}" for k, v in errors.items())
        )
    allow_mmengine_checkpoint_types()


def registered_frameworks() -> list[str]:
    """The frameworks ('mmdet', 'mmseg') whose MODELS registry holds the swtasks backbones."""
    return list(_REGISTERED)


def registered_backbones() -> list[str]:
    """The backbone type names registered in those frameworks (e.g. ['ShiftWiseNet', 'UniRepLKNet'])."""
    return [cls.__name__ for cls in BACKBONES]


_register()
