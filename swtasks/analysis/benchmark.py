"""Throughput, latency and peak memory of registry models, measured interleaved.

What is measured, per model and structure (`train`: as created; `deploy`: `create_model(..., deploy=True)`,
the re-parameterised inference structure):

- `inference`: eval mode, `torch.inference_mode`, a batch of `batch_size` images -> images/s;
- `train_step`: train mode, forward + cross-entropy on random labels + backward + fused AdamW step (+ zero_grad),
  as the classification trainer runs it, for the training structure only (a deploy structure is not trained)
  -> images/s;
- `latency`: eval mode, batch 1 -> images/s = 1 / latency (the table also shows milliseconds).

How (docs/analysis.md, "Speed and memory"): every case is built first; then, mode by mode, the mode's cases are
warmed up and `repeats` rounds time each of them once (a sample = enough iterations to last
`min_sample_s`), the order rotated from round to round. All models are therefore measured under the same machine conditions, and the ratio of a case to
the baseline model (same structure and mode) is taken per round and its median reported, which holds on
a noisy, shared machine where absolute numbers do not. CUDA times come from CUDA events around the sample
(cudnn.benchmark on); CPU times from `time.perf_counter`, with the process CPU time (all threads) beside
them. Peak memory is measured in a separate call per case: on CUDA
`torch.cuda.max_memory_allocated` (everything resident: weights, optimiser state, activations); on CPU the
resident parameters, buffers and optimiser state plus the peak of the allocation events of PyTorch's CPU
allocator recorded by `torch.profiler` during the call (oneDNN's internal scratch memory is not seen).

A model is a registry name (any name `swtasks.list_models()` knows), `torchvision:NAME` or `timm:NAME` (a
torchvision / timm classification model, random weights; it has no deploy form, so its deploy rows repeat its
train rows), or either with `+swK` (converted by swtasks.layers.to_shiftwise to K x K shift-wise kernels clipped
to the maps of the benchmark's input; its deploy structure is the folded one).
Registry models whose deploy build has the same parameters as the training build are measured once too.

Runtimes (`runtimes`, tools/benchmark.py `--runtime`): `eager` is PyTorch as above; `onnxruntime` adds rows for
the deploy structure exported to ONNX (swtasks.export.export_module: a dynamic batch, checked against the eager
model) and run in ONNX Runtime on the CPU with the same threads (`torch.get_num_threads()`, idle threads
sleeping; swtasks.quantize.ort_session); `onnxruntime-int8` the same file quantised to INT8 (swtasks.quantize:
QDQ, per-channel weights), calibrated on seeded random images - a speed measurement only (what INT8 does to
the predictions: tools/export.py --int8 on real images). Runtime rows are inference and latency cases of the
deploy structure, interleaved with the eager cases of the same mode; their `rel.` divides by the baseline
model in the same runtime. No peak memory or profile for them (PyTorch's profiler does not see ONNX Runtime).

Imports torch, torchvision and swtasks.models only; progress bars via swtasks.analysis.progress.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import functools
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import AnalysisError
from .profile import profile_breakdown, quiet_fd2
from .progress import Progress
from .select import FOREIGN_PREFIXES, resolve_models

__all__ = [
    "MODES",
    "RUNTIMES",
    "STRUCTURES",
    "BenchmarkResult",
    "ModelSpec",
    "build_model",
    "environment",
    "format_markdown",
    "format_table",
    "peak_memory_mib",
    "resolve_models",
    "run_benchmark",
    "write_csv",
]

MODES = ("inference", "train_step", "latency")
STRUCTURES = ("train", "deploy")
RUNTIMES = ("eager", "onnxruntime", "onnxruntime-int8")
CSV_COLUMNS = (
    "model", "structure", "runtime", "mode", "batch_size", "image_size", "images_per_s", "images_per_s_min",
    "images_per_s_max", "ms_per_batch", "rel_to_baseline", "rel_min", "rel_max", "baseline", "cpu_ms_per_batch",
    "rel_cpu", "peak_mem_mib", "params_m", "samples", "iters_per_sample", "device", "dtype", "channels_last",
    "compile", "note",
)  # fmt: skip


@dataclass(frozen=True)
class ModelSpec:
    """A model to measure: a registry name or `torchvision:NAME` / `timm:NAME` (`+swK`: converted to shift-wise
    kernels), plus create_model overrides."""

    name: str
    overrides: tuple[tuple[str, Any], ...] = ()

    @property
    def is_torchvision(self) -> bool:  # any foreign name (torchvision: or timm:), the historical name
        return self.name.startswith(FOREIGN_PREFIXES)


@dataclass
class BenchmarkResult:
    model: str
    structure: str
    mode: str
    batch_size: int
    image_size: int
    images_per_s: float
    images_per_s_min: float
    images_per_s_max: float
    ms_per_batch: float
    samples: int
    iters_per_sample: int
    params_m: float
    device: str
    dtype: str
    channels_last: bool
    compile: bool
    peak_mem_mib: float | None = None
    rel_to_baseline: float | None = None
    rel_min: float | None = None
    rel_max: float | None = None
    baseline: str = ""
    cpu_ms_per_batch: float | None = None  # CPU runs: process CPU time (all threads) per batch, median
    rel_cpu: float | None = None  # the same ratio as rel_to_baseline, computed on CPU time
    note: str = ""
    times: list[float] = field(default_factory=list, repr=False)  # seconds per iteration, one per round
    cpu_times: list[float] = field(default_factory=list, repr=False)
    breakdown: Any = field(default=None, repr=False)  # swtasks.analysis.profile.Breakdown with profile=True
    runtime: str = "eager"  # or the runtime the exported deploy structure ran in (RUNTIMES)

    def as_row(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: d[k] for k in CSV_COLUMNS}


# ------------------------------------------------------------------------------------------------ models
def build_model(spec: ModelSpec, structure: str, num_classes: int = 1000, drop_path_rate: float = 0.0,
                image_size: int | None = None) -> nn.Module:
    """The model of `spec` in `structure` ('train' or 'deploy'), random weights, on the CPU. A foreign model
    converted with `+swK` gets its kernels clipped to the maps of an `image_size` input; its deploy structure
    is the folded one."""
    if structure not in STRUCTURES:
        raise AnalysisError(f"structure must be one of {STRUCTURES}, got {structure!r}")
    if spec.is_torchvision:
        from swtasks.layers import reparameterize_shiftwise
        from swtasks.models.foreign import create_foreign, split_foreign

        lib, arch, kernel = split_foreign(spec.name)
        kw = dict(spec.overrides)
        if lib == "torchvision":
            import torchvision

            known = torchvision.models.list_models(module=torchvision.models)
            if arch not in known:
                raise AnalysisError(f"unknown torchvision classification model {arch!r} (in {spec.name!r}); "
                                    f"e.g. {', '.join(n for n in known if n.startswith('convnext'))}")
            if drop_path_rate and "stochastic_depth_prob" not in kw and arch.startswith("convnext"):
                kw["stochastic_depth_prob"] = drop_path_rate
        elif drop_path_rate and "drop_path_rate" not in kw:
            kw["drop_path_rate"] = drop_path_rate
        net = create_foreign(spec.name, num_classes=num_classes, image_size=image_size, **kw)
        if kernel is not None and structure == "deploy":
            reparameterize_shiftwise(net)  # the converted layers' deploy form (random BN statistics)
        return net
    from swtasks.models import create_model

    return create_model(spec.name, num_classes=num_classes, drop_path_rate=drop_path_rate,
                        deploy=structure == "deploy", **dict(spec.overrides))


def _signature(model: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(n, tuple(t.shape)) for n, t in model.state_dict().items()]


def _params_m(model: nn.Module) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


# ------------------------------------------------------------------------------------------------ memory
def peak_memory_mib(call: Callable[[], Any], device: torch.device, resident_bytes: int = 0) -> float | None:
    """Peak memory (MiB) of PyTorch tensors during `call()`. CUDA: max_memory_allocated (everything on the
    device). CPU: `resident_bytes` (what lives before the call: weights, optimiser state, input) plus the
    peak of the CPU allocator's events recorded by the profiler during the call; None if the profiler
    gives no memory events."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        call()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) / 2**20
    from torch.profiler import ProfilerActivity, profile

    try:
        with quiet_fd2(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            call()
        events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                        if e.name() == "[memory]")
    except (AttributeError, RuntimeError):  # profiler API differences between torch versions
        return None
    if not events:
        return None
    cur = peak = 0
    for _, nbytes in events:
        cur += nbytes
        peak = max(peak, cur)
    return (resident_bytes + peak) / 2**20


def _tensor_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


# ------------------------------------------------------------------------------------------------ cases
@dataclass
class _Case:
    label: tuple[str, str, str, str]  # (model, structure, mode, runtime)
    batch_size: int
    run: Callable[[], Any]
    resident: Callable[[], int]
    params_m: float
    note: str = ""
    alias_of: tuple[str, str, str, str] | None = None  # measured once under another structure's label
    iters: int = 1
    runtime: str = "eager"
    times: list[float] = field(default_factory=list)
    cpu_times: list[float] = field(default_factory=list)


class _Timer:
    def __init__(self, device: torch.device):
        self.device = device

    def __call__(self, fn: Callable[[], Any], iters: int) -> tuple[float, float]:
        """(wall seconds, process CPU seconds) per iteration of `iters` back-to-back calls; on CUDA the wall
        time comes from CUDA events and the CPU time is NaN."""
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3 / iters, float("nan")
        c0, t0 = time.process_time(), time.perf_counter()
        for _ in range(iters):
            fn()
        return (time.perf_counter() - t0) / iters, (time.process_time() - c0) / iters


def _make_runs(model: nn.Module, mode: str, batch: int, image_size: int, device: torch.device,
               channels_last: bool, amp: torch.dtype | None, num_classes: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, image_size, image_size, generator=gen).to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    autocast = (lambda: torch.autocast(device.type, dtype=amp)) if amp is not None else contextlib.nullcontext
    if mode in ("inference", "latency"):

        def run():
            if model.training:  # switched only when needed: .eval() walks every module (timed on CUDA)
                model.eval()
            with torch.inference_mode(), autocast():
                return model(x)

        return run, lambda: _tensor_bytes([*model.parameters(), *model.buffers(), x])
    target = torch.randint(0, num_classes, (batch,), generator=gen).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, weight_decay=0.05, fused=True)  # as tools/train_cls.py
    scaler = torch.amp.GradScaler(device.type) if amp == torch.float16 else None

    def run():
        if not model.training:
            model.train()
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = F.cross_entropy(model(x), target)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        return loss.detach()

    def resident() -> int:
        state = [t for s in opt.state.values() for t in s.values()]
        return _tensor_bytes([*model.parameters(), *model.buffers(), *state, x, target])

    return run, resident


# ------------------------------------------------------------------------------------------------ run
def run_benchmark(
    models: Sequence[str | ModelSpec],
    *,
    device: str = "cpu",
    batch_size: int = 8,
    image_size: int = 224,
    modes: Sequence[str] = MODES,
    structures: Sequence[str] = STRUCTURES,
    channels_last: bool = False,
    compile: bool = False,
    amp: str = "none",
    repeats: int | None = None,
    warmup: int | None = None,
    min_sample_s: float | None = None,
    memory: bool = True,
    profile: bool = False,
    baseline: str | None = None,
    num_classes: int = 1000,
    drop_path_rate: float = 0.0,
    seed: int = 0,
    show_progress: bool = True,
    runtimes: Sequence[str] = ("eager",),
) -> list[BenchmarkResult]:
    """Measure every (model, structure, mode) interleaved; see the module docstring.

    repeats / warmup / min_sample_s default to 5 / 2 / 0.05 s on CPU and 20 / 10 / 0.2 s on CUDA.
    baseline: the model the `rel_to_baseline` column divides by (default: `convnext_t` or
    `torchvision:convnext_tiny` when measured, else the first model). amp: 'none', 'bf16' or 'fp16'
    (torch.autocast; fp16 training uses a GradScaler). profile: also profile one call of every inference
    and training-step case (swtasks.analysis.profile) into `result.breakdown`. runtimes: among RUNTIMES (see the
    module docstring); a runtime other than eager needs the CPU, fp32 and the deploy structure."""
    specs = [m if isinstance(m, ModelSpec) else ModelSpec(m) for m in models]
    if not specs:
        raise AnalysisError("no models to benchmark")
    if len({s.name for s in specs}) != len(specs):
        raise AnalysisError(f"a model is listed twice: {[s.name for s in specs]}")
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise AnalysisError(f"modes must be among {MODES}, got {list(modes)}")
    bad = [s for s in structures if s not in STRUCTURES]
    if bad or not structures:
        raise AnalysisError(f"structures must be among {STRUCTURES}, got {list(structures)}")
    if batch_size < 1 or image_size < 1:
        raise AnalysisError(f"batch_size and image_size must be >= 1, got {batch_size} and {image_size}")
    bad = [r for r in runtimes if r not in RUNTIMES]
    if bad or not runtimes:
        raise AnalysisError(f"runtimes must be among {RUNTIMES}, got {list(runtimes)}")
    exported = [r for r in runtimes if r != "eager"]
    if exported and (torch.device(device).type != "cpu" or amp != "none" or compile or channels_last):
        raise AnalysisError(f"runtime {exported[0]} is measured on the CPU in fp32 (no --amp, --compile or "
                            f"--channels-last), got device {device!r}, amp {amp!r}, compile {compile}, "
                            f"channels_last {channels_last}")
    if exported and "deploy" not in structures:
        raise AnalysisError(f"runtime {exported[0]} runs the deploy structure: add 'deploy' to the structures")
    amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}.get(amp, "bad")
    if amp_dtype == "bad":
        raise AnalysisError(f"amp must be 'none', 'bf16' or 'fp16', got {amp!r}")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise AnalysisError("device 'cuda' requested but torch.cuda.is_available() is False")
    cuda = dev.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True  # as training scripts do: cuDNN picks its fastest algorithms
    repeats = repeats or (20 if cuda else 5)
    warmup = (10 if cuda else 2) if warmup is None else warmup
    min_sample_s = (0.2 if cuda else 0.05) if min_sample_s is None else min_sample_s
    names = [s.name for s in specs]
    if baseline is None:
        baseline = next((b for b in ("convnext_t", "torchvision:convnext_tiny") if b in names), names[0])
    elif baseline not in names:
        raise AnalysisError(f"baseline {baseline!r} is not among the measured models {names}")

    cases: list[_Case] = []
    with tempfile.TemporaryDirectory(prefix="swtasks-bench-") if exported else contextlib.nullcontext("") as folder:
        # the exported files live until the measurement is done
        with Progress(len(specs) * len(structures), "building models", disable=not show_progress) as bar:
            for spec in specs:
                built: list[tuple[str, list, nn.Module]] = []  # (structure, signature, module as run)
                for structure in structures:
                    bar.set_description(f"building {spec.name} ({structure})")
                    model = build_model(spec, structure, num_classes, drop_path_rate, image_size)
                    sig, note, alias = _signature(model), "", None
                    same = [b for b in built if b[1] == sig]
                    if same:
                        alias, model = same[0][0], same[0][2]
                        note = f"no separate {structure} structure: measured as {alias}"
                    else:
                        model = model.to(dev)
                        if channels_last:
                            model = model.to(memory_format=torch.channels_last)
                        if compile:
                            model = torch.compile(model)
                    built.append((structure, sig, model))
                    for mode in modes:
                        if mode == "train_step" and structure == "deploy":
                            continue  # the deploy structure is for inference
                        label = (spec.name, structure, mode, "eager")
                        if alias is not None and (spec.name, alias, mode, "eager") in {c.label for c in cases}:
                            cases.append(_Case(label, 1 if mode == "latency" else batch_size, lambda: None,
                                               lambda: 0, _params_m(model), note,
                                               alias_of=(spec.name, alias, mode, "eager")))
                            continue
                        bs = 1 if mode == "latency" else batch_size
                        run, resident = _make_runs(model, mode, bs, image_size, dev, channels_last, amp_dtype,
                                                   num_classes, seed)
                        cases.append(_Case(label, bs, run, resident, _params_m(model), note))
                    if structure == "deploy" and exported:
                        bar.set_description(f"exporting {spec.name} (deploy) to ONNX")
                        cases += _runtime_cases(spec.name, model, exported, modes, batch_size, image_size, folder,
                                                seed)
                    bar.update()

        return _measure(cases, dev, batch_size, image_size, repeats, warmup, min_sample_s, memory, profile,
                        show_progress, amp, amp_dtype, channels_last, compile, baseline, cuda)


def _runtime_cases(name: str, model: nn.Module, runtimes: Sequence[str], modes: Sequence[str], batch_size: int,
                   image_size: int, folder: str, seed: int) -> list[_Case]:
    """The inference / latency cases of `model` (its deploy structure, on the CPU) in ONNX Runtime, fp32 and/or
    INT8: exported with a dynamic batch (checked against the eager model), sessions with torch's threads."""
    import numpy as np

    from swtasks.export import export_module
    from swtasks.quantize import ort_session, quantize_int8

    fp32 = os.path.join(folder, f"{name.replace(':', '_').replace('/', '_')}.onnx")
    export_module(model, fp32, image_size=image_size, dynamic_batch=True)
    paths = {"onnxruntime": fp32}
    if "onnxruntime-int8" in runtimes:
        rng = np.random.default_rng(seed)
        calibration = [rng.standard_normal((batch_size, 3, image_size, image_size), dtype=np.float32)
                       for _ in range(2)]
        paths["onnxruntime-int8"] = fp32[:-len(".onnx")] + ".int8.onnx"
        quantize_int8(fp32, paths["onnxruntime-int8"], calibration)
    cases = []
    gen = torch.Generator().manual_seed(seed)
    for runtime in runtimes:
        session = ort_session(paths[runtime], torch.get_num_threads())
        input_name = session.get_inputs()[0].name
        for mode in modes:
            if mode == "train_step":
                continue
            bs = 1 if mode == "latency" else batch_size
            feed = {input_name: torch.randn(bs, 3, image_size, image_size, generator=gen).numpy()}
            cases.append(_Case((name, "deploy", mode, runtime), bs, functools.partial(session.run, None, feed),
                               lambda: 0, _params_m(model), runtime=runtime))
    return cases


def _measure(cases, dev, batch_size, image_size, repeats, warmup, min_sample_s, memory, profile, show_progress,
             amp, amp_dtype, channels_last, compile, baseline, cuda) -> list[BenchmarkResult]:
    timer = _Timer(dev)
    measured = [c for c in cases if c.alias_of is None]
    # Interleave within each mode (the ratios are per mode): a training step's gigabytes of freshly freed
    # memory would otherwise change what the next inference call pays for its allocations.
    groups = [[c for c in measured if c.label[2] == mode] for mode in MODES]
    groups = [g for g in groups if g]
    with Progress(len(measured) * (repeats + 1), "warm-up", disable=not show_progress) as bar:
        for group in groups:
            for c in group:
                bar.set_description(f"warm-up {'/'.join(c.label)}")
                one = timer(c.run, 1)[0]
                for _ in range(max(warmup - 1, 0)):
                    one = timer(c.run, 1)[0]
                c.iters = max(1, int(min_sample_s / max(one, 1e-9) + 0.999)) if min_sample_s > 0 else 1
                bar.update()
            for r in range(repeats):
                bar.set_description(f"{group[0].label[2]}: round {r + 1}/{repeats}")
                k = r % len(group)
                for c in group[k:] + group[:k]:
                    wall, cpu = timer(c.run, c.iters)
                    c.times.append(wall)
                    c.cpu_times.append(cpu)
                    bar.update()
    mem: dict[tuple[str, str, str], float | None] = {}
    if memory:
        with Progress(len(measured), "peak memory", disable=not show_progress) as bar:
            for c in measured:
                if c.runtime != "eager":
                    bar.update()
                    continue
                resident = c.resident()
                mem[c.label] = peak_memory_mib(c.run, dev, resident)
                bar.update()

    breakdowns = {}
    if profile:
        todo = [c for c in measured if c.label[2] != "latency" and c.runtime == "eager"]
        with Progress(len(todo), "profiling", disable=not show_progress) as bar:
            for c in todo:
                breakdowns[c.label] = profile_breakdown(c.run, label=f"{c.label[0]} {c.label[1]} {c.label[2]}")
                bar.update()
    by_label = {c.label: c for c in measured}
    results = []
    dtype = "fp32" if amp_dtype is None else f"{amp} autocast"
    for c in cases:
        src = by_label[c.alias_of] if c.alias_of else c
        t = statistics.median(src.times)
        results.append(BenchmarkResult(
            model=c.label[0], structure=c.label[1], mode=c.label[2], runtime=c.runtime, batch_size=c.batch_size,
            image_size=image_size, images_per_s=c.batch_size / t, images_per_s_min=c.batch_size / max(src.times),
            images_per_s_max=c.batch_size / min(src.times), ms_per_batch=1e3 * t, samples=len(src.times),
            iters_per_sample=src.iters, params_m=c.params_m, device=str(dev), dtype=dtype,
            channels_last=channels_last, compile=compile, peak_mem_mib=mem.get(src.label), note=c.note,
            times=list(src.times), cpu_times=list(src.cpu_times),
            cpu_ms_per_batch=None if cuda else 1e3 * statistics.median(src.cpu_times),
            breakdown=breakdowns.get(src.label),
        ))  # fmt: skip
    _relative(results, baseline)
    return results


def _relative(results: list[BenchmarkResult], baseline: str) -> None:
    """rel_to_baseline = median over rounds of (baseline time / case time), same structure, mode and runtime."""
    base = {(r.structure, r.mode, r.runtime): r for r in results if r.model == baseline}
    for r in results:
        b = base.get((r.structure, r.mode, r.runtime))
        if b is None:
            continue
        ratios = [tb / tc for tb, tc in zip(b.times, r.times)]
        r.rel_to_baseline = statistics.median(ratios)
        r.rel_min, r.rel_max = min(ratios), max(ratios)
        r.baseline = baseline
        if r.cpu_ms_per_batch is not None:
            r.rel_cpu = statistics.median(tb / tc for tb, tc in zip(b.cpu_times, r.cpu_times))


# ------------------------------------------------------------------------------------------------ output
def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: str = "cpu") -> dict[str, str]:
    """Device, versions, threads, load average and date, for the report header."""
    import torchvision

    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": f"{_cpu_name()} ({os.cpu_count()} logical CPUs)",
        "threads": str(torch.get_num_threads()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        pass
    if device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
        env["cuda"] = str(torch.version.cuda)
    try:
        env["load average (1/5/15 min)"] = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        pass
    return env


def _fmt_rate(v: float) -> str:
    return f"{v:.1f}" if v < 100 else f"{v:.0f}"


def _rows(results: Sequence[BenchmarkResult]) -> tuple[list[str], list[list[str]]]:
    cpu = any(r.cpu_ms_per_batch is not None for r in results)
    runtimes = any(r.runtime != "eager" for r in results)  # the runtime column only when there is a choice
    head = ["model", "structure", *(["runtime"] if runtimes else []), "mode", "batch", "images/s", "min-max", "ms/batch", "rel.", "rel. min-max"]
    head += ["CPU ms/batch", "rel. CPU"] if cpu else []
    head += ["peak MiB"]
    rows = []
    for r in results:
        rel = "-" if r.rel_to_baseline is None else f"{r.rel_to_baseline:.2f}x"
        rel_mm = "-" if r.rel_min is None else f"{r.rel_min:.2f}-{r.rel_max:.2f}"
        row = [r.model, r.structure, *([r.runtime] if runtimes else []), r.mode, str(r.batch_size), _fmt_rate(r.images_per_s),
               f"{_fmt_rate(r.images_per_s_min)}-{_fmt_rate(r.images_per_s_max)}", f"{r.ms_per_batch:.1f}", rel,
               rel_mm]
        if cpu:
            row += ["-" if r.cpu_ms_per_batch is None else f"{r.cpu_ms_per_batch:.1f}",
                    "-" if r.rel_cpu is None else f"{r.rel_cpu:.2f}x"]
        row.append("-" if r.peak_mem_mib is None else f"{r.peak_mem_mib:.0f}")
        rows.append(row)
    return head, rows


def format_table(results: Sequence[BenchmarkResult]) -> str:
    """A plain-text table for the terminal (rel. = median per-round ratio to the baseline model)."""
    head, rows = _rows(results)
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    base = next((r.baseline for r in results if r.baseline), "")
    if base:
        lines.append(f"rel. = throughput / {base}'s in the same round (median over rounds), same structure, mode and "
                     "runtime; "
                     "rel. CPU: the same on process CPU time (steadier on a loaded machine)")
    return "\n".join(lines)


def format_markdown(results: Sequence[BenchmarkResult], env: dict[str, str], command: str = "",
                    title: str = "") -> str:
    """A markdown section: title, command, environment and settings, then the table."""
    r0 = results[0]
    out = [f"#### {title or 'Model benchmark'}", ""]
    if command:
        out += [f"Command: `{command}`", ""]
    settings = (f"{r0.device}, {r0.dtype}, image {r0.image_size}px, channels-last {'on' if r0.channels_last else 'off'}, "
                f"torch.compile {'on' if r0.compile else 'off'}, {r0.samples} interleaved rounds")
    out += [f"- {k}: {v}" for k, v in env.items()] + [f"- settings: {settings}", ""]
    head, rows = _rows(results)
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    base = next((r.baseline for r in results if r.baseline), "")
    if base:
        out += ["", f"rel. = throughput relative to `{base}` in the same round (median over rounds, min-max beside "
                "it), same structure, mode and runtime; rel. CPU: the same ratio on process CPU time (all threads), which "
                "other processes on a shared machine disturb less than wall time. Peak MiB: PyTorch tensors during one call (weights and optimiser "
                "state included; on CPU oneDNN scratch memory is not seen)."]
    notes = sorted({f"{r.model}: {r.note}" for r in results if r.note})
    out += [f"- {n}" for n in notes]
    return "\n".join(out) + "\n"


def write_csv(results: Sequence[BenchmarkResult], path: str | os.PathLike) -> None:
    """One row per (model, structure, mode) with CSV_COLUMNS."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(CSV_COLUMNS))
        w.writeheader()
        for r in results:
            w.writerow(r.as_row())


def command_line(prog: str, argv: Sequence[str] | None = None) -> str:
    """The command as typed: `prog` and its arguments (`argv`, default sys.argv[1:]), shell-quoted."""
    return shlex.join([prog, *(sys.argv[1:] if argv is None else argv)])
