"""The `img2dataset` command.

    img2dataset download --url_list urls.txt --output_folder out     (embedded, one machine)
    img2dataset --url_list=urls.txt --output_folder=out              (img2dataset's flat form)
    img2dataset enqueue --url_list urls.txt                          (to the Kafka `urls` topic)
    img2dataset service --output_folder data/                        (one machine, until stopped)
    img2dataset enqueue --url_list urls.txt --output_folder data/    (to that service's folder)
    img2dataset serve fetcher|appender|materializer                  (one distributed service)

Each subcommand is a module of this package named after it, with `NAME`, `HELP`,
`add_arguments(parser)` and `run(ns) -> int`; adding a command is adding its module to
`COMMANDS`. Only the chosen command's module is imported (the services' clients, boto3,
librdkafka and psycopg take most of a second to import); the top-level help imports them all
to list them.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import importlib
import importlib.abc
import importlib.machinery
import logging
import os
import sys
import threading
from collections.abc import Sequence
from types import ModuleType

from i2d_cli.errors import InputError
from i2d_segments import __version__
from i2d_segments.gcpolicy import collect_rarely
from i2d_segments.signals import children_ignore_stop_signals, stop_signals

COMMANDS = (
    "i2d_cli.download",
    "i2d_cli.enqueue",
    "i2d_cli.service",
    "i2d_cli.serve",
    "i2d_cli.materialize",
    "i2d_cli.status",
    "i2d_cli.reindex",
    "i2d_cli.verify",
    "i2d_cli.gc",
)


def _name(module: str) -> str:
    return module.rsplit(".", 1)[1]


def _commands(command: str | None = None) -> list[ModuleType]:
    chosen = [m for m in COMMANDS if command is None or _name(m) == command]
    return [importlib.import_module(name) for name in chosen]


def chosen_command(args: Sequence[str]) -> str | None:
    """The command `args` (normalized) run, or None when argparse needs every command: the
    top-level help, --version, no command or an unknown one (to list the choices)."""
    names = {_name(m) for m in COMMANDS}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--log_level":
            i += 2
        elif arg.startswith("--log_level="):
            i += 1
        else:
            return arg if arg in names else None
    return None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or of `command` alone (importing only its module)."""
    parser = argparse.ArgumentParser(
        prog="img2dataset",
        description="Turn lists of image URLs into WebDataset segments with a global index.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--log_level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in _commands(command):
        module.add_arguments(sub.add_parser(module.NAME, help=module.HELP))
    return parser


def normalize_argv(argv: Sequence[str]) -> list[str]:
    """img2dataset's flat form (`img2dataset --url_list=...`) means `download`."""
    args = list(argv)
    names = {_name(m) for m in COMMANDS}
    first = next((a for a in args if a != "--log_level" and not a.startswith("--log_level=")), "")
    if (
        args
        and first.startswith("--")
        and first not in ("--help", "--version")
        and not any(a in names for a in args)
    ):
        return ["download", *args]
    return args


# The long-running commands: a first SIGTERM/SIGINT stops them cleanly, a second at once.
STOPPABLE = ("download", "serve", "service", "status", "enqueue")


def main(argv: Sequence[str] | None = None) -> int:
    args = normalize_argv(sys.argv[1:] if argv is None else argv)
    command = chosen_command(args)
    # First thing (before the heavy imports): a signal during start-up is neither lost nor
    # a KeyboardInterrupt traceback; the command starts with its stop already asked for.
    # As the process's entry point (no argv), the handlers stay for its shutdown; a caller
    # passing argv (tests, embedding) gets its own back.
    signals = (
        stop_signals(restore=argv is not None) if command in STOPPABLE else contextlib.nullcontext()
    )
    with signals:
        if argv is None:
            hide_pandas()
        code = _run(args, command, own_process=argv is None)
    if argv is None:
        exit_without_teardown(code)
    return code


def exit_without_teardown(code: int) -> None:
    """End this process, the command's own, without tearing the interpreter down.

    Once the command is done and Python's exit handlers ran (logging flushed, the fork
    server's files removed, wandb finished...), what is left is freeing, one by one, every
    object of pyarrow, pydantic and the services (0.1-0.15 s of CPU, more of wall time on a
    busy machine) for memory the kernel frees at once. Everything the command writes is
    closed (and fsynced) by then. Returns, for the usual exit, while another thread runs that
    Python would wait for; daemon threads (tqdm's monitor, the index's checkpointer) it would
    not, so they do not keep the command from ending here."""
    current = threading.current_thread()
    if any(t is not current and not t.daemon and t.is_alive() for t in threading.enumerate()):
        return
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def _runs_fetch_workers(args: list[str], command: str | None) -> bool:
    """`download` and `serve fetcher` (not their help)."""
    if {"-h", "--help"} & set(args):
        return False
    if command in ("download", "service"):
        return True
    return command == "serve" and args[args.index("serve") + 1 :][:1] == ["fetcher"]


def hide_pandas() -> None:
    """This process, the command's own, runs as if pandas were not installed.

    pandas is no dependency of ours, but is often installed beside pyarrow, which then
    imports it on its first conversions of Python lists (to tell pandas objects and pandas'
    missing-value sentinels apart, and again at each inference of a column's type until the
    import succeeds): ~0.4 s of CPU per run, a fifth of `download`'s start-up, for lists that
    never hold a pandas object. Without pandas, pyarrow does what it does when pandas is
    absent (a configuration it supports), and nothing of this tool imports pandas. Only when
    main() is the process's entry point: a caller's process (tests, `img2dataset.download`
    in a notebook) is left as it is."""
    if "pandas" not in sys.modules:  # never at this point; else it is there to be used
        sys.meta_path.insert(0, _HidePandas())


class _HidePandas(importlib.abc.MetaPathFinder):
    """An import finder for which pandas is not installed."""

    def find_spec(
        self, name: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if name.partition(".")[0] == "pandas":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


def start_fetch_workers_early() -> None:
    """Fetch workers start from a fork server that takes ~0.6 s to import their code: started
    first thing, it does so on the other core while this process imports its own (the
    download's start-up is that much shorter). It and the workers it forks ignore Ctrl-C,
    which a terminal sends to them too: this process stops them. Main thread only."""
    from multiprocessing import resource_tracker

    from i2d_fetcher.pool.forkserver import start_early

    # The fork server starts multiprocessing's resource tracker first, which protects
    # itself but unblocks these signals on its way: started before, it leaves them alone.
    resource_tracker.ensure_running()
    with children_ignore_stop_signals():
        start_early()


def _run(args: list[str], command: str | None, own_process: bool = False) -> int:
    """`own_process`: main() is the process's entry point (not a caller's function call),
    so the process's settings (its garbage collection) are this command's to choose."""
    if _runs_fetch_workers(args, command):
        start_fetch_workers_early()  # before any heavy import, pydantic's included
    from pydantic import ValidationError

    ns = build_parser(command).parse_args(args)
    logging.basicConfig(
        level=getattr(logging, str(ns.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("aiohttp").setLevel(logging.WARNING)
    # "Found credentials in environment variables" on every command says nothing to act on.
    logging.getLogger("botocore").setLevel(logging.WARNING)
    module = next(m for m in _commands(ns.command) if ns.command == m.NAME)
    if own_process:
        collect_rarely()  # the command's modules are imported: they are there for good
    try:
        return int(module.run(ns))
    except ValidationError as e:
        for error in e.errors():
            # loc: (field,) or (field, index) for a list; () for a check over several fields
            flag = f" --{error['loc'][0]}" if error["loc"] else ""
            reason = error["msg"].removeprefix("Value error, ")
            print(f"img2dataset: invalid option{flag}: {reason}", file=sys.stderr)
        return 2
    except InputError as e:
        print(f"img2dataset: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
