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

from swtasks.checkpoint import (
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
from swtasks.models.deploy import _as_list, example_batch, has_training_structure, reparameterize_verified

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
    "pytorch_operator_path",
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
    image_size: int
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


def _trace_program(model: nn.Module, example: torch.Tensor, dynamic_batch: bool):
    shapes = ({0: torch.export.Dim("batch", min=1)},) if dynamic_batch else None
    try:
        program = torch.export.export(model, (example,), dynamic_shapes=shapes)
    except Exception as err:  # torch.export raises many error types; name the model and the step
        raise ExportError(f"torch.export could not trace {type(model).__name__}: {err}") from err
    _refuse_foreign(foreign_operators(program), "torch.export/ONNX")
    return program


def _write_onnx(model, example, path, *, dynamic_batch, opset, output_names) -> int:
    _require_onnx()
    program = _trace_program(model, example, dynamic_batch)
    try:
        onnx_program = torch.onnx.export(
            program, dynamo=True, opset_version=opset, input_names=["images"], output_names=output_names,
            verbose=False,
        )
    except Exception as err:
        raise ExportError(
            f"the ONNX exporter (opset {opset}) failed on {type(model).__name__}: {err}"
        ) from err
    if dynamic_batch:
        batch_dim = onnx_program.model.graph.inputs[0].shape[0]
        onnx_program.rename_axes({batch_dim: "batch"})
    onnx_program.save(path)
    imports = {d: v for d, v in onnx_program.model.opset_imports.items()}
    return int(imports.get("", opset))


def _write_program(model, example, path, *, dynamic_batch) -> None:
    torch.export.save(_trace_program(model, example, dynamic_batch), path)


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
    image_size: int = 224,
    dynamic_batch: bool = False,
    batch_size: int = 1,
    opset: int = DEFAULT_OPSET,
    tolerance: float = 1e-4,
) -> ExportReport:
    """Export ``model`` (eval mode; its structure as it is) to ``output`` in ``format`` (default: from the
    suffix), verified; returns an :class:`ExportReport`.

    The input is ``(B, in_chans, image_size, image_size)``. With ``dynamic_batch`` the batch dimension is
    symbolic (traced with a batch of ``max(batch_size, 2)``; checked with batches 1 and 3), else fixed to
    ``batch_size`` (checked with that). Raises ExportError when the file differs from the eager model by more
    than ``tolerance`` (max |diff| / max |eager output|, over all outputs) or a custom operator stays in the
    graph; the output file is then not written.
    """
    fmt = format_of(output, format)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ExportOptionError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if not tolerance > 0:
        raise ExportOptionError(f"tolerance must be > 0, got {tolerance!r}")
    if fmt == "onnx":
        _require_onnx()
    model.eval()
    output = os.path.abspath(os.fspath(output))
    directory, base = os.path.split(output)
    os.makedirs(directory, exist_ok=True)
    trace_batch = max(batch_size, 2) if dynamic_batch else batch_size
    example = example_batch(model, batch=trace_batch, size=image_size, seed=0)
    if example.shape[-1] != image_size:
        raise ExportOptionError(f"image_size {image_size} is smaller than {type(model).__name__}'s smallest input "
                         f"({example.shape[-1]})")
    checked = (1, 3) if dynamic_batch else (batch_size,)
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
                written_opset = _write_onnx(model, example, tmp, dynamic_batch=dynamic_batch, opset=opset,
                                            output_names=names)
            elif fmt == "export":
                written_opset = None
                _write_program(model, example, tmp, dynamic_batch=dynamic_batch)
            else:
                written_opset = None
                _write_torchscript(model, example, tmp)
            run, runtime = _runner(fmt, tmp)
            abs_diff = rel_diff = 0.0
            for i, b in enumerate(checked):
                x = example_batch(model, batch=b, size=image_size, seed=1 + i)
                a, r = _compare(run(x), _as_list(model(x)), b)
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
        image_size=image_size, dynamic_batch=dynamic_batch, checked_batches=checked, max_abs_diff=abs_diff,
        relative_diff=rel_diff, tolerance=tolerance, checked_with=runtime, opset=written_opset,
        files=[os.path.join(directory, f) for f in files], notes=notes,
    )


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
    refuse_loading_options({k: v for k, v in hp.items() if k not in ("trust_pickle", "allow_download")},
                           source=source, field="hyper_parameters")
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
    image_size: int | None = None,
    dynamic_batch: bool = False,
    batch_size: int = 1,
    num_classes: int | None = None,
    features_only: bool = False,
    overrides: Mapping[str, Any] | None = None,
    opset: int = DEFAULT_OPSET,
    tolerance: float = 1e-4,
    trust_pickle: bool = False,
    allow_download: bool = False,
) -> ExportReport:
    """Build registry model ``name`` (weights from ``checkpoint``: any file
    ``create_model(checkpoint_path=...)`` reads, .safetensors included), optionally fold it into its deploy
    structure (verified), and export it with :func:`export_module`.

    The file's recorded settings are used unless given: ``num_classes`` (else the size of the file's
    classifier) and the architecture overrides from its ``meta`` (or a Lightning checkpoint's
    hyper-parameters; architecture options only, a file recording a loading option is refused), and a
    deploy-structure file (``meta['deploy']``) builds the deploy structure directly. Non-finite weights are
    refused (NonFiniteWeightsError), and so is a URL unless ``allow_download``. ``image_size`` defaults to the variant's data
    config (224).
    """
    overrides = dict(overrides or {})
    data_cfg = get_data_config(name)
    image_size = int(image_size or data_cfg["input_size"][-1])
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
            example = example_batch(net, batch=2, size=image_size)
            rep = reparameterize_verified(net, example=example)
            rep_error = rep["relative_error"]
            notes.append(f"re-parameterised: {rep['params_before']:,} -> {rep['params_after']:,} parameters, "
                         f"outputs moved by {rep_error:.2e} (relative)")
    report = export_module(net, output, format=format, image_size=image_size, dynamic_batch=dynamic_batch,
                           batch_size=batch_size, opset=opset, tolerance=tolerance)
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
    lines = [*report.notes,
             f"wrote {report.path}: {what} as {fmt[report.format]}, input (B, C, {report.image_size}, "
             f"{report.image_size}), {batch}",
             f"check: {report.checked_with}, batch{'es' if len(report.checked_batches) > 1 else ''} "
             f"{', '.join(map(str, report.checked_batches))}: max |diff| "
             f"{report.max_abs_diff:.3g}, relative {report.relative_diff:.3g} "
             f"(tolerance {report.tolerance:g})"]
    extra = [f for f in report.files if f != report.path]
    if extra:
        lines.append(f"with {', '.join(extra)} (external weights)")
    return lines

