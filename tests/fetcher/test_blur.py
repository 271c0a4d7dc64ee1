"""Bounding-box blurring (bbox_col): which pixels change, how much, and where in the
resize/crop/pad order it happens."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin

from i2d_fetcher.imaging.blur import InvalidBoxes, blur_boxes, parse_boxes
from i2d_fetcher.imaging.pipeline import process_image
from i2d_fetcher.options import FetchOptions
from i2d_imageserver import synth

PNG_NO_RESIZE = FetchOptions(resize_mode="no", encode_format="png")


def checkerboard(width: int, height: int, cell: int = 2) -> Image.Image:
    y, x = np.mgrid[:height, :width]
    px = np.where(((x // cell) + (y // cell)) % 2 == 0, 0, 255).astype(np.uint8)
    return Image.fromarray(np.stack([px] * 3, axis=-1), "RGB")


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int32)


def local_contrast(px: np.ndarray) -> float:
    """Mean absolute difference between horizontal neighbours: ~255 for the checkerboard,
    near 0 once blurred."""
    return float(np.abs(np.diff(px, axis=1)).mean())


def test_parse_boxes_accepts_the_forms_inputs_carry() -> None:
    assert parse_boxes(None) == ()
    assert parse_boxes([]) == ()
    assert parse_boxes("") == ()
    assert parse_boxes([[0.1, 0.2, 0.3, 0.4]]) == ((0.1, 0.2, 0.3, 0.4),)
    assert parse_boxes("[[0, 0, 1, 1]]") == ((0.0, 0.0, 1.0, 1.0),)  # csv: JSON text
    assert parse_boxes(np.array([[0.1, 0.2, 0.3, 0.4]])) == ((0.1, 0.2, 0.3, 0.4),)  # parquet


@pytest.mark.parametrize(
    "value", ["not json", [[0.1, 0.2, 0.3]], [["a", 0, 1, 1]], [[0.5, 0.5, 0.1, 0.9]], 3]
)
def test_parse_boxes_rejects_malformed_values(value: Any) -> None:
    with pytest.raises(InvalidBoxes, match="invalid bounding box"):
        parse_boxes(value)


def test_the_grown_box_is_blurred_and_the_rest_is_untouched() -> None:
    data = png(checkerboard(256, 256))
    plain = pixels(process_image(data, PNG_NO_RESIZE).data)
    out = pixels(process_image(data, PNG_NO_RESIZE, ((0.25, 0.25, 0.5, 0.5),)).data)
    # The box is 64..128 px; its diagonal is 90.5 px, so it grows by 9.05 px to 54..138.
    assert local_contrast(out[60:132, 60:132]) < 20
    assert local_contrast(plain[60:132, 60:132]) > 100
    assert local_contrast(out[55:58, 55:137]) < 60  # the grown margin is blurred too
    changed = np.argwhere((out != plain).any(axis=2))
    assert changed.min(axis=0).tolist() == [54, 54]
    assert changed.max(axis=0).tolist() == [137, 137]


def test_sigma_follows_the_largest_box() -> None:
    img = checkerboard(400, 400, cell=16)
    small = (0.05, 0.05, 0.1, 0.1)
    alone = np.asarray(blur_boxes(img.copy(), [small]), dtype=np.int32)
    with_big = np.asarray(blur_boxes(img.copy(), [small, (0.5, 0.5, 0.95, 0.95)]), dtype=np.int32)
    region = (slice(22, 38), slice(22, 38))  # inside the small box
    # sigma 0.1 x 28 px alone (2.8 px: the 16 px cells still show), 0.1 x 255 px with the
    # big box (25 px: flat grey).
    assert local_contrast(alone[region]) > 3 * local_contrast(with_big[region])
    assert np.abs(with_big[region] - 127.5).max() < 30


def test_blur_happens_after_resize_and_before_the_border_pad() -> None:
    data = png(checkerboard(800, 400, cell=8))
    opts = FetchOptions(resize_mode="border", encode_format="png")
    plain = pixels(process_image(data, opts).data)
    out = pixels(process_image(data, opts, ((0.0, 0.0, 0.5, 1.0),)).data)
    # 800x400 -> 256x128 content on rows 64..192; the box is the content's left half (of
    # the image, not of the padded square), grown by 10% of its 181 px diagonal.
    assert (out[:64] == 255).all() and (out[192:] == 255).all()  # the pad stays white
    assert local_contrast(out[70:186, 0:110]) < 15
    assert (out[64:192, 160:] == plain[64:192, 160:]).all()


def test_center_crop_boxes_are_relative_to_the_whole_image() -> None:
    data = png(checkerboard(900, 300, cell=8))
    opts = FetchOptions(resize_mode="center_crop", encode_format="png")
    plain = pixels(process_image(data, opts).data)
    # 900x300 -> 768x256, then the middle 256 columns (256..512) are kept.
    left = pixels(process_image(data, opts, ((0.0, 0.0, 0.2, 1.0),)).data)
    assert (left == plain).all()  # that box (and its growth) lies in the cropped-away part
    middle = pixels(process_image(data, opts, ((0.45, 0.4, 0.55, 0.6),)).data)
    assert middle.shape[:2] == (256, 256)
    assert local_contrast(middle[110:146, 110:146]) < 20
    assert (middle[:, :60] == plain[:, :60]).all()


def test_blur_keeps_the_reduced_jpeg_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    decoded: list[tuple[int, int]] = []
    original = JpegImagePlugin.JpegImageFile.draft

    def draft(self: Any, mode: Any, size: Any) -> Any:
        result = original(self, mode, size)
        decoded.append(self.size)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", draft)
    data = synth.photo(7, 1600, 1200)
    out = process_image(data, FetchOptions(), ((0.4, 0.4, 0.6, 0.6),))
    assert decoded == [(400, 300)]
    assert (out.width, out.height) == (256, 256)
    assert out.data != process_image(data, FetchOptions()).data


@pytest.mark.parametrize(
    "text",
    ["[" * 100_000, "[[" + "1" * 5000 + ", 0, 1, 1]]", "[" * 40 + "]" * 40],
    ids=["deep", "huge-number", "past-the-depth-limit"],
)
def test_hostile_box_text_is_an_invalid_box_not_a_crash(text: str) -> None:
    with pytest.raises(InvalidBoxes) as info:
        parse_boxes(text)
    assert str(info.value).startswith("invalid bounding box")
    assert len(str(info.value)) < 200


def test_a_long_box_is_quoted_short() -> None:
    with pytest.raises(InvalidBoxes) as info:
        parse_boxes([[0.1] * 10_000])
    assert len(str(info.value)) < 120
