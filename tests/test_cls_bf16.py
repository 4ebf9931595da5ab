"""Mixed precision on the CPU (docs/operator.md, "Mixed precision"; docs/classification.md): the shift-wise
operator's dtypes under torch.autocast('cpu', bfloat16), its sums in fp32, and a few steps of
tools/train_cls.py fit --trainer.precision bf16-mixed (finite losses, fp32 parameters, the operator's dtypes)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import run_cli
from lightning.pytorch.callbacks import Callback

from swtasks.cls.synthetic import write_image_folder
from swtasks.layers.shiftwise import ShiftWiseConv2d
from swtasks.ops.cross_torch import cross_conv_torch

BF16 = torch.bfloat16


def autocast():
    return torch.autocast("cpu", dtype=BF16)


def test_operator_and_layer_dtypes_under_cpu_autocast():
    torch.manual_seed(0)
    layer = ShiftWiseConv2d(16, 13, 3).train()
    for x_dtype in (torch.float32, BF16):  # a LayerNorm's fp32 output, a convolution's bf16 output
        x = torch.randn(2, 16, 12, 12).to(x_dtype).requires_grad_()
        with autocast():
            y = layer(x)
            w_h, w_v, w_s = layer.cross_kernels()
            outs = cross_conv_torch(x[:, layer.rep_idx], w_h, w_v, w_s, big_kernel=13)
            reduced = cross_conv_torch(x[:, layer.rep_idx], w_h, w_v, w_s, big_kernel=13, reduce=True)
        assert w_h.dtype == torch.float32  # the kernels are built from the fp32 parameters in fp32
        assert [o.dtype for o in outs] == [BF16] * 3 and reduced.dtype == BF16  # the convolutions' dtype
        assert y.dtype == x_dtype  # the layer returns its input's dtype
        y.float().square().mean().backward()
        assert layer.weight.grad.dtype == torch.float32 and x.grad.dtype == x_dtype
        assert all(bn.running_mean.dtype == torch.float32 for bn in (layer.bn_h, layer.bn_v, layer.bn_s))
        layer.zero_grad()


def test_triton_path_gets_bf16_input_under_autocast(monkeypatch):
    """Autocast does not cast a custom op's inputs: the layer hands the Triton path (here under the
    interpreter, conftest.py) the 16-bit input, and its result matches the PyTorch path's within bf16
    rounding, forward and backward."""
    triton_cross = pytest.importorskip("swtasks.ops.triton_cross")
    seen = []
    real = triton_cross.cross_conv_triton

    def spy(x, *args, **kwargs):
        seen.append(x.dtype)
        return real(x, *args, **kwargs)

    monkeypatch.setattr(triton_cross, "cross_conv_triton", spy)
    torch.manual_seed(0)
    a = ShiftWiseConv2d(8, 9, 3, backend="torch").train()
    b = ShiftWiseConv2d(8, 9, 3, backend="triton").train()
    b.load_state_dict(a.state_dict())
    x, r = torch.randn(2, 8, 10, 10), torch.randn(2, 8, 10, 10)
    outs, grads = [], []
    for layer in (a, b):
        xi = x.clone().requires_grad_()
        with autocast():
            y = layer(xi)
        (y * r).sum().backward()
        outs.append(y)
        grads.append((xi.grad, layer.weight.grad))
    assert seen == [BF16] and outs[1].dtype == torch.float32 and grads[1][1].dtype == torch.float32
    for u, v in ((outs[0], outs[1]), *zip(grads[0], grads[1])):
        assert (u - v).abs().max() <= 2**-6 * u.abs().max()  # a few bf16 roundings (2**-8 relative each)


def test_deploy_sum_and_bias_are_fp32_under_autocast():
    """The folded layer adds a bias to the summed strips: with a bias of ~1000 a bf16 sum would be off by up
    to 2 (bf16 has 8 significant bits); in fp32 the error stays the convolutions' own bf16 rounding, the same
    as with a zero bias."""
    torch.manual_seed(0)
    layer = ShiftWiseConv2d(8, 9, 3, ghost_ratio=0.0).eval()
    layer.reparameterize()
    x = torch.randn(2, 8, 10, 10)
    # oracle in float64: the dense equivalent kernel of the folded strips (a different computation)
    w_h, w_v = layer.weight_h.double(), layer.weight_v.double()
    L, k = w_h.shape[2], w_h.shape[1]
    lo, hi = 9 // 2, L - 1 - 9 // 2
    dense = torch.zeros(8, 1, 2 * hi + 1, 2 * hi + 1, dtype=torch.float64)
    dense[:, 0, hi - k // 2 : hi + k // 2 + 1, hi - lo : hi - lo + L] += w_h
    dense[:, 0, hi - lo : hi - lo + L, hi - k // 2 : hi + k // 2 + 1] += w_v
    strips = F.conv2d(x.double(), dense, padding=hi, groups=8)
    errors = []
    for bias in (torch.zeros(8), 1000.3 + torch.arange(8.0) / 7):
        with torch.no_grad():
            layer.bias.copy_(bias)
        with autocast(), torch.no_grad():
            y = layer(x)
        assert y.dtype == torch.float32
        errors.append((y.double() - strips - bias.double().view(1, -1, 1, 1)).abs().max().item())
    assert errors[0] < 0.5 and errors[1] < errors[0] + 0.01, errors


class RecordDtypes(Callback):
    """Records, during fit, each ShiftWiseConv2d's (input, output) dtypes, the training losses and the
    parameters' dtypes after every step."""

    seen: dict = {}

    def on_fit_start(self, trainer, pl_module):
        RecordDtypes.seen = {"layers": set(), "losses": [], "params": set()}

        def hook(module, args, out):
            RecordDtypes.seen["layers"].add((str(args[0].dtype), str(out.dtype)))

        for m in pl_module.modules():
            if isinstance(m, ShiftWiseConv2d):
                m.register_forward_hook(hook)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        RecordDtypes.seen["losses"].append(float(outputs["loss"]))
        RecordDtypes.seen["params"] |= {str(p.dtype) for p in pl_module.parameters()}


def test_fit_bf16_mixed_a_few_steps(tmp_path, monkeypatch):
    folder = write_image_folder(str(tmp_path / "data"), num_classes=3, train_per_class=6, val_per_class=2,
                                image_size=32)
    tiny = json.dumps({"depths": [1, 1, 1, 1], "dims": [8, 16, 32, 64], "kernel_sizes": [9, 5, 3, 3]})
    run_cli(["fit", "--model.backbone", "shiftwise_atto", "--model.num_classes", "3", "--model.backbone_kwargs", tiny,
          "--data.root", folder, "--data.image_size", "32", "--data.batch_size", "6", "--data.num_workers", "0",
          "--trainer.accelerator", "cpu", "--trainer.precision", "bf16-mixed", "--trainer.max_steps", "4",
          "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
          "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path / "run"),
          "--trainer.callbacks+", "test_cls_bf16.RecordDtypes"], monkeypatch)  # fmt: skip
    seen = RecordDtypes.seen
    assert len(seen["losses"]) == 4 and all(math.isfinite(v) for v in seen["losses"])
    assert seen["params"] == {"torch.float32"}
    # the stage-1 operator reads the stem's LayerNorm output (fp32), the others bf16 maps; output = input dtype
    assert seen["layers"] and all(i == o for i, o in seen["layers"]), seen["layers"]
    ck = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    floats = [v for v in ck["state_dict"].values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in floats)
