"""A contact sheet of predictions: a grid of thumbnails, each with its top-3 classes and probabilities.

The grid is exactly ``columns x ceil(n / columns)`` cells of ``thumb x (thumb + 3 text lines)`` pixels
(fewer columns when there are fewer images), so its size is known from the number of images. The top-1
line is green when it equals the image's folder name (a labelled split), red when it differs, white when
the folder is no class name. Plain PIL, no lightning import.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont, ImageOps

__all__ = ["cell_size", "write_contact_sheet"]

LINE = 13  # text line height in pixels
PAD = 3


def cell_size(thumb: int) -> tuple[int, int]:
    """(width, height) of one cell: the thumbnail and three text lines below it."""
    return thumb, thumb + 3 * LINE + 2 * PAD


def _font():
    try:
        return ImageFont.load_default(size=11)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    while text and draw.textlength(text, font=font) > width - 2 * PAD:
        text = text[:-2] + "~" if len(text) > 2 else ""
    return text


def write_contact_sheet(
    path: str,
    images: Sequence[Image.Image],
    topk: Sequence[Sequence[tuple[str, float]]],
    truth: Sequence[str | None] | None = None,
    *,
    columns: int = 8,
    thumb: int = 128,
) -> tuple[int, int]:
    """Write the grid of ``images`` with their ``topk`` (class, probability) lists (the first 3 shown);
    ``truth``: the true class of each image, or None. Returns the sheet's (width, height)."""
    n = len(images)
    if n == 0:
        raise ValueError("a contact sheet needs at least one image")
    cols = max(1, min(columns, n))
    rows = math.ceil(n / cols)
    cw, ch = cell_size(thumb)
    sheet = Image.new("RGB", (cols * cw, rows * ch), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    font = _font()
    for i, (img, top) in enumerate(zip(images, topk)):
        x, y = (i % cols) * cw, (i // cols) * ch
        sheet.paste(ImageOps.pad(img.convert("RGB"), (thumb, thumb), color=(48, 48, 48)), (x, y))
        want = truth[i] if truth is not None else None
        for j, (name, prob) in enumerate(list(top)[:3]):
            color = (235, 235, 235)
            if j == 0 and want is not None:
                color = (120, 220, 120) if name == want else (240, 110, 110)
            text = _fit(draw, f"{name} {prob:.2f}", font, cw)
            draw.text((x + PAD, y + thumb + PAD + j * LINE), text, fill=color, font=font)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    sheet.save(path)
    return sheet.size
