"""Triton launchers of the cross convolution, packaged as PyTorch custom ops.

Contract: exactly `swtasks.ops.cross_conv` (cross_conv.py): x (B, C, H, W), w_h (C, k, L), w_v (C, L, k),
optional w_s (C, k, k); zero padding, cross-correlation, off-centre strips when K is not a multiple of k.

Two kernel families (both deterministic, no atomics):
- `tc` (triton_tc.py): every strip as a banded (Toeplitz) matrix product on tensor cores (fp16/bf16;
  fp32 with dot precision ieee / tf32x3 / tf32), the weight gradient as the transposed product plus a
  band sum; the default wherever it applies;
- `direct` (triton_direct.py): CUDA-core gathers, for fp64 and small kernels k > 5.
The variant, the dot precision and deterministic mode are arguments, resolved by
`swtasks.ops.options.resolve_options` (one function, at call time).

Tile configuration: in deterministic mode, under the Triton interpreter and whenever a `config` is
forced, one configuration per shape (`pinned_config`); otherwise the fastest candidate, timed on the
first call of each shape and switch combination and cached in memory and on disk
(`$TRITON_CACHE_DIR` or ~/.triton/cache, file swtasks-autotune.json; a file lock makes concurrent DDP
ranks on one node wait for the first one's result instead of re-tuning). The tuning key holds every
compile-time switch: variant, dtypes, dot precision, centre branch, pass, shape, GPU name, triton version.

Every launch goes through `_launch`, which counts launches per kernel in `LAUNCHES` (tests use it to
prove that the Triton path really ran).

Packaging: `torch.library.custom_op`s `swtasks::cross_conv` (three outputs), `swtasks::cross_conv_sum`
(reduce=True) and `swtasks::cross_conv_backward`, each with a fake implementation and autograd, for
devices cpu and cuda, so `torch.compile(fullgraph=True)`, `gradcheck` and `torch.library.opcheck`
work. They run Triton on CUDA tensors and on CPU tensors when the Triton interpreter is on
(TRITON_INTERPRET=1 before this module is imported: the decorator reads it); otherwise the PyTorch path.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections import Counter
from pathlib import Path
from typing import List, Optional, Tuple  # noqa: UP035  (torch 2.4 custom_op schemas need these)

import torch
import triton

from .cross_torch import check_cross_args, cross_conv_torch
from .launch import Launch
from .options import OpOptions, dtype_name, resolve_options
from .triton_direct import DIRECT_CONFIGS, DIRECT_DW_CONFIGS, DirectConfig, direct_launch
from .triton_tc import TileConfig, tc_launch

__all__ = [
    "INTERPRET",
    "LAUNCHES",
    "TC_BLOCK_TILES",
    "TC_TILED",
    "candidate_configs",
    "cross_conv_triton",
    "cross_conv_triton_backward",
    "cross_conv_triton_forward",
    "pinned_config",
    "plan",
    "report_launches",
    "triton_available_for",
    "tuning_key",
]

# The Triton interpreter is chosen when @triton.jit runs, i.e. when the kernel modules are imported.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

LAUNCHES: Counter = Counter()  # kernel name -> number of launches

# Tiles of the tensor-core kernels. Block tiles (the plane fits: H, W <= tile) pack whole small planes;
# tiled configurations serve larger planes. Every candidate compiles for the architectures it is offered
# on without spills and within their shared memory at the SW-T stage shapes (tests/test_ops_kernels_compile.py;
# the kernel report checks all of them): exact ('ieee') fp32 tiles of 64 only on sm_90+ (they need ~115-210
# KB of shared memory); the TF32 forms (4 warps, 1 stage, window chunks in run-time loops) in tiles up to
# 64 (see _block_fits).
TC_BLOCK_TILES = {"16bit": (16, 32, 64), "fp32": (16, 32, 64)}
TC_TILED = {"16bit": (TileConfig(32, 32, 8), TileConfig(32, 64, 8)), "fp32": (TileConfig(32, 32, 8),),
            "tf32": (TileConfig(16, 16, 8), TileConfig(32, 32, 4, 1)),
            "tf32x3": (TileConfig(16, 16, 4, 1), TileConfig(32, 32, 4, 1))}


def _block_config(dtype: str, precision: str, tile: int) -> TileConfig:
    """4 warps; 8 for exact fp32 tiles of 64 (the accumulator and the FMA dots' operands in registers);
    TF32 forms: 4 warps (one warpgroup: 8 would duplicate the tile's wgmma work) and 1 stage."""
    if dtype == "fp32" and precision in ("tf32", "tf32x3"):
        return TileConfig(tile, tile, 4, 1)
    return TileConfig(tile, tile, 8 if (dtype == "fp32" and tile >= 64) else 4)


def triton_available_for(x: torch.Tensor) -> bool:
    """True when the kernels can run on x's device: CUDA, or CPU under the Triton interpreter."""
    return x.is_cuda or (INTERPRET and x.device.type == "cpu")


def _check_device(x: torch.Tensor) -> None:
    if not triton_available_for(x):
        raise RuntimeError(
            f"the Triton kernels need a CUDA tensor (or a CPU tensor with TRITON_INTERPRET=1 set before "
            f"swtasks.ops.triton_cross is imported); got a tensor on {x.device}"
        )


# ---------------------------------------------------------------------------------------------
# configurations: candidates, the pinned one, the tuner
# ---------------------------------------------------------------------------------------------


def candidate_configs(variant: str, pass_name: str, dtype: str, precision: str, H: int, W: int,
                      arch: int = 90) -> tuple:
    """Every configuration the tuner may pick for a variant, pass, dtype, dot precision, plane size
    and compute capability (major * 10 + minor)."""
    if variant == "tc":
        kind = "fp32" if dtype == "fp32" else "16bit"
        need = triton.next_power_of_2(max(H, W, 1))
        block = tuple(_block_config(dtype, precision, t) for t in TC_BLOCK_TILES[kind]
                      if t >= need and _block_fits(t, need, pass_name, W, dtype, precision, arch))
        tiled = precision if (dtype == "fp32" and precision in ("tf32", "tf32x3")) else kind
        return block or TC_TILED[tiled]
    return DIRECT_DW_CONFIGS if pass_name == "grad_weight" else DIRECT_CONFIGS


def _block_fits(tile: int, need: int, pass_name: str, W: int, dtype: str, precision: str, arch: int) -> bool:
    """Tiles of 64 that pack several planes hold many scalar addresses when W is not a multiple of 8:
    they spill unless the plane needs the tile, or the pass is light enough; fp32 tiles of 64: exact
    dots on sm_90+ only. TF32 forms (the kernel report): on sm_90+ any tile but the weight gradient's
    64 packing planes of 8 or less; before sm_90 (mma.sync, more live registers) only the tile the plane
    needs, and not 64 for the weight gradient nor for the 3xTF32 forward (they spill)."""
    if dtype == "fp32" and precision in ("tf32", "tf32x3"):
        if tile == 64 and pass_name == "grad_weight" and (arch < 90 or need < 16):
            return False
        if arch >= 90:
            return True
        return tile == max(need, 16) and not (tile == 64 and precision == "tf32x3" and pass_name == "forward")
    if tile < 64:
        return True
    if dtype == "fp32":
        return need == 64 and precision == "ieee" and arch >= 90
    if need == 64:
        return True
    vec = 1
    while vec * 2 <= 8 and W % (vec * 2) == 0:
        vec *= 2
    return (pass_name == "forward" and vec >= 2) or (pass_name == "grad_weight" and vec >= 4)


def pinned_config(variant: str, pass_name: str, dtype: str, precision: str, H: int, W: int, K: int, k: int,
                  arch: int = 90, interpret: bool = False):
    """The one configuration of deterministic mode (and of the interpreter): a function of the shape
    and the GPU architecture only. Tensor cores: the largest block tile that fits without spilling (it
    packs the most small planes per item; the kernel report estimates it best or within 15% at every
    SW-T stage), else the first tiled configuration; direct kernels: the first candidate, or whole small
    planes and all taps at once under the interpreter (~0.1 ms per interpreted operation)."""
    if variant == "tc":
        cands = candidate_configs(variant, pass_name, dtype, precision, H, W, arch)
        return cands[-1] if max(H, W) <= 64 else cands[0]
    if interpret:
        L = k * -(-K // k)
        return DirectConfig(
            min(32, triton.next_power_of_2(max(H, 1))),
            min(32, triton.next_power_of_2(max(W, 1))),
            min(256, triton.next_power_of_2(k * L)),
        )
    return candidate_configs(variant, pass_name, dtype, precision, H, W, arch)[0]


def plan(variant: str, pass_name: str, B, C, H, W, K, k, dtype: str, precision: str, config, *, has_s=True,
         weight_dtype=None, interpret=False) -> Launch:
    """The Launch of a pass for a configuration (TileConfig for 'tc', DirectConfig for 'direct')."""
    if variant == "tc":
        return tc_launch(pass_name, B, C, H, W, K, k, dtype, precision, config, has_s=has_s,
                         weight_dtype=weight_dtype, interpret=interpret)
    return direct_launch(pass_name, B, C, H, W, K, k, dtype, config, has_s=has_s, weight_dtype=weight_dtype)


def _cache_file() -> Path:
    root = os.environ.get("TRITON_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".triton", "cache")
    return Path(root) / "swtasks-autotune.json"


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock next to the cache file (fcntl on Linux; no lock elsewhere)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl  # noqa: PLC0415
    except ImportError:  # pragma: no cover - not Linux
        yield
        return
    with open(str(path) + ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


_TUNED: dict[str, str] = {}  # tuning key -> config label


def _read_cache(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _tune(key: str, candidates, build, run) -> object:
    """The fastest candidate for `key`: from memory, from the disk cache, or by timing each (once per
    node: concurrent processes wait on the lock and then read the winner)."""
    by_label = {c.label: c for c in candidates}
    if key in _TUNED and _TUNED[key] in by_label:
        return by_label[_TUNED[key]]
    path = _cache_file()
    with _locked(path):
        cached = _read_cache(path).get(key)
        if cached in by_label:
            _TUNED[key] = cached
            return by_label[cached]
        from triton.testing import do_bench  # noqa: PLC0415

        timings = {}
        for cfg in candidates:
            try:
                launch = build(cfg)
                timings[cfg.label] = do_bench(lambda launch=launch: run(launch), warmup=5, rep=20)
            except Exception:  # noqa: BLE001  (a candidate that does not fit this GPU is skipped)
                continue
        if not timings:
            raise RuntimeError(f"no tile configuration of {key} could run on this GPU")
        best = min(timings, key=timings.get)
        data = _read_cache(path)
        data[key] = best
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=0, sort_keys=True))
        tmp.replace(path)
    _TUNED[key] = best
    return by_label[best]


def _choose(opts: OpOptions, pass_name: str, x: torch.Tensor, K: int, k: int, has_s: bool, w_dtype: str,
            config, run) -> Launch:
    B, C, H, W = x.shape
    dtype = dtype_name(x.dtype)

    def build(cfg):
        return plan(opts.variant, pass_name, B, C, H, W, K, k, dtype, opts.dot_precision, cfg, has_s=has_s,
                    weight_dtype=w_dtype, interpret=INTERPRET and not x.is_cuda)

    arch = 90
    if x.is_cuda:
        major, minor = torch.cuda.get_device_capability(x.device)
        arch = 10 * major + minor
    if config is None and (opts.deterministic or not x.is_cuda):
        config = pinned_config(opts.variant, pass_name, dtype, opts.dot_precision, H, W, K, k, arch,
                               interpret=not x.is_cuda)
    if config is None:
        key = tuning_key(opts, pass_name, (B, C, H, W, K, k), dtype, w_dtype, has_s, torch.cuda.get_device_name(x.device))
        config = _tune(key, candidate_configs(opts.variant, pass_name, dtype, opts.dot_precision, H, W, arch),
                       build, run)
    return build(config)


def tuning_key(opts: OpOptions, pass_name: str, shape: tuple, dtype: str, w_dtype: str, has_s: bool, device: str) -> str:
    """Everything that selects a compiled kernel or changes its timing: variant, pass, shape, dtypes,
    dot precision, centre branch, GPU and triton version (deterministic mode never tunes)."""
    return json.dumps([opts.variant, pass_name, *shape, dtype, w_dtype, opts.dot_precision, bool(has_s), device,
                       triton.__version__])


def _launch(launch: Launch, *tensors) -> None:
    LAUNCHES[launch.kernel] += 1
    launch.fn[(launch.grid,)](*tensors, **launch.ints, **launch.constexprs, num_warps=launch.num_warps,
                              num_stages=launch.num_stages)


# ---------------------------------------------------------------------------------------------
# launch wrappers (no autograd)
# ---------------------------------------------------------------------------------------------


def _weights(w_h, w_v, w_s, x):
    """Contiguous weights in one dtype (x's for 16-bit x: the tensor cores multiply in x's dtype)."""
    ws = [w_h, w_v] + ([w_s] if w_s is not None else [])
    dt = ws[0].dtype
    if any(w.dtype != dt for w in ws):
        dt = torch.float32 if x.dtype != torch.float64 else torch.float64
    ws = [w.to(dt).contiguous() for w in ws]
    return ws[0], ws[1], (ws[2] if w_s is not None else ws[0]), dtype_name(dt)


def cross_conv_triton_forward(x, w_h, w_v, w_s=None, *, big_kernel: int, reduce: bool = False, variant=None,
                              dot_precision=None, deterministic=None, config=None):
    """Raw forward launch: (out_h, out_v, out_s) or, with reduce=True, their sum. No autograd.
    config: force a TileConfig (variant 'tc') or DirectConfig ('direct') instead of the chosen one."""
    k, L = check_cross_args(x, w_h, w_v, w_s, big_kernel)
    _check_device(x)
    opts = resolve_options(x, k, "triton", variant, dot_precision, deterministic)
    xc = x.contiguous()
    whc, wvc, wsc, w_dtype = _weights(w_h, w_v, w_s, x)
    if reduce:
        out = torch.empty_like(xc)
        outs = (out, out, out)
    else:
        oh, ov = torch.empty_like(xc), torch.empty_like(xc)
        os_ = torch.empty_like(xc) if w_s is not None else torch.zeros_like(xc)
        outs = (oh, ov, os_)
    if xc.numel() > 0:
        pass_name = "forward_sum" if reduce else "forward"
        if opts.variant == "tc":
            args = (xc, xc, xc, whc, wvc, wsc, *outs)
        else:
            args = (xc, whc, wvc, wsc, *outs)
        launch = _choose(opts, pass_name, xc, big_kernel, k, w_s is not None, w_dtype, config,
                         lambda lz: _launch(lz, *args))
        _launch(launch, *args)
    return outs[0] if reduce else outs


def cross_conv_triton_backward(g_h, g_v, g_s, x, w_h, w_v, w_s=None, *, big_kernel: int, need_x: bool = True,
                               need_w: bool = True, variant=None, dot_precision=None, deterministic=None,
                               config=None):
    """Raw backward launch. g_h/g_v/g_s are the gradients of the three branch outputs (for
    reduce=True pass the same gradient three times; g_s is ignored when w_s is None).
    Returns (dx or None, dw_h or None, dw_v or None, dw_s or None)."""
    k, L = check_cross_args(x, w_h, w_v, w_s, big_kernel)
    _check_device(x)
    opts = resolve_options(x, k, "triton", variant, dot_precision, deterministic)
    B, C, H, W = x.shape
    has_s = w_s is not None
    gh, gv = g_h.to(x.dtype).contiguous(), g_v.to(x.dtype).contiguous()
    gs = g_s.to(x.dtype).contiguous() if (has_s and g_s is not None) else gh
    whc, wvc, wsc, w_dtype = _weights(w_h, w_v, w_s, x)
    dx = dwh = dwv = dws = None
    if need_x:
        dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        if x.numel() > 0:
            if opts.variant == "tc":
                args = (gh, gv, gs, whc, wvc, wsc, dx, dx, dx)
            else:
                args = (gh, gv, gs, whc, wvc, wsc, dx)
            launch = _choose(opts, "grad_input", gh, big_kernel, k, has_s, w_dtype, config,
                             lambda lz: _launch(lz, *args))
            _launch(launch, *args)
    if need_w:
        acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        t_hv = k * L
        t_all = 2 * t_hv + k * k
        if x.numel() > 0:
            xc = x.contiguous()
            box = {}

            def args_for(lz):
                rows = lz.ints["NSPLIT"] if opts.variant == "tc" else B * lz.ints["n_split"]
                if box.get("rows") != rows:
                    box["part"] = torch.empty((rows, C, t_all), dtype=acc_dtype, device=x.device)
                    box["rows"] = rows
                return (xc, gh, gv, gs, box["part"])

            launch = _choose(opts, "grad_weight", xc, big_kernel, k, has_s, w_dtype, config,
                             lambda lz: _launch(lz, *args_for(lz)))
            _launch(launch, *args_for(launch))
            part = box["part"]
        else:
            part = torch.zeros((1, C, t_all), dtype=acc_dtype, device=x.device)
        # one fixed-order reduction per weight: separate (non-aliasing) results
        dwh = part[:, :, :t_hv].sum(0).reshape(C, k, L).to(w_h.dtype)
        dwv = part[:, :, t_hv : 2 * t_hv].sum(0).reshape(C, L, k).to(w_v.dtype)
        if has_s:
            dws = part[:, :, 2 * t_hv :].sum(0).reshape(C, k, k).to(w_s.dtype)
    return dx, dwh, dwv, dws


# ---------------------------------------------------------------------------------------------
# the kernel report's view: every launch the operator can make at a shape
# ---------------------------------------------------------------------------------------------


def report_launches(shape, dtype: str, precision: str | None, pinned: bool = False, archs=(80, 90)):
    """Launches of every pass, variant and candidate configuration at a stage shape (the kernel
    report's provider); pinned=True: only the configuration deterministic mode uses. A configuration
    offered on some architectures only carries notes["archs"]. The direct kernels appear for fp32
    ('ieee' only: they have no dot), bf16 and fp16."""
    B, C, H, W, K, k = shape.B, shape.C, shape.H, shape.W, shape.K, shape.k
    prec = precision or "ieee"
    variants = ["tc"] + (["direct"] if prec == "ieee" else [])
    for variant in variants:
        for pass_name in ("forward", "forward_sum", "grad_input", "grad_weight"):
            offered: dict = {}  # config -> architectures
            for arch in archs:
                if pinned:
                    configs = [pinned_config(variant, pass_name, dtype, prec, H, W, K, k, arch)]
                else:
                    configs = candidate_configs(variant, pass_name, dtype, prec, H, W, arch)
                for cfg in configs:
                    offered.setdefault(cfg, []).append(arch)
            for cfg, on in offered.items():
                launch = plan(variant, pass_name, B, C, H, W, K, k, dtype, prec, cfg)
                if len(on) < len(archs):
                    launch.notes["archs"] = tuple(on)
                yield launch


# ---------------------------------------------------------------------------------------------
# Custom ops (torch.library): Triton where it can run, the PyTorch path otherwise
# ---------------------------------------------------------------------------------------------


def _torch_backward(g_h, g_v, g_s, x, w_h, w_v, w_s, big_kernel):
    """Gradients of the PyTorch path (CPU fallback of the backward op)."""
    with torch.enable_grad():
        xs = x.detach().requires_grad_(True)
        ws = [w.detach().requires_grad_(True) for w in (w_h, w_v)]
        if w_s is not None:
            ws.append(w_s.detach().requires_grad_(True))
        outs = cross_conv_torch(xs, ws[0], ws[1], ws[2] if w_s is not None else None, big_kernel=big_kernel)
        n = 3 if w_s is not None else 2
        grads = torch.autograd.grad(outs[:n], [xs, *ws], [g_h, g_v, g_s][:n], allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, [xs, *ws])]
    return grads[0], grads[1], grads[2], (grads[3] if w_s is not None else None)


@torch.library.custom_op("swtasks::cross_conv", mutates_args=(), device_types=("cpu", "cuda"))
def _cross_conv_op(
    x: torch.Tensor,
    w_h: torch.Tensor,
    w_v: torch.Tensor,
    w_s: Optional[torch.Tensor],  # noqa: UP006, UP007, UP045
    big_kernel: int,
    variant: str,
    precision: str,
    deterministic: bool,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # noqa: UP006, UP007, UP045
    if triton_available_for(x):
        return cross_conv_triton_forward(x, w_h, w_v, w_s, big_kernel=big_kernel, variant=variant,
                                         dot_precision=precision, deterministic=deterministic)
    outs = cross_conv_torch(x, w_h, w_v, w_s, big_kernel=big_kernel)
    return tuple(o.contiguous() for o in outs)


@torch.library.custom_op("swtasks::cross_conv_sum", mutates_args=(), device_types=("cpu", "cuda"))
def _cross_conv_sum_op(
    x: torch.Tensor,
    w_h: torch.Tensor,
    w_v: torch.Tensor,
    w_s: Optional[torch.Tensor],  # noqa: UP006, UP007, UP045
    big_kernel: int,
    variant: str,
    precision: str,
    deterministic: bool,
) -> torch.Tensor:
    if triton_available_for(x):
        return cross_conv_triton_forward(x, w_h, w_v, w_s, big_kernel=big_kernel, reduce=True, variant=variant,
                                         dot_precision=precision, deterministic=deterministic)
    return cross_conv_torch(x, w_h, w_v, w_s, big_kernel=big_kernel, reduce=True).contiguous()


@torch.library.custom_op("swtasks::cross_conv_backward", mutates_args=(), device_types=("cpu", "cuda"))
def _cross_conv_backward_op(
    g_h: torch.Tensor,
    g_v: torch.Tensor,
    g_s: torch.Tensor,
    x: torch.Tensor,
    w_h: torch.Tensor,
    w_v: torch.Tensor,
    w_s: Optional[torch.Tensor],  # noqa: UP006, UP007, UP045
    big_kernel: int,
    need_x: bool,
    need_w: bool,
    variant: str,
    precision: str,
    deterministic: bool,
) -> List[torch.Tensor]:  # noqa: UP006, UP007, UP045
    """Returns [dx, dw_h, dw_v, dw_s]; entries not asked for (or dw_s without w_s) are empty (0,)."""
    if triton_available_for(x):
        dx, dwh, dwv, dws = cross_conv_triton_backward(
            g_h, g_v, g_s, x, w_h, w_v, w_s, big_kernel=big_kernel, need_x=need_x, need_w=need_w,
            variant=variant, dot_precision=precision, deterministic=deterministic,
        )
    else:
        dx, dwh, dwv, dws = _torch_backward(g_h, g_v, g_s, x, w_h, w_v, w_s, big_kernel)
        dx = dx.contiguous() if need_x else None
        if not need_w:
            dwh = dwv = dws = None
    # a fresh empty tensor per missing entry: outputs of a custom op may not alias each other
    return [x.new_empty((0,)) if t is None else t.contiguous() for t in (dx, dwh, dwv, dws)]


def _new_like(t: torch.Tensor) -> torch.Tensor:
    return torch.empty(t.shape, dtype=t.dtype, device=t.device)


@_cross_conv_op.register_fake
def _(x, w_h, w_v, w_s, big_kernel, variant, precision, deterministic):
    check_cross_args(x, w_h, w_v, w_s, big_kernel)
    return _new_like(x), _new_like(x), _new_like(x)


@_cross_conv_sum_op.register_fake
def _(x, w_h, w_v, w_s, big_kernel, variant, precision, deterministic):
    check_cross_args(x, w_h, w_v, w_s, big_kernel)
    return _new_like(x)


@_cross_conv_backward_op.register_fake
def _(g_h, g_v, g_s, x, w_h, w_v, w_s, big_kernel, need_x, need_w, variant, precision, deterministic):
    dx = _new_like(x) if need_x else x.new_empty((0,))
    dwh = _new_like(w_h) if need_w else x.new_empty((0,))
    dwv = _new_like(w_v) if need_w else x.new_empty((0,))
    dws = _new_like(w_s) if (need_w and w_s is not None) else x.new_empty((0,))
    return [dx, dwh, dwv, dws]


def _setup_context(ctx, inputs, output):
    x, w_h, w_v, w_s, big_kernel, variant, precision, deterministic = inputs
    ctx.save_for_backward(x, w_h, w_v, w_s)
    ctx.big_kernel = big_kernel
    ctx.has_s = w_s is not None
    ctx.switches = (variant, precision, deterministic)


def _run_backward(ctx, g_h, g_v, g_s):
    x, w_h, w_v, w_s = ctx.saved_tensors
    need_x = ctx.needs_input_grad[0]
    need_w = any(ctx.needs_input_grad[1:4])
    dx, dwh, dwv, dws = _cross_conv_backward_op(
        g_h, g_v, g_s, x, w_h, w_v, w_s if ctx.has_s else None, ctx.big_kernel, need_x, need_w, *ctx.switches
    )
    return (
        dx if need_x else None,
        dwh if need_w else None,
        dwv if need_w else None,
        dws if (need_w and ctx.has_s) else None,
        None,
        None,
        None,
        None,
    )


def _backward3(ctx, g_h, g_v, g_s):
    x = ctx.saved_tensors[0]
    g_h, g_v, g_s = (torch.zeros_like(x) if g is None else g for g in (g_h, g_v, g_s))
    return _run_backward(ctx, g_h, g_v, g_s)


def _backward_sum(ctx, g):
    if g is None:
        g = torch.zeros_like(ctx.saved_tensors[0])
    return _run_backward(ctx, g, g, g)


_cross_conv_op.register_autograd(_backward3, setup_context=_setup_context)
_cross_conv_sum_op.register_autograd(_backward_sum, setup_context=_setup_context)


def cross_conv_triton(x, w_h, w_v, w_s=None, *, big_kernel: int, reduce: bool = False, variant=None,
                      dot_precision=None, deterministic=None):
    """Differentiable cross convolution through the custom ops (same contract as `cross_conv`).

    Runs the Triton kernels on CUDA tensors (and on CPU under TRITON_INTERPRET=1); CPU tensors
    without the interpreter fall back to the PyTorch path inside the op. The switches are resolved
    here (`resolve_options`) and travel with the op, so the backward uses the same ones.
    """
    k, _ = check_cross_args(x, w_h, w_v, w_s, big_kernel)
    opts = resolve_options(x, k, "triton", variant, dot_precision, deterministic)
    op = _cross_conv_sum_op if reduce else _cross_conv_op
    return op(x, w_h, w_v, w_s, big_kernel, opts.variant, opts.dot_precision, opts.deterministic)
