"""The operator's switches, resolved in one place at call time.

    backend        'torch' | 'triton' | 'auto' (None: $SWTASKS_OP_BACKEND, read here at each call, else 'auto')
    variant        'auto' | 'tc' (tensor-core banded kernels) | 'direct' (CUDA-core gathers)
    dot_precision  'ieee' | 'tf32x3' | 'tf32' for fp32 inputs of the tensor-core kernels (None: 'ieee',
                   exact); ignored for fp16/bf16 (fp32 accumulation) and by the direct kernels
    deterministic  True | False (None: torch.are_deterministic_algorithms_enabled())

`resolve_options` is the only function that reads defaults; the dispatcher (cross_conv.py), the
custom op and the raw launchers (triton_cross.py) all call it, so no module attribute or environment
variable decides anything at import. 'auto' variant rule (`pick_variant`), from the kernel report's
estimates (benchmarks/RESULTS.md, "kernel report"): the tensor-core kernels wherever they apply
(fp16 / bf16 / fp32 inputs, small kernels k in 1, 3, 5), estimated 3x-50x faster than the direct
kernels at every SW-T stage and dtype; the direct kernels for fp64 and k > 5. `MEASURED` lets a GPU
run record a different winner per (dtype, stage shape) without touching the rule.

Deterministic mode pins one tile configuration per shape (no timing-based tuning) and a split that
depends on the shape only, so two processes (and DDP ranks) produce bit-identical outputs and weight
gradients on the same GPU model and software; nothing in either variant uses atomics.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

import torch

__all__ = [
    "BACKENDS",
    "DOT_PRECISIONS",
    "ENV_BACKEND",
    "HAS_TRITON",
    "MEASURED",
    "OpOptions",
    "VARIANTS",
    "dtype_name",
    "pick_variant",
    "resolve_options",
]

BACKENDS = ("torch", "triton")
VARIANTS = ("auto", "tc", "direct")
DOT_PRECISIONS = ("ieee", "tf32x3", "tf32")
ENV_BACKEND = "SWTASKS_OP_BACKEND"

# Whether triton is installed (checked without importing it: `import swtasks` stays cheap).
HAS_TRITON = importlib.util.find_spec("triton") is not None

_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64"}

# Winners measured on a GPU, (dtype name, k, H, W) -> variant; empty until a GPU run records some
# (scripts/gpu_checks.sh prints the measured winners next to the estimates).
MEASURED: dict[tuple[str, int, int, int], str] = {}


def dtype_name(dtype: torch.dtype) -> str:
    return _NAMES.get(dtype, str(dtype).replace("torch.", ""))


@dataclass(frozen=True)
class OpOptions:
    backend: str  # 'torch' | 'triton'
    variant: str  # 'tc' | 'direct' (meaningful for the triton backend)
    dot_precision: str  # 'ieee' | 'tf32x3' | 'tf32'
    deterministic: bool


def _tc_takes(dtype: torch.dtype, k: int) -> bool:
    """The tensor-core kernels' inputs (triton_tc.tc_supported, without importing triton here)."""
    return dtype_name(dtype) in ("fp32", "bf16", "fp16") and k in (1, 3, 5)


def pick_variant(dtype: torch.dtype, k: int, H: int, W: int) -> str:
    """The 'auto' variant for a dtype and shape (see the module docstring)."""
    name = dtype_name(dtype)
    # symbolic sizes (torch.export with a dynamic height/width) are not hashable and match no measured shape
    measured = MEASURED.get((name, k, H, W)) if isinstance(H, int) and isinstance(W, int) else None
    if measured is not None:
        return measured
    return "tc" if _tc_takes(dtype, k) else "direct"


def resolve_options(x: torch.Tensor, k: int, backend: str | None = None, variant: str | None = None,
                    dot_precision: str | None = None, deterministic: bool | None = None) -> OpOptions:
    """Explicit arguments > the documented defaults (module docstring). Raises ValueError naming the
    bad value and the choices."""
    choice = backend or os.environ.get(ENV_BACKEND) or "auto"
    if choice == "auto":
        choice = "triton" if (x.is_cuda and HAS_TRITON) else "torch"
    if choice not in BACKENDS:
        raise ValueError(f"unknown shift-wise backend {choice!r}; choose one of {('auto',) + BACKENDS}")
    v = variant or "auto"
    if v not in VARIANTS:
        raise ValueError(f"unknown Triton kernel variant {v!r}; choose one of {VARIANTS}")
    H, W = (x.shape[2], x.shape[3]) if x.dim() == 4 else (0, 0)
    if v == "auto":
        v = pick_variant(x.dtype, k, H, W)
    elif v == "tc" and choice == "triton" and not _tc_takes(x.dtype, k):
        raise ValueError(
            f"variant='tc' takes fp16/bf16/fp32 inputs and small kernels k in (1, 3, 5); got {x.dtype}, k={k} "
            "(use variant='direct' or 'auto')"
        )
    p = dot_precision or "ieee"
    if p not in DOT_PRECISIONS:
        raise ValueError(f"unknown dot precision {p!r}; choose one of {DOT_PRECISIONS}")
    det = torch.are_deterministic_algorithms_enabled() if deterministic is None else bool(deterministic)
    return OpOptions(choice, v, p, det)
