"""Deployment exports (swtasks.export, tools/export.py): every registry family in its deploy structure to
ONNX (run in ONNX Runtime) and to a torch.export program (loaded back with torch.export.load), with a dynamic
batch checked at 1 and 3; the training structure of ShiftWiseNet through the PyTorch path of its operator;
TorchScript; the tolerance check; refused custom operators. The oracle is always the eager PyTorch model, run
here."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn as nn
from helpers import randomize

import swtasks
from swtasks.models import family_of, list_models

ort = pytest.importorskip("onnxruntime")  # the `export` extra (installed by the `test` extra)
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")

from swtasks.export import ExportError, export_module, foreign_operators  # noqa: E402

# One test-sized variant per model family of the registry, with overrides that keep its export fast
# (seconds). A family that joins the registry needs a row here: test_every_family_exports_in_deploy_form
# fails without one.
FAMILY_TEST_SIZES: dict[str, tuple[str, dict]] = {
    "shiftwise": ("shiftwise_atto",
                  dict(depths=(1, 1, 1, 1), dims=(16, 32, 64, 128), layer_scale_init_value=1.0)),
    "unireplknet": ("unireplknet_a",
                    dict(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), kernel_sizes=(3, 7, 5, 13),
                         layer_scale_init_value=1.0)),
    "slak": ("slak_t", dict(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), width_factor=1.0, kernel_sizes=(7, 7, 5, 5),
                            layer_scale_init_value=1.0)),
    "convnext": ("convnext_t", dict(depths=(1, 1, 1, 1), dims=(16, 24, 32, 40), layer_scale_init_value=1.0)),
    "kw": ("kw_resnet18_1d4x", dict(depths=(1, 1, 1, 1))),  # per-sample kernels: exported via im2col
    "resnet18": ("resnet18", {}),
    "resnet50": ("resnet50", dict(depths=(1, 1, 1, 1))),
    "mobilenetv2": ("mobilenetv2_100", {}),
}
FAMILIES = sorted({family_of(n) for n in list_models()})
SIZE = 64
TOOLS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools")


def _relative(got, want) -> float:
    got = got if isinstance(got, (list, tuple)) else [got]
    want = want if isinstance(want, (list, tuple)) else [want]
    assert [tuple(g.shape) for g in got] == [tuple(w.shape) for w in want]
    return max(float((torch.as_tensor(g).double() - w.double()).abs().max() / w.double().abs().max())
               for g, w in zip(got, want))


def _images(batch: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(100 + seed))


def _run_onnx(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [torch.from_numpy(o) for o in session.run(None, {session.get_inputs()[0].name: x.numpy()})]


def _tool(argv):
    import runpy

    main = runpy.run_path(os.path.join(TOOLS, "export.py"), run_name="export_tool")["main"]
    return main([str(a) for a in argv])


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_exports_in_deploy_form(family, tmp_path):
    assert family in FAMILY_TEST_SIZES, (
        f"family {family!r} is in the registry but has no test size in FAMILY_TEST_SIZES "
        "(tests/test_export.py)"
    )
    name, overrides = FAMILY_TEST_SIZES[family]
    assert family_of(name) == family
    torch.manual_seed(0)
    model = randomize(swtasks.create_model(name, num_classes=10, **overrides), seed=0).eval()
    if callable(getattr(model, "reparameterize", None)):
        model.reparameterize()

    export_module(model, tmp_path / "m.pt2", image_size=SIZE, dynamic_batch=True)
    export_module(model, tmp_path / "m.onnx", image_size=SIZE, dynamic_batch=True)
    program = torch.export.load(str(tmp_path / "m.pt2")).module()
    graph = onnx.load(str(tmp_path / "m.onnx"))
    assert {n.domain for n in graph.graph.node} == {""}, "only standard ONNX operators"
    assert [i.name for i in graph.graph.input] == ["images"]
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    for seed, batch in enumerate((1, 3)):
        x = _images(batch, seed)
        with torch.no_grad():
            want = model(x)
            assert _relative(program(x), want) <= 1e-4
        assert _relative(_run_onnx(tmp_path / "m.onnx", x), want) <= 1e-4


def test_tool_exports_a_safetensors_checkpoint_to_onnx_in_deploy_form(tmp_path, capsys):
    """tools/export.py with a .safetensors checkpoint (settings from its meta), --reparameterize and a dynamic
    batch: ONNX Runtime reproduces the eager *training* structure loaded from the same file."""
    from swtasks.checkpoint import save_weights

    name, overrides = FAMILY_TEST_SIZES["shiftwise"]
    torch.manual_seed(1)
    trained = randomize(swtasks.create_model(name, num_classes=7, **overrides), seed=1).eval()
    weights = tmp_path / "w.safetensors"
    meta = {"architecture": name, "num_classes": 7, "overrides": overrides}
    save_weights(weights, trained.state_dict(), meta)
    out = tmp_path / "deploy.onnx"
    rc = _tool([name, out, "--format", "onnx", "--checkpoint", weights, "--reparameterize",
                "--image-size", SIZE, "--dynamic-batch"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "re-parameterised" in text and "deploy structure" in text and "ONNX opset 20" in text
    assert "ONNX Runtime" in text and "batches 1, 3: max |diff|" in text
    eager = swtasks.create_model(name, checkpoint_path=weights, num_classes=7, **overrides).eval()
    for seed, batch in enumerate((1, 3)):
        x = _images(batch, seed)
        with torch.no_grad():
            assert _relative(_run_onnx(out, x), eager(x)) <= 1e-4
    assert sorted(os.listdir(tmp_path)) == ["deploy.onnx", "w.safetensors"]  # no temporary left behind


def test_training_form_exports_through_the_pytorch_path_and_says_so(tmp_path, capsys):
    """A ShiftWiseNet created for the Triton custom op: the tool traces its operators' PyTorch path (the
    program holds standard operators only) and prints that; a plain torch.export keeps the custom op."""
    name, overrides = FAMILY_TEST_SIZES["shiftwise"]
    out = tmp_path / "train.pt2"
    rc = _tool([name, out, "--set", "backend='triton'", "--image-size", SIZE, "--dynamic-batch",
                *[a for k, v in overrides.items() for a in ("--set", f"{k}={v!r}")]])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "training structure" in text and "PyTorch path" in text and "not the Triton custom op" in text
    program = torch.export.load(str(out))
    assert foreign_operators(program) == []
    torch.manual_seed(0)
    triton_model = swtasks.create_model(name, backend="triton", **overrides).eval()
    plain = torch.export.export(triton_model, (_images(2, 0),))
    assert foreign_operators(plain) == ["swtasks::cross_conv"]


def test_custom_operator_is_refused_with_its_name_and_nothing_is_written(tmp_path):
    from swtasks.ops import triton_cross  # noqa: F401  (registers swtasks::cross_conv_sum)

    class DirectCustomOp(nn.Module):  # calls the custom op itself: no `backend` to switch
        def __init__(self):
            super().__init__()
            self.w_h = nn.Parameter(torch.randn(3, 3, 9))
            self.w_v = nn.Parameter(torch.randn(3, 9, 3))

        def forward(self, x):
            return torch.ops.swtasks.cross_conv_sum(x, self.w_h, self.w_v, None, 9, "auto", "ieee", False)

    with pytest.raises(ExportError, match="swtasks::cross_conv_sum"):
        export_module(DirectCustomOp(), tmp_path / "m.onnx", image_size=32)
    assert os.listdir(tmp_path) == []


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_features_and_the_tolerance_check(tmp_path, capsys):
    name, overrides = FAMILY_TEST_SIZES["shiftwise"]
    sets = [a for k, v in overrides.items() for a in ("--set", f"{k}={v!r}")]
    out = tmp_path / "feats.pt"
    assert _tool([name, out, "--features-only", "--image-size", SIZE, "--batch-size", 2, *sets]) == 0
    assert "TorchScript" in capsys.readouterr().out
    torch.manual_seed(0)
    eager = swtasks.create_model(name, features_only=True, **overrides).eval()
    scripted = torch.jit.load(str(out))
    eager.load_state_dict(scripted.state_dict())
    x = _images(2, 0)
    with torch.no_grad():
        maps = scripted(x)
        assert len(maps) == 4 and _relative(maps, eager(x)) <= 1e-4

    # ONNX Runtime and PyTorch differ by float rounding: a tolerance below it fails, and nothing is written
    rc = _tool([name, tmp_path / "m.onnx", "--image-size", SIZE, "--tolerance", "1e-12", *sets])
    err = capsys.readouterr().err
    assert rc == 1 and "differs from the eager model" in err and "nothing written" in err
    assert os.listdir(tmp_path) == ["feats.pt"]


def test_bad_input_is_one_line_naming_it(tmp_path, capsys):
    assert _tool(["shiftwise_atto", tmp_path / "m.bin"]) == 2
    assert "cannot tell the export format of" in capsys.readouterr().err
    assert _tool(["shiftwise_atto", tmp_path / "m.onnx", "--image-size", "16"]) == 2
    assert "smaller than" in capsys.readouterr().err
    assert _tool(["shiftwise_nope", tmp_path / "m.onnx"]) == 2
    assert "unknown model 'shiftwise_nope'" in capsys.readouterr().err


def _deploy_atto(seed: int = 0, **kwargs) -> nn.Module:
    """A small deploy-structure ShiftWiseNet (dims 8..64): fast to trace with symbolic sizes."""
    torch.manual_seed(seed)
    model = swtasks.create_model("shiftwise_atto", depths=(1, 1, 1, 1), dims=(8, 16, 32, 64),
                                 layer_scale_init_value=1.0, **kwargs)
    model = randomize(model, seed).eval()
    model.reparameterize()
    return model


def test_dynamic_height_and_width_run_at_three_sizes_in_onnx_runtime(tmp_path):
    """--dynamic-hw for the classifier in ONNX: symbolic batch, height and width (named axes), checked by the
    export at three sizes, one non-square; here again at sizes the export did not check."""
    from swtasks.export import hw_check_sizes, summary

    model = _deploy_atto(num_classes=10)
    report = export_module(model, tmp_path / "m.onnx", image_size="64x96", dynamic_batch=True, dynamic_hw=True,
                           max_size=256)
    assert report.dynamic_hw and report.hw_multiple == 32 and report.hw_range == (64, 256)
    assert report.checked_sizes == tuple(hw_check_sizes((64, 96), 32, 64, 256)) == ((64, 96), (128, 64), (128, 256))
    assert report.relative_diff <= 1e-4 and report.image_size == (64, 96)
    assert "H and W any multiple of 32 in 64..256 (traced at 64x96)" in "\n".join(summary(report))
    dims = onnx.load(str(tmp_path / "m.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 3, "height", "width"]
    for seed, (batch, h, w) in enumerate(((2, 96, 64), (1, 160, 224))):
        x = torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            assert _relative(_run_onnx(tmp_path / "m.onnx", x), model(x)) <= 1e-4


def test_dynamic_hw_features_as_a_program_and_the_refusals(tmp_path, capsys):
    """--features-only with --dynamic-hw as a torch.export program: the four maps at a non-square size it was
    not checked at; TorchScript, an off-multiple size and range options without --dynamic-hw are refused in
    one line each (exit status 2), and nothing is written."""
    from swtasks.export import ExportOptionError, parse_image_size

    model = _deploy_atto(features_only=True)
    report = export_module(model, tmp_path / "f.pt2", image_size=64, dynamic_hw=True, max_size=192)
    assert report.checked_sizes == ((64, 64), (128, 64), (128, 192))
    program = torch.export.load(str(tmp_path / "f.pt2")).module()
    x = torch.randn(1, 3, 96, 160, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        maps = program(x)
        assert [tuple(m.shape[2:]) for m in maps] == [(24, 40), (12, 20), (6, 10), (3, 5)]
        assert _relative(maps, model(x)) <= 1e-4

    assert parse_image_size("320x192") == (320, 192) and parse_image_size(64) == (64, 64)
    with pytest.raises(ExportOptionError, match="give N"):
        parse_image_size("64x")
    sets = ["--set", "depths=(1, 1, 1, 1)", "--set", "dims=(8, 16, 32, 64)"]
    cases = [
        (["m.pt", "--dynamic-hw"], "TorchScript trace fixes the height and width"),
        (["m.onnx", "--dynamic-hw", "--image-size", "64x80"], "multiples of 32"),
        (["m.onnx", "--min-size", "64"], "need dynamic_hw"),
        (["m.onnx", "--image-size", "64by64"], "give N (N x N) or HxW"),
    ]
    for argv, message in cases:
        assert _tool(["shiftwise_atto", tmp_path / argv[0], *argv[1:], *sets]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert os.listdir(tmp_path) == ["f.pt2"]


def test_tool_exports_a_fixed_rectangular_size(tmp_path, capsys):
    """--image-size HxW without --dynamic-hw: a fixed non-square input, checked at that size."""
    out = tmp_path / "r.onnx"
    rc = _tool(["shiftwise_atto", out, "--image-size", "64x128", "--reparameterize", "--num-classes", "5",
                "--set", "depths=(1, 1, 1, 1)", "--set", "dims=(8, 16, 32, 64)"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "input (B, C, 64, 128), batch 1" in text
    dims = onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 3, 64, 128]
    assert _run_onnx(out, torch.randn(1, 3, 64, 128))[0].shape == (1, 5)


def test_dynamic_hw_catches_a_size_dependent_python_decision(tmp_path):
    """A forward that decides on its input size in Python: torch.export either refuses the symbolic size (an
    equality) or bakes the traced branch in, with a guard (.pt2) or silently (ONNX); the check at three sizes
    turns each into an ExportError, and nothing is written."""

    class Branch(nn.Module):
        total_stride = 32

        def forward(self, x):
            y = x.mean((2, 3))
            return y * 2 if x.shape[2] > 100 else y

    class Equal(Branch):
        def forward(self, x):
            y = x.mean((2, 3))
            return y * 2 if x.shape[2] == 96 else y

    cases = [(Branch, "m.pt2", "does not run on a batch of 1 at 160x64"),
             (Branch, "m.onnx", "differs from the eager model"),
             (Equal, "m.pt2", "could not trace")]
    for model, name, message in cases:
        with pytest.raises(ExportError, match=message):
            export_module(model(), tmp_path / name, image_size=96, dynamic_hw=True, max_size=256)
    assert os.listdir(tmp_path) == []


def test_tool_exports_a_lightning_cli_checkpoint(tmp_path, capsys):
    """A checkpoint of tools/train_cls.py (LightningCLI records `_instantiator` in its hyper_parameters) exports:
    that key is inert here; a loading option that is set (`weights` naming a file) is still refused."""
    net = swtasks.create_model("shiftwise_atto", num_classes=4).eval()
    hp = {"backbone": "shiftwise_atto", "num_classes": 4, "weights": None, "trust_pickle": False,
          "_instantiator": "lightning.pytorch.cli.instantiate_module"}
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in net.state_dict().items()}, "hyper_parameters": hp},
               ckpt)
    assert _tool(["shiftwise_atto", tmp_path / "a.onnx", "--checkpoint", ckpt, "--image-size", SIZE]) == 0
    assert (tmp_path / "a.onnx").is_file()
    capsys.readouterr()
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in net.state_dict().items()},
                "hyper_parameters": {**hp, "weights": "elsewhere.pt"}}, ckpt)
    assert _tool(["shiftwise_atto", tmp_path / "b.onnx", "--checkpoint", ckpt, "--image-size", SIZE]) == 2
    err = capsys.readouterr().err
    assert "weights" in err and "_instantiator" not in err, err
    assert not (tmp_path / "b.onnx").exists()


def test_depthwise_convolutions_are_written_in_onnx_runtimes_fast_form(tmp_path):
    """ONNX files only: a depthwise convolution whose channel count is not a multiple of 16 is written with
    zero-padded channels (sliced off after), a kernel wider than 7 on zero columns concatenated to the map;
    others as they are. The file, at three sizes with a symbolic height and width, equals the eager model
    (the unrewritten convolutions); the model is unchanged afterwards."""
    torch.manual_seed(0)

    class Net(nn.Module):
        total_stride = 2

        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 12, 1)
            self.wide = nn.Conv2d(12, 12, (3, 11), padding=(1, 5), groups=12)  # both rewrites
            self.down = nn.Conv2d(12, 12, 5, stride=2, padding=2, groups=12, bias=False)  # channels only
            self.widen = nn.Conv2d(12, 16, 1)
            self.plain = nn.Conv2d(16, 16, 7, padding=3, groups=16)  # as it is
            self.wide16 = nn.Conv2d(16, 16, (1, 13), padding=(0, 6), groups=16)  # zero columns only

        def forward(self, x):
            x = self.down(self.wide(self.stem(x)))
            return self.wide16(self.plain(self.widen(x))).mean((2, 3))

    model = Net().eval()
    convs = [model.wide, model.down, model.plain, model.wide16]
    report = export_module(model, tmp_path / "m.onnx", image_size=48, dynamic_hw=True, hw_multiple=2,
                           max_size=128)
    assert report.relative_diff < 1e-5 and len(report.checked_sizes) == 3
    assert any(n.startswith("3 depthwise convolutions written in ONNX Runtime's fast form") for n in report.notes)
    assert all("forward" not in m.__dict__ for m in convs)  # the eager modules are back as they were
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    depthwise = [{a.name: (a.i if a.name == "group" else list(a.ints)) for a in n.attribute} for n in graph.node
                 if n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute)]
    assert [d["group"] for d in depthwise] == [16, 16, 16, 16], depthwise
    # pads (top, left, bottom, right): the wide kernels' left and right padding are zero columns now
    assert [d["pads"] for d in depthwise] == [[1, 0, 1, 0], [2, 2, 2, 2], [3, 3, 3, 3], [0, 0, 0, 0]], depthwise
    assert sum(n.op_type == "Concat" for n in graph.node) >= 3  # zero channels, two sets of zero columns
    x = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        want = model(x)
    assert _relative(_run_onnx(tmp_path / "m.onnx", x)[0], want) < 1e-5
    # other formats keep the convolutions as they are
    export_module(model, tmp_path / "m.pt2", image_size=48)
    program = torch.export.load(str(tmp_path / "m.pt2"))
    assert "aten.cat" not in str(program.graph)
