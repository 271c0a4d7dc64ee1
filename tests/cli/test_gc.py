"""The command collects cyclic garbage rarely once its own modules are imported
(i2d_segments.gcpolicy), in its own process only: a caller of the Python API keeps its own
collector settings."""

from __future__ import annotations

import subprocess
import sys

from i2d_segments.gcpolicy import YOUNG_THRESHOLD

_PROBE = """
import gc
from i2d_cli import main as m
seen = []
class Probe:
    NAME = "probe"
    @staticmethod
    def run(ns):
        seen.append((gc.get_threshold()[0], gc.get_freeze_count() > 0))
        return 0
class Parser:
    @staticmethod
    def parse_args(args):
        return type("NS", (), {"command": "probe", "log_level": "WARNING"})()
m._commands = lambda name: [Probe]
m.build_parser = lambda name: Parser
assert m._run([], "probe", own_process=OWN) == 0
print(seen)
"""


def _probe(own_process: bool) -> str:
    code = _PROBE.replace("OWN", str(own_process))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return done.stdout.strip()


def test_the_command_collects_rarely_in_its_own_process() -> None:
    assert _probe(own_process=True) == f"[({YOUNG_THRESHOLD}, True)]"


def test_a_caller_of_the_python_api_keeps_its_collector_settings() -> None:
    assert _probe(own_process=False) == "[(700, False)]"
