"""Deployment exports of registry models: ONNX, ``torch.export`` programs (.pt2) and TorchScript, verified.

    python tools/export.py shiftwise_tiny sw_t.onnx --format onnx --checkpoint sw_t.safetensors \\
        --reparameterize --dynamic-batch

See docs/deploy.md. This module sits at the analysis/convert floor: it imports the models, the checkpoint
helpers and torch, and ``onnx`` / ``onnxscript`` / ``onnxruntime`` (the ``export`` extra) only when an ONNX
file is asked for; never lightning or mm*.

An export is: the model in eval mode (with ``reparameterize`` first folded into its deploy structure,
verified by ``swtasks.models.deploy.reparameterize_verified``), traced on a seeded batch, written to a
temporary folder next to the output, loaded back from disk and run on fresh batches (1 and 3 with a dynamic
batch: ONNX files in ONNX Runtime on the CPU, programs through ``torch.export.load``, TorchScript through
``torch.jit.load``), compared with the eager model, and only then moved into place. A relative difference
above the tolerance is an :class:`ExportError` and leaves no file behind.

The one non-obvious decision: operators that have a Triton path (modules with a ``backend`` attribute, e.g.
``ShiftWiseConv2d``) are traced through their PyTorch path. The Triton path is a ``torch.library`` custom op
(``swtasks::cross_conv``): ``torch.export`` keeps it as an opaque call (a .pt2 that needs ``import swtasks``
and runs only where the kernels run) and the ONNX exporter has no translation for it (a ConversionError deep
inside the exporter). The PyTorch path computes the same contract with standard depthwise convolutions
(docs/operator.md), so every runtime can run it; any other custom operator left in a traced graph is refused
with its name.

ONNX files also get depthwise convolutions in the form ONNX Runtime's blocked CPU kernel runs fast
(:func:`runtime_depthwise_graph`: channels padded to a multiple of 16, a wide kernel's padding as zero
columns), which made SLaK-T 2.2x faster in ONNX Runtime; same results, checked like the rest.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from swtasks.checkpoint import (
    RECORDED_NOT_TAKEN,
    architecture_options,
    classifier_classes,
    extract_state_dict,
    file_num_classes,
    load_into,
    read_checkpoint,
    refuse_loading_options,
)
from swtasks.errors import UserError
from swtasks.models import create_model, get_data_config
from swtasks.models.deploy import _as_list, has_training_structure, reparameterize_verified

__all__ = [
    "DEFAULT_OPSET",
    "FORMATS",
    "ExportError",
    "ExportOptionError",
    "MissingExtraError",
    "ExportReport",
    "export_model",
    "export_module",
    "foreign_operators",
    "format_of",
    "hw_check_sizes",
    "parse_image_size",
    "pytorch_operator_path",
    "runtime_depthwise_graph",
    "summary",
]

FORMATS = ("onnx", "export", "torchscript")
SUFFIXES = {"onnx": (".onnx",), "export": (".pt2",), "torchscript": (".pt", ".ts", ".torchscript")}
# The ONNX opset written by default: the default of torch 2.14's exporter, run by ONNX Runtime >= 1.17.
DEFAULT_OPSET = 20
# Operator namespaces every runtime of a format knows; anything else in a traced graph is a custom op.
_STANDARD_NAMESPACES = {"aten", "prims", "prim"}
_BACKENDS = (None, "auto", "torch", "triton")
_EXTRA = "pip install 'swtasks[export]'"


class ExportError(UserError, RuntimeError):
    """An export that cannot be produced, or whose file does not reproduce the eager model (tools/export.py:
    "failed", exit status 1)."""


class ExportOptionError(UserError, ValueError):
    """A bad export option (format, sizes, tolerance): a user error (exit status 2; a ValueError as before)."""


class MissingExtraError(UserError, ModuleNotFoundError):
    """An optional dependency (the ``export`` extra) is not installed."""


@dataclass
class ExportReport:
    """What :func:`export_model` / :func:`export_module` did (the tool prints it)."""

    path: str
    format: str
    structure: str  # "deploy" or "training"
    image_size: int | tuple[int, int]  # N for N x N, else (H, W): the traced size
    dynamic_batch: bool
    checked_batches: tuple[int, ...]
    max_abs_diff: float
    relative_diff: float
    tolerance: float
    checked_with: str
    opset: int | None = None
    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    model: str | None = None
    reparameterization_error: float | None = None
    dynamic_hw: bool = False  # symbolic height and width
    hw_multiple: int | None = None  # with dynamic_hw: H and W must be multiples of this
    hw_range: tuple[int, int] | None = None  # with dynamic_hw: the smallest and largest H and W
    checked_sizes: tuple[tuple[int, int], ...] = ()  # the (H, W) the file was run at

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------------------------------
# the operator path
# ------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def pytorch_operator_path(model: nn.Module) -> Iterator[Counter]:
    """Within the block, every module of ``model`` with a selectable operator backend (a ``backend``
    attribute of None / 'auto' / 'torch' / 'triton', e.g. ``ShiftWiseConv2d``) runs its PyTorch path: an
    explicit argument wins over ``$SWTASKS_OP_BACKEND``, so the environment cannot bring the Triton custom op
    back. Yields the number of such modules per class; restores their settings on exit."""
    switched = [(m, m.backend) for m in model.modules() if getattr(m, "backend", "-") in _BACKENDS]
    try:
        for m, _ in switched:
            m.backend = "torch"
        yield Counter(type(m).__name__ for m, _ in switched)
    finally:
        for m, backend in switched:
            m.backend = backend


# ONNX Runtime's CPU provider runs a depthwise convolution in its blocked NCHWc layout (a direct kernel) only
# when the channel count is a multiple of its block: 8 with AVX2, 16 with AVX-512; otherwise im2col + GEMM,
# several times slower for large kernels. Its blocked kernel also computes every output whose window overlaps
# the left or right padding one by one, which for a wide kernel is most outputs (docs/deploy.md, "Speed in
# ONNX Runtime").
ORT_CHANNEL_BLOCK = 16
ORT_WIDE_KERNEL = 7  # kernels wider than this get explicit zero columns instead of implicit padding


def _is_depthwise(m: nn.Module) -> bool:
    return (type(m) is nn.Conv2d and m.groups == m.in_channels == m.out_channels > 1 and m.kernel_size != (1, 1)
            and m.padding_mode == "zeros" and not isinstance(m.padding, str))


def _runtime_depthwise_forward(self: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``self(x)`` in the form ONNX Runtime's blocked depthwise kernel runs fast: the channels zero-padded to a
    multiple of ORT_CHANNEL_BLOCK (zero filters, sliced off after), a wide kernel's left and right padding as
    zero columns concatenated to the map (a ``Pad`` would be folded back into the convolution). Same result."""
    c = x.shape[1]
    weight, bias = self.weight, self.bias
    ph, pw = self.padding
    extra = -c % ORT_CHANNEL_BLOCK
    if extra:
        x = torch.cat([x, x.new_zeros(x.shape[0], extra, x.shape[2], x.shape[3])], dim=1)
        weight = torch.cat([weight, weight.new_zeros(extra, *weight.shape[1:])])
        bias = None if bias is None else torch.cat([bias, bias.new_zeros(extra)])
    if self.kernel_size[1] > ORT_WIDE_KERNEL and pw:
        zeros = x.new_zeros(x.shape[0], x.shape[1], x.shape[2], pw)
        x, pw = torch.cat([zeros, x, zeros], dim=3), 0
    y = F.conv2d(x, weight, bias, self.stride, (ph, pw), self.dilation, c + extra)
    return y[:, :c] if extra else y


@contextlib.contextmanager
def runtime_depthwise_graph(model: nn.Module) -> Iterator[int]:
    """Within the block, every depthwise ``nn.Conv2d`` of ``model`` (groups = in = out channels, a kernel
    larger than 1x1, zero padding) traces to the form ONNX Runtime runs fast (:func:`_runtime_depthwise_forward`;
    measured on SLaK-T: 2.2x the images/s, docs/deploy.md); every other module, and eager results, unchanged.
    Yields the number of convolutions rewritten. Used for ONNX files only."""
    convs = [m for m in model.modules() if _is_depthwise(m) and "forward" not in m.__dict__  # not one patched
             and (m.in_channels % ORT_CHANNEL_BLOCK or (m.kernel_size[1] > ORT_WIDE_KERNEL and m.padding[1]))]
    try:
        for m in convs:
            m.forward = _runtime_depthwise_forward.__get__(m)
        yield len(convs)
    finally:
        for m in convs:
            m.__dict__.pop("forward", None)


def foreign_operators(graph: Any) -> list[str]:
    """Custom (non-ATen) operators called by a ``torch.export`` program, an fx graph or a TorchScript module,
    as ``namespace::name``; [] when the graph uses standard operators only."""
    found = set()
    if isinstance(graph, (torch.jit.ScriptModule, torch.jit.ScriptFunction)):
        for node in graph.inlined_graph.nodes():
            namespace = node.kind().split("::", 1)[0]
            if namespace not in _STANDARD_NAMESPACES:
                found.add(node.kind())
        return sorted(found)
    fx_graph = getattr(graph, "graph", graph)
    for node in fx_graph.nodes:
        target = node.target
        is_op = isinstance(target, (torch._ops.OpOverload, torch._ops.OpOverloadPacket))
        if node.op == "call_function" and is_op:
            namespace = target.namespace if hasattr(target, "namespace") else str(target).split(".", 1)[0]
            if namespace not in _STANDARD_NAMESPACES:
                found.add(target.name() if callable(getattr(target, "name", None)) else str(target))
    return sorted(found)


def _refuse_foreign(ops: list[str], fmt: str) -> None:
    if ops:
        raise ExportError(
            f"the traced graph calls custom operators {', '.join(ops)}: a {fmt} runtime without this "
            "toolkit's kernels cannot run them. Operators with a Triton path are traced through their "
            "PyTorch path (swtasks.export.pytorch_operator_path); a module that calls a custom op directly "
            "needs a PyTorch path selected by a `backend` attribute"
        )


# ------------------------------------------------------------------------------------------------------
# writing and reading the formats
# ------------------------------------------------------------------------------------------------------


def format_of(path: str | os.PathLike, fmt: str | None = None) -> str:
    """The export format: ``fmt`` when given (checked), else from the file suffix (.onnx, .pt2, .pt/.ts)."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise ExportOptionError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
        return fmt
    name = os.fspath(path).lower()
    for f, suffixes in SUFFIXES.items():
        if name.endswith(suffixes):
            return f
    known = ", ".join(f"{s} ({f})" for f, ss in SUFFIXES.items() for s in ss)
    raise ExportOptionError(
        f"cannot tell the export format of {os.fspath(path)!r}: give --format or a suffix: {known}"
    )


def _require_onnx() -> None:
    missing = []
    for mod in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise MissingExtraError(f"ONNX export and its check need {', '.join(missing)}: {_EXTRA}")


def parse_image_size(value: int | str | tuple[int, int] | list[int]) -> tuple[int, int]:
    """(H, W) from N, "N", "HxW" or (H, W); ExportOptionError for anything else."""
    hw: Any = value
    if isinstance(value, str):
        text = value.strip().lower()
        parts = text.split("x") if "x" in text else [text]
        try:
            hw = [int(p) for p in parts]
        except ValueError:
            hw = None
        if hw is None or len(hw) not in (1, 2):
            raise ExportOptionError(f"image size {value!r}: give N (N x N) or HxW, e.g. 224 or 320x192")
    if isinstance(hw, int) and not isinstance(hw, bool):
        hw = [hw]
    if not isinstance(hw, (list, tuple)) or len(hw) not in (1, 2) or any(
        isinstance(v, bool) or not isinstance(v, int) for v in hw
    ):
        raise ExportOptionError(f"image size {value!r}: give N (N x N) or HxW, e.g. 224 or 320x192")
    h, w = (hw[0], hw[0]) if len(hw) == 1 else hw
    if h < 1 or w < 1:
        raise ExportOptionError(f"image size {value!r}: height and width must be >= 1")
    return int(h), int(w)


def hw_check_sizes(size: tuple[int, int], multiple: int, lo: int, hi: int) -> list[tuple[int, int]]:
    """The three (H, W) a file with a dynamic height and width is run at: the traced size, a taller one and
    a larger non-square one (e.g. 224x224 -> 288x192, 448x672), each a multiple of ``multiple`` in
    [lo, hi]; fewer when the range holds fewer distinct sizes."""
    h, w = size

    def fit(v: int) -> int:
        return min(max(multiple * round(v / multiple), lo), hi)

    candidates = [(h, w), (fit(h + 2 * multiple), fit(w - multiple)), (fit(2 * h), fit(3 * w)),
                  (fit(w), fit(h + multiple)), (lo, hi), (hi, lo)]
    sizes: list[tuple[int, int]] = []
    for c in candidates:
        if c not in sizes and len(sizes) < 3:
            sizes.append(c)
    return sizes


def _image_batch(model: nn.Module, batch: int, size: tuple[int, int], seed: int) -> torch.Tensor:
    """A seeded random (batch, in_chans, H, W) batch in the model's dtype and device."""
    ref = next(iter(model.parameters()), None)
    x = torch.randn(batch, int(getattr(model, "in_chans", 3)), *size, generator=torch.Generator().manual_seed(seed))
    return x if ref is None else x.to(device=ref.device, dtype=ref.dtype)


def _dynamic_shapes(dynamic_batch: bool, hw: tuple[int, int, int] | None):
    """torch.export's dynamic_shapes for the one input: a symbolic batch and/or H = W-range multiples."""
    dims: dict[int, Any] = {}
    if dynamic_batch:
        dims[0] = torch.export.Dim("batch", min=1)
    if hw is not None:
        multiple, lo, hi = hw
        dims[2] = multiple * torch.export.Dim("height_blocks", min=lo // multiple, max=hi // multiple)
        dims[3] = multiple * torch.export.Dim("width_blocks", min=lo // multiple, max=hi // multiple)
    return (dims,) if dims else None


def _refuse_specialised(program, model: nn.Module, hw: tuple[int, int, int] | None) -> None:
    """ExportError when torch.export fixed a dimension asked to be symbolic (a guard in the model's forward
    that only holds for the traced size): it does not always fail on such a guard, it may narrow the range."""
    if hw is None:
        return
    placeholder = next(n for n in program.graph.nodes if n.op == "placeholder"
                       and n.name not in program.graph_signature.inputs_to_parameters
                       and n.name not in program.graph_signature.inputs_to_buffers)
    shape = placeholder.meta["val"].shape
    for axis, what in ((2, "height"), (3, "width")):
        dim = shape[axis]
        fixed = None
        if not isinstance(dim, torch.SymInt):
            fixed = int(dim)
        else:
            symbols = dim.node.expr.free_symbols
            ranges = {str(k): v for k, v in program.range_constraints.items()}
            if any(str(sym) in ranges and ranges[str(sym)].lower == ranges[str(sym)].upper for sym in symbols):
                fixed = int(placeholder.meta["val"].shape[axis].node.hint or 0) or None
                fixed = fixed or "the traced size"
        if fixed is not None:
            raise ExportError(
                f"torch.export specialised the input {what} of {type(model).__name__} to {fixed}: a guard in "
                "its forward holds only for the traced size, so --dynamic-hw cannot be exported for it (find "
                "the guard with TORCH_LOGS=+dynamic); export fixed sizes with --image-size HxW instead"
            )


def _trace_program(model: nn.Module, example: torch.Tensor, dynamic_batch: bool,
                   hw: tuple[int, int, int] | None = None):
    shapes = _dynamic_shapes(dynamic_batch, hw)
    try:
        program = torch.export.export(model, (example,), dynamic_shapes=shapes)
    except Exception as err:  # torch.export raises many error types; name the model and the step
        raise ExportError(f"torch.export could not trace {type(model).__name__}: {err}") from err
    _refuse_specialised(program, model, hw)
    _refuse_foreign(foreign_operators(program), "torch.export/ONNX")
    return program


@contextlib.contextmanager
def _quiet_onnx_loggers() -> Iterator[None]:
    """The exporter's optimizer warns about nodes it evaluates while folding constants (messages for its
    developers, e.g. on the ScatterND nodes that build the shift-wise blocks' full-channel kernels from their
    weights; ONNX Runtime folds those when it loads the file): errors only within the block."""
    import logging

    loggers = [logging.getLogger(n) for n in ("onnxscript", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _write_onnx(model, example, path, *, dynamic_batch, opset, output_names, hw=None) -> int:
    _require_onnx()
    program = _trace_program(model, example, dynamic_batch, hw)
    try:
        with _quiet_onnx_loggers():
            onnx_program = torch.onnx.export(
                program, dynamo=True, opset_version=opset, input_names=["images"], output_names=output_names,
                verbose=False,
            )
    except Exception as err:
        raise ExportError(
            f"the ONNX exporter (opset {opset}) failed on {type(model).__name__}: {err}"
        ) from err
    axes = {0: "batch"} if dynamic_batch else {}
    if hw is not None:
        axes.update({2: "height", 3: "width"})
    if axes:
        shape = onnx_program.model.graph.inputs[0].shape
        onnx_program.rename_axes({shape[i]: name for i, name in axes.items()})
    onnx_program.save(path)
    imports = {d: v for d, v in onnx_program.model.opset_imports.items()}
    return int(imports.get("", opset))


def _write_program(model, example, path, *, dynamic_batch, hw=None) -> None:
    torch.export.save(_trace_program(model, example, dynamic_batch, hw), path)


def _write_torchscript(model, example, path) -> None:
    with warnings.catch_warnings():
        # torch 2.14 marks torch.jit deprecated; what tracer warnings warn of, the output check below catches
        warnings.simplefilter("ignore")
        try:
            with torch.no_grad():
                # check_trace=False: the check re-traces and compares graph text, which differs in module name
                # mangling only; the real check is the comparison of outputs after loading the file
                traced = torch.jit.trace(model, example, check_trace=False)
        except Exception as err:
            raise ExportError(
                f"TorchScript tracing failed for {type(model).__name__}: {err}; use --format export or onnx"
            ) from err
    _refuse_foreign(foreign_operators(traced), "TorchScript")
    traced.save(path)


def _runner(fmt: str, path: str) -> tuple[Callable[[torch.Tensor], list[torch.Tensor]], str]:
    """A function running the file at ``path`` in the runtime of its format, and that runtime's name."""
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name

        def run_onnx(x):
            return [torch.from_numpy(o) for o in session.run(None, {name: x.numpy()})]

        return run_onnx, f"ONNX Runtime {ort.__version__} (CPUExecutionProvider)"
    if fmt == "export":
        module = torch.export.load(path).module()
        return (lambda x: _as_list(module(x))), f"torch.export.load (torch {torch.__version__.split('+')[0]})"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.load(path, map_location="cpu")
    return (lambda x: _as_list(scripted(x))), f"torch.jit.load (torch {torch.__version__.split('+')[0]})"


def _compare(got: list[torch.Tensor], want: list[torch.Tensor], batch: int) -> tuple[float, float]:
    """(max |got - want|, max over outputs of max |got - want| / max |want|)."""
    if len(got) != len(want) or any(tuple(g.shape) != tuple(w.shape) for g, w in zip(got, want)):
        raise ExportError(
            f"batch of {batch}: the exported model returns shapes {[tuple(g.shape) for g in got]}, the eager "
            f"model {[tuple(w.shape) for w in want]}"
        )
    for name, outs in (("eager model", want), ("exported file", got)):
        bad = [i for i, t in enumerate(outs) if t.is_floating_point() and not bool(torch.isfinite(t).all())]
        if bad:  # a NaN difference would compare as no difference at all (max(0.0, nan) is 0.0)
            raise ExportError(
                f"batch of {batch}: the {name}'s output{'s' if len(bad) > 1 else ''} "
                f"{', '.join(map(str, bad))} hold{'' if len(bad) > 1 else 's'} NaN or inf: nothing to check "
                "against; nothing written"
            )
    abs_diff = rel_diff = 0.0
    for g, w in zip(got, want):
        d = (g.double() - w.double()).abs().max().item()
        abs_diff = max(abs_diff, d)
        rel_diff = max(rel_diff, d / max(w.double().abs().max().item(), 1e-12))
    return abs_diff, rel_diff


# ------------------------------------------------------------------------------------------------------
# the export
# ------------------------------------------------------------------------------------------------------


def export_module(
    model: nn.Module,
    output: str | os.PathLike,
    *,
    format: str | None = None,
    image_size: int | str | tuple[int, int] = 224,
    dynamic_batch: bool = False,
    batch_size: int = 1,
    opset: int = DEFAULT_OPSET,
    tolerance: float = 1e-4,
    dynamic_hw: bool = False,
    hw_multiple: int | None = None,
    min_size: int | None = None,
    max_size: int | None = None,
) -> ExportReport:
    """Export ``model`` (eval mode; its structure as it is) to ``output`` in ``format`` (default: from the
    suffix), verified; returns an :class:`ExportReport`.

    The input is ``(B, in_chans, H, W)`` with ``image_size`` N (N x N), "HxW" or (H, W). With
    ``dynamic_batch`` the batch dimension is symbolic (traced with a batch of ``max(batch_size, 2)``; checked
    with batches 1 and 3), else fixed to ``batch_size`` (checked with that). With ``dynamic_hw`` (ONNX and
    torch.export; TorchScript is refused) the height and width are symbolic: any multiple of ``hw_multiple``
    (default: the model's total stride, 32) in ``[min_size, max_size]`` (default: 2 multiples, 4096); the file
    is traced at ``image_size`` (itself such a multiple) and checked at the three sizes of
    :func:`hw_check_sizes`, a non-square one among them. Raises ExportError when the file differs from the
    eager model by more than ``tolerance`` (max |diff| / max |eager output|, over all outputs), a custom
    operator stays in the graph or torch.export specialises a symbolic height or width; the output file is
    then not written.
    """
    fmt = format_of(output, format)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ExportOptionError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if not tolerance > 0:
        raise ExportOptionError(f"tolerance must be > 0, got {tolerance!r}")
    size = parse_image_size(image_size)
    stride = int(getattr(model, "total_stride", 32))
    if min(size) < stride:
        raise ExportOptionError(f"image size {size[0]}x{size[1]} is smaller than {type(model).__name__}'s "
                                f"smallest input ({stride}, its total stride)")
    hw = None
    if dynamic_hw:
        hw = _hw_range(model, fmt, size, stride, hw_multiple, min_size, max_size)
        check_sizes = hw_check_sizes(size, *hw)
    else:
        if (hw_multiple, min_size, max_size) != (None, None, None):
            raise ExportOptionError("hw_multiple / min_size / max_size (--hw-multiple, --min-size, --max-size) "
                                    "need dynamic_hw (--dynamic-hw)")
        check_sizes = [size]
    if fmt == "onnx":
        _require_onnx()
    model.eval()
    output = os.path.abspath(os.fspath(output))
    directory, base = os.path.split(output)
    os.makedirs(directory, exist_ok=True)
    trace_batch = max(batch_size, 2) if dynamic_batch else batch_size
    example = _image_batch(model, trace_batch, size, seed=0)
    checked = (1, 3) if dynamic_batch else (batch_size,)
    # every size is run; with a dynamic batch each at one of the batches, both batches at least once
    runs = [(checked[i % len(checked)], hw_size) for i, hw_size in enumerate(check_sizes)]
    runs += [(b, check_sizes[0]) for b in checked if b not in [r[0] for r in runs]]
    notes: list[str] = []
    work = tempfile.mkdtemp(prefix=f".{base}.", suffix=".tmp", dir=directory)
    try:
        tmp = os.path.join(work, base)
        with pytorch_operator_path(model) as switched, torch.no_grad():
            n_out = len(_as_list(model(example)))
            if switched:
                what = ", ".join(f"{n} {cls}" for cls, n in sorted(switched.items()))
                notes.append(f"operators with a Triton path ({what}) traced through their PyTorch path "
                             "(backend='torch'), not the Triton custom op")
            if fmt == "onnx":
                names = ["logits"] if n_out == 1 else [f"features_{i}" for i in range(n_out)]
                with runtime_depthwise_graph(model) as rewritten:
                    written_opset = _write_onnx(model, example, tmp, dynamic_batch=dynamic_batch, opset=opset,
                                                output_names=names, hw=hw)
                if rewritten:
                    notes.append(f"{rewritten} depthwise convolutions written in ONNX Runtime's fast form "
                                 f"(channels padded to a multiple of {ORT_CHANNEL_BLOCK}, wide kernels on "
                                 "zero columns)")
            elif fmt == "export":
                written_opset = None
                _write_program(model, example, tmp, dynamic_batch=dynamic_batch, hw=hw)
            else:
                written_opset = None
                _write_torchscript(model, example, tmp)
            run, runtime = _runner(fmt, tmp)
            abs_diff = rel_diff = 0.0
            for i, (b, hw_size) in enumerate(runs):
                x = _image_batch(model, b, hw_size, seed=1 + i)
                try:
                    got = run(x)
                except Exception as err:  # a runtime refusing a size the file was meant to take
                    raise ExportError(f"the {fmt} file of {type(model).__name__} does not run on a batch of "
                                      f"{b} at {hw_size[0]}x{hw_size[1]}: {str(err).strip().splitlines()[-1]}; "
                                      "nothing written") from err
                a, r = _compare(got, _as_list(model(x)), b)
                abs_diff, rel_diff = max(abs_diff, a), max(rel_diff, r)
        if not rel_diff <= tolerance:
            raise ExportError(
                f"{fmt} file of {type(model).__name__} differs from the eager model: max |diff| "
                f"{abs_diff:.3g}, relative {rel_diff:.3g} > tolerance {tolerance:g} (checked in {runtime}); "
                "nothing written"
            )
        files = sorted(os.listdir(work))
        for name in files:
            os.replace(os.path.join(work, name), os.path.join(directory, name))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    deploy = not has_training_structure(model)
    return ExportReport(
        path=output, format=fmt, structure="deploy" if deploy else "training",
        image_size=size[0] if size[0] == size[1] else size, dynamic_batch=dynamic_batch, checked_batches=checked,
        max_abs_diff=abs_diff, relative_diff=rel_diff, tolerance=tolerance, checked_with=runtime,
        opset=written_opset, files=[os.path.join(directory, f) for f in files], notes=notes,
        dynamic_hw=dynamic_hw, hw_multiple=None if hw is None else hw[0],
        hw_range=None if hw is None else (hw[1], hw[2]), checked_sizes=tuple(check_sizes),
    )


def _hw_range(model, fmt, size, stride, multiple, lo, hi) -> tuple[int, int, int]:
    """(multiple, min, max) of a dynamic height and width, checked against the traced size."""
    if fmt == "torchscript":
        raise ExportOptionError("--dynamic-hw needs --format onnx or export: a TorchScript trace fixes the "
                                "height and width it was traced at")
    multiple = stride if multiple is None else multiple
    lo = 2 * multiple if lo is None else lo
    hi = 4096 if hi is None else hi
    for name, v in (("hw_multiple", multiple), ("min_size", lo), ("max_size", hi)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ExportOptionError(f"{name} must be an int >= 1, got {v!r}")
    if multiple % stride:
        raise ExportOptionError(f"the height/width multiple {multiple} is not a multiple of "
                                f"{type(model).__name__}'s total stride {stride}")
    bad = [f"{n} {v}" for n, v in (("min size", lo), ("max size", hi)) if v % multiple]
    if bad:
        raise ExportOptionError(f"{', '.join(bad)}: not a multiple of {multiple} (the height/width multiple)")
    if lo < stride or lo > hi:
        raise ExportOptionError(f"size range {lo}..{hi}: needs {stride} <= min size <= max size")
    if lo // multiple < 2:
        raise ExportOptionError(f"min size {lo}: at least 2 multiples ({2 * multiple}): torch.export treats a "
                                "dimension that may be 1 as a special case")
    if any(v % multiple or not lo <= v <= hi for v in size):
        raise ExportOptionError(f"image size {size[0]}x{size[1]} (the traced size): height and width must be "
                                f"multiples of {multiple} in {lo}..{hi}")
    return multiple, lo, hi


def _file_settings(obj: Any, source: str) -> dict[str, Any]:
    """num_classes / architecture overrides / deploy recorded in a weights file: this toolkit's ``meta``
    (converters, exports, re-parameterisations) or a Lightning checkpoint's ``hyper_parameters``
    (tools/train_cls.py). Only architecture options are taken (swtasks.checkpoint.architecture_options): a
    file that records a loading option (checkpoint_path, trust_pickle, weights, ...) is refused."""
    if not isinstance(obj, Mapping):
        return {}
    meta = obj.get("meta") if isinstance(obj.get("meta"), Mapping) else {}
    hp = obj.get("hyper_parameters") if isinstance(obj.get("hyper_parameters"), Mapping) else {}
    out: dict[str, Any] = {}
    refuse_loading_options({k: v for k, v in hp.items() if k not in RECORDED_NOT_TAKEN}, source=source,
                           field="hyper_parameters")
    for where, src in (("hyper_parameters", hp), ("meta", meta)):
        n = file_num_classes(src.get("num_classes"), source=source, field=f"{where}['num_classes']")
        if n is not None:
            out["num_classes"] = n
        for key in ("overrides", "backbone_kwargs"):
            if src.get(key) is not None:
                opts = architecture_options(src[key], source=source, field=f"{where}[{key!r}]")
                out.setdefault("overrides", {}).update(opts)
        if src.get("deploy") is True:
            out["deploy"] = True
    return out


def export_model(
    name: str,
    output: str | os.PathLike,
    *,
    format: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    reparameterize: bool = False,
    image_size: int | str | tuple[int, int] | None = None,
    dynamic_batch: bool = False,
    batch_size: int = 1,
    num_classes: int | None = None,
    features_only: bool = False,
    overrides: Mapping[str, Any] | None = None,
    opset: int = DEFAULT_OPSET,
    tolerance: float = 1e-4,
    trust_pickle: bool = False,
    allow_download: bool = False,
    dynamic_hw: bool = False,
    hw_multiple: int | None = None,
    min_size: int | None = None,
    max_size: int | None = None,
) -> ExportReport:
    """Build registry model ``name`` (weights from ``checkpoint``: any file
    ``create_model(checkpoint_path=...)`` reads, .safetensors included), optionally fold it into its deploy
    structure (verified), and export it with :func:`export_module`.

    The file's recorded settings are used unless given: ``num_classes`` (else the size of the file's
    classifier) and the architecture overrides from its ``meta`` (or a Lightning checkpoint's
    hyper-parameters; architecture options only, a file recording a loading option is refused), and a
    deploy-structure file (``meta['deploy']``) builds the deploy structure directly. Non-finite weights are
    refused (NonFiniteWeightsError), and so is a URL unless ``allow_download``. ``image_size`` (N, "HxW" or
    (H, W)) defaults to the variant's data config (224); ``dynamic_hw`` and its range: see
    :func:`export_module`.
    """
    overrides = dict(overrides or {})
    data_cfg = get_data_config(name)
    size = parse_image_size(image_size or int(data_cfg["input_size"][-1]))
    settings: dict[str, Any] = {}
    obj = None
    if checkpoint is not None:
        obj = read_checkpoint(checkpoint, trust_pickle=trust_pickle, allow_download=allow_download)
        settings = _file_settings(obj, os.fspath(checkpoint))
        sd = extract_state_dict(obj, source=os.fspath(checkpoint))  # a file without weights fails here, named
    kwargs = {**settings.get("overrides", {}), **overrides}
    deploy_file = bool(settings.get("deploy"))
    if num_classes is None:
        num_classes = settings.get("num_classes")
    if num_classes is None and obj is not None and not features_only:
        # a plain state dict records nothing: its classifier says how many classes it was trained for
        probe = create_model(name, deploy=deploy_file, **kwargs)
        num_classes = classifier_classes(probe, sd, source=os.fspath(checkpoint))
    if num_classes is None:
        num_classes = data_cfg.get("num_classes", 1000)
    net = create_model(name, num_classes=int(num_classes), deploy=deploy_file, features_only=features_only,
                       **kwargs)
    if obj is not None:
        load_into(net, obj, source=os.fspath(checkpoint))
    net.eval()
    notes = []
    rep_error = None
    if reparameterize:
        if deploy_file:
            notes.append("the checkpoint holds the deploy structure already: nothing to fold")
        elif not callable(getattr(net, "reparameterize", None)):
            notes.append(f"{name} has no re-parameterisation: its training structure is its deploy structure")
        else:
            example = _image_batch(net, 2, (max(size[0], 32), max(size[1], 32)), seed=0)
            rep = reparameterize_verified(net, example=example)
            rep_error = rep["relative_error"]
            notes.append(f"re-parameterised: {rep['params_before']:,} -> {rep['params_after']:,} parameters, "
                         f"outputs moved by {rep_error:.2e} (relative)")
    report = export_module(net, output, format=format, image_size=size, dynamic_batch=dynamic_batch,
                           batch_size=batch_size, opset=opset, tolerance=tolerance, dynamic_hw=dynamic_hw,
                           hw_multiple=hw_multiple, min_size=min_size, max_size=max_size)
    report.model = name
    report.reparameterization_error = rep_error
    report.notes = notes + report.notes
    return report


def summary(report: ExportReport) -> list[str]:
    """The lines tools/export.py prints for a report."""
    mode = "" if report.structure == "deploy" else ", eval mode"
    what = f"{report.model or 'model'} ({report.structure} structure{mode})"
    fmt = {"onnx": f"ONNX opset {report.opset}", "export": "torch.export program",
           "torchscript": "TorchScript"}
    batch = "dynamic batch" if report.dynamic_batch else f"batch {report.checked_batches[0]}"
    h, w = (report.image_size,) * 2 if isinstance(report.image_size, int) else report.image_size
    if report.dynamic_hw and report.hw_range is not None:
        lo, hi = report.hw_range
        hw = (f"H, W): H and W any multiple of {report.hw_multiple} in {lo}..{hi} (traced at {h}x{w})")
    else:
        hw = f"{h}, {w})"
    sizes = ""
    if report.dynamic_hw:
        sizes = f" at {', '.join(f'{a}x{b}' for a, b in report.checked_sizes)}"
    lines = [*report.notes,
             f"wrote {report.path}: {what} as {fmt[report.format]}, input (B, C, {hw}, {batch}",
             f"check: {report.checked_with}, batch{'es' if len(report.checked_batches) > 1 else ''} "
             f"{', '.join(map(str, report.checked_batches))}{sizes}: max |diff| "
             f"{report.max_abs_diff:.3g}, relative {report.relative_diff:.3g} "
             f"(tolerance {report.tolerance:g})"]
    extra = [f for f in report.files if f != report.path]
    if extra:
        lines.append(f"with {', '.join(extra)} (external weights)")
    return lines

