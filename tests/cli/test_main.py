"""The `img2dataset` command's dispatch: the top-level help lists every command, and running
one command loads only that command's code (the distributed services' clients are not
imported by a local download)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from i2d_cli.main import COMMANDS, main


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for module in COMMANDS:
        assert module.rsplit(".", 1)[1] in out


def test_a_command_imports_only_its_own_module() -> None:
    probe = (
        "import sys\n"
        "from i2d_cli.main import main\n"
        "try:\n"
        "    main(['--log_level', 'WARNING', 'download', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(m for m in sys.modules if m.startswith('i2d_cli.')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    loaded = out.strip().splitlines()[-1]
    assert "'i2d_cli.download'" in loaded and "--url_list" in out
    for other in ("serve", "enqueue", "status", "materialize", "reindex", "verify", "gc"):
        assert f"'i2d_cli.{other}'" not in loaded


def test_flat_and_unknown_forms_still_parse(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--log_level=INFO", "bogus"])
    assert e.value.code == 2
    assert "invalid choice: 'bogus'" in capsys.readouterr().err


def test_the_commands_own_process_leaves_pandas_out_of_pyarrow() -> None:
    """pyarrow imports pandas, when installed, on its first conversions of Python lists (~0.4 s
    of a download's start-up): the command's own process runs as if pandas were absent, and
    pyarrow works as it does then. A caller's process (main(argv)) is left as it is."""
    probe = (
        "import sys\n"
        "from i2d_cli.main import main\n"
        "sys.argv = ['img2dataset', '--log_level', 'WARNING', 'download', '--help']\n"
        "try:\n"
        "    main()\n"
        "except SystemExit:\n"
        "    pass\n"
        "import pyarrow as pa\n"
        "assert pa.array(['a', None]).to_pylist() == ['a', None]\n"
        "assert pa.array([1, None]).type == pa.int64()\n"
        "print('pandas' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip().splitlines()[-1] == "False"
    caller = probe.replace("main()", "main(sys.argv[1:])")
    out = subprocess.run(
        [sys.executable, "-c", caller], capture_output=True, text=True, check=True
    ).stdout
    installed = subprocess.run([sys.executable, "-c", "import pandas"]).returncode == 0
    assert out.strip().splitlines()[-1] == str(installed)


@pytest.mark.parametrize("daemon_thread", [False, True])
def test_the_commands_own_process_exits_after_its_exit_handlers_without_teardown(
    tmp_path: Path, daemon_thread: bool
) -> None:
    """main() as the process's entry point ends the process itself once done: the exit
    handlers run (logging, multiprocessing, wandb register theirs), the exit code is the
    command's, and the interpreter's teardown is skipped, also while a daemon thread (tqdm's
    monitor) lives, which Python would not wait for either."""
    probe = (
        "import atexit, sys, threading, time\n"
        + (
            "threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
            if daemon_thread
            else ""
        )
        + "atexit.register(lambda: print('exit handlers ran', flush=True))\n"
        "from i2d_cli.main import main\n"
        f"sys.argv = ['img2dataset', 'download', '--url_list', {str(tmp_path / 'none.txt')!r},"
        f" '--output_folder', {str(tmp_path / 'out')!r}]\n"
        "main()\n"
        "print('returned')\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert "exit handlers ran" in done.stdout
    assert "returned" not in done.stdout
    assert "img2dataset:" in done.stderr  # the command's own error, printed before
