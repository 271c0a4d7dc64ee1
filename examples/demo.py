"""`make run`: the main job on the embedded default, with no internet needed.

Starts the project's local image server (tools/imageserver) on a free loopback port, writes
the bundled example list for it (photo-like JPEGs of varied sizes plus a few broken URLs, so
the summary shows failures by reason), and runs `img2dataset download` into the output folder.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from i2d_cli.main import main as img2dataset

EXAMPLE_COUNT = 1000
EXAMPLE_FAULTS = "missing=0.03,notimage=0.02,truncated=0.01,noai=0.01"
CORPUS = Path(__file__).resolve().parent.parent / ".cache" / "demo-corpus"


def run(output_folder: str, count: int) -> int:
    with tempfile.TemporaryDirectory(prefix="img2dataset-demo-") as tmp:
        url_list = Path(tmp) / "urls.txt"
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "i2d_imageserver",
                "--port",
                "0",
                "--write-list",
                str(url_list),
                "--count",
                str(count),
                "--faults",
                EXAMPLE_FAULTS,
                # Generate the images before the download starts, once: cached on disk, so
                # the download's images/s measures the tool, not the image generator.
                "--warm",
                "--corpus",
                str(CORPUS),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        print("preparing the example images (cached after the first run)...", file=sys.stderr)
        try:
            assert server.stdout is not None
            base_url = server.stdout.readline().strip()
            if not base_url:
                raise SystemExit("the local image server did not start")
            print(f"local image server at {base_url}; {count} example urls", file=sys.stderr)
            return img2dataset(
                [
                    "download",
                    "--url_list",
                    str(url_list),
                    "--output_folder",
                    output_folder,
                    # a fresh example each time: the demo server's port, so its urls, change
                    "--incremental_mode",
                    "overwrite",
                    # the demo server is on the loopback, which downloads refuse by default
                    "--allowed_networks",
                    "127.0.0.1/32",
                ]
            )
        finally:
            server.terminate()
            server.wait(10)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output_folder", default="out")
    parser.add_argument("--count", type=int, default=EXAMPLE_COUNT)
    ns = parser.parse_args()
    sys.exit(run(ns.output_folder, ns.count))
