"""Where the time of one call goes: torch.profiler's operator times, grouped into categories that mean the
same for every backbone family, split into forward, backward and optimiser.

Categories (by operator name and, for convolutions, by the weight's shape):

- `matrix products`: mm / addmm / bmm / baddbmm and 1x1 convolutions (the pointwise Linears);
- `depthwise convolutions`: convolutions with one input channel per group - the large-kernel token mixer
  of every family here (the shift-wise operator's strips and centre tile, ConvNeXt's 7x7, SLaK's strips, the
  dilated re-parameterised block);
- `dense convolutions`: the other convolutions (stem, downsampling);
- `normalisation`: batch norm, layer norm and vector norms (GRN), forward and backward;
- `elementwise, copies, indexing`: everything else (activations, scales, adds, layout copies, index ops,
  padding, reductions) outside the optimiser;
- `optimiser`: every operator inside `Optimizer.step`.

Times are the profiler's self CPU times of the operators (on CUDA the CPU-side launch times; this breakdown
is meant for CPU runs). Backward = operators run inside autograd's `evaluate_function` events. The profiler
adds some overhead per operator; the shares, not the absolute numbers, are the point.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CATEGORIES", "Breakdown", "categorize", "format_breakdowns", "profile_breakdown", "quiet_fd2"]

CATEGORIES = (
    "matrix products",
    "depthwise convolutions",
    "dense convolutions",
    "normalisation",
    "elementwise, copies, indexing",
    "optimiser",
)
_MATMUL = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_addmm_activation"}
_NORM_WORDS = ("batch_norm", "layer_norm", "group_norm", "vector_norm", "linalg_norm", "aten::norm")
_WRAPPERS = ("aten::conv2d", "aten::convolution", "aten::_convolution", "aten::linear", "aten::matmul")


@contextlib.contextmanager
def quiet_fd2() -> Iterator[None]:
    """The profiler's C++ side prints start/stop lines on file descriptor 2: hide them (every profiled call
    here and in swtasks.analysis.benchmark's peak-memory measurement)."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _conv_weight(name: str, shapes: Sequence) -> list[int] | None:
    idx = 2 if "backward" in name else 1  # convolution_backward(grad_out, input, weight, ...)
    if len(shapes) > idx and len(shapes[idx]) == 4:
        return list(shapes[idx])
    return None


def categorize(name: str, shapes: Sequence) -> str | None:
    """The category of one operator event (None: a wrapper whose time its children already carry)."""
    if name in _WRAPPERS:
        return None
    if "convolution" in name:
        w = _conv_weight(name, shapes)
        if w is not None:
            if w[2] == 1 and w[3] == 1:
                return "matrix products"
            if w[1] == 1:
                return "depthwise convolutions"
        return "dense convolutions"
    if name in _MATMUL:
        return "matrix products"
    if any(word in name for word in _NORM_WORDS):
        return "normalisation"
    return "elementwise, copies, indexing"


@dataclass
class Breakdown:
    label: str
    total_ms: float
    rows: dict[str, dict[str, float]] = field(default_factory=dict)  # category -> {forward, backward, optimiser}

    def share(self, category: str) -> float:
        return sum(self.rows.get(category, {}).values()) / self.total_ms if self.total_ms else 0.0


def _inside(t: tuple[float, float], spans: list[tuple[float, float]]) -> bool:
    return any(a <= t[0] and t[1] <= b for a, b in spans)


def profile_breakdown(call: Callable[[], Any], label: str = "", warmup: int = 1) -> Breakdown:
    """Run `call` (warm-up calls first), profile one more call, and group the operators' self CPU times."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(warmup):
        call()
    with quiet_fd2(), profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        call()
    events = list(prof.events())
    opt_spans = [(e.time_range.start, e.time_range.end) for e in events if e.name.startswith("Optimizer.step")]
    bwd_spans = [(e.time_range.start, e.time_range.end) for e in events
                 if e.name.startswith("autograd::engine::evaluate_function")]
    out = Breakdown(label, 0.0)
    for e in events:
        if not e.name.startswith("aten::"):
            continue
        ms = e.self_cpu_time_total / 1e3
        span = (e.time_range.start, e.time_range.end)
        if _inside(span, opt_spans):
            cat, phase = "optimiser", "optimiser"
        else:
            cat = categorize(e.name, e.input_shapes or [])
            phase = "backward" if _inside(span, bwd_spans) else "forward"
        if cat is None and ms > 0:
            cat = "elementwise, copies, indexing"  # a wrapper's own overhead
        if cat is None:
            continue
        row = out.rows.setdefault(cat, {"forward": 0.0, "backward": 0.0, "optimiser": 0.0})
        row[phase] += ms
        out.total_ms += ms
    return out


def format_breakdowns(items: Sequence[Breakdown], markdown: bool = False) -> str:
    """One table: a row per category, for each breakdown its ms (forward / backward) and share."""
    head = ["category"] + [b.label for b in items]
    rows = []
    for cat in CATEGORIES:
        row = [cat]
        for b in items:
            r = b.rows.get(cat)
            if r is None:
                row.append("-")
                continue
            parts = f"{r['forward']:.0f}" if cat != "optimiser" else f"{r['optimiser']:.0f}"
            if r["backward"] > 0:
                parts += f" + {r['backward']:.0f}"
            row.append(f"{parts} ms ({100 * b.share(cat):.0f}%)")
        rows.append(row)
    rows.append(["total (profiled)"] + [f"{b.total_ms:.0f} ms" for b in items])
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
    else:
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
        lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.append("ms = profiler self CPU time, forward + backward (train steps); share of the profiled total")
    return "\n".join(lines)
