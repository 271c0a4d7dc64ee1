"""skip_reencode and disable_all_reencoding: when the downloaded bytes are stored as they are,
and what the metadata says then; and the interpolation options' effect."""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageFile, JpegImagePlugin

from i2d_fetcher.imaging.pipeline import ImageRejected, process_image
from i2d_fetcher.options import FetchOptions
from i2d_imageserver import synth


def jpeg(width: int, height: int, seed: int = 1) -> bytes:
    return synth.photo(seed, width, height)


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def opened(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


SKIP = FetchOptions(skip_reencode=True, resize_mode="no")


# --------------------------------------------------------------------------- skip_reencode


def test_skip_reencode_keeps_the_bytes_when_nothing_changes() -> None:
    data = jpeg(640, 480)
    out = process_image(data, SKIP)
    assert out.data == data
    assert (out.ext, out.mime) == ("jpg", "image/jpeg")
    assert (out.width, out.height, out.original_width, out.original_height) == (640, 480) * 2
    assert process_image(data, FetchOptions(resize_mode="no")).data != data  # re-encoded


def test_skip_reencode_with_resize_only_if_bigger_keeps_small_images() -> None:
    opts = FetchOptions(skip_reencode=True, resize_only_if_bigger=True)
    small = jpeg(200, 150)
    assert process_image(small, opts).data == small
    big = process_image(jpeg(800, 600), opts)  # resized: encoded anew
    assert (big.width, big.height) == (256, 256)
    assert opened(big.data).size == (256, 256)


def test_skip_reencode_encodes_when_the_format_differs() -> None:
    data = png(Image.new("RGB", (64, 48), (10, 200, 30)))
    out = process_image(data, SKIP)  # encode_format is jpg
    assert out.data != data
    assert opened(out.data).format == "JPEG"
    same = process_image(data, SKIP.model_copy(update={"encode_format": "png"}))
    assert same.data == data
    assert (same.ext, same.mime) == ("png", "image/png")


def test_skip_reencode_encodes_when_there_are_boxes_to_blur() -> None:
    data = jpeg(640, 480)
    out = process_image(data, SKIP, ((0.1, 0.1, 0.4, 0.4),))
    assert out.data != data
    assert opened(out.data).size == (640, 480)


def test_skip_reencode_still_rejects_broken_images_and_filters() -> None:
    with pytest.raises(ImageRejected, match="Image decoding error"):
        process_image(jpeg(640, 480)[:3000], SKIP)
    with pytest.raises(ImageRejected, match="image too small"):
        process_image(jpeg(640, 480), SKIP.model_copy(update={"min_image_size": 500}))


def test_skip_reencode_verifies_a_jpeg_with_a_reduced_decode(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    decoded: list[tuple[int, int]] = []
    original = JpegImagePlugin.JpegImageFile.draft

    def draft(self: Any, mode: Any, size: Any) -> Any:
        result = original(self, mode, size)
        decoded.append(self.size)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", draft)
    data = jpeg(1600, 1200)
    out = process_image(data, SKIP)
    assert out.data == data
    assert decoded == [(200, 150)]  # 1/8: enough to know every scan decodes
    assert (out.width, out.height) == (1600, 1200)  # the stored image's size, not the check's


# --------------------------------------------------------------------------- disable_all_reencoding

RAW = FetchOptions(disable_all_reencoding=True)


def test_disable_all_reencoding_stores_the_download_as_is() -> None:
    data = synth.photo_with_exif(2, 640, 480)
    out = process_image(data, RAW.model_copy(update={"min_image_size": 10_000}))
    assert out.data == data  # no resize (border to 256 by default), no size filter
    assert (out.width, out.height, out.original_width, out.original_height) == (None,) * 4
    assert (out.ext, out.mime) == ("jpg", "image/jpeg")
    assert out.exif is not None and json.loads(out.exif)["Image Make"] == "I2DCam"
    assert process_image(data, RAW.model_copy(update={"extract_exif": False})).exif is None


def test_disable_all_reencoding_names_the_member_after_the_real_format() -> None:
    data = png(Image.new("RGB", (64, 48), (1, 2, 3)))
    out = process_image(data, RAW)  # encode_format jpg does not apply: nothing is encoded
    assert out.data == data
    assert (out.ext, out.mime) == ("png", "image/png")


def test_disable_all_reencoding_never_decodes(monkeypatch: pytest.MonkeyPatch) -> None:
    truncated = jpeg(640, 480)[:3000]
    loaded: list[object] = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: loaded.append(self))
    assert process_image(truncated, RAW).data == truncated
    assert loaded == []


def test_disable_all_reencoding_still_refuses_non_images() -> None:
    with pytest.raises(ImageRejected, match="not an image: unrecognized format"):
        process_image(synth.NOT_AN_IMAGE, RAW)


# --------------------------------------------------------------------------- interpolation


def test_upscale_interpolation_is_applied() -> None:
    board = Image.fromarray(np.kron(np.indices((8, 8)).sum(axis=0) % 2 * 255, np.ones((1, 1))))
    data = png(board.convert("L"))
    base = FetchOptions(resize_mode="keep_ratio", image_size=64, encode_format="png")
    nearest = np.asarray(
        opened(
            process_image(data, base.model_copy(update={"upscale_interpolation": "nearest"})).data
        )
    )
    lanczos = np.asarray(opened(process_image(data, base).data))
    assert set(np.unique(nearest)) == {0, 255}  # blocks, no in-between values
    assert len(np.unique(lanczos)) > 10  # smooth ramps (and ringing) between cells


def test_downscale_interpolation_is_applied() -> None:
    stripes = np.zeros((512, 512), dtype=np.uint8)
    stripes[:, ::2] = 255  # one-pixel stripes: averaging pairs gives mid-grey
    data = png(Image.fromarray(stripes, "L"))
    base = FetchOptions(resize_mode="keep_ratio", encode_format="png")
    area = np.asarray(opened(process_image(data, base).data), dtype=np.int32)
    nearest = np.asarray(
        opened(
            process_image(data, base.model_copy(update={"downscale_interpolation": "nearest"})).data
        ),
        dtype=np.int32,
    )
    assert np.abs(area - 127.5).max() < 3
    assert set(np.unique(nearest)) <= {0, 255}
