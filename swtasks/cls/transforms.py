"""Training / evaluation pipelines on torchvision.transforms.v2, and the data config they start from.

Data defaults (input size, mean, std, crop_pct, interpolation) have one home, the model registry's data
config (``swtasks.models.registry``: ``DEFAULT_DATA_CONFIG``, per-variant ``pretrained_cfg``);
:func:`data_config` reads it for a model or a registry name.

Training: RandomResizedCrop (scale 0.08-1, ratio 3/4-4/3, bicubic) -> horizontal flip, and only when asked:
RandAugment (the ImageNet recipe's "rand-m9-mstd0.5-inc1"), colour jitter, RandomErasing (per-pixel
random values) -> float -> normalise. Evaluation: resize the short side to floor(size / crop_pct) ->
centre crop -> float -> normalise.

How close the RandAugment is to timm's ``rand-m9-mstd0.5-inc1`` (the reference recipe):

- magnitude scale: timm's m is out of 10, so m9 is 90 % of every op's range; torchvision's default of 31
  bins would make ``magnitude=9`` only 30 %. We use 101 bins and index ``round(10 * m)``.
- ``mstd0.5``: torchvision's RandAugment has no magnitude noise. ``RandAugmentMstd`` draws, like timm, a
  fresh magnitude ``N(9, 0.5)`` clipped to [0, 10] for every op it applies.
- ``inc1`` (severity increasing with magnitude): torchvision's ops already are (signed enhancement
  factors 1 +- m, posterize bits and solarize threshold falling with m).
- op set: torchvision has 14 ops (with Identity, without timm's Invert and SolarizeAdd); posterize at m9
  keeps 4 bits where timm's PosterizeIncreasing keeps 1. Fill for geometric ops is the mean colour, as
  in timm.
- colour jitter 0.4: timm (and so the reference) disables colour jitter whenever RandAugment is on;
  we do the same unless ``force_color_jitter`` is set.
"""

from __future__ import annotations

import math
import random
import re
from typing import Any

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import InterpolationMode

from ..models.registry import DEFAULT_DATA_CONFIG, ModelConfigError, get_data_config
from .errors import InputError

DATA_KEYS = ("input_size", "mean", "std", "crop_pct", "interpolation")
IMAGENET_MEAN, IMAGENET_STD = DEFAULT_DATA_CONFIG["mean"], DEFAULT_DATA_CONFIG["std"]


def data_config(source: Any = None) -> dict[str, Any]:
    """input_size, mean, std, crop_pct and interpolation of a model (its ``pretrained_cfg``) or a registry
    name (``get_data_config``); the registry's defaults for anything else (None, an unknown name, a model
    from outside the registry)."""
    cfg: Any = None
    if isinstance(source, str):
        try:
            cfg = get_data_config(source)
        except ModelConfigError:
            cfg = None
    elif source is not None:
        cfg = getattr(source, "pretrained_cfg", None)
    out = {k: DEFAULT_DATA_CONFIG[k] for k in DATA_KEYS}
    out.update({k: v for k, v in dict(cfg or {}).items() if k in DATA_KEYS and v is not None})
    return out


def interpolation_mode(name: str | InterpolationMode) -> InterpolationMode:
    if isinstance(name, InterpolationMode):
        return name
    try:
        return InterpolationMode(str(name).lower())
    except ValueError:
        choices = ", ".join(m.value for m in InterpolationMode)
        raise InputError(f"unknown interpolation {name!r}; choose one of {choices}") from None


def parse_rand_augment(spec: str) -> dict[str, Any]:
    """Parse timm's ``rand-m9-mstd0.5-inc1`` (also ``n`` = number of ops) into keyword arguments."""
    parts = spec.split("-")
    if parts[0] != "rand":
        raise InputError(f"data.auto_augment={spec!r}: only RandAugment specs 'rand-m9-mstd0.5-inc1' are supported")
    out: dict[str, Any] = {"num_ops": 2, "magnitude": 9.0, "magnitude_std": 0.0}
    for p in parts[1:]:
        m = re.fullmatch(r"(mstd|inc|m|n|w|mmax|p)([0-9.]+)", p)
        if not m:
            raise InputError(f"data.auto_augment={spec!r}: cannot parse {p!r}")
        key, val = m.group(1), float(m.group(2))
        if key == "m":
            out["magnitude"] = val
        elif key == "n":
            out["num_ops"] = int(val)
        elif key == "mstd":
            out["magnitude_std"] = val
        elif key == "inc":
            pass  # torchvision's ops already increase in severity with the magnitude
        else:
            raise InputError(f"data.auto_augment={spec!r}: option {key!r} is not supported")
    return out


class RandAugmentMstd(v2.RandAugment):
    """``v2.RandAugment`` on timm's 0-10 magnitude scale with timm's per-op Gaussian magnitude noise."""

    BINS = 101  # index = round(10 * m) for m in [0, 10]

    def __init__(self, num_ops: int = 2, magnitude: float = 9.0, magnitude_std: float = 0.5, **kwargs):
        super().__init__(num_ops=num_ops, magnitude=int(round(magnitude * 10)), num_magnitude_bins=self.BINS, **kwargs)
        self.magnitude_mean = float(magnitude)
        self.magnitude_std = float(magnitude_std)

    def _draw_index(self) -> int:
        m = self.magnitude_mean
        if self.magnitude_std > 0:
            m = random.gauss(m, self.magnitude_std)
        return int(round(min(10.0, max(0.0, m)) * 10))

    def forward(self, *inputs: Any) -> Any:
        flat_inputs_with_spec, image = self._flatten_and_extract_image_or_video(inputs)
        height, width = v2.functional.get_size(image)
        for _ in range(self.num_ops):
            transform_id, (magnitudes_fn, signed) = self._get_random_item(self._AUGMENTATION_SPACE)
            magnitudes = magnitudes_fn(self.num_magnitude_bins, height, width)
            if magnitudes is not None:
                magnitude = float(magnitudes[self._draw_index()])
                if signed and torch.rand(()) <= 0.5:
                    magnitude *= -1
            else:
                magnitude = 0.0
            image = self._apply_image_or_video_transform(
                image, transform_id, magnitude, interpolation=self.interpolation, fill=self._fill
            )
        return self._unflatten_and_insert_image_or_video(flat_inputs_with_spec, image)


def train_transform(
    image_size: int,
    *,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    interpolation: str = DEFAULT_DATA_CONFIG["interpolation"],
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip: float = 0.5,
    auto_augment: str | None = None,
    color_jitter: float | None = None,
    force_color_jitter: bool = False,
    random_erasing: float = 0.0,
) -> v2.Compose:
    interp = interpolation_mode(interpolation)
    ops: list = [v2.RandomResizedCrop(image_size, scale=tuple(scale), ratio=tuple(ratio), interpolation=interp, antialias=True)]
    if hflip > 0:
        ops.append(v2.RandomHorizontalFlip(hflip))
    if auto_augment:
        kw = parse_rand_augment(auto_augment)
        fill = [int(round(255 * m)) for m in mean]
        ops.append(RandAugmentMstd(**kw, interpolation=interp, fill=fill))
    if color_jitter and (not auto_augment or force_color_jitter):
        ops.append(v2.ColorJitter(color_jitter, color_jitter, color_jitter))
    ops += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    if random_erasing > 0:
        ops.append(v2.RandomErasing(p=random_erasing, value="random"))
    return v2.Compose(ops)


def eval_transform(
    image_size: int,
    *,
    crop_pct: float = DEFAULT_DATA_CONFIG["crop_pct"],
    interpolation: str = DEFAULT_DATA_CONFIG["interpolation"],
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
) -> v2.Compose:
    if not 0 < crop_pct <= 1:
        raise InputError(f"crop_pct must be in (0, 1], got {crop_pct}")
    resize = int(math.floor(image_size / crop_pct))
    return v2.Compose(
        [
            v2.Resize(resize, interpolation=interpolation_mode(interpolation), antialias=True),
            v2.CenterCrop(image_size),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(mean), list(std)),
        ]
    )
