"""The `img2dataset` command.

img2dataset download --url_list urls.txt --output_folder out     (embedded, one machine)
img2dataset --url_list=urls.txt --output_folder=out              (img2dataset's flat form)
img2dataset enqueue --url_list urls.txt                          (to the Kafka `urls` topic)
img2dataset serve fetcher|appender|materializer                  (one distributed service)
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from i2d_cli.flags import add_model_flags, model_kwargs
from i2d_cli.inputs import InputError
from i2d_cli.options import DownloadOptions
from i2d_fetcher.settings import FetcherSettings
from i2d_segments import __version__
from i2d_segments.settings import ConnectionSettings

SUBCOMMANDS = ("download", "enqueue", "serve")
_CONNECTION_FIELDS = tuple(ConnectionSettings.model_fields)


def build_parser() -> argparse.ArgumentParser:
    from i2d_cli.enqueue import EnqueueSettings
    from i2d_cli.serve import SETTINGS

    parser = argparse.ArgumentParser(
        prog="img2dataset",
        description="Turn lists of image URLs into WebDataset segments with a global index.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--log_level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    sub = parser.add_subparsers(dest="command", required=True)

    download = sub.add_parser(
        "download", help="Download a url list into a local folder (embedded mode)."
    )
    add_model_flags(download, DownloadOptions)
    add_model_flags(download, FetcherSettings, skip=(*_CONNECTION_FIELDS, "group_id"))

    enqueue = sub.add_parser("enqueue", help="Write a url list to the Kafka urls topic.")
    add_model_flags(enqueue, EnqueueSettings)

    serve = sub.add_parser("serve", help="Run one service over Kafka, S3 and Postgres.")
    services = serve.add_subparsers(dest="service", required=True)
    for name, cls in SETTINGS.items():
        add_model_flags(services.add_parser(name, help=f"the {name}"), cls)
    return parser


def normalize_argv(argv: Sequence[str]) -> list[str]:
    """img2dataset's flat form (`img2dataset --url_list=...`) means `download`."""
    args = list(argv)
    first = next((a for a in args if a != "--log_level" and not a.startswith("--log_level=")), "")
    if (
        args
        and first.startswith("--")
        and first not in ("--help", "--version")
        and not any(a in SUBCOMMANDS for a in args)
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
    # confluent-kafka and the HTTP stack log plenty at INFO; keep the user's terminal readable.
    logging.getLogger("aiohttp").setLevel(logging.WARNING)
    try:
        if ns.command == "download":
            return _download(ns)
        if ns.command == "enqueue":
            from i2d_cli.enqueue import EnqueueSettings, enqueue

            enqueue(EnqueueSettings(**model_kwargs(ns, EnqueueSettings)))
            return 0
        from i2d_cli.serve import SETTINGS, serve

        cls = SETTINGS[ns.service]
        serve(ns.service, cls(**model_kwargs(ns, cls)))
        return 0
    except ValidationError as e:
        print(f"img2dataset: invalid option: {e}", file=sys.stderr)
        return 2
    except InputError as e:
        print(f"img2dataset: {e}", file=sys.stderr)
        return 2


def _download(ns: argparse.Namespace) -> int:
    from i2d_cli.embedded import DownloadInterrupted, EmbeddedDownload

    opts = DownloadOptions(**model_kwargs(ns, DownloadOptions))
    fetcher_kwargs = model_kwargs(ns, FetcherSettings)
    fetcher = FetcherSettings(**fetcher_kwargs, metrics_port=0, create_topics=False)
    # SIGTERM ends the run like Ctrl-C: in-flight work is committed, a rerun resumes.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        summary = EmbeddedDownload(opts, fetcher).run()
    except (KeyboardInterrupt, DownloadInterrupted) as e:
        detail = str(e) if isinstance(e, DownloadInterrupted) else ""
        print(f"\ninterrupted; run the same command again to resume.\n{detail}", file=sys.stderr)
        return 130
    print(summary.render())
    print(f"output: {os.path.abspath(opts.output_folder)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
