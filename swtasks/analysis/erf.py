"""Effective receptive fields (ERF) of any model and any layer, as the large-kernel papers measure them.

Models: registry names (a stage's output, `stage_extractor`), `torchvision:NAME` / `timm:NAME` (optionally
converted with `+swK`, see swtasks.models.foreign), an MMDetection / MMSegmentation model (the backbone's or
backbone+neck's outputs: `swtasks.mm.erf.mm_extractor`, which builds it from its config file one floor up and is
passed here as a `(label, module)` pair, as tools/erf.py does), or any nn.Module given from Python; `layer_output(model, "stages.2")` measures the output of any named module instead.

Method (RepLKNet's, reused by SLaK, UniRepLKNet and the shift-wise paper; docs/analysis.md, "Effective receptive field"):
for each image x, take the feature map y of a chosen stage (the stage's own output, before any
features_only norm), the scalar s = sum_c relu(y[c, h // 2, w // 2]) at the centre position, and the
gradient g = ds/dx; the image's contribution map is relu(g) summed over the input channels. The maps
are summed over N images (eval mode, so images do not interact). For display and for the area ratios the
sum is log-scaled, m = log10(map + 1), and divided by its maximum.

High-contribution area ratio at threshold t: the smallest centred square (side 1, 3, 5, ...) whose sum of m
exceeds t times the total, as a fraction of the image area (the papers start at side 3; starting at 1 only
matters for ERFs smaller than 3x3). Thresholds 0.2, 0.3, 0.5 and 0.99 as published.

Image sources: Gaussian noise, an image folder (resized to image_size x image_size, normalised with the
model's mean/std), or any callable (start, count, size) -> float tensor (count, 3, size, size) holding
images start .. start + count - 1 - the tools pass the embedded procedural dataset this way (it lives in
swtasks.cls, a floor above this one: swtasks.cls.experiments.procedural_images).

Imports torch, torchvision (image decoding), numpy and swtasks.models; matplotlib (the `cls` extra) only to
draw, imported when drawing.
"""

from __future__ import annotations

import csv
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import AnalysisError, AnalysisInputNotFound, MissingPackageError
from .progress import Progress
from .select import FOREIGN_PREFIXES

__all__ = [
    "THRESHOLDS",
    "ErfResult",
    "area_ratios",
    "build_extractor",
    "check_plotting",
    "erf_map",
    "file_stem",
    "folder_images",
    "layer_output",
    "log_scaled",
    "noise_images",
    "parse_image_size",
    "plot_erfs",
    "run_erf",
    "size_text",
    "stage_extractor",
    "write_csv",
]

THRESHOLDS = (0.2, 0.3, 0.5, 0.99)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # folder images of non-registry models
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
ImageSource = Callable[[int, int, int], torch.Tensor]  # (start, count, size) -> (count, 3, size, size)
# size is an int for square images, (H, W) for rectangular ones (noise and folder sources take both)
ImageSize = int | tuple[int, int]


def _hw(size: ImageSize) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _size_arg(size: ImageSize) -> ImageSize:
    """What an image source is called with: an int for a square, (H, W) otherwise."""
    h, w = _hw(size)
    return h if h == w else (h, w)


def size_text(size: ImageSize) -> str:
    h, w = _hw(size)
    return str(h) if h == w else f"{h}x{w}"


def parse_image_size(text: str | int) -> ImageSize:
    """'1024' -> 1024, '512x768' -> (512, 768) (height x width); AnalysisError otherwise."""
    if isinstance(text, int):
        parts = [text]
    else:
        try:
            parts = [int(t) for t in str(text).lower().split("x")]
        except ValueError:
            parts = []
    if len(parts) not in (1, 2) or min(parts) < 1:
        raise AnalysisError(f"image size must be N or HxW (positive ints), got {text!r}")
    return parts[0] if len(parts) == 1 or parts[0] == parts[1] else (parts[0], parts[1])


# ------------------------------------------------------------------------------------------------ maths
def erf_map(model: nn.Module, batches: Iterable[torch.Tensor], *, progress: Progress | None = None) -> np.ndarray:
    """The summed contribution map (H, W), float64, of `model` (input (B, C, H, W) -> feature map
    (B, C', h, w), or a list whose last entry is one) over all images of `batches`; see the module
    docstring. The model is run in eval mode (its mode is restored)."""
    was_training = model.training
    model.eval()
    total = None
    try:
        for x in batches:
            x = x.detach().clone().requires_grad_(True)
            y = model(x)
            if isinstance(y, dict):
                y = list(y.values())
            if isinstance(y, (list, tuple)):
                y = y[-1]
            if y.dim() != 4:
                raise ValueError(f"the model must return a (B, C, h, w) feature map, got shape {tuple(y.shape)}")
            centre = F.relu(y[:, :, y.shape[2] // 2, y.shape[3] // 2]).sum()
            (g,) = torch.autograd.grad(centre, x)
            m = F.relu(g).sum(dim=(0, 1)).double().cpu().numpy()
            total = m if total is None else total + m
            if progress is not None:
                progress.update(x.shape[0])
    finally:
        model.train(was_training)
    if total is None:
        raise AnalysisError("no images: the image source gave no batch")
    return total


def log_scaled(erf: np.ndarray) -> np.ndarray:
    """log10(erf + 1) divided by its maximum (all zeros stay zeros)."""
    m = np.log10(np.asarray(erf, dtype=np.float64) + 1.0)
    top = m.max()
    return m / top if top > 0 else m


def area_ratios(scaled: np.ndarray, thresholds: Sequence[float] = THRESHOLDS) -> dict[float, tuple[int, float]]:
    """{t: (side, area ratio)}: the smallest centred square of odd side whose sum exceeds t x the total;
    ratio = side^2 / (H * W). A square that reaches the border is clipped to the image (and the ratio with it)."""
    a = np.asarray(scaled, dtype=np.float64)
    h, w = a.shape
    total = a.sum()
    ch, cw = h // 2, w // 2
    out = {}
    for t in thresholds:
        if not 0 < t < 1:
            raise AnalysisError(f"thresholds must be in (0, 1), got {t}")
        side, ratio = None, 1.0
        for r in range(max(h, w)):
            top, left = max(ch - r, 0), max(cw - r, 0)
            box = a[top : ch + r + 1, left : cw + r + 1]
            if total > 0 and box.sum() > t * total:
                side, ratio = 2 * r + 1, box.size / (h * w)
                break
        out[t] = (side if side is not None else max(h, w), ratio)
    return out


# ------------------------------------------------------------------------------------------------ images
def noise_images(seed: int = 0) -> ImageSource:
    """Standard-normal images (already "normalised"); image i depends only on (seed, i)."""

    def source(start: int, count: int, size: ImageSize) -> torch.Tensor:
        gens = (torch.Generator().manual_seed(seed * 1_000_003 + i) for i in range(start, start + count))
        return torch.stack([torch.randn(3, *_hw(size), generator=g) for g in gens])

    return source


def _list_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise AnalysisInputNotFound(f"image folder {folder} does not exist or is not a folder")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise AnalysisInputNotFound(f"image folder {folder} holds no images ({', '.join(IMAGE_EXTENSIONS)}, "
                                    "searched recursively)")
    return files


def folder_images(folder: str | os.PathLike, mean: Sequence[float], std: Sequence[float]) -> ImageSource:
    """An image source reading the images of `folder` (sorted paths, recursive), resized to size x size
    (bilinear, antialiased) and normalised with mean/std. Asking for more images than there are is an error."""
    from torchvision.io import ImageReadMode, decode_image

    root = Path(folder)
    files = _list_images(root)
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def source(start: int, count: int, size: ImageSize) -> torch.Tensor:
        if start + count > len(files):
            raise AnalysisError(f"asked for {start + count} images but {root} holds only {len(files)}")
        out = []
        for p in files[start : start + count]:
            try:
                img = decode_image(str(p), mode=ImageReadMode.RGB)
            except RuntimeError as e:
                raise AnalysisError(f"cannot decode image {p}: {e}") from None
            img = F.interpolate(img[None].float() / 255.0, size=_hw(size), mode="bilinear", antialias=True,
                                align_corners=False)[0]
            out.append((img - m) / s)
        return torch.stack(out)

    return source


def _batches(source: ImageSource, n: int, size: ImageSize, batch: int, device: torch.device) -> Iterator[torch.Tensor]:
    done = 0
    h, w = _hw(size)
    while done < n:
        k = min(batch, n - done)
        imgs = source(done, k, _size_arg(size))
        if tuple(imgs.shape) != (k, 3, h, w):
            raise ValueError(f"the image source returned shape {tuple(imgs.shape)}, expected ({k}, 3, {h}, {w})")
        done += k
        yield imgs.to(device=device, dtype=torch.float32)


# ------------------------------------------------------------------------------------------------ models
class _StageOutput(nn.Module):
    """Runs a features_only backbone and returns the raw output of the stage module named by its
    feature_info (before any per-output norm the backbone applies)."""

    def __init__(self, backbone: nn.Module, module_name: str | None):
        super().__init__()
        self.backbone = backbone
        self.module_name = module_name
        self._hooked: torch.Tensor | None = None
        if module_name:
            backbone.get_submodule(module_name).register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        self._hooked = output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._hooked = None
        out = self.backbone(x)
        if self._hooked is not None:
            y, self._hooked = self._hooked, None
            return y
        return out[-1] if isinstance(out, (list, tuple)) else out


def stage_extractor(name: str, stage: int = 3, checkpoint: str | os.PathLike | None = None,
                    **overrides) -> nn.Module:
    """Registry model `name` as a features_only backbone returning stage `stage`'s output (NCHW)."""
    from swtasks.models import create_model

    model = create_model(name, features_only=True, out_indices=(stage,), checkpoint_path=checkpoint, **overrides)
    info = getattr(model, "feature_info", None)
    module_name = None
    if info:
        entry = info[0]
        module_name = entry.get("module") if isinstance(entry, dict) else None
        if module_name:
            try:
                model.get_submodule(module_name)
            except AttributeError:
                module_name = None
    return _StageOutput(model, module_name)


class _LayerReached(Exception):
    """Raised by the hook once the measured layer has given its output: the rest of the forward is skipped."""


def _maps(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out] if out.dim() == 4 else []
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _maps(o)]
    return []


class LayerOutput(nn.Module):
    """Runs ``forward`` (default: ``model``) on the input and returns the output of ``model``'s submodule
    ``layer`` (its first call in the forward; the rest of the forward is skipped). ``layer=None``: the last
    module (in the order the modules finish) whose output is a 4-D map larger than 1x1 - the network's last
    feature map before global pooling, e.g. ``features`` of a torchvision ConvNeXt - found on the first call
    and kept in ``self.layer``. A list / tuple / dict output is returned as a list (`erf_map` takes its last
    map; ``index`` picks another)."""

    def __init__(self, model: nn.Module, layer: str | None = None, forward: Callable | None = None,
                 index: int | None = None):
        super().__init__()
        self.model = model
        self.layer = layer
        self.index = index
        self._forward = forward
        if layer is not None:
            try:
                model.get_submodule(layer)
            except AttributeError:
                names = [n for n, _ in model.named_modules() if n]
                import difflib

                close = difflib.get_close_matches(layer, names, n=4, cutoff=0.6)
                raise AnalysisError(f"{type(model).__name__} has no module {layer!r}"
                                    + (f"; closest: {', '.join(close)}" if close else
                                       f"; e.g. {', '.join(n for n in names if n.count('.') <= 1)[:300]}")) from None

    def _run(self, x):
        return (self._forward or self.model)(x)

    def _select(self, out, what: str):
        maps = _maps(out)
        if not maps:
            raise AnalysisError(f"{what} returns no (B, C, h, w) feature map")
        if isinstance(out, torch.Tensor):
            return out
        if self.index is not None:
            if not -len(maps) <= self.index < len(maps):
                raise AnalysisError(f"{what} returns {len(maps)} feature maps; index {self.index} is out of range")
            return maps[self.index]
        return maps

    def _find_layer(self, x):
        seen: list[tuple[str, torch.Tensor]] = []
        handles = [m.register_forward_hook(lambda mod, a, o, n=n: seen.extend((n, t) for t in _maps(o)[-1:]))
                   for n, m in self.model.named_modules() if n]
        try:
            self._run(x)
        finally:
            for h in handles:
                h.remove()
        if not seen:
            raise AnalysisError(f"no module of {type(self.model).__name__} returns a (B, C, h, w) feature map; "
                                "give the layer to measure")
        big = [(n, t) for n, t in seen if t.shape[-2] * t.shape[-1] > 1]
        self.layer, y = (big or seen)[-1]
        return y

    def forward(self, x: torch.Tensor):
        if self.layer is None:
            return self._find_layer(x)
        got: list = []

        def hook(mod, args, out):
            got.append(out)
            raise _LayerReached

        handle = self.model.get_submodule(self.layer).register_forward_hook(hook)
        try:
            self._run(x)
        except _LayerReached:
            pass
        finally:
            handle.remove()
        if not got:
            raise AnalysisError(f"module {self.layer!r} was not run by the forward pass measured")
        return self._select(got[0], f"module {self.layer!r}")


def layer_output(model: nn.Module, layer: str | None = None, *, forward: Callable | None = None,
                 index: int | None = None) -> LayerOutput:
    """Any nn.Module measured at the output of its submodule `layer` (see LayerOutput)."""
    return LayerOutput(model, layer, forward, index)


def is_mm_config(name: str) -> bool:
    return str(name).endswith(".py")


# ------------------------------------------------------------------------------------------------ runs
@dataclass
class ErfResult:
    model: str
    erf: np.ndarray = field(repr=False)  # raw summed map (H, W)
    images: int
    image_size: ImageSize
    stage: int | None
    checkpoint: str = ""
    layer: str = ""  # the module measured ("" for a registry model's stage)

    @property
    def scaled(self) -> np.ndarray:
        return log_scaled(self.erf)

    def ratios(self) -> dict[float, tuple[int, float]]:
        return area_ratios(self.scaled)


ModelArg = str | tuple[str, nn.Module]


def _label(entry: ModelArg) -> str:
    if isinstance(entry, tuple):
        return entry[0]
    return Path(entry).stem if is_mm_config(entry) else entry


def build_extractor(entry: ModelArg, *, stage: int | None = 3, layer: str | None = None,
                    checkpoint: str | os.PathLike | None = None, image_size: ImageSize | None = None,
                    overrides: dict | None = None) -> nn.Module:
    """The module whose output `erf_map` measures, for a registry name, a `torchvision:` / `timm:` name (`+swK`
    converted, the kernels clipped to `image_size`), an mm config (`.py`) or a `(label, nn.Module)` pair;
    `layer` names a module inside the model, `stage` the registry backbone stage (default 3) or the entry of
    a list output (mm: default the last)."""
    overrides = dict(overrides or {})
    if isinstance(entry, tuple):  # a module given as it is; an extractor already built (mm) is used as it is
        return entry[1] if isinstance(entry[1], LayerOutput) else layer_output(entry[1], layer, index=stage)
    if is_mm_config(entry):
        raise AnalysisError(f"{entry}: an MMDetection/MMSegmentation config is built by swtasks.mm.erf.mm_extractor "
                            "(tools/erf.py does it); pass the result as a (label, module) pair")
    if entry.startswith(FOREIGN_PREFIXES):
        from swtasks.models.foreign import create_foreign

        ctor = {k: v for k, v in overrides.items() if k not in ("trust_pickle", "allow_download")}
        net = create_foreign(entry, image_size=None if image_size is None else _hw(image_size), **ctor)
        if checkpoint is not None:
            from swtasks.checkpoint import load_into

            load_into(net, checkpoint, trust_pickle=bool(overrides.get("trust_pickle")),
                      allow_download=bool(overrides.get("allow_download")))
        return layer_output(net, layer)
    if layer is not None:
        from swtasks.models import create_model

        return layer_output(create_model(entry, checkpoint_path=checkpoint, **overrides), layer)
    return stage_extractor(entry, 3 if stage is None else stage, checkpoint, **overrides)


def run_erf(
    models: Sequence[ModelArg],
    *,
    images: int = 50,
    image_size: ImageSize = 1024,
    source: str | os.PathLike | ImageSource = "noise",
    checkpoints: dict[str, str] | None = None,
    stage: int | None = 3,
    batch_size: int = 1,
    device: str = "cpu",
    seed: int = 0,
    overrides: dict | None = None,
    show_progress: bool = True,
    layer: str | None = None,
) -> list[ErfResult]:
    """The ERF of each model (see `build_extractor`: registry names, torchvision:/timm: names, mm configs,
    (label, nn.Module) pairs): random init, or the checkpoint given for it in `checkpoints` (label -> path;
    an mm config's label is its file stem). source: 'noise', an image folder, or an ImageSource callable.
    `layer`: measure the output of that module of every model instead of its last stage / feature map.
    `image_size`: N or (H, W). `overrides` go to create_model for registry models and to create_foreign for
    torchvision:/timm: names (e.g. layer_scale=1.0, shiftwise_init='fresh'); trust_pickle and allow_download
    to every checkpoint read."""
    from swtasks.models import get_data_config, is_model

    h, w = _hw(image_size)
    if images < 1 or min(h, w) < 1 or batch_size < 1:
        raise AnalysisError(f"images, image_size and batch_size must be >= 1, got {images}, {image_size}, {batch_size}")
    labels = [_label(m) for m in models]
    checkpoints = dict(checkpoints or {})
    unknown = sorted(set(checkpoints) - set(labels))
    if unknown:
        raise AnalysisError(f"checkpoints given for models that are not run: {unknown}")
    dev = torch.device(device)
    results = []
    with Progress(len(models) * images, "ERF", disable=not show_progress) as bar:
        for entry, name in zip(models, labels):
            bar.set_description(f"ERF {name}")
            if callable(source):
                src = source
            elif str(source) == "noise":
                src = noise_images(seed)
            else:
                cfg = get_data_config(name) if isinstance(entry, str) and is_model(entry) else {}
                src = folder_images(source, cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD))
            ckpt = checkpoints.get(name)
            model = build_extractor(entry, stage=stage, layer=layer, checkpoint=ckpt, image_size=(h, w),
                                    overrides=overrides).to(dev)
            erf = erf_map(model, _batches(src, images, image_size, batch_size, dev), progress=bar)
            measured = getattr(model, "layer", None) or ""
            registry_stage = isinstance(entry, str) and layer is None and is_model(entry)
            used_stage = (3 if stage is None else stage) if registry_stage else stage
            results.append(ErfResult(name, erf, images, _size_arg(image_size), used_stage, str(ckpt or ""),
                                     measured))
            del model
    return results


# ------------------------------------------------------------------------------------------------ output
def write_csv(results: Sequence[ErfResult], path: str | os.PathLike) -> None:
    """Columns: model, t0.2, t0.3, t0.5, t0.99 (area ratios), side0.2 ... (square sides in px), images,
    image_size (N or HxW), stage, checkpoint, layer (the module measured; empty for a registry stage)."""
    tcols = [f"t{t}" for t in THRESHOLDS]
    scols = [f"side{t}" for t in THRESHOLDS]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model", *tcols, *scols, "images", "image_size", "stage", "checkpoint", "layer"])
        for r in results:
            rat = r.ratios()
            w.writerow([r.model, *(f"{rat[t][1]:.4f}" for t in THRESHOLDS), *(rat[t][0] for t in THRESHOLDS),
                        r.images, size_text(r.image_size), "" if r.stage is None else r.stage, r.checkpoint,
                        r.layer])


def file_stem(name: str) -> str:
    """A model label as a file name part: erf_<stem>.png / .npy ('torchvision:convnext_tiny' ->
    'torchvision_convnext_tiny')."""
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", name)


def _where(r: ErfResult) -> str:
    return f"module {r.layer}" if r.layer else f"stage {r.stage}"


def format_table(results: Sequence[ErfResult]) -> str:
    head = ["model", *(f"t={t}" for t in THRESHOLDS)]
    rows = []
    for r in results:
        rat = r.ratios()
        rows.append([r.model, *(f"{rat[t][1]:.4f} ({rat[t][0]}px)" for t in THRESHOLDS), _where(r)])
    head.append("measured at")
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(wd) for h, wd in zip(head, widths))]
    lines += ["  ".join(c.ljust(wd) for c, wd in zip(row, widths)) for row in rows]
    lines.append("high-contribution area ratio (side of the centred square) at each threshold; "
                 f"{results[0].images} images of {size_text(results[0].image_size)}px")
    return "\n".join(lines)


def check_plotting() -> None:
    """Raise ImportError with the install hint when matplotlib is missing (call before a long run)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise MissingPackageError("drawing ERF heatmaps needs matplotlib: pip install 'swtasks[cls]' (or "
                                  "matplotlib); or pass --no-plot to write only the CSV and the raw maps") from None


def plot_erfs(results: Sequence[ErfResult], out_dir: str | os.PathLike, combined: str = "erf.png") -> list[Path]:
    """One heatmap PNG per model (erf_<model>.png) and, for several models, one side-by-side figure."""
    check_plotting()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    paths = []

    def draw(ax, r: ErfResult):
        im = ax.imshow(r.scaled, cmap="RdYlGn", vmin=0.0, vmax=1.0, interpolation="nearest")
        rat = r.ratios()
        ax.set_title(f"{r.model}\nt=0.2: {rat[0.2][1]:.3f}, t=0.99: {rat[0.99][1]:.3f}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        return im

    for r in results:
        fig, ax = plt.subplots(figsize=(4.2, 4.0))
        im = draw(ax, r)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        p = out / f"erf_{file_stem(r.model)}.png"
        fig.savefig(p, dpi=120, bbox_inches="tight")
        plt.close(fig)
        paths.append(p)
    if len(results) > 1:
        cols = min(len(results), 4)
        rows = math.ceil(len(results) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.6 * rows), squeeze=False)
        for ax in axes.flat[len(results):]:
            ax.axis("off")
        im = None
        for ax, r in zip(axes.flat, results):
            im = draw(ax, r)
        fig.colorbar(im, ax=axes.ravel().tolist(), fraction=0.02, pad=0.02)
        fig.suptitle(f"effective receptive field (log-scaled), {results[0].images} images, "
                     f"{size_text(results[0].image_size)}px, {_where(results[0])}", fontsize=10)
        p = out / combined
        fig.savefig(p, dpi=120, bbox_inches="tight")
        plt.close(fig)
        paths.append(p)
    return paths
