"""swtasks.layers.to_shiftwise: depthwise convolutions of torchvision / timm models replaced by ShiftWiseConv2d
(counts, shapes, exact start, training, folding, state dict, ONNX), the foreign-model names, and a 2-step
fit of a converted model through tools/train_cls.py. Small inputs only (~1 min on 2 cores)."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn as nn

torchvision = pytest.importorskip("torchvision")

from swtasks.errors import UserError  # noqa: E402
from swtasks.layers import (  # noqa: E402
    NothingToConvertError,
    ShiftWiseConv2d,
    reparameterize_shiftwise,
    to_shiftwise,
)
from swtasks.models.deploy import reparameterize_verified  # noqa: E402

SIZE = 64


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / a.norm()).item()


def _net(name: str, **kw) -> nn.Module:
    torch.manual_seed(0)
    net = torchvision.models.get_model(name, weights=None, **kw).eval()
    with torch.no_grad():  # ConvNeXt's layer scale starts at 1e-6: make the blocks count
        for n, p in net.named_parameters():
            if n.endswith("layer_scale"):
                p.fill_(0.5)
    return net


def _x(b: int = 2, size: int = SIZE, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_mobilenet_v2_converts_exactly_folds_round_trips_and_exports(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from swtasks.export import export_module

    base = _net("mobilenet_v2", num_classes=10)
    net, replaced = to_shiftwise(base, 51, input_size=SIZE)
    # 17 depthwise 3x3 convolutions, 4 of them with stride 2 (kept): 13 replaced
    assert len(replaced) == 13 and all(r.exact and r.old_kernel == 3 for r in replaced)
    assert replaced[0].name == "features.1.conv.0.0" and replaced[0].map_size == (32, 32)
    assert [r.new_kernel for r in replaced][:3] == [51, 31, 15]  # 32x32 map: 51; 16x16: clipped to 31; 8x8: 15
    assert replaced[-1].map_size == (2, 2) and replaced[-1].new_kernel == 3
    assert isinstance(net.features[1].conv[0][0], ShiftWiseConv2d)
    assert isinstance(base.features[1].conv[0][0], nn.Conv2d)  # a copy: the original is untouched
    x = _x()
    with torch.no_grad():
        want, got = base(x), net(x)
    assert got.shape == want.shape == (2, 10) and _rel(want, got) < 1e-5  # starts exactly at the original

    # it trains: one SGD step moves the strips' BN (they start switched off) and changes the output
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    loss = nn.functional.cross_entropy(net(_x(4, seed=2)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    sw = net.features[1].conv[0][0]
    assert sw.bn_h.weight.grad.abs().sum() > 0 and sw.weight.grad.abs().sum() > 0
    opt.step()
    net.eval()

    # state dict round trip into a fresh conversion of the same architecture
    again, _ = to_shiftwise(_net("mobilenet_v2", num_classes=10), 51, input_size=SIZE)
    path = tmp_path / "sw.pth"
    torch.save(net.state_dict(), path)
    again.load_state_dict(torch.load(path, weights_only=True))
    again.eval()
    with torch.no_grad():
        trained = net(x)
        assert torch.equal(again(x), trained)

    # the re-parameterised structure agrees in eval (verified), and every converted layer is folded
    report = reparameterize_verified(net, example=x, fold=lambda: reparameterize_shiftwise(net), rtol=1e-5)
    assert report["relative_error"] < 1e-5 and report["params_after"] < report["params_before"]
    assert all(m.deploy for m in net.modules() if isinstance(m, ShiftWiseConv2d))
    assert reparameterize_shiftwise(net) == 0

    # ONNX export, checked in ONNX Runtime by export_module: a truncated network (stem + 3 blocks, 2 converted
    # layers) in training and in deploy structure (a whole network takes ~20 s per export)
    head, rep = to_shiftwise(nn.Sequential(*_net("mobilenet_v2").features[:4]), 51, input_size=SIZE)
    assert len(rep) == 2
    report = export_module(head, tmp_path / "train.onnx", image_size=SIZE, batch_size=2)
    assert "onnx runtime" in report.checked_with.lower() and report.relative_diff <= 1e-4
    reparameterize_shiftwise(head)
    report = export_module(head, tmp_path / "deploy.onnx", image_size=SIZE, batch_size=2)
    assert report.relative_diff <= 1e-4 and (tmp_path / "deploy.onnx").is_file()


def test_convnext_tiny_counts_kernels_and_exact_start():
    base = _net("convnext_tiny")
    x = _x()
    with torch.no_grad():
        want = base(x)
    # 18 blocks, one 7x7 depthwise convolution each: all replaced; small_kernel=3 keeps their centre 3x3
    net, replaced = to_shiftwise(base, 51)
    assert len(replaced) == 18 and {r.old_kernel for r in replaced} == {7} and {r.new_kernel for r in replaced} == {51}
    assert not any(r.exact for r in replaced)
    with torch.no_grad():
        assert net(x).shape == want.shape
    # small_kernel=None: each layer's own kernel (7) is the small kernel, so the start is exact
    net, replaced = to_shiftwise(base, 51, small_kernel=None, input_size=SIZE)
    assert all(r.exact for r in replaced)
    assert [replaced[i].new_kernel for i in (0, 3, 6, 15)] == [31, 15, 7, 7]  # maps 16, 8, 4, 2 (>= 7)
    with torch.no_grad():
        assert _rel(want, net(x)) < 1e-5
        net.train()
        net(_x(4, seed=3))  # one training-mode pass moves the BN statistics away from the defaults
        net.eval()
        before = net(x)
        assert reparameterize_shiftwise(net) == 18
        assert _rel(before, net(x)) < 1e-5


def test_selection_inplace_calibration_and_refusal():
    base = _net("efficientnet_b0")
    n_all = len(to_shiftwise(base, 15)[1])
    only5, replaced = to_shiftwise(base, 15, where=lambda name, m: m.kernel_size[0] == 5, inplace=True)
    assert only5 is base and 0 < len(replaced) < n_all and {r.old_kernel for r in replaced} == {5}

    # calibrate: the centre branch's BN gets the measured statistics, so training mode starts at the
    # original too (one layer: exact up to rounding); without it the branch is re-normalised per channel
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8))
    x = torch.randn(4, 8, 12, 12) * 3 + 1
    cal, _ = to_shiftwise(conv, 11, calibrate=x)
    raw, _ = to_shiftwise(conv, 11)
    cal.train()
    raw.train()
    with torch.no_grad():
        assert _rel(conv(x), cal(x)) < 1e-5 and _rel(conv(x), raw(x)) > 0.1

    # a model without depthwise convolutions is refused in one line (a UserError)
    with pytest.raises(NothingToConvertError) as e:
        to_shiftwise(torchvision.models.resnet18(), 51)
    assert isinstance(e.value, UserError) and "no depthwise convolution" in str(e.value)
    assert len(str(e.value).splitlines()) == 1
    with pytest.raises(NothingToConvertError):
        to_shiftwise(base, 15, min_channels=10_000)
    with pytest.raises(UserError, match="odd"):
        to_shiftwise(conv, 50)


def test_timm_model_and_foreign_names():
    timm = pytest.importorskip("timm")
    from swtasks.models.foreign import create_foreign, split_foreign

    torch.manual_seed(0)
    base = timm.create_model("mobilenetv3_small_050", num_classes=5).eval()
    net, replaced = to_shiftwise(base, 31, small_kernel=None, input_size=SIZE)
    assert len(replaced) > 0 and {r.old_kernel for r in replaced} == {3, 5}
    x = _x()
    with torch.no_grad():
        assert _rel(base(x), net(x)) < 1e-5

    assert split_foreign("torchvision:convnext_tiny+sw51") == ("torchvision", "convnext_tiny", 51)
    assert split_foreign("timm:resnet18+sw") == ("timm", "resnet18", 51)
    sw = create_foreign("torchvision:mobilenet_v2+sw31", num_classes=3, image_size=SIZE)
    assert len(sw.shiftwise_replaced) == 13 and sw.num_classes == 3
    with pytest.raises(UserError, match="unknown torchvision"):
        create_foreign("torchvision:mobilenet_v9")


def test_train_cls_fits_a_converted_torchvision_model(tmp_path, monkeypatch):
    from swtasks.cls.cli import main

    monkeypatch.setattr(sys, "argv", ["train_cls.py"])
    main([
        "fit", "--model.backbone", "swtasks.models.foreign.shiftwise_backbone",
        "--model.backbone.model", "torchvision:mobilenet_v2", "--model.backbone.kernel_size", "51",
        "--model.backbone.num_classes", "4", "--model.backbone.image_size", "32", "--model.num_classes", "4",
        "--data.dataset", "longrange", "--data.image_size", "32", "--data.batch_size", "4", "--data.num_workers", "0",
        "--data.synthetic_train_size", "8", "--data.synthetic_val_size", "4", "--trainer.max_steps", "2",
        "--trainer.limit_val_batches", "1", "--trainer.accelerator", "cpu", "--trainer.devices", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.default_root_dir", str(tmp_path),
    ])  # fmt: skip
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 2
    assert any(k.endswith("bn_h.weight") for k in ckpt["state_dict"])
