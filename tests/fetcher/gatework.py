"""What the decode gate tests run in other processes (a light module: spawned children
import it, not the test module)."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from i2d_fetcher.imaging.gate import DecodeGate


def hold(gate: DecodeGate, nbytes: int, seconds: float, log: Any, name: str) -> None:
    with gate.hold(nbytes):
        log.put((name, "in", time.monotonic()))
        time.sleep(seconds)
        log.put((name, "out", time.monotonic()))


def hold_and_die(gate: DecodeGate, nbytes: int) -> None:
    with gate.hold(nbytes):
        os.kill(os.getpid(), signal.SIGKILL)  # killed mid-decode: it never releases
