"""enqueue with its index out of reach: one line saying what it needs, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.servers.proc import free_port

BIN = Path(sys.executable).parent


def test_an_unreachable_index_is_one_line_and_exit_1(tmp_path: Path) -> None:
    urls = tmp_path / "urls.txt"
    urls.write_text("http://127.0.0.1/x.jpg\n")
    port = free_port()  # nothing listens there
    done = subprocess.run(
        [
            str(BIN / "img2dataset"),
            "enqueue",
            f"--url_list={urls}",
            f"--kafka_bootstrap_servers=127.0.0.1:{free_port()}",
            f"--index_url=postgresql://nobody@127.0.0.1:{port}/none",
            "--progress=False",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("img2dataset: enqueue reads the index")
