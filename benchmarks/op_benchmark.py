"""Benchmark of the shift-wise operator's paths against large-kernel baselines (a table).

    python benchmarks/op_benchmark.py                       # CPU here, CUDA when present
    python benchmarks/op_benchmark.py --device cuda --markdown >> benchmarks/RESULTS.md
    python benchmarks/op_benchmark.py --device cuda --stages 1,3 --dtype bf16 --estimates report.json

Operator-development tooling, kept beside its results rather than in the package. Needs torch and numpy
(and triton for the Triton rows): it runs from the source tree without installing.

Rows, at the tiny model's four stage shapes (swtasks.models.shiftwise_net.operator_shapes: C = 80/160/320/640
-> R = 60/122/246/492 rep channels, H = W = 56/28/14/7, K = 51/49/47/13, k = 3, nk = ceil(K/k), 2 paths, 4 groups):
  reference      the literal operator (small convs into the nk-times intermediate Y, shift-add by table)
  torch          the fast PyTorch path (cross kernels from the small kernels + strip convolutions)
  triton-tc      the Triton tensor-core (banded-matrix) kernels, variant='tc' (CUDA only); -tf32x3 / -tf32:
                 the same with those fp32 dot precisions (--tf32)
  triton-direct  the Triton CUDA-core gather kernels, variant='direct' (CUDA only)
  *-deploy       the deploy form (one folded cross kernel, reduce=True): forward only
  dense KxK      a K x K depthwise convolution (NCHW as nn.Conv2d calls it, and channels-last)
  SLaK KxK       K x 5 + 5 x K + 5 x 5 depthwise convolutions (NCHW and channels-last)
Time: median over repeats (after warm-up) of a forward, and of a forward plus backward (gradients
w.r.t. the input and every weight, dense random upstream gradients). Peak memory: the extra memory
allocated during the call (inputs excluded; outputs and everything autograd keeps included): on
CUDA from torch.cuda.max_memory_allocated, on CPU from the profiler's allocation events of PyTorch's
CPU allocator (oneDNN/MKL internal scratch space is not seen). On CUDA the tool also measures the
device's copy bandwidth (device-to-device copy) and FP32 FMA rate (an FMA-chain Triton kernel, or
an fp32 matmul without TF32 if Triton is missing) and reports achieved TFLOP/s and TB/s
(compulsory traffic: read the input once, write the outputs once) and, for the Triton rows, the
ratio of the measured time to the roofline bound max(bytes / bandwidth, FLOPs / FP32 rate)
(formulas: docs/operator.md, "Cost model"). With `estimates=` (the kernel report's JSON, see
benchmarks/kernel_report.py) the Triton rows carry the static estimate of their forward beside
the measured time.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

if __name__ == "__main__":  # run as a script from the source tree: the repository root goes on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from swtasks.models.shiftwise_net import operator_shapes, shiftwise_arch  # noqa: E402
from swtasks.ops.cross_conv import cross_conv  # noqa: E402
from swtasks.ops.shiftwise import rep_channel_count, shiftwise_conv, shiftwise_reference, shiftwise_tables  # noqa: E402

STAGES = {s.stage: s for s in operator_shapes("tiny")}
_TINY = shiftwise_arch("tiny")
GHOST_RATIO, N_PATH, N_REP = _TINY["ghost_ratio"], _TINY["n_path"], _TINY["n_rep"]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# ------------------------------------------------------------------------------------------------
# problem set-up
# ------------------------------------------------------------------------------------------------


class Problem:
    def __init__(
        self,
        stage: int,
        batch: int,
        dtype: torch.dtype,
        device: torch.device,
        k: int = 3,
        smoke: bool = False,
    ):
        shape = STAGES[stage]
        C, HW, K = shape.channels, shape.size, shape.kernel
        if smoke:
            C, HW = 6, min(HW, 10)
        self.stage, self.C, self.H, self.W, self.K, self.k = stage, C, HW, HW, K, k
        self.R = R = rep_channel_count(C, GHOST_RATIO)
        self.nk = nk = math.ceil(K / k)
        self.L = k * nk
        self.B, self.dtype, self.device = batch, dtype, device
        gen = torch.Generator().manual_seed(stage)

        def rnd(*shape, scale=1.0):
            return (torch.randn(*shape, generator=gen) * scale).to(device=device, dtype=dtype)

        self.x = rnd(batch, R, HW, HW)
        self.weight = rnd(N_PATH, R * nk, k, k, scale=0.1)
        t = shiftwise_tables(C, K, k, GHOST_RATIO, N_REP)
        assert t.rep_idx.numel() == R
        self.tables = (t.slot_h.to(device), t.slot_v.to(device), t.ident.to(device))
        # deploy form: one folded cross kernel
        self.w_h = rnd(R, k, self.L, scale=0.1)
        self.w_v = rnd(R, self.L, k, scale=0.1)
        # baselines
        self.w_dense = rnd(R, 1, K, K, scale=0.02)
        self.w_slak = (rnd(R, 1, K, 5, scale=0.05), rnd(R, 1, 5, K, scale=0.05), rnd(R, 1, 5, 5, scale=0.1))

    @property
    def elements(self) -> int:
        return self.B * self.R * self.H * self.W

    def describe(self) -> str:
        return f"B={self.B} R={self.R} {self.H}x{self.W} K={self.K} k={self.k} nk={self.nk}"


# ------------------------------------------------------------------------------------------------
# the rows: (name, fn(inputs) -> outputs, inputs, flops/elem, bytes/elem in values, #outputs, note)
# ------------------------------------------------------------------------------------------------


def triton_variants(dtype: torch.dtype, tf32: bool):
    """(row suffix, variant, dot precision, note) of the Triton rows."""
    rows = [("tc", "tc", "ieee", "tensor-core banded kernels" + (" (fp32: ieee dots)" if dtype == torch.float32 else ""))]
    if dtype == torch.float32 and tf32:
        rows.append(("tc-tf32x3", "tc", "tf32x3", "tensor cores, fp32 dots in 3xTF32 (~fp32 accuracy)"))
        rows.append(("tc-tf32", "tc", "tf32", "tensor cores, fp32 dots in TF32 (inexact)"))
    rows.append(("direct", "direct", "ieee", "CUDA-core gather kernels"))
    return rows


def make_rows(p: Problem, device: torch.device, triton_ok: bool, triton_note: str, tf32: bool = False,
              deterministic: bool | None = None):
    rows = []
    K, k, L, R = p.K, p.k, p.L, p.R
    cross_flops = 2 * (2 * k * L + k * k)
    cl = torch.channels_last

    def fast(**switches):
        """The operator with the given cross_conv switches, from the small kernels (kernel build included)."""
        return (lambda x, weight: shiftwise_conv(x, weight, *p.tables, big_kernel=K, **switches)), (p.x, p.weight), \
            "kernel build included"

    e = (k - 1) - k // 2
    ref_flops = 2 * N_PATH * p.nk * k * k * (p.H + 2 * e) * (p.W + 2 * e) / (p.H * p.W) + N_REP * (2 * p.nk + 1)
    rows.append(("reference", lambda x, weight: shiftwise_reference(x, weight, *p.tables, big_kernel=K),
                 (p.x, p.weight), ref_flops, 4, "literal: nk-times intermediate Y"))
    fn, ins, note = fast(backend="torch")
    rows.append(("torch", fn, ins, cross_flops, 4, note))
    variants = triton_variants(p.dtype, tf32)
    for suffix, variant, prec, vnote in variants:
        if triton_ok:
            fn, ins, note = fast(backend="triton", variant=variant, dot_precision=prec, deterministic=deterministic)
            rows.append((f"triton-{suffix}", fn, ins, cross_flops, 4, f"{vnote}; {note}"))
        else:
            rows.append((f"triton-{suffix}", None, (), 0, 0, triton_note))
    deploy_flops = 2 * (2 * k * L)

    def deploy(**switches):
        return lambda x, wh, wv: cross_conv(x, wh, wv, None, big_kernel=K, reduce=True, **switches)

    rows.append(("torch-deploy", deploy(backend="torch"), (p.x, p.w_h, p.w_v), deploy_flops, 2,
                 "one folded cross kernel"))
    if triton_ok:
        for suffix, variant, prec, vnote in variants:
            rows.append((f"triton-{suffix}-deploy",
                         deploy(backend="triton", variant=variant, dot_precision=prec, deterministic=deterministic),
                         (p.x, p.w_h, p.w_v), deploy_flops, 2, f"{vnote}; one folded cross kernel"))
    rows.append(("dense KxK", lambda x, w: F.conv2d(x, w, padding=K // 2, groups=R), (p.x, p.w_dense), 2 * K * K, 2,
                 "NCHW, nn.Conv2d padding"))
    rows.append(("dense KxK CL", lambda x, w: F.conv2d(x, w, padding=K // 2, groups=R),
                 (p.x.contiguous(memory_format=cl), p.w_dense), 2 * K * K, 2, "channels-last"))

    def slak(x, w1, w2, w3):
        return (
            F.conv2d(x, w1, padding=(K // 2, 2), groups=R),
            F.conv2d(x, w2, padding=(2, K // 2), groups=R),
            F.conv2d(x, w3, padding=2, groups=R),
        )

    slak_flops = 2 * (10 * K + 25)
    rows.append(("SLaK Kx5+5xK+5x5", slak, (p.x, *p.w_slak), slak_flops, 4, "NCHW"))
    rows.append(("SLaK ... CL", slak, (p.x.contiguous(memory_format=cl), *p.w_slak), slak_flops, 4, "channels-last"))
    return rows


# ------------------------------------------------------------------------------------------------
# timing and memory
# ------------------------------------------------------------------------------------------------


def as_tuple(out):
    return out if isinstance(out, (tuple, list)) else (out,)


class Runner:
    def __init__(self, device: torch.device, repeats: int, warmup: int, max_cell_s: float, memory: bool):
        self.device, self.repeats, self.warmup, self.max_cell_s, self.memory = (
            device,
            repeats,
            warmup,
            max_cell_s,
            memory,
        )
        self.cuda = device.type == "cuda"

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def _once(self, call) -> float:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            call()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) * 1e-3
        t0 = time.perf_counter()
        call()
        return time.perf_counter() - t0

    def measure(self, call) -> tuple[float, int, float | None]:
        """(median seconds, number of timed runs, peak extra MiB or None).

        CUDA: warm-up runs (Triton autotuning and compilation happen there), one run under the
        allocator's peak statistics, then up to `repeats` timed runs (fewer once the cell has used
        max_cell_s). CPU: the first run is the memory-profiled one and doubles as warm-up; a cell
        whose first run already takes half the budget reports that run alone (runs = 1)."""
        start = time.perf_counter()
        mem = None
        if self.cuda:
            for _ in range(self.warmup):
                self._once(call)
            mem = self.peak_mib(call)
            start = time.perf_counter()  # autotuning/compilation in the warm-up does not eat the budget
        else:
            t_first = time.perf_counter()
            mem = self.peak_mib(call) if self.memory else None
            if mem is None:
                call()
            first = time.perf_counter() - t_first
            if first > self.max_cell_s / 2:
                return first, 1, mem
            for _ in range(self.warmup - 1):
                self._once(call)
        runs = []
        for _ in range(self.repeats):
            runs.append(self._once(call))
            if time.perf_counter() - start > self.max_cell_s:
                break
        return statistics.median(runs), len(runs), mem

    def peak_mib(self, call) -> float | None:
        if not self.memory:
            return None
        if self.cuda:
            self.sync()
            torch.cuda.reset_peak_memory_stats(self.device)
            base = torch.cuda.memory_allocated(self.device)
            call()
            self.sync()
            return (torch.cuda.max_memory_allocated(self.device) - base) / 2**20
        return cpu_peak_mib(call)


def cpu_peak_mib(call) -> float | None:
    """Peak MiB allocated by PyTorch's CPU allocator during `call()` (the model benchmark's measure; imported
    here, on CPU only, so that the GPU run needs nothing of swtasks beyond the operator and the model table)."""
    from swtasks.analysis.benchmark import peak_memory_mib  # noqa: PLC0415

    return peak_memory_mib(call, torch.device("cpu"))


def bench_row(runner: Runner, fn, inputs, *, backward: bool):
    leaves = [t.detach().clone().requires_grad_(backward) for t in inputs]
    if not backward:

        def call():
            with torch.no_grad():
                return fn(*leaves)

    else:
        with torch.no_grad():
            outs = as_tuple(fn(*leaves))
        gen = torch.Generator(device=outs[0].device).manual_seed(0)
        ups = [torch.randn(o.shape, generator=gen, device=o.device, dtype=o.dtype) for o in outs]

        def call():
            o = as_tuple(fn(*leaves))
            pairs = [(a, g) for a, g in zip(o, ups) if a.requires_grad]
            return torch.autograd.grad(
                [a for a, _ in pairs], leaves, [g for _, g in pairs], allow_unused=True
            )

    return runner.measure(call)


# ------------------------------------------------------------------------------------------------
# device ceilings (CUDA)
# ------------------------------------------------------------------------------------------------


def copy_bandwidth(device) -> float:
    """Bytes/s of a large device-to-device copy (read + write counted)."""
    n = 256 * 2**20  # 1 GiB of fp32
    a = torch.empty(n, dtype=torch.float32, device=device).fill_(1.0)
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    torch.cuda.synchronize(device)
    times = []
    for _ in range(10):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        b.copy_(a)
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e) * 1e-3)
    del a, b
    return 2 * n * 4 / statistics.median(times)


def fp32_fma_rate(device) -> tuple[float, str]:
    """FLOP/s of FP32 FMAs: a Triton kernel with 8 independent FMA chains per element; falls back
    to an fp32 matmul (TF32 off) when Triton is unavailable."""
    try:
        import triton  # noqa: PLC0415
        import triton.language as tl  # noqa: PLC0415

        @triton.jit
        def fma_kernel(out_ptr, a, b, ITERS: tl.constexpr, BLOCK: tl.constexpr):
            offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
            x0 = offs.to(tl.float32) * 1e-9
            x1, x2, x3 = x0 + 1.0, x0 + 2.0, x0 + 3.0
            x4, x5, x6, x7 = x0 + 4.0, x0 + 5.0, x0 + 6.0, x0 + 7.0
            for i in range(ITERS):  # noqa: B007
                x0 = x0 * a + b
                x1 = x1 * a + b
                x2 = x2 * a + b
                x3 = x3 * a + b
                x4 = x4 * a + b
                x5 = x5 * a + b
                x6 = x6 * a + b
                x7 = x7 * a + b
            tl.store(out_ptr + offs, x0 + x1 + x2 + x3 + x4 + x5 + x6 + x7)

        sms = torch.cuda.get_device_properties(device).multi_processor_count
        block, iters = 1024, 2048
        n = block * sms * 16
        out = torch.empty(n, dtype=torch.float32, device=device)

        def run():
            fma_kernel[(n // block,)](out, 0.999, 1e-3, ITERS=iters, BLOCK=block, num_warps=8)

        for _ in range(3):
            run()
        torch.cuda.synchronize(device)
        times = []
        for _ in range(10):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            run()
            e.record()
            e.synchronize()
            times.append(s.elapsed_time(e) * 1e-3)
        return 2 * 8 * iters * n / statistics.median(times), "Triton FMA-chain kernel"
    except Exception as exc:  # noqa: BLE001
        prev = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            a = torch.randn(8192, 8192, device=device)
            for _ in range(2):
                a @ a
            torch.cuda.synchronize(device)
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            for _ in range(5):
                a @ a
            e.record()
            e.synchronize()
            return 2 * 8192**3 * 5 / (
                s.elapsed_time(e) * 1e-3
            ), f"fp32 matmul, TF32 off (Triton failed: {exc})"
        finally:
            torch.backends.cuda.matmul.allow_tf32 = prev


# ------------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------------


def fmt_ms(t):
    return "-" if t is None else (f"{t * 1e3:.3f}" if t < 0.01 else f"{t * 1e3:.1f}")


def fmt_mib(m):
    return "-" if m is None else f"{m:.0f}" if m >= 10 else f"{m:.1f}"


def load_estimates(path: str | None) -> dict:
    """(stage, dtype variant, kernel family, pass) -> best sm_90 estimate in seconds, from the kernel
    report's JSON (benchmarks/kernel_report.py --json)."""
    if not path:
        return {}
    best: dict = {}
    for rec in json.loads(Path(path).read_text())["records"]:
        if rec["arch"] != "sm_90":
            continue
        family = rec["kernel"].split("_")[0]  # tc | direct
        for st in rec["stages"]:
            if st.get("estimated_us") is None or not st.get("fits", True):
                continue
            key = (st["stage"], rec["dtype"], family, st["pass"])
            best[key] = min(best.get(key, 1e30), st["estimated_us"] * 1e-6)
    return best


def _estimate_for(estimates: dict, stage: int, dname: str, name: str, backward: bool):
    """Static estimate of a Triton row (forward, or forward + input and weight gradients)."""
    if not estimates or not name.startswith("triton-"):
        return None
    parts = name.split("-")
    family = parts[1]
    prec = parts[2] if len(parts) > 2 and parts[2].startswith("tf32") else "ieee"
    variant = f"fp32-{prec}" if dname == "fp32" else dname
    deploy = name.endswith("deploy")
    passes = ["forward_sum"] if deploy else (["forward", "grad_input", "grad_weight"] if backward else ["forward"])
    vals = [estimates.get((stage, variant, family, p)) for p in passes]
    return None if any(v is None for v in vals) else sum(vals)


def run(*, device: str, batch: int | None = None, stages=(1, 2, 3, 4), dtypes=None, repeats=None, warmup=None,
        max_cell_seconds=None, paths=None, threads=None, memory: bool = True, tf32: bool = False,
        backward: bool = True, markdown: bool = False, smoke: bool = False, allow_cpu_triton: bool = False,
        estimates: str | None = None, deterministic: bool | None = None, command: str = "") -> str:
    """Run the benchmark and return the table (text, or a markdown section for benchmarks/RESULTS.md)."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but CUDA is not available")
    if threads:
        torch.set_num_threads(threads)
    batch = batch or (64 if cuda else 8)
    dtypes = list(dtypes or (["fp32", "bf16"] if cuda else ["fp32"]))
    stages = list(stages)
    runner = Runner(
        device,
        repeats or (10 if cuda else 3),
        warmup if warmup is not None else (2 if cuda else 1),
        max_cell_seconds or (4.0 if cuda else 6.0),
        memory,
    )
    est = load_estimates(estimates)

    triton_ok, triton_note = False, "CUDA only (the CPU interpreter is for tests, not timing)"
    if cuda or allow_cpu_triton:
        try:
            import triton  # noqa: F401, PLC0415

            triton_ok = True
        except ImportError as exc:
            triton_note = f"triton not importable: {exc}"

    started = time.time()
    header = {
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "device": torch.cuda.get_device_name(device)
        if cuda
        else (platform.processor() or platform.machine()),
        "torch": torch.__version__,
        "triton": _triton_version(),
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "batch": batch,
        "Triton tile configurations": "pinned per shape (deterministic mode)" if deterministic
        else "tuned on the first call (cached)",
        "repeats": f"median of <= {runner.repeats} timed runs after {runner.warmup} warm-up (a cell stops repeating after {runner.max_cell_s:g} s; on CPU a cell whose first, memory-profiled run takes over half of that reports that run alone)",
    }
    if not cuda:
        header["device"] = f"{_cpu_name()} ({os.cpu_count()} logical CPUs)"
        with contextlib.suppress(OSError, AttributeError):
            header["load average at start (1/5/15 min)"] = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    ceilings = {}
    if cuda:
        bw = copy_bandwidth(device)
        fma, how = fp32_fma_rate(device)
        ceilings = {"bw": bw, "fma": fma}
        header["copy bandwidth"] = f"{bw / 1e12:.2f} TB/s (device-to-device copy, read + write)"
        header["FP32 FMA rate"] = f"{fma / 1e12:.1f} TFLOP/s ({how})"
    notes = []

    if not cuda and runner.memory:
        cpu_peak_mib(lambda: torch.ones(8).sum())  # initialise the profiler once (seconds), outside any cell
    results = []  # dicts
    for stage in stages:
        for dname in dtypes:
            dtype = DTYPES[dname]
            if not cuda and dtype != torch.float32:
                notes.append(f"{dname} on CPU: slow paths in PyTorch's CPU convolutions; timed anyway")
            p = Problem(stage, batch, dtype, device, smoke=smoke)
            ref_outs = {}
            for name, fn, inputs, flops, nvals, note in make_rows(
                p, device, triton_ok, triton_note, tf32, deterministic
            ):
                if paths and not any(s in name for s in paths):
                    continue
                r = {
                    "stage": stage,
                    "shape": p.describe(),
                    "dtype": dname,
                    "path": name,
                    "note": note,
                    "fwd": None,
                    "fwdbwd": None,
                    "mem_fwd": None,
                    "mem_fwdbwd": None,
                    "n": "",
                    "est_fwd": _estimate_for(est, stage, dname, name, False),
                    "est_fwdbwd": None if name.endswith("deploy") else _estimate_for(est, stage, dname, name, True),
                }
                if fn is None:
                    results.append(r)
                    continue
                try:
                    if name in ("torch", "torch-deploy") or name.startswith("triton"):
                        # correctness guard: the Triton rows against the PyTorch path, same inputs
                        with torch.no_grad():
                            outs = [o.float() for o in as_tuple(fn(*inputs))]
                        if name.startswith("torch"):
                            ref_outs[name] = outs
                        else:
                            ref = ref_outs.get("torch-deploy" if name.endswith("deploy") else "torch")
                            if ref is not None:
                                rel = max(
                                    ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()
                                    for a, b in zip(outs, ref)
                                )
                                r["note"] += f"; max rel diff vs torch {rel:.1e}"
                        del outs
                    r["fwd"], n1, r["mem_fwd"] = bench_row(runner, fn, inputs, backward=False)
                    r["n"] = str(n1)
                    if backward and not name.endswith("deploy"):
                        r["fwdbwd"], n2, r["mem_fwdbwd"] = bench_row(runner, fn, inputs, backward=True)
                        r["n"] += f"/{n2}"
                except Exception as exc:  # noqa: BLE001  (report, keep going)
                    r["note"] = f"FAILED: {type(exc).__name__}: {str(exc)[:120]}"
                if cuda and r["fwd"]:
                    elems = p.elements
                    s = torch.finfo(dtype).bits // 8
                    r["tflops"] = flops * elems / r["fwd"] / 1e12
                    r["tbs"] = nvals * s * elems / r["fwd"] / 1e12
                    if name.startswith("triton"):
                        bound_f = max(nvals * s * elems / ceilings["bw"], flops * elems / ceilings["fma"])
                        r["roof_fwd"] = r["fwd"] / bound_f
                        if r["fwdbwd"]:
                            # backward: read 3 grads + x, write dx (5 values); dx and dW: 2x the forward FLOPs
                            bound_b = max(
                                (nvals + 5) * s * elems / ceilings["bw"], 3 * flops * elems / ceilings["fma"]
                            )
                            r["roof_fwdbwd"] = r["fwdbwd"] / bound_b
                results.append(r)
                print(
                    f"# stage {stage} {dname} {name}: fwd {fmt_ms(r['fwd'])} ms, fwd+bwd {fmt_ms(r['fwdbwd'])} ms"
                    f" [{time.time() - started:.0f} s]",
                    file=sys.stderr,
                    flush=True,
                )

    summary = summarise(results, stages, dtypes)
    header["wall time"] = f"{time.time() - started:.0f} s"
    if est:
        notes.append(f"est: static estimates of the kernel report ({estimates}), best sm_90 configuration")
    if markdown:
        return render_markdown(header, results, summary, notes, cuda, command)
    return render_text(header, results, summary, notes, cuda)


def _triton_version():
    try:
        import triton  # noqa: PLC0415

        return triton.__version__
    except ImportError:
        return "not installed"


def _cpu_name():
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def summarise(results, stages, dtypes):
    lines = []
    for stage in stages:
        for d in dtypes:
            rows = {r["path"]: r for r in results if r["stage"] == stage and r["dtype"] == d}
            dense = [r for n, r in rows.items() if n.startswith("dense") and r["fwd"]]
            for fast in ("torch", "triton-tc", "triton-direct"):
                f = rows.get(fast)
                if not f or not f["fwd"] or not dense:
                    continue
                best_f = min(dense, key=lambda r: r["fwd"])
                parts = [
                    f"stage {stage} {d}: {fast} vs best dense ({best_f['path']}): forward "
                    f"{best_f['fwd'] / f['fwd']:.1f}x faster"
                ]
                db = [r for r in dense if r["fwdbwd"]]
                if f["fwdbwd"] and db:
                    best_b = min(db, key=lambda r: r["fwdbwd"])
                    parts.append(f"forward+backward {best_b['fwdbwd'] / f['fwdbwd']:.1f}x ({best_b['path']})")
                ref = rows.get("reference")
                if ref and ref["fwdbwd"] and f["fwdbwd"]:
                    parts.append(f"vs reference fwd+bwd {ref['fwdbwd'] / f['fwdbwd']:.1f}x")
                lines.append(", ".join(parts))
    return lines


COLS = [
    ("stage", "stage"),
    ("dtype", "dtype"),
    ("path", "path"),
    ("fwd", "fwd ms"),
    ("fwdbwd", "fwd+bwd ms"),
    ("mem_fwd", "peak fwd MiB"),
    ("mem_fwdbwd", "peak fwd+bwd MiB"),
]
GPU_COLS = [
    ("est_fwd", "est fwd ms"),
    ("est_fwdbwd", "est fwd+bwd ms"),
    ("tflops", "fwd TFLOP/s"),
    ("tbs", "fwd TB/s"),
    ("roof_fwd", "fwd / roofline"),
    ("roof_fwdbwd", "fwd+bwd / roofline"),
]


def _cells(r, cuda):
    out = [
        str(r["stage"]),
        r["dtype"],
        r["path"],
        fmt_ms(r["fwd"]),
        fmt_ms(r["fwdbwd"]),
        fmt_mib(r["mem_fwd"]),
        fmt_mib(r["mem_fwdbwd"]),
    ]
    if cuda:
        for key, _ in GPU_COLS:
            v = r.get(key)
            out.append(fmt_ms(v) if key.startswith("est") else ("-" if v is None else f"{v:.2f}"))
    out.append(r["n"])
    out.append(r["note"])
    return out


def render_text(header, results, summary, notes, cuda):
    names = [c[1] for c in COLS] + ([c[1] for c in GPU_COLS] if cuda else []) + ["runs", "note"]
    rows = [_cells(r, cuda) for r in results]
    widths = [max(len(n), *(len(row[i]) for row in rows)) if rows else len(n) for i, n in enumerate(names)]
    lines = [f"{k}: {v}" for k, v in header.items()]
    shapes = sorted({(r["stage"], r["shape"]) for r in results})
    lines += [f"stage {s}: {d}" for s, d in shapes]
    lines.append("")
    lines.append("  ".join(n.ljust(w) for n, w in zip(names, widths)))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    lines += [""] + summary + [f"note: {n}" for n in dict.fromkeys(notes)]
    return "\n".join(lines)


def render_markdown(header, results, summary, notes, cuda, command):
    lines = [f"### {header['device']} - {header['date']}", "", f"Command: `{command.strip()}`", ""]
    lines += [f"- {k}: {v}" for k, v in header.items() if k not in ("date",)]
    shapes = sorted({(r["stage"], r["shape"]) for r in results})
    lines += [f"- stage {s}: {d}" for s, d in shapes]
    lines.append("")
    names = [c[1] for c in COLS] + ([c[1] for c in GPU_COLS] if cuda else []) + ["runs", "note"]
    lines.append("| " + " | ".join(names) + " |")
    lines.append("|" + "|".join("---" for _ in names) + "|")
    lines += ["| " + " | ".join(_cells(r, cuda)) + " |" for r in results]
    lines.append("")
    lines += [f"- {s}" for s in summary]
    lines += [f"- note: {n}" for n in dict.fromkeys(notes)]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------


def main(argv=None) -> None:
    import argparse  # noqa: PLC0415

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=None, help="default: 64 on CUDA, 8 on CPU")
    ap.add_argument("--stages", default="1,2,3,4", help="comma-separated subset of 1,2,3,4")
    ap.add_argument("--dtype", default=None, help="comma-separated fp32,bf16,fp16 (default: fp32,bf16 on CUDA, fp32 on CPU)")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per cell (default 10 CUDA, 3 CPU)")
    ap.add_argument("--warmup", type=int, default=None, help="warm-up runs per cell (default 2 CUDA, 1 CPU)")
    ap.add_argument("--max-cell-seconds", type=float, default=None,
                    help="stop repeating a cell after this long (default 4 CUDA, 6 CPU)")
    ap.add_argument("--paths", default=None, help="comma-separated row names to keep (substring match)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    ap.add_argument("--tf32", action="store_true", help="add rows: tensor-core kernels with tf32x3 and tf32 dots (fp32)")
    ap.add_argument("--no-backward", action="store_true", help="forward only")
    ap.add_argument("--markdown", action="store_true", help="emit a markdown section for benchmarks/RESULTS.md")
    ap.add_argument("--estimates", default=None, help="kernel report JSON: print static estimates beside the times")
    ap.add_argument("--deterministic", action="store_true",
                    help="Triton rows in deterministic mode: the pinned tile configuration, no tuning")
    # plumbing checks without a GPU: tiny shapes, Triton rows on CPU under TRITON_INTERPRET=1
    ap.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--allow-cpu-triton", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    print(run(device=args.device, batch=args.batch, stages=[int(s) for s in args.stages.split(",")],
              dtypes=args.dtype.split(",") if args.dtype else None, repeats=args.repeats, warmup=args.warmup,
              max_cell_seconds=args.max_cell_seconds, paths=args.paths.split(",") if args.paths else None,
              threads=args.threads, memory=not args.no_memory, tf32=args.tf32, backward=not args.no_backward,
              markdown=args.markdown, smoke=args.smoke, allow_cpu_triton=args.allow_cpu_triton,
              estimates=args.estimates, deterministic=True if args.deterministic else None,
              command="python benchmarks/op_benchmark.py " + " ".join(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    main()
