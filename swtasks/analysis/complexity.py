"""Parameters and FLOPs of registry models, as a table.

FLOPs come from `torch.utils.flop_counter.FlopCounterMode`, which counts the matrix-multiply and
convolution operators (conv, linear/addmm/mm/bmm, attention) and nothing else: normalisation, activations,
pooling, the SE scale and residual adds are not counted, the usual convention of papers' "FLOPs"
tables. It reports FLOPs = 2 x multiply-accumulates, so GMACs = GFLOPs / 2 (papers' "FLOPs" columns
are usually MACs). The shift-wise operator is counted as the strip convolutions it runs: three in the
training structure (horizontal, vertical, centre), two in the deploy structure.

The counting forward runs on CPU by default (the PyTorch op backend; custom Triton kernels would not
be counted), or on the meta device with device='meta' (shapes only: no memory for activations, useful for
detection-size inputs, but slower than a CPU run for classification sizes).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from .errors import AnalysisError

__all__ = ["ComplexityRow", "count_flops", "count_params", "format_table", "measure", "measure_many"]


@dataclass
class ComplexityRow:
    model: str
    input_size: tuple[int, int, int]
    params: int
    flops: int  # per image, 2 x MACs
    deploy_params: int | None = None
    deploy_flops: int | None = None

    @property
    def macs(self) -> int:
        return self.flops // 2

    def as_dict(self) -> dict:
        d = asdict(self)
        d["macs"] = self.macs
        return d


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _forward_flops(model: nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops())


def count_flops(model: nn.Module, input_size: Sequence[int] = (3, 224, 224), batch_size: int = 1,
                device: str = "cpu") -> int:
    """FLOPs (2 x MACs) of one forward of `model` in eval mode, per image. device 'cpu' runs the model
    where its parameters are (with a random input); 'meta' runs a meta-device copy (shapes only). The
    model's train/eval mode is restored."""
    if len(input_size) != 3:
        raise AnalysisError(f"input_size must be (C, H, W), got {tuple(input_size)}")
    if batch_size < 1:
        raise AnalysisError(f"batch_size must be >= 1, got {batch_size}")
    if device not in ("cpu", "meta"):
        raise AnalysisError(f"device must be 'cpu' or 'meta', got {device!r}")
    shape = (batch_size, *input_size)
    if device == "meta":
        meta_model = copy.deepcopy(model).to("meta").eval()
        return _forward_flops(meta_model, torch.empty(shape, device="meta")) // batch_size
    was_training = model.training
    try:
        model.eval()
        ref = next(iter(model.parameters()), None)
        dev = ref.device if ref is not None else torch.device("cpu")
        return _forward_flops(model, torch.randn(shape, device=dev)) // batch_size
    finally:
        model.train(was_training)


def measure(name: str, input_size: int | Sequence[int] = 224, num_classes: int = 1000, deploy: bool = False,
            batch_size: int = 1, device: str = "cpu", **create_kwargs) -> ComplexityRow:
    """Build registry model `name` (training structure) and count its parameters and FLOPs at
    `input_size` (an int, (H, W) or (C, H, W)); with deploy=True also the re-parameterised structure
    (built directly with create_model(..., deploy=True), so no folding is needed)."""
    from swtasks.models import create_model, get_data_config

    chans = get_data_config(name)["input_size"][0]
    size = _input_size(input_size, chans)
    model = create_model(name, num_classes=num_classes, **create_kwargs)
    stride = getattr(model, "total_stride", None)
    if isinstance(stride, int) and min(size[1:]) < stride:
        raise AnalysisError(f"input size {size[1]}x{size[2]} is smaller than the total stride {stride} of {name}")
    row = ComplexityRow(name, size, count_params(model), count_flops(model, size, batch_size, device))
    del model
    if deploy:
        dmodel = create_model(name, num_classes=num_classes, deploy=True, **create_kwargs)
        row.deploy_params = count_params(dmodel)
        row.deploy_flops = count_flops(dmodel, size, batch_size, device)
    return row


def measure_many(names: Iterable[str], **kwargs) -> list[ComplexityRow]:
    return [measure(n, **kwargs) for n in names]


def _input_size(size: int | Sequence[int], chans: int) -> tuple[int, int, int]:
    if isinstance(size, int):
        return (chans, size, size)
    size = tuple(int(s) for s in size)
    if len(size) == 2:
        return (chans, *size)
    if len(size) == 3:
        return size  # type: ignore[return-value]
    raise AnalysisError(f"input size must be S, (H, W) or (C, H, W), got {size}")


def format_table(rows: Sequence[ComplexityRow]) -> str:
    """A Markdown table: params in millions, GFLOPs and GMACs per image."""
    deploy = any(r.deploy_params is not None for r in rows)
    head = ["model", "input", "params (M)", "GFLOPs", "GMACs"]
    if deploy:
        head += ["deploy params (M)", "deploy GMACs"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        cells = [r.model, "x".join(map(str, r.input_size)), f"{r.params / 1e6:.2f}", f"{r.flops / 1e9:.2f}",
                 f"{r.macs / 1e9:.2f}"]
        if deploy:
            cells += [
                "-" if r.deploy_params is None else f"{r.deploy_params / 1e6:.2f}",
                "-" if r.deploy_flops is None else f"{r.deploy_flops / 2e9:.2f}",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
