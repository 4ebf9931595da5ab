"""Analysis tools: effective receptive field (maths, registry models, tools/erf.py), the interleaved benchmark
(tools/benchmark.py), the profiler breakdown, the thin receptive-field comparison tool, and the NCHW CPU path
of the ShiftWiseNet block against the module path it replaces. Small shapes only (~60 s on 2 cores)."""

from __future__ import annotations

import copy
import csv
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from helpers import randomize, tool

from swtasks.analysis import erf
from swtasks.layers import ShiftWiseConv2d
from swtasks.models.shiftwise_cpu import block_forward_nchw
from swtasks.models.shiftwise_net import ShiftWiseBlock

REPO = Path(__file__).resolve().parents[1]


def _positive_batches(n: int, size: int, channels: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(2, channels, size, size, generator=g) + 0.1 for _ in range(n)]


# ------------------------------------------------------------------------------------------------ ERF
def test_erf_of_3x3_depthwise_conv_is_exactly_3x3():
    conv = nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False)
    with torch.no_grad():
        conv.weight.uniform_(0.5, 1.5)  # positive: every tap contributes
    size = 9
    m = erf.erf_map(conv, _positive_batches(2, size, 4))
    c = size // 2
    expected = np.zeros((size, size), dtype=bool)
    expected[c - 1 : c + 2, c - 1 : c + 2] = True
    assert np.array_equal(m > 0, expected)
    ratios = erf.area_ratios(erf.log_scaled(m))
    for t in erf.THRESHOLDS:
        side, ratio = ratios[t]
        assert side == 3 and ratio == pytest.approx(9 / 81), (t, ratios[t])


def test_area_ratio_definition():
    a = np.zeros((11, 11))
    a[5, 5] = 1.0  # a point: side 1 at every threshold
    assert all(r == (1, 1 / 121) for r in erf.area_ratios(a).values())
    b = np.ones((10, 10))  # uniform: the square must hold > t of the mass
    r = erf.area_ratios(b, (0.2, 0.99))
    assert r[0.2][0] == 5  # 25 of 100 cells > 20%
    assert r[0.99][1] == 1.0  # clipped to the whole image
    with pytest.raises(ValueError, match="thresholds"):
        erf.area_ratios(b, (1.5,))


@pytest.mark.parametrize("K", [13, 9])
def test_erf_of_shiftwise_layer_covers_its_cross(K):
    k, C, size = 3, 10, 31
    layer = ShiftWiseConv2d(C, K, small_kernel=k).eval()
    with torch.no_grad():
        layer.weight.abs_().add_(0.01)  # positive small kernels: every strip tap is non-zero
    m = erf.erf_map(layer, _positive_batches(2, size, C))
    # the cross, stated from the operator's definition (docs/operator.md): strips of L = k * ceil(K / k) taps
    # spanning -(K // 2) .. L - 1 - K // 2 along their axis, k wide across it, centred at the output pixel
    L = k * -(-K // k)
    lo, hi, r, c = K // 2, L - 1 - K // 2, k // 2, size // 2
    expected = np.zeros((size, size), dtype=bool)
    expected[c - r : c + r + 1, c - lo : c + hi + 1] = True  # horizontal strip
    expected[c - lo : c + hi + 1, c - r : c + r + 1] = True  # vertical strip
    assert np.array_equal(m > 0, expected)
    cols = np.nonzero((m > 0).any(axis=0))[0]
    assert cols.max() - cols.min() + 1 == L and L >= K and L - K < k


def test_erf_tool_writes_csv_and_figures(tmp_path):
    from torchvision.io import decode_png, read_file

    out = tmp_path / "erf"
    rc = tool("erf").main(["shiftwise_atto", "shiftwise_femto", "--out", str(out), "--images", "2",
                            "--image-size", "64", "--set", "depths=(1,1,1,1)", "--no-progress", "--threads", "2"])
    assert rc == 0
    with open(out / "erf.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:5] == ["model", "t0.2", "t0.3", "t0.5", "t0.99"]
    assert [r["model"] for r in rows] == ["shiftwise_atto", "shiftwise_femto"]
    for r in rows:
        vals = [float(r[f"t{t}"]) for t in erf.THRESHOLDS]
        assert all(0 < v <= 1 for v in vals) and vals == sorted(vals)
    for name in ("erf_shiftwise_atto.png", "erf_shiftwise_femto.png", "erf.png"):
        img = decode_png(read_file(str(out / name)))
        assert img.shape[0] in (3, 4) and img.shape[1] > 100 and img.shape[2] > 100
    raw = np.load(out / "erf_shiftwise_atto.npy")
    assert raw.shape == (64, 64) and raw.max() > 0


def test_erf_with_checkpoint_and_embedded_data(tmp_path):
    from swtasks.checkpoint import save_weights
    from swtasks.cls.experiments import procedural_images
    from swtasks.models import create_model

    kw = dict(depths=(1, 1, 1, 1), dims=(16, 32, 64, 128), layer_scale_init_value=1.0)
    torch.manual_seed(3)
    model = create_model("shiftwise_atto", **kw)
    path = tmp_path / "w.pth"
    save_weights(path, model.state_dict())
    src = procedural_images("longrange", seed=0)
    got = erf.run_erf(["shiftwise_atto"], images=2, image_size=48, source=src, checkpoints={"shiftwise_atto": str(path)},
                      stage=1, overrides=kw, show_progress=False)[0]
    # oracle: the same gradient computed by hand through the loaded classification model's stages 0-1
    model.eval()
    x = src(0, 2, 48).clone().requires_grad_(True)
    y = model.stages[1](model.downsample_layers[1](model.stages[0](model.downsample_layers[0](x))))
    torch.relu(y[:, :, y.shape[2] // 2, y.shape[3] // 2]).sum().backward()
    expected = torch.relu(x.grad).sum(dim=(0, 1)).double().numpy()
    np.testing.assert_allclose(got.erf, expected, rtol=1e-4, atol=1e-9)
    with pytest.raises(ValueError, match="not run"):
        erf.run_erf(["shiftwise_atto"], images=1, image_size=32, checkpoints={"other": "x"}, show_progress=False)


def test_erf_tool_errors(tmp_path, capsys):
    from swtasks.cliutil import run_tool

    rc = run_tool(tool("erf").main, ["shiftwise_atto", "--out", str(tmp_path), "--data", str(tmp_path / "nope")],
                  prog="erf.py")  # as tools/erf.py runs it: run_tool catches swtasks.errors.UserError only
    assert rc == 2 and "neither 'noise'" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="holds no images"):
        erf.folder_images(empty, (0.5,) * 3, (0.5,) * 3)


def test_analysis_tools_name_user_errors_in_one_line_and_let_bugs_through(tmp_path, capsys, monkeypatch):
    """run_tool catches only swtasks.errors.UserError: every user error of the analysis tools is one (and
    still the ValueError / FileNotFoundError it always was), so a plain ValueError from a bug keeps its
    traceback (tools/complexity.py used to swallow every ValueError into 'error: ...')."""
    from swtasks.analysis import complexity
    from swtasks.cliutil import run_tool

    cases = [
        ("complexity", ["shiftwise_atto", "--input-size", "16"], "input size 16x16 is smaller than the total stride 32"),
        ("erf", ["shiftwise_atto", "shiftwise_femto", "--out", str(tmp_path), "--checkpoint", "a.pth", "--no-plot"],
         "1 plain --checkpoint path(s) for 2 model(s)"),
        ("model_zoo", ["shiftwise_atto", "--benchmark-csv", str(tmp_path / "missing.csv")], "missing.csv does not exist"),
        ("benchmark", ["shiftwise_atto", "--baseline", "convnext_t", "--image-size", "32", "--no-progress"],
         "baseline 'convnext_t' is not among the measured models"),
    ]  # fmt: skip
    for name, argv, message in cases:
        assert run_tool(tool(name).main, argv, prog=f"{name}.py") == 2, name
        err = capsys.readouterr().err
        assert err.startswith(f"{name}.py: error: ") and message in err and len(err.strip().splitlines()) == 1, err

    def bug(*args, **kwargs):
        raise ValueError("a bug")

    monkeypatch.setattr(complexity, "count_params", bug)
    with pytest.raises(ValueError, match="a bug"):
        run_tool(tool("complexity").main, ["shiftwise_atto", "--input-size", "32"], prog="complexity.py")


def test_folder_images_are_resized_and_normalised(tmp_path):
    from PIL import Image

    for i in range(3):
        Image.fromarray(np.full((20, 30, 3), 60 * i, dtype=np.uint8)).save(tmp_path / f"{i}.png")
    src = erf.folder_images(tmp_path, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    x = src(1, 2, 16)
    assert x.shape == (2, 3, 16, 16)
    np.testing.assert_allclose(x[0].numpy(), (60 / 255 - 0.5) / 0.25, rtol=1e-5)
    with pytest.raises(ValueError, match="holds only 3"):
        src(2, 2, 16)
    from swtasks.errors import UserError

    with pytest.raises(UserError, match="holds only 3"):  # one line in tools/erf.py
        src(2, 2, 16)


# ------------------------------------------------------------------------------------------------ benchmark
def test_benchmark_tool_two_models(tmp_path):
    csv_path, md_path = tmp_path / "b.csv", tmp_path / "b.md"
    rc = tool("benchmark").main([
        "shiftwise_atto", "shiftwise_femto", "--set", "depths=(1,1,1,1)", "--image-size", "32", "--batch-size", "2",
        "--repeats", "2", "--warmup", "1", "--threads", "2", "--csv", str(csv_path), "--markdown", str(md_path),
        "--title", "test run", "--no-progress",
    ])  # fmt: skip
    assert rc == 0
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    for col in ("model", "structure", "mode", "batch_size", "images_per_s", "peak_mem_mib"):
        assert col in rows[0]
    got = {(r["model"], r["structure"], r["mode"]) for r in rows}
    want = {(m, s, mode) for m in ("shiftwise_atto", "shiftwise_femto") for s, mode in
            [("train", "inference"), ("train", "train_step"), ("train", "latency"), ("deploy", "inference"),
             ("deploy", "latency")]}  # fmt: skip
    assert got == want and len(rows) == len(want)
    for r in rows:
        assert float(r["images_per_s"]) > 0 and float(r["peak_mem_mib"]) > 0
        assert int(r["batch_size"]) == (1 if r["mode"] == "latency" else 2)
        assert r["baseline"] == "shiftwise_atto"
        if r["model"] == "shiftwise_atto":
            assert float(r["rel_to_baseline"]) == 1.0
    train = {r["mode"]: float(r["peak_mem_mib"]) for r in rows if r["model"] == "shiftwise_femto" and r["structure"] == "train"}
    assert train["train_step"] > train["inference"]  # gradients and optimiser state
    md = md_path.read_text()
    assert "#### test run" in md and "| model | structure | mode |" in md and "--batch-size 2" in md


def test_zoo_table_joins_benchmark_and_erf(tmp_path):
    from swtasks.analysis.zoo import zoo_table

    bench, erf_csv = tmp_path / "b.csv", tmp_path / "erf.csv"
    bench.write_text("model,structure,mode,rel_to_baseline,baseline\n"
                     "shiftwise_tiny,deploy,inference,0.876,convnext_t\nshiftwise_tiny,train,train_step,0.715,convnext_t\n")
    erf_csv.write_text("model,t0.2,t0.3,t0.5,t0.99\nshiftwise_tiny,0.0123,0.02,0.05,0.6\n")
    table = zoo_table(["shiftwise_tiny", "shiftwise_atto"], bench, erf_csv, image_size=32).splitlines()
    assert "inference, deploy vs convnext_t" in table[0]
    cells = [c.strip() for c in table[2].strip("|").split("|")]
    assert cells[:2] == ["shiftwise_tiny", "31.8"] and cells[3:] == ["83.39", "0.88x", "0.71x", "0.012"]
    assert 0 < float(cells[2]) < 5.25  # MACs at 32 px (swtasks.analysis.complexity counts them)
    assert table[3].startswith("| shiftwise_atto | 4.2 |") and table[3].endswith("| - | - | - | - |")


def test_benchmark_structure_without_deploy_form_is_measured_once():
    from swtasks.analysis.benchmark import run_benchmark

    res = run_benchmark(["torchvision:mobilenet_v3_small"], image_size=32, batch_size=2, modes=("inference",),
                        repeats=1, warmup=1, memory=False, show_progress=False)
    train, deploy = res
    assert (train.structure, deploy.structure) == ("train", "deploy")
    assert deploy.times == train.times and "measured as train" in deploy.note
    with pytest.raises(ValueError, match="unknown torchvision"):
        run_benchmark(["torchvision:nope"], show_progress=False)
    with pytest.raises(ValueError, match="modes"):
        run_benchmark(["shiftwise_atto"], modes=("fast",), show_progress=False)


def test_profile_breakdown_categories():
    from swtasks.analysis.profile import categorize, profile_breakdown

    assert categorize("aten::mkldnn_convolution", [[8, 60, 56, 56], [60, 1, 51, 3]]) == "depthwise convolutions"
    assert categorize("aten::convolution_backward", [[8, 9, 4, 4], [8, 9, 4, 4], [9, 1, 3, 3]]) == "depthwise convolutions"
    assert categorize("aten::mkldnn_convolution", [[8, 80, 4, 4], [320, 80, 1, 1]]) == "matrix products"
    assert categorize("aten::mkldnn_convolution", [[8, 3, 8, 8], [40, 3, 3, 3]]) == "dense convolutions"
    assert categorize("aten::native_batch_norm_backward", []) == "normalisation"
    assert categorize("aten::conv2d", []) is None
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, groups=1), nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3, groups=8),
                          nn.Flatten(), nn.LazyLinear(4))
    x = torch.randn(2, 3, 8, 8)
    model(x)
    opt = torch.optim.AdamW(model.parameters())

    def step():
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()

    b = profile_breakdown(step, "toy")
    assert b.rows["optimiser"]["optimiser"] > 0
    assert b.rows["depthwise convolutions"]["forward"] > 0 and b.rows["depthwise convolutions"]["backward"] > 0
    assert b.total_ms == pytest.approx(sum(sum(r.values()) for r in b.rows.values()))


# ------------------------------------------------------------------------------------------------ thin tools
def test_compare_receptive_field_tool_runs(capsys):
    rc = tool("compare_receptive_field").main([
        "--depths", "1", "1", "1", "1", "--dims", "8", "16", "32", "64", "--kernel-sizes", "7", "5", "3", "3",
        "--image-size", "32", "--train-size", "32", "--val-size", "16", "--batch-size", "16", "--epochs", "1",
        "--seeds", "0", "--threads", "2", "--markdown",
    ])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0
    assert "| shift-wise | 7/5/3/3 |" in out and "| 3x3 depthwise | 3/3/3/3 |" in out
    assert "mean val top-1: shift-wise" in out


# ------------------------------------------------------------------------------------------------ CPU block path
def test_grn_scale_backward_gradcheck():
    from swtasks.models.shiftwise_cpu import _GRNApply, _GRNLinear, _GRNScale

    g = torch.Generator().manual_seed(0)
    u = torch.randn(2, 5, 3, 4, dtype=torch.double, generator=g).requires_grad_(True)
    gamma = torch.randn(1, 5, 1, 1, dtype=torch.double, generator=g).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: _GRNScale.apply(a, b, 1e-6), (u, gamma))
    assert torch.autograd.gradcheck(lambda a, b: _GRNApply.apply(a, b, 1e-6), (u, gamma))
    # the oracle of both: GRN as its definition states it (docs/models.md), differentiated by autograd
    gx = u.square().sum(dim=(2, 3), keepdim=True).sqrt()
    ref = (gamma * gx / (gx.mean(dim=1, keepdim=True) + 1e-6) + 1) * u
    torch.testing.assert_close(_GRNApply.apply(u, gamma, 1e-6), ref)
    w = torch.randn(3, 5, dtype=torch.double, generator=g).requires_grad_(True)
    bias = torch.randn(3, dtype=torch.double, generator=g).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b, c, d: _GRNLinear.apply(a, b, 1e-6, c, d), (u, gamma, w, bias))
    torch.testing.assert_close(_GRNLinear.apply(u, gamma, 1e-6, w, bias),
                               torch.einsum("oc,bchw->bohw", w, ref) + bias.view(1, -1, 1, 1))
    z = torch.zeros(1, 5, 3, 4, dtype=torch.double, requires_grad=True)  # zero norms: zero gradient
    _GRNScale.apply(z, gamma.detach(), 1e-6).sum().backward()
    assert z.grad.abs().max() == 0


@pytest.mark.parametrize("structure", ["train", "eval", "deploy"])
@pytest.mark.parametrize("shape", [(24, 5, 7), (16, 20, 18)], ids=["small-map", "large-map"])
def test_nchw_block_path_matches_module_path(structure, shape):
    """block(x) on CPU runs swtasks.models.shiftwise_cpu; the oracle is the module path x + residual(x):
    outputs, input and parameter gradients and BatchNorm statistics agree to float rounding. The two shapes
    cover both product kernels (1x1 convolution for small maps, per-sample GEMMs for large ones)."""
    C, H, W = shape
    torch.manual_seed(0)
    ref = randomize(ShiftWiseBlock(C, 7, drop_path=0.3 if structure == "train" else 0.0, layer_scale_init_value=0.5))
    if structure != "train":
        ref.eval()
    if structure == "deploy":
        ref.reparameterize()
    new = copy.deepcopy(ref)
    x = torch.randn(2, C, H, W)
    xr, xn = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    torch.manual_seed(5)
    a = xr + ref.residual(xr)
    torch.manual_seed(5)
    b = new(xn)
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(a)
    a.backward(g)
    b.backward(g)
    torch.testing.assert_close(xn.grad, xr.grad, rtol=1e-5, atol=1e-5)
    scale = max(p.grad.abs().max() for p in ref.parameters() if p.grad is not None)
    for (name, p), q in zip(ref.named_parameters(), new.parameters()):
        assert (p.grad - q.grad).abs().max() <= 1e-5 * scale, name
    for (name, s), t in zip(ref.named_buffers(), new.buffers()):
        torch.testing.assert_close(t, s, rtol=1e-5, atol=1e-6, msg=name)
    if structure != "train":
        with torch.no_grad():  # without autograd the path overwrites its own intermediates in place
            torch.testing.assert_close(block_forward_nchw(new, x), a.detach(), rtol=1e-5, atol=1e-5)


class _Pair(nn.Module):
    def __init__(self, lk: ShiftWiseConv2d):
        super().__init__()
        self.lk, self.norm = lk, nn.BatchNorm2d(lk.channels)


@pytest.mark.parametrize(
    "C, K, ghost, H, W, mode",
    [(12, 7, 0.23, 9, 6, "train"),  # a strip longer than one side: explicit padding there
     (8, 5, 0.0, 6, 7, "train"),  # no ghost channels: no index ops
     (10, 13, 0.3, 4, 5, "train"),  # both strips longer than the image, off-centre crop
     (12, 7, 0.23, 9, 6, "eval"),  # running statistics, gradients still on
     (12, 7, 0.23, 9, 6, "mask")],  # a sparse-training kernel mask
)
def test_fused_operator_norm_matches_modules(C, K, ghost, H, W, mode):
    """The CPU path's _OperatorNorm against its oracle, `norm(lk(x))` through the modules and autograd (float64):
    output, input and parameter gradients and BatchNorm buffers; and a gradcheck of the fused Function."""
    from swtasks.models.shiftwise_cpu import _operator_norm

    torch.manual_seed(0)
    ref = randomize(_Pair(ShiftWiseConv2d(C, K, ghost_ratio=ghost))).double()
    if mode == "eval":
        ref.eval()
    if mode == "mask":
        ref.lk.set_kernel_mask((torch.rand(ref.lk.weight.shape[:2]) > 0.4).double())
    new = copy.deepcopy(ref)
    x = torch.randn(3, C, H, W, dtype=torch.double)
    xr, xn = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    a = ref.norm(ref.lk(xr))
    b = _operator_norm(new.lk, new.norm, xn)
    torch.testing.assert_close(b, a)
    g = torch.randn_like(a)
    a.backward(g)
    b.backward(g)
    torch.testing.assert_close(xn.grad, xr.grad)
    for (name, p), q in zip(ref.named_parameters(), new.parameters()):
        torch.testing.assert_close(q.grad, p.grad, msg=name)
    for (name, s), t in zip(ref.named_buffers(), new.buffers()):
        torch.testing.assert_close(t, s, msg=name)
    # finite differences of the fused Function itself (fast mode: random directions), every input at once
    inputs = (xn.detach().requires_grad_(True), *new.parameters())
    assert torch.autograd.gradcheck(lambda x_, *_: _operator_norm(new.lk, new.norm, x_), inputs, fast_mode=True)


# ------------------------------------------------------------------------------------------------ ERF: any model, any layer
def test_erf_of_any_module_at_a_named_layer_and_rectangular_images():
    """The Python API: any nn.Module and a layer name (the forward stops there); the oracle is the gradient
    computed by hand through the same modules; a rectangular input; the last feature map found by itself."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Sequential(nn.ReLU(), nn.Conv2d(4, 4, 5, padding=2)),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    x = torch.randn(2, 3, 24, 40)
    got = erf.erf_map(erf.layer_output(net, "1.0"), [x])
    xg = x.clone().requires_grad_(True)
    y = net[1][0](net[0](xg))
    torch.relu(y[:, :, 12, 20]).sum().backward()
    np.testing.assert_allclose(got, torch.relu(xg.grad).sum(dim=(0, 1)).double().numpy(), rtol=1e-6)
    auto = erf.layer_output(net)  # the last map larger than 1x1: module "1" (not the 1x1 pooled one)
    assert erf.erf_map(auto, [x]).shape == (24, 40) and auto.layer == "1"
    with pytest.raises(erf.AnalysisError, match="no module 'stages.9'"):
        erf.layer_output(net, "stages.9")
    assert erf.parse_image_size("512x768") == (512, 768) and erf.parse_image_size("64") == 64
    with pytest.raises(erf.AnalysisError, match="N or HxW"):
        erf.parse_image_size("64x")
    r = erf.run_erf([("toy", net)], images=2, image_size=(24, 40), layer="0", show_progress=False)[0]
    assert r.erf.shape == (24, 40) and r.layer == "0" and erf.size_text(r.image_size) == "24x40"


def test_erf_tool_on_torchvision_converted_and_mm_models_and_a_layer(tmp_path):
    pytest.importorskip("torchvision")
    common = ["--images", "2", "--image-size", "64", "--no-progress", "--threads", "2"]
    out = tmp_path / "tv"
    assert tool("erf").main(["torchvision:mobilenet_v2", "torchvision:mobilenet_v2+sw31", "--out", str(out),
                              "--set", "shiftwise_init=fresh", *common]) == 0
    with open(out / "erf.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["model"] for r in rows] == ["torchvision:mobilenet_v2", "torchvision:mobilenet_v2+sw31"]
    assert {r["layer"] for r in rows} == {"features"} and all(0 < float(r["t0.2"]) <= 1 for r in rows)
    assert (out / "erf_torchvision_mobilenet_v2+sw31.png").is_file() and (out / "erf.png").is_file()

    out = tmp_path / "layer"  # a registry model at a named module, rectangular input
    assert tool("erf").main(["shiftwise_atto", "--out", str(out), "--layer", "stages.1", "--set", "depths=(1,1,1,1)",
                              *common[:2], "--image-size", "48x64", *common[4:]]) == 0
    with open(out / "erf.csv") as f:
        row = next(csv.DictReader(f))
    assert row["layer"] == "stages.1" and row["image_size"] == "48x64"
    assert np.load(out / "erf_shiftwise_atto.npy").shape == (48, 64) and (out / "erf_shiftwise_atto.png").is_file()

    pytest.importorskip("mmdet")
    config = str(REPO / "configs/det/mask-rcnn_shiftwise-atto_fpn_2iter_tiny-coco.py")
    for extra, layer in (([], "neck"), (["--layer", "neck.fpn_convs.0"], "neck.fpn_convs.0"),
                         (["--mm-part", "backbone"], "backbone")):
        out = tmp_path / layer
        assert tool("erf").main([config, "--out", str(out), *extra, *common]) == 0
        with open(out / "erf.csv") as f:
            row = next(csv.DictReader(f))
        assert row["model"] == "mask-rcnn_shiftwise-atto_fpn_2iter_tiny-coco" and row["layer"] == layer
        assert (out / "erf_mask-rcnn_shiftwise-atto_fpn_2iter_tiny-coco.png").is_file()
