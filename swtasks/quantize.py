"""INT8 post-training quantisation of an exported ONNX classifier, and its report against the fp32 file.

    python tools/export.py shiftwise_tiny sw_t.onnx --reparameterize --int8 --calibration imagenet/train \\
        --calibration-images 256 --held-out imagenet/val

Static quantisation with ONNX Runtime's quantiser (``onnxruntime.quantization.quantize_static``): QDQ format
(QuantizeLinear / DequantizeLinear pairs around standard operators, which every runtime reads), weights int8
per output channel, activations uint8 per tensor with MinMax ranges from the calibration images; the
convolutions and matrix products are quantised (QUANTIZED_OPS), the rest stays fp32. The fp32 file
is first prepared by ``quant_pre_process`` (shape inference and ONNX Runtime's basic graph optimisations:
weights computed from other weights, e.g. the shift-wise blocks' full-channel kernels, become constants the
quantiser can see). ``keep_fp32="depthwise"`` leaves every depthwise convolution (one input channel per group:
the large-kernel token mixers, the shift-wise strips, ConvNeXt's 7x7) in fp32 through ``nodes_to_exclude``.

The report (:func:`compare_int8`) runs both files in ONNX Runtime on held-out images (not used for
calibration): top-1 agreement, mean KL(fp32 || int8) of the softmax of the logits, and the speed ratio
int8 / fp32 (interleaved rounds, median and range). Measurements: docs/deploy.md ("INT8").

This module sits beside swtasks.export (imports torch-free numpy, onnx and onnxruntime, the ``export`` extra,
when called); images reach it as arrays: the tools read and transform them (swtasks.cls's eval transforms).
"""

from __future__ import annotations

import logging
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from swtasks.errors import UserError

__all__ = ["KEEP_FP32", "QUANTIZED_OPS", "CalibrationError", "Int8Report", "compare_int8", "depthwise_conv_nodes",
           "ort_session", "quantize_int8"]

KEEP_FP32 = (None, "depthwise")
# The operators quantised: the products and convolutions, where the time goes. The quantiser's default list also
# takes Concat, Add, Mul, ...: it then wraps the int64 shape arithmetic of a dynamic-batch graph (the shift-wise
# blocks' zero columns) in Q/DQ nodes, a file ONNX Runtime refuses; elementwise operators gain nothing in INT8 on
# the CPU anyway (each Q/DQ pair is one more pass over the map).
QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")


class CalibrationError(UserError, ValueError):
    """Calibration or held-out images that cannot be used (a missing folder, no images, too few)."""


def ort_session(path: str | os.PathLike, threads: int | None = None):
    """An ONNX Runtime CPU session of ``path`` with ``threads`` intra-op threads (default: ONNX Runtime's choice)
    and one inter-op thread; idle threads sleep instead of spinning (as OMP_WAIT_POLICY=PASSIVE, which the tools
    set for PyTorch: on a shared CPU a spinning pool steals the cores the next measured call needs)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(os.fspath(path), so, providers=["CPUExecutionProvider"])


def depthwise_conv_nodes(model) -> list[str]:
    """Names of the Conv nodes of an ONNX model (a ModelProto with constant weights) that are depthwise: one
    input channel per group and more than one group."""
    inits = {i.name: tuple(i.dims) for i in model.graph.initializer}
    names = []
    for node in model.graph.node:
        if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in inits:
            continue
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        w = inits[node.input[1]]
        if group > 1 and len(w) == 4 and w[1] == 1 and w[0] == group:
            names.append(node.name)
    return names


class _Reader:
    """onnxruntime.quantization's CalibrationDataReader over (N, C, H, W) float32 batches."""

    def __init__(self, name: str, batches: Iterable[np.ndarray]):
        self.name = name
        self.batches = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.batches, None)
        return None if batch is None else {self.name: np.ascontiguousarray(batch, dtype=np.float32)}


def _rename_values(model) -> None:
    """Rename every initializer to ``w<i>_`` and every other inner value to ``v<i>_`` (the graph's inputs and
    outputs keep their names). The quantiser makes new names by appending to old ones, and a bias initializer
    two nodes share is copied as the name plus the next free number among the initializers' names, which
    can be the name of a value that is not an initializer (onnxruntime 1.32: bias ``cat_2`` copied as
    ``cat_29``, the input of another convolution, which then read the bias: a file ONNX Runtime refuses).
    No appended name can match these patterns."""
    graph = model.graph
    nested = next((n for n in graph.node if any(a.g.node or a.graphs for a in n.attribute)), None)
    if nested is not None:  # a subgraph reads outer names: renaming them here would cut it off
        raise CalibrationError(f"node {nested.name!r} ({nested.op_type}) has a subgraph; not supported for INT8")
    keep = {v.name for v in graph.input} | {v.name for v in graph.output}
    names = {i.name: f"w{k}_" for k, i in enumerate(graph.initializer) if i.name not in keep}
    outputs = [o for n in graph.node for o in n.output if o and o not in keep and o not in names]
    names.update({o: f"v{k}_" for k, o in enumerate(dict.fromkeys(outputs))})
    for i in graph.initializer:
        i.name = names.get(i.name, i.name)
    for n in graph.node:
        n.input[:] = [names.get(x, x) for x in n.input]
        n.output[:] = [names.get(x, x) for x in n.output]


def quantize_int8(fp32_path: str | os.PathLike, int8_path: str | os.PathLike, calibration: Iterable[np.ndarray],
                  *, keep_fp32: str | None = None, full_range: bool = False) -> dict[str, Any]:
    """Write the static INT8 (QDQ, per-channel weights) version of ``fp32_path`` to ``int8_path``, calibrated on
    the batches of ``calibration`` ((N, C, H, W) float32 arrays as the model takes them). ``keep_fp32``: None, or
    "depthwise" (every depthwise convolution stays fp32). Returns {"fp32_nodes": names kept in fp32}.

    The weights use 7 bits of the int8 range unless ``full_range``: ONNX Runtime's uint8 x int8 products on an
    x86 CPU without VNNI (AVX2, AVX-512 without VNNI) add pairs in 16 bits, which saturate with 8-bit weights
    and full-range activations (measured on this AVX2 machine: a two-convolution graph off by half its output
    range, tests/test_export_runtime.py). 8-bit weights are only for files run on CPUs with VNNI."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if keep_fp32 not in KEEP_FP32:
        raise CalibrationError(f"keep_fp32 must be one of {KEEP_FP32}, got {keep_fp32!r}")
    int8_path = os.path.abspath(os.fspath(int8_path))
    work = tempfile.mkdtemp(prefix=".int8.", dir=os.path.dirname(int8_path))
    try:
        prepared = os.path.join(work, "prepared.onnx")
        quant_pre_process(os.fspath(fp32_path), prepared, skip_symbolic_shape=True)
        model = onnx.load(prepared)
        # type annotations of values the preparation folded away stay behind in value_info; a name the quantiser
        # then gives one of its own values (e.g. a quantised bias) can collide with one (an int64 shape value of
        # a shift-wise graph), a typed file ONNX Runtime refuses: drop them, ONNX Runtime infers the types
        del model.graph.value_info[:]
        _rename_values(model)
        onnx.save(model, prepared)
        exclude = depthwise_conv_nodes(model) if keep_fp32 == "depthwise" else []
        name = model.graph.input[0].name
        tmp = os.path.join(work, os.path.basename(int8_path))
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # the quantiser warns on the root logger about every 1-D weight it skips
        try:
            quantize_static(prepared, tmp, _Reader(name, calibration), quant_format=QuantFormat.QDQ,
                            per_channel=True, reduce_range=not full_range, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=exclude,
                            op_types_to_quantize=list(QUANTIZED_OPS))
        finally:
            root.setLevel(level)
        ort.InferenceSession(tmp, providers=["CPUExecutionProvider"])  # a file ONNX Runtime refuses is not written
        os.replace(tmp, int8_path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"fp32_nodes": exclude}


@dataclass
class Int8Report:
    """The INT8 file against the fp32 file on held-out images (:func:`compare_int8`)."""

    images: int
    top1_agreement: float  # fraction of images whose argmax is the same
    mean_kl: float  # mean over images of KL(softmax(fp32) || softmax(int8)), nats
    max_kl: float
    fp32_images_per_s: float  # median over rounds
    int8_images_per_s: float
    speed_ratio: float  # median over rounds of fp32 time / int8 time (> 1: INT8 faster)
    speed_ratio_min: float
    speed_ratio_max: float
    batch_size: int
    threads: int | None
    rounds: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def compare_int8(fp32_path: str | os.PathLike, int8_path: str | os.PathLike, held_out: Sequence[np.ndarray], *,
                 threads: int | None = None, rounds: int = 3) -> Int8Report:
    """Run both files on the held-out batches (a sequence of (N, C, H, W) float32 arrays): top-1 agreement and
    KL of the logits over every image, then ``rounds`` interleaved timings of the first batch in each file."""
    if not held_out:
        raise CalibrationError("no held-out images to compare the INT8 file with")
    sessions = [ort_session(p, threads) for p in (fp32_path, int8_path)]
    names = [s.get_inputs()[0].name for s in sessions]
    kls, agree, n = [], 0, 0
    for batch in held_out:
        a, b = (s.run(None, {nm: batch})[0] for s, nm in zip(sessions, names))
        la, lb = _log_softmax(a), _log_softmax(b)
        kls += list((np.exp(la) * (la - lb)).sum(axis=1))
        agree += int((a.argmax(1) == b.argmax(1)).sum())
        n += len(batch)
    x = held_out[0]
    times: list[list[float]] = [[], []]
    for s, nm in zip(sessions, names):
        s.run(None, {nm: x})  # warm-up (the first call allocates)
    for r in range(max(int(rounds), 1)):
        for i in ((0, 1) if r % 2 == 0 else (1, 0)):
            t = time.perf_counter()
            sessions[i].run(None, {names[i]: x})
            times[i].append(time.perf_counter() - t)
    ratios = [f / q for f, q in zip(*times)]
    return Int8Report(
        images=n, top1_agreement=agree / n, mean_kl=float(np.mean(kls)), max_kl=float(np.max(kls)),
        fp32_images_per_s=len(x) / statistics.median(times[0]), int8_images_per_s=len(x) / statistics.median(times[1]),
        speed_ratio=statistics.median(ratios), speed_ratio_min=min(ratios), speed_ratio_max=max(ratios),
        batch_size=len(x), threads=threads, rounds=len(ratios),
    )
