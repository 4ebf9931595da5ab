"""ONNX exports of dense-task models (swtasks.mm.export, tools/export_mm.py): the smoke UperNet segmentor end
to end (RGB 0-255 in, per-class logits at the input size out) and the smoke Mask R-CNN's backbone + neck,
each checked by the tool in ONNX Runtime against the model mmengine builds from the config (the segmentor
here again on other images), the detector's features also with a symbolic height and width (batch 2); a
detector size off its pad divisor, too small a dynamic range and a dynamic segmentor are one line each."""

from __future__ import annotations

import os.path as osp

import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import swtasks.mm  # noqa: E402,F401  (registers the backbones; mmengine compatibility)

pytestmark = pytest.mark.mm

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
SEG = osp.join(ROOT, "configs/seg/upernet_shiftwise-atto_2iter_tiny-ade20k-64x64.py")
DET = osp.join(ROOT, "configs/det/mask-rcnn_shiftwise-atto_fpn_2iter_tiny-coco.py")
# one block per stage and the deploy structure: seconds to trace, the same graph otherwise
SMALL = {"model.backbone.depths": (1, 1, 1, 1), "model.backbone.deploy": True}


def _checkpoint(config: str, path) -> str:
    """A freshly built model's weights in the mmengine Runner's layout (a stand-in for a trained one)."""
    from mmengine.config import Config

    from swtasks.mm.deploy import build_model

    cfg = Config.fromfile(config)
    cfg.merge_from_dict(SMALL)
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so a preprocessing or BN error shows
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    torch.save({"state_dict": model.state_dict(), "meta": {}}, str(path))
    return str(path)


def _error_lines(capsys) -> list[str]:
    """The tool's error lines (mmengine's logger may also write to stderr)."""
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("tools/export_mm.py:")]


def _options() -> list[str]:
    return ["--cfg-options", "model.backbone.depths=(1,1,1,1)", "model.backbone.deploy=True"]


def test_segmentor_end_to_end_in_onnx_runtime_against_the_mm_model(tmp_path, capsys):
    import onnxruntime as ort

    from swtasks.mm.export import _mm_reference, load_mm_model, main

    ckpt = _checkpoint(SEG, tmp_path / "seg.pth")
    out = tmp_path / "seg.onnx"
    assert main([SEG, ckpt, str(out), "--image-size", "64x96", "--trust-pickle", *_options()]) == 0
    text = capsys.readouterr().out
    assert "segmentor end to end" in text and "against the mm model (data preprocessor + predict)" in text
    assert "outputs 1x150x64x96" in text
    # again here, on other images: the file against mmseg's own inference path
    _, model = load_mm_model(SEG, ckpt, cfg_options=SMALL, trust_pickle=True)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    images = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(11)) * 255
    got = torch.from_numpy(session.run(None, {"images": images.numpy()})[0])
    want = _mm_reference(model, "segmentor", images)[0]
    assert got.shape == (1, 150, 64, 96)
    assert float((got - want).abs().max() / want.abs().max()) <= 1e-4
    assert torch.equal(got.argmax(1), want.argmax(1))

    # a symbolic height and width is refused for a segmentor, in one line naming why
    with pytest.raises(SystemExit) as exit_:
        main([SEG, ckpt, str(tmp_path / "dyn.onnx"), "--dynamic-hw", "--trust-pickle", *_options()])
    assert exit_.value.code == 2 and _error_lines(capsys) == [
        "tools/export_mm.py: error: --dynamic-hw: not for a segmentor: torch 2.14's ONNX exporter fails to "
        "decompose the decode head's pyramid pooling (adaptive_avg_pool2d) at a symbolic size; export each "
        "deployed size with --image-size HxW"]


def test_detector_backbone_and_neck_and_refusals(tmp_path, capsys):
    """A fixed 64x96 export of the feature pyramid; a size off the pad divisor and too small a dynamic range
    are one line each, and write nothing."""
    from swtasks.mm.export import export_mm, main

    ckpt = _checkpoint(DET, tmp_path / "det.pth")
    fixed = export_mm(DET, ckpt, tmp_path / "det.onnx", image_size="64x96", cfg_options=SMALL, trust_pickle=True)
    assert fixed["kind"] == "detector" and fixed["relative_diff"] <= 1e-4
    assert any("backbone + neck only" in n for n in fixed["notes"])
    assert fixed["outputs"][0] == (1, 32, 16, 24) and len(fixed["outputs"]) == 5  # the FPN's levels
    capsys.readouterr()
    for extra, message in ((["--image-size", "64x80"], "multiples of its pad_size_divisor 32"),
                           (["--dynamic-hw", "--min-size", "64", "--image-size", "128"],
                            "2 x the coarsest feature level's stride (128)")):
        with pytest.raises(SystemExit) as exit_:
            main([DET, ckpt, str(tmp_path / "bad.onnx"), "--trust-pickle", *extra, *_options()])
        lines = _error_lines(capsys)
        assert exit_.value.code == 2 and len(lines) == 1 and message in lines[0], lines
    assert sorted(p.name for p in tmp_path.glob("*.onnx")) == ["det.onnx"]


def test_detector_features_with_a_dynamic_height_and_width(tmp_path):
    """--dynamic-hw for a detector (batch 2): the tool checks the file against the mm model at 128x160,
    192x128 and 256x256."""
    from swtasks.mm.export import export_mm

    ckpt = _checkpoint(DET, tmp_path / "det.pth")
    dyn = export_mm(DET, ckpt, tmp_path / "dyn.onnx", image_size="128x160", batch_size=2, cfg_options=SMALL,
                    trust_pickle=True, dynamic_hw=True, max_size=256)
    assert dyn["export"].checked_sizes == ((128, 160), (192, 128), (256, 256))
    assert dyn["export"].hw_range == (128, 256) and dyn["relative_diff"] <= 1e-4
    assert dyn["outputs"][0] == (2, 32, 32, 40)
