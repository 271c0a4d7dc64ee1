"""The `img2dataset` command.

    img2dataset download --url_list urls.txt --output_folder out     (embedded, one machine)
    img2dataset --url_list=urls.txt --output_folder=out              (img2dataset's flat form)
    img2dataset enqueue --url_list urls.txt                          (to the Kafka `urls` topic)
    img2dataset serve fetcher|appender|materializer                  (one distributed service)

Each subcommand is a module of this package with `NAME`, `HELP`, `add_arguments(parser)` and
`run(ns) -> int`; adding a command is adding its module to `COMMANDS`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from types import ModuleType

from pydantic import ValidationError

from i2d_cli.inputs import InputError
from i2d_segments import __version__

COMMANDS = (
    "i2d_cli.download",
    "i2d_cli.enqueue",
    "i2d_cli.serve",
    "i2d_cli.materialize",
    "i2d_cli.status",
    "i2d_cli.reindex",
    "i2d_cli.verify",
    "i2d_cli.gc",
)


def _commands() -> list[ModuleType]:
    return [importlib.import_module(name) for name in COMMANDS]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="img2dataset",
        description="Turn lists of image URLs into WebDataset segments with a global index.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--log_level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in _commands():
        module.add_arguments(sub.add_parser(module.NAME, help=module.HELP))
    return parser


def normalize_argv(argv: Sequence[str]) -> list[str]:
    """img2dataset's flat form (`img2dataset --url_list=...`) means `download`."""
    args = list(argv)
    names = {m.rsplit(".", 1)[1] for m in COMMANDS} | {"serve"}
    first = next((a for a in args if a != "--log_level" and not a.startswith("--log_level=")), "")
    if (
        args
        and first.startswith("--")
        and first not in ("--help", "--version")
        and not any(a in names for a in args)
    ):
        return ["download", *args]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = normalize_argv(sys.argv[1:] if argv is None else argv)
    ns = build_parser().parse_args(args)
    logging.basicConfig(
        level=getattr(logging, str(ns.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("aiohttp").setLevel(logging.WARNING)
    module = next(m for m in _commands() if ns.command == m.NAME)
    try:
        return int(module.run(ns))
    except ValidationError as e:
        print(f"img2dataset: invalid option: {e}", file=sys.stderr)
        return 2
    except InputError as e:
        print(f"img2dataset: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
