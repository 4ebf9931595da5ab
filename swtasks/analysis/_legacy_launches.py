"""Launch plans of the kernels as they were before issue 13 (direct gathers + the opt-in MMA variant),
for the kernel report's "before" table. Mirrors swtasks/ops/triton_cross.py at that commit."""

from __future__ import annotations

import math

from swtasks.ops import triton_cross as tc
from swtasks.ops.launch import Launch, LoopModel

BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


def _cfg_label(cfg) -> str:
    kw = ",".join(f"{k}{v}" for k, v in cfg.kwargs.items())
    return f"{kw},w{cfg.num_warps},s{cfg.num_stages}"


def _jit(fn):
    import triton  # noqa: PLC0415

    while not isinstance(fn, triton.runtime.jit.JITFunction):
        fn = fn.fn
    return fn


def report_launches(shape, dtype: str, precision: str | None, pinned: bool = False):
    import triton.language as tl  # noqa: PLC0415

    B, C, H, W, K, k, L = shape.B, shape.C, shape.H, shape.W, shape.K, shape.k, shape.L
    s = BYTES[dtype]
    n = shape.elements
    common = dict(KS=k, L=L, LO=K // 2, R=k // 2, HAS_S=True)
    direct = precision in (None, "ieee")
    if direct:
        for cfg in tc._TILE_CONFIGS:
            BH, BW, BT = cfg.kwargs["BH"], cfg.kwargs["BW"], cfg.kwargs["BT"]
            grid = B * C * math.ceil(H / BH) * math.ceil(W / BW)
            loops = (LoopModel(1, math.ceil(k * L / BT)), LoopModel(1, math.ceil(k * L / BT)),
                     LoopModel(1, math.ceil(k * k / BT), True))
            ptr = {p: dtype for p in ("x_ptr", "wh_ptr", "wv_ptr", "ws_ptr", "oh_ptr", "ov_ptr", "os_ptr")}
            yield Launch("direct_fwd", _jit(tc._cross_fwd_kernel), "forward", _cfg_label(cfg), ptr,
                         {"C": C, "H": H, "W": W}, dict(common, REDUCE=False, ACC=tl.float32, **cfg.kwargs),
                         cfg.num_warps, cfg.num_stages, grid, loops, 1.0, 4 * s * n)
            ptr = {p: dtype for p in ("gh_ptr", "gv_ptr", "gs_ptr", "wh_ptr", "wv_ptr", "ws_ptr", "dx_ptr")}
            yield Launch("direct_dx", _jit(tc._cross_dx_kernel), "grad_input", _cfg_label(cfg), ptr,
                         {"C": C, "H": H, "W": W}, dict(common, ACC=tl.float32, **cfg.kwargs),
                         cfg.num_warps, cfg.num_stages, grid, loops, 1.0, 4 * s * n)
        sms = 132
        want = math.ceil(4 * sms / (B * C))
        n_split = max(1, min(want, math.ceil(H / 16)))
        rs = math.ceil(math.ceil(H / n_split) / 16) * 16
        n_split = math.ceil(H / rs)
        t_all = 2 * k * L + k * k
        for cfg in tc._DW_CONFIGS:
            BH, BW, BT = cfg.kwargs["BH"], cfg.kwargs["BW"], cfg.kwargs["BT"]
            ty, tx = math.ceil(rs / BH), math.ceil(W / BW)
            loops = []
            for nt, vanish in ((k * L, False), (k * L, False), (k * k, True)):
                loops += [LoopModel(1, math.ceil(nt / BT), vanish and math.ceil(nt / BT) <= 1),
                          LoopModel(2, ty), LoopModel(3, tx)]
            ptr = {"x_ptr": dtype, "gh_ptr": dtype, "gv_ptr": dtype, "gs_ptr": dtype, "part_ptr": "fp32"}
            part_bytes = B * n_split * C * t_all * 4
            yield Launch("direct_dw", _jit(tc._cross_dw_kernel), "grad_weight", _cfg_label(cfg), ptr,
                         {"C": C, "H": H, "W": W, "RS": rs, "n_split": n_split},
                         dict(common, ACC=tl.float32, T_HV=k * L, T_ALL=t_all, **cfg.kwargs),
                         cfg.num_warps, cfg.num_stages, B * C * n_split, tuple(loops), 1.0,
                         4 * s * n + 2 * part_bytes)
    dot = {"fp32": tl.float32, "bf16": tl.bfloat16, "fp16": tl.float16}[dtype]
    for cfg in tc._MMA_CONFIGS:
        BH, BW, KC = cfg.kwargs["BH"], cfg.kwargs["BW"], cfg.kwargs["KC"]
        grid = B * C * math.ceil(H / BH) * math.ceil(W / BW)
        loops = tuple([LoopModel(1, math.ceil((BW + L - 1) / KC))] * k + [LoopModel(1, math.ceil((BH + L - 1) / KC))] * k)
        for kernel, pass_name, mode, sign in (("mma_fwd", "forward", 0, 1), ("mma_dx", "grad_input", 2, -1)):
            ptr = {p: dtype for p in ("a_ptr", "b_ptr", "c_ptr", "wh_ptr", "wv_ptr", "ws_ptr", "o1_ptr", "o2_ptr", "o3_ptr")}
            yield Launch(kernel, _jit(tc._cross_mma_kernel), pass_name, _cfg_label(cfg), ptr,
                         {"C": C, "H": H, "W": W},
                         dict(common, MODE=mode, SIGN=sign, DOT=dot, PREC=precision if dtype == "fp32" else None,
                              **cfg.kwargs),
                         cfg.num_warps, cfg.num_stages, grid, loops, 1.0, 4 * s * n)
