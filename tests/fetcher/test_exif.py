"""The `exif` column is img2dataset's, string for string: exifread's printable values of the
downloaded bytes ("Horizontal (normal)", not 1). Checked against img2dataset 1.47's own code
on the same bytes when its venv (`make bench`) is here, and against strings it wrote."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, TiffImagePlugin

from i2d_fetcher.imaging import exif as exif_module
from i2d_fetcher.imaging.exif import extract_exif
from i2d_fetcher.imaging.pipeline import process_image
from i2d_fetcher.options import FetchOptions
from i2d_imageserver import synth

R = TiffImagePlugin.IFDRational
ALL_FORMATS = FetchOptions(allowed_image_formats="jpeg,png,webp,gif,bmp,tiff,avif,ico,cur,icns")


def picture(width: int = 96, height: int = 64) -> Image.Image:
    return Image.fromarray(synth.render(5, width, height))


def save(img: Image.Image, fmt: str, **params: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def tags(
    ifd0: dict[int, Any],
    exif: dict[int, Any] | None = None,
    gps: dict[int, Any] | None = None,
    big_endian: bool = False,
) -> Image.Exif:
    block = Image.Exif()
    if big_endian:
        block.endian = ">"
    for tag, value in ifd0.items():
        block[tag] = value
    for pointer, values in ((0x8769, exif), (0x8825, gps)):
        for tag, value in (values or {}).items():
            block.get_ifd(pointer)[tag] = value
    return block


CAMERA = {
    0x010F: "Canon",  # Make
    0x0110: "Canon EOS 5D Mark IV",  # Model
    0x0112: 6,  # Orientation
    0x011A: R(72, 1),  # XResolution
    0x011B: R(72, 1),
    0x0128: 2,  # ResolutionUnit
    0x0131: "GIMP 2.10.34",  # Software
    0x0132: "2024:05:01 12:00:00",  # DateTime
    0x013B: "Ana Lopez",  # Artist
    0x8298: "(c) 2024",  # Copyright
    0x0213: 1,  # YCbCrPositioning
}
SHOT = {
    0x829A: R(1, 250),  # ExposureTime
    0x829D: R(28, 10),  # FNumber: exifread reduces it to 14/5
    0x8822: 3,  # ExposureProgram
    0x8827: 400,  # ISOSpeedRatings
    0x9000: b"0231",  # ExifVersion (undefined bytes)
    0x9003: "2024:05:01 12:00:00",  # DateTimeOriginal
    0x9004: "2024:05:01 12:00:00",
    0x9201: R(8, 1),  # ShutterSpeedValue (signed)
    0x9204: R(-1, 3),  # ExposureBiasValue (signed)
    0x9207: 5,  # MeteringMode
    0x9209: 16,  # Flash
    0x920A: R(50, 1),  # FocalLength
    0x927C: b"\x00" * 64,  # MakerNote: img2dataset skips it (details=False)
    0x9286: b"ASCII\x00\x00\x00a comment",  # UserComment: skipped too
    0xA001: 1,  # ColorSpace
    0xA002: 4000,  # PixelXDimension
    0xA003: 3000,
    0xA402: 0,  # ExposureMode
    0xA403: 1,  # WhiteBalance
    0xA406: 0,  # SceneCaptureType
    0xA434: "EF24-70mm f/2.8L II USM",  # LensModel
}
GPS = {
    0x0000: b"\x02\x02\x00\x00",  # GPSVersionID: exifread reads BYTEs as 0
    0x0001: "N",
    0x0002: (R(48, 1), R(51, 1), R(2959, 100)),
    0x0003: "E",
    0x0004: (R(2, 1), R(17, 1), R(4003, 100)),
    0x0005: b"\x00",  # GPSAltitudeRef
    0x0006: R(3512, 100),
    0x0007: (R(12, 1), R(0, 1), R(0, 1)),
    0x001D: "2024:05:01",
}


def cases() -> dict[str, bytes]:
    """Bodies with EXIF as the web serves them, and formats exifread reads or does not."""
    img = picture()
    out = {
        f"orientation {o}": save(img, "JPEG", exif=tags({0x0112: o}).tobytes()) for o in range(1, 9)
    }
    full = tags(CAMERA, SHOT, GPS)
    out["camera, shot and gps"] = save(img, "JPEG", exif=full.tobytes())
    out["big-endian (MM) block"] = save(
        img, "JPEG", exif=tags(CAMERA, SHOT, GPS, big_endian=True).tobytes()
    )
    out["make and model only"] = save(img, "JPEG", exif=tags({0x010F: "NIKON", 0x0110: "D750"}))
    out["utf-8 and latin-1 text"] = save(
        img,
        "JPEG",
        exif=tags({0x013B: "José Muñoz", 0x010E: "caf\xe9".encode("latin-1"), 0x0131: " padded  "}),
    )
    out["a long description"] = save(img, "JPEG", exif=tags({0x010E: "word " * 400}))
    out["a list of 60 values"] = save(
        img, "JPEG", exif=tags({0x0110: "M", 0xC000: tuple(range(60))}, {0x9214: (1, 2, 3, 4)})
    )
    out["unknown values in a mapped tag"] = save(
        img, "JPEG", exif=tags({0x0112: 9, 0x0128: 7}, {0x8822: 42, 0xA001: 2})
    )
    out["no exif"] = save(img, "JPEG", quality=90)
    out["progressive with exif"] = save(img, "JPEG", progressive=True, exif=full.tobytes())
    out["webp with exif"] = save(img, "WEBP", exif=full.tobytes())
    out["webp without exif"] = save(img, "WEBP")
    out["png with exif"] = save(img, "PNG", exif=full.tobytes())
    out["tiff"] = save(img, "TIFF", tiffinfo={0x010F: "Scanner Co", 0x0131: "scan 1.0"})
    out["gif"] = save(img.convert("P"), "GIF")
    exif_block = full.tobytes()
    cut = bytearray(save(img, "JPEG", exif=exif_block))
    at = cut.find(b"Exif\x00\x00") + 6
    cut[at + 4 : at + 8] = struct.pack("<I", 0x7FFF0000)  # IFD0 offset past the end
    out["exif pointing past the end"] = bytes(cut)
    return out


CASES = cases()


def test_exif_holds_exifreads_printable_values_as_img2dataset_wrote_them() -> None:
    """The strings img2dataset 1.47 writes for these bodies (the test below checks them
    against its own code), so CI checks them without its venv."""
    orientations = [
        "Horizontal (normal)",
        "Mirrored horizontal",
        "Rotated 180",
        "Mirrored vertical",
        "Mirrored horizontal then rotated 90 CCW",
        "Rotated 90 CW",
        "Mirrored horizontal then rotated 90 CW",
        "Rotated 90 CCW",
    ]
    for o, text in enumerate(orientations, start=1):
        assert extract_exif(CASES[f"orientation {o}"]) == json.dumps({"Image Orientation": text})
    got = json.loads(extract_exif(CASES["camera, shot and gps"]) or "")
    assert got == {
        "Image Make": "Canon",
        "Image Model": "Canon EOS 5D Mark IV",
        "Image Orientation": "Rotated 90 CW",
        "Image XResolution": "72",
        "Image YResolution": "72",
        "Image ResolutionUnit": "Pixels/Inch",
        "Image Software": "GIMP 2.10.34",
        "Image DateTime": "2024:05:01 12:00:00",
        "Image Artist": "Ana Lopez",
        "Image YCbCrPositioning": "Centered",
        "Image Copyright": "(c) 2024",
        "Image ExifOffset": got["Image ExifOffset"],
        "GPS GPSVersionID": "[0, 0, 0, 0]",
        "GPS GPSLatitudeRef": "N",
        "GPS GPSLatitude": "[48, 51, 2959/100]",
        "GPS GPSLongitudeRef": "E",
        "GPS GPSLongitude": "[2, 17, 4003/100]",
        "GPS GPSAltitudeRef": "0",
        "GPS GPSAltitude": "878/25",
        "GPS GPSTimeStamp": "[12, 0, 0]",
        "GPS GPSDate": "2024:05:01",
        "Image GPSInfo": got["Image GPSInfo"],
        "EXIF ExposureTime": "1/250",
        "EXIF FNumber": "14/5",
        "EXIF ExposureProgram": "Aperture Priority",
        "EXIF ISOSpeedRatings": "400",
        "EXIF ExifVersion": "",
        "EXIF DateTimeOriginal": "2024:05:01 12:00:00",
        "EXIF DateTimeDigitized": "2024:05:01 12:00:00",
        "EXIF ShutterSpeedValue": "8",
        "EXIF ExposureBiasValue": "-1/3",
        "EXIF MeteringMode": "Pattern",
        "EXIF Flash": "Flash did not fire, compulsory flash mode",
        "EXIF FocalLength": "50",
        "EXIF ColorSpace": "sRGB",
        "EXIF ExifImageWidth": "4000",
        "EXIF ExifImageLength": "3000",
        "EXIF ExposureMode": "Auto Exposure",
        "EXIF WhiteBalance": "Manual",
        "EXIF SceneCaptureType": "Standard",
        "EXIF LensModel": "EF24-70mm f/2.8L II USM",
    }
    assert got["Image ExifOffset"].isdigit() and got["Image GPSInfo"].isdigit()
    for name in ("no exif", "png with exif", "gif", "webp without exif"):
        assert extract_exif(CASES[name]) == "{}", name


def test_the_pipeline_keeps_the_exif_of_the_downloaded_bytes() -> None:
    """Whatever the re-encoding: the original bytes' tags, as img2dataset (which reads
    them from the download, not from its output)."""
    data = CASES["camera, shot and gps"]
    want = extract_exif(data)
    assert want is not None and "Rotated 90 CW" in want
    for opts in (
        FetchOptions(),
        FetchOptions(resize_mode="no", skip_reencode=True),
        FetchOptions(disable_all_reencoding=True),
        FetchOptions(encode_format="png"),
    ):
        assert process_image(data, opts).exif == want
    assert process_image(data, FetchOptions(extract_exif=False)).exif is None


BENCH_PYTHON = Path(__file__).resolve().parents[2] / ".venv-bench" / "bin" / "python"
# img2dataset's own expression, taken from its downloader's source (the `exif = ...` line of
# its download loop), evaluated on each body as its img_stream; an exception is None there.
IMG2DATASET_EXIF = """
import ast, io, json, logging, sys
import exifread
import img2dataset.downloader as downloader
logging.getLogger("exifread").setLevel(logging.CRITICAL)  # as img2dataset's main does
tree = ast.parse(open(downloader.__file__).read())
[expr] = [
    node.value for node in ast.walk(tree)
    if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["exif"]
    and isinstance(node.value, ast.Call)
]
code = compile(ast.Expression(expr), downloader.__file__, "eval")
out = {}
for name, path in json.loads(sys.argv[1]).items():
    with open(path, "rb") as f:
        img_stream = io.BytesIO(f.read())
    try:
        out[name] = eval(code, {"json": json, "exifread": exifread, "img_stream": img_stream})
    except Exception:
        out[name] = None
print(json.dumps(out))
"""


def img2dataset_exif(tmp_path: Path, bodies: dict[str, bytes]) -> dict[str, str | None]:
    paths = {}
    for i, (name, data) in enumerate(bodies.items()):
        paths[name] = str(tmp_path / f"body{i}")
        Path(paths[name]).write_bytes(data)
    run = subprocess.run(
        [str(BENCH_PYTHON), "-c", IMG2DATASET_EXIF, json.dumps(paths)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    result: dict[str, str | None] = json.loads(run.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.differential  # img2dataset 1.47 itself: `make diff`
@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")  # Pillow, opening the cut block
def test_exif_equals_img2datasets_own_code_on_the_same_bytes(tmp_path: Path) -> None:
    theirs = img2dataset_exif(tmp_path, CASES)
    for name, data in CASES.items():
        assert extract_exif(data) == theirs[name], name
        # and through the pipeline, for the samples it keeps
        assert process_image(data, ALL_FORMATS).exif == theirs[name], name


@pytest.mark.differential  # img2dataset 1.47 itself: `make diff`
def test_exif_equals_img2datasets_on_random_tag_sets(tmp_path: Path) -> None:
    """300 bodies with tags drawn at random from the camera, shot and GPS sets, any value of
    each mapped tag, either byte order."""
    rng = np.random.default_rng(7)
    img = picture(32, 24)
    bodies = {}
    for i in range(300):
        pick = rng.random
        ifd0 = {t: v for t, v in CAMERA.items() if pick() < 0.6}
        ifd0[0x0112] = int(rng.integers(0, 10))
        shot = {t: v for t, v in SHOT.items() if pick() < 0.6}
        for tag in (0x8822, 0x9207, 0x9209, 0xA402, 0xA403, 0xA406):
            if tag in shot:
                shot[tag] = int(rng.integers(0, 100))
        gps = {t: v for t, v in GPS.items() if pick() < 0.5}
        block = tags(ifd0, shot, gps, big_endian=bool(pick() < 0.3))
        bodies[f"random {i}"] = save(img, "JPEG", exif=block.tobytes())
    theirs = img2dataset_exif(tmp_path, bodies)
    differ = [n for n, data in bodies.items() if extract_exif(data) != theirs[n]]
    assert differ == []


# --------------------------------------------------------------------------- hostile EXIF


def tiff_block(entries: list[tuple[int, int, int, bytes]], extra: bytes = b"") -> bytes:
    """A little-endian TIFF header and one IFD of (tag, type, count, value or offset)."""
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        ifd += struct.pack("<HHI", tag, kind, count) + value.ljust(4, b"\x00")[:4]
    return b"II*\x00" + struct.pack("<I", 8) + ifd + b"\x00\x00\x00\x00" + extra


def jpeg_with_app1(block: bytes) -> bytes:
    body = save(picture(16, 16), "JPEG")
    app1 = b"Exif\x00\x00" + block
    assert len(app1) + 2 < 65536
    return body[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + body[2:]


def test_exif_that_would_keep_exifread_busy_is_none_quickly() -> None:
    """5000 tags of 999 rationals each (10 M reads: 30 s of img2dataset's exifread), and a HEIC
    whose box of size 0 exifread re-reads forever: bounded reads, no exif."""
    offset = struct.pack("<I", 8)  # every value points at the header
    busy = tiff_block([(0xC000 + i, 5, 999, offset) for i in range(5000)])
    heic = (
        struct.pack(">I", 16) + b"ftypheic" + struct.pack(">I", 0)  # ftyp, minor version 0
        + struct.pack(">I", 1) + b"free" + struct.pack(">Q", 0)  # size 1: 64-bit size 0
    )  # fmt: skip
    for data in (jpeg_with_app1(busy), busy, heic):
        start = time.perf_counter()
        assert extract_exif(data) is None
        assert time.perf_counter() - start < 2


def test_long_values_and_many_tags_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    long_text = "x" * 60_000  # a JPEG APP1 segment holds at most 64 KiB
    data = save(picture(), "JPEG", exif=tags({0x010F: "Canon", 0x010E: long_text}))
    got = json.loads(extract_exif(data) or "")
    assert got["Image Make"] == "Canon"
    assert got["Image ImageDescription"] == "x" * exif_module.MAX_VALUE_CHARS
    monkeypatch.setattr(exif_module, "MAX_EXIF_CHARS", 100)
    text = extract_exif(CASES["camera, shot and gps"])
    assert text is not None and len(text) <= 100
    kept = list(json.loads(text))
    assert kept == ["Image Make", "Image Model"]  # whole tags, in exifread's order
