#!/usr/bin/env python3
"""Container healthcheck: exit 0 when the service's health endpoint answers 200, else 1.

The image is slim (no curl or wget), so Docker's HEALTHCHECK and compose's `healthcheck` run
this stdlib-only script. The port is `--port`, else `I2D_METRICS_PORT` (where the workers serve
/healthz), else 9100; the status service passes `--port` with its HTTP port.

    i2d-healthcheck                      # GET http://127.0.0.1:$I2D_METRICS_PORT/healthz
    i2d-healthcheck --path /readyz --port 8080
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence


def check(url: str, timeout: float) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="i2d-healthcheck", description=__doc__)
    parser.add_argument("--port", type=int, default=int(os.environ.get("I2D_METRICS_PORT", 9100)))
    parser.add_argument("--path", default="/healthz", help="/healthz (alive) or /readyz (ready)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--timeout", type=float, default=4.0)
    ns = parser.parse_args(argv)
    url = f"http://{ns.host}:{ns.port}{ns.path}"
    if check(url, ns.timeout):
        return 0
    print(f"unhealthy: {url}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
