"""Bounding-box blurring (img2dataset's `bbox_col`), e.g. to hide faces.

Boxes are `[x0, y0, x1, y1]` relative to the image (0..1). Each box grows by 10% of its
diagonal on every side; the pixels inside the grown boxes are replaced by a Gaussian blur
of the image whose sigma is 0.1 x the largest box diagonal. The caller applies it after the
resize and before the crop or pad, so sizes are those of the resized image.

Only the region around the boxes is blurred (with a margin of 3 sigma so the blur near the
box edges still sees the real neighbourhood): the cost follows the boxes, not the image.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from typing import Any

from PIL import Image, ImageDraw, ImageFilter

from i2d_segments import safejson

Box = tuple[float, float, float, float]

GROW = 0.1  # of the box diagonal, on each side
SIGMA = 0.1  # of the largest box diagonal
MARGIN_SIGMAS = 3  # a Gaussian's weight beyond 3 sigma is negligible


def boxed_item_id(original_sha256: str, boxes: Sequence[Box]) -> str:
    """The item_id of an image stored blurred: the original bytes *and* the boxes. A row of
    the same bytes without boxes (or with other ones) stores other pixels, so it must not
    stand for this one in dedup: an unblurred copy would be served where faces were to be
    hidden. The row's hash column (`sha256`...) still names the original bytes."""
    canonical = json.dumps([list(b) for b in boxes], separators=(",", ":"))
    return hashlib.sha256(f"{original_sha256}\nblurred:{canonical}".encode()).hexdigest()


class InvalidBoxes(ValueError):
    """The row's bbox column is not a list of [x0, y0, x1, y1] boxes."""


def parse_boxes(value: Any) -> tuple[Box, ...]:
    """The boxes of a row's bbox column: a list of 4-number lists, or that list as JSON text
    (csv/tsv inputs carry it as text). None or an empty list: nothing to blur."""
    if value is None:
        return ()
    if isinstance(value, str):
        if not value.strip():
            return ()
        try:
            value = safejson.loads(value)  # untrusted text: never a RecursionError
        except json.JSONDecodeError as e:
            raise InvalidBoxes(f"invalid bounding boxes: not JSON ({e})") from None
        except ValueError as e:  # nested too deep, a number Python cannot hold
            raise InvalidBoxes(f"invalid bounding boxes: {e}") from None
    if hasattr(value, "tolist"):  # a numpy array (pandas-made parquet)
        value = value.tolist()
    if not isinstance(value, list | tuple):
        raise InvalidBoxes("invalid bounding boxes: expected a list of [x0, y0, x1, y1]")
    boxes = []
    for box in value:
        if hasattr(box, "tolist"):
            box = box.tolist()
        if (
            not isinstance(box, list | tuple)
            or len(box) != 4
            or not all(isinstance(v, int | float) and math.isfinite(v) for v in box)
        ):
            raise InvalidBoxes(f"invalid bounding box {_short(box)}: expected [x0, y0, x1, y1]")
        x0, y0, x1, y1 = (float(v) for v in box)
        if x1 < x0 or y1 < y0:
            raise InvalidBoxes(f"invalid bounding box {_short(box)}: x1 < x0 or y1 < y0")
        boxes.append((x0, y0, x1, y1))
    return tuple(boxes)


def _short(box: Any) -> str:
    """A box as the error quotes it: a row's text, so bounded."""
    text = repr(box)
    return text if len(text) <= 60 else text[:57] + "..."


def blur_boxes(img: Image.Image, boxes: Sequence[Box]) -> Image.Image:
    """`img` with the (grown) boxes blurred; the same image when there is nothing to blur."""
    w, h = img.size
    rects: list[tuple[int, int, int, int]] = []
    largest = 0.0
    for x0, y0, x1, y1 in boxes:
        px0, py0, px1, py1 = x0 * w, y0 * h, x1 * w, y1 * h
        diagonal = math.hypot(px1 - px0, py1 - py0)
        largest = max(largest, diagonal)
        g = GROW * diagonal
        rect = (
            max(0, math.floor(px0 - g)),
            max(0, math.floor(py0 - g)),
            min(w, math.ceil(px1 + g)),
            min(h, math.ceil(py1 + g)),
        )
        if rect[0] < rect[2] and rect[1] < rect[3]:
            rects.append(rect)
    sigma = SIGMA * largest
    if not rects or sigma <= 0:
        return img
    margin = math.ceil(MARGIN_SIGMAS * sigma)
    region = (
        max(0, min(r[0] for r in rects) - margin),
        max(0, min(r[1] for r in rects) - margin),
        min(w, max(r[2] for r in rects) + margin),
        min(h, max(r[3] for r in rects) + margin),
    )
    blurred = img.crop(region).filter(ImageFilter.GaussianBlur(sigma))
    mask = Image.new("L", blurred.size, 0)
    draw = ImageDraw.Draw(mask)
    for r in rects:
        # ImageDraw's rectangle includes its end point; the boxes here are half-open.
        draw.rectangle(
            (r[0] - region[0], r[1] - region[1], r[2] - region[0] - 1, r[3] - region[1] - 1),
            fill=255,
        )
    img.paste(blurred, region[:2], mask)  # in place: the caller owns the decoded pixels
    return img
