"""A local image server for tests, demos and benchmarks (these machines have no internet).

Photo-like JPEGs of varied sizes, deterministic per url, and faults on demand: 404/500/503,
slow and dripping responses, truncated bodies, HTML served as image/jpeg, X-Robots-Tag,
alpha PNGs, decompression bombs. See `urls.FAULTS` for the list.
"""

from i2d_imageserver.server import ImageServer
from i2d_imageserver.urls import FAULTS, image_path, make_url_list, parse_faults

__all__ = ["FAULTS", "ImageServer", "image_path", "make_url_list", "parse_faults"]
