"""The cross-shaped depthwise convolution that every shift-wise operator reduces to.

Contract (all paths compute exactly this, with zero padding and cross-correlation):

    x    : (B, C, H, W)
    w_h  : (C, k, L)   horizontal strip; tap (i, u) reads x[.., h + i - k//2, w + u - K//2]
    w_v  : (C, L, k)   vertical strip;   tap (u, j) reads x[.., h + u - K//2, w + j - k//2]
    w_s  : (C, k, k)   centred tile;     tap (i, j) reads x[.., h + i - k//2, w + j - k//2]  (optional)

k is odd, L = k * ceil(K / k) >= K, K is the emulated ("big") kernel size. When K is not a multiple
of k the strips are off-centre: their taps span [-(K//2), L - 1 - K//2].

`cross_conv` returns the three branch outputs (out_h, out_v, out_s) or, with reduce=True, their sum
(the deploy form, where w_s may be None).

Backends (argument `backend`, else $SWTASKS_OP_BACKEND, else 'auto'; resolved by
`swtasks.ops.options.resolve_options`, the one place that reads defaults, at each call):
  'torch'   `cross_conv_torch` (cross_torch.py): plain differentiable PyTorch (any device; double backward).
  'triton'  `triton_cross.cross_conv_triton`: the `swtasks::cross_conv` custom op with Triton kernels and
            a deterministic, atomic-free backward; torch.compile(fullgraph=True) traces through it. On
            CPU tensors it runs the kernels under TRITON_INTERPRET=1 (tests) and the PyTorch path otherwise.
            No double backward.
  'auto'    'triton' for CUDA tensors when triton is installed, 'torch' otherwise.
Triton switches (arguments, see options.py): variant 'auto' | 'tc' (tensor-core banded kernels) |
'direct' (CUDA-core gathers); dot_precision 'ieee' | 'tf32x3' | 'tf32' for fp32 inputs on tensor cores;
deterministic (default: torch.are_deterministic_algorithms_enabled()) pins one tile configuration
per shape. Costs: docs/operator.md and benchmarks/RESULTS.md.

Layering: cross_torch.py (argument check, PyTorch path) <- triton_cross.py (kernels, custom ops) <-
this dispatcher, which imports the Triton module lazily (no Triton work at `import swtasks`).
"""

from __future__ import annotations

from .cross_torch import check_cross_args, cross_conv_torch
from .options import resolve_options

__all__ = ["check_cross_args", "cross_conv", "cross_conv_torch"]


def cross_conv(x, w_h, w_v, w_s=None, *, big_kernel: int, reduce: bool = False, backend: str | None = None,
               variant: str | None = None, dot_precision: str | None = None, deterministic: bool | None = None):
    """Dispatching entry point; see the module docstring for the contract and the switches.

    backend: None (then $SWTASKS_OP_BACKEND, default 'auto'), 'auto', 'torch' or 'triton'.
    variant / dot_precision / deterministic: the Triton switches (ignored by the torch backend, which
    is deterministic whenever PyTorch's own kernels are).
    """
    k, _ = check_cross_args(x, w_h, w_v, w_s, big_kernel)
    opts = resolve_options(x, k, backend, variant, dot_precision, deterministic)
    if opts.backend == "torch":
        return cross_conv_torch(x, w_h, w_v, w_s, big_kernel=big_kernel, reduce=reduce)
    from .triton_cross import cross_conv_triton  # noqa: PLC0415  (lazy: no Triton work at import)

    return cross_conv_triton(x, w_h, w_v, w_s, big_kernel=big_kernel, reduce=reduce, variant=opts.variant,
                             dot_precision=opts.dot_precision, deterministic=opts.deterministic)
