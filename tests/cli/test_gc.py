"""The command collects cyclic garbage rarely once its own modules are imported
(i2d_segments.gcpolicy)."""

from __future__ import annotations

import subprocess
import sys

from i2d_segments.gcpolicy import YOUNG_THRESHOLD


def test_the_command_line_collects_rarely_once_its_command_is_imported() -> None:
    code = (
        "import gc, sys\n"
        "from i2d_cli import main as m\n"
        "seen = []\n"
        "class Probe:\n"
        "    NAME = 'probe'\n"
        "    @staticmethod\n"
        "    def run(ns):\n"
        "        seen.append((gc.get_threshold()[0], gc.get_freeze_count() > 0))\n"
        "        return 0\n"
        "m._commands = lambda name: [Probe]\n"
        "m.build_parser = lambda name: type('P', (), {'parse_args': staticmethod(\n"
        "    lambda a: type('NS', (), {'command': 'probe', 'log_level': 'WARNING'})())})()\n"
        "assert m._run([], 'probe') == 0\n"
        "print(seen)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == f"[({YOUNG_THRESHOLD}, True)]"
