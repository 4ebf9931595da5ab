"""ONNX exports of MMSegmentation segmentors (end to end) and MMDetection detectors (backbone + neck), checked
in ONNX Runtime against the model the mm Runner builds from the config.

    python tools/export_mm.py CONFIG CHECKPOINT OUT.onnx [--image-size HxW]

The graph's input is ``images``: float RGB in 0-255, ``(N, 3, H, W)``; the data preprocessor's channel order
and normalisation (mean / std) are inside the graph.

* A segmentor (``EncoderDecoder``) becomes backbone -> neck -> decode head -> bilinear resize to the input
  size: the output ``logits`` is ``(N, num_classes, H, W)``, the per-class logits mmseg's whole-image
  inference returns (``seg_logits`` before the argmax). The auxiliary head is a training-only loss and is not
  in the graph; a config with sliding-window inference (``test_cfg.mode='slide'``) is exported and checked as
  whole-image inference of the exported size.
* A detector becomes its backbone and neck: the outputs ``features_0`` .. are the feature pyramid
  (``model.extract_feat``). The heads are not exported: the RPN and RoI heads end in non-maximum suppression
  and RoIAlign over a data-dependent number of boxes, which mmdet computes with mmcv's custom operators
  (``mmcv.ops.nms`` / ``RoIAlign``) and Python loops over images and levels; ONNX Runtime has no translation
  of those operators from this exporter, so a file holding them could not be checked here. Run the heads in
  PyTorch on the exported features, or use MMDeploy for a whole-detector graph.

The check: the file is first compared with the wrapped PyTorch graph (swtasks.export.export_module: random
batches, nothing written above the tolerance), then run in ONNX Runtime on seeded 0-255 images and compared
with the mm model itself (the config's model built by mmengine's ``MODELS`` registry, the checkpoint's
state_dict loaded strictly): for a segmentor its data preprocessor + ``predict`` (the ``seg_logits`` of each
sample), for a detector its data preprocessor + ``extract_feat``. A difference above the tolerance removes
the file and raises ExportError.
"""

from __future__ import annotations

import copy
import os
import os.path as osp
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..checkpoint import (
    CheckpointMismatchError,
    check_finite,
    compare_state_dicts,
    format_mismatch,
    read_checkpoint,
)
from ..errors import UserError
from ..export import DEFAULT_OPSET, ExportError, export_module, parse_image_size, pytorch_operator_path
from .deploy import build_model

__all__ = ["DetectorFeatures", "SegmentorLogits", "export_mm", "load_mm_model"]


class _Preprocess(nn.Module):
    """RGB 0-255 -> what the mm model's data preprocessor hands the network (channel order, mean, std)."""

    def __init__(self, preprocessor: nn.Module):
        super().__init__()
        # mmseg's SegDataPreProcessor names it channel_conversion, mmengine's ImgDataPreprocessor
        # _channel_conversion: True = images are loaded BGR (mmcv) and the network sees RGB
        sees_rgb = bool(getattr(preprocessor, "channel_conversion",
                                getattr(preprocessor, "_channel_conversion", False)))
        self.flip = not sees_rgb
        mean = getattr(preprocessor, "mean", None)
        std = getattr(preprocessor, "std", None)
        normalise = getattr(preprocessor, "_enable_normalize", mean is not None) and mean is not None
        self.register_buffer("mean", (mean if normalise else torch.zeros(3)).float().reshape(1, -1, 1, 1))
        self.register_buffer("std", (std if normalise else torch.ones(3)).float().reshape(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.flip(1) if self.flip else images
        return (x - self.mean) / self.std


class SegmentorLogits(nn.Module):
    """An mmseg EncoderDecoder as one graph: images (RGB 0-255) -> per-class logits at the input size."""

    in_chans = 3

    def __init__(self, segmentor: nn.Module):
        super().__init__()
        self.preprocess = _Preprocess(segmentor.data_preprocessor)
        self.segmentor = segmentor
        self.total_stride = 32

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.preprocess(images)
        logits = self.segmentor.decode_head(self.segmentor.extract_feat(x))
        return F.interpolate(logits, size=images.shape[2:], mode="bilinear",
                             align_corners=self.segmentor.decode_head.align_corners)


class DetectorFeatures(nn.Module):
    """An mmdet detector's backbone + neck: images (RGB 0-255) -> the feature pyramid."""

    in_chans = 3

    def __init__(self, detector: nn.Module):
        super().__init__()
        self.preprocess = _Preprocess(detector.data_preprocessor)
        self.detector = detector
        self.total_stride = 32

    def forward(self, images: torch.Tensor):
        feats = self.detector.extract_feat(self.preprocess(images))
        return tuple(feats) if isinstance(feats, (list, tuple)) else (feats,)


def load_mm_model(config, checkpoint, *, cfg_options: dict | None = None, trust_pickle: bool = False,
                  allow_download: bool = False):
    """(cfg, model): the config's model (mmengine MODELS registry, no pretrained init) with the checkpoint's
    state_dict loaded strictly (an mmengine Runner checkpoint ``{'state_dict': ...}``), in eval mode. A
    deploy checkpoint needs its deploy config (tools/reparameterize_mm.py writes both)."""
    from mmengine.config import Config

    if not isinstance(config, Config) and not osp.isfile(config):
        raise UserError(f"config file not found: {config}")
    cfg = config if isinstance(config, Config) else Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    obj = read_checkpoint(checkpoint, trust_pickle=trust_pickle, allow_download=allow_download)
    if not isinstance(obj, dict) or not isinstance(obj.get("state_dict"), dict):
        raise UserError(f"{checkpoint}: expected a checkpoint written by the mmengine Runner (with 'state_dict')")
    from .own_data import follow_checkpoint_classes

    follow_checkpoint_classes(cfg, obj)
    model = build_model(cfg)
    own = {k: v for k, v in model.state_dict().items() if not k.startswith("data_preprocessor.")}
    theirs = {k: v for k, v in obj["state_dict"].items() if not k.startswith("data_preprocessor.")}
    missing, unexpected, mismatched = compare_state_dicts(own, theirs)
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(format_mismatch(
            f"checkpoint {checkpoint}", "the config's model", missing, unexpected, mismatched, limit=5
        ).replace("\n", ";") + "; a deploy checkpoint needs its deploy config")
    check_finite(obj["state_dict"], os.fspath(checkpoint))
    model.load_state_dict(theirs, strict=False)
    return cfg, model.eval()


def _kind(model) -> str:
    if callable(getattr(model, "encode_decode", None)) and getattr(model, "decode_head", None) is not None:
        return "segmentor"
    if callable(getattr(model, "extract_feat", None)) and getattr(model, "with_neck", False):
        return "detector"
    raise UserError(f"{type(model).__name__}: tools/export_mm.py exports mmseg EncoderDecoder segmentors and "
                    "mmdet detectors with a neck")


def _images(size: tuple[int, int], batch: int, seed: int) -> torch.Tensor:
    return torch.rand(batch, 3, *size, generator=torch.Generator().manual_seed(seed)) * 255


@torch.no_grad()
def _mm_reference(model, kind: str, images: torch.Tensor) -> list[torch.Tensor]:
    """What the mm model computes for RGB 0-255 images, through its own data preprocessor (fed the BGR
    images mmcv loads) and inference path."""
    h, w = images.shape[2:]
    bgr = [img.flip(0) for img in images]
    if kind == "detector":
        data = model.data_preprocessor({"inputs": bgr}, training=False)
        return [f.float() for f in model.extract_feat(data["inputs"])]
    from mmseg.structures import SegDataSample

    samples = [SegDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w)))
               for _ in bgr]
    data = model.data_preprocessor({"inputs": bgr, "data_samples": samples}, training=False)
    results = model.predict(data["inputs"], data["data_samples"])
    return [torch.stack([r.seg_logits.data for r in results]).float()]


def _run_onnx(path: str, images: torch.Tensor) -> list[torch.Tensor]:
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return [torch.from_numpy(o) for o in session.run(None, {session.get_inputs()[0].name: images.numpy()})]


def export_mm(
    config,
    checkpoint,
    output,
    *,
    image_size: Any = None,
    cfg_options: dict | None = None,
    opset: int = DEFAULT_OPSET,
    tolerance: float = 1e-4,
    batch_size: int = 1,
    trust_pickle: bool = False,
    allow_download: bool = False,
    dynamic_hw: bool = False,
    min_size: int | None = None,
    max_size: int | None = None,
) -> dict:
    """Export the config's segmentor (end to end) or detector (backbone + neck) with the checkpoint's weights
    to the ONNX file ``output`` at ``image_size`` (N, "HxW" or (H, W); default 512x512; a detector's H and W
    must be multiples of its preprocessor's pad_size_divisor), checked (module docstring). Returns a report
    dict: path, kind, image_size, outputs (names and shapes), max_abs_diff / relative_diff against the mm
    model, the swtasks.export report, notes.

    ``dynamic_hw`` (detectors only): a symbolic height and width, multiples of the pad divisor in
    ``[min_size, max_size]`` (default: twice the coarsest feature level's stride .. 4096), checked against the
    mm model at the three sizes of swtasks.export.hw_check_sizes. A segmentor refuses it: torch 2.14's ONNX
    exporter cannot decompose the decode head's pyramid pooling (adaptive_avg_pool2d) at a symbolic size."""
    if not os.fspath(output).lower().endswith(".onnx"):
        raise UserError(f"{output}: tools/export_mm.py writes ONNX files (.onnx)")
    size = parse_image_size(512 if image_size is None else image_size)
    cfg, model = load_mm_model(config, checkpoint, cfg_options=cfg_options, trust_pickle=trust_pickle,
                               allow_download=allow_download)
    kind = _kind(model)
    notes: list[str] = []
    if kind == "segmentor":
        test_cfg = model.test_cfg if model.test_cfg is not None else {}
        if test_cfg.get("mode", "whole") != "whole":
            notes.append(f"the config infers with mode={test_cfg.get('mode')!r}: exported and checked as "
                         "whole-image inference at the exported size")
            model.test_cfg = copy.deepcopy(test_cfg)
            model.test_cfg["mode"] = "whole"
        if getattr(model.data_preprocessor, "test_cfg", None):
            model.data_preprocessor.test_cfg = None  # no test-time padding: the graph takes the size it gets
        if dynamic_hw:
            raise UserError("--dynamic-hw: not for a segmentor: torch 2.14's ONNX exporter fails to decompose the "
                            "decode head's pyramid pooling (adaptive_avg_pool2d) at a symbolic size; export each "
                            "deployed size with --image-size HxW")
        graph: nn.Module = SegmentorLogits(model)
    else:
        divisor = int(getattr(model.data_preprocessor, "pad_size_divisor", 1) or 1)
        if size[0] % divisor or size[1] % divisor:
            raise UserError(f"image size {size[0]}x{size[1]}: a detector's height and width must be multiples "
                            f"of its pad_size_divisor {divisor} (the Runner pads to it)")
        graph = DetectorFeatures(model)
        if dynamic_hw:
            with torch.no_grad(), pytorch_operator_path(model):
                probe = graph.eval()(torch.zeros(1, 3, 4 * divisor, 4 * divisor))
            coarsest = 4 * divisor // min(f.shape[-2] for f in probe)  # e.g. 64 for an FPN with a P6 level
            min_size = 2 * coarsest if min_size is None else min_size
            if min_size < 2 * coarsest:
                # at a smaller size the coarsest level can be 1 x 1, a case torch.export specialises
                raise UserError(f"min size {min_size}: a dynamic height and width start at 2 x the coarsest "
                                f"feature level's stride ({2 * coarsest})")
        notes.append("backbone + neck only: the heads' NMS and RoIAlign (mmcv custom operators, data-dependent "
                     "box counts) have no ONNX translation here")
    graph.eval()
    multiple = int(getattr(model.data_preprocessor, "pad_size_divisor", 32) or 32) if dynamic_hw else None
    report = export_module(graph, output, format="onnx", image_size=size, batch_size=batch_size, opset=opset,
                           tolerance=tolerance, dynamic_hw=dynamic_hw, hw_multiple=multiple, min_size=min_size,
                           max_size=max_size)
    abs_diff = rel_diff = 0.0
    try:
        for i, hw_size in enumerate(report.checked_sizes or (size,)):
            images = _images(hw_size, batch_size, seed=7 + i)
            with pytorch_operator_path(model):
                want = _mm_reference(model, kind, images)
            got = _run_onnx(report.path, images)
            if [tuple(g.shape) for g in got] != [tuple(w.shape) for w in want]:
                raise ExportError(f"the ONNX file returns shapes {[tuple(g.shape) for g in got]}, the mm model "
                                  f"{[tuple(w.shape) for w in want]}")
            if i == 0:
                outputs = [tuple(g.shape) for g in got]
            abs_diff = max(abs_diff, *(float((g.double() - w.double()).abs().max()) for g, w in zip(got, want)))
            rel_diff = max(rel_diff, *(float((g.double() - w.double()).abs().max()
                                              / w.double().abs().max().clamp_min(1e-12)) for g, w in zip(got, want)))
        if not rel_diff <= tolerance:
            raise ExportError(f"the ONNX file differs from the mm model ({type(model).__name__}): max |diff| "
                              f"{abs_diff:.3g}, relative {rel_diff:.3g} > tolerance {tolerance:g}; nothing written")
    except BaseException:
        for f in report.files:
            if osp.exists(f):
                os.remove(f)
        raise
    return {
        "path": report.path, "kind": kind, "model": type(model).__name__, "image_size": size,
        "outputs": outputs, "max_abs_diff": abs_diff, "relative_diff": rel_diff,
        "tolerance": tolerance, "export": report, "notes": notes + report.notes,
    }


def summary(report: dict) -> list[str]:
    """The lines tools/export_mm.py prints."""
    h, w = report["image_size"]
    what = ("segmentor end to end: images (N, 3, H, W) RGB 0-255 -> logits (N, classes, H, W)"
            if report["kind"] == "segmentor" else "detector backbone + neck: images (N, 3, H, W) RGB 0-255 -> "
            f"{len(report['outputs'])} feature maps")
    ex = report["export"]
    return [*report["notes"],
            f"wrote {report['path']}: {report['model']} {what}, ONNX opset {ex.opset}, input {h}x{w}"
            + (f" (traced; H and W any multiple of {ex.hw_multiple} in {ex.hw_range[0]}..{ex.hw_range[1]}, checked "
               f"at {', '.join(f'{a}x{b}' for a, b in ex.checked_sizes)})" if ex.dynamic_hw else ""),
            f"check: {ex.checked_with} against the mm model (data preprocessor + "
            f"{'predict' if report['kind'] == 'segmentor' else 'extract_feat'}), 0-255 images: max |diff| "
            f"{report['max_abs_diff']:.3g}, relative {report['relative_diff']:.3g} (tolerance {report['tolerance']:g}); "
            f"outputs {', '.join('x'.join(map(str, s)) for s in report['outputs'])}"]


def main(argv=None) -> int:
    """tools/export_mm.py: user errors print one line (exit status 2); a failed check exits with status 1."""
    import argparse
    import sys

    from mmengine.config import DictAction

    from .cli import user_errors_as_exit

    p = argparse.ArgumentParser(
        prog="tools/export_mm.py",
        description="Export a segmentor (end to end) or a detector's backbone + neck to ONNX, checked in ONNX "
                    "Runtime against the mm model.",
    )
    p.add_argument("config", help="the config of the checkpoint (a deploy checkpoint: its deploy config)")
    p.add_argument("checkpoint", help="checkpoint written by tools/train_seg.py / train_det.py / reparameterize_mm.py")
    p.add_argument("out", help="the ONNX file to write (.onnx)")
    p.add_argument("--image-size", metavar="N|HxW", help="input N x N or H x W (default 512x512)")
    p.add_argument("--batch-size", type=int, default=1, help="the fixed batch (default 1)")
    p.add_argument("--dynamic-hw", action="store_true",
                   help="detectors: symbolic height and width (multiples of the pad divisor in --min-size..--max-size)")
    p.add_argument("--min-size", type=int, help="with --dynamic-hw: smallest H, W (default 2 x the coarsest stride)")
    p.add_argument("--max-size", type=int, help="with --dynamic-hw: largest H, W (default 4096)")
    p.add_argument("--cfg-options", nargs="+", action=DictAction, help="override config entries, key=value")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="largest accepted max|diff| / max|output| (default 1e-4)")
    p.add_argument("--trust-pickle", action="store_true", help="allow a full unpickle of CHECKPOINT (trusted files)")
    p.add_argument("--allow-download", action="store_true",
                   help="CHECKPOINT may be an http(s) URL: downloaded, then read like a local file")
    args = p.parse_args(argv)
    with user_errors_as_exit("tools/export_mm.py"):
        try:
            report = export_mm(args.config, args.checkpoint, args.out, image_size=args.image_size,
                               cfg_options=args.cfg_options, opset=args.opset, tolerance=args.tolerance,
                               batch_size=args.batch_size, trust_pickle=args.trust_pickle,
                               allow_download=args.allow_download, dynamic_hw=args.dynamic_hw,
                               min_size=args.min_size, max_size=args.max_size)
        except ExportError as e:
            print(f"tools/export_mm.py: failed: {e}", file=sys.stderr)
            return 1
    for line in summary(report):
        print(line)
    return 0
