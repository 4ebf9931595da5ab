"""Effective receptive fields (ERF) of registry models, as the large-kernel papers measure them.

Method (RepLKNet's, reused by SLaK, UniRepLKNet and the shift-wise paper; docs/analysis.md, "ERF"):
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
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import AnalysisError, AnalysisInputNotFound, MissingPackageError
from .progress import Progress

__all__ = [
    "THRESHOLDS",
    "ErfResult",
    "area_ratios",
    "check_plotting",
    "erf_map",
    "folder_images",
    "log_scaled",
    "noise_images",
    "plot_erfs",
    "run_erf",
    "stage_extractor",
    "write_csv",
]

THRESHOLDS = (0.2, 0.3, 0.5, 0.99)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
ImageSource = Callable[[int, int, int], torch.Tensor]  # (start, count, size) -> (count, 3, size, size)


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

    def source(start: int, count: int, size: int) -> torch.Tensor:
        gens = (torch.Generator().manual_seed(seed * 1_000_003 + i) for i in range(start, start + count))
        return torch.stack([torch.randn(3, size, size, generator=g) for g in gens])

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

    def source(start: int, count: int, size: int) -> torch.Tensor:
        if start + count > len(files):
            raise AnalysisError(f"asked for {start + count} images but {root} holds only {len(files)}")
        out = []
        for p in files[start : start + count]:
            try:
                img = decode_image(str(p), mode=ImageReadMode.RGB)
            except RuntimeError as e:
                raise AnalysisError(f"cannot decode image {p}: {e}") from None
            img = F.interpolate(img[None].float() / 255.0, size=(size, size), mode="bilinear", antialias=True,
                                align_corners=False)[0]
            out.append((img - m) / s)
        return torch.stack(out)

    return source


def _batches(source: ImageSource, n: int, size: int, batch: int, device: torch.device) -> Iterator[torch.Tensor]:
    done = 0
    while done < n:
        k = min(batch, n - done)
        imgs = source(done, k, size)
        if tuple(imgs.shape) != (k, 3, size, size):
            raise ValueError(f"the image source returned shape {tuple(imgs.shape)}, expected ({k}, 3, {size}, {size})")
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


# ------------------------------------------------------------------------------------------------ runs
@dataclass
class ErfResult:
    model: str
    erf: np.ndarray = field(repr=False)  # raw summed map (H, W)
    images: int
    image_size: int
    stage: int
    checkpoint: str = ""

    @property
    def scaled(self) -> np.ndarray:
        return log_scaled(self.erf)

    def ratios(self) -> dict[float, tuple[int, float]]:
        return area_ratios(self.scaled)


def run_erf(
    models: Sequence[str],
    *,
    images: int = 50,
    image_size: int = 1024,
    source: str | os.PathLike | ImageSource = "noise",
    checkpoints: dict[str, str] | None = None,
    stage: int = 3,
    batch_size: int = 1,
    device: str = "cpu",
    seed: int = 0,
    overrides: dict | None = None,
    show_progress: bool = True,
) -> list[ErfResult]:
    """The ERF of each registry model: random init, or the checkpoint given for it in `checkpoints`
    (model name -> path). source: 'noise', an image folder, or an ImageSource callable."""
    from swtasks.models import get_data_config

    if images < 1 or image_size < 1 or batch_size < 1:
        raise AnalysisError(f"images, image_size and batch_size must be >= 1, got {images}, {image_size}, {batch_size}")
    checkpoints = dict(checkpoints or {})
    unknown = sorted(set(checkpoints) - set(models))
    if unknown:
        raise AnalysisError(f"checkpoints given for models that are not run: {unknown}")
    dev = torch.device(device)
    results = []
    with Progress(len(models) * images, "ERF", disable=not show_progress, unit="img") as bar:
        for name in models:
            bar.set_description(f"ERF {name}")
            if callable(source):
                src = source
            elif str(source) == "noise":
                src = noise_images(seed)
            else:
                cfg = get_data_config(name)
                src = folder_images(source, cfg["mean"], cfg["std"])
            ckpt = checkpoints.get(name)
            model = stage_extractor(name, stage, ckpt, **(overrides or {})).to(dev)
            erf = erf_map(model, _batches(src, images, image_size, batch_size, dev), progress=bar)
            results.append(ErfResult(name, erf, images, image_size, stage, str(ckpt or "")))
            del model
    return results


# ------------------------------------------------------------------------------------------------ output
def write_csv(results: Sequence[ErfResult], path: str | os.PathLike) -> None:
    """Columns: model, t0.2, t0.3, t0.5, t0.99 (area ratios), side0.2 ... (square sides in px), images,
    image_size, stage, checkpoint."""
    tcols = [f"t{t}" for t in THRESHOLDS]
    scols = [f"side{t}" for t in THRESHOLDS]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model", *tcols, *scols, "images", "image_size", "stage", "checkpoint"])
        for r in results:
            rat = r.ratios()
            w.writerow([r.model, *(f"{rat[t][1]:.4f}" for t in THRESHOLDS), *(rat[t][0] for t in THRESHOLDS),
                        r.images, r.image_size, r.stage, r.checkpoint])


def format_table(results: Sequence[ErfResult]) -> str:
    head = ["model", *(f"t={t}" for t in THRESHOLDS)]
    rows = []
    for r in results:
        rat = r.ratios()
        rows.append([r.model, *(f"{rat[t][1]:.4f} ({rat[t][0]}px)" for t in THRESHOLDS)])
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(wd) for h, wd in zip(head, widths))]
    lines += ["  ".join(c.ljust(wd) for c, wd in zip(row, widths)) for row in rows]
    lines.append("high-contribution area ratio (side of the centred square) at each threshold; "
                 f"{results[0].images} images of {results[0].image_size}px, stage {results[0].stage}")
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
        p = out / f"erf_{r.model}.png"
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
                     f"{results[0].image_size}px, stage {results[0].stage}", fontsize=10)
        p = out / combined
        fig.savefig(p, dpi=120, bbox_inches="tight")
        plt.close(fig)
        paths.append(p)
    return paths
