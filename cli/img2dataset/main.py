"""`img2dataset.download(...)`: img2dataset 1.47's function, its signature and defaults, run by
this project's download (the same code as the `img2dataset` command's flat form).

    from img2dataset import download
    download(url_list="urls.txt", output_folder="images", output_format="files")

Every argument of img2dataset's `download` is taken with img2dataset's default and meaning (its
default layout is `files`: img2dataset's folder layout, the segments kept in
`output_folder/_segments`). This project's own options (`allowed_networks`, `progress`,
`max_body_bytes`, ... every flag of `img2dataset download --help`) are keyword arguments too;
any other name is a TypeError, as Python raises for an unknown keyword argument. An invalid
value raises ValueError naming the argument, before anything is written; Ctrl-C (or SIGTERM)
ends the download cleanly, raising KeyboardInterrupt, and calling it again resumes. It prints
the command's summary and returns None, as img2dataset's does.
"""

from __future__ import annotations

import argparse
import threading
from functools import cache
from typing import Any

from i2d_cli.compat import IMG2DATASET_ARGUMENTS


def download(
    url_list: str,
    image_size: int = 256,
    output_folder: str = "images",
    processes_count: int = 1,
    resize_mode: str = "border",
    resize_only_if_bigger: bool = False,
    upscale_interpolation: str = "lanczos",
    downscale_interpolation: str = "area",
    encode_quality: int = 95,
    encode_format: str = "jpg",
    skip_reencode: bool = False,
    output_format: str = "files",
    input_format: str = "txt",
    url_col: str = "url",
    caption_col: str | None = None,
    bbox_col: str | None = None,
    thread_count: int = 256,
    number_sample_per_shard: int = 10000,
    extract_exif: bool = True,
    save_additional_columns: list[str] | None = None,
    timeout: int = 10,
    enable_wandb: bool = False,
    wandb_project: str = "img2dataset",
    oom_shard_count: int = 5,
    compute_hash: str | None = "sha256",
    verify_hash: list[str] | None = None,
    distributor: str = "multiprocessing",
    subjob_size: int = 1000,
    retries: int = 0,
    disable_all_reencoding: bool = False,
    min_image_size: int = 0,
    max_image_area: float = float("inf"),
    max_aspect_ratio: float = float("inf"),
    incremental_mode: str = "incremental",
    max_shard_retry: int = 1,
    user_agent_token: str | None = None,
    disallowed_header_directives: list[str] | None = None,
    **options: Any,
) -> None:
    """Download the images of `url_list` into `output_folder`, as img2dataset's `download`."""
    arguments = dict(locals())
    arguments.pop("options")
    unknown = sorted(set(options) - _flags())
    if unknown:
        raise TypeError(f"download() got an unexpected keyword argument {unknown[0]!r}")
    defaults = _flag_defaults()
    given = {
        name: value
        for name, value in arguments.items()
        # img2dataset's value where it differs from the command's default (processes_count,
        # output_format...); the command's own defaults otherwise (encode_format="png" alone
        # then gets png's compression level, as on the command line).
        if name not in defaults or defaults[name] != value
    }
    given.update(options)
    _run(argparse.Namespace(**given))


def _run(ns: argparse.Namespace) -> None:
    from pydantic import ValidationError

    from i2d_cli.download import execute, unread_rest
    from i2d_cli.embedded import DownloadInterrupted
    from i2d_cli.errors import InputError
    from i2d_cli.main import start_fetch_workers_early
    from i2d_segments.signals import stop_signals

    main_thread = threading.current_thread() is threading.main_thread()
    if main_thread:
        start_fetch_workers_early()
    try:
        if main_thread:
            with stop_signals(restore=True):
                _, summary = execute(ns)
        else:  # signals reach the main thread only: the caller stops its own thread
            _, summary = execute(ns)
    except DownloadInterrupted as e:
        raise KeyboardInterrupt(f"interrupted; call download again to resume.\n{e}") from None
    except ValidationError as e:
        # One line per invalid argument, as the command prints them; still a ValueError.
        raise ValueError("; ".join(_reasons(e))) from e
    print(summary.render())
    if summary.input_error:
        raise InputError(unread_rest(summary.input_error))


def _reasons(error: Any) -> list[str]:
    out = []
    for e in error.errors():
        where = f"invalid argument {e['loc'][0]}: " if e["loc"] else "invalid arguments: "
        out.append(where + e["msg"].removeprefix("Value error, "))
    return out


@cache
def _flags() -> frozenset[str]:
    """Every option of `img2dataset download` (its flags' names)."""
    from i2d_cli.main import build_parser

    parser = build_parser("download")
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    command = sub.choices["download"]
    return frozenset(a.dest for a in command._actions if a.dest not in ("help",))


@cache
def _flag_defaults() -> dict[str, Any]:
    """The command's default of each of img2dataset's arguments (None: no default)."""
    from i2d_cli.compat import Img2datasetCompat
    from i2d_cli.options import DownloadOptions
    from i2d_fetcher.settings import FetcherSettings

    out: dict[str, Any] = {}
    for name in IMG2DATASET_ARGUMENTS:
        for model in (DownloadOptions, FetcherSettings, Img2datasetCompat):
            field = model.model_fields.get(name)
            if field is not None:
                if not field.is_required():
                    out[name] = field.get_default(call_default_factory=True, validated_data={})
                break
    return out


def main() -> None:
    """The `img2dataset` command (this project's: img2dataset's flat form works)."""
    import sys

    from i2d_cli.main import main as cli_main

    sys.exit(cli_main())
