"""`img2dataset download`: the embedded mode's command (img2dataset's flags and defaults)."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import TYPE_CHECKING

from i2d_cli.compat import Img2datasetCompat
from i2d_cli.flags import add_model_flags, model_kwargs
from i2d_cli.options import DownloadOptions
from i2d_fetcher.settings import FetcherSettings
from i2d_segments.settings import ConnectionSettings
from i2d_segments.signals import stop_event_on_signals

if TYPE_CHECKING:
    from i2d_cli.embedded import Summary
    from i2d_segments.folder import FolderBusy

NAME = "download"
HELP = "Download a url list into a local folder (embedded mode)."


# The fetcher's own options (img2dataset's names) are `download`'s and `service`'s flags, less
# its connection settings and the `urls` record's field names: rows reach a local fetcher in
# the topic's own format (--url_col/--caption_col name the input file's columns).
LOCAL_FETCHER_SKIP = (*ConnectionSettings.model_fields, "group_id", "url_field", "caption_field")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_flags(parser, DownloadOptions)
    add_model_flags(parser, FetcherSettings, skip=LOCAL_FETCHER_SKIP)
    add_model_flags(parser, Img2datasetCompat, group_title="img2dataset's own machinery")


def run(ns: argparse.Namespace) -> int:
    from i2d_cli.embedded import DownloadInterrupted
    from i2d_segments.folder import FolderBusy, FolderError

    try:
        opts, summary = execute(ns)
    except DownloadInterrupted as e:
        print(f"\ninterrupted; run the same command again to resume.\n{e}", file=sys.stderr)
        return 130
    except FolderBusy as e:
        print(f"img2dataset: {busy_folder_advice(e, ns)}", file=sys.stderr)
        return 1
    except FolderError as e:
        print(f"img2dataset: {e}", file=sys.stderr)
        return 2
    print(summary.render())
    print(f"output: {os.path.abspath(opts.output_folder)}")
    if summary.input_error:
        print(f"img2dataset: {unread_rest(summary.input_error)}", file=sys.stderr)
        return 2
    return 0


def busy_folder_advice(e: FolderBusy, ns: argparse.Namespace) -> str:
    """One line: who writes the folder, and for a service how to add this list to it."""
    if e.holder.startswith("img2dataset service"):
        folder = getattr(ns, "output_folder", "FOLDER")
        url_list = getattr(ns, "url_list", "LIST")
        return (
            f"{e}; add the list to it with: img2dataset enqueue --url_list {url_list} "
            f"--output_folder {folder} (plus the same --input_format and column options)"
        )
    return f"{e}; wait for it to end, or stop it (it resumes where it stopped)"


def unread_rest(input_error: str) -> str:
    return (
        f"{input_error}; the rows before it are recorded: repair the list and run the same "
        "command again to fetch the rest"
    )


def local_fetcher_settings(ns: argparse.Namespace) -> FetcherSettings:
    """The in-process fetcher's settings from `download`'s or `service`'s flags."""
    kwargs = model_kwargs(ns, FetcherSettings)
    # --metrics_port/--metrics_host serve the whole run's /metrics (FolderOptions).
    for name in ("metrics_port", "metrics_host"):
        kwargs.pop(name, None)
    return FetcherSettings(**kwargs, metrics_port=0, create_topics=False)


def execute(ns: argparse.Namespace) -> tuple[DownloadOptions, Summary]:
    """The download `ns` asks for (flags as text, or Python values from img2dataset's API)."""
    from i2d_cli.output_formats import run_download

    compat = Img2datasetCompat(**model_kwargs(ns, Img2datasetCompat))  # checked first
    opts = DownloadOptions(**model_kwargs(ns, DownloadOptions))
    fetcher = local_fetcher_settings(ns)
    # Ctrl-C or SIGTERM once ends the run cleanly: in-flight work is committed, a rerun
    # resumes. Twice: the process exits at once, and a rerun resumes all the same (signals.py).
    # (Installed explicitly: a shell starts background jobs with SIGINT ignored.)
    stop = stop_event_on_signals()
    # Log lines (segments closing...) print above the progress bar instead of through it.
    # tqdm is imported only for a progress bar (~0.1 s of start-up otherwise spent for nothing).
    redirect: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
    if opts.progress:
        from tqdm.contrib.logging import logging_redirect_tqdm

        redirect = logging_redirect_tqdm()
    with redirect:
        return opts, run_download(opts, fetcher, compat, stop=stop)
