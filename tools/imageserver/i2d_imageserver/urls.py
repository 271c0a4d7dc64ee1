"""The URL scheme of the image server, and url lists mixing good images with faults.

    /img/<seed>.<ext>                     a photo whose size is fixed by the seed
    /img/<seed>_<w>x<h>.<ext>             a photo of that size (ext: jpg, png, webp)
    /fault/<kind>/<seed>[_<w>x<h>].<ext>  the same photo, served with a fault (FAULTS)

Every response is a pure function of the path (and query), so a url names its bytes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlencode

import numpy as np

from i2d_imageserver import synth

FAULTS: dict[str, str] = {
    "missing": "404 Not Found",
    "error": "500 Internal Server Error",
    "unavailable": "503 Service Unavailable, always (a transient failure that never heals); "
    "?retry_after=S adds a Retry-After header",
    "flaky": "503 on the first request of a path, the image afterwards (retries succeed); "
    "?retry_after=S adds a Retry-After header",
    "slow": "the image after a delay before the headers (?delay=seconds, default 2)",
    "drip": "headers at once, then the body in small chunks (?interval=, ?chunks=)",
    "truncated": "Content-Length larger than the bytes sent, then the connection closes",
    "reset": "the connection closes before any response",
    "notimage": "an HTML page served as image/jpeg",
    "noai": "the image with `X-Robots-Tag: noai`",
    "robots": "the image with one X-Robots-Tag header per ?tag= value",
    "alpha": "a PNG with an alpha channel (left half transparent)",
    "exif": "a JPEG carrying EXIF tags (Make, Model, DateTimeOriginal, Orientation)",
    "datamining": "a JPEG whose XMP carries IPTC plus:DataMining ?value= (default "
    "DMI-PROHIBITED-AIMLTRAINING)",
    "bomb": "a PNG decompression bomb: tiny body, huge pixel count (default 20000x20000)",
    "gzipbomb": "Content-Encoding: gzip of ?mb= (default 64) megabytes of zeros",
    "redirect": "302 to the same image under /img/, or to ?to=URL (any url: redirect tests)",
}

EXTENSIONS: dict[str, str] = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
MAX_PHOTO_SIDE = 4096  # generated photos; bombs may declare far more
MAX_BOMB_SIDE = 65535
BOMB_SIZE = (20000, 20000)

_NAME = re.compile(r"^(\d{1,19})(?:_(\d{1,5})x(\d{1,5}))?\.(jpg|png|webp)$")


class BadPath(ValueError):
    """A path outside the scheme: the server answers 404."""


@dataclass(frozen=True)
class ImageName:
    seed: int
    width: int
    height: int
    ext: str

    @property
    def file_name(self) -> str:
        return f"{self.seed}_{self.width}x{self.height}.{self.ext}"


def parse_name(
    name: str, *, default_size: tuple[int, int] | None = None, max_side: int = MAX_PHOTO_SIDE
) -> ImageName:
    m = _NAME.match(name)
    if m is None:
        raise BadPath(f"not <seed>[_<w>x<h>].<jpg|png|webp>: {name!r}")
    seed = int(m.group(1))
    if m.group(2) is None:
        width, height = default_size or synth.size_for_seed(seed)
    else:
        width, height = int(m.group(2)), int(m.group(3))
    if not (1 <= width <= max_side and 1 <= height <= max_side):
        raise BadPath(f"size {width}x{height} outside 1..{max_side}")
    return ImageName(seed, width, height, m.group(4))


def image_path(
    seed: int,
    width: int | None = None,
    height: int | None = None,
    *,
    fault: str | None = None,
    ext: str | None = None,
    query: Mapping[str, str | float | list[str]] | None = None,
) -> str:
    """The path of one image (or fault); `ext` defaults to what the fault serves."""
    if fault is not None and fault not in FAULTS:
        raise ValueError(f"unknown fault kind {fault!r}; known: {', '.join(FAULTS)}")
    if (width is None) != (height is None):
        raise ValueError("give both width and height, or neither")
    if ext is None:
        ext = "png" if fault in ("alpha", "bomb") else "jpg"
    if ext not in EXTENSIONS:
        raise ValueError(f"unknown extension {ext!r}")
    size = "" if width is None else f"_{width}x{height}"
    prefix = "/img" if fault is None else f"/fault/{fault}"
    path = f"{prefix}/{seed}{size}.{ext}"
    if query:
        path += "?" + urlencode(query, doseq=True)
    return path


def parse_faults(spec: str) -> dict[str, float]:
    """`missing=0.03,notimage=0.02` -> {"missing": 0.03, "notimage": 0.02}."""
    out: dict[str, float] = {}
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        kind, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"expected kind=fraction, got {part!r}")
        out[kind.strip()] = float(value)
    _check_faults(out)
    return out


def _check_faults(faults: Mapping[str, float]) -> None:
    for kind, fraction in faults.items():
        if kind not in FAULTS:
            raise ValueError(f"unknown fault kind {kind!r}; known: {', '.join(FAULTS)}")
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fault fraction of {kind!r} must be in [0, 1], got {fraction}")
    if sum(faults.values()) > 1.0 + 1e-9:
        raise ValueError("fault fractions add up to more than 1")


def make_url_list(
    base_url: str, count: int, *, seed: int = 0, faults: Mapping[str, float] | None = None
) -> list[str]:
    """`count` distinct urls of varied sizes (200x200..1600x1200), `round(fraction * count)`
    of them with each fault kind, shuffled; the same arguments give the same list.

    Each row gets its own image seed, `(seed << 32) + row`, so lists made with different
    seeds share no image and no bytes (no accidental duplicates)."""
    if count < 0:
        raise ValueError("count must be >= 0")
    if not 0 <= seed < 1 << 31:
        raise ValueError("seed must be in [0, 2**31)")
    faults = dict(faults or {})
    _check_faults(faults)
    rng = np.random.default_rng([seed, 0x11575])
    kinds: list[str | None] = [None] * count
    order = rng.permutation(count)
    start = 0
    for fault_kind, fraction in faults.items():
        n = min(round(fraction * count), count - start)
        for i in order[start : start + n]:
            kinds[int(i)] = fault_kind
        start += n
    widths = rng.integers(synth.MIN_SIZE[0], synth.MAX_SIZE[0] + 1, size=count)
    heights = rng.integers(synth.MIN_SIZE[1], synth.MAX_SIZE[1] + 1, size=count)
    base = base_url.rstrip("/")
    out = []
    for row, kind in enumerate(kinds):
        image_seed = (seed << 32) + row
        if kind == "bomb":
            path = image_path(image_seed, fault=kind)
        else:
            path = image_path(image_seed, int(widths[row]), int(heights[row]), fault=kind)
        out.append(base + path)
    return out
