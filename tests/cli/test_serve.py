"""`img2dataset serve`: a dependency that cannot be reached at start is one line on stderr
and exit code 1 (the orchestrator restarts the service), not a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.servers.proc import free_port

BIN = Path(sys.executable).parent


def test_an_unreachable_index_is_one_line_and_exit_1(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    env = {
        **os.environ,
        "I2D_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}",
        "I2D_STORE_URL": str(tmp_path / "store"),
        "I2D_INDEX_URL": f"postgresql://img2dataset@127.0.0.1:{port}/img2dataset",
        "I2D_METRICS_PORT": "0",
    }
    done = subprocess.run(
        [str(BIN / "img2dataset"), "serve", "appender", "--nocreate_topics"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("img2dataset serve appender: cannot start: cannot connect to")
    assert "Traceback" not in done.stderr
