"""Static report of the package's Triton kernels, compiled for real GPUs on a machine without one.

For every kernel launch the operator can make at the SW-T stage shapes - every tile configuration
the tuner may pick, every dtype (fp32 with each dot precision, bf16, fp16) - the report compiles
the kernel for sm_80 and sm_90 with `triton.compile(..., target=GPUTarget("cuda", arch, 32))` (no
GPU needed), reads the cubin with the `cuobjdump` shipped inside the triton package, and records:
registers, spilled bytes (ptxas stack frame + local memory), shared memory, tensor-core instructions
(HMMA / HGMMA), global loads, FP32 FMAs, and an estimated time per stage shape beside the roofline
bound of the pass.

The model (stated, not measured; constants in `H100`, printed with every report):
- dynamic instruction counts = static SASS counts inside each loop x the loop's trip count (the
  launch plan says which loops the kernel has and how often they run; a mismatch between the plan
  and the SASS is reported, not guessed), code outside loops counted once (times the share of
  programs that take that branch);
- time = max(issue, load/store, tensor core, DRAM), each term for the busiest SM (programs are
  spread evenly over the SMs, rounded up):
  issue = warp-instructions / (4 per clock per SM), load/store = warp-wide memory instructions /
  (1 per clock per SM), tensor core = MMA FLOPs decoded from the HMMA / HGMMA mnemonics / the dense
  tensor-core peak (HMMA = the sm_80 mma.sync on Hopper: 2/3 of the HGMMA rate), DRAM = the launch's
  compulsory traffic / HBM bandwidth (re-reads of halos and of tiles shared by programs are assumed to
  hit L2). Latency, occupancy and bank conflicts are not modelled: an estimate is a lower bound for
  the kernel as compiled, to be corrected by measurements (scripts/gpu_checks.sh);
- bound = max(compulsory bytes / bandwidth, useful FLOPs / peak) of the pass, with the FP32 FMA peak
  for fp32 `ieee` (and the CUDA-core kernels), the tensor-core peak for bf16/fp16 and tf32 (tf32x3:
  a third of it).

Operator-development tooling, kept beside its results (benchmarks/kernel_report/) rather than in the package.
Imports the standard library, triton, swtasks.ops and the stage table of swtasks.models.shiftwise_net (torch,
numpy); runs from the source tree on any machine with the CUDA build of triton, GPU or not:

    python benchmarks/kernel_report.py                          # all stages, dtypes, configs
    python benchmarks/kernel_report.py --stages 1 --dtypes bf16 --archs 90 --summary-only
    python benchmarks/kernel_report.py --json report.json --csv report.csv --markdown report.md

Per (kernel, config, dtype, arch, stage): registers, spilled bytes, shared memory, tensor-core instructions,
global loads, FP32 FMAs, estimated time and the roofline bound of the pass; then the best fitting
configuration per pass.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

if __name__ == "__main__":  # run as a script from the source tree: the repository root goes on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from swtasks.models.shiftwise_net import operator_shapes  # noqa: E402

__all__ = [
    "GPUModel",
    "H100",
    "STAGES",
    "StageShape",
    "analyse_sass",
    "bound_us",
    "compile_launch",
    "estimate",
    "report",
    "run_report",
]


# ------------------------------------------------------------------------------------------------
# shapes and the machine model
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StageShape:
    stage: int
    B: int
    C: int  # rep channels entering the operator
    H: int
    W: int
    K: int
    k: int = 3

    @property
    def L(self) -> int:
        return self.k * -(-self.K // self.k)

    @property
    def elements(self) -> int:
        return self.B * self.C * self.H * self.W


# SW-T (tiny) at 224 x 224, batch 64: rep channels, feature size, big kernel
STAGES = {s.stage: StageShape(s.stage, 64, s.rep, s.size, s.size, s.kernel, s.small) for s in operator_shapes("tiny")}


@dataclass(frozen=True)
class GPUModel:
    name: str
    sms: int
    clock_hz: float
    issue_per_clock: float  # warp-instructions per clock per SM
    lsu_per_clock: float  # warp-wide load/store instructions per clock per SM
    dram_bytes_per_s: float
    fp32_flops: float
    tc_flops: dict  # dense tensor-core FLOP/s by operand type (HGMMA rate)
    hmma_efficiency: float  # mma.sync (sm_80 code) rate / HGMMA rate on this GPU
    regs_per_sm: int
    max_threads_per_sm: int
    shared_per_sm: int
    shared_per_block: dict  # arch -> largest dynamic shared memory per block

    def describe(self) -> str:
        tc = ", ".join(f"{k} {v / 1e12:.1f}" for k, v in self.tc_flops.items())
        return (
            f"{self.name}: {self.sms} SMs at {self.clock_hz / 1e9:.2f} GHz, issue {self.issue_per_clock:g} "
            f"warp-instr/clk/SM, load/store {self.lsu_per_clock:g} warp-instr/clk/SM, HBM "
            f"{self.dram_bytes_per_s / 1e12:.2f} TB/s, FP32 {self.fp32_flops / 1e12:.1f} TFLOP/s, "
            f"tensor cores (dense, TFLOP/s) {tc}; HMMA at {self.hmma_efficiency:.2f} of HGMMA"
        )


H100 = GPUModel(
    name="H100 SXM5 (model constants)",
    sms=132,
    clock_hz=1.98e9,
    issue_per_clock=4.0,
    lsu_per_clock=1.0,
    dram_bytes_per_s=3.35e12,
    fp32_flops=66.9e12,
    tc_flops={"bf16": 989.4e12, "fp16": 989.4e12, "tf32": 494.7e12, "fp64": 66.9e12},
    hmma_efficiency=2.0 / 3.0,
    regs_per_sm=65536,
    max_threads_per_sm=2048,
    shared_per_sm=233472,
    shared_per_block={80: 166912, 90: 232448},
)

ELEMENT_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "fp64": 8}


def variant_peak(dtype: str, precision: str | None, gpu: GPUModel = H100) -> float:
    """The arithmetic peak a pass is judged against."""
    if dtype in ("bf16", "fp16"):
        return gpu.tc_flops[dtype]
    if dtype == "fp32" and precision == "tf32":
        return gpu.tc_flops["tf32"]
    if dtype == "fp32" and precision == "tf32x3":
        return gpu.tc_flops["tf32"] / 3
    return gpu.fp32_flops


def pass_bytes_flops(shape: StageShape, pass_name: str, dtype: str) -> tuple[float, float]:
    """Compulsory DRAM bytes and useful FLOPs of a pass (three branch outputs; forward_sum: the sum)."""
    s = ELEMENT_BYTES[dtype]
    n = shape.elements
    k, L = shape.k, shape.L
    if pass_name == "forward_sum":
        return 2 * s * n, 2 * 2 * k * L * n
    # forward: read x, write 3 outputs; grad_input: read 3 grads, write dx; grad_weight: read x + 3 grads
    return 4 * s * n, 2 * (2 * k * L + k * k) * n


def bound_us(shape: StageShape, pass_name: str, dtype: str, precision: str | None, gpu: GPUModel = H100):
    byts, flops = pass_bytes_flops(shape, pass_name, dtype)
    return 1e6 * max(byts / gpu.dram_bytes_per_s, flops / variant_peak(dtype, precision, gpu))


# ------------------------------------------------------------------------------------------------
# compiling and reading SASS
# ------------------------------------------------------------------------------------------------

_INSTR = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(?:\{\s*)?(@!?U?P[T0-9]+\s+)?([A-Z][A-Za-z0-9_.]*)([^;]*);")
_MMA = ("HMMA", "HGMMA")
_GLOBAL_LOADS = ("LDG", "LDGSTS", "UTMALDG", "UBLKCP")
_MEMORY = ("LDG", "LDGSTS", "STG", "LDS", "LDSM", "STS", "STSM", "LDL", "STL", "ATOM", "ATOMG", "RED", "ATOMS")


def _cuobjdump() -> str:
    import triton  # noqa: PLC0415

    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not path.exists():
        raise RuntimeError(f"cuobjdump not found at {path}: the kernel report needs the CUDA triton wheel")
    return str(path)


def _jit_fn(fn):
    import triton  # noqa: PLC0415

    while not isinstance(fn, triton.runtime.jit.JITFunction):
        fn = fn.fn
    return fn


def _signature(launch):
    """(signature, constexprs, attrs) in the form triton.compile's ASTSource takes (triton >= 3.3):
    pointers 16-byte aligned (as every launch from torch tensors is), runtime integers equal to 1 folded
    and integers divisible by 16 marked, like the JIT's own specialisation."""
    fn = _jit_fn(launch.fn)
    sig, consts, attrs = {}, {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in launch.constexprs:
            sig[name] = "constexpr"
            consts[(i,)] = launch.constexprs[name]
        elif name in launch.pointers:
            sig[name] = "*" + launch.pointers[name]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif name in launch.ints:
            v = int(launch.ints[name])
            if v == 1:
                sig[name] = "constexpr"
                consts[(i,)] = 1
            else:
                sig[name] = "i32"
                if v % 16 == 0:
                    attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            raise ValueError(f"{launch.kernel}: argument {name!r} has no type in the launch plan")
    return fn, sig, consts, attrs


def compile_launch(launch, arch: int) -> dict:
    """Compile one launch for sm_<arch>; returns resources and the analysed SASS (see analyse_sass)."""
    import triton  # noqa: PLC0415
    from triton.backends.compiler import GPUTarget  # noqa: PLC0415
    from triton.compiler import ASTSource  # noqa: PLC0415

    fn, sig, consts, attrs = _signature(launch)
    started = time.perf_counter()
    try:
        src = ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs)
    except TypeError as exc:  # older triton: another ASTSource signature
        raise RuntimeError(f"triton {triton.__version__}: unsupported ASTSource API ({exc}); needs triton >= 3.3") from exc
    kernel = triton.compile(
        src,
        target=GPUTarget("cuda", arch, 32),
        options={"num_warps": launch.num_warps, "num_stages": launch.num_stages},
    )
    seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        with open(path, "wb") as f:
            f.write(kernel.asm["cubin"])
        tool = _cuobjdump()
        usage = subprocess.run([tool, "--dump-resource-usage", path], capture_output=True, text=True).stdout
        sass = subprocess.run([tool, "-sass", path], capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)", usage)
    if not m:
        raise RuntimeError(f"could not read the resource usage of {launch.kernel}: {usage[:300]}")
    regs, stack, static_shared, local = (int(v) for v in m.groups())
    return {
        "registers": regs,
        "spill_bytes": stack + local,
        "shared_bytes": int(kernel.metadata.shared),
        "static_shared_bytes": static_shared,
        "compile_seconds": round(seconds, 2),
        "sass": analyse_sass(sass),
    }


def analyse_sass(text: str) -> dict:
    """Static instruction counts of a SASS listing, split into the code outside loops and each loop
    (found from backward branches; nested loops are separate regions, innermost wins)."""
    instrs = []
    for line in text.splitlines():
        m = _INSTR.match(line)
        if m:
            instrs.append((int(m.group(1), 16), m.group(3), m.group(4)))
    heads: dict[int, int] = {}
    for addr, op, args in instrs:
        if op.startswith(("BRA", "JMP")):
            t = re.search(r"0x([0-9a-f]+)", args)
            if t:
                target = int(t.group(1), 16)
                if target < addr:
                    heads[target] = max(heads.get(target, 0), addr)
    loops = sorted(heads.items())  # (start, end), pre-order by start
    depth = []
    for i, (s, e) in enumerate(loops):
        depth.append(1 + sum(1 for j, (s2, e2) in enumerate(loops) if j != i and s2 <= s and e <= e2))
    regions = [Counter() for _ in range(len(loops) + 1)]  # 0: outside every loop
    for addr, op, _ in instrs:
        inner, best = 0, None
        for i, (s, e) in enumerate(loops):
            if s <= addr <= e and (best is None or e - s < best):
                inner, best = i + 1, e - s
        regions[inner][op] += 1
    return {
        "loops": [{"start": s, "end": e, "depth": d} for (s, e), d in zip(loops, depth)],
        "regions": [dict(r) for r in regions],
        "static": dict(sum(regions, Counter())),
    }


def _match_loops(sass_loops: list, model: tuple) -> list | None:
    """Trip counts per SASS loop from the plan's loops (same pre-order); loops the plan marks as
    may-vanish (one trip) are dropped when the SASS has fewer loops. None when they do not match."""
    depths = [lp["depth"] for lp in sass_loops]
    cand = list(model)
    if [m.depth for m in cand] == depths:
        return [m.trips for m in cand]
    kept, shift = [], 0
    removed_depths = []
    for m in cand:
        while removed_depths and removed_depths[-1] >= m.depth:
            removed_depths.pop()
        if m.may_vanish and m.trips <= 1:
            removed_depths.append(m.depth)
            continue
        shift = len(removed_depths)
        kept.append((m.depth - shift, m.trips))
    if [d for d, _ in kept] == depths:
        return [t for _, t in kept]
    return _match_groups(depths, [(m.depth, m.trips) for m in cand])


def _groups(seq: list) -> list:
    """Split a pre-order list of (depth, ...) into outermost loops, each with the loops inside it."""
    out = []
    for item in seq:
        if item[0] == 1 or not out:
            out.append([])
        out[-1].append(item)
    return out


def _subsequence(shape: list, planned: list) -> list | None:
    """Indices of `planned` (depths) that `shape` keeps in order, the first entry (the outermost loop)
    included; None when shape is not such a subsequence."""
    if not shape or not planned or shape[0] != planned[0]:
        return None
    keep, j = [0], 1
    for d in shape[1:]:
        while j < len(planned) and planned[j] != d:
            j += 1
        if j == len(planned):
            return None
        keep.append(j)
        j += 1
    return keep


def _match_groups(depths: list, model: list) -> list | None:
    """The compiler may lay out the branches of a kernel (one outermost loop each, with its inner
    loops) in another order than the source, and may unroll some constant-trip loops inside one:
    match each compiled outermost loop to the first unused planned one with the same nesting, in the
    compiled order; then to one whose inner loops it keeps in part (the unrolled ones' instructions
    sit in the outer loop once per trip, which the counts then get right; the trips of the kept ones
    are taken in order). None when some loop has no counterpart."""
    planned = _groups(model)
    compiled = [[d for (d,) in g] for g in _groups([(d,) for d in depths])]
    used = [False] * len(planned)
    found: list = [None] * len(compiled)
    for exact in (True, False):
        for j, shape in enumerate(compiled):
            if found[j] is not None:
                continue
            for i, pg in enumerate(planned):
                if used[i]:
                    continue
                pdepths = [d for d, _ in pg]
                keep = (list(range(len(pg))) if pdepths == shape else None) if exact else _subsequence(shape, pdepths)
                if keep is not None:
                    used[i] = True
                    found[j] = [pg[k][1] for k in keep]
                    break
    if not all(used) or any(f is None for f in found):
        return None
    return [t for f in found for t in f]


def _mma_flops(op: str) -> tuple[float, str]:
    """FLOPs of one warp's instance of an MMA instruction and its operand type."""
    parts = op.split(".")
    typ = "fp16"
    for p in parts[2:]:
        if p in ("BF16", "TF32", "F16", "F64"):
            typ = {"BF16": "bf16", "TF32": "tf32", "F16": "fp16", "F64": "fp64"}[p]
    if parts[0] == "HGMMA":
        m = re.match(r"(\d+)x(\d+)x(\d+)", parts[1])
        if m:
            M, N, K = (int(v) for v in m.groups())
            return 2.0 * M * N * K / 4, typ  # one warpgroup (4 warps) computes M x N x K
    if parts[0] == "HMMA" and len(parts) > 1:
        s = parts[1]
        if s.isdigit() and len(s) in (4, 5):
            M, N, K = int(s[:2]), int(s[2]), int(s[3:])
            return 2.0 * M * N * K, typ
    return 0.0, typ


def estimate(launch, compiled: dict, gpu: GPUModel = H100) -> dict:
    """Dynamic counts per program and the estimated time of one launch (see the module docstring)."""
    sass = compiled["sass"]
    trips = _match_loops(sass["loops"], launch.loops)
    out = {"loops_found": len(sass["loops"]), "loops_planned": len(launch.loops)}
    if trips is None:
        out.update(estimated_us=None, limiter="loop structure differs from the plan")
        return out
    # multiplicity of each region: the product of the trips of the loops that contain it
    mult = [launch.straight_fraction]
    for i, lp in enumerate(sass["loops"]):
        f = trips[i]
        for j, outer in enumerate(sass["loops"]):
            if j != i and outer["start"] <= lp["start"] and lp["end"] <= outer["end"]:
                f *= trips[j]
        mult.append(f)
    dyn = Counter()
    for region, m in zip(sass["regions"], mult):
        for op, n in region.items():
            dyn[op] += n * m
    warps = launch.num_warps
    base = lambda op: op.split(".")[0]  # noqa: E731
    total = sum(dyn.values())
    memory = sum(n for op, n in dyn.items() if base(op) in _MEMORY)
    mma_time = 0.0  # seconds of tensor-core work per program at the peak of its instruction type
    mma_flops = 0.0
    for op, n in dyn.items():
        if base(op) in _MMA:
            fl, typ = _mma_flops(op)
            rate = gpu.tc_flops.get(typ, gpu.tc_flops["bf16"]) / gpu.sms
            if base(op) == "HMMA":
                rate *= gpu.hmma_efficiency
            mma_flops += n * warps * fl
            mma_time += n * warps * fl / rate
    per_sm = math.ceil(launch.grid / gpu.sms)
    t_issue = per_sm * total * warps / (gpu.issue_per_clock * gpu.clock_hz)
    t_lsu = per_sm * memory * warps / (gpu.lsu_per_clock * gpu.clock_hz)
    t_tc = per_sm * mma_time
    t_dram = launch.dram_bytes / gpu.dram_bytes_per_s
    terms = {"issue": t_issue, "load/store": t_lsu, "tensor core": t_tc, "DRAM": t_dram}
    limiter = max(terms, key=terms.get)
    threads = 32 * warps
    regs = max(compiled["registers"], 1)
    ctas = min(
        gpu.regs_per_sm // (-(-regs // 8) * 8 * threads),
        gpu.shared_per_sm // max(compiled["shared_bytes"] + 1024, 1),
        gpu.max_threads_per_sm // threads,
        32,
    )
    out.update(
        estimated_us=1e6 * terms[limiter],
        limiter=limiter,
        terms_us={k: round(1e6 * v, 3) for k, v in terms.items()},
        per_program={
            "instructions": round(total, 1),
            "global_loads": round(sum(n for op, n in dyn.items() if base(op) in _GLOBAL_LOADS), 1),
            "ffma": round(dyn.get("FFMA", 0) + sum(n for op, n in dyn.items() if op.startswith("FFMA.")), 1),
            "mma_instructions": round(sum(n for op, n in dyn.items() if base(op) in _MMA), 1),
            "mma_flops": mma_flops,
        },
        ctas_per_sm=ctas,
    )
    return out


# ------------------------------------------------------------------------------------------------
# the report
# ------------------------------------------------------------------------------------------------


def _cache_path(cache_dir: Path, launch, arch: int) -> Path:
    import triton  # noqa: PLC0415

    fn = _jit_fn(launch.fn)
    _, sig, consts, attrs = _signature(launch)
    key = repr((triton.__version__, fn.cache_key, sorted(sig.items()), sorted(consts.items()),
                sorted(attrs.items()), launch.num_warps, launch.num_stages, arch))
    return cache_dir / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".json")


def compile_cached(launch, arch: int, cache_dir: Path | None) -> dict:
    if cache_dir is not None:
        path = _cache_path(cache_dir, launch, arch)
        if path.exists():
            return json.loads(path.read_text())
    try:
        res = compile_launch(launch, arch)
    except Exception as exc:  # noqa: BLE001  (a kernel that does not compile is a finding)
        res = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"}
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(res))
        tmp.replace(path)
    return res


@dataclass
class Row:
    kernel: str
    config: str
    dtype: str
    arch: int
    stage: int
    pass_name: str
    registers: int | None = None
    spill_bytes: int | None = None
    shared_bytes: int | None = None
    mma_instructions: int | None = None  # static count in the binary
    global_loads: int | None = None  # static
    ffma: int | None = None  # static
    estimated_us: float | None = None
    bound_us: float | None = None
    limiter: str = ""
    fits: bool = True
    note: str = ""
    detail: dict = field(default_factory=dict)


def _compile_job(job):
    """Worker of --jobs: rebuild the launch from its provider (Launch objects hold kernels, which are
    not sent between processes) and compile it."""
    provider, stage, batch, dtype, precision, pinned, index, arch, cache_dir = job
    shape = _shape(stage, batch)
    launch = list(_provider(provider)(shape, dtype, precision, pinned))[index]
    return compile_cached(launch, arch, Path(cache_dir) if cache_dir else None)


def run_report(launch_sets, archs=(80, 90), gpu: GPUModel = H100, cache_dir: Path | None = None,
               progress=None, jobs: int = 1, provider_name: str | None = None, pinned: bool = False) -> list[Row]:
    """launch_sets: iterable of (stage_shape, dtype, precision, [(index, Launch), ...]). With jobs > 1
    the compiles run in that many processes first (provider_name rebuilds the launches there)."""
    launch_sets = list(launch_sets)
    if jobs > 1 and provider_name:
        from concurrent.futures import ProcessPoolExecutor  # noqa: PLC0415

        work = [(provider_name, shape.stage, shape.B, dtype, precision, pinned, i, arch,
                 str(cache_dir) if cache_dir else None)
                for shape, dtype, precision, launches in launch_sets for i, lz in launches for arch in archs
                if arch in lz.notes.get("archs", archs)]
        with ProcessPoolExecutor(jobs) as pool:
            list(pool.map(_compile_job, work))
    rows = []
    for shape, dtype, precision, launches in launch_sets:
        for _, launch in launches:
            for arch in archs:
                if arch not in launch.notes.get("archs", archs):
                    continue  # a configuration the tuner does not offer on this architecture
                res = compile_cached(launch, arch, cache_dir)
                variant = dtype if dtype != "fp32" or not precision else f"fp32-{precision}"
                row = Row(launch.kernel, launch.config, variant, arch, shape.stage, launch.pass_name)
                row.bound_us = bound_us(shape, launch.pass_name, dtype, precision, gpu)
                if "error" in res:
                    row.fits, row.note = False, res["error"]
                    rows.append(row)
                    continue
                st = res["sass"]["static"]
                row.registers, row.spill_bytes, row.shared_bytes = (
                    res["registers"], res["spill_bytes"], res["shared_bytes"])
                row.mma_instructions = sum(n for op, n in st.items() if op.split(".")[0] in _MMA)
                row.global_loads = sum(n for op, n in st.items() if op.split(".")[0] in _GLOBAL_LOADS)
                row.ffma = sum(n for op, n in st.items() if op.split(".")[0] == "FFMA")
                est = estimate(launch, res, gpu)
                row.estimated_us = est["estimated_us"]
                row.limiter = est["limiter"]
                row.detail = {k: v for k, v in est.items() if k not in ("estimated_us", "limiter")}
                row.detail["compile_seconds"] = res.get("compile_seconds")
                problems = []
                if row.spill_bytes:
                    problems.append(f"spills {row.spill_bytes} B")
                if row.shared_bytes > gpu.shared_per_block[arch]:
                    problems.append(f"shared {row.shared_bytes} B > {gpu.shared_per_block[arch]} B")
                if est.get("ctas_per_sm", 1) < 1:
                    problems.append("does not fit an SM")
                row.fits = not problems
                row.note = "; ".join(problems)
                rows.append(row)
                if progress:
                    progress(row)
    return rows


def records(rows: list[Row]) -> list[dict]:
    """One record per (kernel, config, dtype, arch): the worst registers / spills / shared memory over
    the stage compiles, and per stage shape the pass, estimate and bound (and that compile's numbers)."""
    groups: dict[tuple, dict] = {}
    for r in rows:
        key = (r.kernel, r.config, r.dtype, r.arch)
        g = groups.setdefault(
            key,
            {"kernel": r.kernel, "config": r.config, "dtype": r.dtype, "arch": f"sm_{r.arch}", "registers": 0,
             "spill_bytes": 0, "shared_bytes": 0, "mma_instructions": 0, "global_loads": 0, "ffma": 0,
             "stages": []},
        )
        for k in ("registers", "spill_bytes", "shared_bytes", "mma_instructions", "global_loads", "ffma"):
            v = getattr(r, k)
            if v is not None:
                g[k] = max(g[k], v)
        g["stages"].append(
            {"stage": r.stage, "pass": r.pass_name, "estimated_us": _r(r.estimated_us), "bound_us": _r(r.bound_us),
             "limiter": r.limiter, "fits": r.fits, "note": r.note, "registers": r.registers,
             "spill_bytes": r.spill_bytes, "shared_bytes": r.shared_bytes, **r.detail}
        )
    return list(groups.values())


def _r(v, nd=2):
    return None if v is None else round(v, nd)


def best_rows(rows: list[Row], arch: int = 90) -> dict:
    """(stage, pass, dtype, kernel) -> the fitting row with the smallest estimate (what a tuner that
    trusted the model would pick)."""
    best: dict[tuple, Row] = {}
    for r in rows:
        if r.arch != arch or not r.fits or r.estimated_us is None:
            continue
        key = (r.stage, r.pass_name, r.dtype, r.kernel)
        if key not in best or r.estimated_us < best[key].estimated_us:
            best[key] = r
    return best


COLUMNS = ["kernel", "config", "dtype", "arch", "stage", "pass_name", "registers", "spill_bytes", "shared_bytes",
           "mma_instructions", "global_loads", "ffma", "estimated_us", "bound_us", "limiter", "fits", "note"]


def _fmt(v):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.1f}" if v >= 10 else f"{v:.2f}"
    return str(v)


def render_table(rows: list[Row], markdown: bool) -> str:
    head = ["kernel", "config", "dtype", "arch", "stage", "pass", "regs", "spill B", "smem B", "MMA", "LDG",
            "FFMA", "est us", "bound us", "est/bound", "limiter", "note"]
    body = []
    for r in rows:
        ratio = (r.estimated_us / r.bound_us) if (r.estimated_us and r.bound_us) else None
        body.append([r.kernel, r.config, r.dtype, f"sm_{r.arch}", str(r.stage), r.pass_name, _fmt(r.registers),
                     _fmt(r.spill_bytes), _fmt(r.shared_bytes), _fmt(r.mma_instructions), _fmt(r.global_loads),
                     _fmt(r.ffma), _fmt(r.estimated_us), _fmt(r.bound_us), _fmt(ratio), r.limiter, r.note])
    return _grid(head, body, markdown)


def render_summary(rows: list[Row], markdown: bool, arch: int = 90) -> str:
    """Per stage, pass and dtype: every kernel family's best fitting configuration on sm_<arch>."""
    best = best_rows(rows, arch)
    head = ["stage", "pass", "dtype", "kernel", "config", "est us", "bound us", "est/bound", "limiter", "regs"]
    body = []
    for key in sorted(best, key=lambda k: (k[0], _PASS_ORDER.get(k[1], 9), k[2], best[k].estimated_us)):
        r = best[key]
        body.append([str(r.stage), r.pass_name, r.dtype, r.kernel, r.config, _fmt(r.estimated_us), _fmt(r.bound_us),
                     _fmt(r.estimated_us / r.bound_us), r.limiter, _fmt(r.registers)])
    return _grid(head, body, markdown)


_PASS_ORDER = {"forward": 0, "forward_sum": 1, "grad_input": 2, "grad_weight": 3}


def _grid(head, body, markdown):
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in body]
        return "\n".join(lines)
    widths = [max([len(h)] + [len(row[i]) for row in body]) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in body]
    return "\n".join(lines)


def write_csv(rows: list[Row], path: str) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for r in rows:
            d = asdict(r)
            w.writerow([d[c] for c in COLUMNS])


# ------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------

DTYPE_VARIANTS = {  # name -> (dtype, dot precision)
    "fp32": ("fp32", "ieee"),
    "fp32-tf32x3": ("fp32", "tf32x3"),
    "fp32-tf32": ("fp32", "tf32"),
    "bf16": ("bf16", None),
    "fp16": ("fp16", None),
}


@functools.cache
def _provider(name: str):
    import importlib  # noqa: PLC0415

    module, _, attr = name.partition(":")
    return getattr(importlib.import_module(module), attr or "report_launches")


def _shape(stage: int, batch: int) -> StageShape:
    s = STAGES[stage]
    return s if batch == s.B else StageShape(s.stage, batch, s.C, s.H, s.W, s.K, s.k)


def launch_sets(provider, stages, variants, batch: int, pinned: bool = False, keep=None):
    """(shape, dtype, precision, [(index in the provider's list, Launch), ...]) per stage and dtype."""
    for st in stages:
        shape = _shape(st, batch)
        for v in variants:
            dtype, precision = DTYPE_VARIANTS[v]
            launches = list(enumerate(provider(shape, dtype, precision, pinned)))
            if keep:
                launches = [(i, lz) for i, lz in launches if any(s in lz.kernel for s in keep)]
            yield shape, dtype, precision, launches


DEFAULT_PROVIDER = "swtasks.ops.triton_cross:report_launches"
DEFAULT_CACHE = str(Path.home() / ".cache" / "swtasks" / "kernel_report")


def report(*, stages=(1, 2, 3, 4), dtypes=tuple(DTYPE_VARIANTS), archs=(80, 90), batch: int = 64, kernels=None,
           provider: str = DEFAULT_PROVIDER, configs: str = "all", jobs: int = 1, cache: str | None = DEFAULT_CACHE,
           csv_path=None, markdown_path=None, json_path=None, summary_only: bool = False, quiet: bool = False,
           command: str = "") -> list[Row]:
    """Compile, analyse and estimate (module docstring); prints the tables and writes the files asked for."""
    for v in dtypes:
        if v not in DTYPE_VARIANTS:
            raise ValueError(f"unknown dtype {v!r}; choose from {', '.join(DTYPE_VARIANTS)}")
    provider_fn = _provider(provider)
    pinned = configs == "pinned"
    sets = list(launch_sets(provider_fn, stages, dtypes, batch, pinned, kernels))
    started = time.time()

    def progress(row):
        if not quiet:
            print(f"# [{time.time() - started:5.0f} s] {row.kernel} {row.config} {row.dtype} sm_{row.arch} "
                  f"stage {row.stage}: {_fmt(row.estimated_us)} us (bound {_fmt(row.bound_us)}) {row.note}",
                  file=sys.stderr, flush=True)

    rows = run_report(sets, archs, H100, Path(cache) if cache else None, progress, jobs, provider, pinned)
    import triton  # noqa: PLC0415

    cmd = command.strip()
    header = [
        f"Command: `{cmd}`",
        f"triton {triton.__version__}; compiled for {', '.join(f'sm_{a}' for a in archs)}; batch {batch}",
        f"Model: {H100.describe()}",
        "Estimate = max(issue, load/store, tensor core, DRAM) of the compiled kernel (benchmarks/kernel_report.py); "
        "bound = max(compulsory bytes / HBM, useful FLOPs / peak of the dtype).",
    ]
    summary = render_summary(rows, markdown=False)
    text = "\n".join(header) + "\n\n" + ("" if summary_only else render_table(rows, False) + "\n\n") + summary
    print(text)
    if markdown_path:
        md = "\n".join(f"- {h}" for h in header) + "\n\nBest fitting configuration per pass (sm_90):\n\n"
        md += render_summary(rows, markdown=True) + "\n\nEvery compile:\n\n" + render_table(rows, markdown=True) + "\n"
        Path(markdown_path).write_text(md)
    if csv_path:
        write_csv(rows, csv_path)
    if json_path:
        Path(json_path).write_text(json.dumps({"model": asdict(H100), "command": cmd, "records": records(rows)},
                                              indent=1))
    return rows


# ------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------


def main(argv=None) -> None:
    import argparse  # noqa: PLC0415

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stages", default="1,2,3,4", help="comma-separated subset of 1,2,3,4 (SW-T shapes)")
    ap.add_argument("--dtypes", default=",".join(DTYPE_VARIANTS), help=f"subset of {','.join(DTYPE_VARIANTS)}")
    ap.add_argument("--archs", default="80,90", help="compute capabilities to compile for")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--kernels", default=None, help="comma-separated kernel names to keep (substring match)")
    ap.add_argument("--configs", choices=["all", "pinned"], default="all",
                    help="every configuration the tuner can pick, or only deterministic mode's")
    ap.add_argument("--provider", default=DEFAULT_PROVIDER,
                    help="module:function yielding the launches of a stage shape and dtype")
    ap.add_argument("--jobs", type=int, default=1, help="compile in this many processes")
    ap.add_argument("--cache", default=DEFAULT_CACHE, help="directory for compiled-kernel results ('' to disable)")
    ap.add_argument("--csv", default=None, help="write every row as CSV")
    ap.add_argument("--markdown", default=None, help="write the tables as markdown to this file")
    ap.add_argument("--json", default=None, help="write one record per (kernel, config, dtype, arch)")
    ap.add_argument("--summary-only", action="store_true", help="print only the per-pass summary")
    ap.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = ap.parse_args(argv)
    report(stages=[int(s) for s in args.stages.split(",")], dtypes=[d for d in args.dtypes.split(",") if d],
           archs=tuple(int(a) for a in args.archs.split(",")), batch=args.batch,
           kernels=args.kernels.split(",") if args.kernels else None, provider=args.provider, configs=args.configs,
           jobs=args.jobs, cache=args.cache or None, csv_path=args.csv, markdown_path=args.markdown,
           json_path=args.json, summary_only=args.summary_only, quiet=args.quiet,
           command="python benchmarks/kernel_report.py " + " ".join(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
